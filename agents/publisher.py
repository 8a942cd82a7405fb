"""Kafka output of the agent (and of the simulator): batches, delivery, spooling.

:meth:`Publisher.publish` sends one ``batch/1`` value per call (split only when it would
pass ``MAX_BATCH_EVENTS`` or ``max_message_bytes``), keyed by node, through an
idempotent confluent-kafka producer (``enable.idempotence=true``, ``acks=all``).

When the broker cannot be reached the publisher keeps going on disk:

- A delivery error (e.g. message timeout) or librdkafka's "all brokers down" marks the
  broker *down*. Messages still queued in librdkafka are purged back through their
  delivery callbacks into the :class:`~agents.spool.Spool`; new messages go straight to
  the spool.
- While the spool holds anything, new messages are appended behind it, so messages
  reach Kafka oldest first and a node's partition stays in event-time order.
- :meth:`poll` drains the spool one segment at a time; a segment is deleted only when
  every message in it was acknowledged. While down, a drain is retried every
  ``retry_backoff_s`` and serves as the probe: its first acknowledgement marks the
  broker up again.
- Values are resent byte for byte, so event ids never change; at-least-once delivery
  may duplicate a message (a purged in-flight one, a partly acknowledged segment) and
  consumers de-duplicate by ``event_id``.

All methods are called from one thread (the agent's loop); delivery callbacks run inside
:meth:`poll`/:meth:`close`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from agents.spool import Spool
from mfu.config import KafkaSettings
from mfu.events import MAX_BATCH_EVENTS, Event, batch

log = logging.getLogger(__name__)

# librdkafka error names that mean "nothing reachable": spool until a drain succeeds.
_DOWN_ERRORS = frozenset({"_ALL_BROKERS_DOWN", "_RESOLVE", "_AUTHENTICATION", "_SSL"})
_PRODUCE_RETRIES = 20


def producer_config(kafka: KafkaSettings, *, message_timeout_s: float = 30.0,
                    compression: str = "lz4", extra: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """librdkafka properties of the agent's producer (without callbacks)."""
    conf = kafka.confluent_config()
    conf.update({
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "compression.type": compression,
        "message.timeout.ms": int(message_timeout_s * 1000),
        "reconnect.backoff.max.ms": 2000,
    })
    conf.update(extra or {})
    return conf


class _Drain:
    __slots__ = ("failed", "pending", "segment")

    def __init__(self, segment: int, pending: int) -> None:
        self.segment = segment
        self.pending = pending
        self.failed = False


class Publisher:
    """Sends event batches to Kafka, spooling to disk while the broker is unreachable.

    ``spool``: the on-disk buffer. ``config``: librdkafka properties (see
    :func:`producer_config`; default built from ``KafkaSettings()``). ``producer_factory``:
    builds the producer from the properties (default ``confluent_kafka.Producer``; tests
    may pass a fake). ``retry_backoff_s``: seconds between drain attempts while down.
    Counters are in ``stats`` (keys are tuples, first item the counter name).
    """

    def __init__(
        self,
        spool: Spool,
        *,
        config: dict[str, Any] | None = None,
        producer_factory: Callable[[dict[str, Any]], Any] | None = None,
        retry_backoff_s: float = 5.0,
        max_message_bytes: int = 900_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spool = spool
        self.retry_backoff_s = retry_backoff_s
        self.max_message_bytes = max_message_bytes
        self._clock = clock
        self._config = dict(config if config is not None else producer_config(KafkaSettings()))
        self._config["error_cb"] = self._on_error
        self._config.setdefault("logger", logging.getLogger("agents.librdkafka"))
        if producer_factory is None:
            from confluent_kafka import Producer

            producer_factory = Producer
        self._factory = producer_factory
        self._producer = producer_factory(self._config)
        self._up = True
        self._purge_queued = False
        self._recreate = False
        self._drain: _Drain | None = None
        self._retry_at = 0.0
        self.stats: Counter[tuple[str, ...]] = Counter()

    @property
    def broker_up(self) -> bool:
        """False from a delivery failure or "all brokers down" until a drain succeeds."""
        return self._up

    # -- sending -----------------------------------------------------------------------
    def publish(self, topic: str, events: Sequence[Event], *, key: str) -> None:
        """Send ``events`` as ``batch/1`` value(s) on ``topic`` with ``key`` (the node)."""
        if not events:
            return
        key_bytes = key.encode()
        for start in range(0, len(events), MAX_BATCH_EVENTS):
            self._publish_chunk(topic, key_bytes, events[start:start + MAX_BATCH_EVENTS])

    def _publish_chunk(self, topic: str, key: bytes, events: Sequence[Event]) -> None:
        value = batch(list(events))
        if len(value) > self.max_message_bytes and len(events) > 1:
            half = len(events) // 2
            self._publish_chunk(topic, key, events[:half])
            self._publish_chunk(topic, key, events[half:])
            return
        self.send(topic, key, value, len(events))

    def send(self, topic: str, key: bytes, value: bytes, events: int) -> None:
        """Send one encoded message carrying ``events`` events (or spool it)."""
        if not self._up or self.spool or self._drain is not None:
            self.spool.append(topic, key, value, events)
            return
        callback = functools.partial(self._on_live_delivery, events)
        if not self._produce(topic, key, value, callback):
            self.spool.append(topic, key, value, events)

    def _produce(self, topic: str, key: bytes, value: bytes, callback: Callable) -> bool:
        """Hand one message to librdkafka; False if its queue stays full or it refuses."""
        for _ in range(_PRODUCE_RETRIES):
            try:
                self._producer.produce(topic, value, key, on_delivery=callback)
                return True
            except BufferError:
                self.stats[("queue_full",)] += 1
                self._producer.poll(0.05)
            except Exception as exc:  # KafkaException: e.g. fatal producer state
                self.stats[("produce_errors", type(exc).__name__)] += 1
                log.warning("kafka_produce_failed topic=%s error=%s", topic, exc)
                self._mark_down(str(exc))
                return False
        return False

    # -- callbacks ---------------------------------------------------------------------
    def _on_error(self, err: Any) -> None:
        name = err.name()
        self.stats[("kafka_errors", name)] += 1
        if err.fatal():
            log.error("kafka_fatal_error error=%s: recreating the producer", err.str())
            self._recreate = True
            self._mark_down(name)
        elif name in _DOWN_ERRORS:
            self._mark_down(name)

    def _mark_down(self, why: str) -> None:
        if self._up:
            log.warning("kafka_unreachable reason=%s: spooling to %s", why, self.spool.directory)
        self._up = False
        self._purge_queued = True
        self._retry_at = self._clock() + self.retry_backoff_s

    def _on_live_delivery(self, events: int, err: Any, msg: Any) -> None:
        topic = msg.topic()
        if err is None:
            self.stats[("delivered_messages", topic)] += 1
            self.stats[("delivered_events", topic)] += events
            return
        self.stats[("delivery_errors", err.name())] += 1
        self.spool.append(topic, msg.key() or b"", msg.value(), events)
        self._mark_down(err.name())

    def _on_drain_delivery(self, drain: _Drain, events: int, err: Any, msg: Any) -> None:
        drain.pending -= 1
        if err is None:
            topic = msg.topic()
            self.stats[("delivered_messages", topic)] += 1
            self.stats[("delivered_events", topic)] += events
            self.stats[("drained_events",)] += events
        else:
            drain.failed = True
            self.stats[("delivery_errors", err.name())] += 1
            self._mark_down(err.name())
        if drain.pending == 0:
            self._finish_drain(drain)

    def _finish_drain(self, drain: _Drain) -> None:
        self._drain = None
        if drain.failed:
            self._retry_at = self._clock() + self.retry_backoff_s
            return
        self.spool.remove(drain.segment)
        if not self._up:
            log.info("kafka_reachable: draining spool (%d messages left)", len(self.spool))
        self._up = True

    # -- housekeeping ------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery callbacks (waiting up to ``timeout_s`` seconds for one), move
        what librdkafka holds into the spool when the broker went down, and drain."""
        self._producer.poll(timeout_s)
        if self._recreate:
            self._replace_producer()
        elif self._purge_queued:
            self._purge_queued = False
            # Queued (not in-flight) messages come back through their callbacks: spooled.
            self._producer.purge(in_queue=True, in_flight=False, blocking=True)
            self._producer.poll(0)
        self._maybe_drain()

    def _replace_producer(self) -> None:
        self._recreate = False
        old = self._producer
        old.purge(in_queue=True, in_flight=True, blocking=True)
        old.flush(1.0)
        self._producer = self._factory(self._config)
        self.stats[("producer_recreated",)] += 1

    def _maybe_drain(self) -> None:
        if self._drain is not None or not self.spool:
            return
        if not self._up and self._clock() < self._retry_at:
            return
        head = self.spool.head()
        if head is None:
            return
        segment, records = head
        if not records:
            self.spool.remove(segment)
            return
        drain = self._drain = _Drain(segment, len(records))
        for i, record in enumerate(records):
            callback = functools.partial(self._on_drain_delivery, drain, record.events)
            if not self._produce(record.topic, record.key, record.value, callback):
                # The rest stays in the segment; it is retried as a whole.
                drain.failed = True
                drain.pending -= len(records) - i
                if drain.pending == 0:
                    self._finish_drain(drain)
                break

    def pending(self) -> int:
        """Messages handed to librdkafka and not yet acknowledged or failed."""
        return len(self._producer)

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for librdkafka to deliver what it holds and
        for the spool to drain; True when both are empty."""
        deadline = self._clock() + timeout_s
        while True:
            self.poll(0.05)
            if not self.spool and self._drain is None and len(self._producer) == 0:
                return True
            if self._clock() >= deadline:
                return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what can be delivered within ``timeout_s``, spool the rest, close."""
        if self._up:
            self._producer.flush(max(timeout_s, 0.0))
        self._producer.purge(in_queue=True, in_flight=True, blocking=True)
        self._producer.flush(1.0)  # serves the purged messages' callbacks -> spool
        self.spool.close()
        left = len(self.spool)
        if left:
            log.info("publisher_closed spooled_messages=%d dir=%s", left, self.spool.directory)
