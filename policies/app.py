"""Faust adapter of the rules stage: Kafka in, engine, Kafka out. No rule logic here.

One agent per input topic (``mfu.workload.v1``, ``mfu.node.v1``, ``mfu.fleet.v1``), each
with its own changelogged table ``state-<scope>`` keyed by subject. A table write goes to
the changelog partition of the record being processed, so a subject's state lives in the
partition its windows arrive on (the input is keyed by the scope key) and moves with it
on a rebalance. The state is written once per processed window (the engine's
``last_window_start`` marker must be durable for redeliveries to be recognised), never
per rule or per event.

Delivery is at least once: a decision's CloudEvent is sent before the state that records
it, so a crash in between re-sends the same event with the same deterministic ``id``
rather than losing it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterable
from typing import Any

import faust

from mfu.config import InfluxSettings, KafkaSettings
from mfu.events import CloudEvent, MfuWindow, parse_events
from mfuio.faustapp import make_app
from mfuio.health import PipelineMetrics, PoliciesHealthSettings, faust_lag, serve
from policies.annotations import policy_line
from policies.cloudevents import subject_of
from policies.reload import RulesSource
from policies.settings import PolicySettings

log = logging.getLogger("mfu.policies")


class Annotator:
    """Best-effort copy of policy events to InfluxDB (a few tries, then log and go on: an
    InfluxDB outage must not hold back decisions that autoscalers wait for)."""

    def __init__(self, influx: InfluxSettings, metrics: PipelineMetrics | None = None) -> None:
        from mfuio.influx import InfluxWriter

        observe = metrics.influx_observer if metrics is not None else None
        self.writer = InfluxWriter(influx, observe=observe)
        self.metrics = metrics
        self.failed = 0

    async def write(self, events: list[CloudEvent]) -> None:
        lines = [policy_line(ev) for ev in events]
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.writer.write_lines(lines, max_attempts=3)
            )
            if result.rejected and self.metrics is not None:
                self.metrics.influx_rejected(len(result.rejected))
        except Exception as exc:
            self.failed += len(lines)
            log.warning("event=annotation_failed points=%d error=%s", len(lines),
                        f"{type(exc).__name__}: {exc}".split("\n", 1)[0][:200])


def build_app(
    settings: PolicySettings, kafka: KafkaSettings, rules: RulesSource | None = None,
    influx: InfluxSettings | None = None, metrics: PipelineMetrics | None = None,
    health: PoliciesHealthSettings | None = None,
) -> faust.App:
    """The policies Faust app (not started). ``rules`` defaults to the settings' file;
    ``metrics`` (default: a new one, served when ``MFU_POLICIES_METRICS_PORT`` is set) is
    the stage's health (see mfuio.health), reachable as ``app.mfu_metrics``."""
    rules = rules or RulesSource(settings.rules_file, settings.source)
    influx = influx or InfluxSettings()
    metrics = metrics or PipelineMetrics("policies")
    health = health or PoliciesHealthSettings()
    annotator = (Annotator(influx, metrics)
                 if settings.influx_annotations and influx.enabled else None)
    partitions = settings.partitions or kafka.partitions
    app = make_app(settings.app_id, kafka, partitions=partitions, data_dir=settings.data_dir)
    out = app.topic(settings.policy_topic, partitions=partitions)
    declared = False

    async def ensure_output_topic() -> None:
        # Create the output topic (if missing) before the first send: brokers may not
        # auto-create topics.
        nonlocal declared
        if not declared:
            await out.maybe_declare()
            declared = True

    async def handle(scope: str, table: Any, value: bytes, topic: str) -> None:
        windows, rejected = parse_events(value, MfuWindow)
        metrics.event_in(topic, len(windows))
        for bad in rejected:
            metrics.dead_letter(bad.reason)
            log.warning("event=input_rejected scope=%s reason=%r", scope, bad.reason)
        for w in windows:
            if w.scope != scope:
                log.warning(
                    "event=wrong_scope topic_scope=%s record_scope=%s key=%s", scope, w.scope, w.key
                )
                continue
            subject = subject_of(w.scope, w.key)
            result = rules.engine.process(w, table.get(subject))
            metrics.rule_evaluated(scope)
            if result.duplicate:
                log.debug(
                    "event=duplicate_window subject=%s window_start=%s", subject, w.window_start
                )
                continue
            if result.events:
                await ensure_output_topic()
            for ev in result.events:
                # Wait for the broker's ack: the state below records the decision as made.
                await (await out.send(key=ev.subject.encode(), value=ev.to_json()))
                metrics.event_out(settings.policy_topic)
                metrics.policy_event(ev.type)
                log.info(
                    "event=policy_emitted type=%s subject=%s status=%s incident=%s",
                    ev.type,
                    ev.subject,
                    ev.data.get("status"),
                    ev.data.get("incident"),
                )
            if result.events and annotator is not None:
                await annotator.write(result.events)
            table[subject] = result.state

    for scope, topic_name in settings.input_topics().items():
        # Keys (subject strings) and values (state dicts) use the tables' default
        # JSON serialisation.
        table = app.Table(f"state-{scope}", default=None, partitions=partitions)

        async def agent(stream: AsyncIterable[bytes], scope: str = scope, table: Any = table,
                        topic: str = topic_name):
            async for value in stream:
                await handle(scope, table, value, topic)

        app.agent(app.topic(topic_name), name=f"policies-{scope}")(agent)

    @app.timer(interval=settings.reload_interval_s)
    async def reload_rules() -> None:
        rules.maybe_reload()

    @app.task
    async def reload_on_sighup() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, rules.maybe_reload, True)

    # --- the stage's own health (mfuio.health) ---
    @app.task
    async def serve_health() -> None:
        metrics.add_lag_source(lambda: faust_lag(app, settings.input_topics().values()))
        serve(metrics, health)
        metrics.set_ready()

    @app.on_partitions_assigned.connect
    async def count_rebalance(sender: Any, assigned: Any, **kwargs: Any) -> None:
        metrics.rebalance()

    app.mfu_metrics = metrics  # type: ignore[attr-defined]
    return app


def run_worker(settings: PolicySettings, kafka: KafkaSettings) -> None:
    """Run the stage in this process until SIGTERM/SIGINT (does not return)."""
    app = build_app(settings, kafka)
    faust.Worker(app, loglevel=settings.loglevel).execute_from_commandline()
