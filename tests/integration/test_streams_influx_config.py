"""A stream worker whose InfluxDB token is wrong stops with a message naming the setting
(it does not retry forever, nor go on without InfluxDB), and acks nothing it did not
write."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from mfu.events import batch
from tests.integration.streams_harness import (
    T0,
    Feeder,
    Topics,
    Worker,
    committed_offsets,
    create_topics,
    delete_topics,
    report,
    sample,
    wait_for_group,
    worker_env,
)

pytestmark = pytest.mark.integration
PARTITIONS = 1


def test_wrong_influx_token_stops_the_worker(kafka_bootstrap: str, kafka_admin: AdminClient,
                                             influx: Any, tmp_path: Path) -> None:
    topics = Topics()
    names = create_topics(kafka_admin, topics, PARTITIONS)
    env = worker_env(topics, kafka_bootstrap, influx, partitions=PARTITIONS,
                     extra={"MFU_INFLUX_TOKEN": "nobody:wrong"})
    worker = Worker(env, tmp_path)
    try:
        worker.start()
        wait_for_group(kafka_bootstrap, topics.app_id, 1, topics["telemetry"], worker=worker)
        node, gpu, job = f"cn-{topics.suffix}", f"GPU-c-{topics.suffix}", f"cj-{topics.suffix}"
        feeder = Feeder(kafka_bootstrap, topics, PARTITIONS)
        feeder.raw("telemetry", node, batch([sample(node, gpu, T0 + 1 + i, [job])
                                             for i in range(10)]))
        feeder.raw("flops", node, batch([report(job, node, gpu, T0 + i, T0 + i + 1, 4e14)
                                         for i in range(10)]))
        feeder.flush()
        deadline = time.monotonic() + 90
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        log = worker.log_tail(20000)
        assert not worker.alive(), f"worker still running after 90 s:\n{log[-3000:]}"
        assert worker.proc is not None and worker.proc.returncode == 1
        assert "refused the credentials" in log and "MFU_INFLUX_TOKEN" in log, log[-3000:]
        # Nothing acked: the window was not written, its input is replayed after the fix.
        assert committed_offsets(kafka_bootstrap, topics.app_id, topics["telemetry"],
                                 PARTITIONS) == [-1001]
    finally:
        worker.stop()
        delete_topics(kafka_admin, names, topics.app_id)
