"""InfluxDB sink for closed windows (DESIGN.md §4, contract).

Measurement ``mfu``, one point per closed window and scope, timestamp = ``window_start``.
Tags: ``scope``, ``key`` and low-cardinality context (``gpu_model``, ``precision``,
``fleet``; DESIGN.md §8: ``tenant`` on workload points and ``regime``, when known).
Fields are always floats (``gpus`` too) so their type never changes; a field whose value
is unknown (null in the record) is left out of the point.

The writer is synchronous and speaks HTTP itself (v2 ``/api/v2/write`` or v1 ``/write``),
so it sees each answer's status, body and ``Retry-After`` and acts by class:

- 2xx: written.
- 400/422 (bad points): the points the server names (``unable to parse '<line>'``, or
  InfluxDB 3's ``line_number``) are rejected with its reason and the rest sent again;
  when it names none (a field type conflict), the batch is halved until the bad point is
  alone. Rejected points come back in :class:`WriteResult` for the caller to dead-letter.
  Sending again points already written is harmless: a point is identified by series and
  timestamp, so it overwrites itself with the same values.
- 413 (too large): the batch is halved; a single point still too large is rejected.
- 401/403/404 and other 4xx: :class:`InfluxConfigError`, naming the setting to fix; no
  retry can succeed.
- 408/429/5xx, timeouts, connection errors: retried with capped exponential backoff, or
  after the server's ``Retry-After`` when it sends one, until acknowledged or
  :meth:`InfluxWriter.stop`: an outage delays results, it never drops them (the caller
  commits input offsets only after :meth:`InfluxWriter.write` returns).

Not influxdb-client: its batching WriteApi drops a batch once its retries run out, and
its synchronous API hides the answer's headers.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mfu.config import InfluxSettings
from mfu.events import MfuWindow

log = logging.getLogger("mfu.influx")

TAG_FIELDS = ("gpu_model", "precision", "fleet", "tenant", "regime")


# Characters a line-protocol tag cannot carry: a newline ends the line, and InfluxDB's
# parsers treat the other control characters (tab, NUL, ...) as garbage or separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A backslash is kept as it is (InfluxDB 1.x/2.x store `a\b` as a\b and do not unescape
# `\\`), except where the parser would read it as an escape: before ",", "=", " " (which
# this function escapes) or at the end of the value.
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?=[,= ]|$)")
REPLACEMENT = "\ufffd"


def _escape_tag(value: str) -> str:
    """A tag key/value (or measurement) in line protocol: ``,``, ``=`` and space escaped.

    The line protocol cannot carry control characters (newline, carriage return, tab,
    NUL, ...): each becomes U+FFFD, and so does a backslash that would escape what follows
    it, so the writer never emits a broken line. The decode side refuses names with
    control characters; this is the writer's own guarantee, not a way to carry them.
    """
    value = _CONTROL.sub(REPLACEMENT, value)
    value = _AMBIGUOUS_BACKSLASH.sub(REPLACEMENT, value)
    return value.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


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


RETRY_AFTER_MAX_S = 300.0  # a server's Retry-After is honoured up to this (a bogus value must not stall for days)
_FIRST_RETRY_S = 0.2
_PARSE_ERROR = re.compile(r"unable to parse '(.*?)': ", re.S)
# Answers that blame the request's target, not its points, whatever their status (1.x
# answers a missing retention policy with 500, a bad precision with 400): retrying or
# bisecting cannot help.
_TARGET_ERROR = re.compile(
    r"retention policy not found|database not found|bucket .*not found|"
    r"organization .*not found|invalid precision", re.I)


class InfluxConfigError(RuntimeError):
    """InfluxDB refused the writer's configuration (HTTP 401/403/404, other 4xx): no retry
    can succeed. ``setting`` names the setting to fix, ``status`` the HTTP status."""

    def __init__(self, message: str, *, status: int, setting: str) -> None:
        super().__init__(message)
        self.status = status
        self.setting = setting


class InfluxUnavailable(OSError):
    """The server did not acknowledge within ``max_attempts`` tries (outage, 429, 5xx)."""


@dataclass(frozen=True)
class RejectedPoint:
    """A point InfluxDB refused for what it is (HTTP 400/422/413): writing it again cannot
    succeed, so it is handed back for a dead letter instead of holding back the rest."""

    line: str
    reason: str
    status: int
    record: MfuWindow | None = None


@dataclass
class WriteResult:
    """Outcome of a write: points acknowledged and points rejected (with the reason)."""

    written: int = 0
    rejected: list[RejectedPoint] = field(default_factory=list)


@dataclass(frozen=True)
class _Answer:
    status: int
    message: str  # the server's error text ('' on success)
    retry_after_s: float | None
    lines_named: tuple[int, ...] = ()  # 0-based indexes InfluxDB 3 names in ``data``


def _blames_target(message: str) -> bool:
    """Does the server's error blame the bucket/database/precision? (Quoted points are
    left out: a workload may be named "database not found".)"""
    return bool(_TARGET_ERROR.search(_PARSE_ERROR.sub("", message)))


def _retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _message(body: bytes) -> tuple[str, tuple[int, ...]]:
    """The error text of an InfluxDB answer body (1.x ``error``, 2.x ``message``, 3.x
    ``error`` + ``data``) and the 0-based line numbers it names, if any."""
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return text.strip()[:2000], ()
    if not isinstance(obj, dict):
        return text.strip()[:2000], ()
    message = str(obj.get("message") or obj.get("error") or text.strip())
    named: list[int] = []
    data = obj.get("data")
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("line_number"), int):
                named.append(item["line_number"] - 1)
                if item.get("error_message"):
                    message = f"{message}: {item['error_message']}"
    elif isinstance(data, dict) and isinstance(data.get("line_number"), int):
        named.append(data["line_number"] - 1)
    return message, tuple(named)


class InfluxWriter:
    """Blocking writer of ``MfuWindow`` records (v2 API or legacy v1 ``/write``) that acts
    on InfluxDB's answers by class (see the module docstring).

    ``sleep`` waits between retries (tests pass a recorder; the default wait ends early on
    :meth:`stop`). ``observe(outcome, seconds, points)`` is called after every request,
    outcome one of ``ok``, ``bad_points``, ``too_large``, ``config``, ``retry``: the
    pipeline's health metrics hook in there. :attr:`backlog_points` is the number of
    points waiting for an acknowledgement right now.
    """

    def __init__(self, settings: InfluxSettings, *, sleep: Callable[[float], None] | None = None,
                 observe: Callable[[str, float, int], None] | None = None):
        self.settings = settings
        self._sleep = sleep
        self._observe = observe
        self._stop = threading.Event()
        self.retries = 0
        self.points_written = 0
        self.points_rejected = 0
        self.backlog_points = 0
        # One kept-alive connection per writing thread. No proxies from the environment
        # (as influxdb-client): a local or in-cluster InfluxDB must not be sent through
        # an http_proxy meant for the internet.
        self._local = threading.local()
        self._url, self._auth = self._endpoint()
        u = urllib.parse.urlsplit(self._url)
        self._split = u
        self._target = f"{u.path}?{u.query}" if u.query else u.path

    def close(self) -> None:
        self._stop.set()
        self._drop_connection()

    def stop(self) -> None:
        """Make a retrying write give up (used at shutdown; the records are then not acked)."""
        self._stop.set()

    # --- HTTP ---------------------------------------------------------------------

    def _endpoint(self) -> tuple[str, str | None]:
        s = self.settings
        base = s.url.rstrip("/")
        secret = s.token.get_secret_value() if s.token else ""
        if s.api == "v2":
            query = {"org": s.org, "bucket": s.bucket, "precision": "ns"}
            return f"{base}/api/v2/write?{urllib.parse.urlencode(query)}", (
                f"Token {secret}" if secret else None)
        db, rp = s.v1_database()
        query = {"db": db, "precision": "ns"}
        if rp:
            query["rp"] = rp
        auth = None
        if secret:
            user, _, password = secret.partition(":")
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return f"{base}/write?{urllib.parse.urlencode(query)}", auth

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept-alive connection to the server, and whether it is reused."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        u = self._split
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname or "localhost", u.port, timeout=self.settings.timeout_s)
        self._local.conn = conn
        return conn, False

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _post(self, lines: list[str]) -> _Answer:
        """One request, on a kept-alive connection (measured: half the CPU of a new
        connection per write). Raises OSError (incl. timeouts) when no HTTP answer came
        back. A reused connection the server had closed meanwhile is retried once on a
        new one (a write sent twice is harmless: points overwrite themselves)."""
        body = "\n".join(lines).encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._auth:
            headers["Authorization"] = self._auth
        while True:
            conn, reused = self._connection()
            try:
                conn.request("POST", self._target, body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if reused and not isinstance(exc, TimeoutError):
                    continue  # kept-alive connection closed by the server: a fresh one
                if isinstance(exc, OSError):
                    raise
                raise OSError(f"{type(exc).__name__}: {exc}") from exc
            if resp.will_close:
                self._drop_connection()
            if 200 <= resp.status < 300:
                return _Answer(resp.status, "", None)
            message, named = _message(data)
            return _Answer(resp.status, message or resp.reason or "",
                           _retry_after(resp.getheader("Retry-After")), named)

    def _config_error(self, answer: _Answer) -> InfluxConfigError:
        s, status, said = self.settings, answer.status, answer.message[:300]
        if status == 401:
            return InfluxConfigError(
                f"InfluxDB at {s.url} refused the credentials (HTTP 401: {said}): set "
                "MFU_INFLUX_TOKEN or MFU_INFLUX_TOKEN_FILE to a valid token (InfluxDB 1.8: "
                "'user:password')", status=status, setting="MFU_INFLUX_TOKEN")
        if status == 403:
            return InfluxConfigError(
                f"InfluxDB at {s.url} does not let this token write to bucket {s.bucket!r} "
                f"(HTTP 403: {said}): grant it write access or set MFU_INFLUX_TOKEN to one "
                "that has it", status=status, setting="MFU_INFLUX_TOKEN")
        lowered = said.lower()
        if "invalid precision" in lowered:
            return InfluxConfigError(
                f"InfluxDB at {s.url} refused the write's precision (HTTP {status}: {said}): "
                "MFU_INFLUX_URL may point at an incompatible server", status=status,
                setting="MFU_INFLUX_URL")
        if status == 404 or _blames_target(said):
            if "bucket" in lowered or "database" in lowered or "org" in lowered or \
                    "retention policy" in lowered:
                db = s.v1_database()[0]
                return InfluxConfigError(
                    f"InfluxDB at {s.url} has no bucket {s.bucket!r} in org {s.org!r} (HTTP "
                    f"{status}: {said}): create it (InfluxDB 1.x: CREATE DATABASE \"{db}\", "
                    "or the retention policy after the '/') or fix MFU_INFLUX_BUCKET / "
                    "MFU_INFLUX_ORG", status=status, setting="MFU_INFLUX_BUCKET")
            if s.api == "v2":
                return InfluxConfigError(
                    f"{s.url} has no /api/v2/write (HTTP 404: {said}): InfluxDB before 1.8 "
                    "needs MFU_INFLUX_API=v1, or MFU_INFLUX_URL points at something else",
                    status=status, setting="MFU_INFLUX_API")
            return InfluxConfigError(
                f"{s.url} has no /write (HTTP 404: {said}): check MFU_INFLUX_URL",
                status=status, setting="MFU_INFLUX_URL")
        return InfluxConfigError(
            f"InfluxDB at {s.url} refused the write with HTTP {status} ({said}): check "
            "MFU_INFLUX_URL and MFU_INFLUX_API", status=status, setting="MFU_INFLUX_URL")

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            self._stop.wait(seconds)

    def _send(self, lines: list[str], max_attempts: int | None) -> _Answer:
        """Send until the answer is final: 2xx, 400/413/422 (returned), 401/403/404/other
        4xx (raised as InfluxConfigError). Retries 408/429/5xx and transport errors."""
        delay = _FIRST_RETRY_S
        attempts = 0
        while True:
            if self._stop.is_set():
                raise InterruptedError("InfluxDB writer stopped before the write was acknowledged")
            started = time.monotonic()
            error = ""
            try:
                answer: _Answer | None = self._post(lines)
            except OSError as exc:  # refused, reset, DNS, timeout (socket.timeout is OSError)
                answer, error = None, _safe_error(exc)
            took = time.monotonic() - started
            status = answer.status if answer is not None else None
            if answer is not None and status is not None and status >= 400 and \
                    _blames_target(answer.message):
                self._note("config", took, len(lines))
                raise self._config_error(answer)
            if status is not None and 200 <= status < 300:
                self._note("ok", took, len(lines))
                return answer  # type: ignore[return-value]
            if status in (400, 422):
                self._note("bad_points", took, len(lines))
                return answer  # type: ignore[return-value]
            if status == 413:
                self._note("too_large", took, len(lines))
                return answer  # type: ignore[return-value]
            if status is not None and status < 500 and status not in (408, 429):
                self._note("config", took, len(lines))
                raise self._config_error(answer)  # type: ignore[arg-type]
            self._note("retry", took, len(lines))
            self.retries += 1
            attempts += 1
            reason = error or f"HTTP {status}: {answer.message[:200]}"  # type: ignore[union-attr]
            if max_attempts is not None and attempts >= max_attempts:
                raise InfluxUnavailable(
                    f"InfluxDB at {self.settings.url} did not acknowledge {len(lines)} points "
                    f"after {attempts} attempts: {reason}")
            retry_after = answer.retry_after_s if answer is not None else None
            wait = min(retry_after, RETRY_AFTER_MAX_S) if retry_after is not None else delay
            log.warning("influxdb write failed, retrying", extra={
                "url": self.settings.url, "error": reason, "retry_in_s": round(wait, 2),
                "points": len(lines), "retry_after_s": retry_after})
            self._wait(wait)
            delay = min(delay * 2, self.settings.max_retry_delay_s)

    def _note(self, outcome: str, seconds: float, points: int) -> None:
        if self._observe is not None:
            self._observe(outcome, seconds, points)

    # --- API -------------------------------------------------------------------------

    def write(self, records: Iterable[MfuWindow]) -> WriteResult:
        """Write all records (see :meth:`write_lines`); rejected points carry their record."""
        records = list(records)
        lines = [to_line(r, self.settings.measurement) for r in records]
        result = self.write_lines(lines)
        if result.rejected:
            by_line = dict(zip(lines, records, strict=True))
            result.rejected = [RejectedPoint(r.line, r.reason, r.status, by_line.get(r.line))
                               for r in result.rejected]
        return result

    def write_lines(self, lines: list[str], *, max_attempts: int | None = None) -> WriteResult:
        """Write line-protocol lines in batches of ``batch_size``; returns what was written
        and what InfluxDB rejected (with its reason).

        Retries transient failures until acknowledged, :meth:`stop` (``InterruptedError``)
        or ``max_attempts`` failed tries of one request (``InfluxUnavailable``). Raises
        :class:`InfluxConfigError` when the server refuses the configuration.
        """
        result = WriteResult()
        if not lines:
            return result
        step = self.settings.batch_size
        self.backlog_points = len(lines)
        try:
            for i in range(0, len(lines), step):
                self._write_batch(lines[i : i + step], result, max_attempts)
                self.backlog_points = max(0, len(lines) - i - step)
        finally:
            self.backlog_points = 0
        return result

    def _write_batch(self, batch: list[str], result: WriteResult,
                     max_attempts: int | None) -> None:
        todo = [batch]  # a stack: halves are pushed second-half first to keep the order
        while todo:
            part = todo.pop()
            answer = self._send(part, max_attempts)
            if 200 <= answer.status < 300:
                result.written += len(part)
                self.points_written += len(part)
                continue
            if answer.status == 413:
                if len(part) == 1:
                    self._reject(result, part[0], answer, "point too large for the server")
                else:
                    todo += [part[len(part) // 2 :], part[: len(part) // 2]]
                continue
            named = self._named(part, answer)
            if named:
                for index in sorted(named):
                    self._reject(result, part[index], answer, "bad point")
                rest = [line for k, line in enumerate(part) if k not in named]
                if rest:
                    todo.append(rest)
            elif len(part) == 1:
                self._reject(result, part[0], answer, "bad point")
            else:
                todo += [part[len(part) // 2 :], part[: len(part) // 2]]

    @staticmethod
    def _named(part: list[str], answer: _Answer) -> set[int]:
        """Indexes of the lines of ``part`` the server's error names."""
        named = {k for k in answer.lines_named if 0 <= k < len(part)}
        quoted = set(_PARSE_ERROR.findall(answer.message))
        if quoted:
            named |= {k for k, line in enumerate(part) if line in quoted}
        return named

    def _reject(self, result: WriteResult, line: str, answer: _Answer, what: str) -> None:
        reason = f"InfluxDB HTTP {answer.status}: {what}: {answer.message[:500]}"
        result.rejected.append(RejectedPoint(line, reason, answer.status))
        self.points_rejected += 1
        log.warning("influxdb rejected a point", extra={
            "status": answer.status, "reason": answer.message[:300], "line": line[:300]})


def _safe_error(exc: Exception) -> str:
    """Error text without credentials (the client never puts the token in messages, but
    URLs with userinfo could)."""
    text = f"{type(exc).__name__}: {exc}"
    return text.split("\n", 1)[0][:300]
