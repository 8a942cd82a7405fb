"""The stream stage end to end on a real broker and InfluxDB: one `mfu streams` worker
subprocess, hand-built telemetry and FLOP reports, exact window values.

One worker serves every scenario of this module (they use distinct nodes and workloads in
one feed, so they share the fleet record): steady jobs, a job whose ranks span nodes in
different partitions, idle allocated and unallocated GPUs, MIG slices, events out of
order within the grace period, duplicates, FLOP reports straddling a window boundary,
malformed input, an unknown GPU, and events arriving after their window closed.

Event times are in the past (``T0``) and the idle timeout is short, so windows close as
soon as the feed stops. Phase 1 feeds seconds 0..19 (windows W0 and W1); phase 2, once
phase 1's results are out, sends late events for W0 plus seconds 20..29 (W2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from mfu.events import Event, FlopReport, GpuSample
from tests.integration.streams_harness import (
    H100,
    OUTPUT_KINDS,
    T0,
    UNKNOWN_GPU,
    WINDOW_S,
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
    partition_for,
    peak,
    report,
    sample,
    wait_for_group,
    wait_for_points,
    windows_by_key,
    worker_env,
)

pytestmark = pytest.mark.integration

P = peak(H100)
W0, W1, W2 = T0, T0 + WINDOW_S, T0 + 2 * WINDOW_S
PARTITIONS = 4
UNKNOWN_RATE = 1e14  # FLOP/s the unknown GPU reports


# --------------------------------------------------------------------------- the feed


@dataclass
class Gpu:
    """One GPU (or MIG slice) of the feed: what it reports every second."""

    node: str
    uuid: str
    workloads: list[str]
    mfu: float | None = None  # FLOP report per second at this share of the peak
    rank: int = 0
    name: str = H100
    mig: str | None = None
    idle: bool = False  # telemetry says idle (sm 0, tensor 0): a known zero, DESIGN.md §8

    @property
    def peak(self) -> float:
        return 0.0 if self.name == UNKNOWN_GPU else peak(self.name, "bf16", self.mig)

    @property
    def workload(self) -> str:
        return self.workloads[0]

    def flops_per_s(self) -> float:
        assert self.mfu is not None
        return UNKNOWN_RATE if self.name == UNKNOWN_GPU else self.mfu * self.peak

    def sample(self, i: int, **kw: Any) -> GpuSample:
        """Telemetry for second ``i`` (event time ``[T0 + i, T0 + i + 1)``)."""
        if self.idle:
            kw = {"sm": 0.0, "tensor": 0.0, **kw}
        return sample(self.node, self.uuid, T0 + i + 1, self.workloads, name=self.name,
                      mig=self.mig, **kw)

    def report(self, i: int, **kw: Any) -> FlopReport:
        return report(self.workload, self.node, self.uuid, T0 + i, T0 + i + 1,
                      self.flops_per_s(), rank=self.rank, **kw)


@dataclass
class Scenario:
    """Names and GPUs of every scenario, unique to one run."""

    sfx: str
    nodes: dict[str, str] = field(default_factory=dict)  # role -> node name
    gpus: dict[str, list[Gpu]] = field(default_factory=dict)  # role -> GPUs

    def node(self, role: str, partition: int) -> str:
        name = key_in_partition(f"{self.sfx}-{role}", partition, PARTITIONS)
        self.nodes[role] = name
        return name

    def job(self, role: str) -> str:
        return f"job-{role}-{self.sfx}"

    def add(self, role: str, partition: int, specs: list[dict[str, Any]]) -> None:
        node = self.node(role, partition)
        self.gpus[role] = [Gpu(node=node, uuid=f"{node}-g{i}", **spec)
                           for i, spec in enumerate(specs)]


def build(sfx: str) -> Scenario:
    s = Scenario(sfx)
    st, mn, idle = s.job("st"), s.job("mn"), s.job("idle")
    s.add("st", 0, [dict(workloads=[st], mfu=0.40, rank=0),
                    dict(workloads=[st], mfu=0.45, rank=1)])
    s.add("ma", 1, [dict(workloads=[mn], mfu=0.30, rank=0),
                    dict(workloads=[mn], mfu=0.40, rank=1)])
    s.add("mb", 2, [dict(workloads=[mn], mfu=0.50, rank=2),
                    dict(workloads=[mn], mfu=0.60, rank=3)])
    s.add("idle", 3, [dict(workloads=[idle], mfu=0.50, rank=0),
                      dict(workloads=[idle], idle=True),  # allocated, reports no FLOPs
                      dict(workloads=[], idle=True), dict(workloads=[], idle=True)])  # unallocated
    s.add("mig", 0, [dict(workloads=[s.job("miga")], mfu=0.30, mig="3g.40gb"),
                     dict(workloads=[s.job("migb")], mfu=0.20, mig="1g.10gb")])
    s.add("ooo", 1, [dict(workloads=[s.job("ooo")], mfu=0.50)])
    s.add("dup", 2, [dict(workloads=[s.job("dup")], mfu=0.35)])
    s.add("str", 3, [dict(workloads=[s.job("str")])])  # reports over 4 s, see below
    s.add("bad", 0, [dict(workloads=[s.job("bad")], mfu=0.25)])
    s.add("unk", 1, [dict(workloads=[s.job("unk")], mfu=0.0, name=UNKNOWN_GPU)])
    s.add("late", 2, [dict(workloads=[s.job("late")], mfu=0.40)])
    return s


# Straddling reports (start, end, share of the peak), each sent when its interval ends;
# [9, 11) crosses W0/W1 and [4, 9), [11, 16) span several seconds.
STRADDLE = ((0, 4, 0.20), (4, 9, 0.30), (9, 11, 0.40), (11, 16, 0.50), (16, 20, 0.60))
STRADDLE_MFU = {0: (4 * 0.2 + 5 * 0.3 + 1 * 0.4) / 10, 1: (1 * 0.4 + 5 * 0.5 + 4 * 0.6) / 10}
DUP_SECOND = 3  # its sample and report are sent again at second 6
OOO_SECOND = 8  # held back until after second 10 (watermark T0+11 < W0 end + grace)


def malformed(s: Scenario) -> tuple[list[tuple[str, bytes]], list[Event]]:
    """Bad inputs of node 'bad' (sent at second 2) and the valid events sharing their
    batches. Returns [(kind, raw value)] and the valid events."""
    g = s.gpus["bad"][0]
    good_report, good_sample = g.report(2), g.sample(2)
    base = json.loads(good_report.to_json())

    def variant(**changes: Any) -> dict[str, Any]:
        return {**base, **changes, "event_id": f"bad-{len(changes)}-{sorted(changes)}"}

    flops_batch = {"schema": "batch/1", "events": [
        json.loads(good_report.to_json()),
        variant(flops=-1.0),
        variant(precision="fp4"),
        variant(schema="flop_report/9"),
        json.loads(good_sample.to_json()),  # a gpu_sample on the FLOP topic
        variant(flops=float("nan")),  # json.dumps writes the NaN token
    ]}
    bad_sample = {**json.loads(good_sample.to_json()), "sm_util": 1.5, "event_id": "bad-sm"}
    telemetry_batch = {"schema": "batch/1",
                       "events": [json.loads(good_sample.to_json()), bad_sample]}
    raws = [
        ("flops", json.dumps(flops_batch).encode()),
        ("telemetry", json.dumps(telemetry_batch).encode()),
        ("flops", b"garbage{"),
    ]
    return raws, [good_report, good_sample]


EXPECTED_DEAD = 7  # negative flops, fp4, wrong schema x2, sm_util 1.5, garbage, NaN


def feed_phase1(feeder: Feeder, s: Scenario) -> None:
    held: list[Event] = []
    for i in range(20):
        tel: list[Event] = []
        flo: list[Event] = []
        for role, gpus in s.gpus.items():
            for g in gpus:
                if role == "bad" and i == 2:
                    continue  # sent inside the malformed batches below
                if role == "ooo" and i == OOO_SECOND:
                    held += [g.sample(i), g.report(i)]
                    continue
                tel.append(g.sample(i))
                if role == "str":
                    for start, end, mfu in STRADDLE:
                        if i == end - 1:  # sent when its interval ends
                            flo.append(report(g.workload, g.node, g.uuid, T0 + start,
                                              T0 + end, (end - start) * mfu * g.peak))
                elif g.mfu is not None:
                    flo.append(g.report(i))
        feeder.events(tel)
        feeder.events(flo)
        if i == 2:
            raws, _ = malformed(s)
            for kind, raw in raws:
                feeder.raw(kind, s.nodes["bad"], raw)
        if i == 6:  # the same events again: must count once
            g = s.gpus["dup"][0]
            feeder.single(g.sample(DUP_SECOND))
            feeder.single(g.report(DUP_SECOND))
        if i == 10:  # out of order, within grace
            for ev in held:
                feeder.single(ev)
    feeder.flush()


def late_events(s: Scenario) -> list[Event]:
    """Events of node 'late' for W0, sent in phase 2 after W0 closed."""
    g = s.gpus["late"][0]
    return [g.sample(5, eid=f"late-s-{s.sfx}"), g.report(5, eid=f"late-r-{s.sfx}")]


def feed_phase2(feeder: Feeder, s: Scenario) -> None:
    for ev in late_events(s):
        feeder.single(ev)
    g = s.gpus["late"][0]
    for i in range(20, 30):
        feeder.events([g.sample(i)])
        feeder.events([g.report(i)])
    feeder.flush()


# --------------------------------------------------------------------------- expectations


def node_expected(gpus: list[Gpu], flops: list[float]) -> dict[str, Any]:
    """Node window values from its GPUs (10 GPU-seconds each) and their FLOPs in it."""
    known = [g.name != UNKNOWN_GPU for g in gpus]
    peak_total = sum(g.peak * WINDOW_S for g in gpus)
    achieved = sum(flops)
    alloc = [bool(g.workloads) or f > 0 for g, f in zip(gpus, flops, strict=True)]
    alloc_peak = sum(g.peak * WINDOW_S for g, a in zip(gpus, alloc, strict=True) if a)
    alloc_flops = sum(f for f, a, k in zip(flops, alloc, known, strict=True) if a and k)
    return {
        "achieved_flops": achieved,
        "achieved_known": sum(f for f, k in zip(flops, known, strict=True) if k),
        "peak_flops": peak_total,
        "gpu_seconds": WINDOW_S * len(gpus),
        "gpus": len(gpus),
        "mfu": achieved / peak_total if all(known) else None,
        "allocated_gpus": sum(alloc),
        "allocated_seconds": WINDOW_S * sum(alloc),
        "allocated_peak": alloc_peak,
        "allocated_flops": alloc_flops,
        "allocation": sum(alloc) / len(gpus),
        "mfu_allocated": alloc_flops / alloc_peak if alloc_peak else None,
    }


def window_flops(s: Scenario, role: str, ws: float) -> list[float]:
    """FLOPs each GPU of ``role`` did in window ``ws`` (as fed)."""
    out = []
    for g in s.gpus[role]:
        if role == "str":
            out.append(STRADDLE_MFU[0 if ws == W0 else 1] * WINDOW_S * g.peak)
        elif g.mfu is None:
            out.append(0.0)
        else:
            out.append(g.flops_per_s() * WINDOW_S)
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    s: Scenario
    topics: Topics
    records: dict[str, dict[tuple[str, float], dict[str, Any]]]  # scope -> (key, ws) -> rec
    raw: dict[str, list[dict[str, Any]]]  # topic kind -> records as read
    points: list[dict[str, Any]]
    field_types: dict[str, str]
    timings: dict[str, float]

    def rec(self, scope: str, role_or_key: str, ws: float) -> dict[str, Any]:
        key = {"node": self.s.nodes.get(role_or_key, role_or_key),
               "workload": self.s.job(role_or_key),
               "fleet": self.topics.fleet}[scope]
        found = self.records[scope].get((key, ws))
        assert found is not None, f"no {scope} record for {key} window {ws}"
        return found


def expected_keys(s: Scenario, topics: Topics) -> dict[str, set[tuple[str, float]]]:
    jobs = {g.workload for gs in s.gpus.values() for g in gs if g.workloads}
    nodes = set(s.nodes.values())
    out: dict[str, set[tuple[str, float]]] = {"node": set(), "workload": set(), "fleet": set()}
    for ws in (W0, W1):
        out["node"] |= {(n, ws) for n in nodes}
        out["workload"] |= {(j, ws) for j in jobs}
        out["fleet"].add((topics.fleet, ws))
    out["node"].add((s.nodes["late"], W2))
    out["workload"].add((s.job("late"), W2))
    out["fleet"].add((topics.fleet, W2))
    return out


def _have(collector: Collector, topics: Topics, want: dict[str, set[tuple[str, float]]]) -> bool:
    for scope, keys in want.items():
        got = {(r["key"], r["window_start"]) for r in collector.records[topics[scope]]}
        if not keys <= got:
            return False
    return True


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, kafka_admin: AdminClient, influx: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    topics = Topics()
    s = build(topics.suffix)
    names = create_topics(kafka_admin, topics, PARTITIONS)
    workdir: Path = tmp_path_factory.mktemp("streams-scenarios")
    worker = Worker(worker_env(topics, kafka_bootstrap, influx, partitions=PARTITIONS),
                    workdir)
    collector = Collector(kafka_bootstrap, [topics[k] for k in (*OUTPUT_KINDS, "deadletter",
                                                                  "late")])
    timings: dict[str, float] = {}
    t = time.monotonic()
    try:
        worker.start()
        wait_for_group(kafka_bootstrap, topics.app_id, 1, topics["telemetry"], worker=worker)
        timings["ready"] = time.monotonic() - t
        feeder = Feeder(kafka_bootstrap, topics, PARTITIONS)
        feed_phase1(feeder, s)
        want = expected_keys(s, topics)
        phase1 = {scope: {k for k in keys if k[1] != W2} for scope, keys in want.items()}
        collector.wait_for(lambda: _have(collector, topics, phase1), 60, "phase 1 windows",
                           worker)
        timings["phase1"] = time.monotonic() - t
        feed_phase2(feeder, s)
        collector.wait_for(lambda: _have(collector, topics, want), 60, "phase 2 windows",
                           worker)
        timings["phase2"] = time.monotonic() - t
        collector.wait_for(
            lambda: len(collector.records[topics["deadletter"]]) >= EXPECTED_DEAD
            and len(collector.records[topics["late"]]) >= 2, 20, "dead letters and late",
            worker)
        n_out = sum(len(keys) for keys in want.values())
        points = wait_for_points(influx, topics, n_out, 30, worker)
        timings["influx"] = time.monotonic() - t
        collector.poll(1.0)  # anything emitted twice shows up now
        raw = {k: collector.records[topics[k]] for k in (*OUTPUT_KINDS, "deadletter", "late")}
        records = {k: windows_by_key(raw[k]) for k in OUTPUT_KINDS}
        print(f"[streams scenarios] timings {timings}")
        yield Run(s, topics, records, raw, points, influx_field_types(influx), timings)
    finally:
        worker.stop()
        collector.close()
        delete_topics(kafka_admin, names, topics.app_id)


# --------------------------------------------------------------------------- the checks


def _check_node(run: Run, role: str, ws: float, **extra: Any) -> dict[str, Any]:
    exp = node_expected(run.s.gpus[role], window_flops(run.s, role, ws))
    rec = run.rec("node", role, ws)
    assert rec["schema"] == "mfu_window/1" and rec["scope"] == "node"
    assert rec["window_end"] == ws + WINDOW_S
    for name in ("achieved_flops", "peak_flops", "gpu_seconds", "allocation"):
        assert rec[name] == approx(exp[name]), (role, ws, name, rec)
    if exp["mfu"] is None:  # a GPU without a known peak: no MFU of any kind
        assert rec["mfu_allocated"] is None
    else:
        assert rec["mfu_allocated"] == approx(exp["mfu_allocated"]), (role, ws, rec)
    assert rec["gpus"] == exp["gpus"] and rec["allocated_gpus"] == exp["allocated_gpus"]
    if exp["mfu"] is None:
        assert rec["mfu"] is None
    else:
        assert rec["mfu"] == approx(exp["mfu"]), (role, ws, rec)
    for name, value in {"late_events": 0, "duplicates": 0, **extra}.items():
        assert rec[name] == value, (role, ws, name, rec)
    return rec


def _check_workload(run: Run, role: str, ws: float, gpus: list[Gpu], flops: list[float],
                    **extra: Any) -> dict[str, Any]:
    rec = run.rec("workload", role, ws)
    peak_total = sum(g.peak * WINDOW_S for g in gpus)
    assert rec["achieved_flops"] == approx(sum(flops))
    assert rec["peak_flops"] == approx(peak_total)
    assert rec["mfu"] == approx(sum(flops) / peak_total)
    assert rec["gpus"] == len(gpus) and rec["gpu_seconds"] == approx(WINDOW_S * len(gpus))
    for name, value in {"late_events": 0, "duplicates": 0, **extra}.items():
        if isinstance(value, float):
            assert rec[name] == approx(value), (role, ws, name, rec)
        else:
            assert rec[name] == value, (role, ws, name, rec)
    return rec


def test_steady_job(run: Run) -> None:
    gpus = run.s.gpus["st"]
    for ws in (W0, W1):
        rec = _check_node(run, "st", ws)
        assert rec["mfu"] == approx(0.425)
        assert rec["sm_util"] == approx(0.9) and rec["tensor_active"] == approx(0.5)
        assert rec["precision"] == "bf16" and rec["gpu_model"] == H100
        wl = _check_workload(run, "st", ws, gpus, [0.40 * P * 10, 0.45 * P * 10],
                             nodes=1, ranks=2, rank_mfu_min=0.40, rank_mfu_median=0.425)
        assert wl["mfu"] == approx(0.425) and wl["key"] == run.s.job("st")


def test_multi_node_job_merges_nodes_across_partitions(run: Run) -> None:
    a, b = run.s.nodes["ma"], run.s.nodes["mb"]
    assert partition_for(a, PARTITIONS) != partition_for(b, PARTITIONS)
    gpus = run.s.gpus["ma"] + run.s.gpus["mb"]
    for ws in (W0, W1):
        assert _check_node(run, "ma", ws)["mfu"] == approx(0.35)
        assert _check_node(run, "mb", ws)["mfu"] == approx(0.55)
        rec = _check_workload(run, "mn", ws, gpus, [m * P * 10 for m in (0.3, 0.4, 0.5, 0.6)],
                              nodes=2, ranks=4, rank_mfu_min=0.30, rank_mfu_median=0.45)
        assert rec["mfu"] == approx(0.45)


def test_idle_allocated_and_unallocated_gpus(run: Run) -> None:
    gpus = run.s.gpus["idle"]
    for ws in (W0, W1):
        rec = _check_node(run, "idle", ws)
        # node: 5 P of 40 P; allocated-only: 5 P over the two allocated GPUs (20 P)
        assert rec["mfu"] == approx(0.125)
        assert rec["allocation"] == approx(0.5) and rec["mfu_allocated"] == approx(0.25)
        wl = _check_workload(run, "idle", ws, gpus[:2], [0.5 * P * 10, 0.0], nodes=1,
                             ranks=1, rank_mfu_min=0.5)
        assert wl["mfu"] == approx(0.25)  # the silent allocated GPU counts in the peak


def test_mig_slices_get_their_share_of_the_peak(run: Run) -> None:
    a, b = run.s.gpus["mig"]
    assert a.peak == approx(P * 60 / 132) and b.peak == approx(P * 16 / 132)
    for ws in (W0, W1):
        rec = _check_node(run, "mig", ws)
        assert rec["mfu"] == approx((0.3 * a.peak + 0.2 * b.peak) / (a.peak + b.peak))
        assert _check_workload(run, "miga", ws, [a], [0.3 * a.peak * 10])["mfu"] == approx(0.3)
        assert _check_workload(run, "migb", ws, [b], [0.2 * b.peak * 10])["mfu"] == approx(0.2)


def test_out_of_order_within_grace_counts_on_time(run: Run) -> None:
    g = run.s.gpus["ooo"]
    for ws in (W0, W1):
        assert _check_node(run, "ooo", ws)["mfu"] == approx(0.5)
        _check_workload(run, "ooo", ws, g, [0.5 * P * 10])
    assert not any(r["event_id"].startswith(f"s:{run.s.nodes['ooo']}")
                   for r in run.raw["late"])


def test_duplicates_count_once(run: Run) -> None:
    g = run.s.gpus["dup"]
    rec = _check_node(run, "dup", W0, duplicates=2)  # the resent sample and report
    assert rec["mfu"] == approx(0.35)
    _check_node(run, "dup", W1)
    for ws in (W0, W1):
        _check_workload(run, "dup", ws, g, [0.35 * P * 10])
    assert run.rec("fleet", "", W0)["duplicates"] == 2


def test_report_straddling_windows_splits_pro_rata(run: Run) -> None:
    g = run.s.gpus["str"]
    expect = {W0: 0.27, W1: 0.53}  # (4*.2 + 5*.3 + 1*.4)/10, (1*.4 + 5*.5 + 4*.6)/10
    assert STRADDLE_MFU[0] == pytest.approx(0.27) and STRADDLE_MFU[1] == pytest.approx(0.53)
    for ws, mfu in expect.items():
        assert _check_node(run, "str", ws)["mfu"] == approx(mfu)
        _check_workload(run, "str", ws, g, [mfu * P * 10])


def test_malformed_input_dead_lettered_valid_events_counted(run: Run) -> None:
    node = run.s.nodes["bad"]
    dead = [d for d in run.raw["deadletter"] if node in d["original"]
            or d["original"].startswith("garbage")]
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == EXPECTED_DEAD, reasons
    assert all(d["schema"] == "deadletter/1" for d in dead)
    topics_of = {d["source_topic"] for d in dead}
    assert topics_of == {run.topics["flops"], run.topics["telemetry"]}

    def one(fragment: str) -> dict[str, Any]:
        hits = [d for d in dead if fragment in d["reason"]]
        assert len(hits) == 1, (fragment, reasons)
        return hits[0]

    assert one("not valid JSON: Expecting")["original"] == "garbage{"
    assert "NaN" in one("finite number")["original"]
    assert "flops" in one("greater than or equal to 0")["reason"]
    assert '"fp4"' in one("precision: Input should be 'fp64'")["original"]
    one("'flop_report/9'")
    one("got 'gpu_sample/1'")
    assert "sm_util" in one("less than or equal to 1")["reason"]
    # The valid events of the same batches counted: exact MFU in both windows.
    for ws in (W0, W1):
        assert _check_node(run, "bad", ws)["mfu"] == approx(0.25)
        _check_workload(run, "bad", ws, run.s.gpus["bad"], [0.25 * P * 10])


def test_unknown_gpu_null_mfu_with_reason(run: Run) -> None:
    for ws in (W0, W1):
        rec = _check_node(run, "unk", ws)
        assert rec["mfu"] is None and UNKNOWN_GPU in rec["mfu_reason"]
        assert rec["achieved_flops"] == approx(UNKNOWN_RATE * WINDOW_S)
        wl = run.rec("workload", "unk", ws)
        assert wl["mfu"] is None and UNKNOWN_GPU in wl["mfu_reason"]
        assert wl["achieved_flops"] == approx(UNKNOWN_RATE * WINDOW_S)


def test_fleet_allocation_and_allocated_mfu(run: Run) -> None:
    for ws in (W0, W1):
        nodes = [node_expected(run.s.gpus[r], window_flops(run.s, r, ws)) for r in run.s.gpus]
        rec = run.rec("fleet", "", ws)
        achieved = sum(n["achieved_known"] for n in nodes)
        peak_total = sum(n["peak_flops"] for n in nodes)
        gpus = sum(n["gpus"] for n in nodes)
        alloc_s = sum(n["allocated_seconds"] for n in nodes)
        # Fleet MFU is over the GPUs with a known peak (the unknown one is named).
        assert rec["mfu"] == approx(achieved / peak_total)
        assert rec["achieved_flops"] == approx(achieved)
        assert rec["peak_flops"] == approx(peak_total)
        assert rec["gpus"] == gpus and rec["nodes"] == len(nodes)
        assert rec["gpu_seconds"] == approx(gpus * WINDOW_S)
        assert rec["allocated_gpus"] == sum(n["allocated_gpus"] for n in nodes)
        assert rec["allocation"] == approx(alloc_s / (gpus * WINDOW_S))
        assert rec["mfu_allocated"] == approx(
            sum(n["allocated_flops"] for n in nodes) / sum(n["allocated_peak"] for n in nodes))
        assert UNKNOWN_GPU in rec["mfu_reason"]
        assert rec["late_events"] == 0


def test_late_events_counted_in_next_result_and_routed(run: Run) -> None:
    late = late_events(run.s)
    routed = {r["event_id"]: r for r in run.raw["late"]}
    assert set(routed) == {e.event_id for e in late}
    for ev in late:
        assert routed[ev.event_id] == json.loads(ev.to_json())
    # W0 and W1 unchanged (emitted once, before the late events came)
    for ws in (W0, W1):
        assert _check_node(run, "late", ws)["mfu"] == approx(0.4)
    rec = _check_node(run, "late", W2, late_events=2)
    assert rec["mfu"] == approx(0.4)
    _check_workload(run, "late", W2, run.s.gpus["late"], [0.4 * P * 10], late_events=1)
    fleet = run.rec("fleet", "", W2)
    assert fleet["late_events"] == 2 and fleet["mfu"] == approx(0.4) and fleet["nodes"] == 1


def test_each_window_emitted_once(run: Run) -> None:
    for scope in OUTPUT_KINDS:
        ids = [r["event_id"] for r in run.raw[scope]]
        assert len(ids) == len(set(ids)), scope


def test_influxdb_points_match_kafka_records(run: Run) -> None:
    points = {(p["scope"], p["key"], p["time"]): p for p in run.points}
    records = [rec for scope in OUTPUT_KINDS for rec in run.records[scope].values()]
    assert len(points) == len(records)
    for rec in records:
        point = points[(rec["scope"], rec["key"], round(rec["window_start"] * 1e9))]
        assert_point_matches(point, rec)
    for name in ("mfu", "achieved_tflops", "peak_tflops", "gpu_seconds", "gpus", "window_s"):
        assert run.field_types[name] == "float", name
    st = points[("node", run.s.nodes["st"], round(W0 * 1e9))]
    assert st["mfu"] == approx(0.425) and st["gpus"] == 2.0 and st["window_s"] == WINDOW_S
    assert st["peak_tflops"] == approx(2 * P / 1e12)
    assert st["achieved_tflops"] == approx(0.85 * P / 1e12)
