"""Rule kind ``stall``: input-pipeline stalls, periodic MFU dips that recover."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

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
    Windows,
)


class StallRule(RuleBase, Hysteresis):
    """Input-pipeline stalls: MFU dips below ``dip_ratio`` × its recent median in at least
    ``min_dips`` separate runs within the last ``history_windows`` windows, recovering in
    between (data loading, checkpoint writes, preemption pauses). Resolves when the
    history holds no dip. A steady low MFU is not a stall (no recovery between)."""

    kind: Literal["stall"]
    history_windows: Windows = 12
    dip_ratio: Ratio = 0.5
    min_dips: int = Field(2, ge=2)
    for_windows: Windows = 1
    clear_windows: Windows = 6
    event: EventName = "stall"


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


KIND = RuleKind("stall", StallRule, StallEvaluator)
