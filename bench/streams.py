"""Stream-stage throughput and latency: ``mfu bench streams``.

Needs a real Kafka and InfluxDB from ``MFU_KAFKA_*`` / ``MFU_INFLUX_*``: run
``eval "$(mfu dev up)"`` first. Each run uses fresh topics and a fresh app id.

Throughput: ``--nodes`` nodes x 8 GPUs send one ``batch/1`` of GPU samples and one of
FLOP reports per node per ``--envelope-s`` seconds (default 1; the agent's
``MFU_AGENT_ENVELOPE_S``) (``--samples`` GPU samples in all, as many reports) to
topics with ``--partitions`` partitions, produced before the worker starts. One worker
process (``mfu streams``) then consumes the backlog; its rate is GPU samples over the time
from its partitions being assigned (it fetches at once) to the fleet record of the last
window. The ceiling is a bare confluent-kafka consumer reading and JSON-decoding the same
messages (both topics) in this process (the limit: product/limit is worker / it). The
peer is quixstreams doing only the node-level tumbling-window job on the same messages
(``bench/peers/quixstreams_node.py``, its own venv; product/peer is worker / it); every
node-window it emits is checked (MFU 0.4, 80 GPU-seconds). Target: >= 50,000 GPU
samples/s per worker.

Latency: a fresh worker, then ``--latency-s`` seconds of samples and reports stamped with
the current time, sent at each whole wall-clock second (``--latency-nodes`` x 8 GPUs;
with ``--envelope-s K``, K seconds at a time on multiples of K, as the agent does).
Per GPU sample: the time from producing it (with K > 1: from its own second, so the time
it waited in the envelope counts) to its window's node record arriving on the
Kafka output topic, and to that record's point being visible in InfluxDB (polled every
``--poll-s``). Windows still open when the feed stops (closed by the idle timeout) are
left out. Target: p99 <= window + grace + 2 s.

Exit status: 0 when every target is met, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from mfu.config import InfluxSettings, KafkaSettings, WindowSettings
from mfu.peaks import peak_flops_per_s

GPU = "NVIDIA H100 80GB HBM3"
GPUS_PER_NODE = 8
T0 = 1_700_000_000  # throughput run: event times in the past (window-aligned)
BENCH_MFU = 0.4  # every GPU reports FLOPs at this share of its peak
KINDS = ("telemetry", "flops", "workload", "node", "fleet", "deadletter", "late", "partials",
         "peer")
TARGET_SAMPLES_PER_S = 50_000


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- setup


class Run:
    """Fresh topics, app id and fleet name for one measurement."""

    def __init__(self, kafka: KafkaSettings, partitions: int, label: str) -> None:
        self.kafka = kafka
        self.partitions = partitions
        self.suffix = f"{label}-{uuid.uuid4().hex[:8]}"
        self.topics = {k: f"bench.{k}.{self.suffix}" for k in KINDS}
        self.app_id = f"mfu-bench-{self.suffix}"
        self.fleet = f"bench-{self.suffix}"
        self.admin = AdminClient(kafka.confluent_config())
        self.owns_inputs = True

    def _owned_topics(self) -> list[str]:
        return [t for k, t in self.topics.items()
                if self.owns_inputs or k not in ("telemetry", "flops")]

    def create(self) -> None:
        futures = self.admin.create_topics(
            [NewTopic(t, num_partitions=self.partitions,
                      replication_factor=self.kafka.replication_factor)
             for t in self._owned_topics()], operation_timeout=30)
        for fut in futures.values():
            fut.result(timeout=60)

    def delete(self) -> None:
        names = [*self._owned_topics(), f"{self.app_id}-progress-changelog",
                 f"{self.app_id}-__assignor-__leader"]
        for fut in self.admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result(timeout=30)

    def variant(self, label: str) -> Run:
        """A run on the same input topics with its own app id, fleet and other topics
        (another worker measured on the same backlog)."""
        other = Run(self.kafka, self.partitions, f"{label}-{self.suffix}")
        other.topics.update({k: self.topics[k] for k in ("telemetry", "flops")})
        other.owns_inputs = False
        return other

    def env(self, windows: dict[str, float]) -> dict[str, str]:
        env = dict(os.environ)
        env.update({f"MFU_STREAMS_{k.upper()}_TOPIC": v for k, v in self.topics.items()})
        env.update({
            "MFU_STREAMS_APP_ID": self.app_id,
            "MFU_STREAMS_FLEET": self.fleet,
            "MFU_KAFKA_PARTITIONS": str(self.partitions),
        })
        env.update({f"MFU_WINDOW_{k.upper()}": str(v) for k, v in windows.items()})
        return env

    def node_name(self, i: int) -> str:
        return f"{self.suffix}-n{i:05d}"

    def partition(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.partitions  # librdkafka's default for keys


def baseline_tree(ref: str, workdir: Path) -> Path:
    """The repository's tree at ``ref`` (``git archive``), to run that version's worker."""
    repo = Path(__file__).resolve().parents[1]
    dest = workdir / "baseline"
    dest.mkdir()
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", ref], check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        raise BenchError(f"--baseline-ref {ref}: git archive failed: "
                         f"{err.decode(errors='replace').strip() or exc}") from exc
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def measure_worker(run: Run, env: dict[str, str], workdir: Path, last_ws: float,
                   timeout_s: float, profile: Path | None = None, source: Path | None = None,
                   name: str = "worker") -> dict[str, Any]:
    """One worker process on ``run``'s backlog: seconds from its partitions being assigned
    to the fleet record of window ``last_ws``, its CPU seconds meanwhile, and that record."""
    worker = Worker(env, workdir, profile, source, name)
    try:
        assigned = wait_assigned(run, worker)
        cpu_at_assigned = worker.cpu_seconds()
        done, rec = wait_for_window(run, worker, last_ws, timeout_s)
        cpu_at_done = worker.cpu_seconds()
    finally:
        worker.stop()
    cpu = (cpu_at_done - cpu_at_assigned
           if cpu_at_done is not None and cpu_at_assigned is not None else None)
    return {"seconds": done - assigned, "cpu_seconds": cpu, "record": rec}


class Worker:
    """``mfu streams`` as a subprocess (optionally under cProfile)."""

    def __init__(self, env: dict[str, str], workdir: Path, profile: Path | None,
                 source: Path | None = None, name: str = "worker") -> None:
        cmd = [sys.executable]
        if profile is not None:
            cmd += ["-m", "cProfile", "-o", str(profile)]
        cmd += ["-m", "mfucli", "streams"]
        if source is not None:  # another version's code (--baseline-ref), same venv
            env = {**env, "PYTHONPATH": str(source)}
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def cpu_seconds(self) -> float | None:
        """CPU seconds (user + system, all threads) the worker used so far (Linux)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def wait_assigned(run: Run, worker: Worker, timeout_s: float = 60.0) -> float:
    """Wall time at which the worker's group owns every input partition."""
    deadline = time.monotonic() + timeout_s
    topic = run.topics["telemetry"]
    while time.monotonic() < deadline:
        worker.check()
        with contextlib.suppress(Exception):
            desc = run.admin.describe_consumer_groups([run.app_id])[run.app_id].result(10)
            owned = {tp.partition for m in desc.members
                     for tp in (m.assignment.topic_partitions if m.assignment else [])
                     if tp.topic == topic}
            if str(desc.state).endswith("STABLE") and len(owned) == run.partitions:
                return time.time()
        time.sleep(0.05)
    raise BenchError(f"worker not assigned after {timeout_s} s:\n{worker.tail()}")


# --------------------------------------------------------------------------- events


def _gpu_uuid(node: str, g: int) -> str:
    return f"GPU-{node}-{g}"


def sample_batch(node: str, ts: float, event_id_prefix: str, envelope_s: int = 1) -> bytes:
    """One node's GPU samples of the ``envelope_s`` one-second intervals ending at
    ``ts - envelope_s + 1`` ... ``ts`` in one ``batch/1`` (what an agent publishes with
    ``MFU_AGENT_ENVELOPE_S``)."""
    events = []
    for k in range(envelope_s - 1, -1, -1):
        t = ts - k
        for g in range(GPUS_PER_NODE):
            events.append({
                "schema": "gpu_sample/1", "event_id": f"{event_id_prefix}-{node}-{g}-{t:.0f}",
                "node": node, "gpu_uuid": _gpu_uuid(node, g), "gpu_index": g, "gpu_name": GPU,
                "mig_profile": None, "ts": t, "interval_s": 1.0, "sm_util": 0.9,
                "mem_util": 0.4, "tensor_active": 0.4, "sm_clock_mhz": 1980,
                "max_sm_clock_mhz": 1980, "power_w": 690.0, "mem_used_bytes": 70_000_000_000,
                "workloads": [f"job-{node}"],
            })
    return json.dumps({"schema": "batch/1", "events": events}).encode()


def report_batch(node: str, end: float, flops: float, event_id_prefix: str,
                 envelope_s: int = 1) -> bytes:
    """One node's FLOP reports of the ``envelope_s`` one-second intervals ending at
    ``end - envelope_s + 1`` ... ``end`` in one ``batch/1``."""
    events = []
    for k in range(envelope_s - 1, -1, -1):
        e = end - k
        for g in range(GPUS_PER_NODE):
            events.append({
                "schema": "flop_report/1", "event_id": f"{event_id_prefix}-{node}-r{g}-{e:.0f}",
                "workload": f"job-{node}", "rank": g, "node": node,
                "gpu_uuid": _gpu_uuid(node, g), "start": e - 1.0, "end": e, "flops": flops,
                "precision": "bf16", "tokens": 160.0,
            })
    return json.dumps({"schema": "batch/1", "events": events}).encode()


def _producer(kafka: KafkaSettings) -> Producer:
    conf = kafka.confluent_config()
    conf.update({"enable.idempotence": True, "linger.ms": 20, "batch.num.messages": 10000,
                 "queue.buffering.max.messages": 1_000_000,
                 "queue.buffering.max.kbytes": 1_048_576, "compression.type": "lz4"})
    return Producer(conf)


# --------------------------------------------------------------------------- throughput


def produce_backlog(run: Run, nodes: int, seconds: int, windows: WindowSettings,
                    envelope_s: int = 1) -> int:
    """Produce the throughput feed, ``envelope_s`` seconds of one node per message
    (``seconds`` is a multiple of it); returns the number of messages."""
    producer = _producer(run.kafka)
    flops = BENCH_MFU * peak_flops_per_s(GPU, "bf16")
    names = [run.node_name(i) for i in range(nodes)]
    parts = {n: run.partition(n) for n in names}
    tel, flo = run.topics["telemetry"], run.topics["flops"]
    # Kafka timestamps follow event time (recent, in the past, so retention keeps them):
    # quixstreams orders the partitions of its two inputs by message timestamp, and with
    # produce-time stamps the telemetry of a partition can run ahead of its FLOP reports
    # and close windows before their reports arrive (seen: 8 of 800 windows wrong).
    base_ms = int(time.time() * 1000) - (seconds + 600) * 1000

    def stamp(ts: float) -> int:
        return base_ms + int((ts - T0) * 1000)

    count = 0
    for i in range(envelope_s - 1, seconds, envelope_s):
        ts = float(T0 + i + 1)
        for n in names:
            key = n.encode()
            producer.produce(tel, sample_batch(n, ts, "s", envelope_s), key,
                             partition=parts[n], timestamp=stamp(ts))
            producer.produce(flo, report_batch(n, ts, flops, "r", envelope_s), key,
                             partition=parts[n], timestamp=stamp(ts))
            count += 2
        producer.poll(0)
    # A closer per partition: pushes every watermark past the last data window's end +
    # grace, so it closes on event time (its own window stays open).
    close_ts = float(T0 + seconds + windows.size_s + windows.grace_s + 1)
    for p in range(run.partitions):
        node = next(f"{run.suffix}-closer{j}" for j in range(10_000)
                    if run.partition(f"{run.suffix}-closer{j}") == p)
        producer.produce(tel, sample_batch(node, close_ts, "c"), node.encode(), partition=p,
                         timestamp=stamp(close_ts))
        producer.produce(flo, report_batch(node, close_ts, flops, "c"), node.encode(),
                         partition=p, timestamp=stamp(close_ts))
        count += 2
    if producer.flush(120) != 0:
        raise BenchError("messages left undelivered after 120 s")
    return count


def wait_for_window(run: Run, worker: Worker, window_start: float, timeout_s: float) -> tuple[
        float, dict[str, Any]]:
    """Wall time the fleet record of ``window_start`` arrives, and the record."""
    c = Consumer({**run.kafka.confluent_config(), "group.id": f"{run.app_id}-watch",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(run.topics["fleet"], p, -2) for p in range(run.partitions)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            worker.check()
            for m in c.consume(100, timeout=0.05):
                if m.error():
                    continue
                rec = json.loads(m.value())
                if rec["window_start"] == window_start:
                    return time.time(), rec
        raise BenchError(f"no fleet record for window {window_start} after {timeout_s} s:\n"
                         f"{worker.tail()}")
    finally:
        c.close()


def bare_consumer(run: Run, expected_messages: int) -> dict[str, float]:
    """The ceiling: confluent-kafka consume + json.loads of the same input messages."""
    c = Consumer({**run.kafka.confluent_config(), "group.id": f"{run.app_id}-ceiling",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 10_485_760})
    c.assign([TopicPartition(run.topics[k], p, -2) for k in ("telemetry", "flops")
              for p in range(run.partitions)])
    n = samples = 0
    started = None
    deadline = time.monotonic() + 300
    try:
        while n < expected_messages and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise BenchError(f"consume error: {m.error()}")
                    continue
                if started is None:
                    started = time.perf_counter()
                obj = json.loads(m.value())
                n += 1
                if obj["events"][0]["schema"] == "gpu_sample/1":
                    samples += len(obj["events"])
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        c.close()
    if n < expected_messages:
        raise BenchError(f"bare consumer read {n} of {expected_messages} messages")
    return {"seconds": elapsed, "messages": n, "samples": samples,
            "samples_per_s": samples / elapsed}


def faust_floor_worker() -> int:
    """A bare Faust agent on the throughput topics (``BENCH_FLOOR_*`` env): the same
    iteration as the stream stage (noack ``take_events``) plus ``json.loads`` and an ack
    per message, nothing else. Prints ``FLOOR <seconds> <cpu seconds>`` when done."""
    import faust  # noqa: F401  (imported for its side effects before the app)
    from faust.worker import Worker as FaustWorker

    from mfuio.faustapp import make_app

    env = os.environ
    target = int(env["BENCH_FLOOR_MESSAGES"])
    app = make_app(env["BENCH_FLOOR_APP"], KafkaSettings(),
                   partitions=int(env["MFU_KAFKA_PARTITIONS"]), stream_buffer_maxsize=32768,
                   stream_wait_empty=False)
    topic = app.topic(env["BENCH_FLOOR_TELEMETRY"], env["BENCH_FLOOR_FLOPS"],
                      key_serializer="raw", value_serializer="raw")
    state: dict[str, float] = {"n": 0}

    @app.agent(topic)
    async def floor(stream: Any) -> None:
        async for events in stream.noack().take_events(500, within=0.02):
            if "t0" not in state:
                state["t0"], state["c0"] = time.perf_counter(), time.process_time()
            for ev in events:
                json.loads(ev.message.value)
                ev.ack()
            state["n"] += len(events)
            if state["n"] >= target:
                wall = time.perf_counter() - state["t0"]
                cpu = time.process_time() - state["c0"]
                sys.__stdout__.write(f"FLOOR {wall} {cpu}\n")
                sys.__stdout__.flush()
                state["n"] = -math.inf

    FaustWorker(app, loglevel="WARNING", quiet=True,
                redirect_stdouts=False).execute_from_commandline()
    return 0


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a still-running child's process group (it started its own session), SIGKILL
    after 30 s of no exit."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def faust_floor(run: Run, messages: int, workdir: Path) -> dict[str, float]:
    """Run :func:`faust_floor_worker` as a subprocess on ``run``'s input topics."""
    env = run.env({})
    env.update({"BENCH_FLOOR_MESSAGES": str(messages), "BENCH_FLOOR_APP": f"{run.app_id}-floor",
                "BENCH_FLOOR_TELEMETRY": run.topics["telemetry"],
                "BENCH_FLOOR_FLOPS": run.topics["flops"]})
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from bench.streams import "
                             "faust_floor_worker; sys.exit(faust_floor_worker())"],
                            env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    output = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "FLOOR " in line:  # after any terminal control codes Faust writes
                _, wall, cpu = line[line.index("FLOOR "):].split()
                return {"seconds": float(wall), "cpu_seconds": float(cpu)}
        raise BenchError("bare Faust agent exited early:\n" + "".join(output[-30:]))
    finally:
        _stop_group(proc)
        with contextlib.suppress(Exception):
            run.admin.delete_topics([f"{run.app_id}-floor-__assignor-__leader"])


# --------------------------------------------------------------------------- the peer

PEER_DIR = Path(__file__).resolve().parent / "peers"
PEER_REQUIREMENTS = PEER_DIR / "requirements-quixstreams.txt"


def peer_python() -> Path:
    """The Python of the quixstreams peer's own venv, made once in the service cache.

    quixstreams 3.28 pins confluent-kafka < 2.13 and pydantic < 2.14, older than this
    project's pins, so the peer cannot share our venv; its venv is installed from the
    pinned ``bench/peers/requirements-quixstreams.txt`` (about a minute, once).
    """
    from devenv.paths import cache_dir

    pins = PEER_REQUIREMENTS.read_text()
    version = next(line.split("==")[1] for line in pins.splitlines()
                   if line.startswith("quixstreams=="))
    venv = cache_dir() / "bench" / f"quixstreams-{version}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == pins:
        return python
    print(f"bench: installing the quixstreams {version} peer into {venv} (once)",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-r",
                    str(PEER_REQUIREMENTS)], check=True)
    stamp.write_text(pins)
    return python


def quixstreams_peer(run: Run, nodes: int, last_window_s: float, windows: WindowSettings,
                     workdir: Path, timeout_s: float) -> dict[str, float]:
    """Run ``bench/peers/quixstreams_node.py`` on ``run``'s input topics (same messages as
    the worker): seconds from its first message to every node's last window emitted, the
    windows it emitted and how many of them were wrong (node MFU != ``BENCH_MFU`` or
    GPU-seconds != GPUs x window)."""
    env = dict(os.environ)
    env.update({"PEER_BOOTSTRAP": run.kafka.bootstrap, "PEER_TELEMETRY": run.topics["telemetry"],
                "PEER_FLOPS": run.topics["flops"], "PEER_OUTPUT": run.topics["peer"],
                "PEER_GROUP": f"{run.app_id}-peer", "PEER_WINDOW_S": str(windows.size_s),
                "PEER_GRACE_S": str(windows.grace_s),
                "PEER_PEAK_FLOPS_PER_S": repr(peak_flops_per_s(GPU, "bf16")),
                "PEER_LAST_WINDOW_S": repr(last_window_s), "PEER_NODES": str(nodes),
                "PEER_EXPECT_MFU": repr(BENCH_MFU),
                "PEER_EXPECT_GPU_S": repr(GPUS_PER_NODE * windows.size_s),
                "PEER_STATE_DIR": str(workdir / "peer-state")})
    proc = subprocess.Popen([str(peer_python()), str(PEER_DIR / "quixstreams_node.py")],
                            env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    output: list[str] = []
    timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("PEER "):
                _, wall, cpu, count, wrong = line.split()
                return {"seconds": float(wall), "cpu_seconds": float(cpu),
                        "windows": int(count), "wrong_windows": int(wrong),
                        "wrong_examples": [x.strip() for x in output
                                           if x.startswith("peer: wrong window")]}
        rc = proc.wait(30)
        raise BenchError(f"quixstreams peer exited early (exit status {rc}):\n"
                         + "".join(output[-30:]))
    finally:
        timer.cancel()
        _stop_group(proc)
        for name in run.admin.list_topics(timeout=10).topics:
            if name.startswith(f"{run.app_id}-peer") or name.startswith(f"repartition__{run.app_id}-peer") \
                    or name.startswith(f"changelog__{run.app_id}-peer"):
                with contextlib.suppress(Exception):
                    run.admin.delete_topics([name])


def _mfu_ok(rec: dict[str, Any], gpus: int | None = None) -> bool:
    """A fleet record holds the feed's MFU (and, given ``gpus``, that many GPUs)."""
    return (rec["mfu"] is not None and abs(rec["mfu"] - BENCH_MFU) < 1e-9
            and (gpus is None or rec["gpus"] == gpus))


def bench_throughput(kafka: KafkaSettings, args: argparse.Namespace) -> dict[str, Any]:
    windows = WindowSettings(size_s=args.window_s, grace_s=args.grace_s)
    seconds = math.ceil(args.samples / (args.nodes * GPUS_PER_NODE))
    seconds = max(int(math.ceil(seconds / windows.size_s) * windows.size_s), int(windows.size_s))
    envelope_s = int(args.envelope_s)
    if envelope_s < 1 or seconds % envelope_s or int(windows.size_s) % envelope_s:
        raise BenchError(f"--envelope-s {args.envelope_s}: must be a whole number of seconds "
                         f"dividing the window ({windows.size_s} s)")
    samples = seconds * args.nodes * GPUS_PER_NODE
    run = Run(kafka, args.partitions, "tp")
    run.create()
    workdir = Path(tempfile.mkdtemp(prefix="mfu-bench-streams-"))
    try:
        t = time.perf_counter()
        messages = produce_backlog(run, args.nodes, seconds, windows, envelope_s)
        produce_s = time.perf_counter() - t
        ceiling = bare_consumer(run, messages)
        floor = faust_floor(run, messages, workdir)
        last_ws = float(T0 + seconds - windows.size_s)
        window_env = {"size_s": windows.size_s, "grace_s": windows.grace_s}
        tree = baseline_tree(args.baseline_ref, workdir) if args.baseline_ref else None
        rounds: list[dict[str, Any]] = []
        for r in range(max(1, args.rounds)):
            # Each round: the peer, the baseline worker, then this worker, each on the same
            # backlog with its own consumer group and output topics; alternating them
            # round by round spreads a noisy machine over all three.
            rr = run if r == 0 else run.variant(f"r{r}")
            if r:
                rr.create()
            rdir = workdir / f"round{r}"
            rdir.mkdir()
            try:
                peer = (None if args.no_peer else
                        quixstreams_peer(rr, args.nodes, last_ws, windows, rdir, args.timeout_s))
                baseline = None
                if tree is not None:
                    base_run = rr.variant("base")
                    base_run.create()
                    try:
                        baseline = measure_worker(base_run, base_run.env(window_env), rdir,
                                                  last_ws, args.timeout_s, source=tree,
                                                  name="baseline")
                    finally:
                        base_run.delete()
                measured = measure_worker(rr, rr.env(window_env), rdir, last_ws, args.timeout_s,
                                          args.profile if r == 0 else None)
            finally:
                if r:
                    rr.delete()
            rounds.append({"worker": measured, "peer": peer, "baseline": baseline})
        elapsed = statistics.median(x["worker"]["seconds"] for x in rounds)
        # The record and CPU of the median round (the first of two middle ones).
        mid = sorted(rounds, key=lambda x: x["worker"]["seconds"])[(len(rounds) - 1) // 2]
        measured, rec = mid["worker"], mid["worker"]["record"]
        peers = [x["peer"] for x in rounds if x["peer"] is not None]
        peer = None
        if peers:
            peer = {"seconds": statistics.median(p["seconds"] for p in peers),
                    "cpu_seconds": statistics.median(p["cpu_seconds"] for p in peers),
                    "windows": min(p["windows"] for p in peers),
                    "wrong_windows": sum(p["wrong_windows"] for p in peers),
                    "wrong_examples": [e for p in peers for e in p["wrong_examples"]][:10]}
        bases = [x["baseline"] for x in rounds if x["baseline"] is not None]
        baseline = None
        if bases:
            baseline = {"seconds": statistics.median(b["seconds"] for b in bases),
                        "cpu_seconds": statistics.median(b["cpu_seconds"] or 0.0 for b in bases),
                        "ok": all(_mfu_ok(b["record"]) for b in bases)}
        gpus = args.nodes * GPUS_PER_NODE
        rate = samples / elapsed
        shutil.rmtree(workdir, ignore_errors=True)
        return {
            "nodes": args.nodes, "gpus": gpus, "event_seconds": seconds,
            "gpu_samples": samples, "flop_reports": samples, "messages": messages,
            "partitions": args.partitions, "envelope_s": envelope_s, "produce_s": produce_s,
            "rounds": len(rounds),
            "rounds_worker_samples_per_s": [samples / x["worker"]["seconds"] for x in rounds],
            "rounds_peer_samples_per_s": [samples / p["seconds"] for p in peers],
            "rounds_baseline_samples_per_s": [samples / b["seconds"] for b in bases],
            "worker_s": elapsed, "worker_samples_per_s": rate,
            "worker_events_per_s": 2 * samples / elapsed,
            "worker_cpu_s": measured["cpu_seconds"],
            "baseline_ref": args.baseline_ref,
            "baseline_s": baseline["seconds"] if baseline else None,
            "baseline_cpu_s": baseline["cpu_seconds"] if baseline else None,
            "baseline_samples_per_s": samples / baseline["seconds"] if baseline else None,
            "ratio_to_baseline": baseline["seconds"] / elapsed if baseline else None,
            "baseline_ok": baseline["ok"] if baseline else None,
            "ceiling_s": ceiling["seconds"], "ceiling_samples_per_s": ceiling["samples_per_s"],
            "ratio": rate / ceiling["samples_per_s"],
            "faust_floor_s": floor["seconds"], "faust_floor_cpu_s": floor["cpu_seconds"],
            "faust_floor_samples_per_s": samples / floor["seconds"],
            "ratio_to_faust_floor": rate / (samples / floor["seconds"]),
            "peer": "quixstreams " + PEER_REQUIREMENTS.read_text().split("quixstreams==")[1]
            .split()[0] if peer else None,
            "peer_s": peer["seconds"] if peer else None,
            "peer_cpu_s": peer["cpu_seconds"] if peer else None,
            "peer_samples_per_s": samples / peer["seconds"] if peer else None,
            "ratio_to_peer": rate / (samples / peer["seconds"]) if peer else None,
            "peer_windows": peer["windows"] if peer else None,
            "peer_wrong_windows": peer["wrong_windows"] if peer else None,
            "peer_wrong_examples": peer["wrong_examples"] if peer else None,
            # every node-window of the feed out once, each with MFU 0.4 over 80 GPU-s
            "peer_ok": (peer["wrong_windows"] == 0
                        and peer["windows"] == args.nodes * seconds // int(windows.size_s))
            if peer else True,
            "last_window_fleet_mfu": rec["mfu"], "last_window_gpus": rec["gpus"],
            # every round's last fleet window: MFU 0.4 over every GPU
            "mfu_ok": all(_mfu_ok(x["worker"]["record"], gpus) for x in rounds),
            "target_samples_per_s": TARGET_SAMPLES_PER_S,
            "target_met": rate >= TARGET_SAMPLES_PER_S,
            "profile": str(args.profile) if args.profile else None,
        }
    finally:
        run.delete()


# --------------------------------------------------------------------------- latency


class OutputWatcher(threading.Thread):
    """Arrival wall time of every node record on the output topic."""

    def __init__(self, run: Run) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.seen: dict[tuple[str, float], float] = {}
        self.stop_event = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            c = Consumer({**self.run_.kafka.confluent_config(),
                          "group.id": f"{self.run_.app_id}-lat", "enable.auto.commit": False,
                          "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
            c.assign([TopicPartition(self.run_.topics["node"], p, -2)
                      for p in range(self.run_.partitions)])
            while not self.stop_event.is_set():
                for m in c.consume(100, timeout=0.05):
                    if not m.error():
                        rec = json.loads(m.value())
                        self.seen.setdefault((rec["key"], rec["window_start"]), time.time())
            c.close()
        except Exception as exc:  # reported by the caller
            self.error = exc


class InfluxWatcher(threading.Thread):
    """First time each node point of this run is visible in InfluxDB (Flux polling)."""

    def __init__(self, influx: InfluxSettings, suffix: str, poll_s: float) -> None:
        super().__init__(daemon=True)
        from influxdb_client import InfluxDBClient

        token = influx.token.get_secret_value() if influx.token else ""
        self.client = InfluxDBClient(url=influx.url, token=token, org=influx.org, timeout=5000)
        self.query = (
            f'from(bucket: "{influx.bucket}") |> range(start: -15m) '
            f'|> filter(fn: (r) => r._measurement == "{influx.measurement}" and '
            f'r.scope == "node" and r._field == "gpus" and r.key =~ /{suffix}/)'
        )
        self.poll_s = poll_s
        self.seen: dict[tuple[str, float], float] = {}
        self.stop_event = threading.Event()
        self.error: Exception | None = None
        self.queries = 0

    def run(self) -> None:
        api = self.client.query_api()
        while not self.stop_event.is_set():
            started = time.time()
            try:
                tables = api.query(self.query)
                self.queries += 1
            except Exception as exc:
                self.error = exc
                time.sleep(self.poll_s)
                continue
            for table in tables:
                for r in table.records:
                    key = (r.values["key"], r.get_time().timestamp())
                    self.seen.setdefault(key, started)  # visible no later than the query
            self.stop_event.wait(max(0.0, self.poll_s - (time.time() - started)))
        self.client.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def bench_latency(kafka: KafkaSettings, influx: InfluxSettings,
                  args: argparse.Namespace) -> dict[str, Any]:
    windows = WindowSettings(size_s=args.window_s, grace_s=args.grace_s)
    if args.envelope_s < 1 or args.envelope_s > max(1.0, windows.grace_s):
        raise BenchError(f"--envelope-s {args.envelope_s}: the latency feed needs "
                         f"1 <= K <= grace ({windows.grace_s} s), as the agent does")
    run = Run(kafka, args.partitions, "lat")
    run.create()
    workdir = Path(tempfile.mkdtemp(prefix="mfu-bench-streams-"))
    flops = BENCH_MFU * peak_flops_per_s(GPU, "bf16")
    names = [run.node_name(i) for i in range(args.latency_nodes)]
    parts = {n: run.partition(n) for n in names}
    worker = Worker(run.env({"size_s": windows.size_s, "grace_s": windows.grace_s}), workdir,
                    None)
    out = OutputWatcher(run)
    inf = InfluxWatcher(influx, run.suffix, args.poll_s)
    producer = _producer(run.kafka)
    sent: list[tuple[str, float, float]] = []  # (node, window_start, wall at produce)
    try:
        wait_assigned(run, worker)
        out.start()
        inf.start()
        first = math.floor(time.time()) + 1
        stop = first + int(args.latency_s)
        k = int(args.envelope_s)
        for sec in range(first, stop + 1):
            time.sleep(max(0.0, sec - time.time()))
            if sec % k and sec != stop:
                continue  # an agent with MFU_AGENT_ENVELOPE_S = k flushes on multiples of k
            held = min(k if sec % k == 0 else sec % k, sec - first + 1)
            ts = float(sec)
            for n in names:
                key = n.encode()
                producer.produce(run.topics["telemetry"], sample_batch(n, ts, "l", held), key,
                                 partition=parts[n])
                producer.produce(run.topics["flops"], report_batch(n, ts, flops, "l", held),
                                 key, partition=parts[n])
                # latency from each sample's own time (the second its interval ended)
                for t in range(sec - held + 1, sec + 1):
                    ws = math.floor((t - 0.5) / windows.size_s) * windows.size_s
                    sent.append((n, ws, max(float(t), time.time()) if k == 1 else float(t)))
            producer.flush(10)
            worker.check()
        # Measured: windows closed on the watermark while the feed still ran.
        measured = {ws for _, ws, _ in sent if ws + windows.size_s + windows.grace_s < stop}
        if not measured:
            raise BenchError("--latency-s too short: no window closed during the feed")
        want = {(n, ws) for n in names for ws in measured}
        deadline = time.monotonic() + 60
        while not (want <= set(out.seen) and want <= set(inf.seen)):
            worker.check()
            if time.monotonic() > deadline:
                raise BenchError(f"windows missing after 60 s: Kafka "
                                 f"{len(want - set(out.seen))}, InfluxDB "
                                 f"{len(want - set(inf.seen))} (influx error: {inf.error})\n"
                                 f"{worker.tail()}")
            time.sleep(0.1)
    finally:
        out.stop_event.set()
        inf.stop_event.set()
        worker.stop()
        out.join(5)
        inf.join(10)
        run.delete()
        shutil.rmtree(workdir, ignore_errors=True)
    kafka_lat = [out.seen[(n, ws)] - t for n, ws, t in sent if ws in measured]
    influx_lat = [inf.seen[(n, ws)] - t for n, ws, t in sent if ws in measured]
    bound = windows.size_s + windows.grace_s + 2.0
    p99_influx = _percentile(influx_lat, 0.99)
    return {
        "seconds": args.latency_s, "nodes": args.latency_nodes,
        "gpu_samples_per_s": args.latency_nodes * GPUS_PER_NODE,
        "window_s": windows.size_s, "grace_s": windows.grace_s,
        "windows_measured": len(measured), "samples_measured": len(kafka_lat) * GPUS_PER_NODE,
        "poll_s": args.poll_s,
        "to_kafka_p50_s": _percentile(kafka_lat, 0.5),
        "to_kafka_p99_s": _percentile(kafka_lat, 0.99),
        "to_kafka_max_s": max(kafka_lat),
        "to_influx_p50_s": _percentile(influx_lat, 0.5),
        "to_influx_p99_s": p99_influx,
        "to_influx_max_s": max(influx_lat),
        "target_p99_s": bound, "target_met": p99_influx <= bound,
    }


# --------------------------------------------------------------------------- CLI


def _check_services(kafka: KafkaSettings, influx: InfluxSettings, need_influx: bool) -> None:
    hint = 'run `eval "$(mfu dev up)"` first (or set MFU_KAFKA_* / MFU_INFLUX_*)'
    try:
        AdminClient({**kafka.confluent_config(), "socket.timeout.ms": 5000,
                     "log_level": 0}).list_topics(timeout=5)
    except Exception as exc:
        raise BenchError(f"no Kafka at {kafka.bootstrap} ({exc}); {hint}") from None
    if need_influx:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{influx.url.rstrip('/')}/ping", timeout=5):
                pass
        except Exception as exc:
            raise BenchError(f"no InfluxDB at {influx.url} ({exc}); {hint}") from None
        if influx.token is None:
            raise BenchError(f"MFU_INFLUX_TOKEN or MFU_INFLUX_TOKEN_FILE is not set; {hint}")


def _print(result: dict[str, Any]) -> None:
    tp = result.get("throughput")
    if tp:
        print(f"throughput: {tp['gpu_samples']:,} GPU samples + {tp['flop_reports']:,} FLOP "
              f"reports ({tp['nodes']} nodes x {GPUS_PER_NODE} GPUs x {tp['event_seconds']} s) "
              f"in {tp['messages']:,} batch/1 messages of {tp['envelope_s']} s each, "
              f"{tp['partitions']} partitions")
        if tp["rounds"] > 1:
            def each(key: str) -> str:
                return ", ".join(f"{v:,.0f}" for v in tp[key])
            print(f"  medians of {tp['rounds']} rounds (peer, baseline, worker alternating); "
                  f"per round: worker {each('rounds_worker_samples_per_s')}"
                  + (f"; peer {each('rounds_peer_samples_per_s')}"
                     if tp["rounds_peer_samples_per_s"] else "")
                  + (f"; baseline {each('rounds_baseline_samples_per_s')}"
                     if tp["rounds_baseline_samples_per_s"] else ""))
        print(f"  worker (1 process)     {tp['worker_samples_per_s']:>10,.0f} GPU samples/s "
              f"({tp['worker_events_per_s']:,.0f} events/s; {tp['worker_s']:.2f} s from "
              "partitions assigned to the last window's fleet record"
              + (f", {tp['worker_cpu_s']:.2f} s CPU)" if tp.get("worker_cpu_s") is not None
                 else ")"))
        if tp.get("baseline_ref"):
            print(f"  worker at {tp['baseline_ref'][:12]:<12} {tp['baseline_samples_per_s']:>10,.0f} "
                  f"GPU samples/s (that version's worker, same input, same run; "
                  f"{tp['baseline_s']:.2f} s, {tp['baseline_cpu_s'] or 0:.2f} s CPU; fleet MFU "
                  f"{'ok' if tp['baseline_ok'] else 'WRONG'})")
        print(f"  bare consumer + JSON   {tp['ceiling_samples_per_s']:>10,.0f} GPU samples/s "
              f"(ceiling; {tp['ceiling_s']:.2f} s)")
        print(f"  bare Faust agent       {tp['faust_floor_samples_per_s']:>10,.0f} GPU samples/s "
              f"(same iteration + JSON, no windowing: the floor of a Faust worker; "
              f"{tp['faust_floor_s']:.2f} s, {tp['faust_floor_cpu_s']:.2f} s CPU)")
        if tp.get("peer"):
            print(f"  {tp['peer']:<22} {tp['peer_samples_per_s']:>10,.0f} GPU samples/s "
                  f"(the peer: node-level windows only, no validation/dedup/roll-up/InfluxDB; "
                  f"{tp['peer_s']:.2f} s, {tp['peer_cpu_s']:.2f} s CPU; "
                  f"{tp['peer_windows']} node-windows, {tp['peer_wrong_windows']} wrong: "
                  f"{'ok' if tp['peer_ok'] else 'WRONG'})")
        for line in tp.get("peer_wrong_examples") or []:
            print(f"    {line}")
        print(f"  product/limit          {tp['ratio']:>10.2f}   (worker / bare consumer + JSON; "
              f"worker / bare Faust {tp['ratio_to_faust_floor']:.2f})")
        if tp.get("peer"):
            print(f"  product/peer           {tp['ratio_to_peer']:>10.2f}   (worker / "
                  f"{tp['peer']}, same input, same run)")
        if tp.get("baseline_ref"):
            print(f"  product/baseline       {tp['ratio_to_baseline']:>10.2f}   (worker / worker "
                  f"at {tp['baseline_ref']}, same input, same run)")
        print(f"  fleet MFU of the last window {tp['last_window_fleet_mfu']} over "
              f"{tp['last_window_gpus']} GPUs ({'ok' if tp['mfu_ok'] else 'WRONG'})")
        print(f"  target >= {TARGET_SAMPLES_PER_S:,} GPU samples/s per worker: "
              f"{'met' if tp['target_met'] else 'MISSED'}")
        if tp["profile"]:
            print(f"  cProfile of the worker: {tp['profile']}")
    lat = result.get("latency")
    if lat:
        print(f"latency: {lat['seconds']:.0f} s paced at {lat['gpu_samples_per_s']:,} GPU "
              f"samples/s ({lat['nodes']} nodes), window {lat['window_s']:.0f} s, grace "
              f"{lat['grace_s']:.0f} s; {lat['windows_measured']} windows, "
              f"{lat['samples_measured']:,} samples measured")
        print(f"  event -> node record on Kafka     p50 {lat['to_kafka_p50_s']:5.2f} s   "
              f"p99 {lat['to_kafka_p99_s']:5.2f} s   max {lat['to_kafka_max_s']:5.2f} s")
        print(f"  event -> InfluxDB point visible   p50 {lat['to_influx_p50_s']:5.2f} s   "
              f"p99 {lat['to_influx_p99_s']:5.2f} s   max {lat['to_influx_max_s']:5.2f} s   "
              f"(polled every {lat['poll_s']} s)")
        print(f"  target p99 <= window + grace + 2 s = {lat['target_p99_s']:.0f} s: "
              f"{'met' if lat['target_met'] else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mfu bench streams", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("throughput", "latency"), help="run one part")
    parser.add_argument("--samples", type=int, default=400_000,
                        help="GPU samples in the throughput feed (as many FLOP reports)")
    parser.add_argument("--nodes", type=int, default=100, help="throughput feed nodes")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--grace-s", type=float, default=2.0)
    parser.add_argument("--timeout-s", type=float, default=600.0,
                        help="give up on the throughput worker after this long")
    parser.add_argument("--envelope-s", type=int, default=1,
                        help="seconds of one node per input message (the agent's "
                        "MFU_AGENT_ENVELOPE_S); divides the window")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the quixstreams peer (it needs its own venv, made once)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the peer, the baseline and the worker this many times, "
                        "alternating, and report medians (a noisy machine)")
    parser.add_argument("--baseline-ref", metavar="REF",
                        help="also run the worker of this git commit (e.g. the one an issue "
                        "measured) on the same backlog and print product/baseline")
    parser.add_argument("--profile", type=Path, help="run the throughput worker under "
                        "cProfile, writing stats here (read with python -m pstats)")
    parser.add_argument("--latency-s", type=float, default=30.0, help="paced feed length")
    parser.add_argument("--latency-nodes", type=int, default=50)
    parser.add_argument("--poll-s", type=float, default=0.2, help="InfluxDB poll interval")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    kafka, influx = KafkaSettings(), InfluxSettings()
    result: dict[str, Any] = {"kafka": kafka.bootstrap, "influx": influx.url,
                              "cpus": os.cpu_count()}
    try:
        _check_services(kafka, influx, need_influx=args.only != "throughput")
        if args.only in (None, "throughput"):
            result["throughput"] = bench_throughput(kafka, args)
        if args.only in (None, "latency"):
            result["latency"] = bench_latency(kafka, influx, args)
    except BenchError as exc:
        print(f"mfu bench streams: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"mfu bench streams: Kafka {kafka.bootstrap}, InfluxDB {influx.url}, "
              f"{os.cpu_count()} CPUs")
        _print(result)
    ok = all(part.get("target_met", True) and part.get("mfu_ok", True)
             and part.get("peer_ok", True)
             for part in (result.get("throughput") or {}, result.get("latency") or {}))
    return 0 if ok else 1
