"""InfluxDB sink: measurement ``mfu`` (DESIGN.md §4) through :class:`mfuio.influx.InfluxWriter`,
which retries outages, splits oversized batches and hands back the points InfluxDB
refuses (400/422/413) with its reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mfu.config import InfluxSettings
from mfu.events import MfuWindow
from mfuio.sinks import SinkContext, SinkSettings
from mfuio.sinks.base import Rejection, SinkResult


class InfluxSink:
    name = "influxdb"

    def __init__(self, settings: InfluxSettings, *,
                 observe: Callable[[str, float, int], None] | None = None) -> None:
        from mfuio.influx import InfluxWriter  # the line protocol lives with the writer

        self.writer = InfluxWriter(settings, observe=observe)

    def write(self, batch: Sequence[MfuWindow]) -> SinkResult:
        result = self.writer.write(batch)
        rejected = [Rejection(r.record, r.reason, self.name)
                    for r in result.rejected if r.record is not None]
        return SinkResult(written=result.written, rejected=rejected)

    def close(self) -> None:
        self.writer.close()


def from_settings(settings: SinkSettings, ctx: SinkContext) -> InfluxSink:
    """The ``influxdb`` sink (measurement ``mfu``), reporting writes to the stage's metrics."""
    observe = ctx.metrics.influx_observer if ctx.metrics is not None else None
    return InfluxSink(ctx.influx, observe=observe)
