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
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import TP
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mfu import peaks, topics
from mfu.config import InfluxSettings, KafkaSettings, WindowSettings
from mfu.events import DeadLetter, MfuWindow
from mfuio.faustapp import make_app, static_instance_id
from mfuio.health import PipelineMetrics, StreamsHealthSettings, faust_lag, serve
from mfuio.influx import InfluxConfigError
from mfuio.sinks import SinkContext, SinkSettings, build_sinks
from streams import delivery
from streams.decode import MAX_VALUE_BYTES
from streams.partition import (
    NodePartition,
    RollupPartition,
    Step,
    Tally,
    Topics,
    _Partition,
)
from streams.stages import Progress

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
    take_max: int = Field(2000, ge=1, description="input messages handled as one run, at most")
    take_within_s: float = Field(0.02, gt=0, description="longest wait to fill a run")
    # No linger by default: the records of one close (node records, partials, markers)
    # are all queued before the stage awaits their acks, so they share produce requests
    # anyway, while every close waits for its acks and for the Progress write: a 5 ms
    # linger cost 5 ms per wait and the worker ~30 % (docs/runtime.md).
    producer_linger_s: float = Field(0.0, ge=0, le=1.0,
                                     description="producer linger, seconds")
    # A partition takes its next messages while its last steps (records, sinks write,
    # markers, Progress) are still being written; more unfinished steps than this make
    # the stage wait. 0: carry out each step before taking more (no pipelining).
    steps_in_flight: int = Field(2, ge=0, le=16, description="unfinished steps per "
                                 "partition before intake waits")
    # Faust's 1.5 s made a partition fetched while busy wait up to 1.5 s for its next
    # fetch (streams.delivery.set_fetch_max_wait); a quiet worker sends ~10 empty
    # fetches/s at 0.1 s.
    fetch_max_wait_s: float = Field(0.1, gt=0, le=30.0, description="longest time the "
                                    "broker holds a fetch with no data, seconds")
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
        message = self.message
        if message.refcount:  # someone else holds it too: Faust's refcounted ack
            return message.ack(self.consumer)
        # Nothing holds a reference to a directly delivered message, so Message.ack would
        # only decref to 0 and call consumer.ack (three lock round trips instead of one;
        # ~4 % of the worker on the ack path).
        return self.consumer.ack(message)


class _Chain:
    """The steps of one partition being carried out, oldest first: each waits for the one
    before it, so a partition's sends, sink writes and persists happen in step order."""

    __slots__ = ("part", "tasks")

    def __init__(self, part: _Partition) -> None:
        self.part = part
        self.tasks: deque[asyncio.Task[None]] = deque()

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.tasks.clear()


class Runtime:
    """The Faust adapter: feeds consumed messages and clock readings to the pure
    per-partition stages (:mod:`streams.partition`) and carries out the steps they return
    (produce, sinks write, persist, ack), per partition in order."""

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
        self.topics = Topics(
            telemetry=settings.telemetry_topic, flops=settings.flops_topic,
            partials=settings.partials_topic, deadletter=settings.deadletter_topic,
            late=settings.late_topic,
            outputs={"node": settings.node_topic, "workload": settings.workload_topic,
                     "fleet": settings.fleet_topic})
        self.node: dict[int, NodePartition] = {}
        self.rollup: dict[int, RollupPartition] = {}
        self.chains: dict[tuple[str, int], _Chain] = {}
        # Fetches of input messages waiting for the node stage (direct delivery).
        self.batches: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=8)
        self.partial_batches: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=8)
        # The node-stage agent and the idle timer share per-partition state: one at a time.
        self.node_lock = asyncio.Lock()
        self.counters: dict[str, int] = {"events": 0, "deadletter": 0, "late": 0,
                                         "duplicates": 0, "records": 0, "stale": 0,
                                         "redelivered": 0, "gaps": 0}
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.inputs = app.topic(settings.telemetry_topic, settings.flops_topic, **raw)
        self.partials = app.topic(settings.partials_topic, partitions=kafka.partitions, **raw)
        self.progress = app.Table("progress", partitions=kafka.partitions, key_type=bytes,
                                  value_type=bytes)

    # --- state ----------------------------------------------------------------

    def _restore(self, kind: str, partition: int) -> Progress | None:
        raw = self.progress.get(f"{kind}:{partition}".encode())
        if raw is None:
            return None
        return Progress.model_validate_json(raw)

    def node_part(self, partition: int) -> NodePartition:
        part = self.node.get(partition)
        if part is None:
            part = self.node[partition] = NodePartition(
                partition, self.windows, self.s.fleet, self.topics, self.n_partitions,
                self._restore("node", partition), now=time.monotonic(),
                max_value_bytes=self.s.max_value_bytes)
        return part

    def rollup_part(self, partition: int) -> RollupPartition:
        part = self.rollup.get(partition)
        if part is None:
            part = self.rollup[partition] = RollupPartition(
                partition, self.windows, self.s.fleet, self.topics, self.n_partitions,
                self._restore("rollup", partition), now=time.monotonic())
        return part

    def forget(self, tps: Any) -> None:
        """Drop state of partitions this worker no longer owns (the next owner replays):
        steps still being carried out stop (whatever they sent is at-least-once output;
        their snapshot is not written, their acks are not given)."""
        for tp in tps:
            if tp.topic == self.s.telemetry_topic:
                kind, states = "node", self.node
            elif tp.topic == self.s.partials_topic:
                kind, states = "rollup", self.rollup  # type: ignore[assignment]
            else:
                continue
            states.pop(tp.partition, None)
            chain = self.chains.pop((kind, tp.partition), None)
            if chain is not None:
                chain.cancel()
            self.metrics.forget_partition(kind, tp.partition)

    def _current(self, part: _Partition) -> bool:
        """False once a rebalance replaced or dropped ``part`` (its next owner replays)."""
        states = self.node if part.kind == "node" else self.rollup
        return states.get(part.partition) is part

    def _release(self, part: _Partition) -> None:
        """Hand Faust the acks of the messages now durable, in offset order."""
        if not self._current(part):
            return  # revoked: the new owner replays from the committed offset
        for handle in part.release():
            handle.ack()

    def _count(self, part: _Partition) -> None:
        """Move what ``part`` counted into the health metrics and counters."""
        t = part.tally
        for topic, n in t.events_in.items():
            self.metrics.event_in(topic, n)
            self.counters["events"] += n
        for topic, n in t.late_in.items():
            self.metrics.late(topic, n)
            self.counters["late"] += n
        for reason in t.dead_reasons:
            self.metrics.dead_letter(reason)
        self.counters["deadletter"] += len(t.dead_reasons)
        self.counters["duplicates"] += t.duplicates
        self.counters["redelivered"] += t.redelivered
        self.counters["gaps"] += t.gaps
        part.tally = Tally()

    async def _seek(self, part: _Partition) -> None:
        """Carry out the seeks ``part`` asked for (offset jumps, see in_sequence)."""
        while part.seeks:
            topic, offset = part.seeks.pop(0)
            await self.app.consumer.seek(TP(topic, part.partition), offset)

    # --- carrying out steps ------------------------------------------------------

    async def _submit(self, part: _Partition, step: Step | None) -> None:
        """Start carrying out ``step`` after the partition's earlier steps; wait while more
        than ``steps_in_flight`` of its steps are unfinished (the back-pressure: a sink
        that is down stops intake here instead of piling up closed windows)."""
        if step is None:
            return
        key = (part.kind, part.partition)
        chain = self.chains.get(key)
        if chain is None or chain.part is not part:
            if chain is not None:
                chain.cancel()
            chain = self.chains[key] = _Chain(part)
        tasks = chain.tasks
        while tasks and tasks[0].done():
            tasks.popleft()
        prev = tasks[-1] if tasks else None
        tasks.append(asyncio.ensure_future(_fail_stop(self._carry_out(part, step, prev))))
        if len(tasks) > self.s.steps_in_flight:
            started = time.monotonic()
            while len(tasks) > self.s.steps_in_flight:
                await asyncio.wait([tasks[0]])
                if tasks and tasks[0].done():
                    tasks.popleft()
            if part.kind == "node":
                self._pause_idle_clocks(time.monotonic() - started)

    async def _carry_out(self, part: _Partition, step: Step,
                         prev: asyncio.Task[None] | None) -> None:
        """Do what ``step`` says, in its order (see :class:`streams.partition.Step`)."""
        if prev is not None and not prev.done():
            await asyncio.wait([prev])  # a failed step ends the process (_fail_stop)
        if not self._current(part):
            return
        futs = []
        # Straight to the producer: the values are bytes already, and Faust's Topic.send
        # (a FutureMessage, callbacks and sensors per record) cost ~10 % of the worker.
        produce = self.app.producer.send
        for send in step.sends:
            futs.append(await produce(send.topic, send.key, send.value, send.partition,
                                      None, None))
        for rec in step.records:
            self.metrics.event_out(self.topics.output(rec.scope))
        self.counters["records"] += len(step.records)
        if step.records and self.sinks.sinks:
            futs += await self._write_sinks(step.records)
        for send in step.markers:
            futs.append(await produce(send.topic, send.key, send.value, send.partition,
                                      None, None))
        if futs:
            await asyncio.gather(*futs)
        if step.progress is not None:
            if not self._current(part):
                return  # a stale snapshot must never overwrite the new owner's
            key = f"{part.kind}:{part.partition}".encode()
            self.progress.data[key] = step.progress
            await self.progress.send_changelog(part.partition, key, step.progress)
        if not self._current(part):
            return
        part.done(step)
        if step.window_end is not None:
            self.metrics.window_closed(part.kind, part.partition, step.window_end)
        self._release(part)

    async def _write_sinks(self, records: list[MfuWindow]) -> list[Any]:
        """Write closed windows to the sinks (blocking, retrying writes off the event
        loop: an outage delays, never drops); records a sink refused as bad (InfluxDB
        400/422/413, Kafka too large) are dead-lettered with the reason."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, self.sinks.write, records)
        except InfluxConfigError as exc:  # wrong token/bucket: no retry can help
            # A clear stop: say what to fix and end the worker (its input stays
            # un-acked and is replayed once the setting is fixed).
            self.metrics.fail(str(exc))
            log.critical("influxdb refused the configuration; stopping: %s", exc)
            await self.app.crash(exc)
            # The crash stops the worker (exit status 1); this step, and the partition's
            # later ones chained behind it, wait here until shutdown cancels them, so
            # nothing after the failed write is acked.
            await asyncio.get_running_loop().create_future()
        self.metrics.influx_rejected(sum(r.sink == "influxdb" for r in result.rejected))
        futs = []
        for rej in result.rejected:
            rec = rej.record
            dead = DeadLetter(event_id=f"{rej.sink}:{rec.event_id}", reason=rej.reason,
                              source_topic=self.topics.output(rec.scope),
                              original=rec.to_json().decode(), ts=time.time())
            futs.append(await self.app.producer.send(self.s.deadletter_topic, rec.key.encode(),
                                                     dead.to_json(), None, None, None))
            self.metrics.dead_letter(rej.reason)
        return futs

    def _pause_idle_clocks(self, seconds: float) -> None:
        """While the node stage waits on its outputs (Kafka acks, an InfluxDB write that
        retries through an outage) it consumes nothing: that time must not count as its
        inputs being quiet, or the idle timeout would close windows half-filled."""
        for part in self.node.values():
            part.last_input_wall += seconds
            last_seen = part.stage.last_seen
            for topic in last_seen:
                last_seen[topic] += seconds

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
        """The roll-up's loop over delivered partials and markers."""
        await self._runs(self.partial_batches, self.on_partials)

    async def run_inputs(self) -> None:
        """The node stage's loop over delivered fetches."""
        await self._runs(self.batches, self.on_run)

    async def _runs(self, queue: asyncio.Queue[list[Any]],
                    handle: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Hand what is queued to ``handle`` as one run (up to ``take_max`` messages),
        like the agent's ``take_events`` runs."""
        while True:
            messages = await queue.get()
            while not queue.empty() and len(messages) < self.s.take_max:
                messages = messages + queue.get_nowait()
            consumer = self.app.consumer
            await _fail_stop(handle([_Delivered(m, consumer) for m in messages]))

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
        close the windows that became due in the partitions they touched, start carrying
        out each touched partition's step and release the acks that became durable."""
        async with self.node_lock:
            # Wait for recovery (the progress table) before creating any state.
            while self.app.rebalancing:
                await asyncio.sleep(0.05)
            now = time.monotonic()
            horizon = time.time() + self.windows.max_future_skew_s
            # Every message is taken before the first await (a rebalance meanwhile drops
            # these states, and _current() then stops their steps and acks).
            parts = []
            for partition, taken in self._by_partition(events, self.s.telemetry_topic).items():
                part = self.node_part(partition)
                for event in taken:
                    part.take(event.message, event, now, horizon)
                parts.append((partition, part))
            for partition, part in parts:
                self._count(part)
                await self._seek(part)
                step = part.cut(now, await self._backlog(partition, part))
                await self._submit(part, step)
                self._release(part)

    async def on_partials(self, events: list[Any]) -> None:
        """Account a run of partials and markers, then close the roll-up windows every
        source has closed, per touched partition."""
        while self.app.rebalancing:  # state only after recovery: see on_run
            await asyncio.sleep(0.05)
        now = time.monotonic()
        parts = []
        for partition, taken in self._by_partition(events, self.s.partials_topic).items():
            part = self.rollup_part(partition)
            for event in taken:
                part.take(event.message, event, now)
            parts.append(part)
        for part in parts:  # all taken first: see on_run
            self._count(part)
            await self._seek(part)
            await self._submit(part, part.cut())
            self._release(part)

    async def on_partial(self, event: Any) -> None:
        """One partial or marker from the roll-up agent's stream (``direct_delivery``
        off)."""
        await self.on_partials([event])

    def _by_partition(self, events: list[Any], topic: str) -> dict[int, list[Any]]:
        """A run's events per partition of ``topic``, in offset order, without those
        fetched under an earlier consumer generation or of partitions revoked meanwhile
        (their new owner replays them)."""
        owned = self._owned_partitions(topic)
        out: dict[int, list[Any]] = {}
        for event in events:
            message = event.message
            if self._stale(message):
                self.counters["stale"] += 1
                continue
            partition = message.partition
            if owned is not None and partition not in owned:
                continue
            taken = out.get(partition)
            if taken is None:
                taken = out[partition] = []
            taken.append(event)
        return out

    def _owned_partitions(self, topic: str) -> set[int] | None:
        """Partitions of ``topic`` this worker owns now (None when unknown)."""
        try:
            return {tp.partition for tp in self.app.assignor.assigned_actives()
                    if tp.topic == topic}
        except Exception:
            return None

    async def on_tick(self) -> None:
        """Close windows of partitions whose input stopped; tell the roll-up they are idle."""
        if self.node_lock.locked():
            return  # the agent is busy (maybe blocked on an output): not idle
        async with self.node_lock:
            await self._on_tick()

    async def _backlog(self, partition: int, part: NodePartition) -> frozenset[str]:
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
            taken = part.acks.taken.get(topic)
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
            part = self.node_part(tp.partition)
            step = part.tick(now, await self._backlog(tp.partition, part))
            await self._submit(part, step)
            self._release(part)


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
    delivery.set_fetch_max_wait(app, settings.fetch_max_wait_s)

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
