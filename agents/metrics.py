"""Agent health and counters in Prometheus text format on a local HTTP port.

Components keep plain ``Counter`` objects (``stats``) so the hot path pays one dict
increment and knows nothing of Prometheus; :class:`StatsCollector` turns them into
metric families at scrape time, in a private ``CollectorRegistry``. A stats key
``("rejected", "nan")`` of component ``intake`` becomes
``mfu_agent_intake_rejected_total{reason="nan"}`` (label names from :data:`LABELS`).

Endpoints: ``/metrics`` (Prometheus text) and ``/healthz`` (JSON; 200 while samples are
being collected, 503 when the last interval is older than ``stale_after_s``; a broker
outage alone is not unhealthy: the agent spools).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mfuio.httpserve import EndpointServer

# stats key head -> label names of the items that follow it
LABELS: dict[str, tuple[str, ...]] = {
    "nvml_errors": ("field", "error"),
    "unavailable": ("field",),
    "discovery_errors": ("error",),
    "attribution": ("source",),
    "attribution_errors": ("reason",),
    "tenant": ("source",),
    "energy_fallbacks": ("reason",),
    "pipe_counters": ("source",),
    "dcgm_errors": ("reason",),
    "rejected": ("reason",),
    "delivered_messages": ("topic",),
    "delivered_events": ("topic",),
    "delivery_errors": ("error",),
    "kafka_errors": ("error",),
    "produce_errors": ("error",),
}


class StatsCollector:
    """Prometheus collector over components' ``stats`` counters and live gauges.

    ``components``: name -> object with a ``stats`` Counter (tuple or str keys).
    ``gauges``: name -> (help, zero-argument function returning a float).
    """

    def __init__(self, components: Mapping[str, Any],
                 gauges: Mapping[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self.components = dict(components)
        self.gauges = dict(gauges or {})

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily] = {}
        for component, obj in self.components.items():
            for key, value in list(obj.stats.items()):
                parts = (key,) if isinstance(key, str) else tuple(key)
                head, rest = parts[0], parts[1:]
                name = f"mfu_agent_{component}_{head}"
                labels = LABELS.get(head, ())[: len(rest)]
                family = families.get(name)
                if family is None:
                    family = families[name] = CounterMetricFamily(
                        name, f"{component}: {head.replace('_', ' ')}", labels=list(labels))
                family.add_metric([str(v) for v in rest[: len(labels)]], float(value))
        yield from families.values()
        for name, (help_text, read) in self.gauges.items():
            yield GaugeMetricFamily(f"mfu_agent_{name}", help_text, value=float(read()))


def make_registry(collector: StatsCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


class MetricsServer(EndpointServer):
    """HTTP server for ``/metrics`` and ``/healthz`` in a daemon thread.

    ``health``: returns (healthy, details dict) for ``/healthz``. Port 0 picks a free
    port (see :attr:`port`)."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, dict]],
                 *, host: str = "127.0.0.1", port: int = 9108) -> None:
        def route(path: str) -> tuple[int, str, bytes]:
            if path == "/metrics":
                return 200, CONTENT_TYPE_LATEST, generate_latest(registry)
            if path in ("/healthz", "/health"):
                ok, details = health()
                body = json.dumps({"status": "ok" if ok else "unhealthy", **details}).encode()
                return (200 if ok else 503), "application/json", body
            return 404, "text/plain", b"not found: try /metrics or /healthz\n"

        super().__init__(route, host=host, port=port, thread_name="mfu-metrics")
