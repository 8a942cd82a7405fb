"""Sinks for closed windows, selected by configuration (``MFU_STREAMS_SINKS``).

Kinds (``KINDS``): ``influxdb`` (measurement ``mfu``, the default), ``prometheus``
(latest window per key as gauges on the stage's /metrics) and ``kafka`` (every record to
one extra topic, ``MFU_STREAMS_SINK_KAFKA_TOPIC``). ``build_sinks`` turns the settings into
one :class:`~mfuio.sinks.base.FanOut`; the stream stage calls its ``write(records)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mfu.config import InfluxSettings, KafkaSettings
from mfuio.sinks.base import FanOut, Rejection, Sink, SinkResult

__all__ = ["KINDS", "FanOut", "Rejection", "Sink", "SinkContext", "SinkResult", "SinkSettings",
           "build_sinks"]


class SinkSettings(BaseSettings):
    """Which sinks the stream stage writes closed windows to (env prefix ``MFU_STREAMS_``)."""

    model_config = SettingsConfigDict(env_prefix="MFU_STREAMS_", extra="ignore", frozen=True)

    sinks: str = Field("influxdb", description="comma-separated sink kinds: influxdb, "
                       "prometheus, kafka ('' = none besides the Kafka output topics)")
    sink_kafka_topic: str | None = Field(None, description="topic of the kafka sink")
    sink_prometheus_expire_s: float = Field(
        600.0, gt=0, description="prometheus sink: drop keys not updated for this long")
    sink_prometheus_scopes: str = Field(
        "workload,node,fleet", description="prometheus sink: scopes exposed (each key is "
        "17 series; e.g. 'fleet,node' where workloads are many)")

    @field_validator("sinks")
    @classmethod
    def _known(cls, value: str) -> str:
        unknown = [k for k in _split(value) if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown sink kind(s) {unknown}; known: {', '.join(KINDS)}")
        return value

    def kinds(self) -> list[str]:
        return _split(self.sinks)


def _split(value: str) -> list[str]:
    seen: list[str] = []
    for part in value.split(","):
        kind = part.strip().lower()
        if kind and kind not in seen:
            seen.append(kind)
    return seen


@dataclass
class SinkContext:
    """What sink factories may need: connection settings and the stage's health metrics
    (``mfuio.health.PipelineMetrics``; the prometheus sink registers in its registry)."""

    influx: InfluxSettings
    kafka: KafkaSettings
    metrics: Any = None  # PipelineMetrics | None
    metrics_port: int | None = None  # where the stage serves /metrics (None: not served)


def _influxdb(settings: SinkSettings, ctx: SinkContext) -> Sink:
    from mfuio.sinks.influxdb import InfluxSink

    observe = ctx.metrics.influx_observer if ctx.metrics is not None else None
    return InfluxSink(ctx.influx, observe=observe)


def _prometheus(settings: SinkSettings, ctx: SinkContext) -> Sink:
    from mfuio.sinks.prometheus import PrometheusSink

    if ctx.metrics is None or ctx.metrics_port is None:
        raise ValueError("the prometheus sink is served on the stage's /metrics: set "
                         "MFU_STREAMS_METRICS_PORT (e.g. 9109) to serve it")
    return PrometheusSink(ctx.metrics.registry, expire_s=settings.sink_prometheus_expire_s,
                          scopes=_split(settings.sink_prometheus_scopes))


def _kafka(settings: SinkSettings, ctx: SinkContext) -> Sink:
    from mfuio.sinks.kafka import KafkaTopicSink

    if not settings.sink_kafka_topic:
        raise ValueError("MFU_STREAMS_SINKS names kafka but MFU_STREAMS_SINK_KAFKA_TOPIC "
                         "is not set: name the topic the records go to")
    return KafkaTopicSink(ctx.kafka, settings.sink_kafka_topic)


# kind -> factory(settings, context) -> Sink. Adding a sink: one module + one entry here.
KINDS: dict[str, Callable[[SinkSettings, SinkContext], Sink]] = {
    "influxdb": _influxdb,
    "prometheus": _prometheus,
    "kafka": _kafka,
}


def build_sinks(settings: SinkSettings, ctx: SinkContext) -> FanOut:
    """The configured sinks as one. ``influxdb`` is left out when
    ``MFU_INFLUX_ENABLED=false`` (as before sinks existed)."""
    sinks = [KINDS[kind](settings, ctx) for kind in settings.kinds()
             if kind != "influxdb" or ctx.influx.enabled]
    return FanOut(sinks)
