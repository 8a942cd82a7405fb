"""The Kafka topic sink on the real broker: records land keyed by their key; one the
broker refuses for its size comes back as a rejection while the rest land; a broker that
does not answer makes the write raise (the input is then replayed, not lost)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from mfu.config import KafkaSettings
from mfu.events import MfuWindow
from mfuio.sinks.kafka import KafkaSinkError, KafkaTopicSink

pytestmark = pytest.mark.integration
T0 = 1_700_000_000.0


def window(key: str, start: float = T0, **kw: object) -> MfuWindow:
    return MfuWindow(event_id=f"workload:{key}:{start}", scope="workload", key=key,
                     window_start=start, window_end=start + 10, mfu=0.4, achieved_flops=4e15,
                     peak_flops=1e16, gpu_seconds=10.0, gpus=1, **kw)  # type: ignore[arg-type]


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list:  # type: ignore[type-arg]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got, deadline = [], time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append((m.key(), json.loads(m.value())))
        time.sleep(0.5)  # nothing more should come
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append((m.key(), json.loads(m.value())))
        return got
    finally:
        c.close()


def test_records_land_and_an_oversized_one_is_rejected(
        kafka_bootstrap: str, fresh_topic: Callable[..., str]) -> None:
    topic = fresh_topic("sink-kafka", partitions=1)
    # The producer refuses messages above 4000 bytes (the broker's own limit works alike).
    sink = KafkaTopicSink(KafkaSettings(bootstrap=kafka_bootstrap), topic,
                          producer_config={"message.max.bytes": 4000})
    big = window("job-big", mfu_reason="x" * 5000)
    recs = [window("job-a"), big, window("job-b", T0 + 10)]
    result = sink.write(recs)
    sink.close()
    assert result.written == 2
    (rej,) = result.rejected
    assert rej.record is big and rej.sink == "kafka" and "SIZE_TOO_LARGE" in rej.reason
    got = read_all(kafka_bootstrap, topic, expected=2)
    assert [(k, v["key"], v["window_start"]) for k, v in got] == [
        (b"job-a", "job-a", T0), (b"job-b", "job-b", T0 + 10)]
    assert MfuWindow.model_validate(got[0][1]) == recs[0]


def test_unreachable_broker_raises() -> None:
    sink = KafkaTopicSink(KafkaSettings(bootstrap="127.0.0.1:9"), "nowhere", timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(KafkaSinkError):
        sink.write([window("job-a")])
    assert time.monotonic() - started < 30
