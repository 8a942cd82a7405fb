"""`mfu agent` (the NVML node agent) and `mfu simulate` (a simulated fleet).

Both publish through :class:`agents.publisher.Publisher`: one ``batch/1`` per node per
interval per topic, spooling to disk while Kafka is unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mfucli.main import CLIError

DEFAULT_SIM_MODELS = "NVIDIA H100 80GB HBM3,NVIDIA A100-SXM4-80GB"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the node agent (NVML telemetry + FLOP report intake)",
                       description="Sample every GPU via NVML once per interval, receive FLOP "
                       "reports from the SDK, publish to Kafka (spooling while it is down). "
                       "Settings: flags > MFU_AGENT_* env > --config file > defaults.")
    p.add_argument("--config", help="YAML or TOML file with AgentSettings fields")
    p.add_argument("--node", help="node name on every event (default: host name)")
    p.add_argument("--interval-s", type=float, help="sampling interval, seconds (default 1)")
    p.add_argument("--envelope-s", type=float, help="seconds of samples per Kafka message "
                   "(MFU_AGENT_ENVELOPE_S; default: the largest <= the window grace that "
                   "divides window and grace)")
    p.add_argument("--socket", help="intake: Unix socket path or udp://127.0.0.1:PORT "
                   "(default /run/mfu/agent.sock)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default MFU_KAFKA_BOOTSTRAP)")
    p.add_argument("--spool-dir", help="on-disk buffer directory (default /var/lib/mfu/spool)")
    p.add_argument("--spool-max-bytes", type=int, help="spool bound, bytes (default 256 MiB)")
    p.add_argument("--metrics-host", help="bind address of /metrics and /healthz")
    p.add_argument("--metrics-port", type=int, help="port of /metrics and /healthz (default 9108)")
    p.add_argument("--proc-root", help="proc mount to read workload names from (default /proc)")
    p.add_argument("--workload-env", help="environment variable naming the workload "
                   "(default MFU_WORKLOAD)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run_agent)

    s = sub.add_parser("simulate", help="simulate a GPU fleet with known MFU",
                       description="N nodes x G GPUs running workload archetypes (training, "
                       "under-batched inference, communication-bound DP, input stalls, idle, "
                       "MIG, fp32, decode), deterministic by seed, published like real agents.")
    s.add_argument("--nodes", type=int, default=8)
    s.add_argument("--gpus-per-node", type=int, default=8)
    s.add_argument("--gpu-models", default=DEFAULT_SIM_MODELS,
                   help=f"comma-separated catalog names, one per node round robin "
                   f"(default {DEFAULT_SIM_MODELS!r})")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--duration-s", type=float,
                   help="seconds of event time to simulate (default: until stopped; "
                   "required with --fast)")
    s.add_argument("--interval-s", type=float, default=1.0)
    s.add_argument("--start-ts", type=float, help="epoch seconds the run starts at "
                   "(default: now with --realtime; now - duration with --fast, so the run "
                   "ends now)")
    s.add_argument("--drift-at-s", type=float, help="seconds after start when the drift starts")
    s.add_argument("--drift-workload", help="workload that drifts (default: the LLM training job)")
    s.add_argument("--drift-fraction", type=float, default=0.3,
                   help="fraction of MFU the drifting workload loses (default 0.3)")
    pace = s.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="one interval per interval of wall time (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="synthetic clock: emit the whole duration without sleeping")
    s.add_argument("--bootstrap", help="Kafka bootstrap servers (default MFU_KAFKA_BOOTSTRAP)")
    s.add_argument("--spool-dir", help="spool directory (default: a temporary directory)")
    s.add_argument("--telemetry-topic", default=None, help="default mfu.telemetry.v1")
    s.add_argument("--flops-topic", default=None, help="default mfu.flops.v1")
    s.add_argument("--stdout", action="store_true",
                   help="print events as JSON lines instead of publishing to Kafka")
    s.add_argument("--describe", action="store_true",
                   help="print the workloads (archetype, GPUs, target MFU) and exit")
    s.add_argument("--truth-window-s", type=float,
                   help="after the run, print the exact MFU of every window of this size "
                   "(JSON lines on stdout)")
    s.add_argument("--flush-timeout-s", type=float, default=30.0,
                   help="at the end, wait this long for Kafka to take everything")
    s.add_argument("--log-level", default="INFO")
    s.set_defaults(func=run_simulate)


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _describe_error(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from mfu.events import describe_validation_error

        return describe_validation_error(exc)
    return str(exc)


# --------------------------------------------------------------------------- agent

def agent_settings(args: argparse.Namespace) -> Any:
    """AgentSettings from flags (highest precedence), env and the config file."""
    from agents.settings import AgentSettings

    flags = {
        "config_file": args.config, "node": args.node, "interval_s": args.interval_s,
        "envelope_s": args.envelope_s, "socket": args.socket, "spool_dir": args.spool_dir,
        "spool_max_bytes": args.spool_max_bytes, "metrics_host": args.metrics_host,
        "metrics_port": args.metrics_port, "proc_root": args.proc_root,
        "workload_env": args.workload_env,
    }
    try:
        settings = AgentSettings(**{k: v for k, v in flags.items() if v is not None})
    except Exception as exc:
        raise CLIError(f"bad agent settings: {_describe_error(exc)}") from None
    if args.bootstrap:
        kafka = settings.kafka.model_copy(update={"bootstrap": args.bootstrap})
        settings = settings.model_copy(update={"kafka": kafka})
    return settings


def run_agent(args: argparse.Namespace) -> int:
    _logging(args.log_level)
    settings = agent_settings(args)
    from agents.agent import Agent, install_signal_handlers

    try:
        agent = Agent(settings)
    except OSError as exc:
        raise CLIError(f"cannot open the spool at {settings.spool_dir}: {exc.strerror}; "
                       "pass --spool-dir to a writable directory") from None
    except ValueError as exc:  # e.g. an envelope longer than the window grace
        raise CLIError(f"bad agent settings: {exc}") from None
    try:
        agent.start()
    except OSError as exc:
        raise CLIError(f"cannot open the intake socket {settings.socket} or the metrics port "
                       f"{settings.metrics_port}: {exc}; pass --socket / --metrics-port") from None
    except Exception as exc:
        if type(exc).__name__.startswith("NVMLError"):
            raise CLIError(f"cannot initialize NVML ({exc}): is this a GPU host with the NVIDIA "
                           "driver? To try the pipeline without GPUs run `mfu simulate`") from None
        raise
    stop = threading.Event()
    install_signal_handlers(stop)
    return agent.run(stop)


# --------------------------------------------------------------------------- simulate

class JsonLinesSink:
    """Prints each event as one JSON line (``--stdout``), like a publisher would send it."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout

    def publish(self, topic: str, events: Any, *, key: str) -> None:
        write = self.out.write
        for event in events:
            write(f'{{"topic":"{topic}","key":{json.dumps(key)},"value":')
            write(event.to_json().decode())
            write("}\n")

    def poll(self, timeout_s: float = 0.0) -> None:
        pass


def run_simulate(args: argparse.Namespace) -> int:
    _logging(args.log_level)
    from agents.simulator import FleetSimulator
    from mfu.topics import FLOPS, TELEMETRY

    if not args.realtime and args.duration_s is None:
        raise CLIError("--fast needs --duration-s (how much event time to simulate)")
    models = [m.strip() for m in args.gpu_models.split(",") if m.strip()]
    start_ts = args.start_ts
    if start_ts is None and not args.realtime:
        # end the synthetic run now: stream workers refuse events from the far future
        now = time.time() - args.duration_s
        start_ts = math.floor(now / args.interval_s) * args.interval_s
    try:
        sim = FleetSimulator(
            args.nodes, args.gpus_per_node, models, seed=args.seed, interval_s=args.interval_s,
            start_ts=start_ts, drift_workload=args.drift_workload,
            drift_at_s=args.drift_at_s, drift_fraction=args.drift_fraction)
    except (ValueError, LookupError) as exc:
        raise CLIError(str(exc)) from None
    if args.describe:
        for row in sim.describe():
            print(json.dumps(row))
        return 0

    stop = threading.Event()
    from agents.agent import install_signal_handlers

    install_signal_handlers(stop)
    topics = {"telemetry_topic": args.telemetry_topic or TELEMETRY,
              "flops_topic": args.flops_topic or FLOPS}
    log = logging.getLogger("mfu.simulate")
    log.info("simulating nodes=%d gpus_per_node=%d models=%s workloads=%d devices=%d "
             "start_ts=%.0f mode=%s", args.nodes, args.gpus_per_node, ",".join(models),
             len(sim.workloads), len(sim.devices), sim.start_ts,
             "realtime" if args.realtime else "fast")

    def progress(done: int, total: int | None) -> None:
        if total and (done == total or done % max(1, total // 10) == 0):
            log.info("progress ticks=%d/%d", done, total)

    if args.stdout:
        ticks = sim.run(JsonLinesSink(), duration_s=args.duration_s, realtime=args.realtime,
                        stop=stop, **topics)
        left = 0
    else:
        from agents.publisher import Publisher, producer_config
        from agents.spool import Spool
        from mfu.config import KafkaSettings

        kafka = KafkaSettings()
        if args.bootstrap:
            kafka = kafka.model_copy(update={"bootstrap": args.bootstrap})
        spool_dir = Path(args.spool_dir or tempfile.mkdtemp(prefix="mfu-sim-spool-"))
        publisher = Publisher(Spool(spool_dir), config=producer_config(kafka))
        try:
            ticks = sim.run(publisher, duration_s=args.duration_s, realtime=args.realtime,
                            stop=stop, progress=progress, **topics)
            publisher.flush(args.flush_timeout_s)
        finally:
            publisher.close(timeout_s=5.0)
        left = len(publisher.spool)
        delivered = sum(v for k, v in publisher.stats.items() if k[0] == "delivered_events")
        log.info("simulated ticks=%d delivered_events=%d spooled_messages_left=%d spool=%s",
                 ticks, delivered, left, spool_dir)
    if args.truth_window_s:
        for truth in sim.truth_windows(ticks * sim.interval_s, args.truth_window_s):
            print(json.dumps(truth.as_dict()))
    if left:
        print(f"mfu simulate: {left} messages could not be delivered and stay in the spool "
              f"{spool_dir}; is Kafka at {kafka.bootstrap} reachable?", file=sys.stderr)
        return 1
    return 0
