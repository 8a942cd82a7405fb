"""Rule kind ``idle``: GPUs allocated but doing no model math."""

from __future__ import annotations

from typing import Any, Literal

from mfu.events import MfuWindow
from policies.evaluation import (
    Assessment,
    EpisodeEvaluator,
    _r,
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
    """GPUs allocated (``gpus > 0``) doing ~no model math (``mfu <= mfu_max``)."""

    kind: Literal["idle"]
    mfu_max: Ratio = 0.01
    clear_mfu: Ratio = 0.03
    event: EventName = "idle"



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



KIND = RuleKind("idle", IdleRule, IdleEvaluator)
