"""The Faust application of the stream stage: event-time windowed MFU per node, workload
and fleet, to Kafka and InfluxDB.

Two agents in one app (scale out by running more workers; partitions spread over them):

- ``node-stage`` reads ``mfu.telemetry.v1`` + ``mfu.flops.v1`` (co-partitioned by node),
  closes node windows itself (:class:`streams.stages.NodeStage`), publishes node records
  and re-keys per-workload/fleet partials to ``mfu.partials.v1``, followed by a marker to
  every partials partition saying which windows this source partition has closed.
- ``rollup`` reads the partials and closes a workload/fleet window when every source
  partition has closed it (:class:`streams.stages.RollupStage`).

Messages reach both without Faust's per-message machinery (:mod:`streams.delivery`): the
consumer hands each fetch to :meth:`Runtime.deliver`, which queues the input messages
for :meth:`Runtime.run_inputs` (one run per queued fetch or more) and the partials for
:meth:`Runtime.run_partials`; the two agents only subscribe the topics
(``MFU_STREAMS_DIRECT_DELIVERY=false`` restores Faust's delivery to them).

Delivery: input events are consumed without auto-ack and handed back to Faust strictly
in offset order (:mod:`streams.frontier`), each only after every window it touches is
closed, its records are acknowledged by Kafka and InfluxDB, and the partition's small
``Progress`` is in a changelogged table. Faust commits the end of the acked run, so
offsets never pass data whose results are not durable; after a crash or rebalance the
new owner replays from the committed offset and skips pieces of windows the progress
says are closed. Each input message is guarded: whatever goes wrong with one message
dead-letters it (with a reason) and it is acked in order like any other. Faust's own
windowed tables are not used: they expire on wall-clock time and drop late events.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mfu import peaks, topics
from mfu.config import InfluxSettings, KafkaSettings, WindowSettings
from mfu.events import DeadLetter, FlopReport, GpuSample, MfuWindow, Rejected
from mfuio.faustapp import make_app, static_instance_id
from mfuio.health import PipelineMetrics, StreamsHealthSettings, faust_lag, serve
from mfuio.influx import InfluxConfigError
from mfuio.sinks import SinkContext, SinkSettings, build_sinks
from streams import delivery
from streams.aggregate import Marker, Partial
from streams.deadletter import dead_letter_value
from streams.decode import MAX_VALUE_BYTES, decode
from streams.fastdecode import to_model
from streams.frontier import InOrderAcks
from streams.stages import NEG_INF, Closed, NodeStage, Progress, RollupStage

log = logging.getLogger("mfu.streams")


class StreamSettings(BaseSettings):
    """Stream-stage settings (env prefix ``MFU_STREAMS_``); topics default to DESIGN.md."""

    model_config = SettingsConfigDict(env_prefix="MFU_STREAMS_", extra="ignore", frozen=True)

    app_id: str = "mfu-streams"
    fleet: str = Field("default", description="fleet name: key of mfu.fleet.v1 records")
    telemetry_topic: str = topics.TELEMETRY
    flops_topic: str = topics.FLOPS
    workload_topic: str = topics.WORKLOAD
    node_topic: str = topics.NODE
    fleet_topic: str = topics.FLEET
    deadletter_topic: str = topics.DEADLETTER
    late_topic: str = topics.LATE
    partials_topic: str = topics.PARTIALS
    tick_s: float = Field(1.0, gt=0, description="how often idle partitions are checked")
    take_max: int = Field(500, ge=1, description="input events handled as one run, at most")
    take_within_s: float = Field(0.02, gt=0, description="longest wait to fill a run")
    # No linger by default: the records of one close (node records, partials, markers)
    # are all queued before the stage awaits their acks, so they share produce requests
    # anyway, while every close waits for its acks and for the Progress write: a 5 ms
    # linger cost 5 ms per wait and the worker ~30 % (docs/runtime.md).
    producer_linger_s: float = Field(0.0, ge=0, le=1.0,
                                     description="producer linger, seconds")
    direct_delivery: bool = Field(True, description="deliver fetched messages with one "
                                  "plain await each (streams.delivery)")
    max_value_bytes: int = Field(MAX_VALUE_BYTES, ge=1024,
                                 description="input values above this size are dead-lettered")
    # A restarted worker takes its partitions back at once with static membership (the
    # broker hands the dead member's assignment to the new process with the same
    # group.instance.id); a worker that never returns is noticed after the session
    # timeout. See mfuio.faustapp.static_instance_id.
    static_membership: bool = Field(True, description="use a stable group.instance.id")
    instance_id: str | None = Field(None, description="group.instance.id (default: "
                                    "<host>-<n>, n the first free slot on this host)")
    session_timeout_s: float = Field(10.0, gt=0, description="consumer session timeout")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="consumer heartbeat")
    log_level: str = "WARNING"

    def all_topics(self) -> list[str]:
        return [self.telemetry_topic, self.flops_topic, self.workload_topic, self.node_topic,
                self.fleet_topic, self.deadletter_topic, self.late_topic, self.partials_topic]


class _Delivered:
    """An input message taken straight from the consumer (no Faust Event): what the
    frontier holds and acks once the message is durable."""

    __slots__ = ("consumer", "message")

    def __init__(self, message: Any, consumer: Any) -> None:
        self.message = message
        self.consumer = consumer

    def ack(self) -> bool:
        return self.message.ack(self.consumer)


@dataclass
class _PartitionState:
    stage: Any  # NodeStage | RollupStage
    # Taken messages in offset order and what each waits for (streams.frontier).
    acks: InOrderAcks = field(default_factory=InOrderAcks)
    durable_closed_through: float = NEG_INF  # as of the last completed persist
    persists: int = 0  # completed persists of this state's Progress
    last_input_wall: float = field(default_factory=time.monotonic)
    idle_announced_at: float = 0.0
    idle: bool = False  # told the roll-up this partition holds nothing back
    # topic -> (offset sought back to, monotonic time): messages after it are dropped
    # until it arrives again (see Runtime._in_sequence).
    rewind: dict[str, tuple[int, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Restored progress is durable: windows it says are closed were written.
        self.durable_closed_through = self.stage.progress.closed_through


# Longest wait, seconds, for a sought-back offset before accepting a hole in a partition.
REWIND_PATIENCE_S = 10.0


class Runtime:
    """Holds per-partition stage state and performs the stages' effects via Faust."""

    def __init__(self, app: faust.App, settings: StreamSettings, kafka: KafkaSettings,
                 windows: WindowSettings, influx: InfluxSettings) -> None:
        self.app = app
        self.s = settings
        self.windows = windows
        self.n_partitions = kafka.partitions
        # The stage's own health (mfuio.health): served by build_app's serve_health task.
        self.metrics = PipelineMetrics("streams")
        self.health = StreamsHealthSettings()
        # Where closed windows go besides the output topics (MFU_STREAMS_SINKS, mfuio.sinks).
        self.sinks = build_sinks(SinkSettings(), SinkContext(
            influx=influx, kafka=kafka, metrics=self.metrics,
            metrics_port=self.health.metrics_port))
        for sink in self.sinks.sinks:
            writer = getattr(sink, "writer", None)
            if writer is not None:
                self.metrics.add_backlog_source(lambda w=writer: w.backlog_points)
        self.node: dict[int, _PartitionState] = {}
        # Fetches of input messages waiting for the node stage (direct delivery).
        self.batches: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=8)
        self.partial_batches: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=8)
        self.rollup: dict[int, _PartitionState] = {}
        # The node-stage agent and the idle timer share per-partition state: one at a time.
        self.node_lock = asyncio.Lock()
        self.counters: dict[str, int] = {"events": 0, "deadletter": 0, "late": 0,
                                         "duplicates": 0, "records": 0, "stale": 0,
                                         "redelivered": 0, "gaps": 0}
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.inputs = app.topic(settings.telemetry_topic, settings.flops_topic, **raw)
        self.partials = app.topic(settings.partials_topic, partitions=kafka.partitions, **raw)
        self.outputs = {
            "workload": app.topic(settings.workload_topic, **raw),
            "node": app.topic(settings.node_topic, **raw),
            "fleet": app.topic(settings.fleet_topic, **raw),
        }
        self.deadletter = app.topic(settings.deadletter_topic, **raw)
        self.late = app.topic(settings.late_topic, **raw)
        self.progress = app.Table("progress", partitions=kafka.partitions, key_type=bytes,
                                  value_type=bytes)

    # --- state ----------------------------------------------------------------

    def _restore(self, kind: str, partition: int) -> Progress | None:
        raw = self.progress.get(f"{kind}:{partition}".encode())
        if raw is None:
            return None
        return Progress.model_validate_json(raw)

    def node_state(self, partition: int) -> _PartitionState:
        st = self.node.get(partition)
        if st is None:
            stage = NodeStage(self.windows, self.s.fleet, self._restore("node", partition),
                              inputs=(self.s.telemetry_topic, self.s.flops_topic),
                              now=time.monotonic())
            st = self.node[partition] = _PartitionState(stage)
        return st

    def rollup_state(self, partition: int) -> _PartitionState:
        st = self.rollup.get(partition)
        if st is None:
            stage = RollupStage(self.windows, self.n_partitions, self.s.fleet,
                                self._restore("rollup", partition))
            st = self.rollup[partition] = _PartitionState(stage)
        return st

    def forget(self, tps: Any) -> None:
        """Drop state of partitions this worker no longer owns (the next owner replays)."""
        for tp in tps:
            if tp.topic == self.s.telemetry_topic:
                self.node.pop(tp.partition, None)
                self.metrics.forget_partition("node", tp.partition)
            elif tp.topic == self.s.partials_topic:
                self.rollup.pop(tp.partition, None)
                self.metrics.forget_partition("rollup", tp.partition)

    def _current(self, kind: str, partition: int, st: _PartitionState) -> bool:
        """False once a rebalance replaced or dropped ``st`` (its next owner replays)."""
        states = self.node if kind == "node" else self.rollup
        return states.get(partition) is st

    async def _persist(self, kind: str, partition: int, st: _PartitionState) -> bool:
        """Write the partition's Progress to the changelog and wait for the broker's ack.
        Returns False (nothing written) if ``st`` is no longer this partition's state: a
        stale snapshot must never overwrite the new owner's."""
        if not self._current(kind, partition, st):
            return False
        closed_through = st.stage.progress.closed_through
        key = f"{kind}:{partition}".encode()
        value = st.stage.snapshot().model_dump_json().encode()
        self.progress.data[key] = value
        await self.progress.send_changelog(partition, key, value)  # delivered
        st.persists += 1
        st.durable_closed_through = closed_through
        return True

    def _release(self, kind: str, partition: int, st: _PartitionState) -> None:
        """Hand Faust the acks of the messages now durable, in offset order."""
        if not self._current(kind, partition, st):
            return  # revoked: the new owner replays from the committed offset
        for event in st.acks.release(st.durable_closed_through, st.persists):
            event.ack()

    # --- effects ----------------------------------------------------------------

    async def _dead_letter(self, rejected: list[Rejected], message: Any) -> list[Any]:
        futs = []
        size = len(message.value) if message.value is not None else 0
        for i, r in enumerate(rejected):
            value = dead_letter_value(
                source_topic=message.topic, partition=message.partition,
                offset=message.offset, reason=r.reason, original=r.original,
                original_bytes=size if len(rejected) == 1 else None, index=i)
            futs.append(await self.deadletter.send(key=message.key, value=value))
            self.metrics.dead_letter(r.reason)
            log.info("dead-lettered event", extra={"topic": message.topic,
                                                   "reason": r.reason[:200]})
        self.counters["deadletter"] += len(rejected)
        return futs

    async def _publish(self, closed: list[Closed]) -> list[Any]:
        futs = []
        records: list[MfuWindow] = []
        for c in closed:
            for rec in c.records:
                futs.append(await self.outputs[rec.scope].send(key=rec.key.encode(),
                                                                value=rec.to_json()))
                self.metrics.event_out(getattr(self.s, f"{rec.scope}_topic"))
                records.append(rec)
            for p in c.partials:
                futs.append(await self.partials.send(
                    key=f"{p.scope}:{p.key}".encode(),
                    value=p.model_dump_json(by_alias=True).encode(),
                ))
        if records and self.sinks.sinks:
            # Blocking, retrying writes off the event loop: an outage delays, never drops.
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    None, self.sinks.write, records)
            except InfluxConfigError as exc:  # wrong token/bucket: no retry can help
                # A clear stop: say what to fix and end the worker (its input stays
                # un-acked and is replayed once the setting is fixed).
                self.metrics.fail(str(exc))
                log.critical("influxdb refused the configuration; stopping: %s", exc)
                await self.app.crash(exc)
                raise
            # Records a sink refused as bad (InfluxDB 400/422/413, Kafka too large):
            # dead-lettered with the reason, the rest is written.
            self.metrics.influx_rejected(sum(r.sink == "influxdb" for r in result.rejected))
            for rej in result.rejected:
                rec = rej.record
                dead = DeadLetter(event_id=f"{rej.sink}:{rec.event_id}", reason=rej.reason,
                                  source_topic=getattr(self.s, f"{rec.scope}_topic"),
                                  original=rec.to_json().decode(), ts=time.time())
                futs.append(await self.deadletter.send(key=rec.key.encode(),
                                                       value=dead.to_json()))
                self.metrics.dead_letter(rej.reason)
        self.counters["records"] += len(records)
        return futs

    async def _send_markers(self, src: int, stage: NodeStage, idle: bool) -> list[Any]:
        closed_through = stage.progress.closed_through
        m = Marker(src=src, closed_through=closed_through if closed_through > NEG_INF else 0.0,
                   idle=idle)
        value = m.model_dump_json(by_alias=True).encode()
        # n_partitions is the partials topic's actual count (checked at start-up).
        return [await self.partials.send(value=value, partition=i)
                for i in range(self.n_partitions)]

    def _pause_idle_clocks(self, seconds: float) -> None:
        """While the node stage waits on its outputs (Kafka acks, an InfluxDB write that
        retries through an outage) it consumes nothing: that time must not count as its
        inputs being quiet, or the idle timeout would close windows half-filled."""
        for st in self.node.values():
            st.last_input_wall += seconds
            last_seen = st.stage.last_seen
            for topic in last_seen:
                last_seen[topic] += seconds

    async def close_node_windows(self, partition: int, st: _PartitionState,
                                 starts: list[float], idle: bool = False) -> None:
        started = time.monotonic()
        stage: NodeStage = st.stage
        closed = [stage.close(ws) for ws in starts]
        futs = await self._publish(closed)
        futs += await self._send_markers(partition, stage, idle)
        await asyncio.gather(*futs)
        if await self._persist("node", partition, st):
            self._release("node", partition, st)
        self._pause_idle_clocks(time.monotonic() - started)
        if starts:
            self.metrics.window_closed("node", partition, starts[-1] + self.windows.size_s)

    async def close_rollup_windows(self, partition: int, st: _PartitionState,
                                   starts: list[float]) -> None:
        stage: RollupStage = st.stage
        closed = [stage.close(ws) for ws in starts]
        futs = await self._publish(closed)
        await asyncio.gather(*futs)
        if starts:
            self.metrics.window_closed("rollup", partition, starts[-1] + self.windows.size_s)
        if await self._persist("rollup", partition, st):
            self._release("rollup", partition, st)

    # --- input -------------------------------------------------------------------

    def _stale(self, message: Any) -> bool:
        """A message fetched under an earlier consumer generation (before a rebalance):
        whoever owns its partition now replays it from the committed offset, so it is
        neither processed nor acked here."""
        gen = getattr(message, "generation_id", None)
        return gen is not None and gen != self.app.consumer_generation_id

    async def deliver(self, messages: list[Any]) -> None:
        """Take one fetch's messages from the consumer (:mod:`streams.delivery`): input
        messages queued for :meth:`run_inputs`, partials for :meth:`run_partials`, so
        that fetching goes on while they are processed (the bounded queues are the
        back-pressure). Per partition, a fetch is in offset order."""
        partials_topic = self.s.partials_topic
        inputs = [m for m in messages if m.topic != partials_topic]
        if inputs:
            await self.batches.put(inputs)
        if len(inputs) < len(messages):
            await self.partial_batches.put([m for m in messages if m.topic == partials_topic])

    async def run_partials(self) -> None:
        """The roll-up's loop over delivered partials and markers, one at a time (as
        the agent's stream did, without its per-message Faust machinery)."""
        while True:
            messages = await self.partial_batches.get()
            consumer = self.app.consumer
            for m in messages:
                await _fail_stop(self.on_partial(_Delivered(m, consumer)))

    async def run_inputs(self) -> None:
        """The node stage's loop over delivered fetches: what is queued is handled as one
        run (up to ``take_max`` messages), like the agent's ``take_events`` runs."""
        while True:
            messages = await self.batches.get()
            while not self.batches.empty() and len(messages) < self.s.take_max:
                messages = messages + self.batches.get_nowait()
            consumer = self.app.consumer
            await _fail_stop(self.on_run([_Delivered(m, consumer) for m in messages]))

    async def on_inputs(self, events: list[Any]) -> None:
        """Account a run of input events from the agent's stream (``direct_delivery``
        off). Faust's ``take_events`` acks the events too once they are handled, so a
        reference is held on each message first: that ack does not make its offset
        committable; ours (:meth:`_release`, in offset order), later, does."""
        for event in events:
            event.message.incref()
        await self.on_run(events)

    async def on_run(self, events: list[Any]) -> None:
        """Account a run of input messages (each with ``.message`` and ``.ack()``), then
        close the windows that became due in the partitions they touched and release the
        acks that became durable."""
        async with self.node_lock:
            # Wait for recovery (the progress table) before creating any state.
            while self.app.rebalancing:
                await asyncio.sleep(0.05)
            now = time.monotonic()
            horizon = time.time() + self.windows.max_future_skew_s
            owned = self._owned_partitions(self.s.telemetry_topic)
            touched: dict[int, _PartitionState] = {}
            futs: list[Any] = []
            for event in events:
                message = event.message
                if self._stale(message):
                    self.counters["stale"] += 1
                    continue
                if owned is not None and message.partition not in owned:
                    continue  # revoked meanwhile: its new owner replays it
                st = await self._take_input(event, now, horizon, futs)
                if st is not None:
                    touched[message.partition] = st
            if futs:  # dead letters, late copies, markers: durable before any input is acked
                await asyncio.gather(*futs)
            for partition, st in touched.items():
                due = st.stage.due(now, await self._backlog(partition, st))
                if due:
                    await self.close_node_windows(partition, st, due)
                elif st.acks.waiting_for_persist(st.persists):
                    if await self._persist("node", partition, st):  # late counts
                        self._release("node", partition, st)
                else:
                    self._release("node", partition, st)

    def _owned_partitions(self, topic: str) -> set[int] | None:
        """Partitions of ``topic`` this worker owns now (None when unknown)."""
        try:
            return {tp.partition for tp in self.app.assignor.assigned_actives()
                    if tp.topic == topic}
        except Exception:
            return None

    def _check_key(self, message: Any, good: list[Any], bad: list[Rejected]) -> list[Any]:
        """Inputs are keyed by node so that one partition holds all of a node's data; an
        event under another node's key would make a second, partial record of its node
        (and count twice in the fleet): refuse it."""
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

    async def _take_input(self, event: Any, now: float, horizon: float,
                          futs: list[Any]) -> _PartitionState | None:
        message = event.message
        topic, offset = message.topic, message.offset
        st = self.node_state(message.partition)
        if not await self._in_sequence(st, message, now):
            return None
        if not st.acks.is_new(topic, offset):
            # Seen by this state already (fetched again): the first delivery carries
            # the ack; counting it twice would inflate duplicates or lateness.
            self.counters["redelivered"] += 1
            return None
        st.last_input_wall = now
        until: float | None = None
        needs_persist = False
        late: list[GpuSample | FlopReport] = []
        try:
            is_sample = topic == self.s.telemetry_topic
            # Checked msgspec Structs (or pydantic events where the fast path fell
            # back): both have the models' attributes; to_model() before serializing.
            good, bad = decode(message.value, GpuSample if is_sample else FlopReport,
                               max_bytes=self.s.max_value_bytes, structs=True)
            if good:
                good = self._check_key(message, good, bad)
            if good:
                ahead = [ev for ev in good
                         if (ev.ts if is_sample else ev.end) > horizon]  # type: ignore[union-attr]
                if ahead:
                    good = [ev for ev in good
                            if (ev.ts if is_sample else ev.end) <= horizon]  # type: ignore[union-attr]
                    for ev in ahead:
                        end = ev.ts if is_sample else ev.end  # type: ignore[union-attr]
                        bad.append(Rejected(
                            original=to_model(ev).model_dump_json(by_alias=True),
                            reason=f"clock skew: event time {end:.3f} is more than "
                            f"{self.windows.max_future_skew_s:.0f} s ahead of this worker's "
                            f"clock; check NTP on node {ev.node}"))
            if good:
                until, late, duplicates = st.stage.add_many(
                    good, topic=topic, offset=offset, now=now, is_sample=is_sample)
                self.counters["duplicates"] += duplicates
                # Late counts wait in Progress for the key's next record.
                needs_persist = bool(late)
            self.counters["events"] += len(good)
            self.metrics.event_in(message.topic, len(good))
        except Exception as exc:  # one bad message must not stop the partition
            log.exception("input message failed; dead-lettering it",
                          extra={"topic": topic, "partition": message.partition,
                                 "offset": offset})
            value = message.value
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            bad = [Rejected(original=text, reason=f"processing failed: "
                            f"{type(exc).__name__}: {exc}"[:2000])]
            until, late, needs_persist = None, [], False
        if bad:
            futs += await self._dead_letter(bad, message)
        for ev in late:
            futs.append(await self.late.send(key=message.key, value=to_model(ev).to_json()))
        self.counters["late"] += len(late)
        self.metrics.late(message.topic, len(late))
        st.acks.add(topic, offset, event, until=until,
                    seq=st.persists if needs_persist else None)
        if st.idle:
            # Resuming: tell the roll-up at once to wait for this partition again, before
            # the other partitions close windows this one now has data for.
            st.idle = False
            futs += await self._send_markers(message.partition, st.stage, idle=False)
        return st

    async def _in_sequence(self, st: _PartitionState, message: Any, now: float) -> bool:
        """False for a message to drop because messages before it were skipped.

        The pipeline's topics have contiguous offsets (idempotent producers, no
        transactions), so an offset more than one past the last one taken means Faust
        dropped messages in between (seen after a restart: its queues are cleared when
        the flow resumes, while a partition with nothing committed is not sought back).
        Seek back to the first missing offset and drop what arrives after it until it
        comes again; a real hole (compaction, aborted transactions, retention) is
        accepted after ``REWIND_PATIENCE_S``.
        """
        topic, offset = message.topic, message.offset
        pending = st.rewind.get(topic)
        if pending is not None:
            expected, since = pending
            if offset < expected:
                return True  # a redelivery: is_new drops it
            if offset == expected:
                del st.rewind[topic]
                return True
            if now - since < REWIND_PATIENCE_S:
                return False
            del st.rewind[topic]
            log.error("offsets missing from a partition; going on without them",
                      extra={"topic": topic, "partition": message.partition,
                             "missing_from": expected, "offset": offset})
            return True
        last = st.acks.taken.get(topic)
        if last is None or offset <= last + 1:
            return True
        self.counters["gaps"] += 1
        log.warning("input offsets jumped: seeking back to the first skipped message",
                    extra={"topic": topic, "partition": message.partition,
                           "after": last, "offset": offset})
        st.rewind[topic] = (last + 1, now)
        await self.app.consumer.seek(TP(topic, message.partition), last + 1)
        return False

    async def on_partial(self, event: Any) -> None:
        message = event.message
        while self.app.rebalancing:  # state only after recovery: see on_inputs
            await asyncio.sleep(0.05)
        if self._stale(message):
            self.counters["stale"] += 1
            return
        owned = self._owned_partitions(self.s.partials_topic)
        if owned is not None and message.partition not in owned:
            return  # revoked meanwhile: its new owner replays it
        partition = message.partition
        st = self.rollup_state(partition)
        if not await self._in_sequence(st, message, time.monotonic()):
            return
        if not st.acks.is_new(message.topic, message.offset):
            self.counters["redelivered"] += 1
            return
        st.last_input_wall = time.monotonic()
        until: float | None = None
        needs_persist = False
        try:
            obj = json.loads(message.value)
            if isinstance(obj, dict) and obj.get("schema") == "mfu_marker/1":
                st.stage.add_marker(Marker.model_validate(obj), topic=message.topic,
                                    offset=message.offset)
                needs_persist = True  # the source's progress lives in Progress
            else:
                d = st.stage.add_partial(Partial.model_validate(obj), topic=message.topic,
                                         offset=message.offset)
                until = d.max_window
                needs_persist = d.late
        except Exception as exc:  # (ValueError, ValidationError, TypeError, ...)
            value = message.value
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            futs = await self._dead_letter(
                [Rejected(original=text, reason=f"bad partial: {type(exc).__name__}: "
                          f"{exc}"[:2000])], message)
            await asyncio.gather(*futs)
        st.acks.add(message.topic, message.offset, event, until=until,
                    seq=st.persists if needs_persist else None)
        due = st.stage.due()
        if due:
            await self.close_rollup_windows(partition, st, due)
        elif st.acks.waiting_for_persist(st.persists) and not st.stage.open:
            # Nothing open to close soon: persist the marker's effect now, so that the
            # commit does not wait for the next window.
            if await self._persist("rollup", partition, st):
                self._release("rollup", partition, st)
        else:
            self._release("rollup", partition, st)

    async def on_tick(self) -> None:
        """Close windows of partitions whose input stopped; tell the roll-up they are idle."""
        if self.node_lock.locked():
            return  # the agent is busy (maybe blocked on an output): not idle
        async with self.node_lock:
            await self._on_tick()

    async def _backlog(self, partition: int, st: _PartitionState) -> frozenset[str]:
        """Input topics whose broker holds data of this partition not processed yet. Such
        an input is not idle however long it has been silent here: a busy or starved
        worker must not close windows early and turn their data late. Every message
        counts (dead-lettered ones too: a bad message must not look like a backlog)."""
        lagging = []
        for topic in (self.s.telemetry_topic, self.s.flops_topic):
            tp = TP(topic, partition)
            try:
                highwater = self.app.consumer.highwater(tp)
            except Exception:
                highwater = None
            # Unknown (no fetch answered since the assignment or a seek) counts as a
            # backlog: closing early loses data to lateness, waiting only delays.
            if highwater is None:
                lagging.append(topic)
                continue
            taken = st.acks.taken.get(topic)
            if taken is not None:
                if taken + 1 < highwater:
                    lagging.append(topic)
                continue
            # Nothing taken by this state yet: the consumer's position tells whether
            # anything is left to read (after a restart with nothing new: no backlog).
            try:
                position = await self.app.consumer.position(tp)
            except Exception:
                position = None
            if position is None or position < highwater:
                lagging.append(topic)
        return frozenset(lagging)

    async def _on_tick(self) -> None:
        if self.app.rebalancing:
            return  # the progress table may not be restored yet: create no state now
        now = time.monotonic()
        try:
            assigned = self.app.assignor.assigned_actives()
        except Exception:  # not assigned yet
            return
        for tp in assigned:
            if tp.topic != self.s.telemetry_topic:
                continue
            st = self.node_state(tp.partition)
            backlog = await self._backlog(tp.partition, st)
            if now - st.last_input_wall < self.windows.idle_timeout_s or backlog:
                # One input may have gone quiet while the other still flows.
                due = st.stage.due(now, backlog)
                if due:
                    await self.close_node_windows(tp.partition, st, due)
                continue
            starts = st.stage.flush_idle()
            if starts:
                log.info("closing windows of an idle partition", extra={
                    "partition": tp.partition, "windows": len(starts),
                    "silent_s": round(now - st.last_input_wall, 1),
                    "offsets": dict(st.stage.max_offsets)})
                await self.close_node_windows(tp.partition, st, starts, idle=True)
                st.idle_announced_at, st.idle = now, True
            else:
                if st.acks.waiting_for_persist(st.persists) and \
                        await self._persist("node", tp.partition, st):
                    self._release("node", tp.partition, st)
                if now - st.idle_announced_at >= self.windows.idle_timeout_s:
                    await asyncio.gather(*await self._send_markers(tp.partition, st.stage,
                                                                   True))
                    st.idle_announced_at, st.idle = now, True


def _drop_spinner_debug_level() -> None:
    """Faust's worker sets the root logger to DEBUG for its start-up spinner (a handler
    that only advances the spinner, stopped once the worker is up), so every debug call of
    aiokafka, Faust and mode on the hot path builds a record that no handler emits. Once
    started, lower the root logger's level to what its other handlers actually emit."""
    root = logging.getLogger()
    levels = [h.level for h in root.handlers if type(h).__name__ != "SpinnerHandler"]
    if levels and min(levels) > root.level:
        root.setLevel(min(levels))


def _tune_gc() -> None:
    """The worker allocates some 20 container objects per input event (decoded models,
    their lists and dicts, asyncio handles), nearly all freed by reference counting, so
    CPython's default gen-0 threshold (700) runs a cycle collection every few dozen
    events, and the older generations rescan the long-lived window state over and over.
    Once started: move what start-up built out of the collector's view (``gc.freeze``) and
    collect young objects every 100,000 net allocations instead (cycles are still freed;
    measured: ~12 % more events/s on ``mfu bench streams``)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


async def _fail_stop(step: Any) -> None:
    """Run one agent step; on an error outside the per-message guard, end the process.

    Faust would restart a crashed agent in place, reading on from where its fetcher
    stands: the messages of the failed step would then never be processed, the in-order
    commit would stall behind them and later windows would close without them. A new
    process replays from the committed offset instead (with static membership it gets
    its partitions back at once), so exactly the same windows come out.
    """
    try:
        await step
    except asyncio.CancelledError:
        raise
    except Exception:
        log.critical("stream stage step failed outside the per-message guard; exiting so "
                     "that a restart replays from the committed offsets", exc_info=True)
        logging.shutdown()
        os._exit(70)


def build_app(
    settings: StreamSettings | None = None,
    kafka: KafkaSettings | None = None,
    windows: WindowSettings | None = None,
    influx: InfluxSettings | None = None,
) -> tuple[faust.App, Runtime]:
    """The stream-stage Faust app and its runtime (settings default to the environment)."""
    settings = settings or StreamSettings()
    overrides = os.environ.get(peaks.OVERRIDES_ENV)
    if overrides:  # operators add GPUs the catalog lacks
        peaks.load_overrides(overrides)
    kafka = kafka or KafkaSettings()
    windows = windows or WindowSettings()
    influx = influx or InfluxSettings()
    # stream_wait_empty=False: events of open windows stay un-acked on purpose (they are
    # acked when their window is durably written), so Faust's default wait for every
    # in-flight event to be acked before a rebalance or shutdown would never finish. The
    # next owner replays them from the committed offset instead.
    membership: dict[str, Any] = {
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
    }
    if settings.static_membership:
        membership["consumer_group_instance_id"] = (
            settings.instance_id or static_instance_id(settings.app_id))
    app = make_app(settings.app_id, kafka, partitions=kafka.partitions,
                   stream_buffer_maxsize=32768, broker_commit_livelock_soft_timeout=600.0,
                   stream_wait_empty=False, producer_linger=settings.producer_linger_s,
                   **membership)
    rt = Runtime(app, settings, kafka, windows, influx)
    direct = settings.direct_delivery and delivery.install(
        app, batch_topics=(settings.telemetry_topic, settings.flops_topic,
                           settings.partials_topic),
        on_batch=rt.deliver, batch_max=settings.take_max)

    @app.agent(rt.inputs, name="node-stage")
    async def node_stage(stream: Any) -> None:
        # With direct delivery the consumer hands the input messages to rt.run_inputs
        # and this agent only subscribes the topics (its stream stays empty).
        # Otherwise: runs of events, not one at a time, so the per-message work is paid
        # once per run. take_events() acks each event it yields once the run is
        # handled; on_inputs holds a reference to each message first, so that ack only
        # drops Faust's and the offset is committed when our own ack (window written)
        # drops the last.
        async for events in stream.noack().take_events(settings.take_max,
                                                         within=settings.take_within_s):
            await _fail_stop(rt.on_inputs(events))

    if direct:
        @app.task
        async def node_inputs() -> None:
            await rt.run_inputs()

        @app.task
        async def rollup_inputs() -> None:
            await rt.run_partials()

    @app.agent(rt.partials, name="rollup")
    async def rollup(stream: Any) -> None:
        # With direct delivery the partials go to rt.run_partials (the stream is empty).
        async for event in stream.noack().events():
            await _fail_stop(rt.on_partial(event))

    @app.timer(interval=settings.tick_s)
    async def idle_tick() -> None:
        await rt.on_tick()

    @app.task
    async def quiet_root_logger() -> None:
        _drop_spinner_debug_level()
        _tune_gc()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        rt.forget(revoked)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        rt.forget(assigned)  # restored from the progress table on first use
        rt.metrics.rebalance()

    # --- the stage's own health (mfuio.health), on MFU_STREAMS_METRICS_PORT ---
    @app.task
    async def serve_health() -> None:
        inputs = (settings.telemetry_topic, settings.flops_topic, settings.partials_topic)
        rt.metrics.add_lag_source(lambda: faust_lag(app, inputs))
        serve(rt.metrics, rt.health)
        rt.metrics.set_ready()

    return app, rt
