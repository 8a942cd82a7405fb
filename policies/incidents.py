"""The incident state machine shared by every condition-style rule (pure).

Per entity and rule, an :class:`Episode` counts consecutive windows:

    closed --(bad for for_windows, outside cooldown)--> open    emits "open"
    open   --(good for clear_windows)----------------> closed  emits "resolved"

A window for which a rule has no data is not passed in at all: it neither counts nor
breaks a streak. The cooldown is event time: no incident opens in a window starting before
``resolved_end + cooldown_s``. An incident's id is derived from rule, subject and the
first window of its evidence, so a replay names the same incident.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

Transition = Literal["open", "resolved"]


def incident_id(rule_id: str, subject: str, first_window_start: float) -> str:
    """Deterministic incident id: ``inc-`` + 16 hex digits."""
    raw = f"{rule_id}|{subject}|{first_window_start:.3f}".encode()
    return "inc-" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class Episode:
    """Counting state of one rule for one entity (JSON-serialisable)."""

    open: bool = False
    incident: str | None = None
    # The current streak: bad windows while closed, good windows while open.
    streak: int = 0
    streak_start: float | None = None
    streak_sum: float = 0.0
    opened_at: float | None = None  # window_start of the first window of the evidence
    resolved_end: float | None = None  # window_end of the window that resolved it
    # What the rule decided when it opened (e.g. a recommended MIG shape), reused on
    # resolution so both events agree.
    facts: dict[str, Any] = field(default_factory=dict)

    def step(
        self,
        window_start: float,
        window_end: float,
        bad: bool,
        good: bool,
        value: float | None,
        *,
        for_windows: int,
        clear_windows: int,
        cooldown_s: float,
        rule_id: str,
        subject: str,
    ) -> Transition | None:
        """Advance by one window. ``bad``: the open condition holds; ``good``: the clear
        condition holds (both may be False inside a hysteresis band); ``value``: the
        observed number averaged over the streak (``streak_mean``)."""
        counts = good if self.open else bad
        if not counts:
            self.streak, self.streak_start, self.streak_sum = 0, None, 0.0
            return None
        if self.streak == 0:
            self.streak_start, self.streak_sum = window_start, 0.0
        self.streak += 1
        self.streak_sum += value if value is not None else 0.0
        if not self.open:
            cooling = (
                self.resolved_end is not None and window_start < self.resolved_end + cooldown_s
            )
            if self.streak >= for_windows and not cooling:
                self.open = True
                self.opened_at = self.streak_start
                self.incident = incident_id(rule_id, subject, self.opened_at or window_start)
                return "open"
            return None
        if self.streak >= clear_windows:
            self.open = False
            self.resolved_end = window_end
            return "resolved"
        return None

    def reset_streak(self) -> None:
        """Forget the current streak (after a transition's data has been taken)."""
        self.streak, self.streak_start, self.streak_sum = 0, None, 0.0

    @property
    def streak_mean(self) -> float | None:
        return self.streak_sum / self.streak if self.streak else None
