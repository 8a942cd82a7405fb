"""Rule kind ``allocation_gap``: provider view, a fleet or node highly allocated whose
allocated GPUs deliver little."""

from __future__ import annotations

from typing import Any, Literal

from mfu.events import MfuWindow
from policies.evaluation import (
    Assessment,
    EpisodeEvaluator,
    _r,
    coverage_observed,
    judged_mfu_allocated,
)
from policies.incidents import Episode
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    EventName,
    Hysteresis,
    Ratio,
    RuleBase,
)


class AllocationGapRule(RuleBase, Hysteresis):
    """Provider view: a fleet (or node) highly allocated whose allocated GPUs deliver
    little (``allocation >= allocation_min`` and ``mfu_allocated <= mfu_allocated_max``)."""

    kind: Literal["allocation_gap"]
    allocation_min: Ratio = 0.8
    mfu_allocated_max: Ratio = 0.15
    clear_mfu_allocated: Ratio = 0.2
    # Below this coverage the counter estimate is judged (basis: estimated), or nothing.
    min_coverage: Ratio = 0.9
    use_estimate: bool = True
    event: EventName = "allocation_gap"


class AllocationGapEvaluator(EpisodeEvaluator):
    rule: AllocationGapRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        mfu_allocated, basis = judged_mfu_allocated(
            w, use_estimate=r.use_estimate, min_coverage=r.min_coverage
        )
        if w.allocation is None or mfu_allocated is None:
            return None
        bad = w.allocation >= r.allocation_min and mfu_allocated <= r.mfu_allocated_max
        good = w.allocation < r.allocation_min or mfu_allocated >= r.clear_mfu_allocated
        observed = {
            "allocation": _r(w.allocation),
            "mfu_allocated": _r(w.mfu_allocated),
            "mfu": _r(w.mfu),
            **coverage_observed(w),
            "allocated_gpus": w.allocated_gpus,
            "gpus": w.gpus,
        }
        expected = {
            "allocation_min": r.allocation_min,
            "mfu_allocated_max": r.mfu_allocated_max,
            "clear_mfu_allocated": r.clear_mfu_allocated,
        }
        return Assessment(bad, good, mfu_allocated, "mfu_allocated", observed, expected, basis)

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        alloc = a.observed["allocation"]
        if opened:
            return (
                f"{alloc:.0%} allocated but allocated GPUs deliver MFU {mean:.3f} for {n} windows"
            )
        return f"allocated GPUs working again (MFU {mean:.3f}) for {n} windows"


KIND = RuleKind("allocation_gap", AllocationGapRule, AllocationGapEvaluator)
