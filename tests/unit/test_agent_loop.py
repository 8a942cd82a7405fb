"""The whole agent in-process: fake NVML, fake /proc, real intake socket and HTTP port,
an in-process producer; plus settings precedence and signal handling."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from agents.agent import Agent, install_signal_handlers
from agents.sdk import FlopReporter
from agents.settings import AgentSettings
from mfu.events import FlopReport, GpuSample, parse_events
from mfu.topics import FLOPS, TELEMETRY
from mfu_testing.fake_nvml import FakeNvml, node_document
from tests.unit.test_agent_publisher import FakeBroker


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def settings(tmp_path: Path, **kw) -> AgentSettings:
    kw.setdefault("envelope_s", 0.2)  # one message per interval (envelopes: test_agent_envelope)
    return AgentSettings(node="n1", interval_s=0.2, socket=str(tmp_path / "agent.sock"),
                         spool_dir=tmp_path / "spool", metrics_port=0,
                         proc_root=tmp_path / "proc", **kw)


def test_agent_publishes_samples_and_reports_per_interval(tmp_path: Path) -> None:
    pid = os.getpid()  # this test process plays the training job on GPU 0
    (tmp_path / "proc" / str(pid)).mkdir(parents=True)
    (tmp_path / "proc" / str(pid) / "environ").write_bytes(b"MFU_WORKLOAD=job-loop\0")
    (tmp_path / "proc" / str(pid) / "cgroup").write_text("0::/\n")
    nvml = FakeNvml(node_document(2, first_pid=pid))
    broker = FakeBroker()
    agent = Agent(settings(tmp_path), nvml=nvml, producer_factory=broker.factory)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,))
    runner.start()
    try:
        wait_for(lambda: agent.stats[("ticks",)] >= 2)
        reporter = FlopReporter(workload="job-loop", rank=0, model=6e9,
                                socket_address=str(tmp_path / "agent.sock"))
        time.sleep(0.05)  # the step's work: 6e12 FLOPs in 50 ms is a plausible rate
        reporter.step(tokens=1000)
        reporter.flush()  # no gpu_uuid: the agent maps this pid to GPU 0
        reporter.report(flops=1e12, start=time.time() - 1, end=time.time())
        reporter.close()
        assert reporter.stats["sent"] == 2
        port = agent.metrics_server.port
        wait_for(lambda: agent.intake.stats[("accepted",)] == 2)
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read())
        assert health["status"] == "ok" and health["gpus"] == 2 and health["broker_up"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert "mfu_agent_intake_accepted_total 2.0" in metrics
        assert "mfu_agent_gpus 2.0" in metrics
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive()

    samples, reports = [], []
    for msg in broker.delivered:
        assert msg.key() == b"n1"
        if msg.topic() == TELEMETRY:
            good, bad = parse_events(msg.value(), GpuSample)
            assert bad == [] and len(good) == 2  # one batch per interval, both GPUs
            samples.extend(good)
        else:
            assert msg.topic() == FLOPS
            good, bad = parse_events(msg.value(), FlopReport)
            assert bad == []
            reports.extend(good)
    assert len(samples) >= 4
    ts = [s.ts for s in samples[::2]]
    assert ts == sorted(set(ts))  # strictly increasing
    assert all(abs(t / 0.2 - round(t / 0.2)) < 1e-6 for t in ts)  # on interval boundaries
    gpu0 = samples[-2]
    assert gpu0.workloads == ["job-loop"]
    assert samples[-1].workloads == ["unattributed"]  # pid+1 has no /proc entry
    assert len(reports) == 2
    assert {r.node for r in reports} == {"n1"}
    assert {r.gpu_uuid for r in reports} == {gpu0.gpu_uuid}
    assert not Path(tmp_path / "agent.sock").exists()  # removed on shutdown


def test_shutdown_spools_what_kafka_did_not_take(tmp_path: Path) -> None:
    nvml = FakeNvml(node_document(1))
    broker = FakeBroker()
    broker.up = False
    agent = Agent(settings(tmp_path, shutdown_timeout_s=0.0), nvml=nvml,
                  producer_factory=broker.factory)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,))
    runner.start()
    wait_for(lambda: agent.stats[("ticks",)] >= 3)
    stop.set()
    runner.join(10)
    assert broker.delivered == []
    assert len(agent.spool) >= 3  # every interval is on disk for the next start


def test_a_failing_interval_does_not_end_the_agent(tmp_path: Path) -> None:
    agent = Agent(settings(tmp_path), nvml=FakeNvml(node_document(1)),
                  producer_factory=FakeBroker().factory)
    real_collect = agent.collector.collect
    calls = []

    def collect(ts: float):
        calls.append(ts)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real_collect(ts)

    agent.collector.collect = collect  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,))
    runner.start()
    try:
        wait_for(lambda: agent.stats[("ticks",)] >= 2)
    finally:
        stop.set()
        runner.join(10)
    assert agent.stats[("tick_errors",)] == 1


def test_settings_precedence_flags_env_file(tmp_path: Path, monkeypatch) -> None:
    conf = tmp_path / "agent.yaml"
    conf.write_text("interval_s: 5\nnode: from-file\nspool_max_bytes: 1000000\n"
                    "kafka:\n  bootstrap: file-broker:9092\n")
    monkeypatch.setenv("MFU_AGENT_NODE", "from-env")
    s = AgentSettings(config_file=conf, interval_s=2)
    assert (s.interval_s, s.node, s.spool_max_bytes) == (2, "from-env", 1000000)
    assert s.kafka.bootstrap == "file-broker:9092"
    toml = tmp_path / "agent.toml"
    toml.write_text('socket = "udp://127.0.0.1:8126"\n')
    monkeypatch.setenv("MFU_AGENT_CONFIG_FILE", str(toml))
    assert AgentSettings().socket == "udp://127.0.0.1:8126"
    with pytest.raises(ValueError, match="socket"):
        AgentSettings(socket="relative.sock")
    (tmp_path / "x.ini").write_text("[agent]\n")
    with pytest.raises(ValueError, match=r"\.yaml"):
        AgentSettings(config_file=tmp_path / "x.ini")


def test_sigterm_sets_the_stop_event() -> None:
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = threading.Event()
    try:
        install_signal_handlers(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(stop.is_set, 2.0)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
