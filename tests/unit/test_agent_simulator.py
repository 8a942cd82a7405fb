"""Fleet simulator: deterministic, archetypes land in their ranges, ground truth exact."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from agents.publisher import Publisher
from agents.simulator import ARCHETYPES, STALL_S, FleetSimulator
from agents.spool import Spool
from mfu import peaks
from mfu.events import FlopReport, GpuSample, batch, parse_events
from mfu.topics import FLOPS, TELEMETRY
from tests.unit.test_agent_publisher import FakeBroker

T0 = 1_700_000_000.0
MODELS = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA H200", "NVIDIA L40S"]


@pytest.fixture(scope="module")
def sim() -> FleetSimulator:
    return FleetSimulator(8, 8, MODELS, seed=7, start_ts=T0, drift_at_s=120,
                          drift_fraction=0.3)


@pytest.fixture(scope="module")
def truth(sim: FleetSimulator) -> dict:
    return sim.ground_truth(T0, T0 + 120)  # before the drift


def test_same_seed_same_fleet_same_numbers() -> None:
    a = FleetSimulator(3, 4, MODELS[:2], seed=1, start_ts=T0)
    b = FleetSimulator(3, 4, MODELS[:2], seed=1, start_ts=T0)
    c = FleetSimulator(3, 4, MODELS[:2], seed=2, start_ts=T0)
    for tick in (0, 1, 57):
        ea, eb, ec = a.events(tick), b.events(tick), c.events(tick)
        for node in ea:
            for x, y in zip(ea[node], eb[node], strict=True):
                assert batch(x) == batch(y)
        assert batch(ea[a.node_names[0]][1]) != batch(ec[c.node_names[0]][1])


def test_events_are_valid_contract_events(sim: FleetSimulator) -> None:
    ids = set()
    for tick in range(3):
        for samples, reports in sim.events(tick).values():
            good, bad = parse_events(batch(samples), GpuSample)
            assert bad == [] and len(good) == len(samples)
            good_r, bad_r = parse_events(batch(reports), FlopReport)
            assert bad_r == [] and len(good_r) == len(reports)
            ids |= {e.event_id for e in samples} | {e.event_id for e in reports}
            n = len(samples) + len(reports)
            assert len({e.event_id for e in samples} | {e.event_id for e in reports}) == n
    assert len(ids) == sum(len(s) + len(r) for t in range(3)
                           for s, r in sim.events(t).values())


def test_every_archetype_is_present_and_in_its_range(sim: FleetSimulator, truth: dict) -> None:
    seen = {w.archetype.name for w in sim.workloads.values()}
    assert seen == set(ARCHETYPES)
    for name, t in truth["workload"].items():
        w = sim.workloads[name]
        lo, hi = w.archetype.mfu
        if w.archetype.name in ("input_stall", "comm_bound_dp"):
            continue  # checked below
        assert lo <= t.mfu <= hi, (name, t.mfu)


def test_llm_training_spans_nodes_with_ranks(sim: FleetSimulator) -> None:
    w = sim.workloads["llm-train-0"]
    assert len(w.nodes) == 2 and len(w.devices) == 16
    reports = [r for _, rs in sim.events(0).values() for r in rs if r.workload == w.name]
    assert sorted(r.rank for r in reports) == list(range(16))
    assert {r.node for r in reports} == set(w.nodes)
    assert reports[0].parallelism is not None and reports[0].phase == "train"


def test_comm_bound_mfu_falls_with_nodes(sim: FleetSimulator, truth: dict) -> None:
    wide, narrow = sim.workloads["dp-wide-0"], sim.workloads["dp-narrow-0"]
    assert len(wide.nodes) >= 2 and len(narrow.nodes) == 1
    lo, hi = ARCHETYPES["comm_bound_dp"].mfu
    assert lo <= truth["workload"]["dp-narrow-0"].mfu <= hi
    assert truth["workload"]["dp-wide-0"].mfu < 0.75 * truth["workload"]["dp-narrow-0"].mfu


def test_input_stalls_are_periodic_drops(sim: FleetSimulator) -> None:
    name = next(n for n, w in sim.workloads.items() if w.archetype.name == "input_stall")
    per_5s = [sim.ground_truth(T0 + s, T0 + s + 5)["workload"][name].mfu
              for s in range(0, 120, 5)]
    lo, hi = ARCHETYPES["input_stall"].mfu
    stalled = [m for m in per_5s if m < 0.1 * lo]
    clean = [m for m in per_5s if lo * 0.9 <= m <= hi * 1.1]
    # two 60 s periods with a 15 s stall each: >= 2 whole stalled 5 s windows per stall,
    # at most 2 windows per stall straddle its edges
    assert len(stalled) >= 4
    assert len(per_5s) - len(stalled) - len(clean) <= 4
    assert len(stalled) <= 2 * STALL_S / 5


def test_underbatched_inference_looks_busy_but_is_not(sim: FleetSimulator) -> None:
    w = next(w for w in sim.workloads.values()
             if w.archetype.name == "underbatched_inference" and
             sim.by_node[w.nodes[0]][0].hw.gpm)
    samples = [s for t in range(20) for ss, _ in sim.events(t).values() for s in ss
               if w.name in s.workloads]
    assert min(s.sm_util for s in samples) >= 0.8
    assert max(s.tensor_active for s in samples) < 0.2
    assert max(s.mem_used_bytes / s.mem_total_bytes for s in samples) < 0.5


def test_idle_gpu_is_allocated_without_flops(sim: FleetSimulator, truth: dict) -> None:
    name = next(n for n, w in sim.workloads.items() if w.archetype.name == "idle")
    events = sim.events(3)
    assert not any(r.workload == name for _, rs in events.values() for r in rs)
    assert any(name in s.workloads for ss, _ in events.values() for s in ss)
    t = truth["workload"][name]
    assert t.achieved_flops == 0 and t.peak_flops > 0 and t.mfu == 0


def test_mig_slices_have_profiles_and_slice_peaks(sim: FleetSimulator, truth: dict) -> None:
    slices = [d for d in sim.devices if d.mig_profile]
    assert slices and {d.mig_profile.split(".")[0] for d in slices} == {"3g", "1g"}
    dev = slices[0]
    full = peaks.peak_flops_per_s(dev.gpu_name, "bf16")
    assert dev.peak("bf16") == pytest.approx(full * peaks.mig_sm_fraction(dev.gpu_name,
                                                                          dev.mig_profile))
    samples = [s for ss, _ in sim.events(0).values() for s in ss if s.mig_profile]
    assert len(samples) == len(slices) and all(s.gpu_uuid.startswith("MIG-") for s in samples)
    assert all(s.power_w is None for s in samples)
    assert any(s.workloads == [] for s in samples)  # an unallocated slice


def test_fp32_on_tensor_core_gpu(sim: FleetSimulator) -> None:
    name = next(n for n, w in sim.workloads.items() if w.archetype.name == "fp32_train")
    reports = [r for _, rs in sim.events(0).values() for r in rs if r.workload == name]
    assert {r.precision for r in reports} == {"fp32"}


def test_drift_lowers_mfu_by_the_fraction(sim: FleetSimulator) -> None:
    assert sim.drift_workload == "llm-train-0"
    before = sim.ground_truth(T0 + 60, T0 + 120)["workload"]["llm-train-0"].mfu
    after = sim.ground_truth(T0 + 120, T0 + 180)["workload"]["llm-train-0"].mfu
    assert after == pytest.approx(before * 0.7, rel=0.02)


def test_ground_truth_matches_the_events(sim: FleetSimulator) -> None:
    """Recompute MFU from the emitted events alone (peaks from the catalog)."""
    flops: dict[str, float] = defaultdict(float)
    peak: dict[str, float] = defaultdict(float)
    node_flops: dict[str, float] = defaultdict(float)
    node_peak: dict[str, float] = defaultdict(float)
    for tick in range(10):
        for node, (samples, reports) in sim.events(tick).items():
            precision_on = {r.gpu_uuid: r.precision for r in reports}
            for r in reports:
                flops[r.workload] += r.flops
                node_flops[node] += r.flops
            for s in samples:
                p = peaks.peak_flops_per_s(s.gpu_name, precision_on.get(s.gpu_uuid, "bf16"),
                                           mig_profile=s.mig_profile) * s.interval_s
                node_peak[node] += p
                for w in s.workloads:
                    peak[w] += p
    truth = sim.ground_truth(T0, T0 + 10)
    for name, t in truth["workload"].items():
        assert t.mfu == pytest.approx(flops[name] / peak[name], rel=1e-9)
    for node, t in truth["node"].items():
        assert t.mfu == pytest.approx(node_flops[node] / node_peak[node], rel=1e-9)
    fleet = truth["fleet"]["default"]
    assert fleet.gpus == len(sim.devices) and 0 < fleet.allocation < 1
    assert fleet.mfu_allocated > fleet.mfu


def test_window_crossing_reports_split_pro_rata() -> None:
    s = FleetSimulator(1, 2, MODELS[:1], seed=3, start_ts=T0, interval_s=4.0)
    whole = s.ground_truth(T0, T0 + 4)["workload"]
    half = s.ground_truth(T0, T0 + 2)["workload"]
    for name, t in whole.items():
        assert half[name].achieved_flops == pytest.approx(t.achieved_flops / 2)
        assert half[name].mfu == pytest.approx(t.mfu)


def test_publishes_one_batch_per_node_interval_and_topic(tmp_path: Path) -> None:
    s = FleetSimulator(3, 2, MODELS[:2], seed=0, start_ts=T0)
    broker = FakeBroker()
    pub = Publisher(Spool(tmp_path), config={}, producer_factory=broker.factory)
    t0 = time.perf_counter()
    assert s.run(pub, duration_s=5, realtime=False) == 5
    pub.flush(5)
    assert time.perf_counter() - t0 < 5  # synthetic clock: no sleeping
    per = defaultdict(int)
    for msg in broker.delivered:
        per[(msg.topic(), msg.key())] += 1
    for node in s.node_names:
        assert per[(TELEMETRY, node.encode())] == 5
        assert per[(FLOPS, node.encode())] == 5 * bool(any(
            d.workload and d.workload.archetype.reports for d in s.by_node[node]))


def test_realtime_paces_on_the_wall_clock(tmp_path: Path) -> None:
    interval = 0.2
    start = (time.time() // interval) * interval
    s = FleetSimulator(1, 1, MODELS[:1], seed=0, interval_s=interval, start_ts=start)
    broker = FakeBroker()
    pub = Publisher(Spool(tmp_path), config={}, producer_factory=broker.factory)
    t0 = time.time()
    s.run(pub, duration_s=0.6, realtime=True)
    assert time.time() >= start + 0.6 - 1e-3  # the last interval had to end first
    assert time.time() - t0 < 2.0


@pytest.mark.parametrize("bad", [
    {"gpu_models": ["NVIDIA GeForce Imaginary 9999"]},
    {"nodes": 0},
    {"drift_at_s": 10, "drift_workload": "no-such-job"},
])
def test_bad_fleet_is_refused(bad: dict) -> None:
    with pytest.raises((ValueError, LookupError)):
        FleetSimulator(**{"nodes": 2, "gpus_per_node": 2, "start_ts": T0, **bad})
