"""The Faust application of the stream stage: event-time windowed MFU per node, workload
and fleet, to Kafka and InfluxDB.

Two agents in one app (scale out by running more workers; partitions spread over them):

- ``node-stage`` reads ``mfu.telemetry.v1`` + ``mfu.flops.v1`` (co-partitioned by node),
  closes node windows itself (:class:`streams.stages.NodeStage`), publishes node records
  and re-keys per-workload/fleet partials to ``mfu.partials.v1``, followed by a marker to
  every partials partition saying which windows this source partition has closed.
- ``rollup`` reads the partials and closes a workload/fleet window when every source
  partition has closed it (:class:`streams.stages.RollupStage`).

Delivery: input events are consumed without auto-ack and acked only after every window
they touch is closed, its records are acknowledged by Kafka and InfluxDB, and the
partition's small ``Progress`` is in a changelogged table. Offsets thus never pass data
whose results are not durable; after a crash or rebalance the new owner replays from the
committed offset and skips pieces of windows the progress says are closed. Faust's own
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
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mfu import peaks, topics
from mfu.config import InfluxSettings, KafkaSettings, WindowSettings
from mfu.events import DeadLetter, FlopReport, GpuSample, MfuWindow, Rejected
from mfuio.health import PipelineMetrics, StreamsHealthSettings, faust_lag, serve
from mfuio.sinks import SinkContext, SinkSettings, build_sinks
from streams.aggregate import Marker, Partial
from streams.decode import decode
from streams.faustapp import make_app
from streams.influx import InfluxConfigError
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
    log_level: str = "WARNING"

    def all_topics(self) -> list[str]:
        return [self.telemetry_topic, self.flops_topic, self.workload_topic, self.node_topic,
                self.fleet_topic, self.deadletter_topic, self.late_topic, self.partials_topic]


@dataclass
class _PartitionState:
    stage: Any  # NodeStage | RollupStage
    pending: list[tuple[float, Any]] = field(default_factory=list)  # (max window, event)
    last_input_wall: float = field(default_factory=time.monotonic)
    idle_announced_at: float = 0.0
    idle: bool = False  # told the roll-up this partition holds nothing back
    # topic -> [first, last] offset this state has processed (to spot re-deliveries)
    consumed: dict[str, list[int]] = field(default_factory=dict)

    def redelivered(self, message: Any) -> bool:
        """True if this state already holds ``message``. After a rebalance Faust seeks to
        the committed offset once recovery is done, and may deliver again what it fetched
        before: counting it twice would inflate ``duplicates`` (or, past a close, make
        its pieces late)."""
        offset = message.offset
        seen = self.consumed.get(message.topic)
        if seen is None:
            self.consumed[message.topic] = [offset, offset]
            return False
        if seen[0] <= offset <= seen[1]:
            return True
        seen[0], seen[1] = min(seen[0], offset), max(seen[1], offset)
        return False

    def hold(self, event: Any) -> None:
        """Keep a re-delivered event un-acked until every window now open has closed (its
        first delivery, same offset, is acked no earlier)."""
        self.pending.append((max(self.stage.open, default=NEG_INF), event))


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
        self.rollup: dict[int, _PartitionState] = {}
        # The node-stage agent and the idle timer share per-partition state: one at a time.
        self.node_lock = asyncio.Lock()
        self.counters: dict[str, int] = {"events": 0, "deadletter": 0, "late": 0,
                                         "duplicates": 0, "records": 0}
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

    async def _persist(self, kind: str, partition: int, st: _PartitionState) -> None:
        key = f"{kind}:{partition}".encode()
        value = st.stage.snapshot().model_dump_json().encode()
        self.progress.data[key] = value
        await self.progress.send_changelog(partition, key, value)

    @staticmethod
    def _ack_through(st: _PartitionState, ws: float) -> None:
        keep = []
        for max_ws, event in st.pending:
            if max_ws <= ws:
                event.ack()
            else:
                keep.append((max_ws, event))
        st.pending = keep

    # --- effects ----------------------------------------------------------------

    async def _dead_letter(self, rejected: list[Rejected], message: Any) -> list[Any]:
        futs = []
        for r in rejected:
            rec = DeadLetter(
                event_id=f"{message.topic}:{message.partition}:{message.offset}",
                source_topic=message.topic, reason=r.reason, original=r.original,
                ts=time.time(), partition=message.partition, offset=message.offset,
            )
            futs.append(await self.deadletter.send(key=message.key, value=rec.to_json()))
            self.metrics.dead_letter(r.reason)
            log.info("dead-lettered event", extra={"topic": message.topic, "reason": r.reason})
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
        await self._persist("node", partition, st)
        self._ack_through(st, starts[-1] if starts else NEG_INF)
        self._pause_idle_clocks(time.monotonic() - started)
        if starts:
            self.metrics.window_closed("node", partition, starts[-1] + self.windows.size_s)

    async def close_rollup_windows(self, partition: int, st: _PartitionState,
                                   starts: list[float]) -> None:
        stage: RollupStage = st.stage
        closed = [stage.close(ws) for ws in starts]
        futs = await self._publish(closed)
        await asyncio.gather(*futs)
        await self._persist("rollup", partition, st)
        self._ack_through(st, starts[-1] if starts else NEG_INF)
        if starts:
            self.metrics.window_closed("rollup", partition, starts[-1] + self.windows.size_s)

    # --- input -------------------------------------------------------------------

    async def on_inputs(self, events: list[Any]) -> None:
        """Account a run of input events, then close the windows that became due in the
        partitions they touched.

        Every event is acked by :meth:`_ack_through` once its windows are durably
        written, never before. Faust's ``take_events`` acks the events too once they are
        handled, so a reference is held on each message first: that ack does not make its
        offset committable; ours, later, does.
        """
        for event in events:
            event.message.incref()
        async with self.node_lock:
            # Never drop an event here: one that is not processed is not acked either, so
            # the commit stalls behind it while later events close its windows without it.
            # Wait for recovery (the progress table), then process; a redelivery after
            # Faust's seek is recognised by offset (``redelivered``) and counted once.
            while self.app.rebalancing:
                await asyncio.sleep(0.05)
            now = time.monotonic()
            horizon = time.time() + self.windows.max_future_skew_s
            owned = self._owned_partitions(self.s.telemetry_topic)
            touched: dict[int, _PartitionState] = {}
            futs: list[Any] = []
            for event in events:
                if owned is not None and event.message.partition not in owned:
                    continue  # revoked meanwhile: its new owner replays it
                st = await self._take_input(event, now, horizon, futs)
                if st is not None:
                    touched[event.message.partition] = st
            if futs:  # dead letters, late copies, markers: durable before any input is acked
                await asyncio.gather(*futs)
            for partition, st in touched.items():
                due = st.stage.due(now, self._backlog(partition, st))
                if due:
                    await self.close_node_windows(partition, st, due)

    def _owned_partitions(self, topic: str) -> set[int] | None:
        """Partitions of ``topic`` this worker owns now (None when unknown)."""
        try:
            return {tp.partition for tp in self.app.assignor.assigned_actives()
                    if tp.topic == topic}
        except Exception:
            return None

    async def _take_input(self, event: Any, now: float, horizon: float,
                          futs: list[Any]) -> _PartitionState | None:
        message = event.message
        st = self.node_state(message.partition)
        if st.redelivered(message):
            st.hold(event)
            return None
        st.last_input_wall = now
        is_sample = message.topic == self.s.telemetry_topic
        good, bad = decode(message.value, GpuSample if is_sample else FlopReport)
        max_ws: float | None = None
        late: list[GpuSample | FlopReport] = []
        if good:
            ahead = [ev for ev in good
                     if (ev.ts if is_sample else ev.end) > horizon]  # type: ignore[union-attr]
            if ahead:
                good = [ev for ev in good if ev not in ahead]
                for ev in ahead:
                    end = ev.ts if is_sample else ev.end  # type: ignore[union-attr]
                    bad.append(Rejected(
                        original=ev.model_dump_json(by_alias=True),
                        reason=f"clock skew: event time {end:.3f} is more than "
                        f"{self.windows.max_future_skew_s:.0f} s ahead of this worker's "
                        f"clock; check NTP on node {ev.node}"))
            if good:
                max_ws, late, duplicates = st.stage.add_many(
                    good, topic=message.topic, offset=message.offset, now=now)
                self.counters["duplicates"] += duplicates
        self.counters["events"] += len(good)
        self.metrics.event_in(message.topic, len(good))
        if bad:
            futs += await self._dead_letter(bad, message)
        for ev in late:
            futs.append(await self.late.send(key=message.key, value=ev.to_json()))
        self.counters["late"] += len(late)
        self.metrics.late(message.topic, len(late))
        st.pending.append((NEG_INF if max_ws is None else max_ws, event))
        if st.idle:
            # Resuming: tell the roll-up at once to wait for this partition again, before
            # the other partitions close windows this one now has data for.
            st.idle = False
            futs += await self._send_markers(message.partition, st.stage, idle=False)
        return st

    async def on_partial(self, event: Any) -> None:
        message = event.message
        while self.app.rebalancing:  # never drop: see on_inputs
            await asyncio.sleep(0.05)
        owned = self._owned_partitions(self.s.partials_topic)
        if owned is not None and message.partition not in owned:
            return  # revoked meanwhile: its new owner replays it
        st = self.rollup_state(message.partition)
        if st.redelivered(message):
            st.hold(event)
            return
        st.last_input_wall = time.monotonic()
        try:
            obj = json.loads(message.value)
            if obj.get("schema") == "mfu_marker/1":
                st.stage.add_marker(Marker.model_validate(obj), topic=message.topic,
                                    offset=message.offset)
                st.pending.append((NEG_INF, event))
            else:
                d = st.stage.add_partial(Partial.model_validate(obj), topic=message.topic,
                                         offset=message.offset)
                st.pending.append((d.max_window if d.max_window is not None else NEG_INF,
                                   event))
        except (ValueError, ValidationError) as exc:
            futs = await self._dead_letter([Rejected(original=message.value.decode("utf-8", "replace"),
                                                     reason=f"bad partial: {exc}")], message)
            await asyncio.gather(*futs)
            event.ack()
            return
        due = st.stage.due()
        if due:
            await self.close_rollup_windows(message.partition, st, due)

    async def on_tick(self) -> None:
        """Close windows of partitions whose input stopped; tell the roll-up they are idle."""
        if self.node_lock.locked():
            return  # the agent is busy (maybe blocked on an output): not idle
        async with self.node_lock:
            await self._on_tick()

    def _backlog(self, partition: int, st: _PartitionState) -> frozenset[str]:
        """Input topics whose broker holds data of this partition not processed yet. Such
        an input is not idle however long it has been silent here: a busy or starved
        worker must not close windows early and turn their data late."""
        lagging = []
        for topic in (self.s.telemetry_topic, self.s.flops_topic):
            try:
                highwater = self.app.consumer.highwater(TP(topic, partition))
            except Exception:
                highwater = None
            # Unknown (no fetch answered since the assignment or a seek) counts as a
            # backlog: closing early loses data to lateness, waiting only delays.
            if highwater is None or st.stage.max_offsets.get(topic, -1) + 1 < highwater:
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
            backlog = self._backlog(tp.partition, st)
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
            elif now - st.idle_announced_at >= self.windows.idle_timeout_s:
                await asyncio.gather(*await self._send_markers(tp.partition, st.stage, True))
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
    app = make_app(settings.app_id, kafka, partitions=kafka.partitions,
                   stream_buffer_maxsize=32768, broker_commit_livelock_soft_timeout=600.0,
                   stream_wait_empty=False)
    rt = Runtime(app, settings, kafka, windows, influx)

    @app.agent(rt.inputs, name="node-stage")
    async def node_stage(stream: Any) -> None:
        # Runs of events, not one at a time: the per-message work is paid once per run.
        # take_events() acks each event it yields once the run is handled; on_inputs
        # holds a reference to each message first, so that ack only drops Faust's and
        # the offset is committed when our own ack (window written) drops the last.
        async for events in stream.noack().take_events(settings.take_max,
                                                         within=settings.take_within_s):
            await rt.on_inputs(events)

    @app.agent(rt.partials, name="rollup")
    async def rollup(stream: Any) -> None:
        async for event in stream.noack().events():
            await rt.on_partial(event)

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
