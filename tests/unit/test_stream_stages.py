"""Event-time window semantics of the stream stages, event by event, exact values."""

from __future__ import annotations

import math

import pytest

from mfu.config import WindowSettings
from mfu.events import FlopReport, GpuSample
from mfu.peaks import peak_flops_per_s
from streams.aggregate import Marker, Partial
from streams.stages import NodeStage, RollupStage

T0 = 1_700_000_000.0  # a window boundary for 10 s windows
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
PEAK_H100 = peak_flops_per_s(H100, "bf16")
W = WindowSettings(size_s=10, grace_s=2, idle_timeout_s=5)


def sample(node: str, gpu: str, ts: float, workloads: list[str], *, name: str = H100,
           mig: str | None = None, sm: float = 0.9, tensor: float | None = 0.5,
           interval: float = 1.0, eid: str | None = None) -> GpuSample:
    return GpuSample(
        event_id=eid or f"{node}-{gpu}-{ts}", node=node, gpu_uuid=gpu, gpu_index=0,
        gpu_name=name, mig_profile=mig, ts=ts, interval_s=interval, sm_util=sm,
        mem_util=0.3, tensor_active=tensor, workloads=workloads,
    )


def report(workload: str, node: str, gpu: str, start: float, end: float, flops: float,
           *, rank: int = 0, precision: str = "bf16", eid: str | None = None) -> FlopReport:
    return FlopReport(
        event_id=eid or f"{workload}-{rank}-{start}", workload=workload, rank=rank, node=node,
        gpu_uuid=gpu, start=start, end=end, flops=flops, precision=precision,
    )


def steady(stage: NodeStage, node: str, gpus: list[str], workload: str, seconds: int,
           mfu_by_gpu: dict[str, float], peak: float = PEAK_H100, t0: float = T0) -> None:
    """One sample per GPU per second, and FLOP reports at the given MFU per GPU."""
    for i in range(seconds):
        for g in gpus:
            stage.add(sample(node, g, t0 + i + 1, [workload]))
            if g in mfu_by_gpu:
                stage.add(report(workload, node, g, t0 + i, t0 + i + 1, mfu_by_gpu[g] * peak,
                                 rank=gpus.index(g)))


def close_all(stage: NodeStage):
    out = []
    for ws in stage.due():
        out.append(stage.close(ws))
    return out


def test_steady_job_node_mfu_and_close_once() -> None:
    st = NodeStage(W)
    steady(st, "n1", ["g0"], "job", 10, {"g0": 0.4})
    assert st.due() == []  # watermark T0+10 < end + grace
    st.add(sample("n1", "g0", T0 + 12, ["job"]))  # watermark reaches T0+12
    (closed,) = close_all(st)
    (node,) = closed.records
    assert node.scope == "node" and node.key == "n1"
    assert node.mfu == pytest.approx(0.4)
    assert node.achieved_flops == pytest.approx(4.0 * PEAK_H100)
    assert node.peak_flops == pytest.approx(10 * PEAK_H100)
    assert node.gpu_seconds == pytest.approx(10.0)
    assert node.gpus == 1 and node.precision == "bf16" and node.gpu_model == H100
    assert node.sm_util == pytest.approx(0.9) and node.tensor_active == pytest.approx(0.5)
    assert node.allocation == pytest.approx(1.0)
    assert st.due() == []  # emitted once
    workload = [p for p in closed.partials if p.scope == "workload"]
    assert [p.key for p in workload] == ["job"]
    assert workload[0].achieved_flops / workload[0].peak_flops == pytest.approx(0.4)


def test_report_straddling_boundary_split_pro_rata() -> None:
    st = NodeStage(W)
    st.add(report("job", "n1", "g0", T0 + 8, T0 + 13, 1e15))
    assert st.open[T0]["n1"].reports[("job", 0, "g0")].flops == pytest.approx(0.4e15)
    assert st.open[T0 + 10]["n1"].reports[("job", 0, "g0")].flops == pytest.approx(0.6e15)


def test_duplicate_counts_once() -> None:
    st = NodeStage(W)
    r = report("job", "n1", "g0", T0 + 1, T0 + 2, 1e14, eid="dup")
    st.add(sample("n1", "g0", T0 + 2, ["job"]))
    assert not st.add(r).duplicate
    assert st.add(r).duplicate
    st.add(sample("n1", "g0", T0 + 13, ["job"], interval=1))
    (closed,) = close_all(st)
    assert closed.records[0].achieved_flops == pytest.approx(1e14)
    assert closed.records[0].duplicates == 1


def test_late_event_counted_in_next_result_not_dropped() -> None:
    st = NodeStage(W)
    steady(st, "n1", ["g0"], "job", 10, {"g0": 0.5})
    st.add(sample("n1", "g0", T0 + 12, ["job"]))
    close_all(st)
    d = st.add(report("job", "n1", "g0", T0 + 3, T0 + 4, 1e14, eid="late-1"))
    assert d.late and d.max_window is None
    st.add(sample("n1", "g0", T0 + 23, ["job"]))
    (closed,) = close_all(st)
    assert closed.records[0].late_events == 1
    assert [p.late_events for p in closed.partials if p.scope == "workload"] == [1]


def test_out_of_order_within_grace_is_on_time() -> None:
    st = NodeStage(W)
    st.add(sample("n1", "g0", T0 + 11, ["job"]))  # watermark T0+11: window T0 still open
    d = st.add(report("job", "n1", "g0", T0 + 5, T0 + 6, 2e14))
    assert not d.late and d.max_window == T0


def test_idle_allocated_gpu_counts_in_workload_denominator() -> None:
    st = NodeStage(W)
    # g1 attributed, no FLOPs, idle by its counters (a known zero, DESIGN.md §8; a busy
    # silent GPU would be left out of MFU instead: tests/unit/test_stream_accounting.py)
    for i in range(10):
        st.add(sample("n1", "g0", T0 + i + 1, ["job"]))
        st.add(sample("n1", "g1", T0 + i + 1, ["job"], sm=0.0, tensor=0.0))
        st.add(report("job", "n1", "g0", T0 + i, T0 + i + 1, 0.6 * PEAK_H100))
    st.add(sample("n1", "g0", T0 + 12, ["job"]))
    (closed,) = close_all(st)
    (wp,) = [p for p in closed.partials if p.scope == "workload"]
    assert wp.gpus == 2
    assert wp.achieved_flops / wp.peak_flops == pytest.approx(0.3)
    assert closed.records[0].mfu == pytest.approx(0.3)


def test_unallocated_gpu_lowers_node_but_not_allocated_mfu() -> None:
    st = NodeStage(W)
    for i in range(10):
        st.add(sample("n1", "g0", T0 + i + 1, ["job"]))
        st.add(sample("n1", "g1", T0 + i + 1, [], sm=0.0, tensor=0.0))  # idle: a known zero
        st.add(report("job", "n1", "g0", T0 + i, T0 + i + 1, 0.5 * PEAK_H100))
    st.add(sample("n1", "g0", T0 + 12, ["job"]))
    (closed,) = close_all(st)
    node = closed.records[0]
    assert node.mfu == pytest.approx(0.25)
    assert node.mfu_allocated == pytest.approx(0.5)
    assert node.allocation == pytest.approx(0.5)
    assert node.allocated_gpus == 1


def test_mig_slice_gets_sm_share_of_peak() -> None:
    st = NodeStage(W)
    slice_peak = peak_flops_per_s(A100, "bf16", mig_profile="1g.10gb")
    assert slice_peak == pytest.approx(312e12 * 14 / 108)
    for i in range(10):
        st.add(sample("n1", "mig-0", T0 + i + 1, ["svc"], name=A100, mig="1g.10gb"))
        st.add(report("svc", "n1", "mig-0", T0 + i, T0 + i + 1, 0.2 * slice_peak))
    st.add(sample("n1", "mig-0", T0 + 12, ["svc"], name=A100, mig="1g.10gb"))
    (closed,) = close_all(st)
    assert closed.records[0].peak_flops == pytest.approx(10 * slice_peak)
    assert closed.records[0].mfu == pytest.approx(0.2)


def test_unknown_gpu_gives_null_mfu_with_reason() -> None:
    st = NodeStage(W)
    for i in range(10):
        st.add(sample("n1", "g0", T0 + i + 1, ["job"], name="NVIDIA Imaginary X9"))
        st.add(report("job", "n1", "g0", T0 + i, T0 + i + 1, 1e14))
    st.add(sample("n1", "g0", T0 + 12, ["job"], name="NVIDIA Imaginary X9"))
    (closed,) = close_all(st)
    node = closed.records[0]
    assert node.mfu is None
    assert "Imaginary X9" in (node.mfu_reason or "")
    assert node.achieved_flops == pytest.approx(1e15)


def test_precision_of_reports_sets_the_peak() -> None:
    st = NodeStage(W)
    fp32_peak = peak_flops_per_s(H100, "fp32")
    for i in range(10):
        st.add(sample("n1", "g0", T0 + i + 1, ["job"]))
        st.add(report("job", "n1", "g0", T0 + i, T0 + i + 1, 0.5 * fp32_peak, precision="fp32"))
    st.add(sample("n1", "g0", T0 + 12, ["job"]))
    (closed,) = close_all(st)
    assert closed.records[0].precision == "fp32"
    assert closed.records[0].mfu == pytest.approx(0.5)


def test_replay_after_restart_skips_closed_windows_and_gives_same_result() -> None:
    events = []
    for i in range(25):
        events.append(sample("n1", "g0", T0 + i + 0.5, ["job"]))
        events.append(report("job", "n1", "g0", T0 + i - 0.5, T0 + i + 0.5, 0.4 * PEAK_H100))
    # Reference run, no crash.
    ref = NodeStage(W, inputs=("t",))
    ref_records = []
    for off, ev in enumerate(events):
        ref.add(ev, topic="t", offset=off)
        for c in close_all(ref):
            ref_records.extend(c.records)
    # Crash after the first close: persist progress, replay from the first unacked event.
    first = NodeStage(W, inputs=("t",))
    records, progress, first_unacked = [], None, None
    pending: list[tuple[int, float | None]] = []
    for off, ev in enumerate(events):
        d = first.add(ev, topic="t", offset=off)
        pending.append((off, d.max_window))
        closed = close_all(first)
        if closed:
            records.extend(r for c in closed for r in c.records)
            progress = first.snapshot()
            last = closed[-1].window_start
            first_unacked = min(o for o, mw in pending if mw is not None and mw > last)
            break
    assert progress is not None and first_unacked is not None
    second = NodeStage(W, progress=progress, inputs=("t",))
    for off in range(first_unacked, len(events)):
        second.add(events[off], topic="t", offset=off)
        for c in close_all(second):
            records.extend(c.records)
    assert [(r.window_start, round(r.mfu or 0, 9)) for r in records] == [
        (r.window_start, round(r.mfu or 0, 9)) for r in ref_records
    ]
    assert all(r.late_events == 0 for r in records)


def test_hopping_windows_each_instant_in_two() -> None:
    st = NodeStage(WindowSettings(size_s=10, hop_s=5, grace_s=0))
    st.add(report("job", "n1", "g0", T0 + 6, T0 + 7, 1e14))
    assert sorted(st.open) == [T0, T0 + 5]


def _partial(node: str, key: str, flops: float, peak: float, ws: float = T0,
             scope: str = "workload") -> Partial:
    return Partial(scope=scope, key=key, node=node, window_start=ws, window_end=ws + 10,
                   achieved_flops=flops, peak_flops=peak, gpu_seconds=10, gpus=1,
                   ranks=[(flops, peak)])


def test_rollup_waits_for_every_source_then_merges_nodes() -> None:
    ru = RollupStage(W, sources=2)
    ru.add_partial(_partial("n1", "job", 4e15, 1e16))
    ru.add_partial(_partial("n2", "job", 2e15, 1e16))
    ru.add_marker(Marker(src=0, closed_through=T0 + 10))
    assert ru.due() == []  # source 1 has not closed the window yet
    ru.add_marker(Marker(src=1, closed_through=T0 + 10))
    (ws,) = ru.due()
    (rec,) = ru.close(ws).records
    assert rec.scope == "workload" and rec.nodes == 2 and rec.gpus == 2
    assert rec.mfu == pytest.approx(0.3)
    assert rec.rank_mfu_min == pytest.approx(0.2) and rec.ranks == 2


def test_rollup_idle_source_does_not_hold_back_and_replayed_partial_counts_once() -> None:
    ru = RollupStage(W, sources=2)
    p = _partial("n1", "job", 4e15, 1e16)
    ru.add_partial(p)
    assert ru.add_partial(p).duplicate
    ru.add_marker(Marker(src=1, closed_through=0.0, idle=True))
    ru.add_marker(Marker(src=0, closed_through=T0 + 10))
    (rec,) = ru.close(ru.due()[0]).records
    # Counted once, and not reported as a duplicate input event: a re-emitted partial is
    # the node stage replaying after a crash, and the record must equal the one without.
    assert rec.mfu == pytest.approx(0.4) and rec.duplicates == 0
    late = ru.add_partial(_partial("n2", "job", 1e15, 1e16))
    assert late.late


def test_rollup_all_idle_closes_everything() -> None:
    ru = RollupStage(W, sources=1)
    ru.add_partial(_partial("n1", "default", 1e15, 1e16, scope="fleet"))
    ru.add_marker(Marker(src=0, closed_through=0.0, idle=True))
    assert ru.low_watermark() == math.inf and ru.due() == [T0]


def test_watermark_is_min_over_active_inputs() -> None:
    """Telemetry racing ahead must not close windows FLOP reports still belong to."""
    st = NodeStage(W, inputs=("tel", "flops"), now=0.0)
    for i in range(30):
        st.add(sample("n1", "g0", T0 + i + 1, ["job"]), topic="tel", now=1.0)
    assert st.due(now=1.0) == []
    for i in range(30):
        st.add(report("job", "n1", "g0", T0 + i, T0 + i + 1, 0.4 * PEAK_H100), topic="flops",
               now=2.0)
    assert st.due(now=2.0) == [T0, T0 + 10]
    assert all(r.mfu == pytest.approx(0.4) for ws in st.due(2.0) for r in st.close(ws).records)


def test_silent_input_stops_holding_back_after_idle_timeout() -> None:
    st = NodeStage(W, inputs=("tel", "flops"), now=0.0)
    for i in range(15):
        st.add(sample("n1", "g0", T0 + i + 1, ["job"]), topic="tel", now=1.0)
    # "flops" has been silent since the stage started at 0.0
    assert st.due(now=W.idle_timeout_s - 0.1) == []
    assert st.due(now=W.idle_timeout_s + 0.1) == [T0]


def test_input_resuming_after_quiet_spell_waits_for_the_others() -> None:
    st = NodeStage(W, inputs=("tel", "flops"), now=0.0)
    for i in range(15):  # both quiet since 0.0; telemetry resumes at 100.0
        st.add(sample("n1", "g0", T0 + i + 1, ["job"]), topic="tel", now=100.0)
    assert st.due(now=100.0) == []  # flops get a fresh idle timeout to show up


def test_workload_record_carries_model_context_as_valid_models() -> None:
    """Parallelism from the reports reaches the record as the contract's model (a plain
    dict would serialize with a warning and skip validation)."""
    import warnings

    from mfu.events import MfuWindow, Parallelism

    p = Partial(scope="workload", key="j", node="n1", window_start=T0, window_end=T0 + 10,
                achieved_flops=1e15, peak_flops=1e16, gpu_seconds=10, gpus=1,
                parallelism={"tp": 8, "pp": 2, "dp": 1, "cp": 1, "ep": 1})
    ru = RollupStage(W, sources=1)
    ru.add_partial(p)
    ru.add_marker(Marker(src=0, closed_through=T0 + 10))
    (rec,) = ru.close(ru.due()[0]).records
    assert rec.parallelism == Parallelism(tp=8, pp=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MfuWindow.model_validate_json(rec.to_json()).parallelism.world_size == 16


def test_input_with_a_backlog_holds_the_watermark_however_long_it_was_silent() -> None:
    """A slow consumer is not a quiet producer: data waiting at the broker keeps the input
    active, so windows are not closed early and its events do not turn late."""
    st = NodeStage(W, inputs=("tel", "flops"), now=0.0)
    for i in range(15):
        st.add(sample("n1", "g0", T0 + i + 1, ["job"]), topic="tel", now=1.0)
    late = W.idle_timeout_s + 10.0
    assert st.due(now=late, backlog=frozenset({"flops"})) == []
    assert st.due(now=late) == [T0]
