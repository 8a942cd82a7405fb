"""Fault test of the stream stage on a real broker and InfluxDB: paced input, the worker
SIGKILLed at seeded random moments three times (restarted at once, same host: static
membership gives it its partitions back), and an InfluxDB outage (a TCP proxy in front
of the shared server, stopped and started) in between.

Checked: after every kill, the committed offsets never pass a message whose results are
not durable (every input message below the committed offset has its node window on
Kafka and in InfluxDB; every partial below the partials' committed offset has its
workload/fleet record); at the end every window of every scope is exactly right on
Kafka (repeats identical) and in InfluxDB, and every input offset is committed (no
partition's commit is stuck). Seed: ``MFU_FAULT_SEED``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.integration.streams_harness import (
    OUTPUT_KINDS,
    T0,
    WINDOW_S,
    Collector,
    Stage,
    Topics,
    committed_offsets,
    end_offsets,
    influx_points,
    wait_for_group,
    wait_influx_complete,
)
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("MFU_FAULT_SEED", "20261204"))
SECONDS = 80  # event seconds fed: windows 0..7
PACE_S = 0.25  # wall seconds per event second
PARTITIONS = 4


def _read_all(bootstrap: str, topic: str) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """Every record of ``topic`` with its offset, per partition (up to the end now)."""
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    out: dict[int, list[tuple[int, dict[str, Any]]]] = {p: [] for p in range(PARTITIONS)}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS) if ends[p] > 0])
        left = {p for p in range(PARTITIONS) if ends[p] > 0}
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    left.discard(m.partition())
                    continue
                raise AssertionError(m.error())
            out[m.partition()].append((m.offset(), json.loads(m.value())))
            if m.offset() + 1 >= ends[m.partition()]:
                left.discard(m.partition())
        assert not left, f"could not read {topic} to its end"
    finally:
        c.close()
    return out


def _drain(collector: Collector, bootstrap: str, topics: Topics) -> None:
    """Poll until the collector holds every output record now on the broker."""
    want = {t: sum(end_offsets(bootstrap, topics[t], PARTITIONS)) for t in OUTPUT_KINDS}
    deadline = time.monotonic() + 30
    while any(len(collector.records[topics[t]]) < n for t, n in want.items()):
        assert time.monotonic() < deadline, "collector did not catch up"
        collector.poll(0.3)


def _check_commits(s: _Run, kill: int) -> None:
    """The worker is dead: nothing moves. Committed offsets must not pass results that
    are not durable."""
    _drain(s.collector, s.bootstrap, s.topics)
    node_windows = {(r["key"], r["window_start"])
                    for r in s.collector.records[s.topics["node"]]}
    points = {(p["scope"], p["key"], p["time"])
              for p in influx_points(s.influx, f'"key" =~ /{s.topics.suffix}/')}
    for kind in ("telemetry", "flops"):
        committed = committed_offsets(s.bootstrap, s.topics.app_id, s.topics[kind])
        s.commits.append((kill, kind, committed))
        for p, c in enumerate(committed):
            if c <= 0:
                continue  # nothing committed yet (-1001): nothing to check
            # Partition p holds node p only, one message per event second in order:
            # offset j is second j, in window j // 10. Committed c: seconds < c done.
            node = s.fleet.nodes[p]
            for k in range(int((c - 1) // WINDOW_S) + 1):
                ws = T0 + k * WINDOW_S
                assert (node, ws) in node_windows, \
                    f"kill {kill}: {kind}[{p}] committed {c} but node {node} window {k} " \
                    f"is not on Kafka"
                assert ("node", node, round(ws * 1e9)) in points, \
                    f"kill {kill}: {kind}[{p}] committed {c} but node {node} window {k} " \
                    f"is not in InfluxDB"
    rolled = {(r["scope"], r["key"], r["window_start"])
              for t in ("workload", "fleet") for r in s.collector.records[s.topics[t]]}
    committed = committed_offsets(s.bootstrap, s.topics.app_id, s.topics["partials"])
    s.commits.append((kill, "partials", committed))
    partials = _read_all(s.bootstrap, s.topics["partials"])
    for p, c in enumerate(committed):
        for offset, rec in partials[p]:
            if offset >= c or rec.get("schema") != "mfu_partial/1":
                continue
            k = (rec["scope"], rec["key"], rec["window_start"])
            assert k in rolled, f"kill {kill}: partials[{p}] committed {c} past offset " \
                                f"{offset} whose {k} record is not out"


class _Run(Stage):
    """A :class:`Stage` whose worker writes to InfluxDB through a stoppable TCP proxy."""

    def __init__(self, bootstrap: str, admin: AdminClient, influx: Any, workdir: Path,
                 *, idle_timeout_s: float = 10.0) -> None:
        target = urllib.parse.urlparse(influx.url)
        self.proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 8086).start()
        super().__init__(bootstrap, admin, influx, workdir, partitions=PARTITIONS,
                         idle_timeout_s=idle_timeout_s,
                         worker_influx=replace(influx, url=self.proxy.url))
        self.commits: list[tuple[int, str, list[int]]] = []
        self.fed = threading.Event()
        self.feed_error: list[BaseException] = []

    def feed(self) -> None:
        try:
            for i in range(SECONDS):
                self.fleet.feed(self.feeder, [i])
                time.sleep(PACE_S)
        except BaseException as exc:  # reported by the test
            self.feed_error.append(exc)
        finally:
            self.fed.set()

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.collector.poll(0.2)

    def close(self) -> None:
        super().close()
        self.proxy.stop()


def _first_output_after(s: _Run, since_counts: dict[str, int], timeout_s: float) -> float:
    """Seconds until any output topic grows beyond ``since_counts``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        s.collector.poll(0.1)
        if any(len(s.collector.records[s.topics[t]]) > n for t, n in since_counts.items()):
            return time.monotonic() - started
    return float("inf")


def test_sigkill_at_random_moments_and_influx_outage_give_exact_windows(
        kafka_bootstrap: str, kafka_admin: AdminClient, influx: Any, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    s = _Run(kafka_bootstrap, kafka_admin, influx, tmp_path)
    recoveries: list[float] = []  # restart -> first output record, seconds
    joined: list[float] = []  # restart -> group stable with the partitions owned
    try:
        s.worker.start()
        wait_for_group(kafka_bootstrap, s.topics.app_id, 1, s.topics["telemetry"],
                       timeout_s=90, worker=s.worker)
        feeder = threading.Thread(target=s.feed, daemon=True)
        feeder.start()
        for kill in range(3):
            s.run_for(rng.uniform(2.0, 7.0))
            assert s.worker.alive(), s.worker.log_tail()
            s.worker.kill()
            _check_commits(s, kill)
            time.sleep(rng.uniform(0.0, 1.5))  # down for a moment; input keeps coming
            counts = {t: len(s.collector.records[s.topics[t]]) for t in OUTPUT_KINDS}
            feeding = not s.fed.is_set()
            s.worker.start()
            started = time.monotonic()
            wait_for_group(kafka_bootstrap, s.topics.app_id, 1, s.topics["telemetry"],
                           timeout_s=90, worker=s.worker)
            joined.append(time.monotonic() - started)
            if feeding:  # windows are due: time to the first record (new or replayed)
                recoveries.append(joined[-1] + _first_output_after(s, counts, 60))
            if kill == 0:
                # InfluxDB outage: the worker blocks retrying, results wait, none is lost.
                s.run_for(rng.uniform(1.0, 3.0))
                s.proxy.stop()
                s.run_for(rng.uniform(4.0, 7.0))
                s.proxy.start()
        assert s.fed.wait(120) and not s.feed_error, s.feed_error
        windows = range(SECONDS // int(WINDOW_S))
        s.collector.wait_for(s.fleet.have(s.collector, windows), 120,
                             f"windows {windows} after the faults", s.worker)
        s.run_for(2.0)  # repeats, if any
        repeats = s.fleet.check(s.collector, windows)
        wait_influx_complete(s.influx, s.topics, s.collector, windows, 60, s.worker)
        # Nothing stuck: every input offset is committed once the windows are out.
        deadline = time.monotonic() + 30
        while True:
            done = all(committed_offsets(kafka_bootstrap, s.topics.app_id, s.topics[k])
                       == end_offsets(kafka_bootstrap, s.topics[k]) for k in ("telemetry",
                                                                               "flops"))
            if done:
                break
            assert time.monotonic() < deadline, (
                [committed_offsets(kafka_bootstrap, s.topics.app_id, s.topics[k])
                 for k in ("telemetry", "flops")],
                [end_offsets(kafka_bootstrap, s.topics[k]) for k in ("telemetry", "flops")])
            time.sleep(1.0)
        print(f"[faults] seed {SEED}: repeats (identical) {repeats}; restart -> group "
              f"stable: {', '.join(f'{r:.1f} s' for r in joined)}; restart -> first output: "
              f"{', '.join(f'{r:.1f} s' for r in recoveries)}; commits at kills: {s.commits}")
        # Static membership: no wait for the dead member's session timeout.
        assert all(r < 30 for r in recoveries + joined), (joined, recoveries)
    finally:
        s.close()


def test_broker_outage_delays_results_without_losing_them(
        influx: Any, tmp_path: Path) -> None:
    """A private broker (the shared one must not stop) goes away for a few seconds in
    the middle of a paced run and comes back on the same port."""
    from devenv import kafka as devkafka

    rng = random.Random(SEED + 1)
    broker = devkafka.LocalKafka(devkafka.provision(lambda *_: None), tmp_path / "kafka")
    broker.start()
    bootstrap = broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Idle timeout above the outage: input stops arriving while the broker is away.
    s = _Run(bootstrap, admin, influx, tmp_path / "worker", idle_timeout_s=30.0)
    try:
        s.worker.start()
        wait_for_group(bootstrap, s.topics.app_id, 1, s.topics["telemetry"], timeout_s=90,
                       worker=s.worker)
        feeder = threading.Thread(target=s.feed, daemon=True)
        feeder.start()
        s.run_for(rng.uniform(4.0, 8.0))
        broker.stop()  # controlled shutdown: clients see the broker go away
        time.sleep(rng.uniform(4.0, 8.0))
        broker.start()
        assert s.fed.wait(180) and not s.feed_error, s.feed_error
        windows = range(SECONDS // int(WINDOW_S))
        s.collector.wait_for(s.fleet.have(s.collector, windows), 150,
                             f"windows {windows} after the broker outage", s.worker)
        s.run_for(2.0)
        assert s.worker.alive(), s.worker.log_tail()
        repeats = s.fleet.check(s.collector, windows)
        wait_influx_complete(s.influx, s.topics, s.collector, windows, 60, s.worker)
        print(f"[broker outage] repeats (identical) {repeats}")
    finally:
        s.close()
        broker.stop()
