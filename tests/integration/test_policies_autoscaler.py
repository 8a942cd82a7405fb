"""The KEDA example's Flux query (deploy/autoscaler/keda-scaledobject.yaml) on a real
InfluxDB: it must return replicas' worth of useful work, mean(mfu x gpus), for one key."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import pytest
import yaml
from influxdb_client import InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "autoscaler" / "keda-scaledobject.yaml"


def test_keda_query_gives_the_hpa_metric(influx) -> None:  # type: ignore[no-untyped-def]
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "influxdb" and trigger["metricType"] == "AverageValue"
    target = float(trigger["metadata"]["thresholdValue"])
    key = f"chat-api-{uuid.uuid4().hex[:6]}"
    query = (
        trigger["metadata"]["query"]
        .replace('bucket: "mfu"', f'bucket: "{influx.bucket}"')
        .replace('r.key == "chat-api"', f'r.key == "{key}"')
    )
    now = time.time_ns()
    points = [
        # Same key, two GPU models (two series): the query must still average them all.
        Point("mfu").tag("scope", "workload").tag("key", key).tag("gpu_model", model)
        .field("mfu", mfu).field("gpus", 4.0).time(now - age_s * 10**9)
        for mfu, model, age_s in ((0.5, "H100", 30), (0.7, "H100", 20), (0.6, "A100", 10))
    ] + [
        Point("mfu").tag("scope", "workload").tag("key", key + "-other")
        .field("mfu", 0.1).field("gpus", 9.0).time(now),
        Point("mfu").tag("scope", "workload").tag("key", key)
        .field("mfu", 0.0).field("gpus", 4.0).time(now - 600 * 10**9),  # outside -2m
    ]  # fmt: skip
    with InfluxDBClient(url=influx.url, token=influx.token, org=influx.org) as client:
        client.write_api(write_options=SYNCHRONOUS).write(influx.bucket, record=points)
        tables = client.query_api().query(query, org=influx.org)
    values = [r.get_value() for t in tables for r in t.records]
    assert values == [pytest.approx(2.4)]  # mean(0.5*4, 0.7*4, 0.6*4)
    # What the HPA then does with it: ceil(2.4 / 0.4) = 6 replicas.
    assert math.ceil(values[0] / target - 1e-9) == 6
