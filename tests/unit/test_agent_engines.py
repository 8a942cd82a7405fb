"""Inference-engine collector: exposition parsing on vLLM/SGLang fixtures, counter deltas
with restarts, discovery from a fake /proc, and scraping a real local HTTP server.

The fixtures in ``tests/unit/fixtures/engines/`` were written by ``prometheus_client``
with each metric declared exactly as vLLM (``vllm/v1/metrics/loggers.py``, ``perf.py``)
and SGLang (``python/sglang/srt/metrics/collector.py``) declare it (name, HELP, label
names), ``_created`` values pinned; see docs/inference.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.agent import Agent
from agents.engine_discovery import ProcEngineFinder, local_addresses, parse_command
from agents.engine_metrics import CounterDeltas, Series, parse_exposition
from agents.engines import EngineCollector, EngineTarget, infer_phase
from agents.settings import AgentSettings
from mfu.events import FlopReport, parse_events
from mfu.topics import FLOPS
from mfu_testing.fake_engine import EnginePages
from mfu_testing.fake_nvml import FakeNvml, node_document
from tests.unit.test_agent_publisher import FakeBroker

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
T0 = 1_700_000_000.0
VLLM_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
GPU_A, GPU_B = "GPU-aaaa", "GPU-bbbb"


def by_name(series: list[Series]) -> dict[str, Series]:
    return {s.name: s for s in series}


# --------------------------------------------------------------------------- parsing


def test_parse_vllm_fixture() -> None:
    got = by_name(parse_exposition((FIXTURES / "vllm_metrics.txt").read_text()))
    # gauges, histograms and _created samples are not engine counters
    assert set(got) == {"vllm:estimated_flops_per_gpu_total",
                        "vllm:estimated_read_bytes_per_gpu_total",
                        "vllm:estimated_write_bytes_per_gpu_total",
                        "vllm:prompt_tokens_total", "vllm:generation_tokens_total"}
    flops = got["vllm:estimated_flops_per_gpu_total"]
    assert flops.value == 3.5e15 and flops.kind == "flops" and flops.engine == "vllm"
    assert flops.labels == (("engine", "0"), ("model_name", VLLM_MODEL))
    assert flops.created == 1.7e9  # the counter's _created sample, paired by labels
    assert got["vllm:estimated_read_bytes_per_gpu_total"].value == 1.2e13
    assert got["vllm:estimated_write_bytes_per_gpu_total"].value == 4.0e11
    assert got["vllm:prompt_tokens_total"].value == 1000.0
    assert got["vllm:generation_tokens_total"].value == 5000.0


def test_parse_sglang_fixture_one_series_per_tp_rank() -> None:
    series = parse_exposition((FIXTURES / "sglang_metrics.txt").read_text())
    flops = sorted((s for s in series if s.kind == "flops"), key=lambda s: s.label("tp_rank"))
    assert [(s.label("tp_rank"), s.value) for s in flops] == [("0", 2.0e15), ("1", 2.2e15)]
    assert flops[0].label("engine_type") == "unified" and flops[0].engine == "sglang"
    tokens = {s.kind: s.value for s in series if s.kind.endswith("tokens")}
    assert tokens == {"prompt_tokens": 700.0, "generation_tokens": 800.0}


def test_parse_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not Prometheus exposition"):
        parse_exposition('vllm:estimated_flops_per_gpu_total{engine="0" 12\n')


def test_parse_reads_only_engine_counter_lines() -> None:
    # an unrelated malformed line does not spoil the counters (only their lines are parsed)
    page = (FIXTURES / "vllm_metrics.txt").read_text() + 'other_metric{a="1" oops\n'
    assert by_name(parse_exposition(page))["vllm:estimated_flops_per_gpu_total"].value == 3.5e15


# --------------------------------------------------------------------------- deltas


def s(value: float, created: float | None = None, engine: str = "0") -> Series:
    return Series("vllm:estimated_flops_per_gpu_total", (("engine", engine),), value, created)


def test_counter_deltas_baseline_advance_restart() -> None:
    d = CounterDeltas()
    assert d.update([s(100.0)]) == []  # baseline: no delta
    [a] = d.update([s(250.0)])
    assert (a.delta, a.restarted) == (150.0, False)
    [b] = d.update([s(40.0)])  # went down: restarted from 0 after the last scrape
    assert (b.delta, b.restarted) == (40.0, True)
    [c] = d.update([s(70.0)])  # the new series continues from 40
    assert (c.delta, c.restarted) == (30.0, False)
    assert d.stats == {"baselines": 1, "restarts": 1, "invalid": 0}


def test_counter_deltas_created_change_is_a_restart_even_when_higher() -> None:
    d = CounterDeltas()
    d.update([s(100.0, created=1.0e9)])
    [a] = d.update([s(500.0, created=1.1e9)])  # new process already past the old value
    assert (a.delta, a.restarted) == (500.0, True)


def test_counter_deltas_skip_invalid_and_forget_vanished() -> None:
    d = CounterDeltas()
    d.update([s(10.0), s(5.0, engine="1")])
    assert [x.delta for x in d.update([s(float("nan")), s(7.0, engine="1")])] == [2.0]
    assert d.stats["invalid"] == 1
    # engine "0" vanished in that scrape: it starts again from a baseline
    assert [x.delta for x in d.update([s(20.0), s(9.0, engine="1")])] == [2.0]


def test_infer_phase() -> None:
    assert infer_phase(0.0, 64.0) == "decode"
    assert infer_phase(512.0, 0.0) == "prefill"
    assert infer_phase(512.0, 64.0) is None
    assert infer_phase(None, 64.0) is None


# --------------------------------------------------------------------------- discovery


def make_proc(root: Path, pid: int, ppid: int, argv: list[str], env: str = "") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    # comm with a space and a parenthesis: ppid must still be read right
    (d / "stat").write_text(f"{pid} (VLLM::Engine (x)) S {ppid} {pid} {pid} 0 -1\n")
    (d / "environ").write_bytes(env.encode())
    (d / "cgroup").write_text("0::/\n")


def test_parse_command() -> None:
    vllm = parse_command(["/usr/bin/python3", "/usr/local/bin/vllm", "serve", "m",
                          "--port", "8001", "--dtype", "float16"])
    assert vllm is not None and (vllm.engine, vllm.port, vllm.precision) == ("vllm", 8001, "fp16")
    assert vllm.url == "http://127.0.0.1:8001/metrics"
    api = parse_command(["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m",
                         "--host=0.0.0.0", "--quantization", "fp8"])
    assert api is not None and (api.port, api.host, api.precision) == (8000, "127.0.0.1", "fp8")
    sgl = parse_command(["python3", "-m", "sglang.launch_server", "--model-path", "m",
                         "--host", "10.0.0.5", "--port=30001", "--enable-mfu-metrics"])
    assert sgl is not None and sgl.url == "http://10.0.0.5:30001/metrics"
    assert sgl.precision == "bf16"  # no --dtype: the default
    default = parse_command(["python3", "-m", "sglang.launch_server", "--model-path", "m"])
    assert default is not None and default.port == 30000
    assert parse_command(["python", "train.py", "--port", "8000"]) is None
    assert parse_command(["vllm", "serve", "m", "--port", "http"]) is None


def test_discovery_from_fake_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    make_proc(proc, 1, 0, ["/sbin/init"])
    make_proc(proc, 100, 1, ["vllm", "serve", "m", "--port", "8001"])  # API server, no GPU
    make_proc(proc, 101, 100, ["python3", "-c", "from multiprocessing.spawn import ..."])
    make_proc(proc, 102, 101, ["python3", "-c", "worker"])
    make_proc(proc, 103, 101, ["python3", "-c", "worker"])
    make_proc(proc, 200, 1, ["python3", "-m", "sglang.launch_server", "--model-path", "m"])
    make_proc(proc, 201, 200, ["python3", "-c", "scheduler"])
    make_proc(proc, 300, 1, ["python3", "train.py"])  # a training job: no engine
    finder = ProcEngineFinder(proc)
    found = finder.find({102: "GPU-1", 103: "GPU-0", 201: "GPU-2", 300: "GPU-3"})
    assert [(f.root_pid, f.command.engine, f.command.port, f.gpu_uuids, f.pids) for f in found] \
        == [(100, "vllm", 8001, ("GPU-0", "GPU-1"), (102, 103)),
            (200, "sglang", 30000, ("GPU-2",), (201,))]
    # the SGLang scheduler left the GPU: only vLLM remains
    assert [f.root_pid for f in finder.find({102: "GPU-1", 103: "GPU-0"})] == [100]


# /proc/<pid>/net/fib_trie of a pod (format as the kernel writes it)
POD_FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.1.0/24 2 0 2
        +-- 10.244.1.0/28 2 0 2
           |-- 10.244.1.0
              /24 link UNICAST
           |-- 10.244.1.7
              /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.244.1.7
        /32 host LOCAL
"""


def test_local_addresses_from_fib_trie() -> None:
    assert local_addresses(POD_FIB_TRIE) == ["10.244.1.7"]
    assert local_addresses("") == []


def test_engine_in_another_network_namespace_is_scraped_on_its_address(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "net").symlink_to("net:[4026531833]")  # the agent's
    make_proc(proc, 100, 1, ["vllm", "serve", "m", "--port", "8001"])  # in a pod
    (proc / "100" / "ns").mkdir()
    (proc / "100" / "ns" / "net").symlink_to("net:[4026532999]")
    (proc / "100" / "net").mkdir()
    (proc / "100" / "net" / "fib_trie").write_text(POD_FIB_TRIE)
    make_proc(proc, 101, 100, ["python3", "-c", "engine core"])
    make_proc(proc, 200, 1, ["vllm", "serve", "m", "--port", "8002"])  # host network
    (proc / "200" / "ns").mkdir()
    (proc / "200" / "ns" / "net").symlink_to("net:[4026531833]")
    make_proc(proc, 201, 200, ["python3", "-c", "engine core"])
    make_proc(proc, 300, 1, ["vllm", "serve", "m", "--port", "8003", "--host", "10.0.0.9"])
    make_proc(proc, 301, 300, ["python3", "-c", "engine core"])
    found = ProcEngineFinder(proc).find({101: "GPU-0", 201: "GPU-1", 301: "GPU-2"})
    assert [f.url for f in found] == ["http://10.244.1.7:8001/metrics",
                                      "http://127.0.0.1:8002/metrics",
                                      "http://10.0.0.9:8003/metrics"]


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
def server() -> Iterator[tuple[EnginePages, int]]:
    pages = EnginePages().start()
    try:
        yield pages, pages.port
    finally:
        pages.close()


def vllm_page(flops: float, read: float, write: float, prompt: float, gen: float) -> str:
    """A vLLM /metrics page as its PrometheusStatLogger exposes it (one engine)."""
    lab = f'{{engine="0",model_name="{VLLM_MODEL}"}}'
    lines = []
    for name, value in (("vllm:estimated_flops_per_gpu_total", flops),
                        ("vllm:estimated_read_bytes_per_gpu_total", read),
                        ("vllm:estimated_write_bytes_per_gpu_total", write),
                        ("vllm:prompt_tokens_total", prompt),
                        ("vllm:generation_tokens_total", gen)):
        lines += [f"# HELP {name} x", f"# TYPE {name} counter", f"{name}{lab} {value!r}"]
    return "\n".join(lines) + "\n"


# The stream the HTTP tests serve: scrape 0 is the baseline, scrape 2 follows an engine
# restart (every counter lower than before).
STREAM = [
    vllm_page(1.0e15, 4.0e12, 1.0e11, 100.0, 0.0),
    vllm_page(1.6e15, 5.0e12, 1.5e11, 100.0, 64.0),
    vllm_page(2.0e14, 3.0e11, 1.0e10, 0.0, 16.0),   # restart
    vllm_page(5.0e14, 1.3e12, 3.0e10, 0.0, 48.0),
]
# Per-GPU values each interval, by hand (the counters are per GPU already, so both GPUs
# of the engine get the full delta; tokens are per engine, split over its 2 GPUs):
#   [T0, T0+1): flops 1.6e15-1.0e15 = 6e14; bytes (5e12-4e12)+(1.5e11-1e11) = 1.05e12;
#               tokens (0 + 64)/2 = 32; only generation advanced -> decode
#   [T0+1, T0+2): restart -> the new values: flops 2e14; bytes 3e11+1e10 = 3.1e11;
#               tokens (0 + 16)/2 = 8 (prompt 100 -> 0 is a restart with delta 0)
#   [T0+2, T0+3): flops 5e14-2e14 = 3e14; bytes (1.3e12-3e11)+(3e10-1e10) = 1.02e12;
#               tokens (48-16)/2 = 16
EXPECTED = [(T0, T0 + 1, 6.0e14, 1.05e12, 32.0), (T0 + 1, T0 + 2, 2.0e14, 3.1e11, 8.0),
            (T0 + 2, T0 + 3, 3.0e14, 1.02e12, 16.0)]


def test_collector_scrapes_advancing_counters_with_a_restart(server) -> None:
    pages, port = server
    pages.pages = STREAM
    target = EngineTarget(url=f"127.0.0.1:{port}", workload="chat-llama",
                          gpu_uuids=(GPU_A, GPU_B))
    assert target.url == f"http://127.0.0.1:{port}/metrics"
    collector = EngineCollector("n1", targets=[target], discover=False, timeout_s=2.0)
    assert collector.collect(T0) == []  # baseline
    got = [collector.collect(T0 + i) for i in (1, 2, 3)]
    assert pages.served == 4
    for reports, (start, end, flops, nbytes, tokens) in zip(got, EXPECTED, strict=True):
        assert [r.gpu_uuid for r in reports] == [GPU_A, GPU_B]
        for rank, r in enumerate(reports):
            assert (r.start, r.end, r.flops, r.bytes, r.tokens) == (start, end, flops, nbytes,
                                                                    tokens)
            assert (r.rank, r.workload, r.node, r.source, r.precision, r.phase, r.model) == \
                (rank, "chat-llama", "n1", "engine", "bf16", "decode", VLLM_MODEL)
    assert collector.stats[("restarts",)] == 5  # all five counters of scrape 2
    ids = [r.event_id for reports in got for r in reports]
    assert len(set(ids)) == 6


def test_collector_maps_ranks_to_configured_gpus(server) -> None:
    pages, port = server
    base = (FIXTURES / "sglang_metrics.txt").read_text()
    # rank 0: 2.0e15 -> 2.5e15 (+5e14); rank 1: 2.2e15 -> 2.4e15 (+2e14)
    pages.pages = [base, base.replace("} 2e+15", "} 2.5e+15").replace("} 2.2e+15", "} 2.4e+15")]
    assert pages.pages[1] != base
    target = EngineTarget(url=f"http://127.0.0.1:{port}/metrics", workload="sgl",
                          gpu_uuids=(GPU_B, GPU_A), precision="fp16")
    collector = EngineCollector("n1", targets=[target], discover=False, timeout_s=2.0)
    collector.collect(T0)
    reports = collector.collect(T0 + 2)
    # gpu_uuids are in rank order: tp_rank 0 -> GPU_B, tp_rank 1 -> GPU_A; bytes did not
    # move (0 + 0); no tokens moved -> no phase
    assert [(r.gpu_uuid, r.flops, r.bytes, r.tokens, r.phase, r.precision) for r in reports] \
        == [(GPU_B, 5.0e14, 0.0, 0.0, None, "fp16"), (GPU_A, 2.0e14, 0.0, 0.0, None, "fp16")]


def test_collector_counts_failures_and_hints_missing_flop_counters(server, caplog) -> None:
    pages, port = server
    pages.pages = ["# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n"]
    ok = EngineTarget(url=f"127.0.0.1:{port}", workload="w", gpu_uuids=(GPU_A,))
    down = EngineTarget(url="127.0.0.1:1", workload="w2", gpu_uuids=(GPU_B,))
    collector = EngineCollector("n1", targets=[ok, down], discover=False, timeout_s=1.0)
    assert collector.collect(T0) == [] and collector.collect(T0 + 1) == []
    assert collector.stats[("scrape_errors",)] == 2
    assert collector.stats[("no_flop_counters",)] == 1
    assert "--enable-mfu-metrics" in caplog.text


def test_collector_discovers_engine_and_attributes_workload(server, tmp_path: Path) -> None:
    pages, port = server
    pages.pages = STREAM[:2]
    proc = tmp_path / "proc"
    make_proc(proc, 100, 1, ["vllm", "serve", "m", "--port", str(port), "--dtype", "bfloat16"])
    make_proc(proc, 101, 100, ["python3", "-c", "engine core"])
    names = {101: "job-serve"}
    collector = EngineCollector("n1", proc_root=proc, timeout_s=2.0,
                                workload_of=lambda pid: names[pid])
    assert collector.collect(T0, {101: GPU_A}) == []
    [r] = collector.collect(T0 + 1, {101: GPU_A})
    assert (r.workload, r.gpu_uuid, r.flops, r.bytes, r.tokens) == \
        ("job-serve", GPU_A, 6.0e14, 1.05e12, 64.0)


def test_agent_publishes_engine_reports(server, tmp_path: Path) -> None:
    """The agent's tick publishes engine reports with the SDK's, on mfu.flops.v1."""
    pages, port = server
    pages.pages = STREAM[:2]
    proc = tmp_path / "proc"
    make_proc(proc, 500, 1, ["vllm", "serve", "m", "--port", str(port)])
    make_proc(proc, 501, 500, ["python3", "-c", "engine core"], env="MFU_WORKLOAD=sgl-chat\0")
    broker = FakeBroker()
    agent = Agent(AgentSettings(node="n1", interval_s=1.0, socket=str(tmp_path / "a.sock"),
                                spool_dir=tmp_path / "spool", metrics_port=0, proc_root=proc,
                                envelope_s=1.0),  # one message per interval: no buffering
                  nvml=FakeNvml(node_document(1, first_pid=501)),
                  producer_factory=broker.factory)
    agent.collector.start(T0 - 1)
    agent.tick(T0)
    agent.tick(T0 + 1)
    agent.publisher.close(5.0)
    reports = [r for m in broker.delivered if m.topic() == FLOPS
               for r in parse_events(m.value(), FlopReport)[0]]
    gpu0 = "GPU-00000000-0000-4000-8000-000000000000"
    assert [(r.workload, r.gpu_uuid, r.flops, r.source) for r in reports] == \
        [("sgl-chat", gpu0, 6.0e14, "engine")]


def test_flat_flop_counter_while_tokens_move_is_not_a_zero(server, caplog) -> None:
    """vLLM exports the counters without --enable-mfu-metrics but never advances them:
    no report (unknown), not flops=0 (a known zero) for a busy engine."""
    pages, port = server
    pages.pages = [vllm_page(0.0, 0.0, 0.0, 100.0, 10.0), vllm_page(0.0, 0.0, 0.0, 100.0, 74.0),
                   vllm_page(0.0, 0.0, 0.0, 100.0, 74.0)]
    collector = EngineCollector("n1", discover=False, timeout_s=2.0, targets=[
        EngineTarget(url=f"127.0.0.1:{port}", workload="w", gpu_uuids=(GPU_A,))])
    collector.collect(T0)
    assert collector.collect(T0 + 1) == []  # 64 tokens generated, 0 FLOPs counted
    assert collector.stats[("flops_not_advancing",)] == 1
    assert "--enable-mfu-metrics" in caplog.text
    # nothing moved at all: an idle engine is a known zero
    [idle] = collector.collect(T0 + 2)
    assert (idle.flops, idle.bytes, idle.tokens, idle.phase) == (0.0, 0.0, 0.0, None)


def test_discovery_on_the_real_proc(tmp_path: Path) -> None:
    """The real /proc of this machine: a process whose command line reads as `vllm serve
    --port 18123` with a child on a (pretend) GPU; the child's parent chain leads to it."""
    ready = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            f"open({str(ready)!r}, 'w').write(str(c.pid)); time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", code, "vllm", "serve", "m",
                               "--port", "18123"])
    try:
        deadline = time.monotonic() + 20
        while not (ready.exists() and ready.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(ready.read_text())
        [found] = ProcEngineFinder("/proc").find({child: GPU_A})
        assert (found.root_pid, found.command.port, found.gpu_uuids, found.url) == \
            (parent.pid, 18123, (GPU_A,), "http://127.0.0.1:18123/metrics")
    finally:
        parent.kill()
        parent.wait(10)
        if ready.exists() and ready.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ready.read_text()), signal.SIGKILL)
