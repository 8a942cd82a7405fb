"""DESIGN.md §8 accounting end to end: a real `mfu streams` worker, a real broker and
InfluxDB. FLOP sources, coverage, MFU over known GPU-seconds, OFU and the estimate, an
engine (vLLM-style) report stream with bytes (MFU and MBU), a shared MIG slice, energy
and tenant reach the Kafka records and the InfluxDB points with the exact values
computed by hand (same layout as tests/unit/test_stream_accounting.py, on two nodes in
different partitions so the fleet record is a roll-up across partitions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from mfu.events import Event, FlopReport, GpuSample
from mfu.peaks import peak_bytes_per_s, peak_flops_per_s
from tests.integration.streams_harness import (
    H100,
    OUTPUT_KINDS,
    T0,
    Collector,
    Feeder,
    Topics,
    Worker,
    approx,
    assert_point_matches,
    create_topics,
    delete_topics,
    influx_field_types,
    key_in_partition,
    wait_for_group,
    wait_for_points,
    windows_by_key,
    worker_env,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
P = peak_flops_per_s(H100, "bf16")
F32 = peak_flops_per_s(H100, "fp32")
B = peak_bytes_per_s(H100)
PM = peak_flops_per_s(H100, "bf16", mig_profile="3g.40gb")
BM = peak_bytes_per_s(H100, mig_profile="3g.40gb")
# g3's tensor FLOPs: 10 s x 0.4 at 990 MHz against the 1830 MHz the H100's tensor peak
# assumes (mfu.ofu): 4 x 990/1830 P.
G3T = 10 * 0.4 * 990 / 1830 * P


def feed(sfx: str) -> tuple[dict[str, str], list[list[Event]]]:
    """Names, and per second the events of nodes n1 (six GPUs: one per FLOP source and a
    MIG slice shared by S1 and S2) and n2 (workload A's rank 1)."""
    n1 = key_in_partition(f"{sfx}-n1", 0, PARTITIONS)
    n2 = key_in_partition(f"{sfx}-n2", 1, PARTITIONS)
    names = {"n1": n1, "n2": n2, **{w: f"{w}-{sfx}" for w in ("A", "E", "C", "N", "S1", "S2")}}
    j = names

    def smp(node: str, gpu: str, t: int, workloads: list[str], *, sm: float = 0.9,
            tensor: float | None = None, fp32: float | None = None, dram: float | None = None,
            energy: float | None = None, clock: float = 1980.0, mig: str | None = None,
            tenants: dict[str, str] | None = None) -> GpuSample:
        return GpuSample(
            event_id=f"s:{node}:{gpu}:{t}", node=node, gpu_uuid=f"{node}-{gpu}", gpu_index=0,
            gpu_name=H100, mig_profile=mig, ts=T0 + t + 1, interval_s=1.0, sm_util=sm,
            mem_util=0.3, tensor_active=tensor, fp32_active=fp32, dram_active=dram,
            energy_j=energy, sm_clock_mhz=clock, max_sm_clock_mhz=1980.0,
            workloads=workloads, tenants=tenants)

    def rep(w: str, node: str, gpu: str, t: int, flops: float, *, rank: int = 0,
            source: str = "sdk", nbytes: float | None = None,
            tokens: float | None = None) -> FlopReport:
        return FlopReport(
            event_id=f"r:{w}:{rank}:{t}", workload=w, rank=rank, node=node,
            gpu_uuid=f"{node}-{gpu}", start=T0 + t, end=T0 + t + 1, flops=flops,
            precision="bf16", source=source, bytes=nbytes, tokens=tokens)

    seconds = []
    for t in range(10):
        seconds.append([
            smp(n1, "g0", t, [j["A"]], tensor=0.6, energy=700.0, tenants={j["A"]: "acme"}),
            rep(j["A"], n1, "g0", t, 0.5 * P, tokens=100.0),
            smp(n1, "g1", t, [j["E"]], sm=0.8, dram=0.7, energy=500.0),
            rep(j["E"], n1, "g1", t, 0.1 * P, source="engine", nbytes=0.5 * B, tokens=50.0),
            smp(n1, "g2", t, [], sm=0.0, tensor=0.0, energy=100.0),
            smp(n1, "g3", t, [j["C"]], tensor=0.4, fp32=0.1, clock=990.0, energy=600.0),
            smp(n1, "g4", t, [j["N"]]),
            smp(n1, "g5", t, [j["S1"], j["S2"]], tensor=0.5, energy=400.0, mig="3g.40gb",
                tenants={j["S1"]: "t1", j["S2"]: "t2"}),
            rep(j["S1"], n1, "g5", t, 0.15 * PM, nbytes=0.1 * BM),
            smp(n2, "h0", t, [j["A"]], tensor=0.5, energy=650.0, tenants={j["A"]: "acme"}),
            rep(j["A"], n2, "h0", t, 0.4 * P, rank=1, tokens=100.0),
        ])
    return names, seconds


@pytest.fixture(scope="module")
def outputs(kafka_bootstrap: str, kafka_admin: AdminClient, influx: Any,
            tmp_path_factory: pytest.TempPathFactory):
    topics = Topics()
    names, seconds = feed(topics.suffix)
    created = create_topics(kafka_admin, topics, PARTITIONS)
    workdir: Path = tmp_path_factory.mktemp("streams-sources")
    worker = Worker(worker_env(topics, kafka_bootstrap, influx, partitions=PARTITIONS), workdir)
    collector = Collector(kafka_bootstrap, [topics[k] for k in OUTPUT_KINDS])
    want = {"node": {names["n1"], names["n2"]}, "fleet": {topics.fleet},
            "workload": {names[w] for w in ("A", "E", "C", "N", "S1", "S2")}}
    try:
        worker.start()
        wait_for_group(kafka_bootstrap, topics.app_id, 1, topics["telemetry"], worker=worker)
        feeder = Feeder(kafka_bootstrap, topics, PARTITIONS)
        for evs in seconds:
            feeder.events([e for e in evs if isinstance(e, GpuSample)])
            feeder.events([e for e in evs if isinstance(e, FlopReport)])
        feeder.flush()

        def have() -> bool:
            return all(keys <= {r["key"] for r in collector.records[topics[s]]}
                       for s, keys in want.items())

        collector.wait_for(have, 90, "the window's records", worker)
        n_out = sum(len(k) for k in want.values())
        points = wait_for_points(influx, topics, n_out, 30, worker)
        records = {s: {k: r for (k, _), r in windows_by_key(collector.records[topics[s]]).items()}
                   for s in OUTPUT_KINDS}
        by_key = {(p["scope"], p["key"]): p for p in points}
        yield names, topics, records, by_key, influx_field_types(influx)
    finally:
        worker.stop()
        collector.close()
        delete_topics(kafka_admin, created, topics.app_id)


def _src(rec: dict[str, Any]) -> dict[str, float]:
    return rec["flop_sources"]


def _point_has(point: dict[str, Any], rec: dict[str, Any]) -> None:
    """The §8 fields of the point equal the record's (absent where the record is null)."""
    assert_point_matches(point, rec)
    window_s = rec["window_end"] - rec["window_start"]
    for name in ("coverage", "ofu", "mfu_estimated", "mbu", "achieved_bytes", "peak_bytes",
                 "dram_active", "energy_j", "flops_per_j", "tokens_per_j", "tokens"):
        if rec[name] is None:
            assert name not in point, (name, point)
        else:
            assert point[name] == approx(rec[name]), (name, point, rec)
    assert point["estimated_tflops"] == approx(rec["estimated_flops"] / window_s / 1e12)
    for src, secs in rec["flop_sources"].items():
        assert point[f"flop_sources_{src}"] == approx(secs), src
    for tag in ("tenant", "regime"):
        assert point.get(tag) == rec[tag], tag


def test_records_carry_sources_estimate_bandwidth_energy(outputs) -> None:
    names, topics, records, _, _ = outputs
    node = records["node"][names["n1"]]
    assert _src(node) == approx(
        {"reported": 15.0, "engine": 10.0, "idle": 10.0, "counters": 15.0, "none": 10.0})
    assert node["coverage"] == approx(35 / 60)
    assert node["mfu"] == approx((6 * P + 1.5 * PM) / (30 * P + 5 * PM))
    est = G3T + 0.5 * F32 + 2.5 * PM  # g3: tensor G3T + fp32 0.1 x 990/1980 at F32; S2's half
    assert node["estimated_flops"] == approx(est)
    assert node["mfu_estimated"] == approx((6 * P + 1.5 * PM + est) / (40 * P + 10 * PM))
    assert node["ofu"] == approx((6 * P + G3T + 0.5 * F32 + 5 * PM) / (30 * P + 10 * PM))
    assert node["mbu"] == approx((5 * B + BM) / (10 * B + 5 * BM)) and node["regime"] == "memory"
    assert node["energy_j"] == approx(23000.0)
    assert node["flops_per_j"] == approx((6 * P + 1.5 * PM) / 15000.0)
    assert node["tokens_per_j"] == approx(0.1)

    fleet = records["fleet"][topics.fleet]
    assert fleet["nodes"] == 2
    assert _src(fleet) == approx(
        {"reported": 25.0, "engine": 10.0, "idle": 10.0, "counters": 15.0, "none": 10.0})
    assert fleet["mfu"] == approx((10 * P + 1.5 * PM) / (40 * P + 5 * PM))
    assert fleet["mfu_estimated"] == approx((10 * P + 1.5 * PM + est) / (50 * P + 10 * PM))
    assert fleet["energy_j"] == approx(29500.0)
    assert fleet["flops_per_j"] == approx((10 * P + 1.5 * PM) / 21500.0)

    a = records["workload"][names["A"]]  # ranks on both nodes
    assert a["mfu"] == approx(0.45) and a["coverage"] == 1.0 and a["tenant"] == "acme"
    assert a["ofu"] == approx(0.55) and a["energy_j"] == approx(13500.0)
    e = records["workload"][names["E"]]  # the engine stream: MFU and MBU
    assert _src(e)["engine"] == approx(10.0)
    assert e["mfu"] == approx(0.1) and e["mbu"] == approx(0.5) and e["regime"] == "memory"
    assert e["achieved_bytes"] == approx(5 * B) and e["peak_bytes"] == approx(10 * B)
    c = records["workload"][names["C"]]
    assert c["mfu"] is None and "no GPU-seconds with known model FLOPs" in c["mfu_reason"]
    assert c["mfu_estimated"] == approx((G3T + 0.5 * F32) / (10 * P))
    n = records["workload"][names["N"]]
    assert n["mfu"] is None and n["mfu_estimated"] is None and _src(n)["none"] == approx(10.0)
    s1, s2 = records["workload"][names["S1"]], records["workload"][names["S2"]]
    assert s1["mfu"] == approx(0.3) and s1["mbu"] == approx(0.2) and s1["tenant"] == "t1"
    assert s2["mfu"] is None and s2["mfu_estimated"] == approx(0.5) and s2["tenant"] == "t2"
    assert s2["estimated_flops"] == approx(2.5 * PM)


def test_influx_points_carry_the_same_fields_and_tags(outputs) -> None:
    names, _, records, points, field_types = outputs
    n = 0
    for scope in OUTPUT_KINDS:
        for key, rec in records[scope].items():
            _point_has(points[(scope, key)], rec)
            n += 1
    assert n == 9
    for name in ("coverage", "ofu", "mfu_estimated", "estimated_tflops", "mbu", "energy_j",
                 "flops_per_j", "flop_sources_reported", "flop_sources_none"):
        assert field_types[name] == "float", name
    assert points[("workload", names["S1"])]["regime"] == "mixed"
    assert "mfu" not in points[("workload", names["C"])]  # unknown, never a zero
