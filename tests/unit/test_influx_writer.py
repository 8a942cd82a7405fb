"""InfluxWriter against a real HTTP server on 127.0.0.1 that answers each class of error
the way InfluxDB does (1.x ``error`` bodies naming the failing line, 3.x ``line_number``,
413, 401/403/404, 429 with Retry-After, 5xx, timeouts, refused connections)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mfu.config import InfluxSettings
from mfu.events import MfuWindow
from mfuio.influx import (
    InfluxConfigError,
    InfluxUnavailable,
    InfluxWriter,
    _escape_tag,
    to_line,
)

# (status, headers, body) from the request's body lines
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    lines: list[str]


@dataclass
class FakeInflux:
    answer: Callable[[list[str], int], Answer]  # (lines, request number) -> answer
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[list[str], int], Answer]], FakeInflux]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[list[str], int], Answer]) -> FakeInflux:
        fake = FakeInflux(answer)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                lines = body.split("\n")
                fake.seen.append(Seen(self.path, dict(self.headers), lines))
                status, headers, payload = fake.answer(lines, len(fake.seen))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return fake

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def settings(url: str, **kw: object) -> InfluxSettings:
    base = {"url": url, "token": "user:pw", "org": "-", "bucket": "mfu/autogen",
            "timeout_s": 2.0, "max_retry_delay_s": 30.0}
    base.update(kw)
    return InfluxSettings(**base)  # type: ignore[arg-type]


def window(key: str, start: float = 1.7e9) -> MfuWindow:
    return MfuWindow(event_id=f"e-{key}", scope="workload", key=key, window_start=start,
                     window_end=start + 10, mfu=0.5, achieved_flops=5e15, peak_flops=1e16,
                     gpu_seconds=10, gpus=1)


def ok(_lines: list[str], _n: int) -> Answer:
    return 204, {}, b""


def err(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(
        {"error": message}).encode()


def test_success_sends_all_lines_with_token_auth(server) -> None:  # type: ignore[no-untyped-def]
    fake = server(ok)
    writer = InfluxWriter(settings(fake.url))
    result = writer.write([window("a"), window("b"), window("c")])
    assert (result.written, result.rejected) == (3, [])
    (req,) = fake.seen
    assert req.path == "/api/v2/write?org=-&bucket=mfu%2Fautogen&precision=ns"
    assert req.headers["Authorization"] == "Token user:pw"
    assert req.lines == [to_line(window(k)) for k in "abc"]


def test_v1_write_uses_db_rp_and_basic_auth(server) -> None:  # type: ignore[no-untyped-def]
    fake = server(ok)
    InfluxWriter(settings(fake.url, api="v1")).write_lines(["m,key=a v=1 1"])
    (req,) = fake.seen
    assert req.path == "/write?db=mfu&precision=ns&rp=autogen"
    assert req.headers["Authorization"] == "Basic dXNlcjpwdw=="  # base64("user:pw")


def test_400_named_line_is_rejected_and_the_rest_written(server) -> None:  # type: ignore[no-untyped-def]
    recs = [window("a"), window("b"), window("c")]
    bad = to_line(recs[1])

    def answer(lines: list[str], n: int) -> Answer:
        if bad in lines:  # InfluxDB 1.x: partial write naming the line it could not parse
            return err(400, f"partial write: unable to parse '{bad}': invalid field format "
                            "dropped=0")
        return ok(lines, n)

    fake = server(answer)
    result = InfluxWriter(settings(fake.url)).write(recs)
    assert result.written == 2
    (rej,) = result.rejected
    assert rej.record is recs[1] and rej.line == bad and rej.status == 400
    assert "invalid field format" in rej.reason
    # first request: all three; second: the two good ones, in order
    assert [s.lines for s in fake.seen] == [[to_line(r) for r in recs],
                                            [to_line(recs[0]), to_line(recs[2])]]


def test_400_unnamed_is_bisected_to_the_bad_point(server) -> None:  # type: ignore[no-untyped-def]
    lines = [f"m,key=k{i} v=1 {i}" for i in range(4)]

    def answer(got: list[str], n: int) -> Answer:
        if lines[2] in got:  # a type conflict names no line
            return err(400, 'partial write: field type conflict: input field "v" on '
                            'measurement "m" is type float, already exists as type string')
        return ok(got, n)

    fake = server(answer)
    result = InfluxWriter(settings(fake.url)).write_lines(lines)
    # [0..3] 400 -> [0,1] ok, [2,3] 400 -> [2] 400 (rejected), [3] ok: 5 requests, 3 written
    assert [s.lines for s in fake.seen] == [lines, lines[:2], lines[2:], [lines[2]], [lines[3]]]
    assert result.written == 3
    assert [r.line for r in result.rejected] == [lines[2]]
    assert "field type conflict" in result.rejected[0].reason


def test_422_influxdb3_line_number(server) -> None:  # type: ignore[no-untyped-def]
    lines = ["m,key=a v=1 1", "m,key=b v= 2", "m,key=c v=3 3"]

    def answer(got: list[str], n: int) -> Answer:
        if n == 1:
            body = {"error": "parsing failed for write_lp endpoint", "data": [
                {"original_line": got[1], "line_number": 2, "error_message": "missing value"}]}
            return 422, {}, json.dumps(body).encode()
        return ok(got, n)

    fake = server(answer)
    result = InfluxWriter(settings(fake.url)).write_lines(lines)
    assert result.written == 2 and [r.line for r in result.rejected] == [lines[1]]
    assert fake.seen[1].lines == [lines[0], lines[2]]
    assert "missing value" in result.rejected[0].reason


def test_413_splits_the_batch_and_rejects_a_single_oversized_point(server) -> None:  # type: ignore[no-untyped-def]
    lines = [f"m,key=k{i} v=1 {i}" for i in range(5)] + ["m,key=huge v=1 9"]

    def answer(got: list[str], n: int) -> Answer:
        if len(got) > 2 or any("key=huge" in line for line in got):
            return err(413, "request too large")
        return ok(got, n)

    fake = server(answer)
    result = InfluxWriter(settings(fake.url)).write_lines(lines)
    # [0..5] 413 -> [0,1,2] 413 -> [0] ok, [1,2] ok; [3,4,huge] 413 -> [3] ok,
    # [4,huge] 413 -> [4] ok, [huge] 413 -> rejected: 5 written, 1 rejected.
    assert result.written == 5
    assert [r.line for r in result.rejected] == ["m,key=huge v=1 9"]
    assert result.rejected[0].status == 413
    sent_ok = [s.lines for s in fake.seen
               if len(s.lines) <= 2 and not any("key=huge" in line for line in s.lines)]
    assert [line for chunk in sent_ok for line in chunk] == lines[:5]  # order kept


@pytest.mark.parametrize(("status", "message", "setting", "words"), [
    (401, "authorization failed", "MFU_INFLUX_TOKEN", "refused the credentials"),
    (403, "insufficient permissions", "MFU_INFLUX_TOKEN", "write access"),
    (404, 'database not found: "mfu"', "MFU_INFLUX_BUCKET", "CREATE DATABASE"),
    (404, "404 page not found", "MFU_INFLUX_API", "MFU_INFLUX_API=v1"),
    # InfluxDB 1.x answers a missing retention policy with 500 and a bad precision with
    # 400: neither is retried nor bisected
    (500, "retention policy not found: nosuchrp", "MFU_INFLUX_BUCKET", "retention policy"),
    (400, 'invalid precision "xx" (use ns, us, ms or s)', "MFU_INFLUX_URL", "precision"),
])
def test_config_errors_stop_at_once_naming_the_setting(server, status, message, setting,
                                                       words) -> None:  # type: ignore[no-untyped-def]
    fake = server(lambda lines, n: err(status, message))
    waits: list[float] = []
    with pytest.raises(InfluxConfigError) as info:
        InfluxWriter(settings(fake.url), sleep=waits.append).write_lines(["m,key=a v=1 1"])
    assert info.value.status == status and info.value.setting == setting
    assert words in str(info.value) and message in str(info.value)
    assert len(fake.seen) == 1 and waits == []  # no retry


def test_a_point_named_like_a_target_error_is_still_a_bad_point(server) -> None:  # type: ignore[no-untyped-def]
    bad = "m,key=database\\ not\\ found v= 1"

    def answer(lines: list[str], n: int) -> Answer:
        if bad in lines:
            return err(400, f"unable to parse '{bad}': missing field value")
        return ok(lines, n)

    fake = server(answer)
    result = InfluxWriter(settings(fake.url)).write_lines(["m,key=a v=1 1", bad])
    assert result.written == 1 and [r.line for r in result.rejected] == [bad]


def test_429_honours_retry_after_and_5xx_backs_off(server) -> None:  # type: ignore[no-untyped-def]
    def answer(lines: list[str], n: int) -> Answer:
        if n == 1:
            return err(429, "too many requests", {"Retry-After": "7"})
        if n in (2, 3, 4):
            return err(503, "engine: overloaded")
        return ok(lines, n)

    fake = server(answer)
    waits: list[float] = []
    outcomes: list[str] = []
    writer = InfluxWriter(settings(fake.url), sleep=waits.append,
                          observe=lambda outcome, _s, _n: outcomes.append(outcome))
    assert writer.write_lines(["m,key=a v=1 1"]).written == 1
    # Retry-After 7 s, then backoff 0.2 doubling; the doubling went on under Retry-After:
    # attempt 1 -> 7 (server), 2 -> 0.4, 3 -> 0.8, 4 -> 1.6
    assert waits == [7.0, 0.4, 0.8, 1.6]
    assert outcomes == ["retry"] * 4 + ["ok"]
    assert writer.retries == 4


def test_retry_after_http_date(server) -> None:  # type: ignore[no-untyped-def]
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    fake = server(lambda lines, n: err(503, "down", {"Retry-After": when}) if n == 1
                  else ok(lines, n))
    waits: list[float] = []
    InfluxWriter(settings(fake.url), sleep=waits.append).write_lines(["m,key=a v=1 1"])
    assert len(waits) == 1 and 27.0 <= waits[0] <= 30.0  # whole seconds in the date


def test_backoff_is_capped(server) -> None:  # type: ignore[no-untyped-def]
    fake = server(lambda lines, n: err(500, "x") if n <= 6 else ok(lines, n))
    waits: list[float] = []
    InfluxWriter(settings(fake.url, max_retry_delay_s=1.0), sleep=waits.append).write_lines(
        ["m,key=a v=1 1"])
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]  # doubling from 0.2, capped at 1.0


def test_timeout_is_retried(server) -> None:  # type: ignore[no-untyped-def]
    def answer(lines: list[str], n: int) -> Answer:
        if n == 1:
            time.sleep(1.0)  # longer than timeout_s = 0.3
        return ok(lines, n)

    fake = server(answer)
    waits: list[float] = []
    result = InfluxWriter(settings(fake.url, timeout_s=0.3), sleep=waits.append).write_lines(
        ["m,key=a v=1 1"])
    assert result.written == 1 and waits == [0.2] and len(fake.seen) == 2


def test_connection_refused_retries_then_gives_up_after_max_attempts() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    writer = InfluxWriter(settings(f"http://127.0.0.1:{port}"), sleep=waits.append)
    with pytest.raises(InfluxUnavailable, match="after 3 attempts"):
        writer.write_lines(["m,key=a v=1 1"], max_attempts=3)
    assert waits == [0.2, 0.4]


def test_stop_interrupts_a_retrying_write(server) -> None:  # type: ignore[no-untyped-def]
    fake = server(lambda lines, n: err(503, "down"))
    writer = InfluxWriter(settings(fake.url))
    threading.Timer(0.5, writer.stop).start()
    started = time.monotonic()
    with pytest.raises(InterruptedError):
        writer.write_lines(["m,key=a v=1 1"])
    assert time.monotonic() - started < 5


def test_tag_escaping_never_breaks_a_line() -> None:
    assert _escape_tag("a b,c=d") == r"a\ b\,c\=d"
    assert _escape_tag("new\nline\ttab\x00nul\r\x7f") == "new\ufffdline\ufffdtab\ufffdnul\ufffd\ufffd"
    # a backslash stays, unless it would escape what follows it
    assert _escape_tag("a\\b") == "a\\b"
    assert _escape_tag("end\\") == "end\ufffd"
    assert _escape_tag("x\\,y") == "x\ufffd\\,y"
    # The models refuse such names at decode (mfu.events.Name); the writer must still never
    # emit a broken line for a record built without validation.
    rec = window("ok").model_copy(update={"key": "job\n1\tx\x00 y,z=w\\"})
    line = to_line(rec)
    assert "\n" not in line and "\t" not in line and "\x00" not in line
    assert line.startswith("mfu,scope=workload,key=job\ufffd1\ufffdx\ufffd\\ y\\,z\\=w\ufffd ")


def test_writes_share_one_kept_alive_connection_and_survive_the_server_closing_it() -> None:
    connections: list[int] = []
    posts: list[list[str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as InfluxDB answers

        def setup(self) -> None:
            super().setup()
            connections.append(1)

        def do_POST(self) -> None:
            posts.append(self.rfile.read(int(self.headers["Content-Length"])).decode()
                         .split("\n"))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            if len(posts) == 3:
                self.send_header("Connection", "close")  # the server ends this one
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        w = InfluxWriter(settings(f"http://127.0.0.1:{httpd.server_address[1]}"))
        for i in range(3):
            assert w.write([window(f"k{i}")]).written == 1
        assert len(connections) == 1  # three writes, one connection
        for i in range(3, 5):
            assert w.write([window(f"k{i}")]).written == 1
        assert len(connections) == 2  # a new one after the server closed the first
        # An idle connection the server dropped without telling: the write still lands.
        w._local.conn.sock.shutdown(socket.SHUT_RDWR)
        assert w.write([window("k5")]).written == 1
        assert [p[0].split(",key=")[1].split(",")[0].split(" ")[0] for p in posts] == [
            f"k{i}" for i in range(6)]
        assert w.retries == 0
        w.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
