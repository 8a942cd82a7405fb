"""FLOP reporter SDK: what it sends, and that it never blocks or raises."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.intake import Intake
from agents.sdk import FlopReporter, default_workload, gpu_from_environment, measure_flops
from mfu.events import FlopReport
from mfu.flops import ModelConfig, flops_per_token

LLAMA_7B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
            "vocab_size": 32000, "hidden_act": "silu", "_name_or_path": "llama-2-7b"}
UUID = "GPU-5f2b9b8c-1c3e-7d4a-9b0e-2a6f1c7d8e90"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def agent_socket(tmp_path: Path):
    path = str(tmp_path / "agent.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[dict]:
    out = []
    while True:
        try:
            out.append(json.loads(sock.recv(70000)))
        except BlockingIOError:
            return out


def test_steps_accumulate_and_report_once_per_interval(agent_socket) -> None:
    path, sock = agent_socket
    clock = Clock()
    r = FlopReporter("job-42", 3, model=LLAMA_7B, seq_len=4096, precision="bf16",
                     gpu_uuid=UUID, socket_address=path, clock=clock, batch_size=8,
                     parallelism={"tp": 8, "dp": 4}, expected_mfu=0.45)
    per_token = flops_per_token(ModelConfig.from_hf_config(LLAMA_7B), seq_len=4096,
                                mode="train").model_flops
    assert r.flops_per_token == pytest.approx(per_token)
    for _ in range(4):
        clock.t += 0.3
        r.step(tokens=1000)
    assert r.stats["sent"] == 1  # after 1.2 s; the first three steps only added up
    [sent] = received(sock)
    assert sent["start"] == 1_700_000_000.0 and sent["end"] == pytest.approx(1_700_000_001.2)
    assert sent["flops"] == pytest.approx(4000 * per_token)
    assert sent["tokens"] == 4000
    assert sent["workload"] == "job-42" and sent["rank"] == 3 and sent["gpu_uuid"] == UUID
    assert sent["phase"] == "train" and sent["model"] == "llama-2-7b"
    assert "node" not in sent  # the agent stamps it

    report = Intake("n7").accept(json.dumps(sent).encode())
    assert isinstance(report, FlopReport)
    assert report.node == "n7" and report.parallelism.tp == 8 and report.expected_mfu == 0.45

    clock.t += 0.5
    r.step(tokens=10)
    r.close()  # flushes the partial interval
    [last] = received(sock)
    assert last["start"] == sent["end"] and last["tokens"] == 10
    assert last["event_id"] != sent["event_id"]


def test_hardware_flops_with_recompute(agent_socket) -> None:
    path, sock = agent_socket
    clock = Clock()
    r = FlopReporter("j", 0, model=LLAMA_7B, seq_len=2048, recompute="full", gpu_uuid=UUID,
                     socket_address=path, clock=clock)
    clock.t += 1.0
    r.step(tokens=100)
    [sent] = received(sock)
    assert sent["hardware_flops"] > sent["flops"]


def test_explicit_flops_and_report(agent_socket) -> None:
    path, sock = agent_socket
    clock = Clock()
    r = FlopReporter("j", 1, gpu_uuid=UUID, socket_address=path, clock=clock, precision="fp8")
    clock.t += 2.0
    r.step(flops=5e14)
    assert r.report(flops=1e15, start=clock.t, end=clock.t + 1.0, tokens=12)
    a, b = received(sock)
    assert (a["flops"], a["precision"]) == (5e14, "fp8") and "hardware_flops" not in a
    assert (b["flops"], b["tokens"], b["end"] - b["start"]) == (1e15, 12.0, 1.0)


def test_agent_down_is_dropped_and_counted_never_raised(tmp_path: Path) -> None:
    clock = Clock()
    r = FlopReporter("j", 0, model=1e9, gpu_uuid=UUID, clock=clock,
                     socket_address=str(tmp_path / "nobody-listens.sock"))
    for _ in range(5):
        clock.t += 1.0
        r.step(tokens=1)
    assert r.stats["dropped_no_agent"] == 5 and r.stats["sent"] == 0
    assert not r.report(flops=1.0, start=clock.t, end=clock.t + 1)
    udp = FlopReporter("j", 0, model=1e9, gpu_uuid=UUID, socket_address="udp://127.0.0.1:9")
    assert udp.report(flops=1.0, start=clock.t, end=clock.t + 1) in (True, False)


def test_full_socket_buffer_never_blocks(agent_socket) -> None:
    path, _sock = agent_socket  # nobody reads: the buffer fills up
    r = FlopReporter("j", 0, gpu_uuid=UUID, socket_address=path)
    t0 = time.perf_counter()
    for i in range(5000):
        r.report(flops=1e12, start=1_700_000_000.0 + i, end=1_700_000_001.0 + i)
    elapsed = time.perf_counter() - t0
    assert r.stats["dropped_busy"] > 0
    assert r.stats["sent"] + r.stats["dropped_busy"] == 5000
    assert elapsed < 2.0  # would hang forever on a blocking send


def test_bad_values_never_raise(agent_socket) -> None:
    path, sock = agent_socket
    clock = Clock()
    r = FlopReporter("j", 0, model=1e9, gpu_uuid=UUID, socket_address=path, clock=clock)
    r.step()  # no tokens: counted, not raised
    r.step(tokens="many")  # type: ignore[arg-type]
    assert r.stats["errors"] == 2
    clock.t += 1.0
    r.step(flops=float("nan"))
    assert r.stats["dropped_invalid"] == 1
    assert not r.report(flops=float("inf"), start=1, end=2)
    assert received(sock) == []


def test_constructor_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="precision"):
        FlopReporter("j", 0, precision="fp4")
    with pytest.raises(ValueError, match="seq_len"):
        FlopReporter("j", 0, model=LLAMA_7B)
    with pytest.raises(ValueError, match="positive"):
        FlopReporter("j", 0, model=-5.0)


def test_gpu_and_pid_hint_without_uuid(agent_socket, monkeypatch) -> None:
    path, sock = agent_socket
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "13")
    monkeypatch.setenv("MFU_WORKLOAD", "from-env")
    clock = Clock()
    r = FlopReporter(model=1e9, socket_address=path, clock=clock)
    clock.t += 1.0
    r.step(tokens=1)
    [sent] = received(sock)
    assert (sent["workload"], sent["rank"], sent["gpu_index"]) == ("from-env", 13, 5)
    assert sent["pid"] == os.getpid() and "gpu_uuid" not in sent


@pytest.mark.parametrize(("env", "device", "expected"), [
    ({}, None, (None, 0)),
    ({"LOCAL_RANK": "3"}, None, (None, 3)),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, 1, (None, 3)),
    ({"CUDA_VISIBLE_DEVICES": "GPU-ab12,GPU-cd34", "LOCAL_RANK": "1"}, None, ("GPU-cd34", None)),
    ({"CUDA_VISIBLE_DEVICES": "MIG-0f0f"}, None, ("MIG-0f0f", None)),
    ({"CUDA_VISIBLE_DEVICES": ""}, None, (None, None)),
    ({"CUDA_VISIBLE_DEVICES": "0"}, 2, (None, None)),
])
def test_gpu_from_environment(env: dict, device: int | None, expected: tuple) -> None:
    assert gpu_from_environment(env, device) == expected


def test_default_workload_same_rules_as_the_agent(tmp_path: Path) -> None:
    (tmp_path / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_88/step_0\n")
    assert default_workload({"MFU_WORKLOAD": "w"}, str(tmp_path)) == "w"
    assert default_workload({"SLURM_JOB_ID": "5"}, str(tmp_path)) == "slurm-5"
    assert default_workload({}, str(tmp_path)) == "slurm-88"
    assert default_workload({}, str(tmp_path / "missing")) == "unattributed"


def test_import_is_stdlib_only() -> None:
    code = ("import sys, agents.sdk; heavy = {'pydantic', 'torch', 'mfu.flops', "
            "'confluent_kafka', 'pynvml', 'prometheus_client'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"


def test_measure_flops_uses_pytorch_when_present() -> None:
    try:
        import torch
    except ImportError:
        with pytest.raises(ImportError, match="needs PyTorch"):
            measure_flops(lambda: None)
        return
    a, b = torch.ones(64, 32), torch.ones(32, 16)
    assert measure_flops(torch.matmul, a, b) == 2 * 64 * 32 * 16
