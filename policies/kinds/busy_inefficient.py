"""Rule kind ``busy_inefficient``: Busy SMs, little model math: the tenant's job looks busy but is inefficient."""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import Field, model_validator

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
    Strict,
)


class Hints(Strict):
    """Thresholds for the tenant-facing hints of a busy-but-inefficient incident."""

    tensor_active_max: Ratio = 0.3
    mem_used_ratio_max: Ratio = 0.6
    tensor_core_gpus: list[str] = Field(
        default_factory=lambda: [
            "*V100*",
            "*T4*",
            "*A10*",
            "*A30*",
            "*A40*",
            "*A100*",
            "*A800*",
            "*L4*",
            "*L40*",
            "*H100*",
            "*H800*",
            "*H20*",
            "*H200*",
            "*GH200*",
            "*B100*",
            "*B200*",
            "*GB200*",
            "*B300*",
            "*RTX*",
        ]
    )


class BusyInefficientRule(RuleBase, Hysteresis):
    """High SM busy time with low MFU: the GPU looks busy but does little model math.
    ``decode`` says what to do for ``phase=decode`` (memory-bound: low MFU is expected):
    ``report`` emits ``io.mfu.report.v1`` (severity info) instead of an alarm."""

    kind: Literal["busy_inefficient"]
    sm_util_min: Ratio = 0.8
    mfu_max: Ratio = 0.25
    clear_mfu: Ratio | None = None
    decode: Literal["report", "alarm", "ignore"] = "report"
    hints: Hints = Field(default_factory=Hints)
    event: EventName = "inefficient"

    @model_validator(mode="after")
    def _clear_default(self) -> BusyInefficientRule:
        if self.clear_mfu is None:
            object.__setattr__(self, "clear_mfu", min(1.0, self.mfu_max + 0.05))
        elif self.clear_mfu < self.mfu_max:
            raise ValueError(f"clear_mfu ({self.clear_mfu}) must be >= mfu_max ({self.mfu_max})")
        return self



class BusyInefficientEvaluator(EpisodeEvaluator):
    rule: BusyInefficientRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        if w.sm_util is None or w.mfu is None:
            return None
        if w.phase == "decode" and r.decode == "ignore":
            return None
        bad = w.sm_util >= r.sm_util_min and w.mfu <= r.mfu_max
        good = w.sm_util < r.sm_util_min or w.mfu >= (r.clear_mfu or r.mfu_max)
        observed = {
            "mfu": _r(w.mfu),
            "sm_util": _r(w.sm_util),
            "tensor_active": _r(w.tensor_active),
            "mem_util": _r(w.mem_util),
            "mem_used_ratio": _r(w.mem_used_ratio),
            "precision": w.precision,
            "gpu_model": w.gpu_model,
            "phase": w.phase,
        }
        expected = {"sm_util_min": r.sm_util_min, "mfu_max": r.mfu_max, "clear_mfu": r.clear_mfu}
        return Assessment(bad, good, w.mfu, "mfu", observed, expected)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        report = w.phase == "decode" and self.rule.decode == "report"
        facts: dict[str, Any] = {"hints": self.hints(w)}
        if report:
            facts.update(event="report", severity="info", alarm=False)
        return facts

    def hints(self, w: MfuWindow) -> list[dict[str, Any]]:
        """Likely causes, in the tenant's terms (DESIGN.md §6)."""
        h = self.rule.hints
        hints: list[dict[str, Any]] = []
        if w.phase == "decode":
            hints.append(
                {
                    "hint": "memory_bound_decode",
                    "detail": "decode is memory-bandwidth bound, so low MFU is expected; "
                    "watch memory bandwidth use instead",
                    "mem_util": _r(w.mem_util),
                }
            )
            return hints
        if (
            w.tensor_active is not None
            and w.tensor_active <= h.tensor_active_max
            and (w.mem_used_ratio is None or w.mem_used_ratio <= h.mem_used_ratio_max)
        ):
            headroom = (
                f"{1 - w.mem_used_ratio:.0%} memory free"
                if w.mem_used_ratio is not None
                else "memory use unknown"
            )
            hints.append(
                {
                    "hint": "under_batching",
                    "detail": f"SMs busy {w.sm_util:.0%} but tensor cores active only "
                    f"{w.tensor_active:.0%} with {headroom}: try a larger batch (or micro-batch)",
                    "tensor_active": _r(w.tensor_active),
                    "mem_used_ratio": _r(w.mem_used_ratio),
                }
            )
        tensor_core = w.gpu_model is None or any(
            fnmatch.fnmatchcase(w.gpu_model, g) for g in h.tensor_core_gpus
        )
        if w.precision in ("fp32", "tf32") and tensor_core:
            hints.append(
                {
                    "hint": "precision",
                    "detail": f"running {w.precision} on a tensor-core GPU"
                    f"{' (' + w.gpu_model + ')' if w.gpu_model else ''}: bf16/fp16 (or fp8) "
                    "mixed precision raises the achievable FLOP/s",
                    "precision": w.precision,
                }
            )
        return hints

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        if not opened:
            return f"no longer busy-but-inefficient for {n} windows (MFU {mean:.3f})"
        o = a.observed
        return f"SM busy {o['sm_util']:.0%} but MFU {mean:.3f} over {n} windows" + (
            "; decode phase (memory-bound): reported, not alarmed"
            if o.get("phase") == "decode"
            else ""
        )



KIND = RuleKind("busy_inefficient", BusyInefficientRule, BusyInefficientEvaluator)
