"""Helpers for the stream-stage integration tests: run real `mfu streams` workers as
subprocesses on per-test topics, feed hand-built events, read the outputs back from Kafka
and InfluxDB, and compute the expected window values from the peak catalog.

Nothing here is a test; ``tests/integration/test_streams_*.py`` use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from mfu.events import Event, FlopReport, GpuSample, batch
from mfu.peaks import peak_flops_per_s

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0  # a window boundary for 10 s windows, far in the past
WINDOW_S = 10.0
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
UNKNOWN_GPU = "NVIDIA Imaginary X1"
KINDS = ("telemetry", "flops", "workload", "node", "fleet", "deadletter", "late", "partials")
OUTPUT_KINDS = ("workload", "node", "fleet")


def peak(name: str = H100, precision: str = "bf16", mig: str | None = None) -> float:
    """Dense peak FLOP/s of one GPU (slice), straight from the catalog."""
    return peak_flops_per_s(name, precision, mig_profile=mig)  # type: ignore[arg-type]


def partition_for(key: str, partitions: int) -> int:
    """The partition librdkafka's default (consistent) partitioner gives ``key``: CRC32."""
    return zlib.crc32(key.encode()) % partitions


def key_in_partition(prefix: str, partition: int, partitions: int) -> str:
    """A unique key starting with ``prefix`` that hashes to ``partition``."""
    for i in range(10_000):
        key = f"{prefix}-{i}"
        if partition_for(key, partitions) == partition:
            return key
    raise AssertionError("no key found")  # pragma: no cover


# --------------------------------------------------------------------------- events


def sample(node: str, gpu: str, ts: float, workloads: list[str], *, name: str = H100,
           mig: str | None = None, sm: float = 0.9, tensor: float | None = 0.5,
           interval: float = 1.0, index: int = 0, eid: str | None = None) -> GpuSample:
    """A ``gpu_sample/1`` covering ``[ts - interval, ts)``."""
    return GpuSample(
        event_id=eid or f"s:{node}:{gpu}:{ts}", node=node, gpu_uuid=gpu, gpu_index=index,
        gpu_name=name, mig_profile=mig, ts=ts, interval_s=interval, sm_util=sm,
        mem_util=0.3, tensor_active=tensor, workloads=workloads,
    )


def report(workload: str, node: str, gpu: str, start: float, end: float, flops: float, *,
           rank: int = 0, precision: str = "bf16", eid: str | None = None) -> FlopReport:
    """A ``flop_report/1`` of ``flops`` model FLOPs in ``[start, end)``."""
    return FlopReport(
        event_id=eid or f"r:{workload}:{rank}:{gpu}:{start}", workload=workload, rank=rank,
        node=node, gpu_uuid=gpu, start=start, end=end, flops=flops, precision=precision,
    )


@dataclass
class Topics:
    """Per-test topic names, app id and fleet name (all unique)."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __getitem__(self, kind: str) -> str:
        return f"it.{kind}.{self.suffix}"

    @property
    def app_id(self) -> str:
        return f"it-streams-{self.suffix}"

    @property
    def fleet(self) -> str:
        return f"fleet-{self.suffix}"

    def env(self) -> dict[str, str]:
        env = {f"MFU_STREAMS_{k.upper()}_TOPIC": self[k] for k in KINDS}
        env["MFU_STREAMS_APP_ID"] = self.app_id
        env["MFU_STREAMS_FLEET"] = self.fleet
        return env


def worker_env(topics: Topics, bootstrap: str, influx: Any, *, partitions: int = 4,
               grace_s: float = 2.0, idle_timeout_s: float = 3.0,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a worker subprocess: services, per-test topics, short timeouts."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MFU_STREAMS_", "MFU_WINDOW_", "MFU_INFLUX_", "MFU_KAFKA_"))}
    env.update(topics.env())
    env.update({
        "MFU_KAFKA_BOOTSTRAP": bootstrap,
        "MFU_KAFKA_PARTITIONS": str(partitions),
        "MFU_WINDOW_SIZE_S": str(WINDOW_S),
        "MFU_WINDOW_GRACE_S": str(grace_s),
        "MFU_WINDOW_IDLE_TIMEOUT_S": str(idle_timeout_s),
        "MFU_STREAMS_TICK_S": "0.5",
        "MFU_INFLUX_URL": influx.url,
        "MFU_INFLUX_TOKEN": influx.token,
        "MFU_INFLUX_ORG": influx.org,
        "MFU_INFLUX_BUCKET": influx.bucket,
        "MFU_INFLUX_API": influx.api,
        "MFU_INFLUX_MAX_RETRY_DELAY_S": "1",
        "MFU_INFLUX_TIMEOUT_S": "3",
        # Faust (aiokafka): notice a killed member quickly.
        "BROKER_SESSION_TIMEOUT": "6",
        "BROKER_HEARTBEAT_INTERVAL": "1",
        "BROKER_REBALANCE_TIMEOUT": "20",
        "PYTHONPATH": str(REPO),
    })
    env.update(extra or {})
    return env


class Worker:
    """`mfu streams` as a subprocess (own process group), logging to ``log_path``."""

    def __init__(self, env: dict[str, str], workdir: Path, *, workers: int = 1,
                 name: str = "worker") -> None:
        self.env = env
        self.workdir = workdir
        self.workers = workers
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Worker:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mfucli", "streams", "--workers", str(self.workers),
                 "--log-level", os.environ.get("MFU_IT_WORKER_LOG_LEVEL", "WARNING")],
                env=self.env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its children (its process group): a crash."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful), then SIGKILL of the group after ``timeout_s``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def wait_for_group(bootstrap: str, group: str, members: int, topic: str,
                   timeout_s: float = 60.0, worker: Worker | None = None) -> list[set[int]]:
    """Wait until consumer group ``group`` is Stable with ``members`` members that own
    every partition of ``topic`` between them; returns each member's partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    last = "no description yet"
    while time.monotonic() < deadline:
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker exited early:\n{worker.log_tail()}")
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            per_member = [{tp.partition
                           for tp in (m.assignment.topic_partitions if m.assignment else [])
                           if tp.topic == topic} for m in desc.members]
            owned = set().union(*per_member)
            parts = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
            last = f"state {desc.state}, {len(desc.members)} members, owns {sorted(owned)}"
            if (str(desc.state).endswith("STABLE") and len(desc.members) == members
                    and len(owned) == parts):
                return per_member
        except Exception as exc:  # group not created yet
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    tail = worker.log_tail() if worker else ""
    raise AssertionError(f"group {group} not ready after {timeout_s} s: {last}\n{tail}")


# --------------------------------------------------------------------------- Kafka I/O


class Feeder:
    """Produces events keyed by node (explicit partition = the default partitioner's)."""

    def __init__(self, bootstrap: str, topics: Topics, partitions: int = 4) -> None:
        self.topics = topics
        self.partitions = partitions
        self.errors: list[str] = []
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "linger.ms": 2})

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def raw(self, kind: str, key: str, value: bytes) -> None:
        self.producer.produce(self.topics[kind], key=key.encode(), value=value,
                              partition=partition_for(key, self.partitions),
                              on_delivery=self._delivered)
        self.producer.poll(0)

    def events(self, events: Iterable[Event]) -> None:
        """One ``batch/1`` message per (topic, node) group of consecutive events."""
        groups: dict[tuple[str, str], list[Event]] = {}
        for ev in events:
            kind = "telemetry" if isinstance(ev, GpuSample) else "flops"
            groups.setdefault((kind, ev.node), []).append(ev)  # type: ignore[attr-defined]
        for (kind, node), evs in groups.items():
            self.raw(kind, node, batch(evs))

    def single(self, ev: Event) -> None:
        kind = "telemetry" if isinstance(ev, GpuSample) else "flops"
        self.raw(kind, ev.node, ev.to_json())  # type: ignore[attr-defined]

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "messages left undelivered after 30 s"
        assert not self.errors, self.errors[:5]


class Collector:
    """Reads topics from the beginning (assign, no group) and keeps every record."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                  "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest",
                                  "topic.metadata.refresh.interval.ms": 1000})
        meta = self.consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p, -2) for t in topics for p in meta.topics[t].partitions]
        self.consumer.assign(tps)
        self.records: dict[str, list[dict[str, Any]]] = {t: [] for t in topics}
        self.keys: dict[str, list[bytes | None]] = {t: [] for t in topics}

    def poll(self, duration_s: float = 0.2) -> None:
        deadline = time.monotonic() + duration_s
        while True:
            left = deadline - time.monotonic()
            msgs = self.consumer.consume(1000, timeout=max(0.0, min(left, 0.2)))
            for m in msgs:
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise AssertionError(f"consume error: {m.error()}")
                    continue
                self.records[m.topic()].append(json.loads(m.value()))
                self.keys[m.topic()].append(m.key())
            if left <= 0 and not msgs:
                return

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str,
                 worker: Worker | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll(0.3)
            if predicate():
                return
            if worker is not None and worker.proc is not None and not worker.alive():
                raise AssertionError(f"worker exited while waiting for {what}:\n"
                                     f"{worker.log_tail()}")
            if time.monotonic() > deadline:
                tail = f"\nworker log:\n{worker.log_tail()}" if worker else ""
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{tail}")

    def close(self) -> None:
        self.consumer.close()


def windows_by_key(records: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """Records by (key, window_start); a repeated window must carry identical content
    (an at-least-once redelivery), else AssertionError."""
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for rec in records:
        k = (rec["key"], rec["window_start"])
        if k in out:
            assert out[k] == rec, f"window {k} emitted twice with different content:\n" \
                                  f"{out[k]}\n{rec}"
        out[k] = rec
    return out


# --------------------------------------------------------------------------- HTTP


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A worker's ``/metrics``: (sample name, its labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# --------------------------------------------------------------------------- InfluxDB


def influx_points(influx: Any, where: str) -> list[dict[str, Any]]:
    """Points of measurement ``mfu`` matching an InfluxQL ``where`` clause (InfluxDB 1.8
    /query, token auth), each as {column: value} with tags, fields and ``time`` in ns."""
    db = influx.bucket.split("/")[0]
    q = f'SELECT * FROM "mfu" WHERE {where}'
    url = f"{influx.url}/query?" + urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"})
    req = urllib.request.Request(url, headers={"Authorization": f"Token {influx.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
    result = body["results"][0]
    if "error" in result:
        raise AssertionError(f"InfluxQL error: {result['error']}")
    out = []
    for series in result.get("series", []):
        cols = series["columns"]
        for row in series["values"]:
            out.append({c: v for c, v in zip(cols, row, strict=True) if v is not None})
    return out


def influx_field_types(influx: Any) -> dict[str, str]:
    """Field name -> type of measurement ``mfu`` (SHOW FIELD KEYS)."""
    db = influx.bucket.split("/")[0]
    url = f"{influx.url}/query?" + urllib.parse.urlencode(
        {"db": db, "q": 'SHOW FIELD KEYS FROM "mfu"'})
    req = urllib.request.Request(url, headers={"Authorization": f"Token {influx.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
    series = body["results"][0].get("series", [])
    return {name: typ for s in series for name, typ in s["values"]}


def wait_for_points(influx: Any, topics: Topics, count: int, timeout_s: float,
                    worker: Worker) -> list[dict[str, Any]]:
    """The ``mfu`` points of this test's keys (``topics.suffix``) once there are at least
    ``count`` of them; AssertionError with the worker's log after ``timeout_s``."""
    where = f"\"key\" =~ /{topics.suffix}/"
    deadline = time.monotonic() + timeout_s
    while len(points := influx_points(influx, where)) < count:
        assert time.monotonic() < deadline, \
            f"{len(points)} of {count} points in InfluxDB\n{worker.log_tail()}"
        time.sleep(0.5)
    return points


def wait_influx_complete(influx: Any, topics: Topics, collector: Collector, windows: range,
                         timeout_s: float, worker: Worker) -> None:
    """Every output record collected for ``windows`` (window indexes from ``T0``) is in
    InfluxDB with the record's values; AssertionError naming how many are missing after
    ``timeout_s``."""
    records = [r for scope in OUTPUT_KINDS for r in collector.records[topics[scope]]
               if r["window_start"] < T0 + WINDOW_S * windows.stop]
    want = {(r["scope"], r["key"], round(r["window_start"] * 1e9)): r for r in records}
    deadline = time.monotonic() + timeout_s
    while True:
        points = {(p["scope"], p["key"], p["time"]): p
                  for p in influx_points(influx, f'"key" =~ /{topics.suffix}/')}
        if set(want) <= set(points):
            break
        assert time.monotonic() < deadline, \
            f"{len(set(want) - set(points))} windows missing in InfluxDB\n{worker.log_tail()}"
        time.sleep(0.5)
    for k, rec in want.items():
        assert_point_matches(points[k], rec)


def assert_point_matches(point: dict[str, Any], rec: dict[str, Any]) -> None:
    """An InfluxDB point carries the record's values (DESIGN.md §4)."""
    window_s = rec["window_end"] - rec["window_start"]
    assert point["scope"] == rec["scope"] and point["key"] == rec["key"]
    assert point["time"] == round(rec["window_start"] * 1e9)
    expected = {
        "achieved_tflops": rec["achieved_flops"] / window_s / 1e12,
        "peak_tflops": rec["peak_flops"] / window_s / 1e12,
        "gpu_seconds": rec["gpu_seconds"],
        "gpus": float(rec["gpus"]),
        "window_s": window_s,
    }
    if rec["mfu"] is not None:
        expected["mfu"] = rec["mfu"]
    else:
        assert "mfu" not in point, point
    for name, value in expected.items():
        assert point.get(name) == approx(value), (name, point, rec)


def approx(value: float, rel: float = 1e-9) -> Any:
    import pytest

    return pytest.approx(value, rel=rel, abs=1e-12)


# --------------------------------------------------------------------------- a small fleet


@dataclass
class FleetGpu:
    node: str
    uuid: str
    workload: str | None
    rank: int
    base_mfu: float  # MFU in window k is base_mfu + 0.01 * k (0 if no workload)


class SmallFleet:
    """Four nodes (one per partition) of two H100s: job 'a' on n0 + n1/g0, job 'b' on
    n1/g1 + n2, job 'c' on n3/g0, n3/g1 unallocated. MFU per GPU changes per window, so a
    result taken from the wrong window or GPU shows. Expected values are exact."""

    def __init__(self, topics: Topics, partitions: int = 4) -> None:
        self.topics = topics
        self.partitions = partitions
        sfx = topics.suffix
        self.nodes = [key_in_partition(f"{sfx}-n{p}", p, partitions) for p in range(4)]
        self.jobs = {j: f"job-{j}-{sfx}" for j in "abc"}
        plan = [(0, 0, "a", 0.30), (0, 1, "a", 0.32), (1, 0, "a", 0.34),
                (1, 1, "b", 0.50), (2, 0, "b", 0.52), (2, 1, "b", 0.54),
                (3, 0, "c", 0.20), (3, 1, None, 0.0)]
        ranks: dict[str, int] = {}
        self.gpus = []
        for n, g, job, mfu in plan:
            rank = 0
            if job:
                rank = ranks[job] = ranks.get(job, -1) + 1
            self.gpus.append(FleetGpu(self.nodes[n], f"{self.nodes[n]}-g{g}",
                                      self.jobs[job] if job else None, rank, mfu))
        self.peak = peak(H100)

    def mfu(self, g: FleetGpu, k: int) -> float:
        return g.base_mfu + 0.01 * k if g.workload else 0.0

    def second(self, i: int) -> list[Event]:
        """Telemetry and FLOP reports of second ``i`` (window ``i // 10``)."""
        k = int(i // WINDOW_S)
        out: list[Event] = []
        for g in self.gpus:
            # The unallocated GPU is idle by its counters: a known zero (DESIGN.md §8).
            out.append(sample(g.node, g.uuid, T0 + i + 1, [g.workload] if g.workload else [],
                              **({} if g.workload else {"sm": 0.0, "tensor": 0.0})))
            if g.workload:
                out.append(report(g.workload, g.node, g.uuid, T0 + i, T0 + i + 1,
                                  self.mfu(g, k) * self.peak, rank=g.rank))
        return out

    def feed(self, feeder: Feeder, seconds: Iterable[int]) -> None:
        for i in seconds:
            feeder.events(self.second(i))
        feeder.flush()

    def expected(self, k: int) -> dict[tuple[str, str], dict[str, Any]]:
        """(scope, key) -> expected values of window ``k``."""
        win = WINDOW_S * self.peak
        out: dict[tuple[str, str], dict[str, Any]] = {}
        groups: dict[tuple[str, str], list[FleetGpu]] = {}
        for g in self.gpus:
            groups.setdefault(("node", g.node), []).append(g)
            if g.workload:
                groups.setdefault(("workload", g.workload), []).append(g)
            groups.setdefault(("fleet", self.topics.fleet), []).append(g)
        for (scope, key), gs in groups.items():
            achieved = sum(self.mfu(g, k) * win for g in gs)
            exp: dict[str, Any] = {
                "window_start": T0 + k * WINDOW_S, "window_end": T0 + (k + 1) * WINDOW_S,
                "mfu": achieved / (len(gs) * win), "achieved_flops": achieved,
                "peak_flops": len(gs) * win, "gpu_seconds": WINDOW_S * len(gs),
                "gpus": len(gs), "late_events": 0, "duplicates": 0,
            }
            if scope != "node":
                exp["nodes"] = len({g.node for g in gs})
            if scope == "workload":
                exp["rank_mfu_min"] = min(self.mfu(g, k) for g in gs)
            else:
                alloc = [g for g in gs if g.workload]
                exp["allocation"] = len(alloc) / len(gs)
                exp["mfu_allocated"] = achieved / (len(alloc) * win)
            out[(scope, key)] = exp
        return out

    def keys(self, windows: Iterable[int]) -> dict[str, set[tuple[str, float]]]:
        out: dict[str, set[tuple[str, float]]] = {s: set() for s in OUTPUT_KINDS}
        for k in windows:
            for scope, key in self.expected(k):
                out[scope].add((key, T0 + k * WINDOW_S))
        return out

    def have(self, collector: Collector, windows: Iterable[int]) -> Callable[[], bool]:
        want = self.keys(windows)

        def check() -> bool:
            for scope, keys in want.items():
                got = {(r["key"], r["window_start"])
                       for r in collector.records[self.topics[scope]]}
                if not keys <= got:
                    return False
            return True

        return check

    def dump(self, collector: Collector) -> str:
        lines = []
        for scope in OUTPUT_KINDS:
            for r in collector.records[self.topics[scope]]:
                lines.append(f"{scope} {r['key']} {r['window_start'] - T0:.0f} mfu={r['mfu']} "
                             f"gpus={r['gpus']} nodes={r.get('nodes')} dup={r['duplicates']} "
                             f"late={r['late_events']} gpu_s={r['gpu_seconds']}")
        return "\n".join(lines)

    def check(self, collector: Collector, windows: Iterable[int]) -> int:
        """Every record of ``windows`` exact; repeats identical. Returns repeats seen."""
        repeats = 0
        for scope in OUTPUT_KINDS:
            raw = collector.records[self.topics[scope]]
            by_key = windows_by_key(raw)  # asserts repeats are identical
            repeats += len(raw) - len(by_key)
            for k in windows:
                for (sc, key), exp in self.expected(k).items():
                    if sc != scope:
                        continue
                    rec = by_key.get((key, T0 + k * WINDOW_S))
                    assert rec is not None, f"missing {scope} {key} window {k}"
                    for name, value in exp.items():
                        ok = rec[name] == approx(value) if isinstance(value, float) \
                            else rec[name] == value
                        assert ok, f"{scope} {key} window {k}: {name} = {rec[name]!r}, " \
                                   f"expected {value!r}\n{rec}\n{self.dump(collector)}"
        return repeats


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 4
                      ) -> list[int]:
    """Offsets ``group`` has committed on ``topic`` (-1001 where none)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in tps]
    finally:
        c.close()


def end_offsets(bootstrap: str, topic: str, partitions: int = 4) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)]
    finally:
        c.close()


def create_topics(admin: AdminClient, topics: Topics, partitions: int = 4) -> list[str]:
    from confluent_kafka.admin import NewTopic

    names = [topics[k] for k in KINDS]
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
        operation_timeout=30)
    for fut in futures.values():
        fut.result(timeout=60)
    return names


def delete_topics(admin: AdminClient, names: list[str], app_id: str | None = None) -> None:
    """Delete ``names`` and, given the worker's ``app_id``, its Faust internal topics."""
    if app_id:
        names = [*names, f"{app_id}-progress-changelog", f"{app_id}-__assignor-__leader"]
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # cleanup only
            fut.result(timeout=30)


# --------------------------------------------------------------------------- one run


class Stage:
    """One worker run on fresh per-test topics with the small fleet: topics created,
    a :class:`Worker` (not started), a :class:`Feeder` and a :class:`Collector` of the
    output topics (plus ``extra_outputs`` kinds). :meth:`close` stops the worker and
    deletes the topics.

    ``worker_influx``: the InfluxDB settings the worker writes to when they differ from
    the ones the test reads back through (a proxy in front of the server)."""

    def __init__(self, bootstrap: str, admin: AdminClient, influx: Any, workdir: Path, *,
                 partitions: int = 4, workers: int = 1, idle_timeout_s: float = 3.0,
                 extra_outputs: tuple[str, ...] = (), extra_env: dict[str, str] | None = None,
                 worker_influx: Any = None) -> None:
        self.bootstrap = bootstrap
        self.admin = admin
        self.influx = influx
        self.topics = Topics()
        self.names = create_topics(admin, self.topics, partitions)
        self.fleet = SmallFleet(self.topics, partitions)
        env = worker_env(self.topics, bootstrap, worker_influx or influx, partitions=partitions,
                         idle_timeout_s=idle_timeout_s, extra=extra_env)
        self.worker = Worker(env, workdir, workers=workers)
        self.feeder = Feeder(bootstrap, self.topics, partitions)
        self.collector = Collector(bootstrap, [self.topics[k]
                                               for k in (*OUTPUT_KINDS, *extra_outputs)])

    def close(self) -> None:
        self.worker.stop()
        self.collector.close()
        delete_topics(self.admin, self.names, self.topics.app_id)
