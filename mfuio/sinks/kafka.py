"""Kafka topic sink: every record (JSON ``mfu_window/1``, key = the record's key) to one
extra topic, e.g. a topic another team consumes or a mirror for a data lake. The stage's
own output topics (``mfu.{workload,node,fleet}.v1``) are not this sink: Faust writes
those, in the same transaction of acks as the input.

Synchronous: ``write`` produces the batch and waits for every delivery report. A record
the broker refuses for what it is (too large, invalid) is returned as a rejection; any
other delivery error (broker down past ``delivery.timeout.ms``, no authorisation) raises,
so the input is not acked and is replayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mfu.config import KafkaSettings
from mfu.events import MfuWindow
from mfuio.sinks import SinkContext, SinkSettings
from mfuio.sinks.base import Rejection, SinkResult


class KafkaSinkError(RuntimeError):
    """Kafka did not take the batch (the message says which error); retry later."""


class KafkaTopicSink:
    name = "kafka"

    # librdkafka error names for records that can never be delivered as they are
    _PERMANENT = frozenset({"_MSG_SIZE_TOO_LARGE", "MSG_SIZE_TOO_LARGE", "INVALID_RECORD",
                            "INVALID_MSG", "INVALID_MSG_SIZE", "_INVALID_ARG"})

    def __init__(self, settings: KafkaSettings, topic: str, *, timeout_s: float = 60.0,
                 producer_config: dict[str, Any] | None = None) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.timeout_s = timeout_s
        conf = {**settings.confluent_config(), "enable.idempotence": True, "linger.ms": 5,
                "delivery.timeout.ms": int(timeout_s * 1000), **(producer_config or {})}
        self._producer = Producer(conf)

    def write(self, batch: Sequence[MfuWindow]) -> SinkResult:
        from confluent_kafka import KafkaException

        failed: list[tuple[MfuWindow, Any]] = []
        for rec in batch:
            def report(err: Any, _msg: Any, rec: MfuWindow = rec) -> None:
                if err is not None:
                    failed.append((rec, err))

            for attempt in (1, 2):
                try:
                    self._producer.produce(self.topic, key=rec.key.encode(),
                                           value=rec.to_json(), on_delivery=report)
                    break
                except BufferError:  # local queue full: drain it, then try once more
                    if attempt == 2:
                        raise KafkaSinkError(f"producer queue to {self.topic} stays full"
                                             ) from None
                    self._producer.flush(self.timeout_s)
                except KafkaException as exc:  # refused before sending (e.g. too large)
                    err = exc.args[0] if exc.args else None
                    if err is not None and err.name() in self._PERMANENT:
                        failed.append((rec, err))
                        break
                    raise KafkaSinkError(f"cannot produce to {self.topic}: {exc}") from exc
        left = self._producer.flush(self.timeout_s)
        if left:
            raise KafkaSinkError(f"{left} records to {self.topic} not delivered within "
                                 f"{self.timeout_s:.0f} s: is the broker reachable?")
        rejected, fatal = [], []
        for rec, err in failed:
            if err.name() in self._PERMANENT:
                rejected.append(Rejection(rec, f"kafka {self.topic}: {err.name()}: "
                                          f"{err.str()}", self.name))
            else:
                fatal.append(f"{err.name()}: {err.str()}")
        if fatal:
            raise KafkaSinkError(f"delivery to {self.topic} failed: {fatal[0]} "
                                 f"({len(fatal)} records)")
        return SinkResult(written=len(batch) - len(rejected), rejected=rejected)

    def close(self) -> None:
        self._producer.flush(self.timeout_s)


def from_settings(settings: SinkSettings, ctx: SinkContext) -> KafkaTopicSink:
    """The ``kafka`` sink: every record to ``MFU_STREAMS_SINK_KAFKA_TOPIC``."""
    if not settings.sink_kafka_topic:
        raise ValueError("MFU_STREAMS_SINKS names kafka but MFU_STREAMS_SINK_KAFKA_TOPIC "
                         "is not set: name the topic the records go to")
    return KafkaTopicSink(ctx.kafka, settings.sink_kafka_topic)
