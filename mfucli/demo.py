"""`mfu demo`: the whole pipeline on local services with a simulated fleet.

Starts (or reuses) local Kafka + InfluxDB, resets the pipeline topics, runs the fleet
simulator, the stream workers and the rules stage as child processes, shows a live view
of fleet MFU vs allocation, the worst nodes and workloads, and policy events, then stops
everything and writes a report (PNG chart, text summary, raw records, how to query).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfu import topics


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on local services with a simulated fleet",
        description="Provision/start local Kafka and InfluxDB (or use MFU_KAFKA_BOOTSTRAP / "
        "MFU_INFLUX_* when set), simulate a fleet, run streams and policies, show a live view "
        "and write a report.",
    )
    p.add_argument("--duration-s", type=float, default=180.0, help="simulated run length")
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--gpu-models", default=None,
                   help="comma-separated catalog names, one per node round robin "
                   "(default: those of `mfu simulate`)")
    p.add_argument("--window-s", type=float, default=10.0, help="MFU window length")
    p.add_argument("--drift-at-s", type=float, default=None,
                   help="when the drifting job degrades (default: 40%% into the run)")
    p.add_argument("--out", type=Path, default=Path("demo-report"), help="report folder")
    p.add_argument("--no-view", action="store_true", help="log lines instead of a live screen")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the demo topics")
    p.set_defaults(func=run)


def _say(t0: float, msg: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Collected:
    """Everything the demo read back from the output topics."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> record
    policy: list[dict[str, Any]] = field(default_factory=list)

    def by_scope(self, scope: str) -> list[dict[str, Any]]:
        return sorted((r for r in self.records.values() if r["scope"] == scope),
                      key=lambda r: (r["window_start"], r["key"]))


def _services_env(t0: float) -> dict[str, str]:
    if os.environ.get("MFU_KAFKA_BOOTSTRAP") and os.environ.get("MFU_INFLUX_URL"):
        _say(t0, f"services: using MFU_KAFKA_BOOTSTRAP={os.environ['MFU_KAFKA_BOOTSTRAP']} and "
                 f"MFU_INFLUX_URL={os.environ['MFU_INFLUX_URL']}")
        return {}
    from devenv import services

    _say(t0, "services: starting local Kafka + InfluxDB (the first run provisions them: "
             "downloads Kafka jars, builds InfluxDB; a few minutes)")
    state = services.up(progress=lambda m: _say(t0, f"  {m}"))
    return services.connection_env(state)


def _reset_topics(kafka: Any, names: list[str], partitions: int, t0: float) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka.confluent_config())
    existing = set(admin.list_topics(timeout=30).topics)
    doomed = [t for t in names if t in existing]
    if doomed:
        for fut in admin.delete_topics(doomed, operation_timeout=30).values():
            try:
                fut.result()
            except Exception as exc:
                _say(t0, f"  could not delete a topic: {exc}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(doomed) & set(admin.list_topics(timeout=10).topics):
            time.sleep(0.5)
    deadline = time.monotonic() + 30
    while True:
        futs = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1)
                                    for t in names], operation_timeout=30)
        pending = []
        for t, fut in futs.items():
            try:
                fut.result()
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    pending.append(t)
        if not pending or time.monotonic() > deadline:
            return
        names = pending  # deletion still settling
        time.sleep(1.0)


class Children:
    """Child processes with logs in files; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "mfucli", *args], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def check(self) -> str | None:
        for name, p in self.procs.items():
            if p.poll() is not None and p.returncode != 0 and name != "simulator":
                return f"{name} exited with code {p.returncode}: see {self.log_dir / name}.log"
        return None

    def stop(self, names: list[str] | None = None, timeout_s: float = 20.0) -> None:
        chosen = [n for n in (names or list(self.procs)) if n in self.procs]
        for n in chosen:
            if self.procs[n].poll() is None:
                os.killpg(self.procs[n].pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for n in chosen:
            try:
                self.procs[n].wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(self.procs[n].pid, signal.SIGKILL)
                self.procs[n].wait()


def _consume(consumer: Any, into: Collected, policy_topic: str, budget_s: float) -> int:
    n = 0
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        msgs = consumer.consume(500, timeout=0.2)
        for m in msgs:
            if m.error():
                continue
            try:
                value = json.loads(m.value())
            except ValueError:
                continue
            if m.topic() == policy_topic:
                into.policy.append(value)
            elif isinstance(value, dict) and "scope" in value:
                into.records[value["event_id"]] = value
            n += 1
        if not msgs:
            break
    return n


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{100 * x:5.1f}%"


def render_view(c: Collected, elapsed_s: float, duration_s: float) -> str:
    """The live screen: fleet MFU vs allocation, worst nodes/workloads, policy events."""
    fleet = c.by_scope("fleet")
    lines = [f"MFU pipeline demo   t={elapsed_s:5.0f}s / {duration_s:.0f}s   "
             f"windows closed: {len(fleet)}", ""]
    if fleet:
        f = fleet[-1]
        lines.append(f"FLEET  MFU (all installed GPUs) {_fmt(f.get('mfu'))}   "
                     f"allocation {_fmt(f.get('allocation'))}   "
                     f"MFU of allocated GPUs {_fmt(f.get('mfu_allocated'))}   "
                     f"GPUs {f.get('gpus')}  SM busy {_fmt(f.get('sm_util'))}")
        lines.append(f"       coverage {_fmt(f.get('coverage'))}   MFU measured {_fmt(f.get('mfu'))}"
                     f"   MFU estimated {_fmt(f.get('mfu_estimated'))}   "
                     f"MBU {_fmt(f.get('mbu'))}")
        lines.append("       (tenant view: MFU of allocated; provider view: installed MFU; "
                     "estimated adds counter estimates of GPUs that report nothing)")
    last_ws = max((r["window_start"] for r in c.records.values()), default=None)
    for scope, title in (("workload", "WORST WORKLOADS"), ("node", "WORST NODES")):
        rows = [r for r in c.by_scope(scope) if r["window_start"] == last_ws
                and r.get("mfu") is not None]
        rows.sort(key=lambda r: r["mfu"])
        lines.append("")
        lines.append(f"{title} (last window)          MFU   SM busy  tensor  GPUs  MBU  regime")
        for r in rows[:6]:
            lines.append(f"  {r['key'][:32]:<32} {_fmt(r.get('mfu'))}  {_fmt(r.get('sm_util'))}  "
                         f"{_fmt(r.get('tensor_active'))}  {r.get('gpus')}  "
                         f"{_fmt(r.get('mbu'))} {r.get('regime') or ''}")
    lines.append("")
    lines.append(f"POLICY EVENTS ({len(c.policy)} so far, newest last)")
    for e in c.policy[-8:]:
        summary = (e.get("data") or {}).get("summary", "")
        lines.append(f"  {e.get('type', '')[7:-3]:<16} {e.get('subject', '')[:34]:<34} {summary[:70]}")
    return "\n".join(lines)


def simulator_truth(args: argparse.Namespace, models: list[str], start_ts: float,
                    drift_at_s: float, window_starts: list[float]) -> list[dict[str, Any]]:
    """The simulator's ground truth (``Truth.as_dict()``, workload and fleet scope) of
    every window the pipeline closed: the same fleet, rebuilt from the same arguments."""
    from agents.simulator import FleetSimulator

    sim = FleetSimulator(args.nodes, args.gpus_per_node, models, seed=args.seed,
                         start_ts=start_ts, drift_at_s=drift_at_s)
    end = start_ts + args.duration_s
    out: list[dict[str, Any]] = []
    for ws in sorted(set(window_starts)):
        if ws < start_ts or ws + args.window_s > end + 1e-9:
            continue  # outside the run: the truth would be partial
        truth = sim.ground_truth(ws, ws + args.window_s)
        for scope in ("workload", "fleet"):
            out += [t.as_dict() for t in truth[scope].values()]
    return out


def run(args: argparse.Namespace) -> int:
    from mfucli.main import CLIError

    if args.duration_s < 3 * args.window_s:
        raise CLIError("--duration-s must cover at least three windows")
    t0 = time.monotonic()
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(_services_env(t0))
    os.environ.update(env)

    from confluent_kafka import Consumer

    from mfu.config import KafkaSettings

    run_id = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(partitions=args.partitions)
    pipeline_topics = [topics.TELEMETRY, topics.FLOPS, topics.WORKLOAD, topics.NODE, topics.FLEET,
                       topics.POLICY, topics.DEADLETTER, topics.LATE, topics.PARTIALS]
    _say(t0, f"topics: resetting {len(pipeline_topics)} pipeline topics ({args.partitions} partitions)")
    _reset_topics(kafka, pipeline_topics, args.partitions, t0)
    fleet_name = f"demo-{run_id}"
    env.update({
        "MFU_KAFKA_PARTITIONS": str(args.partitions),
        "MFU_POLICIES_PARTITIONS": str(args.partitions),
        "MFU_WINDOW_SIZE_S": str(args.window_s),
        "MFU_WINDOW_GRACE_S": "3",
        "MFU_WINDOW_IDLE_TIMEOUT_S": "6",
        "MFU_STREAMS_APP_ID": f"mfu-streams-{run_id}",
        "MFU_STREAMS_FLEET": fleet_name,
        "MFU_POLICIES_APP_ID": f"mfu-policies-{run_id}",
        "PYTHONUNBUFFERED": "1",
    })
    children = Children(out / "logs", env)
    consumer = Consumer({**kafka.confluent_config(), "group.id": f"mfu-demo-view-{run_id}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topics.WORKLOAD, topics.NODE, topics.FLEET, topics.POLICY])
    collected = Collected()
    drift_at = args.drift_at_s if args.drift_at_s is not None else round(0.4 * args.duration_s)
    interrupted = False
    sim_started = 0.0
    sim_start_ts: float | None = None
    from mfucli.agent import DEFAULT_SIM_MODELS

    models = [m.strip() for m in (args.gpu_models or DEFAULT_SIM_MODELS).split(",") if m.strip()]
    try:
        _say(t0, "starting stream worker and rules stage")
        children.start("streams", ["streams"])
        children.start("policies", ["policies", "run"])
        time.sleep(5.0)  # let both join their consumer groups before data flows
        _say(t0, f"starting simulated fleet: {args.nodes} nodes x {args.gpus_per_node} GPUs, "
                 f"drift at +{drift_at:.0f}s, for {args.duration_s:.0f}s")
        # An explicit start lets this process rebuild the same fleet for its ground truth.
        sim_start_ts = float(math.floor(time.time()))
        children.start("simulator", [
            "simulate", "--nodes", str(args.nodes), "--gpus-per-node", str(args.gpus_per_node),
            "--seed", str(args.seed), "--duration-s", str(args.duration_s),
            "--drift-at-s", str(drift_at), "--realtime", "--start-ts", str(sim_start_ts),
            "--gpu-models", ",".join(models),
        ])
        sim_started = time.time()
        tty = sys.stdout.isatty() and not args.no_view
        end_at = time.monotonic() + args.duration_s + args.window_s + 15
        last_log = 0.0
        while time.monotonic() < end_at:
            _consume(consumer, collected, topics.POLICY, 1.0)
            problem = children.check()
            if problem:
                raise CLIError(problem)
            elapsed = time.time() - sim_started
            if tty:
                sys.stdout.write("\x1b[2J\x1b[H" + render_view(collected, elapsed, args.duration_s)
                                 + "\n")
                sys.stdout.flush()
            elif time.monotonic() - last_log > 10:
                fleet = collected.by_scope("fleet")
                f = fleet[-1] if fleet else {}
                _say(t0, f"t={elapsed:4.0f}s windows={len(fleet)} fleet MFU={_fmt(f.get('mfu'))} "
                         f"allocation={_fmt(f.get('allocation'))} policy events={len(collected.policy)}")
                last_log = time.monotonic()
            time.sleep(1.0)
        _consume(consumer, collected, topics.POLICY, 5.0)
    except KeyboardInterrupt:
        interrupted = True
        _say(t0, "interrupted: stopping the pipeline")
    finally:
        children.stop()
        consumer.close()
    from mfucli.demo_report import write_report

    truth = None
    if sim_start_ts is not None:
        _say(t0, "ground truth: recomputing the simulated fleet's exact numbers per window")
        truth = simulator_truth(args, models, sim_start_ts, drift_at,
                                [f["window_start"] for f in collected.by_scope("fleet")])
    paths = write_report(out, collected, sim_started=sim_started, fleet=fleet_name,
                         drift_at_s=drift_at, args=args, truth=truth)
    _say(t0, f"report: {paths['summary']} and {paths['chart']}")
    print(Path(paths["summary"]).read_text())
    return 130 if interrupted else 0
