"""DESIGN.md §8 window accounting, exact values computed by hand: FLOP sources, coverage,
MFU over known GPU-seconds, OFU and the estimate, MBU and regime, energy, tenant; at
workload, node and fleet level; partials merging in any order; InfluxDB points."""

from __future__ import annotations

import itertools
import random

import pytest

from mfu.config import WindowSettings
from mfu.events import FlopReport, GpuSample, MfuWindow
from mfu.ofu import classify, clock_ratio, pipe_clock_ratios, reference_clocks
from mfu.peaks import peak_bytes_per_s, peak_flops_per_s
from mfu.roofline import regime
from mfuio.influx import point_fields, to_line
from streams.aggregate import NodeWindow, Partial, RollupWindow, finalize
from streams.stages import NodeStage

T0 = 1_700_000_000.0
H100 = "NVIDIA H100 80GB HBM3"
P = peak_flops_per_s(H100, "bf16")  # 989.4e12
F32 = peak_flops_per_s(H100, "fp32")  # 66.9e12
B = peak_bytes_per_s(H100)  # 3.35e12
PM = peak_flops_per_s(H100, "bf16", mig_profile="3g.40gb")  # 60/132 SMs of P
# g3's tensor-pipe FLOPs over 10 s: activity 0.4 at 990 MHz against the 1830 MHz the
# H100's tensor peak assumes (catalog tensor_clock_mhz; mfu.ofu): 4 x 990/1830 P = 2.164 P.
G3T = 10 * 0.4 * 990 / 1830 * P
BM = peak_bytes_per_s(H100, mig_profile="3g.40gb")  # 4/8 memory slices of B
W = WindowSettings(size_s=10, grace_s=2, idle_timeout_s=5)


def test_mig_shares_come_from_the_catalog() -> None:
    assert pytest.approx(P * 60 / 132) == PM
    assert pytest.approx(B * 4 / 8) == BM


def smp(node: str, gpu: str, t: int, workloads: list[str], *, sm: float | None = 0.9,
        tensor: float | None = None, fp32: float | None = None, dram: float | None = None,
        energy: float | None = None, clock: float | None = 1980.0, mig: str | None = None,
        tenants: dict[str, str] | None = None) -> GpuSample:
    return GpuSample(
        event_id=f"{node}-{gpu}-{t}", node=node, gpu_uuid=gpu, gpu_index=0, gpu_name=H100,
        mig_profile=mig, ts=T0 + t + 1, interval_s=1.0, sm_util=sm, mem_util=0.3,
        tensor_active=tensor, fp32_active=fp32, dram_active=dram, energy_j=energy,
        sm_clock_mhz=clock, max_sm_clock_mhz=1980.0, workloads=workloads, tenants=tenants)


def rep(workload: str, node: str, gpu: str, t: int, flops: float, *, rank: int = 0,
        source: str = "sdk", nbytes: float | None = None, tokens: float | None = None) -> FlopReport:
    return FlopReport(
        event_id=f"{workload}-{rank}-{t}", workload=workload, rank=rank, node=node, gpu_uuid=gpu,
        start=T0 + t, end=T0 + t + 1, flops=flops, precision="bf16", source=source,
        bytes=nbytes, tokens=tokens)


def node1_events() -> list[GpuSample | FlopReport]:
    """Ten seconds of node n1, one GPU per FLOP source plus a shared MIG slice:

    g0 reported (A, 0.5 P/s, tensor 0.6, 700 J/s, 100 tokens/s, tenant acme);
    g1 engine (E: vLLM-style counters, 0.1 P/s and 0.5 B bytes/s, 50 tokens/s, no pipe
       counters, dram 0.7, 500 J/s);
    g2 idle, unallocated (sm 0, tensor 0, 100 J/s);
    g3 counters (C, no reports, tensor 0.4 and fp32 0.1 at half clock, 600 J/s);
    g4 none (N, busy, no pipe counters, no energy);
    g5 MIG 3g.40gb shared by S1 (reports 0.15 PM/s, bytes 0.1 BM/s) and S2 (silent),
       tensor 0.5, 400 J/s, tenants t1 / t2.
    """
    ev: list[GpuSample | FlopReport] = []
    for t in range(10):
        ev += [
            smp("n1", "g0", t, ["A"], tensor=0.6, energy=700.0, tenants={"A": "acme"}),
            rep("A", "n1", "g0", t, 0.5 * P, tokens=100.0),
            smp("n1", "g1", t, ["E"], sm=0.8, dram=0.7, energy=500.0),
            rep("E", "n1", "g1", t, 0.1 * P, source="engine", nbytes=0.5 * B, tokens=50.0),
            smp("n1", "g2", t, [], sm=0.0, tensor=0.0, energy=100.0),
            smp("n1", "g3", t, ["C"], tensor=0.4, fp32=0.1, clock=990.0, energy=600.0),
            smp("n1", "g4", t, ["N"]),
            smp("n1", "g5", t, ["S1", "S2"], tensor=0.5, energy=400.0, mig="3g.40gb",
                tenants={"S1": "t1", "S2": "t2"}),
            rep("S1", "n1", "g5", t, 0.15 * PM, rank=0, nbytes=0.1 * BM),
        ]
    return ev


def node2_events() -> list[GpuSample | FlopReport]:
    """Node n2: workload A's rank 1 on h0, 0.4 P/s, tensor 0.5, 650 J/s, 100 tokens/s."""
    ev: list[GpuSample | FlopReport] = []
    for t in range(10):
        ev += [smp("n2", "h0", t, ["A"], tensor=0.5, energy=650.0, tenants={"A": "acme"}),
               rep("A", "n2", "h0", t, 0.4 * P, rank=1, tokens=100.0)]
    return ev


def close_node(events) -> tuple[MfuWindow, dict[str, Partial]]:
    st = NodeStage(W)
    for e in events:
        st.add(e)
    (ws,) = st.flush_idle()
    closed = st.close(ws)
    (rec,) = closed.records
    return rec, {p.key if p.scope == "workload" else "*fleet": p for p in closed.partials}


def wl(partials: dict[str, Partial], key: str) -> MfuWindow:
    return finalize(partials[key], scope="workload", key=key, fleet="f")


def sources(rec: MfuWindow) -> dict[str, float]:
    assert rec.flop_sources is not None
    return rec.flop_sources.model_dump()


def test_node_mixing_all_five_sources() -> None:
    node, _ = close_node(node1_events())
    # GPU-seconds: g0 10 reported; g5 S1's 5 s share reported (its reports cover 10 s,
    # capped at the share); g1 10 engine; g2 10 idle; g3 10 + S2's 5 on g5 counters; g4 none.
    assert sources(node) == pytest.approx(
        {"reported": 15.0, "engine": 10.0, "idle": 10.0, "counters": 15.0, "none": 10.0})
    assert node.gpu_seconds == pytest.approx(60.0) and node.gpus == 6
    assert node.coverage == pytest.approx(35 / 60)
    # Known FLOPs 5P (g0) + 1P (g1) + 1.5PM (S1) over known GPU-seconds g0, g1, g2 (10 s
    # each at P) and S1's 5 s at PM; the busy silent g3, g4 and S2 are not zeros.
    assert node.achieved_flops == pytest.approx(6 * P + 1.5 * PM)
    assert node.peak_flops == pytest.approx(30 * P + 5 * PM)
    assert node.mfu == pytest.approx((6 * P + 1.5 * PM) / (30 * P + 5 * PM))
    # Estimate: g3 10 s x tensor 0.4 x clock 990/1830 at P (G3T) + fp32 0.1 x 990/1980
    # (the fp32 peak assumes the 1980 MHz boost clock) at F32 = G3T + 0.5 F32; S2: half of
    # g5's counters seconds, 10 x 0.5 x 1 x PM / 2 = 2.5 PM.
    est = G3T + 0.5 * F32 + 2.5 * PM
    assert node.estimated_flops == pytest.approx(est)
    assert node.mfu_estimated == pytest.approx(
        (6 * P + 1.5 * PM + est) / (30 * P + 5 * PM + 10 * P + 5 * PM))
    # OFU over every GPU-second with pipe counters: g0 (6P: 1980 MHz is above 1830, ratio
    # capped at 1), g2 (0), g3 (G3T + 0.5 F32), g5 (10 x 0.5 x PM); peak 10 s x P x 3 +
    # 10 s x PM.
    assert node.ofu == pytest.approx((6 * P + G3T + 0.5 * F32 + 5 * PM) / (30 * P + 10 * PM))
    # Bytes: g1 5B over 10 s at B, S1 1 BM over its 5 s share at BM.
    assert node.achieved_bytes == pytest.approx(5 * B + 1 * BM)
    assert node.peak_bytes == pytest.approx(10 * B + 5 * BM)
    assert node.mbu == pytest.approx((5 * B + BM) / (10 * B + 5 * BM))  # = 5.5 / 12.5 = 0.44
    # Regime: FLOPs of the byte-carrying reports (P + 1.5 PM = 1.68 P) over their peak
    # (10P + 5PM = 12.27 P) is 0.137 of the compute roof against 0.44 of the memory roof:
    # intensity / ridge = 0.31 < 1/2, memory-bound.
    assert node.regime == "memory"
    assert node.dram_active == pytest.approx(0.7)
    # Energy: 7000 + 5000 + 1000 + 6000 + 4000 (g4 unknown) J. flops_per_j divides the known
    # FLOPs by the energy of the known GPU-seconds: g0 7000 + g1 5000 + g2 1000 + half of
    # g5 (S1's share) 2000 = 15000 J.
    assert node.energy_j == pytest.approx(23000.0)
    assert node.flops_per_j == pytest.approx((6 * P + 1.5 * PM) / 15000.0)
    assert node.tokens == pytest.approx(1500.0)
    assert node.tokens_per_j == pytest.approx(1500.0 / 15000.0)
    assert node.tenant is None


def test_workloads_of_each_source() -> None:
    _, parts = close_node(node1_events())
    a = wl(parts, "A")
    assert sources(a) == pytest.approx({"reported": 10.0, "engine": 0.0, "idle": 0.0,
                                        "counters": 0.0, "none": 0.0})
    assert a.coverage == 1.0 and a.mfu == pytest.approx(0.5) and a.mfu_estimated == a.mfu
    assert a.ofu == pytest.approx(0.6) and a.estimated_flops == 0.0
    assert a.energy_j == pytest.approx(7000.0)
    assert a.flops_per_j == pytest.approx(5 * P / 7000.0)
    assert a.tokens_per_j == pytest.approx(1000.0 / 7000.0)
    assert a.tenant == "acme" and a.mbu is None
    assert a.regime is None  # no bytes, and no dram_active to set against tensor 0.6

    # The vLLM-style engine stream: 10 reports of 0.1 P FLOPs and 0.5 B bytes per second.
    e = wl(parts, "E")
    assert sources(e)["engine"] == pytest.approx(10.0) and e.coverage == 1.0
    assert e.mfu == pytest.approx(0.1)  # 1P / (10 s x P)
    assert e.achieved_bytes == pytest.approx(5 * B) and e.peak_bytes == pytest.approx(10 * B)
    assert e.mbu == pytest.approx(0.5)
    assert e.regime == "memory"  # intensity P/5B is 0.2 of the ridge P/B
    assert e.ofu is None and e.dram_active == pytest.approx(0.7)
    assert e.tokens_per_j == pytest.approx(500.0 / 5000.0)

    c = wl(parts, "C")
    assert sources(c)["counters"] == pytest.approx(10.0) and c.coverage == 0.0
    assert c.mfu is None and "no GPU-seconds with known model FLOPs" in (c.mfu_reason or "")
    assert c.achieved_flops == 0.0 and c.peak_flops == 0.0
    assert c.estimated_flops == pytest.approx(G3T + 0.5 * F32)
    assert c.mfu_estimated == pytest.approx((G3T + 0.5 * F32) / (10 * P))
    assert c.ofu == c.mfu_estimated  # every counters second is a pipe-counter second
    assert c.energy_j == pytest.approx(6000.0) and c.flops_per_j is None  # no known seconds

    n = wl(parts, "N")
    assert sources(n)["none"] == pytest.approx(10.0)
    assert n.mfu is None and n.mfu_estimated is None and n.ofu is None and n.coverage == 0.0
    assert n.energy_j is None and n.flops_per_j is None

    # The shared MIG slice: S1 reported over its 5 s share, S2 estimated over its 5 s.
    s1, s2 = wl(parts, "S1"), wl(parts, "S2")
    assert sources(s1)["reported"] == pytest.approx(5.0) and s1.gpu_seconds == pytest.approx(5.0)
    assert s1.mfu == pytest.approx(1.5 * PM / (5 * PM))  # 0.3
    assert s1.ofu == pytest.approx(0.5) and s1.mbu == pytest.approx(BM / (5 * BM))  # 0.2
    assert s1.energy_j == pytest.approx(2000.0) and s1.tenant == "t1"
    assert sources(s2)["counters"] == pytest.approx(5.0) and s2.mfu is None
    assert s2.estimated_flops == pytest.approx(2.5 * PM)
    assert s2.mfu_estimated == pytest.approx(0.5) and s2.tenant == "t2"
    assert s2.energy_j == pytest.approx(2000.0)


def test_fleet_and_cross_node_workload() -> None:
    _, p1 = close_node(node1_events())
    _, p2 = close_node(node2_events())
    fleet = RollupWindow.start(p1["*fleet"])
    assert fleet.add(p2["*fleet"])
    rec = fleet.close("f")
    assert sources(rec) == pytest.approx(
        {"reported": 25.0, "engine": 10.0, "idle": 10.0, "counters": 15.0, "none": 10.0})
    assert rec.coverage == pytest.approx(45 / 70)
    assert rec.mfu == pytest.approx((10 * P + 1.5 * PM) / (40 * P + 5 * PM))
    est = G3T + 0.5 * F32 + 2.5 * PM
    assert rec.mfu_estimated == pytest.approx((10 * P + 1.5 * PM + est) / (50 * P + 10 * PM))
    # OFU: g0 6P + h0 5P + g3 G3T + 0.5 F32 + g5 5 PM.
    assert rec.ofu == pytest.approx((11 * P + G3T + 0.5 * F32 + 5 * PM) / (40 * P + 10 * PM))
    assert rec.energy_j == pytest.approx(23000.0 + 6500.0)
    assert rec.flops_per_j == pytest.approx((10 * P + 1.5 * PM) / (15000.0 + 6500.0))
    assert rec.tokens_per_j == pytest.approx(2500.0 / 21500.0)
    assert rec.mbu == pytest.approx(0.44) and rec.regime == "memory"

    a = RollupWindow.start(p1["A"])
    assert a.add(p2["A"])
    ra = a.close("f")
    assert ra.mfu == pytest.approx(9 * P / (20 * P)) and ra.coverage == 1.0  # 0.45
    assert ra.ofu == pytest.approx((6 * P + 5 * P) / (20 * P))  # tensor 0.6 and 0.5
    assert ra.energy_j == pytest.approx(13500.0) and ra.tenant == "acme"
    assert ra.flops_per_j == pytest.approx(9 * P / 13500.0)


def test_merge_in_any_order_gives_the_same_record() -> None:
    rng = random.Random(7)
    partials: list[Partial] = []
    for n in range(4):
        w = NodeWindow(f"n{n}", T0, T0 + 10)
        for t in range(10):
            for g in range(3):
                tensor = rng.choice([None, 0.0, rng.random()])
                s = GpuSample(
                    event_id=f"{n}{g}{t}", node=f"n{n}", gpu_uuid=f"n{n}g{g}", gpu_index=g,
                    gpu_name=H100, ts=T0 + t + 1, interval_s=1.0,
                    sm_util=rng.choice([0.0, 0.03, rng.random()]), mem_util=0.2,
                    tensor_active=tensor, fp32_active=rng.choice([None, rng.random()]),
                    dram_active=rng.choice([None, rng.random()]),
                    energy_j=rng.choice([None, rng.uniform(50, 700)]),
                    sm_clock_mhz=rng.uniform(900, 1980), max_sm_clock_mhz=1980.0,
                    workloads=rng.sample(["a", "b"], rng.randrange(3)),
                    tenants={"a": f"t{n % 2}", "b": "tb"})
                w.add_sample(s, 1.0)
                if rng.random() < 0.5:
                    r = FlopReport(
                        event_id=f"r{n}{g}{t}", workload=rng.choice(["a", "b"]), rank=g,
                        node=f"n{n}", gpu_uuid=f"n{n}g{g}", start=T0 + t, end=T0 + t + 1,
                        flops=rng.uniform(0, P), precision="bf16",
                        source=rng.choice(["sdk", "engine"]),
                        bytes=rng.choice([None, rng.uniform(0, B)]), tokens=rng.uniform(0, 99))
                    w.add_report(r, 1.0, 1.0)
        _, ps = w.close("f", {})
        partials += ps
    for key in ("f", "a", "b"):
        group = [p for p in partials if p.key == key]
        assert len(group) >= 3
        records = []
        for order in itertools.permutations(group):
            rw = RollupWindow.start(order[0])
            for p in order[1:]:
                assert rw.add(p)
            records.append(rw.close("f").model_dump())
        first = records[0]
        assert first["flop_sources"] is not None and first["coverage"] is not None
        for r in records[1:]:
            assert r.keys() == first.keys()
            for k, v in first.items():
                if isinstance(v, float | dict):
                    assert r[k] == pytest.approx(v, rel=1e-12), k
                else:
                    assert r[k] == v, k


def test_rollup_start_resets_every_sum() -> None:
    _, p1 = close_node(node1_events())
    rw = RollupWindow.start(p1["*fleet"])
    # Starting a roll-up must not count the first partial twice.
    assert rw.merged.estimated_flops == pytest.approx(p1["*fleet"].estimated_flops)
    assert rw.merged.src_counters_s == pytest.approx(15.0)
    assert rw.merged.energy_j == pytest.approx(23000.0)


def test_node_stage_add_many_matches_add() -> None:
    a, b = NodeStage(W), NodeStage(W)
    ev = node1_events()
    for e in ev:
        a.add(e)
    b.add_many([e for e in ev if isinstance(e, GpuSample)], topic="")
    b.add_many([e for e in ev if isinstance(e, FlopReport)], topic="")
    ra = a.close(a.flush_idle()[0]).records[0]
    rb = b.close(b.flush_idle()[0]).records[0]
    assert ra.model_dump() == rb.model_dump()


@pytest.mark.parametrize(("sm", "tensor", "pipes", "expected"), [
    (0.05, None, False, "idle"), (0.06, None, False, "none"), (0.0, 0.01, True, "idle"),
    (0.0, 0.02, True, "counters"), (None, 0.0, True, "idle"), (None, None, False, "none"),
    (0.9, None, True, "counters"),  # fp32/fp64/fp16 counters only
])
def test_sample_class_rule(sm, tensor, pipes, expected) -> None:
    assert classify(sm, tensor, pipes) == expected
    # The inlined copy in NodeWindow.add_sample agrees.
    w = NodeWindow("n", T0, T0 + 10)
    w.add_sample(GpuSample(event_id="e", node="n", gpu_uuid="g", gpu_index=0, gpu_name=H100,
                           ts=T0 + 1, interval_s=1.0, sm_util=sm, mem_util=None,
                           tensor_active=tensor, fp16_active=0.1 if pipes and tensor is None else None),
                 1.0)
    g = w.gpus["g"]
    assert {"idle": g.idle_s, "counters": g.counters_s, "none": g.none_s}[expected] == 1.0
    assert g.idle_s + g.counters_s + g.none_s == 1.0


def test_clock_ratio_and_regime_rules() -> None:
    assert clock_ratio(990, 1980) == 0.5 and clock_ratio(2000, 1980) == 1.0
    assert clock_ratio(None, 1980) == 1.0 and clock_ratio(990, None) == 1.0
    # Per pipe, against the clock the catalog's peak assumes: H100 tensor 1830 MHz
    # (989.4e12 / (132 SMs x 4096 FLOP/clk)), fp32/fp64 the 1980 MHz boost clock.
    assert reference_clocks(H100) == (1830.0, 1980.0)
    assert pipe_clock_ratios(H100, 990.0, 1980.0) == (990 / 1830, 0.5)
    assert pipe_clock_ratios(H100, 1900.0, 1980.0) == (1.0, 1900 / 1980)
    assert pipe_clock_ratios(H100, None, 1980.0) == (1.0, 1.0)
    # A GPU the catalog does not know: the sample's max clock stands in.
    assert reference_clocks("Unknown GPU 9000") == (None, None)
    assert pipe_clock_ratios("Unknown GPU 9000", 990.0, 1980.0) == (0.5, 0.5)
    # ridge 10 FLOP/B: intensity 4.9 memory, 5..20 mixed, above 20 compute
    assert regime(49.0, 10.0, 100.0, 10.0) == "memory"
    assert regime(50.0, 10.0, 100.0, 10.0) == "mixed"
    assert regime(201.0, 10.0, 100.0, 10.0) == "compute"
    assert regime(1.0, None, 0.0, 0.0, tensor_active=0.1, dram_active=0.8) == "memory"
    assert regime(1.0, None, 0.0, 0.0, tensor_active=0.3, dram_active=0.2) == "mixed"
    assert regime(1.0, None, 0.0, 0.0, tensor_active=None, dram_active=0.2) is None


def test_influx_point_carries_the_new_fields_and_tags() -> None:
    _, parts = close_node(node1_events())
    s1 = wl(parts, "S1")
    f = point_fields(s1)
    assert all(isinstance(v, float) for v in f.values())
    assert f["coverage"] == 1.0 and f["mfu"] == pytest.approx(0.3)
    assert f["flop_sources_reported"] == pytest.approx(5.0)
    for k in ("flop_sources_engine", "flop_sources_idle", "flop_sources_counters",
              "flop_sources_none", "estimated_tflops"):
        assert f[k] == 0.0
    assert f["mbu"] == pytest.approx(0.2) and f["achieved_bytes"] == pytest.approx(BM)
    assert f["peak_bytes"] == pytest.approx(5 * BM) and f["energy_j"] == pytest.approx(2000.0)
    assert f["flops_per_j"] == pytest.approx(1.5 * PM / 2000.0)
    assert "tokens_per_j" not in f and "tokens" not in f and "dram_active" not in f
    line = to_line(s1)
    # S1: FLOPs 0.3 of the compute roof, bytes 0.2 of the memory roof: intensity / ridge 1.5
    assert ",tenant=t1" in line and ",regime=mixed" in line
    s2 = wl(parts, "S2")
    f2 = point_fields(s2)
    assert "mfu" not in f2  # unknown, omitted: never a zero
    assert f2["estimated_tflops"] == pytest.approx(2.5 * PM / 10 / 1e12)
    assert f2["mfu_estimated"] == pytest.approx(0.5)
    assert f2["ofu"] == pytest.approx(0.5)
    n = wl(parts, "N")
    assert "regime=" not in to_line(n) and "tenant=" not in to_line(n)


def test_partly_covered_gpu_splits_pro_rata_and_fleet_reason() -> None:
    # Ten busy seconds (tensor 0.5, full clock) of which reports cover the first four.
    ev: list[GpuSample | FlopReport] = []
    for t in range(10):
        ev.append(smp("n1", "g0", t, ["J"], tensor=0.5))
        if t < 4:
            ev.append(rep("J", "n1", "g0", t, 0.4 * P))
    node, parts = close_node(ev)
    assert sources(node) == pytest.approx(
        {"reported": 4.0, "engine": 0.0, "idle": 0.0, "counters": 6.0, "none": 0.0})
    assert node.mfu == pytest.approx(1.6 * P / (4 * P))  # 0.4 over the 4 known seconds
    # Estimate: the 6 uncovered seconds at the window's counter average, 0.5 x P each.
    assert node.estimated_flops == pytest.approx(3 * P)
    assert node.mfu_estimated == pytest.approx((1.6 * P + 3 * P) / (10 * P))  # 0.46
    assert wl(parts, "J").coverage == pytest.approx(0.4)
    # A fleet of silent busy GPUs only: MFU unknown, with the reason, never 0.
    _, silent = close_node([smp("n9", "x", t, ["Q"], tensor=0.3) for t in range(10)])
    rec = RollupWindow.start(silent["*fleet"]).close("f")
    assert rec.mfu is None and rec.mfu_reason is not None
    assert "10 estimated from counters" in rec.mfu_reason
    assert rec.mfu_estimated == pytest.approx(0.3) and rec.coverage == 0.0


def test_energy_is_pro_rata_to_the_window_overlap() -> None:
    st = NodeStage(W)
    # One 2 s sample ending at T0 + 11 (covers [T0 + 9, T0 + 11)): half its 800 J is in W0.
    st.add(GpuSample(event_id="e", node="n1", gpu_uuid="g0", gpu_index=0, gpu_name=H100,
                     ts=T0 + 11, interval_s=2.0, sm_util=0.0, mem_util=0.0, tensor_active=0.0,
                     energy_j=800.0))
    w0, w1 = st.flush_idle()
    r0, r1 = st.close(w0).records[0], st.close(w1).records[0]
    assert r0.energy_j == pytest.approx(400.0) and r1.energy_j == pytest.approx(400.0)
    assert r0.flops_per_j == 0.0  # an idle second is known: 0 FLOPs for 400 J
    assert sources(r0)["idle"] == pytest.approx(1.0)


@pytest.mark.parametrize(("gpu", "clock", "max_clock"), [
    (H100, 990.0, 1980.0), (H100, 1900.0, 1980.0), (H100, None, 1980.0), (H100, 990.0, None),
    ("Unknown GPU 9000", 990.0, 1980.0), ("Unknown GPU 9000", 990.0, None),
])
def test_inlined_clock_ratios_agree_with_mfu_ofu(gpu, clock, max_clock) -> None:
    """NodeWindow.add_sample's inlined per-pipe clock ratios = mfu.ofu.pipe_clock_ratios:
    one second of tensor 1.0 and fp32 1.0 sums exactly the two ratios."""
    w = NodeWindow("n", T0, T0 + 10)
    w.add_sample(GpuSample(event_id="e", node="n", gpu_uuid="g", gpu_index=0, gpu_name=gpu,
                           ts=T0 + 1, interval_s=1.0, sm_util=0.9, mem_util=None, tensor_active=1.0,
                           fp32_active=1.0, sm_clock_mhz=clock, max_sm_clock_mhz=max_clock), 1.0)
    g = w.gpus["g"]
    assert (g.tensor_eff_s, g.fp32_eff_s) == pipe_clock_ratios(gpu, clock, max_clock)
