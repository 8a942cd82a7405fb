"""Rule kind ``scale``: replica-set scaling advice (``io.mfu.scale.v1``) on the binding
resource (compute or memory bandwidth)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from mfu.events import MfuWindow
from policies.evaluation import (
    Emission,
    Evaluator,
    _r,
    coverage_observed,
    judged_mfu,
    memory_bound,
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
    """Replica-set scaling advice (``io.mfu.scale.v1``): sustained utilisation of the
    binding resource above ``scale_out_above`` (below ``scale_in_below``) for
    ``for_windows`` windows. The event carries ``ratio = observed / target`` so a consumer
    can compute ``desired = ceil(current x ratio)`` (the Kubernetes HPA formula).

    The binding resource: compute (MFU against ``target_mfu``) for compute-bound work;
    memory bandwidth (MBU against ``target_mbu``, ``mbu_scale_out_above``,
    ``mbu_scale_in_below``) for memory-bound work (``regime: memory`` or ``phase:
    decode``) whose window has MBU. The event names it in ``binding_resource``
    (``compute`` | ``memory_bandwidth``)."""

    kind: Literal["scale"]
    target_mfu: Positive = 0.4
    scale_out_above: Ratio = 0.6
    scale_in_below: Ratio = 0.2
    target_mbu: Positive = 0.6
    mbu_scale_out_above: Ratio = 0.85
    mbu_scale_in_below: Ratio = 0.3
    use_estimate: bool = True
    for_windows: Windows = 3
    cooldown_s: float = Field(300.0, ge=0.0)

    @model_validator(mode="after")
    def _band(self) -> ScaleRule:
        if not self.scale_in_below < self.target_mfu < self.scale_out_above:
            raise ValueError(
                f"need scale_in_below ({self.scale_in_below}) < target_mfu "
                f"({self.target_mfu}) < scale_out_above ({self.scale_out_above})"
            )
        if not self.mbu_scale_in_below < self.target_mbu < self.mbu_scale_out_above:
            raise ValueError(
                f"need mbu_scale_in_below ({self.mbu_scale_in_below}) < target_mbu "
                f"({self.target_mbu}) < mbu_scale_out_above ({self.mbu_scale_out_above})"
            )
        return self


@dataclass
class ScaleState:
    side: str | None = None  # "out" | "in" | None
    count: int = 0
    start: float | None = None
    total: float = 0.0
    last_emit_end: float | None = None
    metric: str = "mfu"  # what the streak measures: "mfu" or "mbu"


_RESOURCE = {"mfu": "compute", "mbu": "memory_bandwidth"}


class ScaleEvaluator(Evaluator):
    rule: ScaleRule
    state_type = ScaleState

    def evaluate(self, w: MfuWindow, state: ScaleState, subject: str) -> list[Emission]:
        r = self.rule
        if memory_bound(w) and w.mbu is not None:
            metric, value, basis = "mbu", float(w.mbu), "reported"
            target, out_above, in_below = r.target_mbu, r.mbu_scale_out_above, r.mbu_scale_in_below
        else:
            mfu, basis = judged_mfu(w, use_estimate=r.use_estimate)
            if mfu is None:
                return []
            metric, value = "mfu", mfu
            target, out_above, in_below = r.target_mfu, r.scale_out_above, r.scale_in_below
        side = "out" if value > out_above else "in" if value < in_below else None
        if side != state.side or metric != state.metric:
            state.side, state.count, state.start, state.total = side, 0, None, 0.0
            state.metric = metric
        if side is None:
            return []
        if state.count == 0:
            state.start = w.window_start
        state.count += 1
        state.total += value
        cooling = state.last_emit_end is not None and (
            w.window_start < state.last_emit_end + r.cooldown_s
        )
        if state.count < r.for_windows or cooling:
            return []
        mean = state.total / state.count
        start = state.start if state.start is not None else w.window_start
        label = metric.upper()
        resource = _RESOURCE[metric]
        observed: dict[str, Any] = {"mfu": _r(w.mfu), **coverage_observed(w)}
        if metric == "mbu":
            observed.update(mbu=_r(w.mbu), mbu_mean=_r(mean), regime=w.regime, phase=w.phase)
        else:
            observed["mfu_mean"] = _r(mean)
        emission = Emission(
            event="scale",
            status="recommendation",
            summary=(
                f"scale {side}: {label} {mean:.3f} vs target {target} over "
                f"{state.count} windows (x{mean / target:.2f} replicas; binding: "
                f"{resource.replace('_', ' ')})"
            ),
            observed=observed,
            expected={
                f"target_{metric}": target,
                "scale_out_above": out_above,
                "scale_in_below": in_below,
            },
            windows={"start": start, "end": w.window_end, "count": state.count},
            incident=incident_id(r.id, subject, start),
            details={
                "action": f"scale_{side}",
                "target": {"scope": w.scope, "key": w.key},
                "ratio": _r(mean / target),
                "binding_resource": resource,
                "metric": metric,
                "reason": (
                    f"sustained {label} {'above' if side == 'out' else 'below'} "
                    f"{out_above if side == 'out' else in_below}"
                ),
            },
            basis=basis,  # type: ignore[arg-type]
        )
        state.last_emit_end = w.window_end
        state.side, state.count, state.start, state.total = None, 0, None, 0.0
        return [emission]


KIND = RuleKind("scale", ScaleRule, ScaleEvaluator)
