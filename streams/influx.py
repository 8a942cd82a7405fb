"""InfluxDB sink for closed windows (DESIGN.md §4, contract).

Measurement ``mfu``, one point per closed window and scope, timestamp = ``window_start``.
Tags: ``scope``, ``key`` and low-cardinality context (``gpu_model``, ``precision``,
``fleet``; DESIGN.md §8: ``tenant`` on workload points and ``regime``, when known).
Fields are always floats (``gpus`` too) so their type never changes; a field whose value
is unknown (null in the record) is left out of the point.

The writer is synchronous and retries with capped exponential backoff until the server
acknowledges: an outage delays results, it never drops them (the caller commits input
offsets only after :meth:`InfluxWriter.write` returns). We do not use influxdb-client's
batching WriteApi, which drops a batch once its retries run out.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable

from mfu.config import InfluxSettings
from mfu.events import MfuWindow

log = logging.getLogger("mfu.streams.influx")

TAG_FIELDS = ("gpu_model", "precision", "fleet", "tenant", "regime")


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def point_fields(rec: MfuWindow) -> dict[str, float]:
    """Field values of one record's point (all floats; absent values are omitted)."""
    window_s = rec.window_end - rec.window_start
    fields: dict[str, float | None] = {
        "mfu": rec.mfu,
        "achieved_tflops": rec.achieved_flops / window_s / 1e12,
        "peak_tflops": rec.peak_flops / window_s / 1e12,
        "gpu_seconds": rec.gpu_seconds,
        "gpus": float(rec.gpus),
        "sm_util": rec.sm_util,
        "tensor_active": rec.tensor_active,
        "window_s": window_s,
        "mem_util": rec.mem_util,
        "hfu": rec.hfu,
        "allocation": rec.allocation,
        "mfu_allocated": rec.mfu_allocated,
        "expected_mfu": rec.expected_mfu,
        "late_events": float(rec.late_events),
        "duplicates": float(rec.duplicates),
        "tokens": rec.tokens,
        # DESIGN.md §8: sources, estimate, bandwidth, energy (names = the record's).
        "coverage": rec.coverage,
        "ofu": rec.ofu,
        "mfu_estimated": rec.mfu_estimated,
        "estimated_tflops": (rec.estimated_flops / window_s / 1e12
                             if rec.estimated_flops is not None else None),
        "mbu": rec.mbu,
        "achieved_bytes": rec.achieved_bytes,
        "peak_bytes": rec.peak_bytes,
        "dram_active": rec.dram_active,
        "energy_j": rec.energy_j,
        "flops_per_j": rec.flops_per_j,
        "tokens_per_j": rec.tokens_per_j,
    }
    src = rec.flop_sources
    if src is not None:
        fields.update(flop_sources_reported=src.reported, flop_sources_engine=src.engine,
                      flop_sources_idle=src.idle, flop_sources_counters=src.counters,
                      flop_sources_none=src.none)
    return {k: float(v) for k, v in fields.items() if v is not None}


def to_line(rec: MfuWindow, measurement: str = "mfu") -> str:
    """One line of InfluxDB line protocol, nanosecond timestamp."""
    tags = [f"scope={rec.scope}", f"key={_escape_tag(rec.key)}"]
    for name in TAG_FIELDS:
        value = getattr(rec, name)
        if value:
            tags.append(f"{name}={_escape_tag(str(value))}")
    fields = ",".join(f"{k}={v!r}" for k, v in point_fields(rec).items())
    ts_ns = round(rec.window_start * 1_000_000_000)
    return f"{_escape_tag(measurement)},{','.join(tags)} {fields} {ts_ns}"


class InfluxWriter:
    """Blocking, retrying writer of ``MfuWindow`` records (v2 API or legacy v1 ``/write``)."""

    def __init__(self, settings: InfluxSettings, *, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self._sleep = sleep
        self._stop = threading.Event()
        self.retries = 0
        self.points_written = 0
        self._client = None
        self._write_api = None
        if settings.api == "v2":
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS

            token = settings.token.get_secret_value() if settings.token else ""
            self._client = InfluxDBClient(
                url=settings.url, token=token, org=settings.org,
                timeout=int(settings.timeout_s * 1000), retries=0,
            )
            self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def close(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.close()

    def stop(self) -> None:
        """Make a retrying write give up (used at shutdown; the records are then not acked)."""
        self._stop.set()

    def _write_once(self, lines: list[str]) -> None:
        body = "\n".join(lines)
        if self._write_api is not None:
            self._write_api.write(bucket=self.settings.bucket, org=self.settings.org,
                                  record=body, write_precision="ns")
            return
        db, rp = self.settings.v1_database()
        query = {"db": db, "precision": "ns"}
        if rp:
            query["rp"] = rp
        url = f"{self.settings.url.rstrip('/')}/write?{urllib.parse.urlencode(query)}"
        req = urllib.request.Request(url, data=body.encode(), method="POST")
        if self.settings.token:
            user, _, password = self.settings.token.get_secret_value().partition(":")
            import base64

            cred = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {cred}")
        with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
            if resp.status // 100 != 2:
                raise OSError(f"InfluxDB /write answered HTTP {resp.status}")

    def write(self, records: Iterable[MfuWindow]) -> int:
        """Write all records; retry until acknowledged or :meth:`stop`. Returns points written.

        Raises ``InterruptedError`` if stopped before the write was acknowledged.
        """
        return self.write_lines([to_line(r, self.settings.measurement) for r in records])

    def write_lines(self, lines: list[str], *, max_attempts: int | None = None) -> int:
        """Write line-protocol lines, retrying with backoff until acknowledged, :meth:`stop`,
        or ``max_attempts`` failures (then the last error is raised)."""
        if not lines:
            return 0
        delay = 0.2
        for i in range(0, len(lines), self.settings.batch_size):
            chunk = lines[i : i + self.settings.batch_size]
            attempts = 0
            while True:
                if self._stop.is_set():
                    raise InterruptedError("InfluxDB writer stopped before the write was acknowledged")
                try:
                    self._write_once(chunk)
                    break
                except Exception as exc:  # network, HTTP 5xx/4xx: keep the data, retry
                    self.retries += 1
                    attempts += 1
                    if max_attempts is not None and attempts >= max_attempts:
                        raise
                    log.warning(
                        "influxdb write failed, retrying",
                        extra={"url": self.settings.url, "error": _safe_error(exc),
                               "retry_in_s": round(delay, 2), "points": len(chunk)},
                    )
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.settings.max_retry_delay_s)
            self.points_written += len(chunk)
        return len(lines)


def _safe_error(exc: Exception) -> str:
    """Error text without credentials (the client never puts the token in messages, but
    URLs with userinfo could)."""
    text = f"{type(exc).__name__}: {exc}"
    return text.split("\n", 1)[0][:300]
