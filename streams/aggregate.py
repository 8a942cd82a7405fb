"""Window accumulators and the MFU arithmetic (pure: no Kafka, Faust or InfluxDB).

Two stages, because a workload's ranks span nodes while inputs are keyed by node:

1. :class:`NodeWindow` gathers everything one node did in one window (its partition holds
   all its telemetry and FLOP reports). Closing it gives the node's final ``mfu_window/1``
   and :class:`Partial` sums per workload and for the fleet.
2. :class:`RollupWindow` merges the partials of one workload (or the fleet) from every
   node into the final record.

Units: ``*_flops`` are FLOP totals over the window, ``*_seconds`` / ``*_s`` are
GPU-seconds, ``peak_flops`` is Σ peak FLOP/s × GPU-seconds (so ``mfu = achieved / peak``
exactly), ``*_bytes`` are byte totals, ``*_j`` joules.

FLOP sources (DESIGN.md §8): every GPU-second is ``reported`` / ``engine`` (covered by a
flop_report/1 of that source), or, uncovered, ``idle`` / ``counters`` / ``none`` by the
class of its telemetry samples (:func:`mfu.ofu.classify`, done per sample with float
adds). ``peak_flops`` (and so ``mfu``) counts the *known* GPU-seconds only (reported +
engine + idle): a busy GPU that reports nothing is never a zero.

On one GPU, each workload's share (telemetry's 1/k split, or a report's coverage for a
workload telemetry does not list) is covered up to its own reports' coverage; the rest
of the share, and the GPU's unattributed seconds, take the sample classes pro rata (exact
where a GPU is wholly covered or wholly uncovered, the usual case).
"""

from __future__ import annotations

import functools
import statistics
from collections import Counter
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from mfu.events import FlopReport, FlopSources, GpuSample, MfuWindow, Parallelism
from mfu.ofu import IDLE_SM_UTIL, IDLE_TENSOR_ACTIVE, ofu_flops, reference_clocks
from mfu.peaks import peak_bytes_per_s, peak_flops_per_s
from mfu.roofline import regime as roofline_regime

# Precision assumed for the denominator of a GPU that reported no FLOPs in the window
# (idle or silent): MFU is conventionally stated against the dense bf16 peak.
DEFAULT_PRECISION = "bf16"
MAX_RANKS_PER_PARTIAL = 4096


@functools.lru_cache(maxsize=4096)
def cached_peak(gpu_name: str, precision: str, mig_profile: str | None) -> float | str:
    """Peak FLOP/s, or the reason it is unknown (a string), cached per device kind."""
    try:
        return peak_flops_per_s(gpu_name, precision, mig_profile=mig_profile)  # type: ignore[arg-type]
    except (LookupError, ValueError) as exc:
        return str(exc) or f"no peak for {gpu_name!r} at {precision}"


@functools.lru_cache(maxsize=4096)
def cached_bandwidth(gpu_name: str, mig_profile: str | None) -> float:
    """Peak memory bandwidth, bytes/s (MIG: by memory slices); 0 where unknown."""
    try:
        return peak_bytes_per_s(gpu_name, mig_profile=mig_profile)
    except (LookupError, ValueError):
        return 0.0


def _rate_or_zero(gpu_name: str, precision: str, mig_profile: str | None) -> float:
    p = cached_peak(gpu_name, precision, mig_profile)
    return 0.0 if isinstance(p, str) else p


@dataclass(slots=True)
class GpuAcc:
    """One GPU (or MIG slice) in one node window."""

    gpu_name: str = ""
    mig_profile: str | None = None
    seconds: float = 0.0  # telemetry coverage in the window, seconds
    sm_util_s: float = 0.0  # Σ sm_util × seconds where known
    mem_util_s: float = 0.0
    util_seconds: float = 0.0  # seconds with a known sm_util (A100 MIG slices have none)
    tensor_s: float = 0.0  # Σ tensor_active × seconds where known
    tensor_seconds: float = 0.0
    mem_used_ratio_max: float | None = None
    # workload -> attributed seconds (a GPU shared by k workloads gives each 1/k)
    workloads: dict[str, float] = field(default_factory=dict)
    # Sample classes (what an uncovered second's FLOP source is), seconds.
    idle_s: float = 0.0
    counters_s: float = 0.0
    none_s: float = 0.0
    # OFU: seconds with pipe counters; Σ activity × clock ratio × seconds per pipe, over
    # all such samples and (i*) over the ``idle``-class ones (the ``counters`` class
    # has the difference).
    pipe_s: float = 0.0
    tensor_eff_s: float = 0.0
    fp32_eff_s: float = 0.0
    fp64_eff_s: float = 0.0
    i_tensor_eff_s: float = 0.0
    i_fp32_eff_s: float = 0.0
    i_fp64_eff_s: float = 0.0
    dram_s: float = 0.0  # Σ dram_active × seconds where known
    dram_seconds: float = 0.0
    energy_j: float = 0.0  # sample energy pro rata to the overlap
    energy_seconds: float = 0.0  # seconds whose energy is known
    tenants: dict[str, str] = field(default_factory=dict)  # workload -> tenant
    last_tenants: dict[str, str] | None = None  # the last sample's (skips re-merging)


@dataclass
class ReportAcc:
    """FLOPs one (workload, rank, GPU) reported in one node window."""

    workload: str
    gpu_uuid: str
    flops: float = 0.0
    hardware_flops: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0  # report coverage in the window, seconds
    by_precision: dict[str, float] = field(default_factory=dict)  # precision -> FLOPs
    expected_mfu: float | None = None
    model: str | None = None
    phase: str | None = None
    parallelism: dict[str, int] | None = None
    engine_seconds: float = 0.0  # coverage by source "engine" reports (the rest is "sdk")
    bytes: float = 0.0  # model bytes of the reports that carry bytes
    bytes_seconds: float = 0.0  # their coverage, seconds
    bytes_flops: float = 0.0  # their FLOPs (for the arithmetic intensity)


# Additive sums of the §8 accounting, on every Partial (merge adds them).
ACCT_FIELDS = (
    "src_reported_s", "src_engine_s", "src_idle_s", "src_counters_s", "src_none_s",
    "counters_peak_flops", "estimated_flops", "ofu_flops", "ofu_peak_flops",
    "achieved_bytes", "bytes_seconds", "peak_bytes", "bytes_flops", "bytes_peak_flops",
    "dram_s", "dram_seconds", "energy_j", "energy_seconds", "energy_known_j",
    "energy_flops", "energy_tokens",
)
SUM_FLOAT_FIELDS = (
    "achieved_flops", "hardware_flops", "peak_flops", "gpu_seconds", "sm_util_s",
    "mem_util_s", "util_seconds", "tensor_s", "tensor_seconds", "tokens",
    "allocated_seconds", "allocated_peak_flops", "allocated_flops", *ACCT_FIELDS,
)
SUM_INT_FIELDS = ("gpus", "late_events", "duplicates", "allocated_gpus")
SUM_FIELDS = SUM_FLOAT_FIELDS + SUM_INT_FIELDS


class Partial(BaseModel):
    """Internal ``mfu_partial/1``: one node's share of a workload's or the fleet's window.

    Sums only (and per-rank pairs), so partials merge by addition in any order.
    ``peak_flops`` is over the GPU-seconds with known model FLOPs (reported, engine,
    idle); ``counters_peak_flops`` over the ``counters`` ones (for ``mfu_estimated``).
    """

    model_config = ConfigDict(extra="ignore")
    schema_name: str = Field("mfu_partial/1", alias="schema")
    scope: str
    key: str
    node: str
    window_start: float
    window_end: float
    achieved_flops: float = 0.0
    hardware_flops: float = 0.0
    peak_flops: float = 0.0
    gpu_seconds: float = 0.0
    gpus: int = 0
    sm_util_s: float = 0.0
    mem_util_s: float = 0.0
    util_seconds: float = 0.0
    tensor_s: float = 0.0
    tensor_seconds: float = 0.0
    tokens: float = 0.0
    unknown: list[str] = Field(default_factory=list)  # reasons peaks are missing
    precision_flops: dict[str, float] = Field(default_factory=dict)
    gpu_models: dict[str, float] = Field(default_factory=dict)  # model -> gpu_seconds
    late_events: int = 0
    duplicates: int = 0
    # workload scope
    ranks: list[tuple[float, float]] = Field(default_factory=list)  # (flops, peak_flops)
    expected_mfu: float | None = None
    model: str | None = None
    phase: str | None = None
    parallelism: dict[str, int] | None = None
    tenant: str | None = None
    # fleet scope: allocated-only sums
    allocated_gpus: int = 0
    allocated_seconds: float = 0.0
    allocated_peak_flops: float = 0.0
    allocated_flops: float = 0.0
    # DESIGN.md §8 sums (ACCT_FIELDS): GPU-seconds per FLOP source; OFU; bytes; energy.
    src_reported_s: float = 0.0
    src_engine_s: float = 0.0
    src_idle_s: float = 0.0
    src_counters_s: float = 0.0
    src_none_s: float = 0.0
    counters_peak_flops: float = 0.0  # peak FLOP/s × counters GPU-seconds
    estimated_flops: float = 0.0  # OFU estimate of the counters GPU-seconds, FLOPs
    ofu_flops: float = 0.0  # pipe-counter FLOPs of every GPU-second with counters
    ofu_peak_flops: float = 0.0  # peak FLOP/s × those GPU-seconds
    achieved_bytes: float = 0.0  # model bytes of reports that carry bytes
    bytes_seconds: float = 0.0  # GPU-seconds those reports cover
    peak_bytes: float = 0.0  # peak bytes/s × bytes_seconds
    bytes_flops: float = 0.0  # model FLOPs of the reports that carry bytes
    bytes_peak_flops: float = 0.0  # peak FLOP/s × bytes_seconds (ridge point)
    dram_s: float = 0.0
    dram_seconds: float = 0.0
    energy_j: float = 0.0  # all GPU-seconds
    energy_seconds: float = 0.0
    energy_known_j: float = 0.0  # energy of the known GPU-seconds (flops_per_j's denominator)
    energy_flops: float = 0.0  # model FLOPs of GPU-seconds whose energy is known
    energy_tokens: float = 0.0

    @property
    def event_id(self) -> str:
        return f"{self.scope}:{self.key}:{self.window_start:.3f}:{self.node}"


class Marker(BaseModel):
    """Internal ``mfu_marker/1``: node-stage partition ``src`` closed every window ending
    at or before ``closed_through`` (or is idle and holds nothing back)."""

    schema_name: str = Field("mfu_marker/1", alias="schema")
    src: int
    closed_through: float
    idle: bool = False


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _clamp01(x: float | None) -> float | None:
    return None if x is None else min(1.0, max(0.0, x))


def _second(kv: tuple[str, float]) -> float:
    return kv[1]


def _dominant(counter: dict[str, float]) -> str | None:
    return max(counter.items(), key=lambda kv: (kv[1], kv[0]))[0] if counter else None


@dataclass
class _Rates:
    """Per-second peaks of one GPU at its window precision (0 where unknown)."""

    flops: float
    bandwidth: float
    fp32: float
    fp64: float


def _slice(g: GpuAcc, secs: float, sdk_s: float, eng_s: float, bytes_s: float,
           flops: float, tokens: float, r: _Rates) -> dict[str, float]:
    """§8 sums of ``secs`` seconds of GPU ``g`` (its whole window or one workload's share)
    whose reports cover ``sdk_s`` / ``eng_s`` seconds (``bytes_s`` of them with bytes)
    and carry ``flops`` model FLOPs and ``tokens``."""
    frac = secs / g.seconds if g.seconds > 0 else 0.0
    cov_in = sdk_s + eng_s
    cov = min(secs, cov_in)
    rep = cov * sdk_s / cov_in if cov_in > 0 else 0.0
    eng = max(0.0, cov - rep)
    unc = secs - cov
    classed = g.idle_s + g.counters_s + g.none_s
    if classed > 0:
        u = unc / classed
        idle, cnt, none = g.idle_s * u, g.counters_s * u, g.none_s * u
    else:  # a GPU seen only in FLOP reports: whatever they do not cover is unknown
        u = 0.0
        idle = cnt = 0.0
        none = unc
    known = rep + eng + idle
    bsec = min(secs, bytes_s)
    energy = g.energy_j * frac
    e_frac = g.energy_seconds / g.seconds if g.seconds > 0 else 0.0
    return {
        "src_reported_s": rep, "src_engine_s": eng, "src_idle_s": idle,
        "src_counters_s": cnt, "src_none_s": none,
        "peak_flops": r.flops * known,
        "counters_peak_flops": r.flops * cnt,
        "estimated_flops": ofu_flops(
            (g.tensor_eff_s - g.i_tensor_eff_s) * u, (g.fp32_eff_s - g.i_fp32_eff_s) * u,
            (g.fp64_eff_s - g.i_fp64_eff_s) * u, tensor_peak_flops_per_s=r.flops,
            fp32_peak_flops_per_s=r.fp32, fp64_peak_flops_per_s=r.fp64),
        "ofu_flops": ofu_flops(g.tensor_eff_s * frac, g.fp32_eff_s * frac, g.fp64_eff_s * frac,
                               tensor_peak_flops_per_s=r.flops, fp32_peak_flops_per_s=r.fp32,
                               fp64_peak_flops_per_s=r.fp64),
        "ofu_peak_flops": r.flops * g.pipe_s * frac,
        "bytes_seconds": bsec,
        "peak_bytes": r.bandwidth * bsec,
        "bytes_peak_flops": r.flops * bsec,
        "dram_s": g.dram_s * frac,
        "dram_seconds": g.dram_seconds * frac,
        "energy_j": energy,
        "energy_seconds": g.energy_seconds * frac,
        "energy_known_j": energy * known / secs if secs > 0 else 0.0,
        "energy_flops": flops * e_frac,
        "energy_tokens": tokens * e_frac,
    }


def _add_into(acc: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        acc[k] = acc.get(k, 0.0) + v


@dataclass
class _Cover:
    """Reports of one workload on one GPU in a window."""

    sdk_s: float = 0.0
    eng_s: float = 0.0
    bytes_s: float = 0.0
    flops: float = 0.0
    tokens: float = 0.0
    bytes: float = 0.0
    bytes_flops: float = 0.0


@dataclass
class NodeWindow:
    """Everything one node did in one window ``[start, end)``."""

    node: str
    start: float
    end: float
    gpus: dict[str, GpuAcc] = field(default_factory=dict)
    reports: dict[tuple[str, int, str], ReportAcc] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # event_ids, for de-duplication
    duplicates: int = 0
    late_events: int = 0

    def add_sample(self, s: GpuSample, overlap_s: float) -> None:
        """Count ``overlap_s`` seconds of sample ``s`` in this window."""
        g = self.gpus.get(s.gpu_uuid)
        if g is None:
            g = self.gpus[s.gpu_uuid] = GpuAcc(gpu_name=s.gpu_name, mig_profile=s.mig_profile)
        g.seconds += overlap_s
        sm = s.sm_util
        ta = s.tensor_active
        if sm is not None:
            g.sm_util_s += sm * overlap_s
            g.mem_util_s += (s.mem_util or 0.0) * overlap_s
            g.util_seconds += overlap_s
        if ta is not None:
            g.tensor_s += ta * overlap_s
            g.tensor_seconds += overlap_s
        if s.mem_used_bytes is not None and s.mem_total_bytes:
            r = s.mem_used_bytes / s.mem_total_bytes
            g.mem_used_ratio_max = r if g.mem_used_ratio_max is None else max(r, g.mem_used_ratio_max)
        if s.workloads:
            share = overlap_s / len(s.workloads)
            for w in s.workloads:
                g.workloads[w] = g.workloads.get(w, 0.0) + share
        # §8, per sample: the class of these seconds if no report covers them, and the
        # pipe activity x clock ratio sums OFU is computed from at close. The rules of
        # mfu.ofu.classify / pipe_clock_ratios, inlined (hot path; tests hold them equal).
        # Idle samples' pipe sums are kept apart (they are rare and mostly zero), so the
        # ``counters`` class's sums are total - idle at close: fewer adds per busy sample.
        f32 = s.fp32_active
        f64 = s.fp64_active
        if ta is None and f32 is None and f64 is None and s.fp16_active is None:
            if sm is not None and sm <= IDLE_SM_UTIL:
                g.idle_s += overlap_s
            else:
                g.none_s += overlap_s
        else:
            # Clock ratio per pipe against the clock its datasheet peak assumes (the
            # tensor clock for the tensor pipe, boost for FP32/FP64; mfu.ofu docstring).
            clk = s.sm_clock_mhz
            if clk is None:
                w_s = w_v = overlap_s
            else:
                t_ref, v_ref = reference_clocks(s.gpu_name)
                t_ref = t_ref or s.max_sm_clock_mhz
                v_ref = v_ref or s.max_sm_clock_mhz
                w_s = overlap_s if not t_ref or clk >= t_ref else clk / t_ref * overlap_s
                w_v = overlap_s if not v_ref or clk >= v_ref else clk / v_ref * overlap_s
            g.pipe_s += overlap_s
            if sm is not None:
                idle = sm <= IDLE_SM_UTIL and (ta is None or ta <= IDLE_TENSOR_ACTIVE)
            else:
                idle = ta is not None and ta <= IDLE_TENSOR_ACTIVE
            if idle:
                g.idle_s += overlap_s
            else:
                g.counters_s += overlap_s
            if ta is not None:
                te = ta * w_s
                g.tensor_eff_s += te
                if idle:
                    g.i_tensor_eff_s += te
            if f32 is not None:
                e32 = f32 * w_v
                g.fp32_eff_s += e32
                if idle:
                    g.i_fp32_eff_s += e32
            if f64 is not None:
                e64 = f64 * w_v
                g.fp64_eff_s += e64
                if idle:
                    g.i_fp64_eff_s += e64
        d = s.dram_active
        if d is not None:
            g.dram_s += d * overlap_s
            g.dram_seconds += overlap_s
        e = s.energy_j
        if e is not None:
            g.energy_j += e * (overlap_s / s.interval_s)
            g.energy_seconds += overlap_s
        tn = s.tenants
        if tn and tn is not g.last_tenants and tn != g.last_tenants:
            g.tenants.update(tn)
            g.last_tenants = tn

    def add_report(self, r: FlopReport, overlap_s: float, fraction: float) -> None:
        """Count ``fraction`` of report ``r`` (its share of [start, end) in this window)."""
        k = (r.workload, r.rank, r.gpu_uuid)
        acc = self.reports.get(k)
        if acc is None:
            acc = self.reports[k] = ReportAcc(workload=r.workload, gpu_uuid=r.gpu_uuid)
        flops = r.flops * fraction
        acc.flops += flops
        acc.hardware_flops += (r.hardware_flops if r.hardware_flops is not None else r.flops) * fraction
        acc.tokens += (r.tokens or 0.0) * fraction
        acc.seconds += overlap_s
        bp = acc.by_precision
        bp[r.precision] = bp.get(r.precision, 0) + (flops if flops > 0 else 1e-300)
        if r.expected_mfu is not None:
            acc.expected_mfu = r.expected_mfu
        acc.model = r.model or acc.model
        acc.phase = r.phase or acc.phase
        if r.parallelism is not None:
            acc.parallelism = r.parallelism.model_dump()
        if r.source == "engine":
            acc.engine_seconds += overlap_s
        if r.bytes is not None:
            acc.bytes += r.bytes * fraction
            acc.bytes_seconds += overlap_s
            acc.bytes_flops += flops

    # --- closing ---------------------------------------------------------------

    def _gpu_precision(self) -> dict[str, str]:
        """Precision each GPU's peak is taken at: that of most of its FLOPs."""
        # Plain dicts in Counter.update's insertion order; max() keeps the first of equal
        # sums, as Counter.most_common(1) does (it is max() too): the same answer, without
        # a Counter per GPU and window.
        per_gpu: dict[str, dict[str, float]] = {}
        for acc in self.reports.values():
            sums = per_gpu.get(acc.gpu_uuid)
            if sums is None:
                per_gpu[acc.gpu_uuid] = dict(acc.by_precision)
            else:
                for k, v in acc.by_precision.items():
                    sums[k] = sums.get(k, 0) + v
        return {g: max(c.items(), key=_second)[0] for g, c in per_gpu.items() if c}

    def close(
        self, fleet: str, registry: dict[str, tuple[str, str | None]]
    ) -> tuple[MfuWindow, list[Partial]]:
        """Final node record plus partials (one per workload, one for the fleet).

        ``registry`` maps gpu_uuid -> (gpu_name, mig_profile) learned from earlier
        telemetry, for GPUs that reported FLOPs in a window without a sample.
        """
        precisions = self._gpu_precision()
        window_s = self.end - self.start
        # GPUs that only appear in FLOP reports: count their report coverage.
        for acc in self.reports.values():
            if acc.gpu_uuid not in self.gpus:
                name, mig = registry.get(acc.gpu_uuid, ("", None))
                g = self.gpus[acc.gpu_uuid] = GpuAcc(gpu_name=name, mig_profile=mig)
                g.seconds = min(window_s, acc.seconds)
        rates: dict[str, _Rates] = {}
        unknown: dict[str, str] = {}
        for uuid, g in self.gpus.items():
            if not g.gpu_name:
                unknown[uuid] = f"GPU {uuid} reported FLOPs but sent no telemetry yet"
                rates[uuid] = _Rates(0.0, 0.0, 0.0, 0.0)
                continue
            p = cached_peak(g.gpu_name, precisions.get(uuid, DEFAULT_PRECISION), g.mig_profile)
            if isinstance(p, str):
                unknown[uuid] = p
                p = 0.0
            rates[uuid] = _Rates(p, cached_bandwidth(g.gpu_name, g.mig_profile),
                                 _rate_or_zero(g.gpu_name, "fp32", g.mig_profile),
                                 _rate_or_zero(g.gpu_name, "fp64", g.mig_profile))

        flops_by_gpu: Counter[str] = Counter()
        hw_by_gpu: Counter[str] = Counter()
        precision_flops: Counter[str] = Counter()
        for acc in self.reports.values():
            flops_by_gpu[acc.gpu_uuid] += acc.flops
            hw_by_gpu[acc.gpu_uuid] += acc.hardware_flops
            precision_flops.update(acc.by_precision)
        tokens = sum(a.tokens for a in self.reports.values())

        # Workload shares of each GPU and their report coverage.
        gpu_share: dict[str, dict[str, float]] = {}  # workload -> gpu -> seconds
        for u, g in self.gpus.items():
            for w, secs in g.workloads.items():
                gpu_share.setdefault(w, {})[u] = secs
        covers: dict[tuple[str, str], _Cover] = {}
        for acc in self.reports.values():
            # a GPU reporting FLOPs for w belongs to w even if unlisted
            gpu_share.setdefault(acc.workload, {}).setdefault(
                acc.gpu_uuid, min(self.gpus[acc.gpu_uuid].seconds, acc.seconds))
            c = covers.get((acc.workload, acc.gpu_uuid))
            if c is None:
                c = covers[(acc.workload, acc.gpu_uuid)] = _Cover()
            c.sdk_s += acc.seconds - acc.engine_seconds
            c.eng_s += acc.engine_seconds
            c.bytes_s += acc.bytes_seconds
            c.flops += acc.flops
            c.tokens += acc.tokens
            c.bytes += acc.bytes
            c.bytes_flops += acc.bytes_flops

        # Whole-GPU sums: each workload's coverage counts up to its share of the GPU.
        gpu_cover: dict[str, _Cover] = {u: _Cover() for u in self.gpus}
        for w, shares in gpu_share.items():
            for u, secs in shares.items():
                c = covers.get((w, u))
                if c is None:
                    continue
                gc = gpu_cover[u]
                cov_in = c.sdk_s + c.eng_s
                cov = min(secs, cov_in)
                rep = cov * c.sdk_s / cov_in if cov_in > 0 else 0.0
                gc.sdk_s += rep
                gc.eng_s += max(0.0, cov - rep)
                gc.bytes_s += min(secs, c.bytes_s)
                gc.flops += c.flops
                gc.tokens += c.tokens
                gc.bytes += c.bytes
                gc.bytes_flops += c.bytes_flops
        slices: dict[str, dict[str, float]] = {}
        for u, g in self.gpus.items():
            gc = gpu_cover[u]
            sl = _slice(g, g.seconds, gc.sdk_s, gc.eng_s, gc.bytes_s, gc.flops, gc.tokens, rates[u])
            sl["achieved_bytes"] = gc.bytes
            sl["bytes_flops"] = gc.bytes_flops
            slices[u] = sl

        fleet_p = self._partial("fleet", fleet, self.gpus.keys(), slices, unknown, flops_by_gpu,
                                hw_by_gpu, precision_flops, tokens)
        fleet_p.late_events, fleet_p.duplicates = self.late_events, self.duplicates
        allocated = [u for u, g in self.gpus.items() if g.workloads or flops_by_gpu.get(u)]
        fleet_p.allocated_gpus = len(allocated)
        fleet_p.allocated_seconds = sum(self.gpus[u].seconds for u in allocated)
        fleet_p.allocated_peak_flops = sum(slices[u]["peak_flops"] for u in allocated)
        # MFU ratios pair FLOPs and peak of the same GPUs: those with a known peak.
        fleet_p.allocated_flops = sum(flops_by_gpu.get(u, 0.0) for u in allocated
                                      if u not in unknown)

        node_rec = finalize(fleet_p, scope="node", key=self.node, fleet=fleet)
        if unknown:
            # The node record keeps every FLOP it did (its MFU is null); the fleet's MFU is
            # stated over GPUs with a known peak, so their FLOPs alone go to the roll-up,
            # or one unknown GPU would inflate fleet MFU (even above 1).
            fleet_p.achieved_flops = sum(f for u, f in flops_by_gpu.items() if u not in unknown)
            fleet_p.hardware_flops = sum(f for u, f in hw_by_gpu.items() if u not in unknown)
            fleet_p.bytes_flops = sum(slices[u]["bytes_flops"] for u in self.gpus if u not in unknown)
        partials = [fleet_p]
        partials.extend(self._workload_partials(gpu_share, covers, rates, unknown))
        return node_rec, partials

    def _partial(self, scope: str, key: str, gpu_ids, slices, unknown, flops_by_gpu, hw_by_gpu,
                 precision_flops, tokens) -> Partial:
        # Sums in locals, one model construction: attribute assignment on a pydantic
        # model costs about a microsecond, and a window closes ~10 of them per GPU.
        gpus = 0
        gpu_seconds = sm_util_s = mem_util_s = util_seconds = tensor_s = tensor_seconds = 0.0
        acct: dict[str, float] = {}
        reasons: list[str] = []
        models: Counter[str] = Counter()
        for u in gpu_ids:
            g = self.gpus[u]
            gpus += 1
            gpu_seconds += g.seconds
            sm_util_s += g.sm_util_s
            mem_util_s += g.mem_util_s
            util_seconds += g.util_seconds
            tensor_s += g.tensor_s
            tensor_seconds += g.tensor_seconds
            _add_into(acct, slices[u])
            if u in unknown:
                reasons.append(unknown[u])
            models[g.gpu_name or "unknown"] += g.seconds
        return Partial(scope=scope, key=key, node=self.node, window_start=self.start,
                       window_end=self.end, gpus=gpus, gpu_seconds=gpu_seconds,
                       sm_util_s=sm_util_s, mem_util_s=mem_util_s, util_seconds=util_seconds,
                       tensor_s=tensor_s, tensor_seconds=tensor_seconds, unknown=reasons,
                       achieved_flops=sum(flops_by_gpu.values()),
                       hardware_flops=sum(hw_by_gpu.values()),
                       precision_flops=dict(precision_flops), gpu_models=dict(models),
                       tokens=tokens, **acct)

    def _workload_partials(self, gpu_share: dict[str, dict[str, float]],
                           covers: dict[tuple[str, str], _Cover], rates: dict[str, _Rates],
                           unknown: dict[str, str]) -> list[Partial]:
        by_workload: dict[str, list[ReportAcc]] = {}
        for acc in self.reports.values():
            by_workload.setdefault(acc.workload, []).append(acc)
        empty = _Cover()
        out = []
        for w, shares in gpu_share.items():
            accs = by_workload.get(w, [])
            # Sums in locals (see _partial), in the same order as before.
            gpus = 0
            gpu_seconds = sm_util_s = mem_util_s = util_seconds = tensor_s = 0.0
            tensor_seconds = 0.0
            acct: dict[str, float] = {}
            reasons: list[str] = []
            models: Counter[str] = Counter()
            tenant: str | None = None
            for u, secs in shares.items():
                g = self.gpus[u]
                frac = secs / g.seconds if g.seconds > 0 else 0.0
                gpus += 1
                gpu_seconds += secs
                sm_util_s += g.sm_util_s * frac
                mem_util_s += g.mem_util_s * frac
                util_seconds += g.util_seconds * frac
                tensor_s += g.tensor_s * frac
                tensor_seconds += g.tensor_seconds * frac
                c = covers.get((w, u), empty)
                sl = _slice(g, secs, c.sdk_s, c.eng_s, c.bytes_s, c.flops, c.tokens, rates[u])
                sl["achieved_bytes"] = c.bytes
                sl["bytes_flops"] = c.bytes_flops
                _add_into(acct, sl)
                if u in unknown:
                    reasons.append(unknown[u])
                models[g.gpu_name or "unknown"] += secs
                t = g.tenants.get(w)
                if t is not None and (tenant is None or t < tenant):
                    tenant = t
            achieved_flops = hardware_flops = tokens = 0.0
            ranks: list[tuple[float, float]] = []
            expected_mfu: float | None = None
            model: str | None = None
            phase: str | None = None
            parallelism: dict[str, int] | None = None
            prec: Counter[str] = Counter()
            for acc in accs:
                achieved_flops += acc.flops
                hardware_flops += acc.hardware_flops
                tokens += acc.tokens
                prec.update(acc.by_precision)
                rank_peak = rates[acc.gpu_uuid].flops * shares.get(acc.gpu_uuid, 0.0)
                if len(ranks) < MAX_RANKS_PER_PARTIAL:
                    ranks.append((acc.flops, rank_peak))
                expected_mfu = acc.expected_mfu if acc.expected_mfu is not None else expected_mfu
                model = acc.model or model
                phase = acc.phase or phase
                parallelism = acc.parallelism or parallelism
            out.append(Partial(
                scope="workload", key=w, node=self.node, window_start=self.start,
                window_end=self.end, gpus=gpus, gpu_seconds=gpu_seconds, sm_util_s=sm_util_s,
                mem_util_s=mem_util_s, util_seconds=util_seconds, tensor_s=tensor_s,
                tensor_seconds=tensor_seconds, unknown=reasons,
                gpu_models=dict(models), achieved_flops=achieved_flops,
                hardware_flops=hardware_flops, tokens=tokens, ranks=ranks,
                expected_mfu=expected_mfu, model=model, phase=phase, parallelism=parallelism,
                precision_flops=dict(prec), tenant=tenant, **acct))
        return out


def merge(into: Partial, other: Partial) -> None:
    """Add ``other``'s sums into ``into`` (same scope, key and window)."""
    # On the models' field storage: Partial does not validate assignments, and pydantic's
    # __setattr__ costs about a microsecond per field (some 50 per merge).
    mine, theirs = into.__dict__, other.__dict__
    for name in SUM_FIELDS:
        mine[name] += theirs[name]
    into.unknown.extend(other.unknown)
    for k, v in other.precision_flops.items():
        into.precision_flops[k] = into.precision_flops.get(k, 0.0) + v
    for k, v in other.gpu_models.items():
        into.gpu_models[k] = into.gpu_models.get(k, 0.0) + v
    room = MAX_RANKS_PER_PARTIAL - len(into.ranks)
    into.ranks.extend(other.ranks[:room])
    into.expected_mfu = other.expected_mfu if other.expected_mfu is not None else into.expected_mfu
    into.model = other.model or into.model
    into.phase = other.phase or into.phase
    into.parallelism = other.parallelism or into.parallelism
    # The smallest name, so the result does not depend on the order nodes arrive in.
    if other.tenant is not None and (into.tenant is None or other.tenant < into.tenant):
        into.tenant = other.tenant


def _no_known_reason(p: Partial) -> str:
    busy = p.src_counters_s + p.src_none_s
    return (f"no GPU-seconds with known model FLOPs: {busy:.6g} GPU-seconds busy without a "
            f"FLOP report ({p.src_counters_s:.6g} estimated from counters, see mfu_estimated; "
            f"{p.src_none_s:.6g} without pipe counters, unknown)")


def accounting_fields(p: Partial, *, mfu_defined: bool) -> dict[str, object]:
    """The DESIGN.md §8 fields of a record from merged sums.

    ``mfu_defined``: False where the window's MFU is null for a missing peak (then
    ``mfu_estimated`` is too: its denominator has the same hole).
    """
    s = FlopSources(reported=max(0.0, p.src_reported_s), engine=max(0.0, p.src_engine_s),
                    idle=max(0.0, p.src_idle_s), counters=max(0.0, p.src_counters_s),
                    none=max(0.0, p.src_none_s))
    total = s.total_s
    has_bytes = p.bytes_seconds > 0
    has_energy = p.energy_seconds > 0
    dram = _clamp01(_ratio(p.dram_s, p.dram_seconds))
    tensor = _clamp01(_ratio(p.tensor_s, p.tensor_seconds))
    ofu = _ratio(p.ofu_flops, p.ofu_peak_flops)
    # The counters' compute side of the regime is the fraction of the FLOP roof the pipes
    # used: OFU (tensor + fp32 + fp64 pipes) where pipe counters exist. tensor_active alone
    # would call fp32 work (tensor cores idle) memory-bound at any MFU.
    compute = _clamp01(ofu) if ofu is not None else tensor
    return {
        "flop_sources": s,
        "coverage": _clamp01(_ratio(s.known_s, total)),
        "ofu": ofu,
        "estimated_flops": p.estimated_flops,
        "mfu_estimated": (_ratio(p.achieved_flops + p.estimated_flops,
                                 p.peak_flops + p.counters_peak_flops) if mfu_defined else None),
        "achieved_bytes": p.achieved_bytes if has_bytes else None,
        "peak_bytes": p.peak_bytes if has_bytes else None,
        "mbu": _ratio(p.achieved_bytes, p.peak_bytes) if has_bytes else None,
        "dram_active": dram,
        "regime": roofline_regime(p.bytes_flops, p.achieved_bytes if has_bytes else None,
                                  p.bytes_peak_flops, p.peak_bytes, compute, dram),
        "energy_j": p.energy_j if has_energy else None,
        "flops_per_j": _ratio(p.energy_flops, p.energy_known_j) if has_energy else None,
        "tokens_per_j": (_ratio(p.energy_tokens, p.energy_known_j)
                         if has_energy and p.tokens else None),
    }


def finalize(p: Partial, *, scope: str, key: str, fleet: str, nodes: int | None = None,
             late_events: int = 0) -> MfuWindow:
    """The final ``mfu_window/1`` record from merged sums."""
    reason = None
    if p.unknown:
        reasons = sorted(set(p.unknown))
        reason = "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")
    known_s = p.src_reported_s + p.src_engine_s + p.src_idle_s
    if scope == "fleet":
        # Fleet MFU is stated over the GPUs whose peak is known, saying what was left out.
        mfu = _ratio(p.achieved_flops, p.peak_flops)
        if reason:
            reason = f"excluded GPUs without a known peak: {reason}"
        elif mfu is None:
            reason = _no_known_reason(p) if p.gpu_seconds > 0 else "no GPU-seconds in window"
    else:
        mfu = None if p.unknown else _ratio(p.achieved_flops, p.peak_flops)
        if mfu is None and reason is None:
            reason = (_no_known_reason(p) if p.gpu_seconds > 0 and known_s <= 0
                      else "no GPU-seconds in window")
    models = [m for m in p.gpu_models if m != "unknown"] or list(p.gpu_models)
    rank_mfus = sorted(f / pk for f, pk in p.ranks if pk > 0)
    total = p.gpu_seconds
    rec = MfuWindow(
        event_id=MfuWindow.make_event_id(scope, key, p.window_start),
        scope=scope,  # type: ignore[arg-type]
        key=key,
        window_start=p.window_start,
        window_end=p.window_end,
        mfu=mfu,
        mfu_reason=reason if mfu is None or scope == "fleet" else None,
        achieved_flops=p.achieved_flops,
        peak_flops=p.peak_flops,
        gpu_seconds=p.gpu_seconds,
        gpus=p.gpus,
        sm_util=_clamp01(_ratio(p.sm_util_s, p.util_seconds)),
        mem_util=_clamp01(_ratio(p.mem_util_s, p.util_seconds)),
        tensor_active=_clamp01(_ratio(p.tensor_s, p.tensor_seconds)),
        precision=_dominant(p.precision_flops),  # type: ignore[arg-type]
        hfu=_ratio(p.hardware_flops, p.peak_flops) if p.hardware_flops > p.achieved_flops else None,
        tokens=p.tokens or None,
        late_events=p.late_events + late_events,
        duplicates=p.duplicates,
        gpu_model=models[0] if len(models) == 1 else ("mixed" if models else None),
        fleet=fleet,
        nodes=nodes,
    )
    updates: dict[str, object] = accounting_fields(p, mfu_defined=scope == "fleet" or not p.unknown)
    if scope in ("fleet", "node"):
        updates.update(
            allocated_gpus=p.allocated_gpus,
            allocation=_clamp01(_ratio(p.allocated_seconds, total)),
            mfu_allocated=(_ratio(p.allocated_flops, p.allocated_peak_flops)
                           if scope == "fleet" or not p.unknown else None),
        )
    if scope == "workload":
        updates.update(
            expected_mfu=p.expected_mfu,
            model=p.model,
            phase=p.phase,
            parallelism=Parallelism(**p.parallelism) if p.parallelism else None,
            ranks=len(p.ranks),
            rank_mfu_min=rank_mfus[0] if rank_mfus else None,
            rank_mfu_median=statistics.median(rank_mfus) if rank_mfus else None,
            tenant=p.tenant,
        )
    return rec.model_copy(update=updates)


@dataclass
class RollupWindow:
    """Partials of one (scope, key, window) from every node."""

    merged: Partial
    nodes: set[str] = field(default_factory=set)
    duplicates: int = 0

    def add(self, p: Partial) -> bool:
        """Merge ``p``; False if this node's partial was already merged (a replay)."""
        if p.node in self.nodes:
            self.duplicates += 1
            return False
        self.nodes.add(p.node)
        merge(self.merged, p)
        return True

    def close(self, fleet: str, late_events: int = 0) -> MfuWindow:
        return finalize(self.merged, scope=self.merged.scope, key=self.merged.key, fleet=fleet,
                        nodes=len(self.nodes), late_events=late_events)

    @classmethod
    def start(cls, p: Partial) -> RollupWindow:
        # A shallow copy with fresh containers: merge() only mutates these in place
        # (parallelism is replaced, never mutated; copied anyway). A deep copy of the
        # partial's rank list and dicts, only to replace them, cost ~5x as much.
        w = cls(merged=p.model_copy(update={
            "node": "*", "ranks": [], "unknown": [], "precision_flops": {}, "gpu_models": {},
            "tenant": None,
            "parallelism": dict(p.parallelism) if p.parallelism is not None else None}))
        for name in SUM_FLOAT_FIELDS:
            setattr(w.merged, name, 0.0)
        for name in SUM_INT_FIELDS:
            setattr(w.merged, name, 0)
        w.add(p)
        return w
