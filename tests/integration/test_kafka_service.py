"""The Kafka broker the suite runs against really works for this project's clients.

confluent-kafka: idempotent produce, consumer-group consume, transactions (these need the
internal topics with replication factor 1). faust-streaming (aiokafka): a worker with a
changelogged table joins a group, processes every event and writes results, in
at-least-once and exactly-once (transactional) mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource

from devenv.kafka import tail

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


def _produce(bootstrap: str, topic: str, events: list[tuple[str, dict]]) -> None:
    errors: list[str] = []

    def delivered(err, _msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            errors.append(str(err))

    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    for key, value in events:
        producer.produce(topic, key=key, value=json.dumps(value), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages left undelivered after 30 s"
    assert not errors, errors[:5]


def _read_all(bootstrap: str, topic: str, timeout_s: float, expected: int | None = None, **config):  # type: ignore[no-untyped-def]
    """Read ``topic`` from the beginning without joining a group (assign, no commit).

    Stops after ``expected`` messages, or, when it is None, once every partition is read
    to its end (for read_committed: to its last stable offset).
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
         "enable.auto.commit": False, "enable.partition.eof": True, **config}
    )  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages, at_end = [], set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if expected is not None and len(messages) >= expected:
                break
            if expected is None and len(at_end) == len(partitions):
                break
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                raise KafkaException(message.error())
            at_end.discard(message.partition())
            messages.append(message)
        return messages
    finally:
        consumer.close()


def test_broker_answers_metadata(kafka_admin) -> None:  # type: ignore[no-untyped-def]
    metadata = kafka_admin.list_topics(timeout=10)
    assert metadata.brokers, "no broker in cluster metadata"
    assert metadata.cluster_id


def test_idempotent_produce_and_group_consume(kafka_bootstrap: str, fresh_topic) -> None:  # type: ignore[no-untyped-def]
    topic = fresh_topic("svc-roundtrip", partitions=4)
    events = [(f"node-{i % 5}", {"seq": i, "node": f"node-{i % 5}"}) for i in range(1000)]
    _produce(kafka_bootstrap, topic, events)

    assigned_at: list[float] = []
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": f"svc-{uuid.uuid4().hex[:8]}",
         "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )  # fmt: skip
    subscribed = time.monotonic()
    consumer.subscribe([topic], on_assign=lambda _c, _p: assigned_at.append(time.monotonic()))
    received: dict[str, list[int]] = {}
    try:
        deadline = time.monotonic() + 60
        while sum(map(len, received.values())) < len(events) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = json.loads(message.value())
            assert message.key().decode() == value["node"]
            received.setdefault(value["node"], []).append(value["seq"])
        consumer.commit(asynchronous=False)
        committed = consumer.committed(consumer.assignment(), timeout=10)
    finally:
        consumer.close()

    assert assigned_at, "the consumer group never assigned partitions"
    print(f"confluent-kafka first group join: {assigned_at[0] - subscribed:.2f} s")
    assert sum(map(len, received.values())) == len(events)
    for node, seqs in received.items():  # one key -> one partition -> order kept
        assert seqs == sorted(seqs), f"order broken for {node}"
    assert sum(tp.offset for tp in committed if tp.offset >= 0) == len(events)


def test_transactions_commit_and_abort(kafka_bootstrap: str, fresh_topic) -> None:  # type: ignore[no-untyped-def]
    topic = fresh_topic("svc-tx", partitions=2)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"svc-tx-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=str(i), value=json.dumps({"i": i, "kept": True}))
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=str(i), value=json.dumps({"i": i, "kept": False}))
    assert producer.flush(30) == 0  # written to the log, then aborted
    producer.abort_transaction(30)

    messages = _read_all(
        kafka_bootstrap, topic, timeout_s=30, **{"isolation.level": "read_committed"}
    )
    values = [json.loads(m.value()) for m in messages]
    assert len(values) == 10 and all(v["kept"] for v in values), values


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_faust_worker_with_changelogged_table(
    kafka_bootstrap: str, kafka_admin, fresh_topic, tmp_path: Path, guarantee: str, record_property
) -> None:  # type: ignore[no-untyped-def]
    partitions = 4
    source = fresh_topic("smoke-src", partitions=partitions)
    result = fresh_topic("smoke-res", partitions=partitions)
    app_id = f"smoke-{uuid.uuid4().hex[:8]}"
    timings = tmp_path / "timings.json"
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "SMOKE_BOOTSTRAP": kafka_bootstrap,
        "SMOKE_APP_ID": app_id,
        "SMOKE_SOURCE": source,
        "SMOKE_RESULT": result,
        "SMOKE_PARTITIONS": str(partitions),
        "SMOKE_DATADIR": str(tmp_path / "faust-data"),
        "SMOKE_TIMINGS": str(timings),
        "SMOKE_GUARANTEE": guarantee,
    }
    n_events, keys = 300, [f"job-{k}" for k in range(7)]
    events = [(keys[i % len(keys)], {"key": keys[i % len(keys)], "n": i}) for i in range(n_events)]

    spawned = time.time()
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "faust_smoke_app", "worker", "-l", "warn"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _produce(kafka_bootstrap, source, events)
        isolation = {"isolation.level": "read_committed"} if guarantee == "exactly_once" else {}
        messages = _read_all(kafka_bootstrap, result, expected=n_events, timeout_s=120, **isolation)
        assert worker.poll() is None, (
            f"worker died (exit {worker.returncode}):\n{tail(log_path, 40)}"
        )
        results = [json.loads(m.value()) for m in messages]
        first_result = time.time()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            exit_code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
            exit_code = None

    assert len({r["n"] for r in results}) == n_events, (
        f"{len(results)} results for {n_events} events; worker log:\n{tail(log_path, 40)}"
    )
    final = {}
    for record in results:  # per key the results arrive in order: the last has the total
        final[record["key"]] = max(final.get(record["key"], 0), record["count"])
    assert final == {
        k: n_events // len(keys) + (i < n_events % len(keys)) for i, k in enumerate(keys)
    }

    changelog = f"{app_id}-counts-changelog"
    topics = kafka_admin.list_topics(timeout=10).topics
    assert changelog in topics and len(topics[changelog].partitions) == partitions
    resource = ConfigResource(ConfigResource.Type.TOPIC, changelog)
    configs = kafka_admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"
    assert exit_code is not None, f"worker ignored SIGTERM for 30 s:\n{tail(log_path, 20)}"

    marks = json.loads(timings.read_text())
    join_s = marks["assigned"] - marks["started"]
    record_property("faust_first_group_join_s", round(join_s, 2))
    record_property("faust_spawn_to_results_s", round(first_result - spawned, 2))
    print(
        f"faust ({guarantee}): first group join {join_s:.2f} s after app import, "
        f"{marks['started'] - spawned:.2f} s import; all {n_events} results "
        f"{first_result - spawned:.1f} s after spawn"
    )
