"""The pipeline's own health: Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` for the
stream and policies stages.

A runtime holds one :class:`PipelineMetrics` and calls its small API on the hot path
(one cached counter increment per call, no I/O); :class:`HealthServer` serves it over HTTP
in a daemon thread, off the event loop. Every metric carries the label ``stage``
(``streams`` or ``policies``) so one dashboard serves both. Values that are cheapest read
at scrape time (consumer lag, watermark delay, InfluxDB backlog) come from callbacks.

Settings: ``MFU_STREAMS_METRICS_PORT`` / ``MFU_POLICIES_METRICS_PORT`` (unset = no
server: several workers on one machine would otherwise fight over a port) and
``..._METRICS_HOST`` (default ``0.0.0.0``, so Prometheus in the cluster can scrape).

Endpoints: ``/metrics`` (Prometheus text format), ``/healthz`` (liveness: 200 unless
the stage hit a fatal error, e.g. InfluxDB refused its token), ``/readyz`` (readiness:
200 once the worker has started and while healthy; 503 with the reason otherwise). Both
answer JSON ``{"status": ..., "stage": ..., "checks": {...}}``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mfuio.httpserve import EndpointServer

log = logging.getLogger("mfu.health")

PREFIX = "mfu_pipeline"
# Seconds; InfluxDB writes of a window's points take milliseconds, an outage's retries
# show up in the top buckets.
INFLUX_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_REASONS = 32  # distinct dead-letter reason labels; more become "other"

LagSource = Callable[[], Iterable[tuple[str, int, float]]]  # (topic, partition, messages)


class HealthSettings(BaseSettings):
    """Where a stage serves its metrics (subclassed per stage for the env prefix)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="HTTP port of /metrics, /healthz, /readyz; "
        "unset = no server; 0 = any free port")
    metrics_host: str = Field("0.0.0.0", description="address the metrics server binds")


class StreamsHealthSettings(HealthSettings):
    """``MFU_STREAMS_METRICS_PORT``, ``MFU_STREAMS_METRICS_HOST``."""

    model_config = SettingsConfigDict(env_prefix="MFU_STREAMS_", extra="ignore", frozen=True)


class PoliciesHealthSettings(HealthSettings):
    """``MFU_POLICIES_METRICS_PORT``, ``MFU_POLICIES_METRICS_HOST``."""

    model_config = SettingsConfigDict(env_prefix="MFU_POLICIES_", extra="ignore", frozen=True)


_REASON_CHARS = re.compile(r"[^a-z0-9_/.]+")


def reason_class(reason: str) -> str:
    """A dead-letter reason as a low-cardinality label: its text before the first ``:``
    (``"not valid JSON: Expecting value..."`` -> ``not_valid_json``). The full reason
    stays in the dead letter; a label per distinct message would explode the series."""
    head = reason.split(":", 1)[0].strip().lower()
    return _REASON_CHARS.sub("_", head).strip("_")[:48] or "unknown"


class PipelineMetrics:
    """The metrics of one stage, in a private registry (two stages or tests in one
    process never collide). Thread-safe: the HTTP thread only reads."""

    def __init__(self, stage: str, *, clock: Callable[[], float] = time.time) -> None:
        self.stage = stage
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r, p = self.registry, PREFIX
        self._in = Counter(f"{p}_events_in", "input events accepted, by topic",
                           ["stage", "topic"], registry=r)
        self._out = Counter(f"{p}_events_out", "records/events sent, by topic",
                            ["stage", "topic"], registry=r)
        self._dead = Counter(f"{p}_dead_letters", "inputs dead-lettered (policies: rejected),"
                             " by reason class", ["stage", "reason"], registry=r)
        self._late = Counter(f"{p}_late_events", "events that arrived after their window "
                             "closed (copied to the late topic)", ["stage", "topic"], registry=r)
        self._rebalances = Counter(f"{p}_rebalances", "partition assignments received",
                                   ["stage"], registry=r)
        self._influx_s = Histogram(f"{p}_influx_write_seconds", "one InfluxDB write request, "
                                   "seconds (every attempt)", ["stage"], registry=r,
                                   buckets=INFLUX_BUCKETS_S)
        self._influx_req = Counter(f"{p}_influx_requests", "InfluxDB write requests by outcome "
                                   "(ok, bad_points, too_large, config, retry)",
                                   ["stage", "outcome"], registry=r)
        self._influx_points = Counter(f"{p}_influx_points", "points acknowledged by InfluxDB",
                                      ["stage"], registry=r)
        self._influx_rejected = Counter(f"{p}_influx_points_rejected", "points InfluxDB "
                                        "refused as bad (400/422/413)", ["stage"], registry=r)
        self._rules = Counter(f"{p}_rule_evaluations", "windows evaluated against the rules, by"
                              " scope", ["stage", "scope"], registry=r)
        self._policy_events = Counter(f"{p}_policy_events", "policy CloudEvents emitted, by "
                                      "type", ["stage", "type"], registry=r)
        self._children: dict[tuple[str, str], Any] = {}
        self._reasons: set[str] = set()
        self._lock = threading.Lock()
        self._watermarks: dict[tuple[str, int], float] = {}
        self._lag_sources: list[LagSource] = []
        self._backlogs: list[Callable[[], float]] = []
        self.started_at = clock()
        self.ready = False
        self.fatal: str | None = None
        self.registry.register(_Gauges(self))

    # --- hot path: one dict lookup + one increment each -------------------------------

    def _child(self, metric: Any, kind: str, label: str) -> Any:
        key = (kind, label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.stage, label)
        return child

    def event_in(self, topic: str, n: int = 1) -> None:
        if n:
            self._child(self._in, "in", topic).inc(n)

    def event_out(self, topic: str, n: int = 1) -> None:
        if n:
            self._child(self._out, "out", topic).inc(n)

    def dead_letter(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dead letters under the class of ``reason`` (see :func:`reason_class`)."""
        label = reason_class(reason)
        if label not in self._reasons:
            with self._lock:
                if len(self._reasons) >= MAX_REASONS and label not in self._reasons:
                    label = "other"
                else:
                    self._reasons.add(label)
        self._child(self._dead, "dead", label).inc(n)

    def late(self, topic: str, n: int = 1) -> None:
        if n:
            self._child(self._late, "late", topic).inc(n)

    def rebalance(self) -> None:
        self._rebalances.labels(self.stage).inc()

    def window_closed(self, kind: str, partition: int, window_end_s: float) -> None:
        """The newest window of ``kind`` (node, rollup) closed in ``partition`` ends at
        ``window_end_s`` (event time, Unix seconds); the watermark delay gauge is the
        wall clock minus it at scrape time: how far the results trail real time."""
        key = (kind, partition)
        if window_end_s > self._watermarks.get(key, float("-inf")):
            self._watermarks[key] = window_end_s

    def forget_partition(self, kind: str, partition: int) -> None:
        """Stop reporting a partition this worker no longer owns."""
        self._watermarks.pop((kind, partition), None)

    def rule_evaluated(self, scope: str) -> None:
        self._child(self._rules, "rules", scope).inc()

    def policy_event(self, event_type: str) -> None:
        self._child(self._policy_events, "policy", event_type).inc()

    def influx_observer(self, outcome: str, seconds: float, points: int) -> None:
        """``InfluxWriter(observe=...)``: called after every write request."""
        self._influx_s.labels(self.stage).observe(seconds)
        self._child(self._influx_req, "influx", outcome).inc()
        if outcome == "ok":
            self._influx_points.labels(self.stage).inc(points)

    def influx_rejected(self, n: int) -> None:
        if n:
            self._influx_rejected.labels(self.stage).inc(n)

    # --- scrape-time sources ------------------------------------------------------------

    def add_lag_source(self, source: LagSource) -> None:
        """``source()`` -> (topic, partition, messages behind) for each owned partition."""
        self._lag_sources.append(source)

    def add_backlog_source(self, source: Callable[[], float]) -> None:
        """``source()`` -> points waiting for InfluxDB (e.g. ``lambda: writer.backlog_points``)."""
        self._backlogs.append(source)

    # --- health ---------------------------------------------------------------------------

    def set_ready(self, ready: bool = True) -> None:
        self.ready = ready

    def fail(self, reason: str) -> None:
        """A fatal condition (bad configuration): /healthz and /readyz answer 503 with it."""
        self.fatal = reason

    def health(self) -> tuple[bool, bool, dict[str, Any]]:
        """(live, ready, details)."""
        live = self.fatal is None
        details: dict[str, Any] = {
            "stage": self.stage,
            "uptime_s": round(self._clock() - self.started_at, 1),
            "checks": {"fatal": self.fatal, "started": self.ready},
        }
        return live, live and self.ready, details


class _Gauges:
    """Collector of the scrape-time gauges of a :class:`PipelineMetrics`."""

    def __init__(self, m: PipelineMetrics) -> None:
        self.m = m

    def describe(self) -> list[Metric]:
        return []  # gauges appear at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        m, stage = self.m, self.m.stage
        now = m._clock()
        wm = GaugeMetricFamily(f"{PREFIX}_watermark_delay_seconds", "wall clock minus the end"
                               " of the newest closed window (event time), per partition",
                               labels=["stage", "kind", "partition"])
        for (kind, partition), end in list(m._watermarks.items()):
            wm.add_metric([stage, kind, str(partition)], max(0.0, now - end))
        yield wm
        lag = GaugeMetricFamily(f"{PREFIX}_consumer_lag_messages", "messages between the "
                                "committed offset and the end of the partition",
                                labels=["stage", "topic", "partition"])
        for source in m._lag_sources:
            try:
                rows = list(source())
            except Exception as exc:  # the loop thread may be reassigning: skip one scrape
                log.debug("lag source failed: %s", exc)
                continue
            for topic, partition, value in rows:
                lag.add_metric([stage, topic, str(partition)], float(value))
        yield lag
        backlog = 0.0
        for source in m._backlogs:
            try:
                backlog += float(source())
            except Exception as exc:
                log.debug("backlog source failed: %s", exc)
        yield _labelled_gauge(f"{PREFIX}_influx_backlog_points",
                              "points waiting for an InfluxDB acknowledgement", stage, backlog)
        yield _labelled_gauge(f"{PREFIX}_ready", "1 when the stage is started and healthy",
                              stage, 1.0 if m.health()[1] else 0.0)


def _labelled_gauge(name: str, help_text: str, stage: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=["stage"])
    family.add_metric([stage], value)
    return family


def faust_lag(app: Any, topics: Iterable[str] | None = None) -> list[tuple[str, int, float]]:
    """Consumer lag of a Faust app's owned partitions: end offset minus committed offset
    (what ``kafka-consumer-groups --describe`` shows). Partitions with nothing committed
    yet count from the offset last read. Reads Faust's consumer state without locking:
    call it from the scrape thread, a racing reassignment only skips one scrape."""
    wanted = set(topics) if topics is not None else None
    consumer = app.consumer
    committed = getattr(consumer, "_committed_offset", {})
    read = getattr(consumer, "_read_offset", {})
    rows = []
    for tp in list(app.assignor.assigned_actives()):
        if wanted is not None and tp.topic not in wanted:
            continue
        try:
            end = consumer.highwater(tp)
        except Exception:
            continue
        if end is None:
            continue
        done = committed.get(tp)
        if done is None:
            last = read.get(tp)
            done = last + 1 if last is not None else None
        if done is not None:
            rows.append((tp.topic, tp.partition, float(max(0, end - done))))
    return rows


class HealthServer(EndpointServer):
    """HTTP server for ``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread.
    Port 0 picks a free port (see :attr:`port`)."""

    def __init__(self, metrics: PipelineMetrics, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        def route(path: str) -> tuple[int, str, bytes]:
            if path == "/metrics":
                return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
            if path in ("/healthz", "/readyz"):
                live, ready, details = metrics.health()
                ok = live if path == "/healthz" else ready
                if ok:
                    word = "ok"
                elif not live:
                    word = "failed"
                else:
                    word = "starting"
                body = json.dumps({"status": word, **details}).encode()
                return (200 if ok else 503), "application/json", body
            return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"

        super().__init__(route, host=host, port=port,
                         thread_name=f"mfu-health-{metrics.stage}")


def serve(metrics: PipelineMetrics, settings: HealthSettings) -> HealthServer | None:
    """Start the health server when ``settings.metrics_port`` is set (else None).

    A port already taken is logged, not fatal: the worker's job is the data, its
    metrics are secondary."""
    if settings.metrics_port is None:
        return None
    try:
        server = HealthServer(metrics, host=settings.metrics_host,
                              port=settings.metrics_port).start()
    except OSError as exc:
        log.warning("metrics server not started", extra={
            "stage": metrics.stage, "host": settings.metrics_host,
            "port": settings.metrics_port, "error": str(exc)})
        return None
    log.info("metrics server listening", extra={"stage": metrics.stage,
                                                  "port": server.port})
    return server
