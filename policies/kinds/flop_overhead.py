"""Rule kind ``flop_overhead``: the converse of a reporter mismatch. Counter OFU far
above reported MFU means the GPU does much more arithmetic than the model needs:
recomputation (activation checkpointing), or non-model work (optimizer, loss, data
preprocessing on the GPU, padding). Expected for some jobs, a lever for others: a tenant
hint (``io.mfu.report.v1``, severity info, ``alarm: false``), never an alarm."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mfu.events import MfuWindow
from policies.evaluation import Assessment, EpisodeEvaluator, _r
from policies.incidents import Episode
from policies.kinds.registry import RuleKind
from policies.kinds.reporter_mismatch import reported_share
from policies.rulebase import EventName, Hysteresis, Positive, Ratio, RuleBase, Windows


class FlopOverheadRule(RuleBase, Hysteresis):
    """OFU above ``ratio_min`` x reported MFU + ``abs_gap`` for ``for_windows`` windows,
    on windows mostly covered by reports (``min_reported_share``)."""

    kind: Literal["flop_overhead"]
    ratio_min: Positive = 1.5
    abs_gap: Ratio = 0.05
    min_reported_share: Ratio = 0.9
    for_windows: Windows = 6
    clear_windows: Windows = 6
    cooldown_s: float = Field(3600.0, ge=0.0)
    event: EventName = "report"


class FlopOverheadEvaluator(EpisodeEvaluator):
    rule: FlopOverheadRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        share, reporter = reported_share(w)
        if w.mfu is None or w.ofu is None or share is None or share < r.min_reported_share:
            return None
        gap = w.ofu > w.mfu * r.ratio_min + r.abs_gap
        ratio = w.ofu / w.mfu if w.mfu > 0 else None
        observed = {
            "mfu": _r(w.mfu),
            "ofu": _r(w.ofu),
            "hfu": _r(w.hfu),
            "ofu_over_mfu": _r(ratio, 3),
            "reporter": reporter,
        }
        expected = {"ratio_min": r.ratio_min, "abs_gap": r.abs_gap}
        return Assessment(gap, not gap, ratio, "ofu_over_mfu", observed, expected)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        hints = []
        recompute = "activation checkpointing recomputes the forward pass (up to 1/3 more "
        recompute += "FLOPs): checkpoint fewer layers where memory allows"
        if w.hfu is not None and w.mfu is not None and w.hfu > w.mfu * 1.05:
            recompute = f"HFU {w.hfu:.3f} > MFU {w.mfu:.3f} confirms it: " + recompute
        hints.append({"hint": "recomputation", "detail": recompute})
        hints.append(
            {
                "hint": "non_model_work",
                "detail": "GPU arithmetic outside the model's FLOPs: optimizer steps, loss "
                "and metrics, data preprocessing or augmentation on the GPU, padding of "
                "variable-length batches",
            }
        )
        return {"hints": hints, "severity": "info", "alarm": False}

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        o = a.observed
        if not opened:
            return f"counter OFU back near reported MFU for {n} windows"
        return (
            f"GPU executes {mean:.1f}x the model's FLOPs (OFU {o['ofu']:.3f} vs MFU "
            f"{o['mfu']:.3f}) over {n} windows: recomputation or non-model work (hint)"
        )


KIND = RuleKind("flop_overhead", FlopOverheadRule, FlopOverheadEvaluator)
