"""streams.delivery is installed on the stream app: the input topics and the partials go
straight to the node stage and the roll-up (batch handoff), anything else (the progress
changelog) through Faust's Conductor; off by setting."""

from __future__ import annotations

import asyncio
import inspect

import aiokafka
import faust
import pytest
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

from mfu.config import InfluxSettings, KafkaSettings, WindowSettings
from streams import delivery
from streams.app import StreamSettings, build_app


def _app(**settings: object) -> tuple[faust.App, object]:
    s = StreamSettings(telemetry_topic="t-in", flops_topic="f-in", partials_topic="p-in",
                       static_membership=False, **settings)
    return build_app(s, KafkaSettings(bootstrap="127.0.0.1:1"), WindowSettings(),
                     InfluxSettings())


def test_the_input_topics_are_handed_to_the_node_stage_in_batches() -> None:
    app, rt = _app(take_max=300)
    consumer = app.transport.Consumer
    assert issubclass(consumer, delivery.DirectDeliveryConsumer)
    assert issubclass(consumer, AIOKafkaConsumer)
    assert consumer.batch_topics == frozenset({"t-in", "f-in", "p-in"})
    assert consumer.batch_max == 300
    assert consumer.on_batch == rt.deliver
    assert app.conf.producer_linger == 0.0


def test_direct_delivery_can_be_turned_off() -> None:
    app, _ = _app(direct_delivery=False, producer_linger_s=0.002)
    consumer = app.transport.Consumer
    assert issubclass(consumer, AIOKafkaConsumer)
    assert not issubclass(consumer, delivery.DirectDeliveryConsumer)
    assert app.conf.producer_linger == 0.002


def test_batch_topics_need_a_handler() -> None:
    app = faust.App("delivery-test", broker="kafka://127.0.0.1:1")
    with pytest.raises(ValueError, match="on_batch"):
        delivery.install(app, batch_topics=["x"])
    assert delivery.install(app)  # plain direct delivery, no batch topics
    assert app.transport.Consumer.batch_topics == frozenset()


def test_deliver_splits_a_fetch_by_stage_keeping_offset_order() -> None:
    asyncio.run(_deliver_splits())


async def _deliver_splits() -> None:
    _, rt = _app()

    class M:
        def __init__(self, topic: str, offset: int) -> None:
            self.topic, self.offset = topic, offset

    fetch = [M("t-in", 0), M("p-in", 7), M("f-in", 0), M("t-in", 1), M("p-in", 8)]
    await rt.deliver(fetch)
    await rt.deliver([M("t-in", 2)])
    assert [(m.topic, m.offset) for m in rt.batches.get_nowait()] == [
        ("t-in", 0), ("f-in", 0), ("t-in", 1)]
    assert [(m.topic, m.offset) for m in rt.partial_batches.get_nowait()] == [
        ("p-in", 7), ("p-in", 8)]
    assert [m.offset for m in rt.batches.get_nowait()] == [2]
    assert rt.partial_batches.empty()


def test_a_delivered_message_acks_through_the_consumer_unless_referenced() -> None:
    from faust.types import TP
    from faust.types.tuples import ConsumerMessage

    from streams.app import _Delivered

    class Consumer:
        def __init__(self) -> None:
            self.acked: list[int] = []

        def ack(self, message: ConsumerMessage) -> bool:
            if message.acked:
                return False
            message.acked = True
            self.acked.append(message.offset)
            return True

    def message(offset: int) -> ConsumerMessage:
        return ConsumerMessage("t", 0, offset, 0.0, 0, None, b"k", b"v", None,
                               tp=TP("t", 0))

    c = Consumer()
    plain = message(1)
    assert _Delivered(plain, c).ack() and c.acked == [1]
    assert not _Delivered(plain, c).ack() and c.acked == [1]  # once
    held = message(2)
    held.incref(2)  # held by others too: an ack only drops a reference...
    assert not _Delivered(held, c).ack() and c.acked == [1]
    assert _Delivered(held, c).ack() and c.acked == [1, 2]  # ...the last one acks


@pytest.mark.parametrize("direct", [True, False])
def test_the_consumer_asks_the_broker_for_the_configured_fetch_wait(direct: bool) -> None:
    asyncio.run(_fetch_wait(direct))


async def _fetch_wait(direct: bool) -> None:
    app, _ = _app(direct_delivery=direct, fetch_max_wait_s=0.25)

    async def nothing(*_args: object) -> None:
        return None

    consumer = app.transport.Consumer(app.transport, callback=nothing,
                                      on_partitions_revoked=nothing,
                                      on_partitions_assigned=nothing)
    kafka_consumer = consumer._new_consumer_thread()._create_worker_consumer(app.transport)
    assert kafka_consumer._fetch_max_wait_ms == 250
    # ... which is what aiokafka's start() builds its Fetcher with.
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(
        aiokafka.AIOKafkaConsumer.start)
