"""The sink interface: where closed windows go besides the stage's own Kafka topics.

A sink takes a batch of ``MfuWindow`` records and returns what it refused, with the
reason; it raises when it could not take the batch at all (an outage it gave up on, a
bad configuration), so the caller does not ack the input and replays it. Batching,
retrying and buffering live inside each sink, so the caller stays one line
(telegraf's ``Write(batch)``, quixstreams' ``BatchingSink.write``).

Adding a sink: one module in this package with a class implementing :class:`Sink` and a
``from_settings(settings, ctx)`` factory (the module's name is the kind), one test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mfu.events import MfuWindow


@dataclass(frozen=True)
class Rejection:
    """One record a sink refused for what it is (writing it again cannot succeed)."""

    record: MfuWindow
    reason: str
    sink: str


@dataclass
class SinkResult:
    """Records taken by the sink (``written``) and those refused (``rejected``)."""

    written: int = 0
    rejected: list[Rejection] = field(default_factory=list)


@runtime_checkable
class Sink(Protocol):
    """Where closed windows go. ``write`` blocks until the batch is durable in the sink
    (or held by it, for in-memory sinks); it is called from a worker thread, never from
    the event loop."""

    name: str

    def write(self, batch: Sequence[MfuWindow]) -> SinkResult:
        """Take ``batch``; return the records refused, with the reason. Raises when the
        batch as a whole could not be taken (the caller must not ack its input)."""
        ...

    def close(self) -> None:
        """Release connections; a retrying write in progress gives up."""
        ...


class FanOut:
    """Several sinks as one: each gets every batch, in order; refusals are merged (each
    names its sink). A sink that raises stops the batch: the input is replayed and the
    sinks before it see the records again, which they must tolerate (InfluxDB points and
    Kafka records with the same key and window are idempotent for readers; the
    Prometheus sink keeps only the latest window)."""

    name = "fanout"

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def write(self, batch: Sequence[MfuWindow]) -> SinkResult:
        result = SinkResult(written=len(batch))
        if not batch:
            return SinkResult()
        for sink in self.sinks:
            part = sink.write(batch)
            result.rejected += part.rejected
        return result

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
