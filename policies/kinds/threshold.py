"""Rule kind ``threshold``: a metric below (or above) a limit for a number of windows,
with hysteresis."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mfu.events import MfuWindow
from policies.evaluation import (
    Assessment,
    EpisodeEvaluator,
    _r,
    metric_value,
)
from policies.incidents import Episode
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    EventName,
    Hysteresis,
    Metric,
    RuleBase,
)


class ThresholdRule(RuleBase, Hysteresis):
    """``metric`` below ``below`` (or above ``above``) for ``for_windows`` windows opens
    an incident; it clears when the metric is above ``clear_above`` (below
    ``clear_below``) for ``clear_windows`` windows. The gap is the hysteresis band."""

    kind: Literal["threshold"]
    metric: Metric = "mfu"
    below: float | None = Field(None, ge=0.0)
    above: float | None = Field(None, ge=0.0)
    clear_above: float | None = Field(None, ge=0.0)
    clear_below: float | None = Field(None, ge=0.0)
    event: EventName = "threshold"

    @model_validator(mode="after")
    def _one_direction(self) -> ThresholdRule:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of 'below' or 'above'")
        if self.below is not None:
            if self.clear_below is not None:
                raise ValueError("'clear_below' goes with 'above'; with 'below' use 'clear_above'")
            if self.clear_above is None:
                object.__setattr__(self, "clear_above", self.below)
            elif self.clear_above < self.below:
                raise ValueError(
                    f"clear_above ({self.clear_above}) must be >= below ({self.below})"
                )
        else:
            if self.clear_above is not None:
                raise ValueError("'clear_above' goes with 'below'; with 'above' use 'clear_below'")
            if self.clear_below is None:
                object.__setattr__(self, "clear_below", self.above)
            elif self.above is not None and self.clear_below > self.above:
                raise ValueError(
                    f"clear_below ({self.clear_below}) must be <= above ({self.above})"
                )
        return self


_METRIC_LABEL = {"mfu": "MFU", "mfu_allocated": "allocated MFU"}


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


KIND = RuleKind("threshold", ThresholdRule, ThresholdEvaluator)
