"""Fleet simulator: deterministic, archetypes land in their ranges, ground truth exact,
the reporting traits of DESIGN.md §8 (silent tenants, a buggy reporter, GPUs without pipe
counters, engine reports with bytes, energy, tenants) and counters that follow physics."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from agents.publisher import Publisher
from agents.simulator import (
    ARCHETYPES,
    COUNTER_NOISE,
    SOURCES,
    STALL_S,
    FleetSimulator,
    Hardware,
    SimDevice,
    hardware,
)
from agents.spool import Spool
from mfu import peaks
from mfu.events import FlopReport, GpuSample, batch, parse_events
from mfu.ofu import clock_ratio
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
        assert lo <= t.true_mfu <= hi, (name, t.true_mfu)


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
    # idle by its counters: a known zero, so it is covered
    assert t.coverage == 1.0 and t.flop_sources["idle"] == t.gpu_seconds


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
    """Recompute MFU from the emitted events alone (peaks from the catalog), with the
    contract's FLOP sources: the peak counts only GPU-seconds with known model FLOPs (a
    report on the GPU, or idle by its counters)."""
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
                idle = s.sm_util <= 0.05 and (s.tensor_active is None or s.tensor_active <= 0.01)
                if s.gpu_uuid not in precision_on and not idle:
                    continue  # counters / none: no known model FLOPs
                p = peaks.peak_flops_per_s(s.gpu_name, precision_on.get(s.gpu_uuid, "bf16"),
                                           mig_profile=s.mig_profile) * s.interval_s
                node_peak[node] += p
                for w in s.workloads:
                    peak[w] += p
    truth = sim.ground_truth(T0, T0 + 10)
    for name, t in truth["workload"].items():
        if peak[name] == 0:
            assert t.mfu is None and t.coverage == 0, name  # a silent job is never a zero
            continue
        assert t.mfu == pytest.approx(flops[name] / peak[name], rel=1e-9)
    for node, t in truth["node"].items():
        if node_peak[node] == 0:
            assert t.mfu is None, node  # a node of silent GPUs: unknown
            continue
        assert t.mfu == pytest.approx(node_flops[node] / node_peak[node], rel=1e-9)
    fleet = truth["fleet"]["default"]
    assert fleet.gpus == len(sim.devices) and 0 < fleet.allocation < 1
    # over allocated GPUs (reporting or not) vs over every installed GPU
    assert fleet.mfu_allocated > fleet.achieved_flops / fleet.peak_flops


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


# --------------------------------------------------------------------------- §8 traits

def _of(sim: FleetSimulator, archetype: str) -> list[str]:
    return [n for n, w in sim.workloads.items() if w.archetype.name == archetype]


def _device(sim: FleetSimulator, workload: str) -> SimDevice:
    return next(d for d in sim.devices if d.workload and d.workload.name == workload)


def test_counters_only_tenants_publish_no_reports(sim: FleetSimulator, truth: dict) -> None:
    silent = _of(sim, "silent_train") + _of(sim, "silent_finetune")
    assert len(silent) >= 3
    for tick in range(5):
        for _, reports in sim.events(tick).values():
            assert not {r.workload for r in reports} & set(silent)
    by_counters = {n: _device(sim, n).hw.gpm for n in silent}
    assert set(by_counters.values()) == {True, False}  # both kinds of GPU
    for name, has_counters in by_counters.items():
        t = truth["workload"][name]
        source = "counters" if has_counters else "none"
        # busy, no report: estimated from counters, or unknown; never a zero
        assert t.flop_sources[source] == t.gpu_seconds and t.mfu is None
        assert t.achieved_flops == 0 and t.true_mfu > 0.25


def test_buggy_reporter_reports_twice_its_true_flops(sim: FleetSimulator, truth: dict) -> None:
    (name,) = _of(sim, "overcount_train")
    dev = _device(sim, name)
    assert dev.hw.gpm  # placed where the counters can catch it
    for tick in (0, 7, 33):
        st = sim.state(dev, tick)
        report = next(r for _, rs in sim.events(tick).values() for r in rs
                      if r.gpu_uuid == dev.uuid)
        assert report.flops == 2.0 * st.model_flops  # the bug: exactly double
        assert report.tokens == pytest.approx(st.model_flops / (6 * 13e9))  # tokens honest
    t = truth["workload"][name]
    assert t.achieved_flops == pytest.approx(2.0 * t.true_flops, rel=1e-12)
    assert t.mfu == pytest.approx(2.0 * t.true_mfu, rel=1e-12)
    # honest reporters: what they report is the truth
    for n in _of(sim, "llm_train") + _of(sim, "decode"):
        assert truth["workload"][n].achieved_flops == pytest.approx(
            truth["workload"][n].true_flops, rel=1e-12)


PIPES = ("tensor_active", "fp16_active", "fp32_active", "fp64_active", "dram_active")


def test_pipe_counters_on_hopper_only(sim: FleetSimulator) -> None:
    samples = [s for ss, _ in sim.events(2).values() for s in ss]
    kinds = {s.gpu_name for s in samples}
    assert {"NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "NVIDIA H100 80GB HBM3"} <= kinds
    for s in samples:
        values = [getattr(s, f) for f in PIPES]
        if s.gpu_name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200"):
            assert all(v is not None and 0 <= v <= 1 for v in values), s
        else:  # A100 / L40S: no GPM, and no pretend zeros either
            assert values == [None] * 5, s


def test_tensor_activity_follows_hardware_flops_not_the_report(sim: FleetSimulator) -> None:
    """tensor_active = model FLOPs x overhead x tensor share / (dense peak x min(1, clock /
    the clock that peak assumes) x dt),
    within the counters' bounded noise (+-3 sigma)."""
    for arch in ("llm_train", "silent_train", "overcount_train", "decode"):
        a = ARCHETYPES[arch]
        dev = next(_device(sim, n) for n in _of(sim, arch) if _device(sim, n).hw.gpm)
        for tick in range(0, 40, 3):
            st = sim.state(dev, tick)
            # the clock the catalog's tensor peak assumes (1830 MHz on an H100), capped
            ratio = min(1.0, st.sm_clock_mhz / peaks.lookup(dev.gpu_name).reference_clock_mhz("bf16"))
            physics = (st.model_flops * a.overhead * a.tensor_share
                       / (dev.peak("bf16") * ratio * sim.interval_s))
            assert st.tensor_active == pytest.approx(physics, rel=3 * COUNTER_NOISE + 1e-9)
            if a.clock_drop:
                assert st.sm_clock_mhz / dev.hw.max_sm_clock_mhz >= 1 - a.clock_drop
    # fp32 training: tensor pipe idle, the FP32 pipe carries the work
    dev = next(_device(sim, n) for n in _of(sim, "fp32_train") if _device(sim, n).hw.gpm)
    st = sim.state(dev, 5)
    assert st.tensor_active == 0.0
    assert st.fp32_active == pytest.approx(st.model_flops * 1.05 / (dev.peak("fp32") * 1.0),
                                           rel=3 * COUNTER_NOISE + 1e-9)


def test_counter_ofu_separates_the_buggy_reporter_from_honest_ones(sim: FleetSimulator) -> None:
    """Per 10 s window, tensor-pipe FLOPs (tensor_active x peak x clock ratio) against the
    reported FLOPs: honest bf16 reporters are never above their counters by more than
    3 %, the double-counter is far above (what reporter_mismatch must catch)."""
    gpm = {d.uuid: d for d in sim.devices if d.hw.gpm}
    for start in range(0, 60, 10):
        reported: dict[str, float] = defaultdict(float)
        counted: dict[str, float] = defaultdict(float)
        for tick in range(start, start + 10):
            for samples, reports in sim.events(tick).values():
                on = {r.gpu_uuid: r for r in reports if r.precision == "bf16"}
                for s in samples:
                    r = on.get(s.gpu_uuid)
                    if r is None or s.gpu_uuid not in gpm:
                        continue
                    dev = gpm[s.gpu_uuid]
                    reported[r.workload] += r.flops
                    counted[r.workload] += (s.tensor_active * dev.peak("bf16") * s.interval_s
                                            * clock_ratio(s.sm_clock_mhz,
                                                          peaks.lookup(s.gpu_name).reference_clock_mhz("bf16")))
        assert counted
        for name, flops in reported.items():
            if sim.workloads[name].archetype.report_factor == 1.0:
                assert flops <= 1.03 * counted[name], (name, start)
            else:
                assert flops >= 1.6 * counted[name], (name, start)


def test_energy_is_power_times_interval(sim: FleetSimulator) -> None:
    for tick in (0, 11):
        for samples, _ in sim.events(tick).values():
            for s in samples:
                assert s.energy_source == "counter" and s.energy_j > 0
                if s.mig_profile is None:
                    assert s.energy_j == pytest.approx(s.power_w * s.interval_s, rel=1e-12)
    # MIG: slices share the parent's energy. An unallocated 1g.10gb slice of an A100 80GB
    # with 3g.40gb + 3 x 1g.10gb: 14 of 42 + 3 * 14 = 84 SMs -> 1/6 of the idle power.
    # Idle power is derived from the catalog: 0.10 x tdp_w 400 W = 40 W (it was a
    # hand-written 55 W before the simulator read GPU facts from mfu/data/gpus.yaml).
    (free,) = [d for d in sim.devices if d.mig_profile and d.workload is None][:1]
    assert free.gpu_name == "NVIDIA A100-SXM4-80GB" and free.mig_profile == "1g.10gb"
    assert sim.state(free, 4).energy_j == pytest.approx(0.10 * 400.0 * 14 / 84 * 1.0)
    slices = [d for d in sim.devices if d.node == free.node and d.index == free.index]
    assert sum(d.energy_share for d in slices) == pytest.approx(1.0)
    # the window truth adds them up: every device-second's energy
    t = sim.ground_truth(T0, T0 + 3)["fleet"]["default"]
    total = sum(sim.state(d, k).energy_j for d in sim.devices for k in range(3))
    assert t.energy_j == pytest.approx(total, rel=1e-12)


def test_tenants_on_every_allocated_sample(sim: FleetSimulator) -> None:
    samples = [s for ss, _ in sim.events(1).values() for s in ss]
    seen: dict[str, str] = {}
    for s in samples:
        if s.workloads:
            assert set(s.tenants) == set(s.workloads)
            seen.update(s.tenants)
        else:
            assert s.tenants is None
    tenants = set(seen.values())
    assert len(tenants) >= 5
    sdk = {seen[r.workload] for _, rs in sim.events(1).values() for r in rs if r.source == "sdk"}
    # roughly half the tenants use the SDK; the rest: engine counters or nothing
    assert 0.4 <= len(sdk) / len(tenants) <= 0.6, (sdk, tenants)
    assert all(sim.workloads[w].tenant == t for w, t in seen.items())


def test_decode_is_memory_bound_with_engine_bytes(sim: FleetSimulator) -> None:
    """Engine reports carry bytes; decode MBU 60-80 % at MFU < 5 %, intensity far below the
    ridge point; the under-batched prefill is not memory-bound (still inefficient)."""
    for arch, mbu_range in (("decode", (0.60, 0.80)), ("underbatched_inference", (0.03, 0.06))):
        for name in _of(sim, arch):
            dev = _device(sim, name)
            reports = [r for t in range(10) for _, rs in sim.events(t).values() for r in rs
                       if r.workload == name]
            assert reports and all(r.source == "engine" and r.bytes > 0 for r in reports)
            peak_bytes = dev.peak_bytes_per_s() * 10 * sim.interval_s
            mbu = sum(r.bytes for r in reports) / peak_bytes
            mfu = sum(r.flops for r in reports) / (dev.peak("bf16") * 10 * sim.interval_s)
            ridge = dev.peak("bf16") / dev.peak_bytes_per_s()  # FLOP per byte
            intensity = sum(r.flops for r in reports) / sum(r.bytes for r in reports)
            assert mbu_range[0] <= mbu <= mbu_range[1], (name, mbu)
            if arch == "decode":
                assert mfu < 0.05 and intensity < ridge / 2
                assert {r.phase for r in reports} == {"decode"}
            else:
                assert mfu < 0.10 and intensity > ridge / 2
            t = sim.ground_truth(T0, T0 + 10)["workload"][name]
            assert t.mbu == pytest.approx(mbu, rel=1e-9) and t.flop_sources["engine"] == 10


def test_truth_sources_add_up_and_repeat(sim: FleetSimulator, truth: dict) -> None:
    fleet = truth["fleet"]["default"]
    sources = fleet.flop_sources
    assert set(sources) == set(SOURCES) and all(sources[s] > 0 for s in SOURCES)
    assert sum(sources.values()) == pytest.approx(fleet.gpu_seconds)
    assert fleet.coverage == pytest.approx(
        (sources["reported"] + sources["engine"] + sources["idle"]) / fleet.gpu_seconds)
    parts = sum(fleet.by_source[s]["true_flops"] for s in SOURCES)
    assert parts == pytest.approx(fleet.true_flops, rel=1e-12)
    # exact on hardware FLOPs, a counter estimate still over-counts model FLOPs
    assert fleet.hardware_mfu_estimable > fleet.true_mfu_estimable
    again = FleetSimulator(8, 8, MODELS, seed=7, start_ts=T0, drift_at_s=120,
                           drift_fraction=0.3).ground_truth(T0, T0 + 120)
    assert again["fleet"]["default"].as_dict() == fleet.as_dict()


def test_hardware_comes_from_the_gpu_catalog() -> None:
    """No hand-written table: memory, clock, power limit and GPM come from gpus.yaml."""
    # H100 SXM5 80GB entry: memory_gb 80 -> 80 x 2**30 bytes, boost 1980 MHz, tdp 700 W,
    # gpm_counters true; idle = 0.10 x 700 = 70 W.
    assert hardware("NVIDIA H100 80GB HBM3") == Hardware(80 << 30, 1980.0, 700.0, 70.0, True)
    # L40S: 48 GB, 2520 MHz, 350 W, no GPM -> idle 35 W.
    assert hardware("NVIDIA L40S") == Hardware(48 << 30, 2520.0, 350.0, 35.0, False)
    # TPU v4 has no tdp_w in the catalog: the documented 400 W fallback, idle 40 W.
    assert hardware("TPU v4").tdp_w == 400.0 and hardware("TPU v4").idle_w == 40.0
    for spec in peaks.catalog():
        hw = hardware(spec.name)
        assert hw.memory_bytes == (spec.memory_bytes or 80 << 30)
        assert hw.gpm is spec.gpm_counters
    with pytest.raises(peaks.UnknownGPUError):
        hardware("NVIDIA Imaginary 9000")


@pytest.mark.parametrize("nodes", [6, 8, 16])
def test_buggy_reporter_sits_where_pipe_counters_can_catch_it(nodes: int) -> None:
    """The demo's H100/A100 round robin at 6 nodes (the e2e test's fleet): n0 llm-train,
    n1-n2 dp-wide, then n3 A100, n4 H100, n5 A100 free. MIG used to take n4, the last
    H100, so the double-counting reporter landed on an A100 without pipe counters and
    reporter_mismatch could not fire. MIG now takes n5 and leaves n4 to the reporter."""
    fleet = FleetSimulator(nodes, 8, ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"],
                           seed=7, start_ts=T0)
    moe = [d for d in fleet.devices if d.workload and d.workload.name.startswith("moe-train")]
    assert moe and {d.gpu_name for d in moe} == {"NVIDIA H100 80GB HBM3"}
    assert any(d.mig_slot is not None for d in fleet.devices)  # the MIG node stays
