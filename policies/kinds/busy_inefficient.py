"""Rule kind ``busy_inefficient``: busy SMs, little model math (the job looks busy but
is inefficient), with hints at the likely cause."""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import Field, model_validator

from mfu.events import MfuWindow
from policies.evaluation import (
    Assessment,
    EpisodeEvaluator,
    _r,
    coverage_observed,
    judged_mfu,
    memory_bound,
)
from policies.gpus import faster_precisions
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
    """Thresholds for the tenant-facing hints of a busy-but-inefficient incident.

    ``tensor_core_gpus``: optional gpu_model globs that get the precision hint; by default
    (null) the GPU catalog decides: the hint is given where the catalog lists a
    tensor-core precision with at least twice the dense peak of the one the job runs at."""

    tensor_active_max: Ratio = 0.3
    mem_used_ratio_max: Ratio = 0.6
    tensor_core_gpus: list[str] | None = None


class BusyInefficientRule(RuleBase, Hysteresis):
    """High SM busy time with low MFU: the GPU looks busy but does little model math.

    Unknowns: a window whose ``mfu`` is unknown (no known model FLOPs) is judged on
    ``mfu_estimated`` when ``use_estimate`` (the event says ``basis: estimated``), else
    skipped; it is never read as MFU 0.

    Memory-bound work (``regime: memory`` or ``phase: decode``) is judged on MBU where the
    window has it: MBU >= ``clear_mbu`` is expected (no alarm); MFU <= ``mfu_max`` with
    MBU <= ``mbu_max`` is real waste (an alarm with the ``low_bandwidth_use`` hint).
    Without MBU, ``decode`` says what to do for decode: ``report`` emits
    ``io.mfu.report.v1`` (severity info) instead of an alarm; ``alarm``; ``ignore``."""

    kind: Literal["busy_inefficient"]
    sm_util_min: Ratio = 0.8
    mfu_max: Ratio = 0.25
    clear_mfu: Ratio | None = None
    decode: Literal["report", "alarm", "ignore"] = "report"
    mbu_max: Ratio = 0.3
    clear_mbu: Ratio = 0.4
    use_estimate: bool = True
    hints: Hints = Field(default_factory=Hints)
    event: EventName = "inefficient"

    @model_validator(mode="after")
    def _clear_default(self) -> BusyInefficientRule:
        if self.clear_mfu is None:
            object.__setattr__(self, "clear_mfu", min(1.0, self.mfu_max + 0.05))
        elif self.clear_mfu < self.mfu_max:
            raise ValueError(f"clear_mfu ({self.clear_mfu}) must be >= mfu_max ({self.mfu_max})")
        if self.clear_mbu < self.mbu_max:
            raise ValueError(f"clear_mbu ({self.clear_mbu}) must be >= mbu_max ({self.mbu_max})")
        return self


class BusyInefficientEvaluator(EpisodeEvaluator):
    rule: BusyInefficientRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        mfu, basis = judged_mfu(w, use_estimate=r.use_estimate)
        if w.sm_util is None or mfu is None:
            return None
        if w.phase == "decode" and r.decode == "ignore":
            return None
        busy = w.sm_util >= r.sm_util_min
        bad = busy and mfu <= r.mfu_max
        good = not busy or mfu >= (r.clear_mfu or r.mfu_max)
        by_mbu = memory_bound(w) and w.mbu is not None
        if by_mbu:
            # Memory-bound: low MFU is expected; waste is low bandwidth use as well.
            assert w.mbu is not None
            bad = bad and w.mbu <= r.mbu_max
            good = good or w.mbu >= r.clear_mbu
        observed = {
            "mfu": _r(w.mfu),
            **coverage_observed(w),
            "sm_util": _r(w.sm_util),
            "tensor_active": _r(w.tensor_active),
            "mem_util": _r(w.mem_util),
            "mem_used_ratio": _r(w.mem_used_ratio),
            "mbu": _r(w.mbu),
            "regime": w.regime,
            "precision": w.precision,
            "gpu_model": w.gpu_model,
            "phase": w.phase,
        }
        expected = {"sm_util_min": r.sm_util_min, "mfu_max": r.mfu_max, "clear_mfu": r.clear_mfu}
        if by_mbu:
            expected.update(mbu_max=r.mbu_max, clear_mbu=r.clear_mbu)
        return Assessment(bad, good, mfu, "mfu", observed, expected, basis)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        by_mbu = memory_bound(w) and w.mbu is not None
        report = w.phase == "decode" and self.rule.decode == "report" and not by_mbu
        facts: dict[str, Any] = {"hints": self.hints(w)}
        if by_mbu:
            facts["judged_on"] = "mbu"
        if report:
            facts.update(event="report", severity="info", alarm=False)
        return facts

    def hints(self, w: MfuWindow) -> list[dict[str, Any]]:
        """Likely causes, in the tenant's terms (DESIGN.md §6)."""
        h = self.rule.hints
        hints: list[dict[str, Any]] = []
        if memory_bound(w) and w.mbu is not None:
            hints.append(
                {
                    "hint": "low_bandwidth_use",
                    "detail": f"memory-bound work using {w.mbu:.0%} of peak memory bandwidth "
                    f"(MBU) at MFU {(w.mfu if w.mfu is not None else w.mfu_estimated) or 0:.3f}: "
                    "both low means the GPU waits on neither; batch more requests "
                    "(continuous batching), or look for host-side gaps between kernels",
                    "mbu": _r(w.mbu),
                }
            )
            return hints
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
        precision = self.precision_hint(w)
        if precision is None:
            precision = self.vector_pipe_hint(w)
        if precision is not None:
            hints.append(precision)
        return hints

    def vector_pipe_hint(self, w: MfuWindow) -> dict[str, Any] | None:
        """The precision hint from the counters, for a window whose reports do not name
        the precision (a tenant without the SDK): the tensor pipe idle
        (``tensor_active <= 0.02``) while OFU, which adds the FP32/FP64 pipes' FLOPs, shows
        at least twice the tensor pipe's share plus half a point: the math runs on the
        vector pipes, i.e. fp32 (or fp64) on a GPU whose catalog has tensor-core
        precisions at least twice as fast."""
        if w.precision in ("fp32", "tf32") or w.tensor_active is None or w.ofu is None:
            return None
        if w.tensor_active > 0.02 or w.ofu < 2.0 * w.tensor_active + 0.005:
            return None
        if self.rule.hints.tensor_core_gpus is not None:
            if w.gpu_model is not None and not any(
                    fnmatch.fnmatchcase(w.gpu_model, g) for g in self.rule.hints.tensor_core_gpus):
                return None
            faster: list[tuple[str, float]] = []
        else:
            faster = faster_precisions(w.gpu_model, "fp32")
            if not faster:
                return None
        gains = ", ".join(f"{p} {ratio:.1f}x" for p, ratio in faster)
        return {
            "hint": "precision",
            "detail": f"tensor cores idle ({w.tensor_active:.0%} active) while the FP32/FP64 "
            f"pipes do the math (OFU {w.ofu:.1%}): fp32 on a tensor-core GPU"
            f"{' (' + w.gpu_model + ')' if w.gpu_model else ''}; bf16/fp16 (or tf32) raises "
            "the achievable FLOP/s" + (f" (dense peak vs fp32: {gains})" if gains else ""),
            "precision": None,
            "inferred_from": "counters",
            "faster_precisions": {p: _r(ratio, 2) for p, ratio in faster},
        }

    def precision_hint(self, w: MfuWindow) -> dict[str, Any] | None:
        """fp32/tf32 on a GPU whose catalog lists a much faster tensor-core precision."""
        if w.precision not in ("fp32", "tf32"):
            return None
        globs = self.rule.hints.tensor_core_gpus
        if globs is not None:
            if not (w.gpu_model is None or any(fnmatch.fnmatchcase(w.gpu_model, g) for g in globs)):
                return None
            faster: list[tuple[str, float]] = []
        else:
            faster = faster_precisions(w.gpu_model, w.precision)
            if not faster:
                return None
        gains = ", ".join(f"{p} {ratio:.1f}x" for p, ratio in faster)
        return {
            "hint": "precision",
            "detail": f"running {w.precision} on a tensor-core GPU"
            f"{' (' + w.gpu_model + ')' if w.gpu_model else ''}: bf16/fp16 (or fp8) "
            "mixed precision raises the achievable FLOP/s"
            + (f" (dense peak vs {w.precision}: {gains})" if gains else ""),
            "precision": w.precision,
            "faster_precisions": {p: _r(ratio, 2) for p, ratio in faster},
        }

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        if not opened:
            return f"no longer busy-but-inefficient for {n} windows (MFU {mean:.3f})"
        o = a.observed
        est = " (estimated from counters)" if a.basis == "estimated" else ""
        text = f"SM busy {o['sm_util']:.0%} but MFU {mean:.3f}{est} over {n} windows"
        if facts.get("judged_on") == "mbu":
            return text + f"; memory-bound and MBU only {o['mbu']:.0%}: bandwidth unused too"
        if o.get("phase") == "decode":
            return text + "; decode phase (memory-bound): reported, not alarmed"
        return text


KIND = RuleKind("busy_inefficient", BusyInefficientRule, BusyInefficientEvaluator)
