"""What the stream stage decides for one input partition, as plain values (no Faust, no
Kafka, no asyncio).

:class:`NodePartition` (one partition of ``mfu.telemetry.v1`` + ``mfu.flops.v1``) and
:class:`RollupPartition` (one partition of ``mfu.partials.v1``) own their window stage
(:mod:`streams.stages`), the in-order acks of the messages they took
(:mod:`streams.frontier`) and their bookkeeping (rewinds, idleness, step and persist
numbers). They are fed messages and clock readings and answer with decisions; the Faust
adapter (:mod:`streams.app`) only carries those out:

- :meth:`take` accounts one message: decode, key and clock-skew checks, duplicates,
  lateness, the per-message guard. What the message makes to send (dead letters, late
  copies) joins the partition's *pending step*; an offset jump becomes a seek request.
- :meth:`cut` (after a run of messages) and :meth:`NodePartition.tick` (on the idle
  timer) close the windows that are due and return the pending work as one
  :class:`Step`: records to send, the records for the sinks, the markers for the roll-up
  and the ``Progress`` snapshot to persist, in the order they must be carried out.
- :meth:`done` is told once a step is carried out (everything sent is acknowledged, the
  sinks wrote, the snapshot is in the changelog); :meth:`release` then returns the ack
  handles of the messages now durable, in offset order.

Steps are numbered per partition and carried out strictly in that order, so a partition
may take its next messages (and cut its next step) while the previous step's writes are
in flight: the snapshot is taken when the step is cut, and a message waits for the step
(``step``), the snapshot (``seq``) and the window (``until``) it needs (frontier rules).
Every rule of docs/delivery.md can so be tested with plain values.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from mfu.config import WindowSettings
from mfu.events import FlopReport, GpuSample, MfuWindow, Rejected
from streams.aggregate import Marker, Partial
from streams.deadletter import dead_letter_value
from streams.decode import MAX_VALUE_BYTES, decode
from streams.fastdecode import to_model
from streams.frontier import InOrderAcks
from streams.stages import NEG_INF, Closed, NodeStage, Progress, RollupStage

log = logging.getLogger("mfu.streams")

# Longest wait, seconds, for a sought-back offset before accepting a hole in a partition.
REWIND_PATIENCE_S = 10.0


class InputMessage(Protocol):
    """The attributes of a consumed Kafka message the pure side reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names the decisions address (defaults: the contracts' names)."""

    telemetry: str
    flops: str
    partials: str
    deadletter: str
    late: str
    outputs: dict[str, str]  # record scope (node, workload, fleet) -> topic

    def output(self, scope: str) -> str:
        return self.outputs[scope]


@dataclass(slots=True)
class Send:
    """One record to produce. ``partition`` None: the topic's partitioner (by key)."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None


@dataclass
class Step:
    """One partition's decided work, carried out in this order:

    1. ``sends`` (dead letters, late copies, output records, partials): all queued, then
       acknowledged together with 3;
    2. ``records`` written to the sinks (blocking until durable there);
    3. ``markers`` (after the partials and the sinks write: a marker tells the roll-up
       that this partition's windows before ``closed_through`` are complete);
    4. ``progress`` (JSON of the partition's ``Progress``, taken when the step was cut)
       written to the changelog and acknowledged;
    5. :meth:`NodePartition.done` with this step, then the releasable acks.
    """

    kind: str  # "node" | "rollup"
    partition: int
    number: int  # steps of a partition are carried out in increasing number
    sends: list[Send] = field(default_factory=list)
    records: list[MfuWindow] = field(default_factory=list)
    markers: list[Send] = field(default_factory=list)
    progress: bytes | None = None
    snapshot: int = 0  # number of the snapshot in ``progress`` (0: none)
    closed_through: float = NEG_INF  # the stage's closed_through when cut
    window_end: float | None = None  # end of the last window closed (metrics)


@dataclass
class Tally:
    """Counts since the adapter last read them (health metrics, logs)."""

    events_in: Counter[str] = field(default_factory=Counter)  # topic -> valid events
    late_in: Counter[str] = field(default_factory=Counter)  # topic -> late events
    dead_reasons: list[str] = field(default_factory=list)
    duplicates: int = 0
    redelivered: int = 0
    gaps: int = 0


class _Partition:
    """Bookkeeping shared by the two stages' partitions."""

    kind = ""

    def __init__(self, partition: int, stage: Any, topics: Topics, n_partials: int,
                 now: float) -> None:
        self.partition = partition
        self.stage = stage
        self.topics = topics
        self.n_partials = n_partials  # partitions of the partials topic (markers go to all)
        # Taken messages in offset order and what each waits for (streams.frontier).
        self.acks = InOrderAcks()
        # Restored progress is durable: windows it says are closed were written.
        self.durable_closed_through: float = stage.progress.closed_through
        self.steps_cut = 0
        self.steps_done = 0
        self.snapshots_cut = 0
        self.snapshots_done = 0
        self.last_input_wall = now
        # topic -> (offset sought back to, monotonic time): messages after it are dropped
        # until it arrives again (see in_sequence).
        self.rewind: dict[str, tuple[int, float]] = {}
        self.seeks: list[tuple[str, int]] = []  # (topic, offset) for the adapter to seek
        self.tally = Tally()
        self._sends: list[Send] = []
        self._records: list[MfuWindow] = []
        self._closed: list[Closed] = []
        self._marker = False
        self._snapshot = False

    # --- frontier ---------------------------------------------------------------

    def _needs(self, *, sends: bool, persist: bool) -> tuple[int | None, int | None]:
        """(seq, step) for a message taken now: the snapshot / step it waits for."""
        return (self.snapshots_cut if persist else None,
                self.steps_cut if sends else None)

    def release(self) -> list[Any]:
        """Ack handles of the messages now durable, in offset order (ack exactly these)."""
        return self.acks.release(self.durable_closed_through, self.snapshots_done,
                                 self.steps_done)

    def done(self, step: Step) -> None:
        """``step`` was carried out (steps of a partition are carried out in order)."""
        if step.number != self.steps_done + 1:
            raise ValueError(f"{self.kind}[{self.partition}] step {step.number} done after "
                             f"{self.steps_done}: steps are carried out in order")
        self.steps_done = step.number
        if step.snapshot:
            self.snapshots_done = step.snapshot
            self.durable_closed_through = step.closed_through

    # --- input order --------------------------------------------------------------

    def in_sequence(self, message: InputMessage, now: float) -> bool:
        """False for a message to drop because messages before it were skipped.

        The pipeline's topics have contiguous offsets (idempotent producers, no
        transactions), so an offset more than one past the last one taken means Faust
        dropped messages in between (seen after a restart: its queues are cleared when
        the flow resumes, while a partition with nothing committed is not sought back).
        Ask to seek back to the first missing offset (:attr:`seeks`) and drop what
        arrives after it until it comes again; a real hole (compaction, aborted
        transactions, retention) is accepted after ``REWIND_PATIENCE_S``.
        """
        topic, offset = message.topic, message.offset
        pending = self.rewind.get(topic)
        if pending is not None:
            expected, since = pending
            if offset < expected:
                return True  # a redelivery: is_new drops it
            if offset == expected:
                del self.rewind[topic]
                return True
            if now - since < REWIND_PATIENCE_S:
                return False
            del self.rewind[topic]
            log.error("offsets missing from a partition; going on without them",
                      extra={"topic": topic, "partition": message.partition,
                             "missing_from": expected, "offset": offset})
            return True
        last = self.acks.taken.get(topic)
        if last is None or offset <= last + 1:
            return True
        self.tally.gaps += 1
        log.warning("input offsets jumped: seeking back to the first skipped message",
                    extra={"topic": topic, "partition": message.partition,
                           "after": last, "offset": offset})
        self.rewind[topic] = (last + 1, now)
        self.seeks.append((topic, last + 1))
        return False

    def _admit(self, message: InputMessage, now: float) -> bool:
        """In sequence and not taken before (a redelivery: its first delivery, at the same
        offset, carries the ack; counting it twice would inflate duplicates or lateness)."""
        if not self.in_sequence(message, now):
            return False
        if not self.acks.is_new(message.topic, message.offset):
            self.tally.redelivered += 1
            return False
        self.last_input_wall = now
        return True

    # --- sends --------------------------------------------------------------------

    def _dead_letters(self, rejected: list[Rejected], message: InputMessage) -> None:
        size = len(message.value) if message.value is not None else 0
        for i, r in enumerate(rejected):
            value = dead_letter_value(
                source_topic=message.topic, partition=message.partition,
                offset=message.offset, reason=r.reason, original=r.original,
                original_bytes=size if len(rejected) == 1 else None, index=i)
            self._sends.append(Send(self.topics.deadletter, message.key, value))
            self.tally.dead_reasons.append(r.reason)
            log.info("dead-lettered event", extra={"topic": message.topic,
                                                   "reason": r.reason[:200]})

    def _guard_failed(self, message: InputMessage, exc: Exception, what: str) -> None:
        value = message.value
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        self._dead_letters([Rejected(original=text, reason=f"{what}: "
                                     f"{type(exc).__name__}: {exc}"[:2000])], message)

    def _close(self, starts: list[float]) -> None:
        for ws in starts:
            c = self.stage.close(ws)
            self._closed.append(c)
            for rec in c.records:
                self._sends.append(Send(self.topics.output(rec.scope), rec.key.encode(),
                                        rec.to_json()))
                self._records.append(rec)
            for p in c.partials:
                self._sends.append(Send(self.topics.partials, f"{p.scope}:{p.key}".encode(),
                                        p.model_dump_json(by_alias=True).encode()))
        if starts:
            self._snapshot = True

    def _marker_sends(self, idle: bool) -> list[Send]:
        closed_through = self.stage.progress.closed_through
        m = Marker(src=self.partition,
                   closed_through=closed_through if closed_through > NEG_INF else 0.0,
                   idle=idle)
        value = m.model_dump_json(by_alias=True).encode()
        return [Send(self.topics.partials, None, value, partition=i)
                for i in range(self.n_partials)]

    def _cut(self, idle: bool = False) -> Step | None:
        """The pending work as the next step (None: nothing to do)."""
        if not (self._sends or self._marker or self._snapshot):
            return None
        self.steps_cut += 1
        step = Step(self.kind, self.partition, self.steps_cut, sends=self._sends,
                    records=self._records, closed_through=self.stage.progress.closed_through)
        if self._closed:
            step.window_end = self._closed[-1].window_start + self.stage.size_s
        if self._marker:
            step.markers = self._marker_sends(idle)
        if self._snapshot:
            self.snapshots_cut += 1
            step.snapshot = self.snapshots_cut
            step.progress = self.stage.snapshot().model_dump_json().encode()
        self._sends, self._records, self._closed = [], [], []
        self._marker = self._snapshot = False
        return step


class NodePartition(_Partition):
    """One input partition of the node stage (telemetry + FLOP reports of its nodes)."""

    kind = "node"

    def __init__(self, partition: int, windows: WindowSettings, fleet: str, topics: Topics,
                 n_partials: int, restored: Progress | None = None, *, now: float = 0.0,
                 max_value_bytes: int = MAX_VALUE_BYTES) -> None:
        stage = NodeStage(windows, fleet, restored, inputs=(topics.telemetry, topics.flops),
                          now=now)
        super().__init__(partition, stage, topics, n_partials, now)
        self.windows = windows
        self.max_value_bytes = max_value_bytes
        self.idle = False  # told the roll-up this partition holds nothing back
        self.idle_announced_at = 0.0

    def take(self, message: InputMessage, handle: Any, now: float, horizon: float) -> bool:
        """Account one input message (``handle``: what its ack is, opaque); False if it was
        dropped (out of sequence or a redelivery: nothing to ack)."""
        if not self._admit(message, now):
            return False
        topic, offset = message.topic, message.offset
        until: float | None = None
        late: list[Any] = []
        failed = False
        try:
            is_sample = topic == self.topics.telemetry
            # Checked msgspec Structs (or pydantic events where the fast path fell
            # back): both have the models' attributes; to_model() before serializing.
            good, bad = decode(message.value, GpuSample if is_sample else FlopReport,
                               max_bytes=self.max_value_bytes, structs=True)
            if good:
                good = _check_key(message, good, bad)
            if good:
                good = self._check_skew(good, bad, is_sample, horizon)
            if good:
                until, late, duplicates = self.stage.add_many(
                    good, topic=topic, offset=offset, now=now, is_sample=is_sample)
                self.tally.duplicates += duplicates
            self.tally.events_in[topic] += len(good)
        except Exception as exc:  # one bad message must not stop the partition
            log.exception("input message failed; dead-lettering it",
                          extra={"topic": topic, "partition": message.partition,
                                 "offset": offset})
            self._guard_failed(message, exc, "processing failed")
            bad, until, late, failed = [], None, [], True
        if bad:
            self._dead_letters(bad, message)
        for ev in late:
            self._sends.append(Send(self.topics.late, message.key, to_model(ev).to_json()))
        if late:
            self.tally.late_in[topic] += len(late)
        sends = bool(bad) or bool(late) or failed
        if self.idle:
            # Resuming: tell the roll-up to wait for this partition again (with this
            # run's step, before the other partitions close windows it now has data for).
            self.idle = False
            self._marker = True
            sends = True
        # Late counts wait in Progress for the key's next record.
        seq, step = self._needs(sends=sends, persist=bool(late))
        if late:
            self._snapshot = True
        self.acks.add(topic, offset, handle, until=until, seq=seq, step=step)
        return True

    def _check_skew(self, good: list[Any], bad: list[Rejected], is_sample: bool,
                    horizon: float) -> list[Any]:
        """Refuse events further ahead of this worker's clock than ``max_future_skew_s``."""
        if is_sample:
            ahead = [ev for ev in good if ev.ts > horizon]
        else:
            ahead = [ev for ev in good if ev.end > horizon]
        if not ahead:
            return good
        for ev in ahead:
            end = ev.ts if is_sample else ev.end
            bad.append(Rejected(
                original=to_model(ev).model_dump_json(by_alias=True),
                reason=f"clock skew: event time {end:.3f} is more than "
                f"{self.windows.max_future_skew_s:.0f} s ahead of this worker's "
                f"clock; check NTP on node {ev.node}"))
        if is_sample:
            return [ev for ev in good if ev.ts <= horizon]
        return [ev for ev in good if ev.end <= horizon]

    def cut(self, now: float, backlog: frozenset[str]) -> Step | None:
        """After a run of messages: close the windows that became due and return the
        pending work (None: nothing to carry out)."""
        self._close_due(now, backlog)
        if self.acks.waiting_for_persist(self.snapshots_cut):
            self._snapshot = True
        return self._cut()

    def _close_due(self, now: float, backlog: frozenset[str]) -> None:
        due = self.stage.due(now, backlog)
        if due:
            self._close(due)
            self._marker = True
            self.idle = False  # the marker says so: this partition holds windows back

    def tick(self, now: float, backlog: frozenset[str]) -> Step | None:
        """On the idle timer: close windows of inputs that went quiet; once the whole
        partition is quiet for ``idle_timeout_s`` (and nothing waits at the broker), close
        all its windows and tell the roll-up it is idle."""
        timeout = self.windows.idle_timeout_s
        if now - self.last_input_wall < timeout or backlog:
            # One input may have gone quiet while the other still flows.
            self._close_due(now, backlog)
            return self._cut()
        starts = self.stage.flush_idle()
        if starts:
            log.info("closing windows of an idle partition", extra={
                "partition": self.partition, "windows": len(starts),
                "silent_s": round(now - self.last_input_wall, 1),
                "offsets": dict(self.stage.max_offsets)})
            self._close(starts)
            self._marker = True
            self.idle_announced_at, self.idle = now, True
            return self._cut(idle=True)
        if self.acks.waiting_for_persist(self.snapshots_cut):
            self._snapshot = True
        if now - self.idle_announced_at >= timeout:
            self._marker = True
            self.idle_announced_at, self.idle = now, True
        return self._cut(idle=self.idle)


class RollupPartition(_Partition):
    """One partition of the partials topic: workload and fleet windows."""

    kind = "rollup"

    def __init__(self, partition: int, windows: WindowSettings, fleet: str, topics: Topics,
                 n_sources: int, restored: Progress | None = None, *,
                 now: float = 0.0) -> None:
        stage = RollupStage(windows, n_sources, fleet, restored)
        super().__init__(partition, stage, topics, n_sources, now)

    def take(self, message: InputMessage, handle: Any, now: float) -> bool:
        """Account one partial or marker; False if dropped (nothing to ack)."""
        if not self._admit(message, now):
            return False
        until: float | None = None
        persist = sends = False
        try:
            value = message.value
            marker: Marker | None = None
            if value is None:
                raise ValueError("a partial without a value")
            if b"mfu_marker/1" in value:  # a marker (or a partial naming one: parsed)
                obj = json.loads(value)
                if isinstance(obj, dict) and obj.get("schema") == "mfu_marker/1":
                    marker = Marker.model_validate(obj)
                else:
                    partial = Partial.model_validate(obj)
            else:  # nearly every message: parsed and validated in one pass
                partial = Partial.model_validate_json(value)
            if marker is not None:
                self.stage.add_marker(marker, topic=message.topic, offset=message.offset)
                persist = True  # the source's progress lives in Progress
            else:
                d = self.stage.add_partial(partial, topic=message.topic, offset=message.offset)
                until = d.max_window
                persist = d.late
        except Exception as exc:  # (ValueError, ValidationError, TypeError, ...)
            self._guard_failed(message, exc, "bad partial")
            sends = True
        seq, step = self._needs(sends=sends, persist=persist)
        self.acks.add(message.topic, message.offset, handle, until=until, seq=seq, step=step)
        return True

    def cut(self) -> Step | None:
        """After a run of partials: close the windows every source has closed. A marker's
        effect is persisted with the next close, or at once when nothing is open (so that
        the commit does not wait for the next window)."""
        due = self.stage.due()
        if due:
            self._close(due)
        elif self.acks.waiting_for_persist(self.snapshots_cut) and not self.stage.open:
            self._snapshot = True
        return self._cut()


def _check_key(message: InputMessage, good: list[Any], bad: list[Rejected]) -> list[Any]:
    """Inputs are keyed by node so that one partition holds all of a node's data; an
    event under another node's key would make a second, partial record of its node (and
    count twice in the fleet): refuse it."""
    key = message.key
    if key is None:
        for ev in good:
            original = to_model(ev).model_dump_json(by_alias=True)
            bad.append(Rejected(original=original, reason=(
                f"missing key: inputs must be keyed by node (key {ev.node!r}), so "
                "that one partition holds all of a node's events")))
        return []
    key_text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    kept = []
    for ev in good:
        if ev.node == key_text:
            kept.append(ev)
        else:
            original = to_model(ev).model_dump_json(by_alias=True)
            bad.append(Rejected(original=original, reason=(
                f"key/node mismatch: Kafka key {key_text!r} but event node "
                f"{ev.node!r}; key each message by the node of its events")))
    return kept
