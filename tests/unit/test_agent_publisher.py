"""Publisher state machine with an in-process producer (the real broker: integration)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.metrics import MetricsServer, StatsCollector, make_registry
from agents.publisher import Publisher, producer_config
from agents.spool import Spool
from mfu.config import KafkaSettings
from mfu.events import FlopReport, parse_events

T0 = 1_700_000_000.0


class Err:
    def __init__(self, name: str, fatal: bool = False) -> None:
        self._name, self._fatal = name, fatal

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return self._name

    def fatal(self) -> bool:
        return self._fatal


class Msg:
    def __init__(self, topic: str, value: bytes, key: bytes) -> None:
        self._t, self._v, self._k = topic, value, key

    def topic(self) -> str:
        return self._t

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return self._k


class FakeBroker:
    """Holds what was delivered; ``up`` decides whether a poll delivers or fails."""

    def __init__(self) -> None:
        self.up = True
        self.delivered: list[Msg] = []
        self.producers: list[FakeProducer] = []

    def factory(self, config: dict) -> FakeProducer:
        p = FakeProducer(self, config)
        self.producers.append(p)
        return p


class FakeProducer:
    def __init__(self, broker: FakeBroker, config: dict) -> None:
        self.broker = broker
        self.error_cb: Callable = config["error_cb"]
        self.queue: list[tuple[Callable, Msg]] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Callable) -> None:
        self.queue.append((on_delivery, Msg(topic, value, key)))

    def poll(self, timeout: float = 0.0) -> int:
        if timeout > 0 and not self.queue:
            time.sleep(min(timeout, 0.05))  # blocks like librdkafka's poll (shorter)
        if self.broker.up:
            queue, self.queue = self.queue, []
            for cb, msg in queue:
                self.broker.delivered.append(msg)
                cb(None, msg)
            return len(queue)
        if self.queue:
            self.error_cb(Err("_ALL_BROKERS_DOWN"))
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        queue, self.queue = self.queue, []
        for cb, msg in queue:
            cb(Err("_PURGE_QUEUE"), msg)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll(timeout)
        return len(self.queue)

    def __len__(self) -> int:
        return len(self.queue)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def reports(tick: int, n: int = 3) -> list[FlopReport]:
    return [FlopReport(event_id=f"w-r{r}-{tick}", workload="w", rank=r, node="n1",
                       gpu_uuid=f"GPU-{r}", start=T0 + tick, end=T0 + tick + 1, flops=1e12,
                       precision="bf16") for r in range(n)]


def delivered_ids(broker: FakeBroker) -> list[str]:
    out = []
    for msg in broker.delivered:
        good, bad = parse_events(msg.value(), FlopReport)
        assert bad == []
        out.extend(e.event_id for e in good)
    return out


def make(tmp_path: Path, broker: FakeBroker, clock: Clock, **kw) -> Publisher:
    spool = Spool(tmp_path / "spool", max_bytes=kw.pop("max_bytes", 1 << 20),
                  segment_bytes=kw.pop("segment_bytes", 2000))
    return Publisher(spool, config={}, producer_factory=broker.factory, retry_backoff_s=5.0,
                     clock=clock, **kw)


def test_one_batch_message_per_call_keyed_by_node(tmp_path: Path) -> None:
    broker, clock = FakeBroker(), Clock()
    pub = make(tmp_path, broker, clock)
    pub.publish("mfu.flops.v1", reports(0), key="n1")
    pub.publish("mfu.flops.v1", [], key="n1")  # nothing to send: no message
    pub.poll()
    [msg] = broker.delivered
    assert (msg.topic(), msg.key()) == ("mfu.flops.v1", b"n1")
    assert json.loads(msg.value())["schema"] == "batch/1"
    assert delivered_ids(broker) == ["w-r0-0", "w-r1-0", "w-r2-0"]
    assert pub.stats[("delivered_events", "mfu.flops.v1")] == 3


def test_large_batches_split_under_the_message_size(tmp_path: Path) -> None:
    broker, clock = FakeBroker(), Clock()
    pub = make(tmp_path, broker, clock, max_message_bytes=1000)
    pub.publish("t", reports(0, n=20), key="n1")
    pub.poll()
    assert len(broker.delivered) > 1
    assert all(len(m.value()) <= 1000 for m in broker.delivered)
    assert delivered_ids(broker) == [f"w-r{r}-0" for r in range(20)]


def test_outage_spools_then_drains_oldest_first_exactly_once(tmp_path: Path) -> None:
    broker, clock = FakeBroker(), Clock()
    pub = make(tmp_path, broker, clock)
    pub.publish("t", reports(0), key="n1")
    pub.poll()
    broker.up = False
    for tick in range(1, 30):  # a long outage
        pub.publish("t", reports(tick), key="n1")
        pub.poll()
        clock.t += 1.0
    assert not pub.broker_up
    assert len(pub.spool) == 29 and len(broker.delivered) == 1

    broker.up = True
    for tick in range(30, 40):  # back: new data queues behind the spool
        pub.publish("t", reports(tick), key="n1")
        pub.poll()
        clock.t += 1.0
    for _ in range(50):
        pub.poll()
        clock.t += 1.0
    assert pub.broker_up and not pub.spool
    ids = delivered_ids(broker)
    assert ids == [f"w-r{r}-{t}" for t in range(40) for r in range(3)]  # all, in order, once


def test_failed_drain_keeps_the_segment_and_retries_after_backoff(tmp_path: Path) -> None:
    broker, clock = FakeBroker(), Clock()
    pub = make(tmp_path, broker, clock)
    broker.up = False
    pub.publish("t", reports(0), key="n1")
    pub.poll()  # all brokers down -> purged into the spool
    assert len(pub.spool) == 1 and not pub.broker_up
    pub.poll()  # still within the backoff: no drain attempt
    assert len(broker.producers[0].queue) == 0
    clock.t += 6.0
    pub.poll()  # drain attempt (the probe) goes to librdkafka ...
    assert len(broker.producers[0].queue) == 1
    pub.poll()  # ... and comes back purged: the segment stays
    assert len(pub.spool) == 1
    broker.up = True
    clock.t += 6.0
    for _ in range(3):
        pub.poll()
    assert delivered_ids(broker) == ["w-r0-0", "w-r1-0", "w-r2-0"] and not pub.spool


def test_close_spools_what_the_broker_did_not_take(tmp_path: Path) -> None:
    broker, clock = FakeBroker(), Clock()
    pub = make(tmp_path, broker, clock)
    broker.up = False
    pub.publish("t", reports(0), key="n1")  # handed to librdkafka, broker not yet known down
    pub.close(timeout_s=0.0)
    assert len(Spool(tmp_path / "spool")) == 1


def test_fatal_error_recreates_the_producer(tmp_path: Path) -> None:
    broker, clock = FakeBroker(), Clock()
    pub = make(tmp_path, broker, clock)
    pub.publish("t", reports(0), key="n1")
    broker.producers[0].error_cb(Err("_FATAL", fatal=True))
    pub.poll()
    assert len(broker.producers) == 2 and pub.stats[("producer_recreated",)] == 1
    clock.t += 6.0
    for _ in range(3):
        pub.poll()
    assert delivered_ids(broker) == ["w-r0-0", "w-r1-0", "w-r2-0"]


def test_producer_config_is_idempotent_acks_all() -> None:
    conf = producer_config(KafkaSettings(bootstrap="b:1"), message_timeout_s=7)
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert conf["bootstrap.servers"] == "b:1" and conf["message.timeout.ms"] == 7000


def test_metrics_and_health_over_http(tmp_path: Path) -> None:
    broker, clock = FakeBroker(), Clock()
    pub = make(tmp_path, broker, clock)
    broker.up = False
    pub.publish("mfu.flops.v1", reports(0), key="n1")
    pub.poll()
    healthy = {"ok": True}
    collector = StatsCollector({"kafka": pub, "spool": pub.spool},
                               {"spool_bytes": ("bytes", lambda: pub.spool.bytes)})
    server = MetricsServer(make_registry(collector), lambda: (healthy["ok"], {"n": 1}),
                           port=0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert 'mfu_agent_kafka_kafka_errors_total{error="_ALL_BROKERS_DOWN"}' in text
        assert 'mfu_agent_kafka_delivery_errors_total{error="_PURGE_QUEUE"} 1.0' in text
        assert "mfu_agent_spool_spooled_events_total 3.0" in text
        assert f"mfu_agent_spool_bytes {float(pub.spool.bytes)}" in text
        body = json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=5).read())
        assert body == {"status": "ok", "n": 1}
        healthy["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert info.value.code == 503
    finally:
        server.close()
