"""Rule kind ``cost``: economics, cost per effective PFLOP-hour, reported once per period."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from mfu.events import MfuWindow
from policies.evaluation import (
    Emission,
    Evaluator,
    _r,
)
from policies.incidents import incident_id
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    EventName,
    Positive,
    Ratio,
    RuleBase,
)


class CostRule(RuleBase):
    """Economics, reported once per event-time ``period_s``: cost = gpu_seconds/3600 x
    price (USD per GPU-hour, from ``prices``); effective PFLOP-hours = achieved_flops /
    1e15 / 3600; and their ratio, USD per effective PFLOP-hour. With
    ``max_usd_per_pflop_hour`` a period above it is reported with the rule's severity,
    else as info.

    Unknowns: GPU-seconds without known model FLOPs (``coverage`` < 1) are costed but
    deliver no counted PFLOP-hours, so the ratio over them would be an upper bound, not a
    measurement: the report gives ``unknown_gpu_hours`` and ``coverage``, its MFU is over
    known GPU-seconds only (null if none), and a period whose coverage is below
    ``min_coverage`` is reported as info (never above the threshold on an unknown)."""

    kind: Literal["cost"]
    period_s: Positive = 3600.0
    max_usd_per_pflop_hour: Positive | None = None
    min_coverage: Ratio = 0.9
    event: EventName = "cost"


@dataclass
class CostState:
    period_start: float | None = None
    windows: int = 0
    gpu_seconds: float = 0.0
    priced_gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    achieved_flops: float = 0.0
    peak_flops: float = 0.0
    first_start: float | None = None
    last_end: float | None = None
    unknown_gpu_seconds: float = 0.0

    def restart(self) -> None:
        """Back to an empty period (in place: the engine stores this object)."""
        for f in fields(self):
            setattr(self, f.name, f.default)


class CostEvaluator(Evaluator):
    """Accumulates a period; reports it when the first window of the next one arrives."""

    rule: CostRule
    state_type = CostState

    def evaluate(self, w: MfuWindow, state: CostState, subject: str) -> list[Emission]:
        r = self.rule
        period = math.floor(w.window_start / r.period_s) * r.period_s
        out: list[Emission] = []
        if state.period_start is not None and period > state.period_start and state.windows:
            out.append(self.report(state, subject))
            state.restart()
        if state.period_start is None or period > state.period_start:
            state.period_start = period
        price = self.config.prices.price(w.gpu_model)
        state.windows += 1
        state.gpu_seconds += w.gpu_seconds
        if price is not None:
            state.priced_gpu_seconds += w.gpu_seconds
            state.cost_usd += w.gpu_seconds / 3600.0 * price
        # GPU-seconds without known model FLOPs: the whole window where its MFU is unknown,
        # else the uncovered share.
        if w.mfu is None:
            state.unknown_gpu_seconds += w.gpu_seconds
        else:
            if w.coverage is not None:
                state.unknown_gpu_seconds += w.gpu_seconds * (1.0 - w.coverage)
            state.achieved_flops += w.achieved_flops
            state.peak_flops += w.peak_flops
        if state.first_start is None:
            state.first_start = w.window_start
        state.last_end = w.window_end
        return out

    def report(self, s: CostState, subject: str) -> Emission:
        """Cost (USD), effective PFLOP-hours (achieved FLOPs / 1e15 / 3600) and their
        ratio over one period."""
        r = self.rule
        gpu_hours = s.gpu_seconds / 3600.0
        pflop_hours = s.achieved_flops / 1e15 / 3600.0
        priced = s.priced_gpu_seconds > 0
        cost = s.cost_usd if priced else None
        per = cost / pflop_hours if cost is not None and pflop_hours > 0 else None
        coverage = 1.0 - s.unknown_gpu_seconds / s.gpu_seconds if s.gpu_seconds > 0 else None
        judged = coverage is None or coverage >= r.min_coverage
        over = judged and r.max_usd_per_pflop_hour is not None and (
            (per is not None and per > r.max_usd_per_pflop_hour)
            or (per is None and priced and pflop_hours == 0)
        )
        unpriced = s.gpu_seconds - s.priced_gpu_seconds
        per_txt = f"${per:,.2f}" if per is not None else "n/a"
        cost_txt = f"${cost:,.2f}" if cost is not None else "unpriced"
        start = s.period_start or 0.0
        return Emission(
            event=r.event,
            status="report",
            summary=(
                f"{cost_txt} for {gpu_hours:.2f} GPU-h, {pflop_hours:.3f} effective "
                f"PFLOP-h: {per_txt} per effective PFLOP-h"
            ),
            observed={
                "cost_usd": _r(cost, 4),
                "gpu_hours": _r(gpu_hours, 6),
                "effective_pflop_hours": _r(pflop_hours, 6),
                "usd_per_effective_pflop_hour": _r(per, 4),
                "mfu": _r(s.achieved_flops / s.peak_flops) if s.peak_flops else None,
                "unpriced_gpu_hours": _r(unpriced / 3600.0, 6),
                "unknown_gpu_hours": _r(s.unknown_gpu_seconds / 3600.0, 6),
                "coverage": _r(coverage),
            },
            expected={"max_usd_per_pflop_hour": r.max_usd_per_pflop_hour},
            windows={
                "start": s.first_start,
                "end": s.last_end,
                "count": s.windows,
                "period_start": start,
                "period_s": r.period_s,
            },
            incident=incident_id(r.id, subject, start),
            severity=r.severity if over else "info",
            window_start=start,
            window_end=start + r.period_s,
        )


KIND = RuleKind("cost", CostRule, CostEvaluator)
