"""Inference-engine collector: vLLM / SGLang FLOP and byte counters -> ``flop_report/1``.

An *input* of the agent next to the NVML collector and the SDK intake: once per interval
:meth:`EngineCollector.collect` scrapes each engine's Prometheus ``/metrics``, turns its
``estimated_{flops,read_bytes,write_bytes}_per_gpu_total`` counters into deltas
(:mod:`agents.engine_metrics`; restarts handled) and returns one ``flop_report/1`` per GPU
of the engine with ``source: "engine"``, covering ``[previous scrape, this tick)``.

Engines come from two places:

- configuration (:class:`EngineTarget`: ``url`` + ``workload`` [+ ``precision``,
  ``gpu_uuids`` in rank order, ``phase``]); without ``gpu_uuids`` the GPUs are those of
  the engine process found on this host listening on the same port;
- process discovery (:mod:`agents.engine_discovery`): an engine launch command above a
  pid NVML lists on a GPU. Its workload is the agent's attribution of those GPU pids
  (the name the telemetry's ``workloads`` carries, so the stream joins them).

Per-GPU split. The counters are already per GPU (each series is what one GPU of that
engine replica did; see :mod:`agents.engine_metrics`). So every GPU of the engine gets the
**mean** of the series' deltas (vLLM: one series per data-parallel engine; SGLang: one per
logging scheduler rank; duplicated ranks do not double-count). Where the labels identify
the GPU -- configured ``gpu_uuids`` in rank order and exactly one series per GPU, each
with a distinct rank label -- series *i* (by rank) goes to GPU *i* instead. ``bytes`` is
read + write bytes. ``tokens`` (prompt + generation deltas, per engine) is split evenly
over the GPUs. ``phase`` is the configured one, else ``decode`` when only generation
tokens advanced, ``prefill`` when only prompt tokens did, else unset. ``model`` is the
``model_name`` label.

An engine whose FLOP counter is absent, or stays flat while its token counters advance
(exported but not fed: vLLM without ``--enable-mfu-metrics``), gets no report for that
interval -- a zero would claim a busy GPU did no work; its GPU-seconds stay unknown.

A scrape that fails keeps the previous state: the next good scrape covers the gap. A gap
longer than ``max_gap_s`` (default 3600 s, the longest a report may cover) restarts the
series from a baseline. Nothing here raises into the agent loop; failures are counted in
``stats``.
"""

from __future__ import annotations

import logging
import math
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.engine_discovery import FoundEngine, ProcEngineFinder
from agents.engine_metrics import RANK_LABELS, CounterDeltas, Delta, parse_exposition
from mfu.events import MAX_INTERVAL_S, FlopReport
from mfu.precision import Precision

log = logging.getLogger(__name__)

Fetch = Callable[[str, float], str]
MAX_PAGE_BYTES = 16 << 20  # a /metrics page larger than this is refused


class EngineTarget(BaseModel):
    """An engine named in the agent configuration (``engines:`` list)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="metrics URL, e.g. http://127.0.0.1:8000/metrics "
                     "(host:port alone gets http:// and /metrics)")
    workload: str = Field(min_length=1, max_length=256)
    precision: Precision = "bf16"
    gpu_uuids: tuple[str, ...] = Field(
        default=(), description="the engine's GPUs in rank order; empty: the GPUs of the "
        "engine process listening on the URL's port")
    phase: Literal["prefill", "decode"] | None = None

    @field_validator("url")
    @classmethod
    def _normalize(cls, value: str) -> str:
        url = value.strip()
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"engine url must be http(s)://HOST:PORT/metrics, got {value!r}")
        if parts.path in ("", "/"):
            url = url.rstrip("/") + "/metrics"
        return url

    @property
    def port(self) -> int | None:
        parts = urlsplit(self.url)
        return parts.port or {"http": 80, "https": 443}[parts.scheme]


def http_fetch(url: str, timeout_s: float) -> str:
    """GET ``url`` (text, at most :data:`MAX_PAGE_BYTES`); raises OSError/ValueError."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = response.read(MAX_PAGE_BYTES + 1)
    if len(body) > MAX_PAGE_BYTES:
        raise ValueError(f"{url}: /metrics page exceeds {MAX_PAGE_BYTES} bytes")
    return body.decode("utf-8", "replace")


@dataclass
class _Endpoint:
    deltas: CounterDeltas = field(default_factory=CounterDeltas)
    last_ts: float | None = None


@dataclass(frozen=True)
class _Job:
    """One engine to scrape this interval."""

    url: str
    workload: str
    precision: str
    gpu_uuids: tuple[str, ...]
    ordered: bool  # gpu_uuids are in rank order (configured)
    phase: str | None


def split_per_gpu(deltas: Sequence[Delta], gpus: int, *, ordered: bool) -> list[float]:
    """Per-GPU values of per-GPU counter ``deltas`` for an engine of ``gpus`` GPUs.

    ``ordered`` with one delta per GPU, each with a distinct rank label: delta *i* (by
    rank) to GPU *i*. Otherwise every GPU gets the mean (the counters are per GPU already).
    """
    if not deltas or gpus < 1:
        return [0.0] * max(gpus, 0)
    if ordered and len(deltas) == gpus:
        ranks = [_rank(d) for d in deltas]
        if all(r is not None for r in ranks) and len(set(ranks)) == gpus:
            by_rank = sorted(zip(ranks, deltas, strict=True), key=lambda p: p[0])
            return [d.delta for _, d in by_rank]
    mean = math.fsum(d.delta for d in deltas) / len(deltas)
    return [mean] * gpus


def _rank(delta: Delta) -> tuple[int, ...] | None:
    values = []
    for name in RANK_LABELS:
        value = delta.series.label(name)
        if value is not None:
            try:
                values.append(int(value))
            except ValueError:
                return None
    return tuple(values) if values else None


def infer_phase(prompt_tokens: float | None, generation_tokens: float | None) -> str | None:
    """``decode`` when only generation tokens advanced, ``prefill`` when only prompt
    tokens did, else None (mixed, idle or unknown)."""
    if prompt_tokens is None or generation_tokens is None:
        return None
    if generation_tokens > 0 and prompt_tokens == 0:
        return "decode"
    if prompt_tokens > 0 and generation_tokens == 0:
        return "prefill"
    return None


class EngineCollector:
    """Scrapes inference engines once per :meth:`collect`.

    ``targets``: configured engines. ``discover``: also find engines above GPU pids in
    ``proc_root``. ``fetch(url, timeout_s) -> text`` is the HTTP seam (default
    :func:`http_fetch`). ``workload_of(pid) -> str``: the agent's attribution (default:
    ``"unattributed"``). ``timeout_s``: per scrape.
    """

    def __init__(self, node: str, *, targets: Sequence[EngineTarget] = (),
                 discover: bool = True, proc_root: str | Path = "/proc",
                 fetch: Fetch | None = None, timeout_s: float = 0.5,
                 workload_of: Callable[[int], str] | None = None,
                 max_gap_s: float = MAX_INTERVAL_S) -> None:
        self.node = node
        self.targets = tuple(targets)
        self.discover = discover
        self.finder = ProcEngineFinder(proc_root)
        self.fetch = fetch or http_fetch
        self.timeout_s = timeout_s
        self.workload_of = workload_of or (lambda _pid: "unattributed")
        self.max_gap_s = max_gap_s
        self.stats: Counter[tuple[str, ...]] = Counter()
        self._endpoints: dict[str, _Endpoint] = {}
        self._hinted: set[str] = set()

    @property
    def active(self) -> bool:
        return bool(self.targets) or self.discover

    # -- which engines -----------------------------------------------------------------
    def _jobs(self, pid_to_uuid: Mapping[int, str]) -> list[_Job]:
        found: list[FoundEngine] = []
        if self.discover or any(not t.gpu_uuids for t in self.targets):
            try:
                found = self.finder.find(pid_to_uuid)
            except OSError:
                self.stats[("discovery_errors",)] += 1
        by_port = {f.command.port: f for f in found}
        jobs: list[_Job] = []
        configured_ports = set()
        for t in self.targets:
            configured_ports.add(t.port)
            gpus, ordered = t.gpu_uuids, bool(t.gpu_uuids)
            if not gpus and t.port in by_port:
                gpus = by_port[t.port].gpu_uuids
            jobs.append(_Job(t.url, t.workload, t.precision, gpus, ordered, t.phase))
        if self.discover:
            for f in found:
                if f.command.port in configured_ports:
                    continue  # configuration names it: its workload/precision win
                names = Counter(self.workload_of(pid) for pid in f.pids)
                workload = min(names, key=lambda n: (-names[n], n))  # most common, stable
                jobs.append(_Job(f.url or f.command.url, workload, f.command.precision,
                                 f.gpu_uuids, False, None))
        return jobs

    # -- one interval ------------------------------------------------------------------
    def collect(self, ts: float, pid_to_uuid: Mapping[int, str] | None = None
                ) -> list[FlopReport]:
        """Reports for the interval ending at ``ts`` (epoch s). Never raises."""
        try:
            jobs = self._jobs(pid_to_uuid or {})
        except Exception:  # discovery must not end the agent's interval
            self.stats[("errors",)] += 1
            log.exception("engine_discovery_failed")
            return []
        if not jobs:
            return []
        if len(jobs) == 1:
            pages = [self._scrape(jobs[0].url)]
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
                pages = list(pool.map(lambda j: self._scrape(j.url), jobs))
        reports: list[FlopReport] = []
        for job, page in zip(jobs, pages, strict=True):
            if page is None:
                continue
            try:
                reports.extend(self._reports(job, page, ts))
            except Exception:
                self.stats[("errors",)] += 1
                log.exception("engine_collect_failed url=%s", job.url)
        live = {j.url for j in jobs}
        for url in [u for u in self._endpoints if u not in live]:
            del self._endpoints[url]  # the engine is gone; if it returns, a new baseline
        return reports

    def _scrape(self, url: str) -> str | None:
        try:
            text = self.fetch(url, self.timeout_s)
        except Exception as exc:  # OSError, HTTPError, timeouts, a bad URL
            self.stats[("scrape_errors",)] += 1
            log.debug("engine_scrape_failed url=%s error=%s", url, exc)
            return None
        self.stats[("scrapes",)] += 1
        return text

    def _reports(self, job: _Job, page: str, ts: float) -> list[FlopReport]:
        try:
            series = parse_exposition(page)
        except ValueError as exc:
            self.stats[("parse_errors",)] += 1
            log.warning("engine_metrics_unparsable url=%s error=%s", job.url, exc)
            return []
        state = self._endpoints.setdefault(job.url, _Endpoint())
        start = state.last_ts
        if start is not None and not 0 < ts - start <= self.max_gap_s:
            state.deltas.reset()  # too long a gap (or a clock step back) to attribute
            start = None
        restarts_before = state.deltas.stats["restarts"]
        deltas = state.deltas.update(series)
        self.stats[("restarts",)] += state.deltas.stats["restarts"] - restarts_before
        state.last_ts = ts
        if start is None:
            return []  # a baseline: when the counted work was done is unknown
        by_kind: dict[str, list[Delta]] = {}
        for d in deltas:
            by_kind.setdefault(d.series.kind, []).append(d)
        if "flops" not in by_kind:
            self.stats[("no_flop_counters",)] += 1
            self._hint(job.url)
            return []
        prompt = _total(by_kind.get("prompt_tokens"))
        generation = _total(by_kind.get("generation_tokens"))
        if (prompt or generation) and not any(d.delta for d in by_kind["flops"]):
            # Tokens moved but the FLOP counter did not: it is exported but not fed
            # (vLLM without --enable-mfu-metrics, or a platform that never fills it).
            # Reporting 0 FLOPs would claim a busy GPU did no work.
            self.stats[("flops_not_advancing",)] += 1
            self._hint(job.url)
            return []
        gpus = job.gpu_uuids
        if not gpus:
            self.stats[("no_gpu",)] += 1
            return []
        n = len(gpus)
        flops = split_per_gpu(by_kind["flops"], n, ordered=job.ordered)
        has_bytes = "read_bytes" in by_kind or "write_bytes" in by_kind
        read = split_per_gpu(by_kind.get("read_bytes", []), n, ordered=job.ordered)
        write = split_per_gpu(by_kind.get("write_bytes", []), n, ordered=job.ordered)
        tokens = None if prompt is None and generation is None else \
            ((prompt or 0.0) + (generation or 0.0)) / n
        phase = job.phase or infer_phase(prompt, generation)
        model = by_kind["flops"][0].series.label("model_name")
        url_id = f"{zlib.crc32(job.url.encode()):08x}"
        out = []
        for rank, uuid in enumerate(gpus):
            fields: dict[str, Any] = {
                "event_id": f"engine-{self.node}-{url_id}-{uuid}-{int(ts * 1000)}",
                "workload": job.workload, "rank": rank, "node": self.node,
                "gpu_uuid": uuid, "start": start, "end": ts, "flops": flops[rank],
                "precision": job.precision, "source": "engine",
                "bytes": read[rank] + write[rank] if has_bytes else None,
                "tokens": tokens, "phase": phase, "model": model,
            }
            try:
                out.append(FlopReport.model_validate(fields))
            except ValidationError as exc:
                self.stats[("invalid_reports",)] += 1
                log.warning("engine_report_invalid url=%s gpu=%s error=%s", job.url, uuid,
                            " ".join(str(exc).split()))
        self.stats[("reports",)] += len(out)
        return out

    def _hint(self, url: str) -> None:
        if url not in self._hinted:  # once per engine: the counters explain the rest
            self._hinted.add(url)
            log.warning("engine_flop_counters_missing url=%s: its estimated FLOP counters are "
                        "absent or not advancing; start vLLM/SGLang with --enable-mfu-metrics "
                        "(SGLang also --enable-metrics)", url)


def _total(deltas: list[Delta] | None) -> float | None:
    return None if deltas is None else math.fsum(d.delta for d in deltas)
