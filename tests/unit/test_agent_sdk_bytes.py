"""FLOP reporter SDK: model bytes (``bytes`` on flop_report/1) from a decode config or given."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from agents.intake import Intake
from agents.sdk import FlopReporter

UUID = "GPU-5f2b9b8c-1c3e-7d4a-9b0e-2a6f1c7d8e90"
T0 = 1_700_000_000.0
LLAMA_3_8B = json.loads((Path(__file__).parent / "data" / "llama-3-8b.json").read_text())
# decode, batch 8, context 2048, bf16: (15,009,316,864 weight bytes + 8 * 2048 * 131,072
# KV bytes) / 8 tokens per step = 2,144,600,064 bytes per token (see test_decode_bytes.py)
BYTES_PER_TOKEN = 2_144_600_064


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sock_path(tmp_path: Path):
    path = str(tmp_path / "agent.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def test_decode_config_gives_bytes_per_token(sock_path) -> None:
    path, sock = sock_path
    clock = Clock()
    r = FlopReporter("chat", 0, model=LLAMA_3_8B, seq_len=2048, batch_size=8, mode="decode",
                     gpu_uuid=UUID, socket_address=path, clock=clock)
    assert r.bytes_per_token == BYTES_PER_TOKEN
    for _ in range(3):
        clock.t += 0.4
        r.step(tokens=8)  # one decode step of the batch: 8 new tokens
    [raw] = received(sock)  # the third step passed flush_interval_s (1.2 s >= 1 s)
    report = Intake("n1").accept(raw)
    assert report is not None
    # 24 tokens * 2,144,600,064 = 51,470,401,536 bytes in [T0, T0 + 1.2)
    assert report.bytes == 24 * BYTES_PER_TOKEN == 51_470_401_536
    assert report.phase == "decode" and report.source == "sdk"


def test_explicit_bytes_on_step_and_report(sock_path) -> None:
    path, sock = sock_path
    clock = Clock()
    r = FlopReporter("train", 0, gpu_uuid=UUID, socket_address=path, clock=clock)
    assert r.bytes_per_token is None  # no model: bytes only when given
    clock.t += 0.5
    r.step(flops=1e12, bytes=3e9)
    clock.t += 0.5
    r.step(flops=1e12, bytes=1e9)  # 1.0 s: sent, 4e9 bytes
    clock.t += 0.5
    r.step(flops=1e12)  # no bytes given: the next report has none
    r.flush()
    assert r.report(flops=5e12, start=T0, end=T0 + 1, bytes=7e9)
    got = [json.loads(raw) for raw in received(sock)]
    assert [g.get("bytes") for g in got] == [4e9, None, 7e9]
