"""Rule kind ``straggler``: one rank far below its peers holds the job back."""

from __future__ import annotations

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
)


class StragglerRule(RuleBase, Hysteresis):
    """The slowest rank's MFU far below the median rank's (``rank_mfu_min /
    rank_mfu_median < ratio_max``): one rank holds the whole job back."""

    kind: Literal["straggler"]
    ratio_max: Ratio = 0.7
    clear_ratio: Ratio = 0.8
    min_ranks: int = Field(2, ge=2)
    event: EventName = "straggler"


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


KIND = RuleKind("straggler", StragglerRule, StragglerEvaluator)
