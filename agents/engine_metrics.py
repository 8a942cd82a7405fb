"""Inference-engine counters: Prometheus exposition text -> per-series interval deltas.

What is read (names confirmed in the engines' sources, see ``docs/inference.md``):

- vLLM (``vllm/v1/metrics/perf.py``, ``PerfMetricsProm``; advancing only with
  ``--enable-mfu-metrics``): ``vllm:estimated_flops_per_gpu_total``,
  ``vllm:estimated_read_bytes_per_gpu_total``, ``vllm:estimated_write_bytes_per_gpu_total``,
  labels ``model_name`` and ``engine`` (the data-parallel engine index). Token counters
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total`` (same labels).
- SGLang (``python/sglang/srt/metrics/collector.py``, ``SchedulerMetricsCollector``;
  ``--enable-metrics --enable-mfu-metrics``): ``sglang:estimated_flops_per_gpu_total``,
  ``sglang:estimated_read_bytes_per_gpu_total``, ``sglang:estimated_write_bytes_per_gpu_total``,
  labels ``model_name``, ``engine_type``, ``tp_rank``, ``pp_rank``, ``moe_ep_rank``
  (+ ``dp_rank``); token counters ``sglang:prompt_tokens_total``,
  ``sglang:generation_tokens_total``.

The ``*_per_gpu_total`` counters are **per GPU**: the engine divides the work of a step by
its tensor/pipeline degrees (heads // tp, layers // pp) before adding it, so one series
is what *each* GPU of that engine (replica) did, not the engine's sum.

Counters become deltas per series (metric name + label set) in :class:`CounterDeltas`:
the first value seen is a baseline (no delta: when that work was done is unknown); a value
lower than the previous one, or a changed ``_created`` timestamp, is a restart: the new
series started from zero after the previous scrape, so its whole value is the delta
(Prometheus' own ``rate()`` rule). Deltas are never negative.

Pure: parsing uses ``prometheus_client.parser`` (the reference parser); no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

Kind = Literal["flops", "read_bytes", "write_bytes", "prompt_tokens", "generation_tokens"]
KINDS: tuple[Kind, ...] = ("flops", "read_bytes", "write_bytes", "prompt_tokens",
                           "generation_tokens")
ENGINES = ("vllm", "sglang")

# Sample name (as exposed, with the counter's ``_total``) -> (engine, kind).
METRICS: dict[str, tuple[str, Kind]] = {
    f"{engine}:{name}": (engine, kind)
    for engine in ENGINES
    for name, kind in (
        ("estimated_flops_per_gpu_total", "flops"),
        ("estimated_read_bytes_per_gpu_total", "read_bytes"),
        ("estimated_write_bytes_per_gpu_total", "write_bytes"),
        ("prompt_tokens_total", "prompt_tokens"),
        ("generation_tokens_total", "generation_tokens"),
    )
}
# Kinds that are per GPU (see the module docstring); token counters are per engine.
PER_GPU_KINDS: frozenset[Kind] = frozenset({"flops", "read_bytes", "write_bytes"})
# Labels that name a rank of the engine (one series per rank or replica).
RANK_LABELS = ("engine", "dp_rank", "tp_rank", "pp_rank", "moe_ep_rank")

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Series:
    """One counter sample: ``name`` as exposed, its labels, value and ``_created``."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    created: float | None = None

    @property
    def key(self) -> SeriesKey:
        return (self.name, self.labels)

    @property
    def engine(self) -> str:
        return METRICS[self.name][0]

    @property
    def kind(self) -> Kind:
        return METRICS[self.name][1]

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


def parse_exposition(text: str) -> list[Series]:
    """The engine counters (see :data:`METRICS`) in a ``/metrics`` page.

    Raises ValueError when the text is not Prometheus exposition format (the caller
    counts it as a failed scrape). Other metrics on the page are ignored.
    """
    values: dict[SeriesKey, float] = {}
    created: dict[SeriesKey, float] = {}
    try:
        for family in text_string_to_metric_families(_relevant_lines(text)):
            for sample in family.samples:
                name = sample.name
                if name.endswith("_created"):
                    total = name[: -len("_created")] + "_total"
                    if total in METRICS:
                        created[(total, _labels(sample.labels))] = float(sample.value)
                    continue
                if name in METRICS:
                    values[(name, _labels(sample.labels))] = float(sample.value)
    except (ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"not Prometheus exposition text: {exc}") from exc
    return [Series(name, labels, value, created.get((name, labels)))
            for (name, labels), value in values.items()]


_BASES = frozenset(name[: -len("_total")] for name in METRICS)


def _base(name: str) -> str:
    for suffix in ("_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _relevant_lines(text: str) -> str:
    """Only the lines of the engine counters (samples, ``# HELP``/``# TYPE``): a vLLM page
    holds ~1000 histogram lines the parser would otherwise spend ~20 ms on per scrape."""
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and _base(parts[2]) in _BASES:
                keep.append(line)
        elif _base(line.split("{", 1)[0].split(None, 1)[0] if line.strip() else "") in _BASES:
            keep.append(line)
    return "\n".join(keep) + "\n"


def _labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class Delta:
    """The increase of one series since the previous scrape (``restarted``: it began
    again from zero in between)."""

    series: Series
    delta: float
    restarted: bool = False


@dataclass
class CounterDeltas:
    """Turns successive scrapes of one endpoint into per-series deltas.

    ``stats``: ``baselines`` (first sight of a series), ``restarts`` (a value went down
    or ``_created`` changed), ``invalid`` (NaN, infinite or negative values, skipped).
    """

    _last: dict[SeriesKey, Series] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: {"baselines": 0, "restarts": 0,
                                                           "invalid": 0})

    def update(self, scrape: Iterable[Series]) -> list[Delta]:
        """Deltas of ``scrape`` against the previous one; series that vanished are
        forgotten (if they come back they start from a new baseline)."""
        out: list[Delta] = []
        seen: dict[SeriesKey, Series] = {}
        for s in scrape:
            if not math.isfinite(s.value) or s.value < 0:
                self.stats["invalid"] += 1
                continue
            seen[s.key] = s
            prev = self._last.get(s.key)
            if prev is None:
                self.stats["baselines"] += 1
                continue
            restarted = s.value < prev.value or (
                s.created is not None and prev.created is not None and s.created != prev.created
            )
            if restarted:
                self.stats["restarts"] += 1
                out.append(Delta(s, s.value, restarted=True))
            else:
                out.append(Delta(s, s.value - prev.value))
        self._last = seen
        return out

    def reset(self) -> None:
        """Forget every series (after a scrape gap too long to attribute)."""
        self._last = {}
