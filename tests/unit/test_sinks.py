"""mfuio.sinks: configuration, the fan-out, the Prometheus sink over real HTTP and the
InfluxDB sink against a local HTTP server that refuses one point."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from mfu.config import InfluxSettings, KafkaSettings
from mfu.events import MfuWindow
from mfuio.health import HealthServer, PipelineMetrics
from mfuio.influx import to_line
from mfuio.sinks import FanOut, Rejection, Sink, SinkContext, SinkResult, SinkSettings, build_sinks
from mfuio.sinks.influxdb import InfluxSink
from mfuio.sinks.prometheus import PrometheusSink

T0 = 1_700_000_000.0


def window(key: str, start: float = T0, scope: str = "workload", **kw: object) -> MfuWindow:
    base = {"event_id": f"{scope}:{key}:{start}", "scope": scope, "key": key,
            "window_start": start, "window_end": start + 10, "mfu": 0.4,
            "achieved_flops": 4e15, "peak_flops": 1e16, "gpu_seconds": 10.0, "gpus": 1}
    base.update(kw)
    return MfuWindow(**base)  # type: ignore[arg-type]


def test_settings_select_kinds_in_order_and_refuse_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SinkSettings().kinds() == ["influxdb"]  # the default: as before sinks existed
    monkeypatch.setenv("MFU_STREAMS_SINKS", " InfluxDB, prometheus ,influxdb,")
    assert SinkSettings().kinds() == ["influxdb", "prometheus"]
    with pytest.raises(ValidationError, match=r"unknown sink kind.*'statsd'.*known: influxdb"):
        SinkSettings(sinks="influxdb,statsd")
    assert SinkSettings(sinks="").kinds() == []


def test_build_sinks_checks_what_each_kind_needs() -> None:
    ctx = SinkContext(influx=InfluxSettings(enabled=False), kafka=KafkaSettings(),
                      metrics=PipelineMetrics("streams"), metrics_port=None)
    with pytest.raises(ValueError, match="MFU_STREAMS_SINK_KAFKA_TOPIC"):
        build_sinks(SinkSettings(sinks="kafka"), ctx)
    with pytest.raises(ValueError, match="MFU_STREAMS_METRICS_PORT"):
        build_sinks(SinkSettings(sinks="prometheus"), ctx)
    ctx.metrics_port = 9109
    fan = build_sinks(SinkSettings(sinks="influxdb,prometheus"), ctx)
    # influxdb left out: MFU_INFLUX_ENABLED=false
    assert [s.name for s in fan.sinks] == ["prometheus"]
    assert all(isinstance(s, Sink) for s in fan.sinks)


class Refusing:
    name = "refusing"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def write(self, batch: Sequence[MfuWindow]) -> SinkResult:
        self.seen += [r.key for r in batch]
        return SinkResult(written=len(batch) - 1, rejected=[Rejection(batch[0], "no", self.name)])

    def close(self) -> None:
        pass


class Broken(Refusing):
    name = "broken"

    def write(self, batch: Sequence[MfuWindow]) -> SinkResult:
        raise OSError("outage")


def test_fanout_merges_refusals_and_propagates_failures() -> None:
    a, b = Refusing(), Refusing()
    result = FanOut([a, b]).write([window("x"), window("y")])
    assert a.seen == b.seen == ["x", "y"]
    assert [(r.record.key, r.sink) for r in result.rejected] == [("x", "refusing")] * 2
    with pytest.raises(OSError, match="outage"):
        FanOut([a, Broken()]).write([window("z")])
    assert FanOut([a]).write([]).rejected == []


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def labels(key: str, scope: str = "workload", gpu_model: str = "", tenant: str = "",
           fleet: str = "") -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"scope": scope, "key": key, "gpu_model": gpu_model, "tenant": tenant,
                         "fleet": fleet}.items()))


def test_prometheus_sink_latest_window_per_key_over_http() -> None:
    now = [100.0]
    metrics = PipelineMetrics("streams")
    sink = PrometheusSink(metrics.registry, expire_s=60, clock=lambda: now[0])
    server = HealthServer(metrics, host="127.0.0.1", port=0).start()
    try:
        sink.write([
            window("job-a", T0, gpu_model="H100", tenant="team-x", energy_j=7000.0,
                   mfu_estimated=0.45, coverage=0.8, mbu=0.3),
            window("job-a", T0 + 10, gpu_model="H100", tenant="team-x", mfu=0.5,
                   energy_j=6500.0),
            window("job-b", T0, mfu=None, mfu_reason="no FLOP reports"),
            window("pool", T0, scope="fleet", fleet="pool", allocation=0.9, mfu_allocated=0.2),
        ])
        sink.write([window("job-a", T0, gpu_model="H100", tenant="team-x", mfu=0.1)])  # older
        got = scrape(server.port)
        a = labels("job-a", gpu_model="H100", tenant="team-x")
        assert got[("mfu_window_mfu", a)] == 0.5  # the newer window, not the replayed one
        assert got[("mfu_window_energy_j", a)] == 6500.0
        assert ("mfu_window_mfu_estimated", a) not in got  # null in the newest window
        # 4e15 FLOPs / 10 s / 1e12 = 400 TFLOP/s; peak 1e16 / 10 / 1e12 = 1000
        assert got[("mfu_window_achieved_tflops", a)] == 400.0
        assert got[("mfu_window_peak_tflops", a)] == 1000.0
        assert got[("mfu_window_end_timestamp_seconds", a)] == T0 + 20
        assert ("mfu_window_mfu", labels("job-b")) not in got  # unknown is absent, not 0
        assert got[("mfu_window_gpus", labels("job-b"))] == 1
        pool = labels("pool", scope="fleet", fleet="pool")
        assert got[("mfu_window_allocation", pool)] == 0.9
        assert got[("mfu_window_mfu_allocated", pool)] == 0.2
        # job-a was written at t=100; at t=150 job-b is refreshed, at t=170 job-a expires
        now[0] = 150.0
        sink.write([window("job-b", T0 + 10)])
        now[0] = 170.0
        got = scrape(server.port)
        assert ("mfu_window_gpus", a) not in got
        assert got[("mfu_window_mfu", labels("job-b"))] == 0.4
        # the stage's own metrics are on the same page
        assert any(name == "mfu_pipeline_ready" for name, _ in got)
    finally:
        server.close()
        sink.close()


def test_prometheus_sink_scopes_limit_the_series() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    ctx = SinkContext(influx=InfluxSettings(enabled=False), kafka=KafkaSettings(),
                      metrics=type("M", (), {"registry": registry})(), metrics_port=9109)
    (sink,) = build_sinks(SinkSettings(sinks="prometheus", sink_prometheus_scopes="fleet"),
                          ctx).sinks
    sink.write([window("job-a"), window("pool", scope="fleet")])
    text = generate_latest(registry).decode()
    assert 'key="pool"' in text and 'key="job-a"' not in text


def test_influx_sink_returns_refused_records() -> None:
    recs = [window("a"), window("b"), window("c")]
    bad = to_line(recs[2])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            if bad in body.split("\n"):
                payload = json.dumps({"error": f"unable to parse '{bad}': bad timestamp"})
                code = 400
            else:
                payload, code = "", 204
            self.send_response(code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        sink = InfluxSink(InfluxSettings(url=f"http://127.0.0.1:{httpd.server_address[1]}",
                                         token="u:p"))
        result = sink.write(recs)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.written == 2
    (rej,) = result.rejected
    assert rej.record is recs[2] and rej.sink == "influxdb" and "bad timestamp" in rej.reason
