"""The node agent: NVML collector + FLOP-report intake -> publisher, once per interval.

Per interval ``[ts - interval_s, ts)`` (``ts`` on a multiple of ``interval_s`` since the
epoch, so samples of all nodes line up with the stream windows, and strictly increasing
even if the wall clock steps back) the agent sends one ``batch/1`` of ``gpu_sample/1`` on
``mfu.telemetry.v1`` and one of the ``flop_report/1`` received in the interval on
``mfu.flops.v1``, both keyed by node. Between ticks it serves Kafka callbacks and drains
the spool. With ``envelope_s`` > ``interval_s`` (``MFU_AGENT_ENVELOPE_S``, agents/envelope.py)
several intervals go in one message, flushed at epoch multiples of ``envelope_s``.
SIGTERM/SIGINT (see :func:`install_signal_handlers`) end the loop: reports
already received are published, the producer is flushed for ``shutdown_timeout_s``
and whatever is left is spooled for the next start.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agents.attribution import ProcAttributor
from agents.dcgm import DcgmPipeCounters, load_dcgm_reader
from agents.engines import EngineCollector
from agents.envelope import Envelope, check_envelope_s, default_envelope_s
from agents.intake import Intake, IntakeServer
from agents.metrics import MetricsServer, StatsCollector, make_registry
from agents.nvml import NvmlCollector
from agents.publisher import Publisher, producer_config
from agents.settings import AgentSettings
from agents.spool import Spool
from mfu.config import WindowSettings
from mfu.events import FlopReport
from mfu.topics import FLOPS, TELEMETRY

log = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (main thread only)."""
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal_received signal=%s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Agent:
    """One host's agent. ``nvml`` and ``producer_factory`` are seams for tests."""

    def __init__(self, settings: AgentSettings, *, nvml: Any = None,
                 producer_factory: Callable[[dict[str, Any]], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        s = self.settings = settings
        self._clock = clock
        self.attributor = ProcAttributor(s.proc_root, variable=s.workload_env,
                                         tenants=s.tenants)
        self.pipe_counters = None if s.dcgm == "off" else DcgmPipeCounters(
            lambda: load_dcgm_reader(s.interval_s, host=s.dcgm_host, bindings=s.dcgm_bindings))
        self.collector = NvmlCollector(s.node, nvml=nvml, attributor=self.attributor,
                                       interval_s=s.interval_s, rediscover_s=s.rediscover_s,
                                       pipe_counters=self.pipe_counters)
        self.engines = EngineCollector(s.node, targets=s.engines, discover=s.engine_discovery,
                                       proc_root=s.proc_root, timeout_s=s.engine_timeout_s,
                                       workload_of=self.attributor.workload)
        self.intake = Intake(s.node, resolve_gpu=self.resolve_gpu,
                             max_bytes=s.max_datagram_bytes)
        self.spool = Spool(s.spool_dir, max_bytes=s.spool_max_bytes,
                           segment_bytes=s.spool_segment_bytes)
        config = producer_config(s.kafka, message_timeout_s=s.message_timeout_s,
                                 compression=s.compression)
        self.publisher = Publisher(self.spool, config=config, producer_factory=producer_factory,
                                   retry_backoff_s=s.retry_backoff_s)
        # K seconds per message (agents/envelope.py); the stream's MFU_WINDOW_* bound it.
        windows = WindowSettings()
        envelope_s = s.envelope_s or default_envelope_s(s.interval_s, windows)
        check_envelope_s(envelope_s, s.interval_s, windows)
        self.envelope = Envelope(envelope_s, s.interval_s)
        self.stats: Counter[tuple[str, ...]] = Counter()
        self._reports: list[FlopReport] = []
        self._lock = threading.Lock()
        self._last_tick: float | None = None
        self._last_ts: float | None = None
        self.intake_server: IntakeServer | None = None
        self.metrics_server: MetricsServer | None = None

    # -- intake ------------------------------------------------------------------------
    def resolve_gpu(self, *, prefix: str | None, index: int | None, pid: int | None
                    ) -> str | None:
        """GPU UUID for a FLOP report: a unique UUID prefix, else the GPU the sender pid
        runs on, else the NVML index of a whole GPU."""
        devices = self.collector.devices
        if prefix:
            matches = [d.uuid for d in devices if d.uuid.startswith(prefix)]
            return matches[0] if len(matches) == 1 else None
        if pid is not None:
            uuid = self.collector.pid_to_uuid.get(pid)
            if uuid:
                return uuid
        if index is not None:
            matches = [d.uuid for d in devices if d.index == index and d.mig_profile is None]
            return matches[0] if matches else None
        return None

    def on_report(self, report: FlopReport) -> None:
        with self._lock:
            if len(self._reports) < self.settings.max_reports_per_interval:
                self._reports.append(report)
                return
        self.stats[("reports_dropped_overflow",)] += 1

    def _take_reports(self) -> list[FlopReport]:
        with self._lock:
            reports, self._reports = self._reports, []
        return reports

    # -- one interval ------------------------------------------------------------------
    def tick(self, ts: float) -> None:
        """Collect the interval ending at ``ts`` (epoch seconds); publish the envelope
        when ``ts`` is a flush instant (every interval with ``envelope_s = interval_s``)."""
        node = self.settings.node
        samples = self.collector.collect(ts)
        # engine counters after NVML: their GPUs come from this interval's pid -> GPU map
        reports = self._take_reports() + self.engines.collect(ts, self.collector.pid_to_uuid)
        out = self.envelope.add(ts, samples, reports)
        if out is not None:
            self.publisher.publish(TELEMETRY, out[0], key=node)
            self.publisher.publish(FLOPS, out[1], key=node)
        self._last_tick = self._clock()
        self._last_ts = ts
        self.stats[("ticks",)] += 1

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = None if self._last_tick is None else self._clock() - self._last_tick
        ok = age is not None and age < 3 * self.settings.interval_s + 2.0
        return ok, {
            "node": self.settings.node,
            "last_interval_age_s": None if age is None else round(age, 3),
            "gpus": len(self.collector.devices),
            "broker_up": self.publisher.broker_up,
            "spool_bytes": self.spool.bytes,
        }

    def stats_collector(self) -> StatsCollector:
        return StatsCollector(
            {"nvml": self.collector, "attribution": self.attributor, "intake": self.intake,
             **({"dcgm": self.pipe_counters} if self.pipe_counters is not None else {}),
             "kafka": self.publisher, "spool": self.spool, "engines": self.engines,
             "loop": self},
            {
                "gpus": ("devices (GPUs and MIG slices) sampled", lambda: len(self.collector.devices)),
                "broker_up": ("1 while Kafka acknowledges, 0 while spooling",
                              lambda: float(self.publisher.broker_up)),
                "spool_bytes": ("bytes in the on-disk spool", lambda: self.spool.bytes),
                "spool_messages": ("messages in the on-disk spool", lambda: len(self.spool)),
                "last_interval_ts": ("end (epoch s) of the last published interval",
                                     lambda: self._last_ts or 0.0),
            },
        )

    # -- the loop ----------------------------------------------------------------------
    def start(self) -> None:
        """Initialize NVML, bind the intake socket and the metrics port.

        Raises the NVML error when NVML cannot start (not a GPU host) and ``OSError``
        when the socket or port cannot be bound."""
        s = self.settings
        try:
            self.collector.start(self._clock())
            self.intake_server = IntakeServer(self.intake, s.socket, self.on_report).start()
            self.metrics_server = MetricsServer(
                make_registry(self.stats_collector()), self.health,
                host=s.metrics_host, port=s.metrics_port).start()
        except BaseException:
            self.shutdown()
            raise
        log.info("agent_started node=%s gpus=%d socket=%s metrics_port=%d bootstrap=%s "
                 "spool=%s", s.node, len(self.collector.devices), s.socket,
                 self.metrics_server.port, s.kafka.bootstrap, s.spool_dir)

    def run(self, stop: threading.Event) -> int:
        """Run until ``stop`` is set (calls :meth:`start` first if needed); returns an
        exit code."""
        if self.intake_server is None:
            self.start()
        interval = self.settings.interval_s
        next_ts = math.floor(self._clock() / interval) * interval + interval
        try:
            while not stop.is_set():
                delay = next_ts - self._clock()
                if delay > 0:
                    self.publisher.poll(min(delay, 0.5))
                    continue
                try:
                    self.tick(next_ts)
                except Exception:  # a bug in one interval must not end the agent
                    self.stats[("tick_errors",)] += 1
                    log.exception("agent_tick_failed ts=%.3f", next_ts)
                next_ts += interval
                behind = self._clock() - next_ts
                if behind > interval:  # stalled: skip the missed intervals, say so
                    missed = math.floor(behind / interval)
                    next_ts += missed * interval
                    self.stats[("missed_intervals",)] += missed
                    log.warning("agent_behind missed_intervals=%d", missed)
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop intake, publish buffered reports, flush or spool, release NVML."""
        if self.intake_server is not None:
            self.intake_server.close()
            self.intake_server = None
        samples, reports = self.envelope.take()
        self.publisher.publish(TELEMETRY, samples, key=self.settings.node)
        self.publisher.publish(FLOPS, reports + self._take_reports(), key=self.settings.node)
        self.publisher.close(self.settings.shutdown_timeout_s)
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self.collector.close()
        log.info("agent_stopped node=%s spooled_messages=%d", self.settings.node, len(self.spool))
