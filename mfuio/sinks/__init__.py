"""Sinks for closed windows, selected by configuration (``MFU_STREAMS_SINKS``).

Kinds are the modules of this package (``known_kinds()``), each with a
``from_settings(settings, ctx) -> Sink`` factory: ``influxdb`` (measurement ``mfu``, the default), ``prometheus``
(latest window per key as gauges on the stage's /metrics) and ``kafka`` (every record to
one extra topic, ``MFU_STREAMS_SINK_KAFKA_TOPIC``). ``build_sinks`` turns the settings into
one :class:`~mfuio.sinks.base.FanOut`; the stream stage calls its ``write(records)``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mfu.config import InfluxSettings, KafkaSettings
from mfuio.sinks.base import FanOut, Rejection, Sink, SinkResult

__all__ = ["FanOut", "Rejection", "Sink", "SinkContext", "SinkResult", "SinkSettings",
           "build_sinks", "factory", "known_kinds"]


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
        known = known_kinds()
        unknown = [k for k in _split(value) if k not in known]
        if unknown:
            raise ValueError(f"unknown sink kind(s) {unknown}; known: {', '.join(known)} "
                             "(a kind is a module mfuio/sinks/<kind>.py)")
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


# Modules of this package that are not sinks.
_NOT_SINKS = frozenset({"base"})


def known_kinds() -> list[str]:
    """Sink kinds: the modules of this package (a module ``<kind>.py`` with a
    ``from_settings(settings, ctx) -> Sink`` factory is the kind ``<kind>``). Listed
    without importing them, so selecting ``influxdb`` never imports prometheus_client."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_SINKS)


def factory(kind: str) -> Callable[[SinkSettings, SinkContext], Sink]:
    """The ``from_settings`` factory of sink module ``kind`` (imported on first use)."""
    module = importlib.import_module(f"{__name__}.{kind}")
    made = getattr(module, "from_settings", None)
    if made is None:
        raise ValueError(f"sink module {module.__name__} has no from_settings(settings, ctx)")
    return made


def build_sinks(settings: SinkSettings, ctx: SinkContext) -> FanOut:
    """The configured sinks as one. ``influxdb`` is left out when
    ``MFU_INFLUX_ENABLED=false`` (as before sinks existed)."""
    sinks = [factory(kind)(settings, ctx) for kind in settings.kinds()
             if kind != "influxdb" or ctx.influx.enabled]
    return FanOut(sinks)
