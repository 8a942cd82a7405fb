"""In-order acknowledgement of input messages (pure: no Faust, no Kafka).

Why this exists: Faust commits, per partition, the end of the first run of consecutive
acked offsets, and refuses a gap at the head only when ``min(acked) - committed > 1``
(so an unacked message right after the committed offset is passed over) and not at all
while nothing is committed yet. Acked out of order (by window), it committed past
messages of still-open windows, and a SIGKILL then lost them.

So the stream stage never hands Faust an ack out of order. Each input partition keeps,
per topic, the messages it took in offset order with what must become durable before
each may be committed:

- ``until``: the last window the message counts in (events, duplicates): it must be
  closed *and* written, i.e. below the partition's durable ``closed_through``;
- ``seq``: the message changed state that is persisted with the partition's ``Progress``
  (late counts, roll-up markers): a persist numbered above ``seq`` must have completed;
- ``step``: the message made records of its own (dead letters, late copies, a resume
  marker) that go out with the partition's next step (:mod:`streams.partition`): a step
  numbered above ``step`` must have been carried out.

:meth:`InOrderAcks.release` pops the longest prefix of done messages and returns them;
the caller acks exactly those, in that order. Faust's acked list is then always one
consecutive run starting at the committed offset, so what it commits is our frontier:
never past the lowest message whose results are not durable, including the very first
commit, duplicates-only messages and messages without valid events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Entry:
    """One taken input message and what it waits for."""

    offset: int
    event: Any  # whatever the caller acks (a Faust event); opaque here
    until: float | None = None  # last window start it counts in (None: none)
    seq: int | None = None  # needs a persist numbered > seq (None: no state effect)
    step: int | None = None  # needs a step numbered > step carried out (None: no sends)


@dataclass
class InOrderAcks:
    """Per-topic queues of one partition's taken messages, in offset order."""

    queues: dict[str, deque[Entry]] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)  # topic -> highest offset taken
    released: dict[str, int] = field(default_factory=dict)  # topic -> highest released

    def is_new(self, topic: str, offset: int) -> bool:
        """False for a message at or below one already taken (a redelivery: its first
        delivery, at the same offset, carries the ack)."""
        return offset > self.taken.get(topic, -1)

    def add(self, topic: str, offset: int, event: Any, *, until: float | None = None,
            seq: int | None = None, step: int | None = None) -> None:
        """Take the next message of ``topic`` (offsets must increase)."""
        if not self.is_new(topic, offset):
            raise ValueError(f"{topic}[{offset}] taken out of order (after "
                             f"{self.taken[topic]}); drop redeliveries with is_new()")
        self.taken[topic] = offset
        self.queues.setdefault(topic, deque()).append(Entry(offset, event, until, seq, step))

    def release(self, durable_closed_through: float, durable_seq: int,
                durable_step: int | None = None) -> list[Any]:
        """Events whose results are durable, per topic the longest prefix in offset
        order. ``durable_closed_through``: every window starting before it is closed and
        written; ``durable_seq``: number of the last completed persist; ``durable_step``:
        number of the last step carried out (None: no message waits for one)."""
        out: list[Any] = []
        for topic, q in self.queues.items():
            while q:
                e = q[0]
                if e.until is not None and e.until >= durable_closed_through:
                    break
                if e.seq is not None and e.seq >= durable_seq:
                    break
                if e.step is not None and (durable_step is None or e.step >= durable_step):
                    break
                q.popleft()
                out.append(e.event)
                self.released[topic] = e.offset
        return out

    def waiting_for_persist(self, durable_seq: int) -> bool:
        """True if a message at the head of a queue waits only for a persist."""
        return any(q and q[0].seq is not None and q[0].seq >= durable_seq
                   for q in self.queues.values())

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def lowest_pending(self) -> dict[str, int]:
        """Topic -> offset of the first message not released (what commit waits on)."""
        return {t: q[0].offset for t, q in self.queues.items() if q}
