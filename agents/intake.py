"""Local intake: the agent's datagram socket for ``flop_report/1`` from the SDK.

Intake contract (what a datagram may be):

- one UTF-8 JSON object, at most ``max_bytes`` (64 KiB), schema ``flop_report/1``,
  fields as in DESIGN.md §3;
- ``node`` may be omitted: the agent always stamps its own node name (the one on its
  telemetry), replacing any value sent;
- ``gpu_uuid`` may be omitted or be a unique prefix (as in ``CUDA_VISIBLE_DEVICES``); the
  agent then resolves it from a ``gpu_index`` hint (NVML index) or from the sender's
  ``pid`` (the GPU NVML lists that process on);
- everything is then validated by :class:`mfu.events.FlopReport`; anything else is
  refused and counted in ``stats[("rejected", reason)]`` with reason one of
  :data:`REASONS`. The server never stops on bad input.

Transport: a Unix datagram socket (default ``/run/mfu/agent.sock``, mode 0666 so
unprivileged jobs can send) or UDP on loopback (``udp://127.0.0.1:8126``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mfu.events import FlopReport

log = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 65536
REASONS = ("oversize", "garbage", "nan", "not_object", "schema", "missing_field",
           "wrong_type", "out_of_range", "invalid_value", "no_gpu")


class _NonFinite(ValueError):
    pass


def _refuse_constant(token: str) -> float:
    raise _NonFinite(token)


def classify(exc: ValidationError) -> str:
    """Map a FlopReport validation error to one rejection reason (first error wins)."""
    for err in exc.errors(include_url=False):
        kind = err["type"]
        if kind == "missing":
            return "missing_field"
        if kind == "finite_number":
            return "nan"
        if kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "model_type"):
            return "wrong_type"
        if kind.startswith(("greater_than", "less_than", "too_long", "too_short")):
            return "out_of_range"
        if kind == "value_error" and "exceeds" in str(err.get("msg", "")):
            return "out_of_range"
    return "invalid_value"


class Intake:
    """Validates datagrams into :class:`FlopReport` stamped with this node.

    ``resolve_gpu(index=..., pid=..., prefix=...)`` returns a GPU UUID or None; the agent
    passes a function backed by its NVML collector.
    """

    def __init__(self, node: str, *,
                 resolve_gpu: Callable[..., str | None] | None = None,
                 max_bytes: int = MAX_DATAGRAM_BYTES) -> None:
        self.node = node
        self.resolve_gpu = resolve_gpu
        self.max_bytes = max_bytes
        self.stats: Counter[tuple[str, ...]] = Counter()

    def _reject(self, reason: str) -> None:
        self.stats[("rejected", reason)] += 1

    def accept(self, data: bytes) -> FlopReport | None:
        """One datagram -> a validated report, or None (rejection counted)."""
        if len(data) > self.max_bytes:
            self._reject("oversize")
            return None
        try:
            obj = json.loads(data, parse_constant=_refuse_constant)
        except _NonFinite:
            self._reject("nan")
            return None
        except (ValueError, UnicodeDecodeError, RecursionError):
            self._reject("garbage")
            return None
        if not isinstance(obj, dict):
            self._reject("not_object")
            return None
        if obj.get("schema") != FlopReport.SCHEMA:
            self._reject("schema")
            return None
        obj["node"] = self.node
        uuid = obj.get("gpu_uuid")
        if isinstance(uuid, str) and uuid:
            # A full UUID stays; a unique prefix (CUDA_VISIBLE_DEVICES style) is expanded.
            if self.resolve_gpu is not None:
                obj["gpu_uuid"] = self.resolve_gpu(prefix=uuid, index=None, pid=None) or uuid
        elif uuid is None or uuid == "":
            resolved = self._resolve(obj)
            if resolved is None:
                self._reject("no_gpu")
                return None
            obj["gpu_uuid"] = resolved
        try:
            report = FlopReport.model_validate(obj)
        except ValidationError as exc:
            self._reject(classify(exc))
            return None
        self.stats[("accepted",)] += 1
        return report

    def _resolve(self, obj: dict[str, Any]) -> str | None:
        if self.resolve_gpu is None:
            return None
        index = obj.get("gpu_index")
        pid = obj.get("pid")
        return self.resolve_gpu(
            prefix=None,
            index=index if isinstance(index, int) and not isinstance(index, bool) else None,
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        )


def parse_address(address: str) -> tuple[int, Any]:
    """``/path/to.sock`` -> (AF_UNIX, path); ``udp://host:port`` -> (AF_INET, (host, port))."""
    if address.startswith("udp://"):
        host, _, port = address[len("udp://"):].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad UDP address {address!r}: expected udp://HOST:PORT")
        return socket.AF_INET, (host.strip("[]"), int(port))
    return socket.AF_UNIX, address


class IntakeServer:
    """Receives datagrams on ``address`` in a thread and hands accepted reports to
    ``on_report``. ``address``: Unix socket path or ``udp://host:port``."""

    def __init__(self, intake: Intake, address: str,
                 on_report: Callable[[FlopReport], None]) -> None:
        self.intake = intake
        self.address = address
        self.on_report = on_report
        family, self._addr = parse_address(address)
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if family == socket.AF_UNIX:
            path = Path(self._addr)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
                path.unlink()  # stale socket of an earlier run
            self._sock.bind(str(path))
            os.chmod(path, 0o666)
        else:
            self._sock.bind(self._addr)
        self._sock.settimeout(1.0)  # wakes to check for shutdown; datagrams wake it at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mfu-intake", daemon=True)

    @property
    def bound_address(self) -> str:
        """The address to send to (resolves ``udp://host:0`` to the chosen port)."""
        if self._sock.family == socket.AF_UNIX:
            return str(self._addr)
        host, port = self._sock.getsockname()[:2]
        return f"udp://{host}:{port}"

    def start(self) -> IntakeServer:
        self._thread.start()
        return self

    def _run(self) -> None:
        recv = self._sock.recv
        size = self.intake.max_bytes + 1
        while not self._stop.is_set():
            try:
                data = recv(size)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("intake_recv_failed error=%s", exc)
                continue
            try:
                report = self.intake.accept(data)
                if report is not None:
                    self.on_report(report)
            except Exception:  # keep serving whatever one datagram did
                self.intake.stats[("errors",)] += 1
                log.exception("intake_failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._sock.close()
        if self._sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                Path(self._addr).unlink()
