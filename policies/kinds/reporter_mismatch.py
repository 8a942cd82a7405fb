"""Rule kind ``reporter_mismatch`` (``io.mfu.reporter_mismatch.v1``): a workload's
reported MFU is impossible against its hardware counters.

OFU (counter-derived FLOP utilisation: tensor/FP pipe activity x clock ratio against the
precision's dense peak) counts every FLOP the GPU executes, model or not, so an honest
reporter's MFU sits at or below OFU: recomputation, optimizer and other non-model work
put OFU *above* MFU by a workload-dependent overhead, and OFU itself is within ~2 MFU
points of the truth (arXiv 2605.20799). Reported MFU above ``ofu x (1 + tolerance) +
abs_tolerance``, or above ``max_mfu`` (1), means the reporter over-counts.

Only windows whose GPU-seconds are mostly covered by reports (``flop_sources``:
``reported`` + ``engine`` >= ``min_reported_share`` of the window's GPU-seconds) and
that have an OFU are judged; the others neither count nor break a streak.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mfu.events import MfuWindow
from policies.evaluation import Assessment, EpisodeEvaluator, _r
from policies.incidents import Episode
from policies.kinds.registry import RuleKind
from policies.rulebase import EventName, Hysteresis, Positive, Ratio, RuleBase, Windows


class ReporterMismatchRule(RuleBase, Hysteresis):
    """Reported MFU above OFU beyond a tolerance, or above 1 (see the module docstring)."""

    kind: Literal["reporter_mismatch"]
    tolerance: Ratio = 0.25
    abs_tolerance: Ratio = 0.03
    max_mfu: Positive = 1.0
    min_reported_share: Ratio = 0.9
    for_windows: Windows = 2
    clear_windows: Windows = 6
    cooldown_s: float = Field(600.0, ge=0.0)
    event: EventName = "reporter_mismatch"


def reported_share(w: MfuWindow) -> tuple[float | None, str | None]:
    """Share of the window's GPU-seconds covered by FLOP reports (SDK or engine) and which
    reporter: ``sdk``, ``engine`` or ``sdk+engine``. (None, None) without ``flop_sources``."""
    fs = w.flop_sources
    if fs is None:
        return None, None
    total = fs.reported + fs.engine + fs.idle + fs.counters + fs.none
    if total <= 0:
        return None, None
    reporter = "+".join(n for n, s in (("sdk", fs.reported), ("engine", fs.engine)) if s > 0)
    return (fs.reported + fs.engine) / total, reporter or None


def likely_causes(ratio: float | None, mfu: float, max_mfu: float) -> list[dict[str, str]]:
    """Likely causes of an over-count, the best fit to ``ratio`` (reported MFU / OFU)
    first: a 2x gap fits double counting (and a precision off by one step); a gap of 3x
    or more fits MoE FLOPs counted on total parameters."""
    causes = {
        "double_counting": "FLOPs counted twice: each gradient-accumulation micro-batch "
        "counted as a full step, forward and backward both counted as 6N, or every rank "
        "reporting the whole job's FLOPs",
        "wrong_precision_or_peak": "the report's precision does not match the kernels "
        "(e.g. fp8 matmuls reported as bf16 halve the peak the MFU is taken against), "
        "or the peak-table entry is wrong for this GPU or MIG slice",
        "moe_total_parameters": "a mixture-of-experts model counted on its total "
        "parameters instead of the active ones (shared + top-k experts): over-counts by "
        "total/active, often 3-10x",
    }
    if ratio is not None and ratio >= 2.5:
        order = ["moe_total_parameters", "wrong_precision_or_peak", "double_counting"]
    else:
        order = ["double_counting", "wrong_precision_or_peak", "moe_total_parameters"]
    out = [{"cause": c, "detail": causes[c]} for c in order]
    if mfu > max_mfu:
        out.insert(
            0,
            {
                "cause": "impossible_mfu",
                "detail": f"MFU {mfu:.2f} above {max_mfu:g} cannot happen: a peak too low "
                "(missing or wrong peak entry) or FLOPs counted more than once",
            },
        )
    return out


class ReporterMismatchEvaluator(EpisodeEvaluator):
    rule: ReporterMismatchRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        share, reporter = reported_share(w)
        if w.mfu is None or share is None or share < r.min_reported_share:
            return None
        impossible = w.mfu > r.max_mfu
        if w.ofu is None and not impossible:
            return None  # nothing to compare with (no pipe counters)
        limit = None if w.ofu is None else w.ofu * (1 + r.tolerance) + r.abs_tolerance
        over = limit is not None and w.mfu > limit
        ratio = w.mfu / w.ofu if w.ofu else None
        observed = {
            "mfu": _r(w.mfu),
            "ofu": _r(w.ofu),
            "ratio": _r(ratio, 3),
            "reported_share": _r(share),
            "reporter": reporter,
            "model": w.model,
            "precision": w.precision,
            "gpu_model": w.gpu_model,
        }
        expected = {
            "mfu_at_most": _r(limit),
            "tolerance": r.tolerance,
            "abs_tolerance": r.abs_tolerance,
            "max_mfu": r.max_mfu,
        }
        # Tracked value: the ratio (or the MFU itself where there is no OFU).
        value = ratio if ratio is not None else w.mfu
        return Assessment(impossible or over, not (impossible or over), value, "ratio",
                          observed, expected)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        assert w.mfu is not None
        return {
            "workload": w.key,
            "tenant": w.tenant,
            "causes": likely_causes(a.observed["ratio"], w.mfu, self.rule.max_mfu),
        }

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        o = a.observed
        if not opened:
            return f"reported MFU consistent with the counters again for {n} windows"
        vs = f"{mean:.2f}x its counter OFU {o['ofu']:.3f}" if o["ofu"] else "no OFU"
        return (
            f"workload {facts['workload']} reports MFU {o['mfu']:.3f}, {vs}, over {n} windows: "
            f"the reporter over-counts (likely {facts['causes'][0]['cause']})"
        )


KIND = RuleKind("reporter_mismatch", ReporterMismatchRule, ReporterMismatchEvaluator)
