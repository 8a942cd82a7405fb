"""Faust's consumer with cheaper per-message delivery (issue 14 item 1).

Faust's fetcher loop (``Consumer._drain_messages``) hands every fetched message to the
Conductor with ``await self.wait_first(callback(message), self.suspend_flow.wait())``:
four futures (the callback, the suspend flag, the service's stopped and crashed flags)
and an ``asyncio.wait`` per message, about 40 % of the worker's event-loop time in the
profile of docs/performance.md. That race only makes the loop let go of a message sooner
when a rebalance starts; it is not needed for correctness:

- ``getmany`` already stops yielding a fetch's messages once the flow stops or the
  consumer generation changes;
- on a rebalance Faust stops the fetcher, which cancels this loop wherever it waits
  (in the callback too, e.g. on a full stream buffer or suspended flow control), then
  seeks the new assignment to its committed offsets (which resets the read offsets);
- a message delivered under the old generation is dropped by the stage
  (``Runtime._stale``) and never acked, as before.

So :class:`DirectDeliveryConsumer` awaits the callback directly, keeping everything else
of the loop (gap tracking for acks, read offsets, periodic commit, yielding to the event
loop every 100 messages). In-order acking (:mod:`streams.frontier`) and the per-message
ownership and generation checks of :mod:`streams.app` are unchanged.

The input topics go further (issue 14 item 1, the batch handoff): their messages do not
pass the Conductor (per message: flow-control checks, an Event, a queue put) and the
agent's stream (per message: iteration, refcounts) at all; each fetch's messages go to
the node stage in one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

# Messages delivered between explicit yields to the event loop (as in Faust's loop).
YIELD_EVERY = 100


class DirectDeliveryConsumer(AIOKafkaConsumer):
    """The aiokafka-driver consumer, delivering each message with one plain await.

    Messages of ``batch_topics`` skip the Conductor and the agent's stream altogether:
    they are tracked as pending acks (as a stream does when it yields them) and handed,
    all of one fetch at once (at most ``batch_max``), to ``on_batch``, in fetch order
    (per partition, offset order). Whoever takes them acks each with
    ``message.ack(consumer)``. Set both with :func:`install`.
    """

    batch_topics: frozenset[str] = frozenset()
    on_batch: Callable[[list[Any]], Awaitable[None]] | None = None
    batch_max: int = 2000

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - I/O loop
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        batch_topics = self.batch_topics
        on_batch = self.on_batch
        batch_max = self.batch_max
        track = self.track_message
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await asyncio.sleep(0)  # getmany may return at once, in a loop
                if not self.should_stop:
                    batch: list[Any] = []
                    async for tp, message in ait:
                        since_yield += 1
                        if since_yield > YIELD_EVERY:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        r_offset = read_offsets.get(tp)
                        if r_offset is not None and offset < r_offset:
                            continue  # read before (Faust drops these too)
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if message.topic in batch_topics:
                            track(message)
                            batch.append(message)
                            read_offsets[tp] = offset
                            if len(batch) >= batch_max:
                                await on_batch(batch)  # type: ignore[misc]
                                batch = []
                            continue
                        await callback(message)
                        # Marked read as in Faust's loop: the next message's gap check
                        # would otherwise count this offset as a gap (committable).
                        read_offsets[tp] = offset
                    if batch:
                        # Also after getmany stopped early (flow stopped, generation
                        # changed): these are marked read, so they must reach the stage,
                        # which drops those of an earlier generation itself.
                        await on_batch(batch)  # type: ignore[misc]
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def install(app: Any, *, batch_topics: Iterable[str] = (),
            on_batch: Callable[[list[Any]], Awaitable[None]] | None = None,
            batch_max: int = 2000) -> bool:
    """Make ``app`` create a :class:`DirectDeliveryConsumer` (call before it starts),
    handing the messages of ``batch_topics`` to ``on_batch``. Only for the aiokafka
    driver (``kafka://``), the one this project uses; returns False (and changes
    nothing) for another."""
    transport = app.transport
    if not issubclass(DirectDeliveryConsumer, transport.Consumer):
        return False
    topics = frozenset(batch_topics)
    if topics and on_batch is None:
        raise ValueError("batch_topics need an on_batch handler")
    transport.Consumer = type("DirectDeliveryConsumer", (DirectDeliveryConsumer,), {
        "batch_topics": topics, "on_batch": staticmethod(on_batch) if on_batch else None,
        "batch_max": batch_max})
    return True


class _FetchWaitThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the broker's longest fetch wait set."""

    fetch_max_wait_ms = 1500  # Faust's fixed value

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher (aiokafka 0.14;
        # tests/unit/test_stream_delivery.py fails if that changes).
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


def set_fetch_max_wait(app: Any, seconds: float) -> bool:
    """Make ``app``'s consumer ask the broker to answer a fetch within ``seconds`` even
    when it has no data (Kafka's ``fetch.max.wait.ms``; call before the app starts).

    Faust fixes it at 1.5 s. aiokafka keeps one fetch request in flight per broker and
    leaves out of it the partitions whose fetched records are not consumed yet, so a
    partition that was busy when the request went out is fetched again only once that
    request returns: up to 1.5 s later when the other partitions are quiet. Measured on
    ``mfu bench streams``: a 1.4 s stall on the roll-up's busiest partition at the end of
    every run, and as much added to event -> record latency. Returns False (and changes
    nothing) for a transport other than aiokafka."""
    transport = app.transport
    base = transport.Consumer
    if not issubclass(base, AIOKafkaConsumer):
        return False
    wait_ms = max(1, int(seconds * 1000))
    thread_cls = type("FetchWaitThread", (_FetchWaitThread,), {"fetch_max_wait_ms": wait_ms})

    def _new_consumer_thread(self: Any) -> Any:
        return thread_cls(self, loop=self.loop, beacon=self.beacon)

    transport.Consumer = type(base.__name__, (base,), {
        "_new_consumer_thread": _new_consumer_thread})
    return True
