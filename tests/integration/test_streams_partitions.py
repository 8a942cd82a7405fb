"""`mfu streams` refuses input topics that are not co-partitioned, naming the topics,
the counts and the fix, instead of starting (and crash-looping later)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.streams_harness import REPO, Topics, delete_topics, worker_env

pytestmark = pytest.mark.integration


def test_inputs_with_different_partition_counts_are_refused_with_the_fix(
        kafka_bootstrap: str, kafka_admin: AdminClient, influx: Any, tmp_path: Path) -> None:
    topics = Topics()
    counts = {"telemetry": 4, "flops": 6}
    futs = kafka_admin.create_topics([NewTopic(topics[k], num_partitions=n,
                                               replication_factor=1)
                                      for k, n in counts.items()], operation_timeout=30)
    for fut in futs.values():
        fut.result(timeout=60)
    try:
        env = worker_env(topics, kafka_bootstrap, influx, partitions=4)
        proc = subprocess.run([sys.executable, "-m", "mfucli", "streams"], env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        err = proc.stderr
        assert f"{topics['telemetry']} has 4" in err and f"{topics['flops']} has 6" in err
        assert f"--alter --topic {topics['telemetry']} --partitions 6" in err, err
        # Refused before creating anything: the other pipeline topics do not exist.
        existing = kafka_admin.list_topics(timeout=10).topics
        assert topics["partials"] not in existing
    finally:
        delete_topics(kafka_admin, [topics[k] for k in counts])
