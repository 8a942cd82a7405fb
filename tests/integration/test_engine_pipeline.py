"""Engine counters end to end: a vLLM-style /metrics stream (with an engine restart mid-run)
served on 127.0.0.1, scraped by the agent's EngineCollector, published with NVML-style
telemetry to per-test topics and windowed by a real `mfu streams` worker; the workload
windows' FLOPs, MFU (and MBU) must equal the hand computation below.

``test_engine_pipeline_mbu`` checks ``mbu``/``achieved_bytes``/``peak_bytes``
(CONTRACT-ADDITIONS.md), which the accounting branch implements in the stream stage: it
fails on a branch without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from agents.engines import EngineCollector, EngineTarget
from mfu.events import FlopReport, GpuSample
from mfu.peaks import peak_bytes_per_s
from mfu_testing.fake_engine import EnginePages
from tests.integration.streams_harness import (
    H100,
    T0,
    WINDOW_S,
    Collector,
    Feeder,
    Topics,
    Worker,
    approx,
    create_topics,
    delete_topics,
    peak,
    sample,
    wait_for_group,
    windows_by_key,
    worker_env,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
W0, W1 = T0, T0 + WINDOW_S

# Per-GPU work of the engine (TP=2, so 2 GPUs) in second i = [T0+i-1, T0+i), i = 1..20,
# as its counters report it. At scrape 8 the engine restarted: every counter started
# again from zero, and what it shows at scrape 8 is the work since the restart.
FLOPS = {i: 3e14 for i in range(1, 8)} | {8: 1e14, 9: 2e14, 10: 2e14} | \
    {i: 4e14 for i in range(11, 21)}
READ = {i: 1e12 for i in range(1, 21)} | {8: 5e11}
WRITE = {i: 2e10 for i in range(1, 21)} | {8: 1e10}
GENERATED = {i: 64.0 for i in range(1, 21)} | {8: 32.0}
RESTART = 8
# The counters before the run (an engine that has been up for a while).
START = {"flops": 5e15, "read": 2e13, "write": 4e11, "gen": 1e5}


def counter_values() -> list[dict[str, float]]:
    """The counter values at scrapes 0..20."""
    values = [dict(START)]
    for i in range(1, 21):
        prev = {k: 0.0 for k in START} if i == RESTART else values[-1]
        values.append({"flops": prev["flops"] + FLOPS[i], "read": prev["read"] + READ[i],
                       "write": prev["write"] + WRITE[i], "gen": prev["gen"] + GENERATED[i]})
    return values


def vllm_page(v: dict[str, float]) -> str:
    """A /metrics page as vLLM's PrometheusStatLogger + PerfMetricsProm expose it."""
    lab = f'{{engine="0",model_name="{MODEL}"}}'
    out = []
    for name, value in (("vllm:estimated_flops_per_gpu_total", v["flops"]),
                        ("vllm:estimated_read_bytes_per_gpu_total", v["read"]),
                        ("vllm:estimated_write_bytes_per_gpu_total", v["write"]),
                        ("vllm:prompt_tokens_total", 0.0),
                        ("vllm:generation_tokens_total", v["gen"])):
        out += [f"# HELP {name} x", f"# TYPE {name} counter", f"{name}{lab} {value!r}"]
    out += ["# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{lab} 64.0"]
    return "\n".join(out) + "\n"


# Hand computation, per GPU:
#   W0 = seconds 1..10: FLOPs 7*3e14 + 1e14 + 2*2e14 = 2.6e15;
#        bytes 9*(1e12 + 2e10) + (5e11 + 1e10) = 9.18e12 + 5.1e11 = 9.69e12
#   W1 = seconds 11..20: FLOPs 10*4e14 = 4.0e15; bytes 10*(1e12 + 2e10) = 1.02e13
# The workload has 2 GPUs: achieved = 2 x per GPU. H100 SXM bf16 peak 989.4e12 FLOP/s,
# 3.35e12 B/s: peak_flops = 2*989.4e12*10 = 1.9788e16, peak_bytes = 2*3.35e12*10 = 6.7e13.
#   W0: achieved_flops 5.2e15, mfu 5.2e15/1.9788e16 = 0.262785...; achieved_bytes 1.938e13,
#       mbu 1.938e13/6.7e13 = 0.289253...; tokens 9*64 + 32 = 608
#   W1: achieved_flops 8.0e15, mfu 8.0e15/1.9788e16 = 0.404285...; achieved_bytes 2.04e13,
#       mbu 2.04e13/6.7e13 = 0.304477...; tokens 10*64 = 640
EXPECTED = {
    W0: {"achieved_flops": 5.2e15, "achieved_bytes": 1.938e13, "tokens": 608.0},
    W1: {"achieved_flops": 8.0e15, "achieved_bytes": 2.04e13, "tokens": 640.0},
}
PEAK_FLOPS = 2 * 989.4e12 * WINDOW_S
PEAK_BYTES = 2 * 3.35e12 * WINDOW_S


@dataclass
class Run:
    topics: Topics
    workload: str
    reports: list[FlopReport]
    records: dict[tuple[str, float], dict[str, Any]]


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, kafka_admin: AdminClient, influx: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    topics = Topics()
    node, workload = f"en-{topics.suffix}", f"vllm-chat-{topics.suffix}"
    gpus = (f"GPU-e0-{topics.suffix}", f"GPU-e1-{topics.suffix}")
    pages = EnginePages([vllm_page(v) for v in counter_values()]).start()
    names = create_topics(kafka_admin, topics, PARTITIONS)
    workdir: Path = tmp_path_factory.mktemp("engine-pipeline")
    worker = Worker(worker_env(topics, kafka_bootstrap, influx, partitions=PARTITIONS), workdir)
    collector = Collector(kafka_bootstrap, [topics["workload"]])
    try:
        # The agent side, one tick per second of event time (scrape 0 is the baseline).
        engines = EngineCollector(node, discover=False, timeout_s=5.0, targets=[EngineTarget(
            url=f"127.0.0.1:{pages.port}", workload=workload, gpu_uuids=gpus)])
        reports: list[FlopReport] = []
        samples: list[GpuSample] = []
        for i in range(21):
            reports += engines.collect(T0 + i)
            if i:
                samples += [sample(node, g, T0 + i, [workload], index=k)
                            for k, g in enumerate(gpus)]
        assert pages.served == 21 and engines.stats[("restarts",)] == 4
        worker.start()
        wait_for_group(kafka_bootstrap, topics.app_id, 1, topics["telemetry"], worker=worker)
        feeder = Feeder(kafka_bootstrap, topics, PARTITIONS)
        for i in range(20):  # what the agent publishes per interval: samples, then reports
            feeder.events(samples[2 * i:2 * i + 2])
            feeder.events(reports[2 * i:2 * i + 2])
        feeder.flush()

        def done() -> bool:
            got = {(r["key"], r["window_start"]) for r in collector.records[topics["workload"]]}
            return {(workload, W0), (workload, W1)} <= got

        collector.wait_for(done, 90, "workload windows W0 and W1", worker)
        collector.poll(1.0)
        yield Run(topics, workload, reports, windows_by_key(collector.records[topics["workload"]]))
    finally:
        worker.stop()
        collector.close()
        pages.close()
        delete_topics(kafka_admin, names, topics.app_id)


def test_engine_reports_from_the_counter_stream(run: Run) -> None:
    """What the collector publishes: one report per GPU per second, per-GPU deltas."""
    assert len(run.reports) == 40
    for i in range(1, 21):
        pair = run.reports[2 * (i - 1):2 * i]
        for rank, r in enumerate(pair):
            assert (r.start, r.end, r.rank, r.source, r.phase, r.model) == \
                (T0 + i - 1, T0 + i, rank, "engine", "decode", MODEL)
            assert r.flops == FLOPS[i] and r.bytes == READ[i] + WRITE[i]
            assert r.tokens == GENERATED[i] / 2


def test_engine_pipeline(run: Run) -> None:
    assert peak(H100) * 2 * WINDOW_S == PEAK_FLOPS  # the catalog peak the workers use
    for ws, exp in EXPECTED.items():
        rec = run.records[(run.workload, ws)]
        assert rec["achieved_flops"] == approx(exp["achieved_flops"]), rec
        assert rec["peak_flops"] == approx(PEAK_FLOPS), rec
        assert rec["mfu"] == approx(exp["achieved_flops"] / PEAK_FLOPS), rec
        assert rec["gpus"] == 2 and rec["gpu_seconds"] == approx(2 * WINDOW_S)
        assert rec["tokens"] == approx(exp["tokens"]) and rec["phase"] == "decode"
        assert rec["model"] == MODEL and rec["late_events"] == 0 and rec["duplicates"] == 0
    assert run.records[(run.workload, W0)]["mfu"] == approx(0.26278552658176673)
    assert run.records[(run.workload, W1)]["mfu"] == approx(0.40428542551041036)
    # exactly the two windows of the run came out for this workload
    assert {ws for (key, ws) in run.records if key == run.workload} == {W0, W1}


def test_engine_pipeline_mbu(run: Run) -> None:
    """MBU fields of CONTRACT-ADDITIONS.md (implemented by the accounting branch)."""
    assert peak_bytes_per_s(H100) * 2 * WINDOW_S == PEAK_BYTES
    for ws, exp in EXPECTED.items():
        rec = run.records[(run.workload, ws)]
        assert rec.get("achieved_bytes") == approx(exp["achieved_bytes"]), rec
        assert rec.get("peak_bytes") == approx(PEAK_BYTES), rec
        assert rec.get("mbu") == approx(exp["achieved_bytes"] / PEAK_BYTES), rec
    assert run.records[(run.workload, W0)]["mbu"] == approx(0.28925373134328358)
    assert run.records[(run.workload, W1)]["mbu"] == approx(0.30447761194029851)

