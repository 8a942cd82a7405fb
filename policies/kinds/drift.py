"""Rule kind ``drift``: MFU drift against a declared or learned baseline (CUSUM or
EWMA), robust to dips that recover and deferring to causes other rules name."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from mfu.events import MfuWindow
from policies.cloudevents import rfc3339
from policies.detectors import Cusum, Ewma, NoiseEstimator, ewma_sd
from policies.evaluation import (
    Emission,
    Evaluator,
    _from_dict,
    _r,
)
from policies.incidents import Episode, incident_id
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    EventName,
    Ratio,
    RuleBase,
    RuleId,
    Strict,
    Windows,
)


class CusumParams(Strict):
    """One-sided tabular CUSUM on the standardised residual z = (x - baseline) / sigma.

    ``k`` is the reference value (half the shift to detect, in sigma), ``h`` the decision
    interval (sigma). After an alarm the statistic is capped at ``recover_h`` (default
    h/2); recovery is announced when it drains back to 0."""

    method: Literal["cusum"]
    k: float = Field(0.5, gt=0.0, le=5.0)
    h: float = Field(12.0, gt=0.0, le=100.0)
    recover_h: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _recover_below_h(self) -> CusumParams:
        if self.recover_h is not None and self.recover_h > self.h:
            raise ValueError(f"recover_h ({self.recover_h}) must be <= h ({self.h})")
        return self


class EwmaParams(Strict):
    """EWMA control chart on z: e = lam*z + (1-lam)*e; alarm when e is beyond
    ``L`` asymptotic standard deviations sqrt(lam/(2-lam)); recovery when back inside
    ``recover_L``."""

    method: Literal["ewma"]
    lam: float = Field(0.1, gt=0.0, le=1.0)
    L: float = Field(3.5, gt=0.0, le=20.0)
    recover_L: float = Field(1.0, ge=0.0, le=20.0)

    @model_validator(mode="after")
    def _recover_inside(self) -> EwmaParams:
        if self.recover_L >= self.L:
            raise ValueError(f"recover_L ({self.recover_L}) must be < L ({self.L})")
        return self


DetectorParams = Annotated[CusumParams | EwmaParams, Field(discriminator="method")]


class TransientParams(Strict):
    """Dips that recover are not drift. A window below ``dip_ratio`` x the median of the
    last ``reference_windows`` windows the detector saw starts a dip; if the series
    recovers within ``max_windows`` windows, the dip, the window before it and the window
    after it (both partly dipped when a stall straddles a window edge) never reach the
    detector or the noise estimate. A dip longer than ``max_windows`` is a real drop: its
    windows are fed, in order. The price: every window reaches the detector one window
    late (the look-ahead that spots the window before a dip), a large sudden drop
    ``max_windows + 1`` windows late. Periodic dips (input stalls: the ``stall`` rule
    names them) and one-off pauses then leave the detector alone."""

    max_windows: Windows = 3
    dip_ratio: Ratio = 0.5
    reference_windows: Windows = 12


class DriftRule(RuleBase):
    """Drift of observed MFU against a baseline.

    Baseline: ``declared`` = the record's ``expected_mfu``, else an ``expected`` entry of
    the rules file; ``learned`` = mean of the first ``baseline_windows`` windows (refined
    while detection already runs after ``warmup_windows``); ``auto`` = declared when
    known, else learned. Noise sigma: ``sigma`` if given, else learned
    from the moving range of successive windows (robust to a level offset), floored at
    ``min_sigma``; detection starts after ``warmup_windows`` (learned baseline) or
    ``declared_warmup_windows`` (declared baseline). Shifts smaller than ``min_shift`` x baseline are not worth an alarm:
    the detector's reference value grows to cover them when sigma is tiny."""

    kind: Literal["drift"]
    baseline: Literal["auto", "declared", "learned"] = "auto"
    direction: Literal["down", "up", "both"] = "down"
    detector: DetectorParams = Field(default_factory=lambda: CusumParams(method="cusum"))
    warmup_windows: Windows = 20
    # With a declared baseline only the noise must be learned: fewer windows will do.
    declared_warmup_windows: Windows = 5
    baseline_windows: Windows = 200
    sigma: float | None = Field(None, gt=0.0)
    min_sigma: float = Field(0.005, gt=0.0)
    min_shift: float = Field(0.05, ge=0.0, le=1.0)
    # Off (null) by default: every window is judged as it comes (a large drop alarms in
    # one window). The shipped rules turn it on.
    transients: TransientParams | None = None
    # Causes other rules name: while one of these rules (ids) has an open incident on the
    # same subject, a drift alarm does not open (it opens later if the drift outlives it).
    defer_to: list[RuleId] = Field(default_factory=list)
    event: EventName = "drift"


@dataclass
class DriftState(Episode):
    noise: dict[str, Any] = field(default_factory=dict)
    detector: dict[str, Any] = field(default_factory=dict)
    # Evidence since the detector last sat at zero (CUSUM's change-point estimate).
    run_start: float | None = None
    run_n: int = 0
    run_sum: float = 0.0
    # While open: sums for the mean over the incident.
    incident_n: int = 0
    incident_sum: float = 0.0
    # Transient filter (DriftRule.transients): windows held back ([start, mfu]), whether
    # they are a dip, the recent values fed, and how many windows were dropped as dips.
    pending: list[list[float]] = field(default_factory=list)
    in_dip: bool = False
    recent: list[float] = field(default_factory=list)
    masked: int = 0
    deferred_windows: int = 0  # alarm windows held back while a named cause was open


class DriftEvaluator(Evaluator):
    rule: DriftRule
    state_type = DriftState

    def baseline(self, w: MfuWindow, noise: NoiseEstimator) -> tuple[float | None, str]:
        r = self.rule
        if r.baseline in ("auto", "declared"):
            declared = self.config.expected_mfu(w)
            if declared is not None:
                return declared, "declared"
            if r.baseline == "declared":
                return None, "declared"
        if noise.ready(r.warmup_windows):
            return noise.baseline_mean, "learned"
        return None, "learned"

    def evaluate(self, w: MfuWindow, state: DriftState, subject: str) -> list[Emission]:
        return self.evaluate_in(w, state, subject, frozenset())

    def evaluate_in(
        self, w: MfuWindow, state: DriftState, subject: str, open_incidents: frozenset[str]
    ) -> list[Emission]:
        r = self.rule
        deferred = sorted(set(r.defer_to) & open_incidents)
        x = w.mfu
        if x is None:
            return []  # unknown MFU: nothing to judge (never a zero)
        t = r.transients
        if t is None:
            return self._feed(w, w.window_start, float(x), state, subject, deferred)
        item = [w.window_start, float(x)]
        recent = sorted(state.recent)
        ref = recent[len(recent) // 2] if len(recent) >= 3 else None
        dip = ref is not None and x < t.dip_ratio * ref
        fed: list[list[float]] = []
        if state.in_dip:
            if dip:
                state.pending.append(item)
                if len(state.pending) > t.max_windows:  # it stays down: a real drop
                    fed, state.pending, state.in_dip = state.pending, [], False
            else:  # recovered: a transient; drop it and this partly dipped window
                state.masked += len(state.pending) + 1
                state.pending, state.in_dip = [], False
        elif dip:
            state.masked += len(state.pending)  # the window before the dip
            state.pending, state.in_dip = [item], True
        else:
            fed, state.pending = state.pending, [item]
        out: list[Emission] = []
        for ws, v in fed:
            out.extend(self._feed(w, ws, v, state, subject, deferred))
            state.recent = [*state.recent, v][-t.reference_windows :]
        return out

    def _feed(
        self,
        w: MfuWindow,
        ws: float,
        x: float,
        state: DriftState,
        subject: str,
        deferred: list[str] | None = None,
    ) -> list[Emission]:
        """Advance the detector by one value ``x`` (the MFU of the window starting at
        ``ws``); ``w`` is the window being processed (its end is the decision time).
        ``deferred``: rules with an open incident this drift defers to (no open now)."""
        r = self.rule
        noise = _from_dict(NoiseEstimator, state.noise)
        p = r.detector
        det = _from_dict(Cusum if isinstance(p, CusumParams) else Ewma, state.detector)
        mu0, source = self.baseline(w, noise)
        warmup = r.declared_warmup_windows if source == "declared" else r.warmup_windows
        sigma_est = (
            r.sigma if r.sigma is not None else (noise.sigma if noise.ready(warmup) else None)
        )
        emissions: list[Emission] = []
        if mu0 is not None and sigma_est is not None:
            sigma = max(sigma_est, r.min_sigma)
            z = (x - mu0) / sigma
            # The smallest shift worth an alarm, in sigma units.
            min_shift = r.min_shift * mu0 / sigma
            if isinstance(p, CusumParams):
                k = max(p.k, min_shift / 2)
                det.update(z, k, p.h, p.recover_h or p.h / 2, r.direction)
                params = {"method": "cusum", "k": _r(k), "h": p.h, "statistic": _r(det.statistic)}
            else:
                sd = ewma_sd(p.lam)
                limit = max(p.L * sd, min_shift / 2)
                det.update(z, p.lam, limit, p.recover_L * sd, r.direction)
                params = {
                    "method": "ewma",
                    "lam": p.lam,
                    "limit": _r(limit),
                    "statistic": _r(det.statistic),
                }
            if det.neutral(r.direction):
                state.run_start, state.run_n, state.run_sum = None, 0, 0.0
            else:
                if state.run_n == 0:
                    state.run_start = ws
                state.run_n += 1
                state.run_sum += x
            if state.open:
                state.incident_n += 1
                state.incident_sum += x
            expected = {
                "mfu": _r(mu0),
                "baseline": source,
                "sigma": _r(sigma, 5),
                "min_shift": r.min_shift,
            }
            if r.transients is not None:
                expected["transients"] = r.transients.model_dump()
                params["masked_windows"] = state.masked
            if r.defer_to:
                params["deferred_to"] = deferred or []
                params["deferred_windows"] = state.deferred_windows
            if det.alarmed and not state.open and deferred:
                state.deferred_windows += 1
            elif det.alarmed and not state.open:
                emissions.append(self._opened(w, state, subject, x, mu0, sigma, expected, params))
            elif not det.alarmed and state.open:
                emissions.append(self._resolved(w, state, x, mu0, expected, params))
        noise.update(x, r.warmup_windows, max(r.warmup_windows, r.baseline_windows))
        state.noise, state.detector = asdict(noise), asdict(det)
        return emissions

    def _opened(
        self,
        w: MfuWindow,
        state: DriftState,
        subject: str,
        x: float,
        mu0: float,
        sigma: float,
        expected: dict[str, Any],
        params: dict[str, Any],
    ) -> Emission:
        start = state.run_start if state.run_start is not None else w.window_start
        n = max(state.run_n, 1)
        mean = state.run_sum / state.run_n if state.run_n else x
        state.open, state.opened_at = True, start
        state.incident = incident_id(self.rule.id, subject, start)
        state.incident_n, state.incident_sum = 1, x
        rel = (mean - mu0) / mu0 if mu0 else math.inf
        word = "below" if mean < mu0 else "above"
        return Emission(
            event=self.rule.event,
            status="open",
            summary=(
                f"MFU {mean:.3f} {word} expected {mu0:.3f} ({rel:+.0%}) over {n} windows "
                f"since {rfc3339(start)}; {params['method']} {params['statistic']}"
            ),
            observed={
                "mfu": _r(x),
                "mfu_mean": _r(mean),
                "shift_sigma": _r((mean - mu0) / sigma, 2),
            },
            expected=expected,
            windows={"start": start, "end": w.window_end, "count": n, "change_point": start},
            incident=state.incident,
            details={"detector": params, "direction": self.rule.direction},
        )

    def _resolved(
        self,
        w: MfuWindow,
        state: DriftState,
        x: float,
        mu0: float,
        expected: dict[str, Any],
        params: dict[str, Any],
    ) -> Emission:
        state.open, state.resolved_end = False, w.window_end
        start = state.opened_at if state.opened_at is not None else w.window_start
        mean = state.incident_sum / state.incident_n if state.incident_n else None
        return Emission(
            event=self.rule.event,
            status="resolved",
            summary=f"MFU back at expected {mu0:.3f} (now {x:.3f}); drift since "
            f"{rfc3339(start)} recovered",
            observed={"mfu": _r(x), "mfu_mean_during_incident": _r(mean)},
            expected=expected,
            windows={
                "start": start,
                "end": w.window_end,
                "count": state.incident_n,
                "incident_duration_s": _r(w.window_end - start, 3),
            },
            incident=state.incident,
            details={"detector": params, "direction": self.rule.direction},
        )


KIND = RuleKind("drift", DriftRule, DriftEvaluator)
