"""The policies worker serves its own health: /metrics counts what it really did, /readyz
says when it is up (real worker subprocess, real broker, real HTTP)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from devenv.kafka import free_port
from tests.integration.streams_harness import scrape
from tests.integration.test_policies_worker import (  # noqa: F401  (stage is a fixture)
    GOOD_RULES,
    stage,
    window,
)

pytestmark = pytest.mark.integration


def value(got: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return got.get((name, frozenset({"stage": "policies", **labels}.items())), 0.0)


def test_policies_worker_metrics_and_readiness(stage: dict[str, Any]) -> None:  # noqa: F811
    port = free_port()
    worker = stage["worker"]
    worker.env = {**worker.env, "MFU_POLICIES_METRICS_PORT": str(port),
                  "MFU_POLICIES_METRICS_HOST": "127.0.0.1"}
    stage["rules"].write_text(GOOD_RULES)
    worker.start()
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as resp:
        assert resp.status == 200 and json.loads(resp.read())["stage"] == "policies"
    workload_topic = worker.env["MFU_POLICIES_WORKLOAD_TOPIC"]
    policy_topic = worker.env["MFU_POLICIES_POLICY_TOPIC"]
    # 3 windows below the rule's 0.2 -> one incident opens (for_windows 1), plus one
    # message that is not JSON.
    stage["send"]("workload", "job-m", *(window(i, 0.1, key="job-m") for i in range(3)))
    stage["send"]("workload", "job-m", b"{not json")
    stage["reader"].poll_until(lambda ev: len(ev) >= 1, timeout=60)
    deadline = time.monotonic() + 60
    while True:
        got = scrape(f"{base}/metrics")
        if value(got, "mfu_pipeline_rule_evaluations_total", scope="workload") >= 3 and \
                value(got, "mfu_pipeline_dead_letters_total", reason="not_valid_json") >= 1:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    stage["reader"].drain(quiet_s=2)
    emitted = stage["reader"].cloudevents()
    assert value(got, "mfu_pipeline_rule_evaluations_total", scope="workload") == 3
    assert value(got, "mfu_pipeline_events_in_total", topic=workload_topic) == 3
    assert value(got, "mfu_pipeline_dead_letters_total", reason="not_valid_json") == 1
    got = scrape(f"{base}/metrics")
    assert value(got, "mfu_pipeline_events_out_total", topic=policy_topic) == len(emitted)
    assert value(got, "mfu_pipeline_policy_events_total",
                 type="io.mfu.underutilized.v1") == len(emitted) == 1
    assert value(got, "mfu_pipeline_rebalances_total") >= 1
    assert value(got, "mfu_pipeline_ready") == 1
    # The lag gauge covers the owned input partitions.
    lag_topics = {dict(k[1])["topic"] for k in got if k[0] == "mfu_pipeline_consumer_lag_messages"}
    assert workload_topic in lag_topics
    try:
        urllib.request.urlopen(f"{base}/nope", timeout=5)
    except urllib.error.HTTPError as err:
        assert err.code == 404
