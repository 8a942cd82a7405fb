"""mfuio.health: metrics and health endpoints over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mfu.config import InfluxSettings
from mfuio.health import (
    MAX_REASONS,
    HealthServer,
    PipelineMetrics,
    PoliciesHealthSettings,
    StreamsHealthSettings,
    reason_class,
    serve,
)
from mfuio.influx import InfluxWriter


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def served():  # type: ignore[no-untyped-def]
    servers = []

    def start(metrics: PipelineMetrics) -> str:
        server = HealthServer(metrics, host="127.0.0.1", port=0).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.close()


def test_health_and_readiness(served) -> None:  # type: ignore[no-untyped-def]
    m = PipelineMetrics("streams")
    base = served(m)
    status, body = get(f"{base}/readyz")
    assert status == 503 and json.loads(body)["status"] == "starting"
    assert get(f"{base}/healthz")[0] == 200  # alive while starting
    m.set_ready()
    status, body = get(f"{base}/readyz")
    assert status == 200 and json.loads(body)["stage"] == "streams"
    m.fail("InfluxDB refused the credentials: set MFU_INFLUX_TOKEN")
    for path in ("/healthz", "/readyz"):
        status, body = get(base + path)
        assert status == 503
        doc = json.loads(body)
        assert doc["status"] == "failed" and "MFU_INFLUX_TOKEN" in doc["checks"]["fatal"]
    assert get(f"{base}/nothing")[0] == 404
    assert samples(get(f"{base}/metrics")[1])[("mfu_pipeline_ready", (("stage", "streams"),))] == 0


def test_counters_by_topic_and_reason_class(served) -> None:  # type: ignore[no-untyped-def]
    m = PipelineMetrics("streams")
    base = served(m)
    m.event_in("mfu.telemetry.v1", 3)
    m.event_in("mfu.telemetry.v1", 4)
    m.event_in("mfu.flops.v1", 0)  # nothing: no series
    m.event_out("mfu.node.v1", 2)
    m.dead_letter("not valid JSON: Expecting value: line 1 column 1 (char 0)")
    m.dead_letter("not valid JSON: Extra data")
    m.dead_letter("clock skew: event time 1.000 is more than 300 s ahead", 5)
    m.late("mfu.flops.v1", 2)
    m.rebalance()
    m.rebalance()
    got = samples(get(f"{base}/metrics")[1])
    st = ("stage", "streams")
    assert got[("mfu_pipeline_events_in_total", (st, ("topic", "mfu.telemetry.v1")))] == 7
    assert ("mfu_pipeline_events_in_total", (st, ("topic", "mfu.flops.v1"))) not in got
    assert got[("mfu_pipeline_events_out_total", (st, ("topic", "mfu.node.v1")))] == 2
    assert got[("mfu_pipeline_dead_letters_total", (("reason", "not_valid_json"), st))] == 2
    assert got[("mfu_pipeline_dead_letters_total", (("reason", "clock_skew"), st))] == 5
    assert got[("mfu_pipeline_late_events_total", (st, ("topic", "mfu.flops.v1")))] == 2
    assert got[("mfu_pipeline_rebalances_total", (st,))] == 2


def test_reason_labels_are_capped() -> None:
    assert reason_class("invalid gpu_sample/1: ts: Input should be a valid number") == \
        "invalid_gpu_sample/1"
    assert reason_class("") == "unknown"
    m = PipelineMetrics("streams")
    for i in range(MAX_REASONS + 8):
        m.dead_letter(f"reason {i}: detail")
    got = samples(generate(m))
    reasons = {dict(labels)["reason"]: v for (name, labels), v in got.items()
               if name == "mfu_pipeline_dead_letters_total"}
    # 32 distinct classes keep their label, the 8 after them count as "other"
    assert len(reasons) == MAX_REASONS + 1 and reasons["other"] == 8


def generate(m: PipelineMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


def test_watermark_delay_lag_and_backlog_at_scrape_time() -> None:
    now = [1000.0]
    m = PipelineMetrics("streams", clock=lambda: now[0])
    m.window_closed("node", 3, 990.0)
    m.window_closed("node", 3, 985.0)  # an older window closing later does not go back
    m.window_closed("rollup", 0, 970.0)
    m.add_lag_source(lambda: [("mfu.telemetry.v1", 3, 12), ("mfu.flops.v1", 3, 0)])

    def broken() -> list[tuple[str, int, float]]:
        raise RuntimeError("dictionary changed size during iteration")

    m.add_lag_source(broken)  # skipped, the others still reported
    m.add_backlog_source(lambda: 7)
    m.add_backlog_source(lambda: 5)
    now[0] = 1004.5
    got = samples(generate(m))
    st = ("stage", "streams")
    # 1004.5 - 990 = 14.5 s; rollup 1004.5 - 970 = 34.5 s
    assert got[("mfu_pipeline_watermark_delay_seconds",
                (("kind", "node"), ("partition", "3"), st))] == 14.5
    assert got[("mfu_pipeline_watermark_delay_seconds",
                (("kind", "rollup"), ("partition", "0"), st))] == 34.5
    assert got[("mfu_pipeline_consumer_lag_messages",
                (("partition", "3"), st, ("topic", "mfu.telemetry.v1")))] == 12
    assert got[("mfu_pipeline_influx_backlog_points", (st,))] == 12  # 7 + 5
    m.forget_partition("node", 3)
    assert not any(k[0] == "mfu_pipeline_watermark_delay_seconds" and ("partition", "3") in k[1]
                   for k in samples(generate(m)))


def test_influx_writer_reports_latency_and_outcomes() -> None:
    answers = iter([503, 204])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            code = next(answers)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        m = PipelineMetrics("policies")
        writer = InfluxWriter(InfluxSettings(url=f"http://127.0.0.1:{httpd.server_address[1]}",
                                             token="u:p"),
                              sleep=lambda _s: None, observe=m.influx_observer)
        writer.write_lines(["m,key=a v=1 1", "m,key=b v=1 1"])
    finally:
        httpd.shutdown()
        httpd.server_close()
    got = samples(generate(m))
    st = ("stage", "policies")
    assert got[("mfu_pipeline_influx_requests_total", (("outcome", "retry"), st))] == 1
    assert got[("mfu_pipeline_influx_requests_total", (("outcome", "ok"), st))] == 1
    assert got[("mfu_pipeline_influx_points_total", (st,))] == 2
    assert got[("mfu_pipeline_influx_write_seconds_count", (st,))] == 2
    assert got[("mfu_pipeline_influx_write_seconds_sum", (st,))] > 0


def test_settings_per_stage_and_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFU_STREAMS_METRICS_PORT", "0")
    monkeypatch.setenv("MFU_POLICIES_METRICS_HOST", "127.0.0.1")
    assert StreamsHealthSettings().metrics_port == 0
    assert PoliciesHealthSettings().metrics_port is None  # unset: no server
    assert serve(PipelineMetrics("policies"), PoliciesHealthSettings()) is None
    server = serve(PipelineMetrics("streams"),
                   StreamsHealthSettings(metrics_host="127.0.0.1"))
    assert server is not None
    try:
        assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
        # the port is taken now: a second server is logged and skipped, never fatal
        taken = StreamsHealthSettings(metrics_host="127.0.0.1", metrics_port=server.port)
        with socket.socket() as probe:
            probe.connect(("127.0.0.1", server.port))
        assert serve(PipelineMetrics("streams"), taken) is None
    finally:
        server.close()
