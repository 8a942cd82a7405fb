"""Rule kind ``idle``: GPUs allocated but doing no model math."""

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


class IdleRule(RuleBase, Hysteresis):
    """GPUs allocated (``gpus > 0``) doing ~no model math (``mfu <= mfu_max``).

    An unknown MFU (busy GPUs that report nothing) is not idle: it is judged on
    ``mfu_estimated`` when ``use_estimate`` (event ``basis: estimated``), else skipped.
    Work that moves memory (``mbu > mbu_max``: decode at MFU 0.01 is not idle) is not
    idle either."""

    kind: Literal["idle"]
    mfu_max: Ratio = 0.01
    clear_mfu: Ratio = 0.03
    mbu_max: Ratio = 0.05
    use_estimate: bool = True
    event: EventName = "idle"


class IdleEvaluator(EpisodeEvaluator):
    rule: IdleRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        mfu, basis = judged_mfu(w, use_estimate=r.use_estimate)
        if w.gpus <= 0 or mfu is None:
            return None
        moving_memory = w.mbu is not None and w.mbu > r.mbu_max
        observed = {
            "mfu": _r(w.mfu, 5),
            **coverage_observed(w),
            "mbu": _r(w.mbu),
            "gpus": w.gpus,
            "gpu_seconds": _r(w.gpu_seconds, 3),
        }
        expected = {"mfu_max": r.mfu_max, "clear_mfu": r.clear_mfu, "mbu_max": r.mbu_max}
        return Assessment(
            mfu <= r.mfu_max and not moving_memory,
            mfu >= r.clear_mfu or moving_memory,
            mfu,
            "mfu",
            observed,
            expected,
            basis,
        )

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        gpus = a.observed["gpus"]
        if opened:
            return f"{gpus} GPU(s) allocated but idle: MFU {mean:.4f} for {n} windows"
        return f"working again: MFU {mean:.3f} for {n} windows"


KIND = RuleKind("idle", IdleRule, IdleEvaluator)
