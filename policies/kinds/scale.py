"""Rule kind ``scale``: Replica-set scaling advice (io.mfu.scale.v1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from mfu.events import MfuWindow
from policies.evaluation import (
    Emission,
    Evaluator,
    _r,
)
from policies.incidents import incident_id
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    Positive,
    Ratio,
    RuleBase,
    Windows,
)


class ScaleRule(RuleBase):
    """Replica-set scaling advice (``io.mfu.scale.v1``): sustained MFU above
    ``scale_out_above`` (below ``scale_in_below``) for ``for_windows`` windows. The event
    carries ``ratio = observed / target_mfu`` so a consumer can compute
    ``desired = ceil(current x ratio)`` (the Kubernetes HPA formula)."""

    kind: Literal["scale"]
    target_mfu: Positive = 0.4
    scale_out_above: Ratio = 0.6
    scale_in_below: Ratio = 0.2
    for_windows: Windows = 3
    cooldown_s: float = Field(300.0, ge=0.0)

    @model_validator(mode="after")
    def _band(self) -> ScaleRule:
        if not self.scale_in_below < self.target_mfu < self.scale_out_above:
            raise ValueError(
                f"need scale_in_below ({self.scale_in_below}) < target_mfu "
                f"({self.target_mfu}) < scale_out_above ({self.scale_out_above})"
            )
        return self



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



KIND = RuleKind("scale", ScaleRule, ScaleEvaluator)
