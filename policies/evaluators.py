"""One evaluator per rule kind (pure): window in, state updated, decisions out.

An evaluator owns no state between calls: the engine hands it the entity's state for
its rule (a dataclass rebuilt from the stored dict), the evaluator advances it by one
window and returns :class:`Emission` objects, which the engine wraps in CloudEvents.
Condition-style kinds (threshold, busy_inefficient, straggler, idle, allocation_gap,
consolidation, rightsize, placement) share :class:`EpisodeEvaluator` and its
hysteresis/cooldown machine; drift, cost, scale and admission have their own state.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from mfu.events import MfuWindow
from policies.cloudevents import rfc3339
from policies.detectors import Cusum, Ewma, NoiseEstimator, ewma_sd
from policies.incidents import Episode, incident_id
from policies.rules import (
    AdmissionRule,
    AllocationGapRule,
    BusyInefficientRule,
    ConsolidationRule,
    CostRule,
    CusumParams,
    DriftRule,
    IdleRule,
    MigCatalog,
    MigProfile,
    PlacementRule,
    RightsizeRule,
    RulesConfig,
    ScaleRule,
    StallRule,
    StragglerRule,
    ThresholdRule,
)


@dataclass
class Emission:
    """One decision, before it is wrapped in a CloudEvent. ``window_start``/``window_end``
    override the triggering window (a cost report names its whole period)."""

    event: str
    status: str
    summary: str
    observed: dict[str, Any]
    expected: dict[str, Any]
    windows: dict[str, Any]
    incident: str | None = None
    severity: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    window_start: float | None = None
    window_end: float | None = None


def _from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    if not data:
        return cls()
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


class Evaluator:
    """Base: which windows a rule looks at and how its state is stored."""

    state_type: ClassVar[type] = Episode

    def __init__(self, rule: Any, config: RulesConfig):
        self.rule = rule
        self.config = config

    def applies(self, w: MfuWindow) -> bool:
        return self.rule.enabled and self.rule.scope == w.scope and self.rule.match.matches(w)

    def load(self, data: dict[str, Any] | None) -> Any:
        return _from_dict(self.state_type, data)

    @staticmethod
    def dump(state: Any) -> dict[str, Any]:
        return asdict(state)

    def evaluate(self, w: MfuWindow, state: Any, subject: str) -> list[Emission]:
        raise NotImplementedError


# --- condition-style rules on the shared episode machine ----------------------------


@dataclass
class Assessment:
    """What a rule makes of one window: does the open (``bad``) or clear (``good``)
    condition hold, the number it tracks (``value``, averaged over the streak), and what
    was observed/expected, for the event."""

    bad: bool
    good: bool
    value: float | None
    metric: str
    observed: dict[str, Any]
    expected: dict[str, Any]


class EpisodeEvaluator(Evaluator):
    def assess(self, w: MfuWindow, state: Any) -> Assessment | None:
        raise NotImplementedError

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        """Decisions fixed when an incident opens (kept in state for the resolution)."""
        return {}

    def event_name(self, state: Episode) -> str:
        return str(state.facts.get("event") or self.rule.event)

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        """One line for humans; ``mean`` and ``n``: the streak's mean value and length."""
        raise NotImplementedError

    def evaluate(self, w: MfuWindow, state: Episode, subject: str) -> list[Emission]:
        a = self.assess(w, state)
        if a is None:
            return []
        r = self.rule
        transition = state.step(
            w.window_start,
            w.window_end,
            a.bad,
            a.good,
            a.value,
            for_windows=r.for_windows,
            clear_windows=r.clear_windows,
            cooldown_s=r.cooldown_s,
            rule_id=r.id,
            subject=subject,
        )
        if transition is None:
            return []
        mean, n = state.streak_mean, state.streak
        observed = {**a.observed, f"{a.metric}_mean": _r(mean)}
        if transition == "open":
            state.facts = self.facts(w, a)
            windows = {"start": state.opened_at, "end": w.window_end, "count": n}
        else:
            windows = {
                "start": state.streak_start,
                "end": w.window_end,
                "count": n,
                "incident_start": state.opened_at,
                "incident_duration_s": _r(w.window_end - (state.opened_at or w.window_start), 3),
            }
        emission = Emission(
            event=self.event_name(state),
            status=transition,
            summary=self.summary(a, mean or 0.0, n, transition == "open", state.facts),
            observed=observed,
            expected=a.expected,
            windows=windows,
            incident=state.incident,
            severity=state.facts.get("severity"),
            details={k: v for k, v in state.facts.items() if k not in ("event", "severity")},
        )
        state.reset_streak()
        return [emission]


_METRIC_LABEL = {"mfu": "MFU", "mfu_allocated": "allocated MFU"}


def metric_value(w: MfuWindow, metric: str) -> float | None:
    value = getattr(w, metric)
    return None if value is None else float(value)


class ThresholdEvaluator(EpisodeEvaluator):
    rule: ThresholdRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        v = metric_value(w, r.metric)
        if v is None:
            return None
        if r.below is not None:
            bad, good = v < r.below, v > (r.clear_above or 0.0)
            expected = {"below": r.below, "clear_above": r.clear_above}
        else:
            bad, good = v > (r.above or 0.0), v < (r.clear_below or 0.0)
            expected = {"above": r.above, "clear_below": r.clear_below}
        return Assessment(bad, good, v, r.metric, {r.metric: _r(v)}, expected)

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        r = self.rule
        label = _METRIC_LABEL.get(r.metric, r.metric)
        if opened:
            op, limit = ("<", r.below) if r.below is not None else (">", r.above)
            return f"{label} {mean:.3f} {op} {limit} for {n} windows"
        op, limit = (">", r.clear_above) if r.below is not None else ("<", r.clear_below)
        return f"{label} back {op} {limit} for {n} windows (mean {mean:.3f})"


class BusyInefficientEvaluator(EpisodeEvaluator):
    rule: BusyInefficientRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        if w.sm_util is None or w.mfu is None:
            return None
        if w.phase == "decode" and r.decode == "ignore":
            return None
        bad = w.sm_util >= r.sm_util_min and w.mfu <= r.mfu_max
        good = w.sm_util < r.sm_util_min or w.mfu >= (r.clear_mfu or r.mfu_max)
        observed = {
            "mfu": _r(w.mfu),
            "sm_util": _r(w.sm_util),
            "tensor_active": _r(w.tensor_active),
            "mem_util": _r(w.mem_util),
            "mem_used_ratio": _r(w.mem_used_ratio),
            "precision": w.precision,
            "gpu_model": w.gpu_model,
            "phase": w.phase,
        }
        expected = {"sm_util_min": r.sm_util_min, "mfu_max": r.mfu_max, "clear_mfu": r.clear_mfu}
        return Assessment(bad, good, w.mfu, "mfu", observed, expected)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        report = w.phase == "decode" and self.rule.decode == "report"
        facts: dict[str, Any] = {"hints": self.hints(w)}
        if report:
            facts.update(event="report", severity="info", alarm=False)
        return facts

    def hints(self, w: MfuWindow) -> list[dict[str, Any]]:
        """Likely causes, in the tenant's terms (DESIGN.md §6)."""
        h = self.rule.hints
        hints: list[dict[str, Any]] = []
        if w.phase == "decode":
            hints.append(
                {
                    "hint": "memory_bound_decode",
                    "detail": "decode is memory-bandwidth bound, so low MFU is expected; "
                    "watch memory bandwidth use instead",
                    "mem_util": _r(w.mem_util),
                }
            )
            return hints
        if (
            w.tensor_active is not None
            and w.tensor_active <= h.tensor_active_max
            and (w.mem_used_ratio is None or w.mem_used_ratio <= h.mem_used_ratio_max)
        ):
            headroom = (
                f"{1 - w.mem_used_ratio:.0%} memory free"
                if w.mem_used_ratio is not None
                else "memory use unknown"
            )
            hints.append(
                {
                    "hint": "under_batching",
                    "detail": f"SMs busy {w.sm_util:.0%} but tensor cores active only "
                    f"{w.tensor_active:.0%} with {headroom}: try a larger batch (or micro-batch)",
                    "tensor_active": _r(w.tensor_active),
                    "mem_used_ratio": _r(w.mem_used_ratio),
                }
            )
        tensor_core = w.gpu_model is None or any(
            fnmatch.fnmatchcase(w.gpu_model, g) for g in h.tensor_core_gpus
        )
        if w.precision in ("fp32", "tf32") and tensor_core:
            hints.append(
                {
                    "hint": "precision",
                    "detail": f"running {w.precision} on a tensor-core GPU"
                    f"{' (' + w.gpu_model + ')' if w.gpu_model else ''}: bf16/fp16 (or fp8) "
                    "mixed precision raises the achievable FLOP/s",
                    "precision": w.precision,
                }
            )
        return hints

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        if not opened:
            return f"no longer busy-but-inefficient for {n} windows (MFU {mean:.3f})"
        o = a.observed
        return f"SM busy {o['sm_util']:.0%} but MFU {mean:.3f} over {n} windows" + (
            "; decode phase (memory-bound): reported, not alarmed"
            if o.get("phase") == "decode"
            else ""
        )


class StragglerEvaluator(EpisodeEvaluator):
    rule: StragglerRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        lo, med = w.rank_mfu_min, w.rank_mfu_median
        if w.ranks is None or w.ranks < r.min_ranks or lo is None or not med:
            return None
        ratio = lo / med
        observed = {
            "rank_mfu_min": _r(lo),
            "rank_mfu_median": _r(med),
            "ratio": _r(ratio),
            "ranks": w.ranks,
        }
        expected = {"ratio_max": r.ratio_max, "clear_ratio": r.clear_ratio}
        return Assessment(
            ratio < r.ratio_max, ratio >= r.clear_ratio, ratio, "ratio", observed, expected
        )

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        o = a.observed
        if opened:
            return (
                f"slowest of {o['ranks']} ranks at {mean:.0%} of the median rank's MFU "
                f"({o['rank_mfu_min']:.3f} vs {o['rank_mfu_median']:.3f}) for {n} windows"
            )
        return f"ranks back in step ({mean:.0%} of median) for {n} windows"


class IdleEvaluator(EpisodeEvaluator):
    rule: IdleRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        if w.gpus <= 0 or w.mfu is None:
            return None
        observed = {"mfu": _r(w.mfu, 5), "gpus": w.gpus, "gpu_seconds": _r(w.gpu_seconds, 3)}
        expected = {"mfu_max": r.mfu_max, "clear_mfu": r.clear_mfu}
        return Assessment(
            w.mfu <= r.mfu_max, w.mfu >= r.clear_mfu, w.mfu, "mfu", observed, expected
        )

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        gpus = a.observed["gpus"]
        if opened:
            return f"{gpus} GPU(s) allocated but idle: MFU {mean:.4f} for {n} windows"
        return f"working again: MFU {mean:.3f} for {n} windows"


@dataclass
class StallState(Episode):
    history: list[float] = field(default_factory=list)  # recent MFU, oldest first


def dip_runs(values: list[float], threshold: float) -> int:
    """Separate runs of consecutive values below ``threshold``."""
    runs, inside = 0, False
    for v in values:
        if v < threshold and not inside:
            runs += 1
        inside = v < threshold
    return runs


class StallEvaluator(EpisodeEvaluator):
    rule: StallRule
    state_type = StallState

    def assess(self, w: MfuWindow, state: StallState) -> Assessment | None:
        r = self.rule
        if w.mfu is None:
            return None
        state.history = [*state.history, float(w.mfu)][-r.history_windows :]
        if len(state.history) < r.history_windows // 2:
            return None
        median = sorted(state.history)[len(state.history) // 2]
        threshold = r.dip_ratio * median
        runs = dip_runs(state.history, threshold)
        dips = sum(1 for v in state.history if v < threshold)
        observed = {"mfu": _r(w.mfu), "median_mfu": _r(median), "dip_runs": runs,
                    "dip_windows": dips, "history_windows": len(state.history),
                    "min_mfu": _r(min(state.history))}
        expected = {"dip_ratio": r.dip_ratio, "min_dips": r.min_dips}
        return Assessment(runs >= r.min_dips and median > 0, runs == 0, float(runs),
                          "dip_runs", observed, expected)

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        o = a.observed
        if opened:
            return (f"MFU dips to {o['min_mfu']:.3f} (median {o['median_mfu']:.3f}) "
                    f"{o['dip_runs']} separate times in {o['history_windows']} windows: "
                    "likely input-pipeline stalls (data loading, checkpointing)")
        return f"no MFU dips for {n} windows"


class AllocationGapEvaluator(EpisodeEvaluator):
    rule: AllocationGapRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        if w.allocation is None or w.mfu_allocated is None:
            return None
        bad = w.allocation >= r.allocation_min and w.mfu_allocated <= r.mfu_allocated_max
        good = w.allocation < r.allocation_min or w.mfu_allocated >= r.clear_mfu_allocated
        observed = {
            "allocation": _r(w.allocation),
            "mfu_allocated": _r(w.mfu_allocated),
            "mfu": _r(w.mfu),
            "allocated_gpus": w.allocated_gpus,
            "gpus": w.gpus,
        }
        expected = {
            "allocation_min": r.allocation_min,
            "mfu_allocated_max": r.mfu_allocated_max,
            "clear_mfu_allocated": r.clear_mfu_allocated,
        }
        return Assessment(bad, good, w.mfu_allocated, "mfu_allocated", observed, expected)

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        alloc = a.observed["allocation"]
        if opened:
            return (
                f"{alloc:.0%} allocated but allocated GPUs deliver MFU {mean:.3f} for {n} windows"
            )
        return f"allocated GPUs working again (MFU {mean:.3f}) for {n} windows"


class ConsolidationEvaluator(EpisodeEvaluator):
    rule: ConsolidationRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        if w.mfu is None or w.mem_used_ratio is None or w.gpus <= 0:
            return None
        low = w.mfu <= r.mfu_max and w.mem_used_ratio <= r.mem_used_ratio_max
        observed = {"mfu": _r(w.mfu), "mem_used_ratio": _r(w.mem_used_ratio), "gpus": w.gpus}
        expected = {"mfu_max": r.mfu_max, "mem_used_ratio_max": r.mem_used_ratio_max}
        return Assessment(low, not low, w.mfu, "mfu", observed, expected)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        return {"advice": "consolidate_or_oversubscribe"}

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        if opened:
            return (
                f"MFU {mean:.3f} and {a.observed['mem_used_ratio']:.0%} memory used for "
                f"{n} windows: candidate for consolidation/oversubscription"
            )
        return f"busy again (MFU {mean:.3f}) for {n} windows"


def choose_mig(
    catalog: MigCatalog, mfu: float, mem_used_ratio: float, target_slice_mfu: float, margin: float
) -> MigProfile | None:
    """Smallest MIG profile that carries the work: its compute share keeps the slice's
    MFU (``mfu / share``) <= ``target_slice_mfu`` and its memory holds the memory in use
    (``mem_used_ratio`` x GPU memory) with ``margin`` spare. None if none fits."""
    used_gb = mem_used_ratio * catalog.memory_gb
    for p in sorted(catalog.profiles, key=lambda p: (p.compute, p.memory_gb)):
        if mfu / p.compute <= target_slice_mfu and used_gb <= p.memory_gb * (1 - margin):
            return p
    return None


class RightsizeEvaluator(EpisodeEvaluator):
    rule: RightsizeRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        if w.gpus != 1 or w.mfu is None or w.mem_used_ratio is None:
            return None
        catalog = self.config.mig_catalog(w.gpu_model)
        if catalog is None or "MIG" in (w.gpu_model or ""):
            return None  # not a MIG-capable whole GPU
        low = w.mfu <= r.mfu_max and w.mem_used_ratio <= r.mem_used_ratio_max
        shape = choose_mig(catalog, w.mfu, w.mem_used_ratio, r.target_slice_mfu, r.mem_margin)
        observed = {
            "mfu": _r(w.mfu),
            "mem_used_ratio": _r(w.mem_used_ratio),
            "gpu_model": w.gpu_model,
            "gpus": w.gpus,
        }
        expected = {
            "mfu_max": r.mfu_max,
            "mem_used_ratio_max": r.mem_used_ratio_max,
            "target_slice_mfu": r.target_slice_mfu,
        }
        return Assessment(low and shape is not None, not low, w.mfu, "mfu", observed, expected)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        catalog = self.config.mig_catalog(w.gpu_model)
        assert catalog is not None and w.mfu is not None and w.mem_used_ratio is not None
        r = self.rule
        p = choose_mig(catalog, w.mfu, w.mem_used_ratio, r.target_slice_mfu, r.mem_margin)
        assert p is not None
        return {
            "recommended_shape": p.name,
            "shape_compute_share": _r(p.compute),
            "shape_memory_gb": p.memory_gb,
            "expected_slice_mfu": _r(w.mfu / p.compute),
            "memory_used_gb": _r(w.mem_used_ratio * catalog.memory_gb, 1),
        }

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        o = a.observed
        if opened:
            return (
                f"whole GPU at MFU {mean:.3f} with {o['mem_used_ratio']:.0%} memory for "
                f"{n} windows: fits MIG {facts['recommended_shape']}"
            )
        return f"uses the whole GPU again (MFU {mean:.3f}) for {n} windows"


@dataclass
class PlacementState(Episode):
    # node count (as str, JSON keys) -> [EWMA of MFU, windows seen]
    by_nodes: dict[str, list[float]] = field(default_factory=dict)


class PlacementEvaluator(EpisodeEvaluator):
    rule: PlacementRule
    state_type = PlacementState

    def event_name(self, state: Episode) -> str:
        return "placement"

    def assess(self, w: MfuWindow, state: PlacementState) -> Assessment | None:
        r = self.rule
        if w.nodes is None or w.mfu is None:
            return None
        n = str(w.nodes)
        ewma, count = state.by_nodes.get(n, [w.mfu, 0])
        ewma = w.mfu if count == 0 else ewma + r.ewma_alpha * (w.mfu - ewma)
        state.by_nodes[n] = [ewma, count + 1]
        evidence: list[dict[str, Any]] = []
        if w.nodes >= r.min_nodes and count + 1 >= r.min_samples:
            for other, (other_ewma, other_count) in state.by_nodes.items():
                if (
                    int(other) < w.nodes
                    and other_count >= r.min_samples
                    and (ewma < r.drop_ratio * other_ewma)
                ):
                    evidence.append(
                        {
                            "evidence": "mfu_falls_with_nodes",
                            "detail": f"MFU {ewma:.3f} on {w.nodes} nodes vs {other_ewma:.3f} "
                            f"on {other}",
                            "nodes": w.nodes,
                            "mfu": _r(ewma),
                            "fewer_nodes": int(other),
                            "mfu_on_fewer_nodes": _r(other_ewma),
                        }
                    )
        p = w.parallelism
        if p is not None and w.nodes >= r.min_nodes and w.gpus > 0:
            gpus_per_node = w.gpus / w.nodes
            if p.tp * p.cp > gpus_per_node:
                evidence.append(
                    {
                        "evidence": "tensor_parallel_crosses_nodes",
                        "detail": f"tp x cp = {p.tp * p.cp} > {gpus_per_node:g} GPUs per node",
                        "tp": p.tp,
                        "cp": p.cp,
                        "gpus_per_node": gpus_per_node,
                    }
                )
        observed = {"mfu": _r(w.mfu), "nodes": w.nodes, "gpus": w.gpus, "evidence": evidence}
        expected = {"drop_ratio": r.drop_ratio, "min_nodes": r.min_nodes}
        return Assessment(bool(evidence), not evidence, w.mfu, "mfu", observed, expected)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        return {
            "advice": "move_to_nvlink_topology",
            "detail": "communication-bound: place the job inside one NVLink domain "
            "(fewer, larger nodes or an NVLink switch system) or keep tp x cp within a node",
            "evidence": a.observed["evidence"],
        }

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        if opened:
            what = "; ".join(e["detail"] for e in a.observed["evidence"])
            return f"communication-bound on {a.observed['nodes']} nodes ({what}): move to NVLink"
        return f"no longer communication-bound for {n} windows"


# --- drift ---------------------------------------------------------------------------


@dataclass
class DriftState(Episode):
    noise: dict[str, Any] = field(default_factory=dict)
    detector: dict[str, Any] = field(default_factory=dict)
    # Evidence since the detector last sat at zero (CUSUM's change-point estimate).
    run_start: float | None = None
    run_n: int = 0
    run_sum: float = 0.0
    # While open: sums for the mean over the incident.
    incident_n: int = 0
    incident_sum: float = 0.0


class DriftEvaluator(Evaluator):
    rule: DriftRule
    state_type = DriftState

    def baseline(self, w: MfuWindow, noise: NoiseEstimator) -> tuple[float | None, str]:
        r = self.rule
        if r.baseline in ("auto", "declared"):
            declared = self.config.expected_mfu(w)
            if declared is not None:
                return declared, "declared"
            if r.baseline == "declared":
                return None, "declared"
        if noise.ready(r.warmup_windows):
            return noise.baseline_mean, "learned"
        return None, "learned"

    def evaluate(self, w: MfuWindow, state: DriftState, subject: str) -> list[Emission]:
        r = self.rule
        x = w.mfu
        if x is None:
            return []
        noise = _from_dict(NoiseEstimator, state.noise)
        p = r.detector
        det = _from_dict(Cusum if isinstance(p, CusumParams) else Ewma, state.detector)
        mu0, source = self.baseline(w, noise)
        warmup = r.declared_warmup_windows if source == "declared" else r.warmup_windows
        sigma_est = (
            r.sigma if r.sigma is not None else (noise.sigma if noise.ready(warmup) else None)
        )
        emissions: list[Emission] = []
        if mu0 is not None and sigma_est is not None:
            sigma = max(sigma_est, r.min_sigma)
            z = (x - mu0) / sigma
            # The smallest shift worth an alarm, in sigma units.
            min_shift = r.min_shift * mu0 / sigma
            if isinstance(p, CusumParams):
                k = max(p.k, min_shift / 2)
                det.update(z, k, p.h, p.recover_h or p.h / 2, r.direction)
                params = {"method": "cusum", "k": _r(k), "h": p.h, "statistic": _r(det.statistic)}
            else:
                sd = ewma_sd(p.lam)
                limit = max(p.L * sd, min_shift / 2)
                det.update(z, p.lam, limit, p.recover_L * sd, r.direction)
                params = {
                    "method": "ewma",
                    "lam": p.lam,
                    "limit": _r(limit),
                    "statistic": _r(det.statistic),
                }
            if det.neutral(r.direction):
                state.run_start, state.run_n, state.run_sum = None, 0, 0.0
            else:
                if state.run_n == 0:
                    state.run_start = w.window_start
                state.run_n += 1
                state.run_sum += x
            if state.open:
                state.incident_n += 1
                state.incident_sum += x
            expected = {
                "mfu": _r(mu0),
                "baseline": source,
                "sigma": _r(sigma, 5),
                "min_shift": r.min_shift,
            }
            if det.alarmed and not state.open:
                emissions.append(self._opened(w, state, subject, x, mu0, sigma, expected, params))
            elif not det.alarmed and state.open:
                emissions.append(self._resolved(w, state, x, mu0, expected, params))
        noise.update(x, r.warmup_windows, max(r.warmup_windows, r.baseline_windows))
        state.noise, state.detector = asdict(noise), asdict(det)
        return emissions

    def _opened(
        self,
        w: MfuWindow,
        state: DriftState,
        subject: str,
        x: float,
        mu0: float,
        sigma: float,
        expected: dict[str, Any],
        params: dict[str, Any],
    ) -> Emission:
        start = state.run_start if state.run_start is not None else w.window_start
        n = max(state.run_n, 1)
        mean = state.run_sum / state.run_n if state.run_n else x
        state.open, state.opened_at = True, start
        state.incident = incident_id(self.rule.id, subject, start)
        state.incident_n, state.incident_sum = 1, x
        rel = (mean - mu0) / mu0 if mu0 else math.inf
        word = "below" if mean < mu0 else "above"
        return Emission(
            event=self.rule.event,
            status="open",
            summary=(
                f"MFU {mean:.3f} {word} expected {mu0:.3f} ({rel:+.0%}) over {n} windows "
                f"since {rfc3339(start)}; {params['method']} {params['statistic']}"
            ),
            observed={
                "mfu": _r(x),
                "mfu_mean": _r(mean),
                "shift_sigma": _r((mean - mu0) / sigma, 2),
            },
            expected=expected,
            windows={"start": start, "end": w.window_end, "count": n, "change_point": start},
            incident=state.incident,
            details={"detector": params, "direction": self.rule.direction},
        )

    def _resolved(
        self,
        w: MfuWindow,
        state: DriftState,
        x: float,
        mu0: float,
        expected: dict[str, Any],
        params: dict[str, Any],
    ) -> Emission:
        state.open, state.resolved_end = False, w.window_end
        start = state.opened_at if state.opened_at is not None else w.window_start
        mean = state.incident_sum / state.incident_n if state.incident_n else None
        return Emission(
            event=self.rule.event,
            status="resolved",
            summary=f"MFU back at expected {mu0:.3f} (now {x:.3f}); drift since "
            f"{rfc3339(start)} recovered",
            observed={"mfu": _r(x), "mfu_mean_during_incident": _r(mean)},
            expected=expected,
            windows={
                "start": start,
                "end": w.window_end,
                "count": state.incident_n,
                "incident_duration_s": _r(w.window_end - start, 3),
            },
            incident=state.incident,
            details={"detector": params, "direction": self.rule.direction},
        )


# --- economics -----------------------------------------------------------------------


@dataclass
class CostState:
    period_start: float | None = None
    windows: int = 0
    gpu_seconds: float = 0.0
    priced_gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    achieved_flops: float = 0.0
    peak_flops: float = 0.0
    first_start: float | None = None
    last_end: float | None = None

    def restart(self) -> None:
        """Back to an empty period (in place: the engine stores this object)."""
        for f in fields(self):
            setattr(self, f.name, f.default)


class CostEvaluator(Evaluator):
    """Accumulates a period; reports it when the first window of the next one arrives."""

    rule: CostRule
    state_type = CostState

    def evaluate(self, w: MfuWindow, state: CostState, subject: str) -> list[Emission]:
        r = self.rule
        period = math.floor(w.window_start / r.period_s) * r.period_s
        out: list[Emission] = []
        if state.period_start is not None and period > state.period_start and state.windows:
            out.append(self.report(state, subject))
            state.restart()
        if state.period_start is None or period > state.period_start:
            state.period_start = period
        price = self.config.prices.price(w.gpu_model)
        state.windows += 1
        state.gpu_seconds += w.gpu_seconds
        if price is not None:
            state.priced_gpu_seconds += w.gpu_seconds
            state.cost_usd += w.gpu_seconds / 3600.0 * price
        state.achieved_flops += w.achieved_flops
        state.peak_flops += w.peak_flops
        if state.first_start is None:
            state.first_start = w.window_start
        state.last_end = w.window_end
        return out

    def report(self, s: CostState, subject: str) -> Emission:
        """Cost (USD), effective PFLOP-hours (achieved FLOPs / 1e15 / 3600) and their
        ratio over one period."""
        r = self.rule
        gpu_hours = s.gpu_seconds / 3600.0
        pflop_hours = s.achieved_flops / 1e15 / 3600.0
        priced = s.priced_gpu_seconds > 0
        cost = s.cost_usd if priced else None
        per = cost / pflop_hours if cost is not None and pflop_hours > 0 else None
        over = r.max_usd_per_pflop_hour is not None and (
            (per is not None and per > r.max_usd_per_pflop_hour)
            or (per is None and priced and pflop_hours == 0)
        )
        unpriced = s.gpu_seconds - s.priced_gpu_seconds
        per_txt = f"${per:,.2f}" if per is not None else "n/a"
        cost_txt = f"${cost:,.2f}" if cost is not None else "unpriced"
        start = s.period_start or 0.0
        return Emission(
            event=r.event,
            status="report",
            summary=(
                f"{cost_txt} for {gpu_hours:.2f} GPU-h, {pflop_hours:.3f} effective "
                f"PFLOP-h: {per_txt} per effective PFLOP-h"
            ),
            observed={
                "cost_usd": _r(cost, 4),
                "gpu_hours": _r(gpu_hours, 6),
                "effective_pflop_hours": _r(pflop_hours, 6),
                "usd_per_effective_pflop_hour": _r(per, 4),
                "mfu": _r(s.achieved_flops / s.peak_flops) if s.peak_flops else None,
                "unpriced_gpu_hours": _r(unpriced / 3600.0, 6),
            },
            expected={"max_usd_per_pflop_hour": r.max_usd_per_pflop_hour},
            windows={
                "start": s.first_start,
                "end": s.last_end,
                "count": s.windows,
                "period_start": start,
                "period_s": r.period_s,
            },
            incident=incident_id(r.id, subject, start),
            severity=r.severity if over else "info",
            window_start=start,
            window_end=start + r.period_s,
        )


# --- typed recommendations -----------------------------------------------------------


@dataclass
class ScaleState:
    side: str | None = None  # "out" | "in" | None
    count: int = 0
    start: float | None = None
    total: float = 0.0
    last_emit_end: float | None = None


class ScaleEvaluator(Evaluator):
    rule: ScaleRule
    state_type = ScaleState

    def evaluate(self, w: MfuWindow, state: ScaleState, subject: str) -> list[Emission]:
        r = self.rule
        if w.mfu is None:
            return []
        side = "out" if w.mfu > r.scale_out_above else "in" if w.mfu < r.scale_in_below else None
        if side != state.side:
            state.side, state.count, state.start, state.total = side, 0, None, 0.0
        if side is None:
            return []
        if state.count == 0:
            state.start = w.window_start
        state.count += 1
        state.total += w.mfu
        cooling = state.last_emit_end is not None and (
            w.window_start < state.last_emit_end + r.cooldown_s
        )
        if state.count < r.for_windows or cooling:
            return []
        mean = state.total / state.count
        start = state.start if state.start is not None else w.window_start
        emission = Emission(
            event="scale",
            status="recommendation",
            summary=(
                f"scale {side}: MFU {mean:.3f} vs target {r.target_mfu} over "
                f"{state.count} windows (x{mean / r.target_mfu:.2f} replicas)"
            ),
            observed={"mfu": _r(w.mfu), "mfu_mean": _r(mean)},
            expected={
                "target_mfu": r.target_mfu,
                "scale_out_above": r.scale_out_above,
                "scale_in_below": r.scale_in_below,
            },
            windows={"start": start, "end": w.window_end, "count": state.count},
            incident=incident_id(r.id, subject, start),
            details={
                "action": f"scale_{side}",
                "target": {"scope": w.scope, "key": w.key},
                "ratio": _r(mean / r.target_mfu),
                "reason": (
                    f"sustained MFU {'above' if side == 'out' else 'below'} "
                    f"{r.scale_out_above if side == 'out' else r.scale_in_below}"
                ),
            },
        )
        state.last_emit_end = w.window_end
        state.side, state.count, state.start, state.total = None, 0, None, 0.0
        return [emission]


@dataclass
class AdmissionState:
    advice: str | None = None
    candidate: str | None = None
    count: int = 0
    since: float | None = None


class AdmissionEvaluator(Evaluator):
    rule: AdmissionRule
    state_type = AdmissionState

    def advise(self, allocation: float, mfu_allocated: float) -> tuple[str, str]:
        r = self.rule
        if allocation >= r.allocation_high and mfu_allocated >= r.mfu_allocated_busy:
            return "queue", (
                f"pool {allocation:.0%} allocated and its allocated GPUs busy "
                f"(MFU {mfu_allocated:.2f}): queue new work"
            )
        if allocation >= r.allocation_high and mfu_allocated < r.mfu_allocated_idle:
            return "admit_oversubscribe", (
                f"pool {allocation:.0%} allocated but allocated GPUs idle (MFU "
                f"{mfu_allocated:.2f}): admit onto shared GPUs"
            )
        return "admit", f"pool {allocation:.0%} allocated (MFU {mfu_allocated:.2f}): admit"

    def evaluate(self, w: MfuWindow, state: AdmissionState, subject: str) -> list[Emission]:
        if w.allocation is None or w.mfu_allocated is None:
            return []
        advice, reason = self.advise(w.allocation, w.mfu_allocated)
        if advice == state.advice:
            state.candidate, state.count, state.since = None, 0, None
            return []
        if advice != state.candidate:
            state.candidate, state.count, state.since = advice, 0, w.window_start
        state.count += 1
        if state.count < self.rule.for_windows:
            return []
        previous, state.advice = state.advice, advice
        since = state.since if state.since is not None else w.window_start
        state.candidate, state.count, state.since = None, 0, None
        return [
            Emission(
                event="admission",
                status="advice",
                summary=f"{advice}: {reason}",
                observed={
                    "allocation": _r(w.allocation),
                    "mfu_allocated": _r(w.mfu_allocated),
                    "allocated_gpus": w.allocated_gpus,
                    "gpus": w.gpus,
                },
                expected={
                    "allocation_high": self.rule.allocation_high,
                    "mfu_allocated_busy": self.rule.mfu_allocated_busy,
                    "mfu_allocated_idle": self.rule.mfu_allocated_idle,
                },
                windows={"start": since, "end": w.window_end, "count": self.rule.for_windows},
                incident=incident_id(self.rule.id, subject, since),
                details={"advice": advice, "previous": previous, "pool": w.key, "reason": reason},
            )
        ]


EVALUATORS: dict[str, type[Evaluator]] = {
    "threshold": ThresholdEvaluator,
    "drift": DriftEvaluator,
    "busy_inefficient": BusyInefficientEvaluator,
    "straggler": StragglerEvaluator,
    "idle": IdleEvaluator,
    "stall": StallEvaluator,
    "allocation_gap": AllocationGapEvaluator,
    "consolidation": ConsolidationEvaluator,
    "cost": CostEvaluator,
    "rightsize": RightsizeEvaluator,
    "scale": ScaleEvaluator,
    "admission": AdmissionEvaluator,
    "placement": PlacementEvaluator,
}
