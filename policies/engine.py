"""The rules engine (pure): one MFU window and the entity's state in, the new state and
the CloudEvents to emit out. No Kafka, no Faust: the adapter (``policies/app.py``) only
moves windows, state dicts and events between the engine and Kafka.

Entity state is a JSON-compatible dict, keyed by subject (``<scope>/<key>``) in the
adapter's table::

    {"last_window_start": 1700000010.0, "rules": {"<rule-id>": {...rule state...}}}

``last_window_start`` makes processing idempotent: a window whose start is not after the
last processed one (a redelivery after a crash, a duplicate record) changes nothing and
emits nothing. Windows of one key therefore have to arrive in order, which the streams
stage guarantees (one partition per key, windows emitted in close order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mfu.events import CloudEvent, MfuWindow
from policies.cloudevents import make_event, subject_of
from policies.evaluation import Emission, Evaluator
from policies.kinds import kinds
from policies.rules import RulesConfig

DEFAULT_SOURCE = "/mfu/policies"


@dataclass
class Result:
    """Outcome of one window: the state to store and the events to emit, in order. A
    ``duplicate`` window changed nothing: there is nothing to store or emit."""

    state: dict[str, Any]
    events: list[CloudEvent] = field(default_factory=list)
    duplicate: bool = False


class Engine:
    """Evaluates a :class:`RulesConfig` window by window."""

    def __init__(self, config: RulesConfig, source: str = DEFAULT_SOURCE):
        self.config = config
        self.source = source
        self.by_scope: dict[str, list[Evaluator]] = {"workload": [], "node": [], "fleet": []}
        for rule in config.rules:
            if rule.enabled:
                self.by_scope[rule.scope].append(kinds()[rule.kind].evaluator(rule, config))

    def process(self, w: MfuWindow, state: dict[str, Any] | None) -> Result:
        """Advance every rule of ``w.scope`` by window ``w``.

        ``state`` is the subject's stored state (None for a new entity); it is not
        modified. Rules no longer configured lose their state; rules that do not match
        this window keep theirs untouched.
        """
        old_rules: dict[str, Any] = (state or {}).get("rules", {})
        last = (state or {}).get("last_window_start")
        if last is not None and w.window_start <= last:
            return Result(state=state or {}, duplicate=True)
        subject = subject_of(w.scope, w.key)
        rules: dict[str, Any] = {}
        events: list[CloudEvent] = []
        # Rules with an open incident on this subject (rules earlier in this window count
        # with their new state), for kinds that defer to causes other rules name.
        open_now = {rid for rid, st in old_rules.items() if isinstance(st, dict) and st.get("open")}
        for ev in self.by_scope[w.scope]:
            rule_id = ev.rule.id
            if not ev.applies(w):
                if rule_id in old_rules:
                    rules[rule_id] = old_rules[rule_id]
                continue
            rule_state = ev.load(old_rules.get(rule_id))
            others = frozenset(open_now - {rule_id})
            for emission in ev.evaluate_in(w, rule_state, subject, others):
                events.append(self._event(ev, w, subject, emission))
            rules[rule_id] = dumped = ev.dump(rule_state)
            if dumped.get("open"):
                open_now.add(rule_id)
            else:
                open_now.discard(rule_id)
        return Result(state={"last_window_start": w.window_start, "rules": rules}, events=events)

    def _event(self, ev: Evaluator, w: MfuWindow, subject: str, e: Emission) -> CloudEvent:
        rule = ev.rule
        data: dict[str, Any] = {
            "rule": rule.id,
            "rule_kind": rule.kind,
            "status": e.status,
            "severity": e.severity or rule.severity,
            "incident": e.incident,
            "scope": w.scope,
            "key": w.key,
            "summary": e.summary,
            "observed": e.observed,
            "expected": e.expected,
            "windows": e.windows,
            # What the judgement rests on: measured model FLOPs, or a counter estimate.
            "basis": e.basis,
        }
        if rule.description:
            data["description"] = rule.description
        for k, v in e.details.items():
            data.setdefault(k, v)
        return make_event(
            name=e.event,
            subject=subject,
            rule_id=rule.id,
            source=self.source,
            window_start=e.window_start if e.window_start is not None else w.window_start,
            window_end=e.window_end if e.window_end is not None else w.window_end,
            status=e.status,
            data=data,
        )
