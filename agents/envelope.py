"""Multi-interval envelopes: the agent publishes K seconds of one node per message.

Each Kafka message costs the stream worker a fixed amount (fetch bookkeeping, one await,
one decode call, one ack: ~260 us measured, issue 14) on top of the per-event work, so
one ``batch/1`` per node per ``envelope_s`` instead of per interval divides that cost by
``envelope_s / interval_s``. Consumers already accept a batch of any size up to
``MAX_BATCH_EVENTS``; the events keep their own ``ts``/``interval_s``/``start``/``end``,
so windows come out identical (tests/unit/test_agent_envelope.py).

Flushes are aligned to epoch multiples of ``envelope_s`` (every node flushes at the same
instants), which is what makes the default safe:

- An event of window ``[ws, ws + size)`` is published at the first multiple of K at or
  after its ``ts``. With K dividing ``size_s`` that is no later than the window's end,
  as with K = interval; the window closes once some event with ``ts >= end + grace``
  arrives, which is published at ``end + grace`` at the earliest. So a window's events
  still arrive ``grace_s`` before its close (the clock-skew tolerance is unchanged) and,
  with K dividing ``grace_s`` too, the close itself is not delayed at all: the latency
  budget (event -> InfluxDB within window + grace + 2 s) is untouched.
- K > grace would publish events of a window after that window could have closed on
  another node's envelope: late events. Hence K <= grace.

:func:`default_envelope_s` picks the largest K (a whole number of intervals) with
K <= grace that divides both the window and the grace: 5 s for the default 10 s windows
with 5 s grace, 2 s for the bench's 2 s grace, one interval where nothing fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mfu.config import WindowSettings
from mfu.events import FlopReport, GpuSample

_EPS = 1e-6


def _divides(k: float, x: float) -> bool:
    q = x / k
    return abs(q - round(q)) < _EPS


def default_envelope_s(interval_s: float, windows: WindowSettings) -> float:
    """Largest whole number of intervals K with K <= ``grace_s`` dividing ``size_s``
    (and ``hop_s``) and ``grace_s``; ``interval_s`` where none does (see module doc)."""
    best = interval_s
    n = 1
    while n * interval_s <= windows.grace_s + _EPS:
        k = n * interval_s
        if (_divides(k, windows.size_s) and _divides(k, windows.grace_s)
                and (windows.hop_s is None or _divides(k, windows.hop_s))):
            best = k
        n += 1
    return best


def check_envelope_s(envelope_s: float, interval_s: float, windows: WindowSettings) -> None:
    """Refuse an envelope that would make events late or is not whole intervals."""
    if not _divides(interval_s, envelope_s) or envelope_s < interval_s - _EPS:
        raise ValueError(f"envelope_s ({envelope_s} s) must be a whole multiple of "
                         f"interval_s ({interval_s} s)")
    if envelope_s > windows.grace_s + _EPS and envelope_s > interval_s + _EPS:
        raise ValueError(f"envelope_s ({envelope_s} s) exceeds the window grace "
                         f"({windows.grace_s} s, MFU_WINDOW_GRACE_S): its oldest events would "
                         "reach the stream after their window closed (late). Lower "
                         "MFU_AGENT_ENVELOPE_S or raise MFU_WINDOW_GRACE_S")


class Envelope:
    """Buffers the samples and reports of consecutive intervals until a flush instant.

    :meth:`add` takes one interval (ending at ``ts``) and returns everything buffered
    (oldest first) when ``ts`` is an epoch multiple of ``envelope_s`` or the buffer spans
    ``envelope_s`` already (missed intervals), else ``None``. :meth:`take` empties it
    (shutdown).
    """

    def __init__(self, envelope_s: float, interval_s: float) -> None:
        self.envelope_s = envelope_s
        self.interval_s = interval_s
        self._samples: list[GpuSample] = []
        self._reports: list[FlopReport] = []
        self._first_ts: float | None = None

    def add(self, ts: float, samples: Sequence[GpuSample], reports: Sequence[FlopReport]
            ) -> tuple[list[GpuSample], list[FlopReport]] | None:
        if self._first_ts is None:
            self._first_ts = ts
        self._samples.extend(samples)
        self._reports.extend(reports)
        k = self.envelope_s
        aligned = _divides(k, ts)
        full = ts - self._first_ts + self.interval_s >= k - _EPS
        if aligned or full or math.isclose(k, self.interval_s):
            return self.take()
        return None

    def take(self) -> tuple[list[GpuSample], list[FlopReport]]:
        out = (self._samples, self._reports)
        self._samples, self._reports, self._first_ts = [], [], None
        return out

    def __len__(self) -> int:
        return len(self._samples) + len(self._reports)
