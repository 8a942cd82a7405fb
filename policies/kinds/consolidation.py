"""Rule kind ``consolidation``: a node with low MFU and low memory use is a candidate for
consolidation or oversubscription."""

from __future__ import annotations

from typing import Any, Literal

from mfu.events import MfuWindow
from policies.evaluation import (
    Assessment,
    EpisodeEvaluator,
    _r,
    coverage_observed,
    judged_mfu,
)
from policies.incidents import Episode
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    EventName,
    Hysteresis,
    Ratio,
    RuleBase,
)


class ConsolidationRule(RuleBase, Hysteresis):
    """A node doing little (low MFU) with little memory in use: candidate for
    oversubscription or for consolidating its work elsewhere."""

    kind: Literal["consolidation"]
    mfu_max: Ratio = 0.1
    mem_used_ratio_max: Ratio = 0.3
    # Node MFU over known GPU-seconds leaves out busy GPUs that report nothing: below this
    # coverage the counter estimate is judged instead (basis: estimated), or nothing.
    min_coverage: Ratio = 0.9
    use_estimate: bool = True
    event: EventName = "consolidation"


class ConsolidationEvaluator(EpisodeEvaluator):
    rule: ConsolidationRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        mfu, basis = judged_mfu(w, use_estimate=r.use_estimate, min_coverage=r.min_coverage)
        if mfu is None or w.mem_used_ratio is None or w.gpus <= 0:
            return None
        low = mfu <= r.mfu_max and w.mem_used_ratio <= r.mem_used_ratio_max
        observed = {
            "mfu": _r(w.mfu),
            **coverage_observed(w),
            "mem_used_ratio": _r(w.mem_used_ratio),
            "gpus": w.gpus,
        }
        expected = {"mfu_max": r.mfu_max, "mem_used_ratio_max": r.mem_used_ratio_max}
        return Assessment(low, not low, mfu, "mfu", observed, expected, basis)

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


KIND = RuleKind("consolidation", ConsolidationRule, ConsolidationEvaluator)
