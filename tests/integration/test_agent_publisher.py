"""Publisher against the real broker: an outage spools, and after it every event arrives,
each event id exactly once, each node's messages in order on one partition."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter, defaultdict
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agents.publisher import Publisher, producer_config
from agents.simulator import FleetSimulator
from agents.spool import Spool
from mfu.config import KafkaSettings

T0 = 1_700_000_000.0
MODELS = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]


def dead_address() -> str:
    """A loopback port where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def publish_ticks(sim: FleetSimulator, pub: Publisher, ticks: range, topics: dict) -> set[str]:
    ids = set()
    for tick in ticks:
        for node, (samples, reports) in sim.events(tick).items():
            pub.publish(topics["telemetry"], samples, key=node)
            pub.publish(topics["flops"], reports, key=node)
            ids |= {e.event_id for e in samples} | {e.event_id for e in reports}
        pub.poll(0.02)
    return ids


def consume_all(bootstrap: str, topics: list[str], expected: int, timeout_s: float = 90.0):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{time.time_ns()}",
                         "enable.auto.commit": False})
    parts = []
    for topic in topics:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
    consumer.assign(parts)
    messages, events = [], 0
    deadline = time.monotonic() + timeout_s
    try:
        while events < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = json.loads(msg.value())
            events += len(value["events"])
            messages.append((msg.topic(), msg.partition(), msg.offset(), msg.key(), value))
        # anything beyond the expected count (a duplicate) would show up now
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                value = json.loads(msg.value())
                messages.append((msg.topic(), msg.partition(), msg.offset(), msg.key(), value))
    finally:
        consumer.close()
    return messages


def test_outage_then_every_event_arrives_exactly_once(
    kafka_bootstrap: str, fresh_topic, tmp_path: Path
) -> None:
    topics = {"telemetry": fresh_topic("agent-telemetry"), "flops": fresh_topic("agent-flops")}
    sim = FleetSimulator(3, 2, MODELS, seed=11, start_ts=T0)
    spool_dir = tmp_path / "spool"

    # 1. The broker is unreachable: everything ends up in the spool, nothing is lost.
    down = Publisher(
        Spool(spool_dir, segment_bytes=16 << 10),
        config=producer_config(KafkaSettings(bootstrap=dead_address()), message_timeout_s=5),
        retry_backoff_s=0.5)
    sent = publish_ticks(sim, down, range(0, 15), topics)
    deadline = time.monotonic() + 15
    while down.broker_up and time.monotonic() < deadline:
        down.poll(0.1)
    assert not down.broker_up, "the publisher never noticed the dead broker"
    sent |= publish_ticks(sim, down, range(15, 25), topics)
    down.close(timeout_s=1.0)
    spooled = Spool(spool_dir)
    assert spooled.events == len(sent)
    spooled.close()

    # 2. The broker is back (the agent restarts with a reachable bootstrap): the spool
    #    drains oldest first while new intervals queue behind it.
    up = Publisher(Spool(spool_dir, segment_bytes=16 << 10),
                   config=producer_config(KafkaSettings(bootstrap=kafka_bootstrap)),
                   retry_backoff_s=0.5)
    sent |= publish_ticks(sim, up, range(25, 40), topics)
    assert up.flush(60.0), "spool did not drain"
    up.close(timeout_s=10.0)
    assert len(Spool(spool_dir)) == 0

    messages = consume_all(kafka_bootstrap, list(topics.values()), expected=len(sent))
    ids = Counter(e["event_id"] for *_, value in messages for e in value["events"])
    assert set(ids) == sent
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]

    # one partition per node, and in it the node's intervals in event-time order
    partitions = defaultdict(set)
    last_ts: dict[tuple[str, bytes], float] = {}
    for topic, partition, _offset, key, value in sorted(messages, key=lambda m: m[:3]):
        assert key.decode() in sim.node_names
        partitions[(topic, key)].add(partition)
        if topic == topics["telemetry"]:
            ts = value["events"][0]["ts"]
            assert ts > last_ts.get((topic, key), 0.0)
            last_ts[(topic, key)] = ts
    assert all(len(p) == 1 for p in partitions.values())


def test_broker_stopped_and_restarted_every_event_arrives_once(tmp_path: Path) -> None:
    """The real thing: one publisher (as in a running agent) while its broker is stopped
    for a while and started again on the same data and port."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from devenv.kafka import LocalKafka
    from devenv.kafka import provision as provision_kafka

    broker = LocalKafka(provision_kafka(progress=lambda _m: None), tmp_path / "kafka")
    broker.start()
    try:
        bootstrap = broker.bootstrap
        topics = {"telemetry": "outage-telemetry", "flops": "outage-flops"}
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for fut in admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)
                                        for t in topics.values()]).values():
            fut.result(30)
        sim = FleetSimulator(2, 2, MODELS, seed=5, start_ts=T0)
        pub = Publisher(Spool(tmp_path / "spool", segment_bytes=16 << 10),
                        config=producer_config(KafkaSettings(bootstrap=bootstrap),
                                               message_timeout_s=5),
                        retry_backoff_s=0.5)
        sent = publish_ticks(sim, pub, range(0, 10), topics)
        assert pub.flush(30.0)

        broker.stop()
        sent |= publish_ticks(sim, pub, range(10, 20), topics)
        deadline = time.monotonic() + 20
        while pub.broker_up and time.monotonic() < deadline:
            pub.poll(0.2)
        assert not pub.broker_up, "the publisher never noticed the broker was gone"
        sent |= publish_ticks(sim, pub, range(20, 30), topics)  # straight to the spool

        broker.start()
        assert broker.bootstrap == bootstrap  # same port: the agent's config still holds
        sent |= publish_ticks(sim, pub, range(30, 35), topics)
        assert pub.flush(90.0), "spool did not drain after the broker came back"
        pub.close(timeout_s=10.0)

        messages = consume_all(bootstrap, list(topics.values()), expected=len(sent))
        ids = Counter(e["event_id"] for *_, value in messages for e in value["events"])
        assert set(ids) == sent
        assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    finally:
        broker.stop()
