"""Event-time window math (pure): which windows an instant or interval falls in, and
how an interval's quantity splits pro rata across them.

Windows are half-open ``[start, start + size_s)``; tumbling when ``hop_s`` is None,
hopping otherwise (then one instant lies in ``size_s / hop_s`` windows). Boundaries are
multiples of the hop (or size) since the epoch, so every worker agrees on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator


def _step(size_s: float, hop_s: float | None) -> float:
    return size_s if hop_s is None else hop_s


def window_start(ts: float, size_s: float) -> float:
    """Start (epoch s) of the tumbling window of length ``size_s`` that contains ``ts``."""
    return float(math.floor(ts / size_s) * size_s)


def windows_for_instant(ts: float, size_s: float, hop_s: float | None = None) -> list[float]:
    """Starts of every window containing instant ``ts`` (one for tumbling windows)."""
    step = _step(size_s, hop_s)
    last = float(math.floor(ts / step) * step)
    starts = []
    start = last
    while start > ts - size_s:
        starts.append(start)
        start -= step
    return sorted(starts)


def split_interval(
    start: float, end: float, size_s: float, hop_s: float | None = None
) -> Iterator[tuple[float, float, float]]:
    """Yield ``(window_start, overlap_s, fraction)`` for each window overlapping the
    half-open interval ``[start, end)``.

    ``fraction = overlap_s / (end - start)``: the share of a quantity spread evenly over
    the interval (FLOPs, GPU-seconds) that belongs to that window. For tumbling windows
    the fractions sum to 1. ``end <= start`` yields nothing.
    """
    duration = end - start
    if duration <= 0:
        return
    step = _step(size_s, hop_s)
    # First window that can overlap: the one starting at or before (start - size + step).
    first = float(math.floor((start - size_s) / step + 1) * step)
    w = first
    while w < end:
        overlap = min(end, w + size_s) - max(start, w)
        if overlap > 0:
            yield w, overlap, overlap / duration
        w += step
