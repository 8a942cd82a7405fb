"""Window accumulators and the MFU arithmetic (pure: no Kafka, Faust or InfluxDB).

Two stages, because a workload's ranks span nodes while inputs are keyed by node:

1. :class:`NodeWindow` gathers everything one node did in one window (its partition holds
   all its telemetry and FLOP reports). Closing it gives the node's final ``mfu_window/1``
   and :class:`Partial` sums per workload and for the fleet.
2. :class:`RollupWindow` merges the partials of one workload (or the fleet) from every
   node into the final record.

Units: ``*_flops`` are FLOP totals over the window, ``*_seconds`` are GPU-seconds,
``peak_flops`` is Σ peak FLOP/s × GPU-seconds (so ``mfu = achieved / peak`` exactly).
"""

from __future__ import annotations

import functools
import statistics
from collections import Counter
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from mfu.events import FlopReport, GpuSample, MfuWindow, Parallelism
from mfu.peaks import peak_flops_per_s

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


@dataclass
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


@dataclass
class ReportAcc:
    """FLOPs one (workload, rank, GPU) reported in one node window."""

    workload: str
    gpu_uuid: str
    flops: float = 0.0
    hardware_flops: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0  # report coverage in the window, seconds
    by_precision: Counter[str] = field(default_factory=Counter)
    expected_mfu: float | None = None
    model: str | None = None
    phase: str | None = None
    parallelism: dict[str, int] | None = None


class Partial(BaseModel):
    """Internal ``mfu_partial/1``: one node's share of a workload's or the fleet's window.

    Sums only (and per-rank pairs), so partials merge by addition in any order.
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
    # fleet scope: allocated-only sums
    allocated_gpus: int = 0
    allocated_seconds: float = 0.0
    allocated_peak_flops: float = 0.0
    allocated_flops: float = 0.0

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


def _dominant(counter: dict[str, float]) -> str | None:
    return max(counter.items(), key=lambda kv: (kv[1], kv[0]))[0] if counter else None


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
        if s.sm_util is not None:
            g.sm_util_s += s.sm_util * overlap_s
            g.mem_util_s += (s.mem_util or 0.0) * overlap_s
            g.util_seconds += overlap_s
        if s.tensor_active is not None:
            g.tensor_s += s.tensor_active * overlap_s
            g.tensor_seconds += overlap_s
        if s.mem_used_bytes is not None and s.mem_total_bytes:
            r = s.mem_used_bytes / s.mem_total_bytes
            g.mem_used_ratio_max = r if g.mem_used_ratio_max is None else max(r, g.mem_used_ratio_max)
        if s.workloads:
            share = overlap_s / len(s.workloads)
            for w in s.workloads:
                g.workloads[w] = g.workloads.get(w, 0.0) + share

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
        acc.by_precision[r.precision] += flops if flops > 0 else 1e-300
        if r.expected_mfu is not None:
            acc.expected_mfu = r.expected_mfu
        acc.model = r.model or acc.model
        acc.phase = r.phase or acc.phase
        if r.parallelism is not None:
            acc.parallelism = r.parallelism.model_dump()

    # --- closing ---------------------------------------------------------------

    def _gpu_precision(self) -> dict[str, str]:
        """Precision each GPU's peak is taken at: that of most of its FLOPs."""
        per_gpu: dict[str, Counter[str]] = {}
        for acc in self.reports.values():
            per_gpu.setdefault(acc.gpu_uuid, Counter()).update(acc.by_precision)
        return {g: c.most_common(1)[0][0] for g, c in per_gpu.items() if c}

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
        peaks: dict[str, float] = {}
        unknown: dict[str, str] = {}
        for uuid, g in self.gpus.items():
            if not g.gpu_name:
                unknown[uuid] = f"GPU {uuid} reported FLOPs but sent no telemetry yet"
                continue
            p = cached_peak(g.gpu_name, precisions.get(uuid, DEFAULT_PRECISION), g.mig_profile)
            if isinstance(p, str):
                unknown[uuid] = p
            else:
                peaks[uuid] = p * g.seconds

        flops_by_gpu: Counter[str] = Counter()
        hw_by_gpu: Counter[str] = Counter()
        precision_flops: Counter[str] = Counter()
        for acc in self.reports.values():
            flops_by_gpu[acc.gpu_uuid] += acc.flops
            hw_by_gpu[acc.gpu_uuid] += acc.hardware_flops
            precision_flops.update(acc.by_precision)
        tokens = sum(a.tokens for a in self.reports.values())

        fleet_p = self._partial("fleet", fleet, self.gpus.keys(), peaks, unknown, flops_by_gpu,
                                hw_by_gpu, precision_flops, tokens)
        fleet_p.late_events, fleet_p.duplicates = self.late_events, self.duplicates
        allocated = [u for u, g in self.gpus.items() if g.workloads or flops_by_gpu.get(u)]
        fleet_p.allocated_gpus = len(allocated)
        fleet_p.allocated_seconds = sum(self.gpus[u].seconds for u in allocated)
        fleet_p.allocated_peak_flops = sum(peaks.get(u, 0.0) for u in allocated)
        # MFU ratios pair FLOPs and peak of the same GPUs: those with a known peak.
        fleet_p.allocated_flops = sum(flops_by_gpu.get(u, 0.0) for u in allocated if u in peaks)

        node_rec = finalize(fleet_p, scope="node", key=self.node, fleet=fleet)
        if unknown:
            # The node record keeps every FLOP it did (its MFU is null); the fleet's MFU is
            # stated over GPUs with a known peak, so their FLOPs alone go to the roll-up,
            # or one unknown GPU would inflate fleet MFU (even above 1).
            fleet_p.achieved_flops = sum(f for u, f in flops_by_gpu.items() if u in peaks)
            fleet_p.hardware_flops = sum(f for u, f in hw_by_gpu.items() if u in peaks)
        partials = [fleet_p]
        partials.extend(self._workload_partials(peaks, unknown))
        return node_rec, partials

    def _partial(self, scope: str, key: str, gpu_ids, peaks, unknown, flops_by_gpu, hw_by_gpu,
                 precision_flops, tokens) -> Partial:
        # Sums in locals, one model construction: attribute assignment on a pydantic
        # model costs about a microsecond, and a window closes ~10 of them per GPU.
        gpus = 0
        gpu_seconds = sm_util_s = mem_util_s = util_seconds = tensor_s = tensor_seconds = 0.0
        peak_flops = 0.0
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
            peak_flops += peaks.get(u, 0.0)
            if u in unknown:
                reasons.append(unknown[u])
            models[g.gpu_name or "unknown"] += g.seconds
        return Partial(scope=scope, key=key, node=self.node, window_start=self.start,
                       window_end=self.end, gpus=gpus, gpu_seconds=gpu_seconds,
                       sm_util_s=sm_util_s, mem_util_s=mem_util_s, util_seconds=util_seconds,
                       tensor_s=tensor_s, tensor_seconds=tensor_seconds,
                       peak_flops=peak_flops, unknown=reasons,
                       achieved_flops=sum(flops_by_gpu.values()),
                       hardware_flops=sum(hw_by_gpu.values()),
                       precision_flops=dict(precision_flops), gpu_models=dict(models),
                       tokens=tokens)

    def _workload_partials(self, peaks: dict[str, float], unknown: dict[str, str]) -> list[Partial]:
        by_workload: dict[str, list[ReportAcc]] = {}
        for acc in self.reports.values():
            by_workload.setdefault(acc.workload, []).append(acc)
        gpu_share: dict[str, dict[str, float]] = {}  # workload -> gpu -> seconds
        for u, g in self.gpus.items():
            for w, secs in g.workloads.items():
                gpu_share.setdefault(w, {})[u] = secs
        for w, accs in by_workload.items():
            for acc in accs:  # a GPU reporting FLOPs for w belongs to w even if unlisted
                gpu_share.setdefault(w, {}).setdefault(
                    acc.gpu_uuid, min(self.gpus[acc.gpu_uuid].seconds, acc.seconds)
                )
        out = []
        for w, shares in gpu_share.items():
            accs = by_workload.get(w, [])
            # Sums in locals (see _partial), in the same order as before.
            gpus = 0
            gpu_seconds = sm_util_s = mem_util_s = util_seconds = tensor_s = 0.0
            tensor_seconds = peak_flops = 0.0
            reasons: list[str] = []
            models: Counter[str] = Counter()
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
                peak_flops += peaks.get(u, 0.0) * frac
                if u in unknown:
                    reasons.append(unknown[u])
                models[g.gpu_name or "unknown"] += secs
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
                g = self.gpus[acc.gpu_uuid]
                rank_peak = peaks.get(acc.gpu_uuid, 0.0) * (
                    shares.get(acc.gpu_uuid, 0.0) / g.seconds if g.seconds > 0 else 0.0
                )
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
                tensor_seconds=tensor_seconds, peak_flops=peak_flops, unknown=reasons,
                gpu_models=dict(models), achieved_flops=achieved_flops,
                hardware_flops=hardware_flops, tokens=tokens, ranks=ranks,
                expected_mfu=expected_mfu, model=model, phase=phase, parallelism=parallelism,
                precision_flops=dict(prec)))
        return out


def merge(into: Partial, other: Partial) -> None:
    """Add ``other``'s sums into ``into`` (same scope, key and window)."""
    for name in ("achieved_flops", "hardware_flops", "peak_flops", "gpu_seconds", "gpus",
                 "sm_util_s", "mem_util_s", "util_seconds", "tensor_s", "tensor_seconds", "tokens",
                 "late_events", "duplicates", "allocated_gpus", "allocated_seconds",
                 "allocated_peak_flops", "allocated_flops"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
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


def finalize(p: Partial, *, scope: str, key: str, fleet: str, nodes: int | None = None,
             late_events: int = 0) -> MfuWindow:
    """The final ``mfu_window/1`` record from merged sums."""
    reason = None
    if p.unknown:
        reasons = sorted(set(p.unknown))
        reason = "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")
    if scope == "fleet":
        # Fleet MFU is stated over the GPUs whose peak is known, saying what was left out.
        mfu = _ratio(p.achieved_flops, p.peak_flops)
        if reason:
            reason = f"excluded GPUs without a known peak: {reason}"
    else:
        mfu = None if p.unknown else _ratio(p.achieved_flops, p.peak_flops)
        if mfu is None and reason is None:
            reason = "no GPU-seconds in window"
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
    updates: dict[str, object] = {}
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
        )
    return rec.model_copy(update=updates) if updates else rec


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
            "parallelism": dict(p.parallelism) if p.parallelism is not None else None}))
        for name in ("achieved_flops", "hardware_flops", "peak_flops", "gpu_seconds",
                     "sm_util_s", "mem_util_s", "util_seconds", "tensor_s", "tensor_seconds", "tokens",
                     "allocated_seconds", "allocated_peak_flops", "allocated_flops"):
            setattr(w.merged, name, 0.0)
        for name in ("gpus", "late_events", "duplicates", "allocated_gpus"):
            setattr(w.merged, name, 0)
        w.add(p)
        return w
