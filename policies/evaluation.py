"""What every rule kind's evaluator builds on (pure): window in, state updated,
decisions out.

An evaluator owns no state between calls: the engine hands it the entity's state for
its rule (a dataclass rebuilt from the stored dict), the evaluator advances it by one
window and returns :class:`Emission` objects, which the engine wraps in CloudEvents.
Condition-style kinds share :class:`EpisodeEvaluator` and its hysteresis/cooldown machine.

Unknowns (DESIGN.md §8): a window's ``mfu`` is over the GPU-seconds with known model FLOPs
only and null where there are none. :func:`judged_mfu` is the one place a rule asks "what
MFU do I judge, and on what basis": the measured ``mfu`` (basis ``reported``), else the
counter estimate ``mfu_estimated`` (basis ``estimated``), else nothing: an unknown is never
judged as a zero. Every event carries ``data.basis``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mfu.events import MfuWindow
from policies.incidents import Episode

if TYPE_CHECKING:  # the config module imports the kinds, which import this one
    from policies.rules import RulesConfig

Basis = Literal["reported", "estimated"]


@dataclass
class Emission:
    """One decision, before it is wrapped in a CloudEvent. ``window_start``/``window_end``
    override the triggering window (a cost report names its whole period). ``basis``:
    ``estimated`` where the judgement rests on a counter estimate."""

    event: str
    status: str
    summary: str
    observed: dict[str, Any]
    expected: dict[str, Any]
    windows: dict[str, Any]
    incident: str | None = None
    severity: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    window_start: float | None = None
    window_end: float | None = None
    basis: Basis = "reported"


def _from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    if not data:
        return cls()
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def metric_value(w: MfuWindow, metric: str) -> float | None:
    value = getattr(w, metric)
    return None if value is None else float(value)


def judged_mfu(
    w: MfuWindow, *, use_estimate: bool = True, min_coverage: float = 0.0
) -> tuple[float | None, Basis]:
    """The MFU a rule judges ``w`` on, and its basis.

    ``mfu`` (measured over the GPU-seconds with known model FLOPs) when known and the
    window's ``coverage`` (where given) is at least ``min_coverage``; else
    ``mfu_estimated`` (counter estimate) when ``use_estimate``; else None (unknown: the
    rule does nothing, it never reads an unknown as a zero)."""
    if w.mfu is not None and (w.coverage is None or w.coverage >= min_coverage):
        return float(w.mfu), "reported"
    if use_estimate and w.mfu_estimated is not None:
        return float(w.mfu_estimated), "estimated"
    return None, "reported"


def judged_mfu_allocated(
    w: MfuWindow, *, use_estimate: bool = True, min_coverage: float = 0.9
) -> tuple[float | None, Basis]:
    """Allocated-GPU MFU of a node or fleet window, and its basis.

    ``mfu_allocated`` where coverage is at least ``min_coverage`` (or not given). Below
    it, the known GPU-seconds are mostly the idle ones (busy GPUs that report nothing are
    unknown), so the measured value is biased low: judge the estimate
    ``mfu_estimated / allocation`` instead (exact when unallocated GPUs do nothing and the
    GPUs' peaks are alike; basis ``estimated``), or nothing."""
    if w.mfu_allocated is not None and (w.coverage is None or w.coverage >= min_coverage):
        return float(w.mfu_allocated), "reported"
    if use_estimate and w.mfu_estimated is not None and w.allocation:
        return min(1.0, float(w.mfu_estimated) / w.allocation), "estimated"
    return None, "reported"


def memory_bound(w: MfuWindow) -> bool:
    """Memory-bound work (DESIGN.md §8): ``regime == "memory"``, or the decode phase.
    Such work is judged on MBU, not MFU."""
    return w.regime == "memory" or w.phase == "decode"


def coverage_observed(w: MfuWindow) -> dict[str, Any]:
    """Coverage fields for an event's ``observed`` (only those the window carries)."""
    out: dict[str, Any] = {}
    if w.coverage is not None:
        out["coverage"] = _r(w.coverage)
    if w.mfu_estimated is not None:
        out["mfu_estimated"] = _r(w.mfu_estimated)
    return out


class Evaluator:
    """Base: which windows a rule looks at and how its state is stored."""

    state_type: ClassVar[type] = Episode

    def __init__(self, rule: Any, config: RulesConfig):
        self.rule = rule
        self.config = config

    def applies(self, w: MfuWindow) -> bool:
        return self.rule.enabled and self.rule.scope == w.scope and self.rule.match.matches(w)

    def load(self, data: dict[str, Any] | None) -> Any:
        return _from_dict(self.state_type, data)

    @staticmethod
    def dump(state: Any) -> dict[str, Any]:
        return asdict(state)

    def evaluate(self, w: MfuWindow, state: Any, subject: str) -> list[Emission]:
        raise NotImplementedError

    def evaluate_in(
        self, w: MfuWindow, state: Any, subject: str, open_incidents: frozenset[str]
    ) -> list[Emission]:
        """:meth:`evaluate`, knowing which other rules have an open incident on this
        subject (``open_incidents``: rule ids), for a kind that defers to causes other
        rules name. The engine calls this; most kinds ignore it."""
        return self.evaluate(w, state, subject)


# --- condition-style rules on the shared episode machine ----------------------------


@dataclass
class Assessment:
    """What a rule makes of one window: does the open (``bad``) or clear (``good``)
    condition hold, the number it tracks (``value``, averaged over the streak), what was
    observed/expected, for the event, and the ``basis`` of the judgement."""

    bad: bool
    good: bool
    value: float | None
    metric: str
    observed: dict[str, Any]
    expected: dict[str, Any]
    basis: Basis = "reported"


class EpisodeEvaluator(Evaluator):
    def assess(self, w: MfuWindow, state: Any) -> Assessment | None:
        raise NotImplementedError

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        """Decisions fixed when an incident opens (kept in state for the resolution)."""
        return {}

    def event_name(self, state: Episode) -> str:
        return str(state.facts.get("event") or self.rule.event)

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        """One line for humans; ``mean`` and ``n``: the streak's mean value and length."""
        raise NotImplementedError

    def evaluate(self, w: MfuWindow, state: Episode, subject: str) -> list[Emission]:
        a = self.assess(w, state)
        if a is None:
            return []
        r = self.rule
        transition = state.step(
            w.window_start,
            w.window_end,
            a.bad,
            a.good,
            a.value,
            for_windows=r.for_windows,
            clear_windows=r.clear_windows,
            cooldown_s=r.cooldown_s,
            rule_id=r.id,
            subject=subject,
        )
        if transition is None:
            return []
        mean, n = state.streak_mean, state.streak
        observed = {**a.observed, f"{a.metric}_mean": _r(mean)}
        if transition == "open":
            state.facts = {**self.facts(w, a), "basis": a.basis}
            windows = {"start": state.opened_at, "end": w.window_end, "count": n}
        else:
            windows = {
                "start": state.streak_start,
                "end": w.window_end,
                "count": n,
                "incident_start": state.opened_at,
                "incident_duration_s": _r(w.window_end - (state.opened_at or w.window_start), 3),
            }
        emission = Emission(
            event=self.event_name(state),
            status=transition,
            summary=self.summary(a, mean or 0.0, n, transition == "open", state.facts),
            observed=observed,
            expected=a.expected,
            windows=windows,
            incident=state.incident,
            severity=state.facts.get("severity"),
            details={
                k: v for k, v in state.facts.items() if k not in ("event", "severity", "basis")
            },
            # An incident keeps the basis it opened on, so open and resolved agree.
            basis=state.facts.get("basis", a.basis),
        )
        state.reset_streak()
        return [emission]
