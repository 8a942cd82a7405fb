"""Rule kind ``admission``: admission advice for a node pool (``io.mfu.admission.v1``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import model_validator

from mfu.events import MfuWindow
from policies.evaluation import (
    Emission,
    Evaluator,
    _r,
    coverage_observed,
    judged_mfu_allocated,
)
from policies.incidents import incident_id
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    Ratio,
    RuleBase,
    Windows,
)


class AdmissionRule(RuleBase):
    """Admission advice for a node pool (a fleet key), ``io.mfu.admission.v1``, emitted
    when the advice changes and has held for ``for_windows`` windows:
    ``queue`` when allocation >= ``allocation_high`` and the allocated GPUs are busy
    (mfu_allocated >= ``mfu_allocated_busy``); ``admit_oversubscribe`` when allocation is
    high but the allocated GPUs idle (mfu_allocated < ``mfu_allocated_idle``); else
    ``admit``."""

    kind: Literal["admission"]
    allocation_high: Ratio = 0.9
    mfu_allocated_busy: Ratio = 0.35
    mfu_allocated_idle: Ratio = 0.1
    for_windows: Windows = 2

    @model_validator(mode="after")
    def _order(self) -> AdmissionRule:
        if self.mfu_allocated_idle > self.mfu_allocated_busy:
            raise ValueError("mfu_allocated_idle must be <= mfu_allocated_busy")
        return self


@dataclass
class AdmissionState:
    advice: str | None = None
    candidate: str | None = None
    count: int = 0
    since: float | None = None


class AdmissionEvaluator(Evaluator):
    rule: AdmissionRule
    state_type = AdmissionState

    def advise(self, allocation: float, mfu_allocated: float) -> tuple[str, str]:
        r = self.rule
        if allocation >= r.allocation_high and mfu_allocated >= r.mfu_allocated_busy:
            return "queue", (
                f"pool {allocation:.0%} allocated and its allocated GPUs busy "
                f"(MFU {mfu_allocated:.2f}): queue new work"
            )
        if allocation >= r.allocation_high and mfu_allocated < r.mfu_allocated_idle:
            return "admit_oversubscribe", (
                f"pool {allocation:.0%} allocated but allocated GPUs idle (MFU "
                f"{mfu_allocated:.2f}): admit onto shared GPUs"
            )
        return "admit", f"pool {allocation:.0%} allocated (MFU {mfu_allocated:.2f}): admit"

    def evaluate(self, w: MfuWindow, state: AdmissionState, subject: str) -> list[Emission]:
        mfu_allocated, basis = judged_mfu_allocated(w)
        if w.allocation is None or mfu_allocated is None:
            return []
        advice, reason = self.advise(w.allocation, mfu_allocated)
        if advice == state.advice:
            state.candidate, state.count, state.since = None, 0, None
            return []
        if advice != state.candidate:
            state.candidate, state.count, state.since = advice, 0, w.window_start
        state.count += 1
        if state.count < self.rule.for_windows:
            return []
        previous, state.advice = state.advice, advice
        since = state.since if state.since is not None else w.window_start
        state.candidate, state.count, state.since = None, 0, None
        return [
            Emission(
                event="admission",
                status="advice",
                summary=f"{advice}: {reason}",
                observed={
                    "allocation": _r(w.allocation),
                    "mfu_allocated": _r(mfu_allocated),
                    **coverage_observed(w),
                    "allocated_gpus": w.allocated_gpus,
                    "gpus": w.gpus,
                },
                expected={
                    "allocation_high": self.rule.allocation_high,
                    "mfu_allocated_busy": self.rule.mfu_allocated_busy,
                    "mfu_allocated_idle": self.rule.mfu_allocated_idle,
                },
                windows={"start": since, "end": w.window_end, "count": self.rule.for_windows},
                incident=incident_id(self.rule.id, subject, since),
                details={"advice": advice, "previous": previous, "pool": w.key, "reason": reason},
                basis=basis,
            )
        ]


KIND = RuleKind("admission", AdmissionRule, AdmissionEvaluator)
