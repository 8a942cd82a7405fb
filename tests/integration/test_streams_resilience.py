"""The stream stage under failure, on a real broker and InfluxDB: a worker killed with
SIGKILL mid-window and restarted, two workers sharing the partitions, and an InfluxDB
outage in the middle of a run. Each test checks exact window values (a small fleet of
four nodes in four partitions, see ``SmallFleet``) against the catalog peaks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from devenv.influxdb import LocalInflux, provision
from devenv.services import InfluxSettings
from tests.integration.streams_harness import (
    OUTPUT_KINDS,
    T0,
    Stage,
    committed_offsets,
    end_offsets,
    wait_for_group,
    wait_influx_complete,
)

pytestmark = pytest.mark.integration


def test_worker_killed_mid_window_restarts_with_same_results(
        kafka_bootstrap: str, kafka_admin: AdminClient, influx: Any, tmp_path: Path) -> None:
    # Idle timeout above the restart's rebalances (the dead member's session expires 6 s
    # in): on a loaded 2-core machine a 3 s timeout fired during them and closed W1 early.
    s = Stage(kafka_bootstrap, kafka_admin, influx, tmp_path, idle_timeout_s=10.0)
    try:
        s.worker.start()
        wait_for_group(kafka_bootstrap, s.topics.app_id, 1, s.topics["telemetry"],
                       worker=s.worker)
        s.fleet.feed(s.feeder, range(0, 15))  # W0 closes, W1 half done
        s.collector.wait_for(s.fleet.have(s.collector, [0]), 30, "window 0", s.worker)
        time.sleep(1.5)  # W1's first half consumed, W0's offsets committed
        s.worker.kill()
        # The killed worker had acked W0's events but held W1's first half un-acked:
        # some input is committed, none past W0, so the restart must replay.
        committed = committed_offsets(kafka_bootstrap, s.topics.app_id, s.topics["telemetry"])
        ends = end_offsets(kafka_bootstrap, s.topics["telemetry"])
        assert all(0 < c < e for c, e in zip(committed, ends, strict=True)), (committed, ends)
        s.fleet.feed(s.feeder, range(15, 30))  # produced while no worker runs
        s.worker.start()  # the dead member's session expires during the replay: 2 rebalances
        s.collector.wait_for(s.fleet.have(s.collector, range(3)), 60, "windows 0-2 after "
                             "restart", s.worker)
        s.collector.poll(2.0)  # late repeats, if any
        repeats = s.fleet.check(s.collector, range(3))
        print(f"[crash] repeated windows (identical): {repeats}")
        wait_influx_complete(influx, s.topics, s.collector, range(3), 20, s.worker)
    finally:
        s.close()


def test_two_workers_share_partitions_exact_results(
        kafka_bootstrap: str, kafka_admin: AdminClient, influx: Any, tmp_path: Path) -> None:
    s = Stage(kafka_bootstrap, kafka_admin, influx, tmp_path, workers=2)
    try:
        s.worker.start()
        owned = wait_for_group(kafka_bootstrap, s.topics.app_id, 2, s.topics["telemetry"],
                               worker=s.worker)
        assert all(owned), f"a worker owns no partition: {owned}"
        s.fleet.feed(s.feeder, range(0, 30))
        s.collector.wait_for(s.fleet.have(s.collector, range(3)), 60, "windows 0-2",
                             s.worker)
        s.collector.poll(1.0)
        assert s.fleet.check(s.collector, range(3)) == 0  # no rebalance: each once
        wait_influx_complete(influx, s.topics, s.collector, range(3), 20, s.worker)
    finally:
        s.close()


def test_influxdb_outage_delays_results_without_losing_them(
        kafka_bootstrap: str, kafka_admin: AdminClient, tmp_path: Path) -> None:
    install = provision()
    server = LocalInflux(install, tmp_path / "influx")
    server.start()
    settings = InfluxSettings(url=server.url, token=server.token, org=server.org,
                              bucket=server.bucket, api=install.api)
    s = Stage(kafka_bootstrap, kafka_admin, settings, tmp_path / "worker")
    try:
        s.worker.start()
        wait_for_group(kafka_bootstrap, s.topics.app_id, 1, s.topics["telemetry"],
                       worker=s.worker)
        s.fleet.feed(s.feeder, range(0, 20))
        s.collector.wait_for(s.fleet.have(s.collector, range(2)), 30, "windows 0-1",
                             s.worker)
        wait_influx_complete(settings, s.topics, s.collector, range(2), 20, s.worker)

        server.stop()
        s.fleet.feed(s.feeder, range(20, 40))
        # W2 closes on the watermark: its node records reach Kafka, then the worker
        # blocks retrying the InfluxDB write, so W3 waits (inputs stay un-acked).
        s.collector.wait_for(lambda: any(r["window_start"] == T0 + 20 for r in
                                         s.collector.records[s.topics["node"]]),
                             30, "window 2 node records", s.worker)
        s.collector.poll(3.0)
        assert not any(r["window_start"] == T0 + 30 for scope in OUTPUT_KINDS
                       for r in s.collector.records[s.topics[scope]])
        assert "influxdb write failed, retrying" in s.worker.log_path.read_text()

        server.start()
        s.collector.wait_for(s.fleet.have(s.collector, range(4)), 60, "windows 0-3 after "
                             "InfluxDB is back", s.worker)
        s.collector.poll(1.0)
        assert s.fleet.check(s.collector, range(4)) == 0
        wait_influx_complete(settings, s.topics, s.collector, range(4), 30, s.worker)
    finally:
        s.close()
        server.stop()
