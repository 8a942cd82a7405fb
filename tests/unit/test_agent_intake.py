"""Local intake: bad datagrams are refused and counted; the server keeps serving."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from agents.intake import REASONS, Intake, IntakeServer
from mfu.events import FlopReport

UUIDS = ["GPU-aaaa1111-0000-4000-8000-000000000001", "GPU-bbbb2222-0000-4000-8000-000000000002"]


def resolver(*, prefix: str | None, index: int | None, pid: int | None) -> str | None:
    if prefix:
        hits = [u for u in UUIDS if u.startswith(prefix)]
        return hits[0] if len(hits) == 1 else None
    if pid == 4242:
        return UUIDS[1]
    if index is not None and 0 <= index < len(UUIDS):
        return UUIDS[index]
    return None


def report(**overrides: object) -> dict:
    body = {"schema": "flop_report/1", "event_id": "job-r0-abc-1", "workload": "job",
            "rank": 0, "gpu_uuid": UUIDS[0], "start": 1_700_000_000.0,
            "end": 1_700_000_001.0, "flops": 4.3e14, "precision": "bf16", "tokens": 163.0}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.fixture
def intake() -> Intake:
    return Intake("n1", resolve_gpu=resolver)


def test_valid_report_is_stamped_with_the_node(intake: Intake) -> None:
    r = intake.accept(dumps(report(node="somewhere-else")))
    assert isinstance(r, FlopReport)
    assert r.node == "n1" and r.gpu_uuid == UUIDS[0] and r.flops == 4.3e14
    assert intake.stats[("accepted",)] == 1


@pytest.mark.parametrize(("fields", "uuid"), [
    ({"gpu_uuid": None, "pid": 4242}, UUIDS[1]),
    ({"gpu_uuid": None, "gpu_index": 1}, UUIDS[1]),
    ({"gpu_uuid": "", "gpu_index": 0}, UUIDS[0]),
    ({"gpu_uuid": "GPU-bbbb"}, UUIDS[1]),  # CUDA_VISIBLE_DEVICES-style prefix
    ({"gpu_uuid": "GPU-not-on-this-host"}, "GPU-not-on-this-host"),  # kept as sent
])
def test_gpu_filled_in_by_the_agent(intake: Intake, fields: dict, uuid: str) -> None:
    r = intake.accept(dumps(report(**fields)))
    assert r is not None and r.gpu_uuid == uuid


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x00\xff\xfe garbage \x80", "garbage"),
    (b"\xff\xfe\xfd", "garbage"),
    (b'{"schema": "flop_report/1", ', "garbage"),
    (b"[" * 100_000, "oversize"),
    (b"x" * 70_000, "oversize"),
    (b"[1, 2, 3]", "not_object"),
    (b'"a string"', "not_object"),
    (dumps(report(schema="gpu_sample/1")), "schema"),
    (dumps(report(schema=None)), "schema"),
    (dumps(report(flops="lots")), "wrong_type"),
    (dumps(report(rank="zero")), "wrong_type"),
    (dumps(report(precision="fp4")), "wrong_type"),
    (dumps(report(workload=None)), "missing_field"),
    (dumps(report(flops=-1.0)), "out_of_range"),
    (dumps(report(flops=1e30)), "out_of_range"),  # 1e30 FLOP/s: a unit bug
    (dumps(report(start=1_700_000_000_000.0, end=1_700_000_001_000.0)), "out_of_range"),
    (dumps(report(end=1_699_999_999.0)), "invalid_value"),
    (b'{"schema": "flop_report/1", "event_id": "x", "workload": "j", "rank": 0, '
     b'"gpu_uuid": "GPU-a", "start": 1700000000, "end": 1700000001, "flops": NaN, '
     b'"precision": "bf16"}', "nan"),
    (b'{"schema": "flop_report/1", "event_id": "x", "workload": "j", "rank": 0, '
     b'"gpu_uuid": "GPU-a", "start": 1700000000, "end": 1700000001, "flops": Infinity, '
     b'"precision": "bf16"}', "nan"),
    (dumps(report(flops=123.0)).replace(b"123.0", b"1e400"), "nan"),  # overflows to inf
    (dumps(report(gpu_uuid=None, gpu_index=7)), "no_gpu"),
    (dumps(report(gpu_uuid=None)), "no_gpu"),
])
def test_bad_input_is_refused_with_its_reason(intake: Intake, data: bytes, reason: str) -> None:
    assert reason in REASONS
    assert intake.accept(data) is None
    assert intake.stats == {("rejected", reason): 1}


def test_no_resolver_means_gpu_uuid_is_required() -> None:
    intake = Intake("n1")
    assert intake.accept(dumps(report(gpu_uuid=None, pid=1))) is None
    assert intake.stats[("rejected", "no_gpu")] == 1
    assert intake.accept(dumps(report())) is not None


def _wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("transport", ["unix", "udp"])
def test_server_keeps_running_through_bad_datagrams(tmp_path: Path, transport: str) -> None:
    got: list[FlopReport] = []
    lock = threading.Lock()

    def on_report(r: FlopReport) -> None:
        with lock:
            got.append(r)

    address = str(tmp_path / "run" / "agent.sock") if transport == "unix" else "udp://127.0.0.1:0"
    intake = Intake("n1", resolve_gpu=resolver)
    server = IntakeServer(intake, address, on_report).start()
    try:
        family = socket.AF_UNIX if transport == "unix" else socket.AF_INET
        dest: object = server.bound_address
        if transport == "udp":
            host, port = str(dest)[len("udp://"):].rsplit(":", 1)
            dest = (host, int(port))
        else:
            assert (Path(address).stat().st_mode & 0o777) == 0o666
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            for i in range(20):
                s.sendto(b"\xde\xad\xbe\xef" * (i + 1), dest)  # garbage
                s.sendto(dumps(report(flops=float("nan"))), dest)
                s.sendto(dumps(report(event_id=f"ok-{i}")), dest)
        _wait_for(lambda: len(got) == 20)
        assert sorted(r.event_id for r in got) == sorted(f"ok-{i}" for i in range(20))
        assert intake.stats[("rejected", "garbage")] == 20
        assert intake.stats[("rejected", "nan")] == 20
        assert server._thread.is_alive()
    finally:
        server.close()
    if transport == "unix":
        assert not Path(address).exists()


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old.bind(str(path))
    old.close()  # left behind by a crashed agent
    got: list[FlopReport] = []
    server = IntakeServer(Intake("n1", resolve_gpu=resolver), str(path), got.append).start()
    try:
        # The new socket is the one listening: a report sent to the path arrives.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(dumps(report(event_id="after-stale")), str(path))
        _wait_for(lambda: len(got) == 1)
        assert got[0].event_id == "after-stale"
    finally:
        server.close()
