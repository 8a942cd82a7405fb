"""Bad input on a real broker: every class the worker used to crash, stall or miscount on
is dead-lettered with its own reason, the worker stays up, offsets are committed past
them in order, and every valid window (all scopes, Kafka and InfluxDB) stays exact.

Classes: tombstones (null values) on both inputs, JSON nested beyond the decoder's
recursion limit, a value over 1 MiB, numbers sent as strings (strict types), events under
another node's key, a message without a key, names with newline/tab/NUL, and a non-JSON
message alone on an otherwise quiet partition (which must not hold workload and fleet
windows back).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.integration.streams_harness import (
    H100,
    T0,
    Stage,
    committed_offsets,
    end_offsets,
    key_in_partition,
    partition_for,
    report,
    sample,
    wait_for_group,
    wait_influx_complete,
)

pytestmark = pytest.mark.integration

PARTITIONS = 5  # the fleet uses 0-3; partition 4 gets only one non-JSON message
WINDOWS = range(3)


def test_every_bad_input_class_is_dead_lettered_and_valid_windows_stay_exact(
        kafka_bootstrap: str, kafka_admin: AdminClient, influx: Any, tmp_path: Path) -> None:
    # MFU_KAFKA_PARTITIONS says 8: the worker must adopt the inputs' 5 (it used to
    # crash-loop on "Unrecognized partition" after make demo's 4-partition topics).
    stage = Stage(kafka_bootstrap, kafka_admin, influx, tmp_path, partitions=PARTITIONS,
                  extra_outputs=("deadletter",), extra_env={"MFU_KAFKA_PARTITIONS": "8"})
    topics, fleet, worker = stage.topics, stage.fleet, stage.worker
    feeder, collector = stage.feeder, stage.collector
    # Let the broker take a value over 1 MiB (the worker must refuse it, not the broker).
    res = ConfigResource("topic", topics["telemetry"], incremental_configs=[
        ConfigEntry("max.message.bytes", "3000000",
                    incremental_operation=AlterConfigOpType.SET)])
    for fut in kafka_admin.incremental_alter_configs([res]).values():
        fut.result(timeout=30)
    raw = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 3_000_000})
    n0, n1, n2, n3 = fleet.nodes
    job_a = fleet.jobs["a"]
    g0 = fleet.gpus[0]  # n0/g0, job a
    quiet_key = key_in_partition(f"{topics.suffix}-quiet", 4, PARTITIONS)

    def send(kind: str, key: str | None, value: bytes | None, partition: int) -> None:
        raw.produce(topics[kind], key=key.encode() if key is not None else None, value=value,
                    partition=partition)

    good_report = report(job_a, n0, g0.uuid, T0 + 5, T0 + 6, 1e14, eid="bad-strict").model_dump(
        by_alias=True)
    # expected reason fragment -> how many dead letters carry it
    expected = {
        "tombstone": 2, "nesting too deep": 1, "oversized value": 1,
        "flops: Input should be a valid number": 1, "key/node mismatch": 2,
        "missing key": 1, "must not contain control characters": 3, "not valid JSON": 1,
    }
    try:
        worker.start()
        wait_for_group(kafka_bootstrap, topics.app_id, 1, topics["telemetry"], worker=worker)
        fleet.feed(feeder, range(0, 8))
        p = {n: partition_for(n, PARTITIONS) for n in (n0, n1, n2, n3)}
        send("telemetry", n0, None, p[n0])
        send("flops", n1, None, p[n1])
        send("flops", n2, b"[" * 100_000 + b"]" * 100_000, p[n2])
        pad = "x" * 1_200_000
        send("telemetry", n3, json.dumps({"schema": "batch/1", "events": [],
                                          "pad": pad}).encode(), p[n3])
        send("flops", n0, json.dumps(dict(good_report, flops="5e14")).encode(), p[n0])
        # n1's events under n0's key, in n0's partition: counting them would give n1 a
        # second, partial node record and double count in the fleet.
        intruders = [sample(n1, f"{n1}-g0", T0 + 6, [job_a], eid="bad-key-s"),
                     report(job_a, n1, f"{n1}-g0", T0 + 5, T0 + 6, 3e14, eid="bad-key-r")]
        for ev in intruders:
            kind = "telemetry" if ev.schema_name == "gpu_sample/1" else "flops"
            send(kind, n0, ev.to_json(), p[n0])
        send("telemetry", None,
             sample(n2, f"{n2}-g0", T0 + 6, [], eid="no-key").to_json(), p[n2])
        send("flops", n0, json.dumps(dict(good_report, workload="job\nx",
                                          event_id="ctl-1")).encode(), p[n0])
        bad_s = sample(n3, f"{n3}-g0", T0 + 6, ["c"], eid="ctl-2").model_dump(by_alias=True)
        send("telemetry", n3, json.dumps(dict(bad_s, workloads=["a\tb"])).encode(), p[n3])
        send("telemetry", n3, json.dumps(dict(bad_s, event_id="ctl-3",
                                              gpu_name=H100 + "\u0000")).encode(), p[n3])
        send("telemetry", quiet_key, b"not json {", 4)
        assert raw.flush(30) == 0
        fleet.feed(feeder, range(8, 30))

        total = sum(expected.values())
        collector.wait_for(fleet.have(collector, WINDOWS), 90, "windows 0-2", worker)
        collector.wait_for(lambda: len(collector.records[topics["deadletter"]]) >= total, 30,
                           f"{total} dead letters", worker)
        collector.poll(1.0)
        assert worker.alive(), worker.log_tail()
        assert "input topics have 5 partitions; using 5" in worker.log_path.read_text()
        fleet.check(collector, WINDOWS)

        letters = collector.records[topics["deadletter"]]
        got = {frag: [d for d in letters if frag in d["reason"]] for frag in expected}
        assert {k: len(v) for k, v in got.items()} == expected, \
            [(d["source_topic"], d["reason"][:120]) for d in letters]
        assert len(letters) == total
        (big,) = got["oversized value"]
        assert big["truncated"] and big["original_bytes"] > 1_048_576
        assert len(json.dumps(big)) < 1_000_000
        (quiet,) = got["not valid JSON"]
        assert (quiet["partition"], quiet["original"]) == (4, "not json {")
        assert {d["source_topic"] for d in got["tombstone"]} == {topics["telemetry"],
                                                                 topics["flops"]}

        # Every input message, bad ones included, is committed in order: nothing stuck,
        # the quiet partition's lone bad message too.
        deadline = time.monotonic() + 30
        while True:
            committed = [committed_offsets(kafka_bootstrap, topics.app_id, topics[k],
                                           PARTITIONS) for k in ("telemetry", "flops")]
            ends = [end_offsets(kafka_bootstrap, topics[k], PARTITIONS)
                    for k in ("telemetry", "flops")]
            if all(c == e or (c < 0 and e == 0) for cs, es in zip(committed, ends, strict=True)
                   for c, e in zip(cs, es, strict=True)):
                break
            assert time.monotonic() < deadline, (committed, ends)
            time.sleep(1.0)

        wait_influx_complete(influx, topics, collector, WINDOWS, 30, worker)
    finally:
        stage.close()
