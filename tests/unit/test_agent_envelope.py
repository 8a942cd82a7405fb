"""Multi-interval envelopes (agents/envelope.py): the default K, its bounds, and that
windows come out identical for K = 1 and K = 5 through the pure stream stages."""

from __future__ import annotations

import pytest

from agents.envelope import Envelope, check_envelope_s, default_envelope_s
from mfu.config import WindowSettings
from mfu.events import FlopReport, GpuSample, MfuWindow, batch, parse_events
from mfu.peaks import peak_flops_per_s
from streams.aggregate import Marker
from streams.stages import NodeStage, RollupStage

T0 = 1_700_000_000.0  # a window boundary for 10 s windows
H100 = "NVIDIA H100 80GB HBM3"
PEAK = peak_flops_per_s(H100, "bf16")
W = WindowSettings(size_s=10, grace_s=5, idle_timeout_s=15)
NODES = ("n0", "n1", "n2")
GPUS = ("g0", "g1")
MFU_BY_GPU = {"g0": 0.3, "g1": 0.5}
SECONDS = 40


@pytest.mark.parametrize(("interval_s", "size_s", "grace_s", "want"), [
    (1.0, 10, 5, 5.0),   # 5 divides 10 and 5: the project default windows
    (1.0, 10, 2, 2.0),   # the bench's grace
    (1.0, 10, 3, 1.0),   # 2 does not divide 3, 3 does not divide 10: one interval
    (1.0, 10, 0, 1.0),   # no grace: one interval
    (0.2, 10, 2, 2.0),   # 10 intervals of 0.2 s
    (1.0, 12, 8, 4.0),   # 8 does not divide 12; 4 divides both
])
def test_default_is_the_largest_k_within_grace_dividing_window_and_grace(
        interval_s: float, size_s: float, grace_s: float, want: float) -> None:
    windows = WindowSettings(size_s=size_s, grace_s=grace_s)
    assert default_envelope_s(interval_s, windows) == pytest.approx(want)


def test_envelope_beyond_grace_or_not_whole_intervals_is_refused() -> None:
    check_envelope_s(5.0, 1.0, W)  # == grace: fine
    with pytest.raises(ValueError, match="exceeds the window grace"):
        check_envelope_s(6.0, 1.0, W)
    with pytest.raises(ValueError, match="whole multiple of interval_s"):
        check_envelope_s(1.5, 1.0, W)


def test_flushes_on_epoch_multiples_of_k_and_when_full() -> None:
    env = Envelope(5.0, 1.0)
    s = [_sample("n0", "g0", T0 + i) for i in range(1, 8)]
    # T0 is a multiple of 5: T0+1..T0+4 wait, T0+5 flushes all five, oldest first.
    assert [env.add(x.ts, [x], []) for x in s[:4]] == [None] * 4
    out = env.add(s[4].ts, [s[4]], [])
    assert out is not None and [e.ts for e in out[0]] == [T0 + i for i in range(1, 6)]
    assert len(env) == 0
    # Started off-phase (T0+6) and missed intervals: flushes once it spans 5 s (T0+10
    # is aligned anyway); take() empties what is left at shutdown.
    assert env.add(s[5].ts, [s[5]], []) is None
    assert len(env.take()[0]) == 1 and len(env) == 0


def _sample(node: str, gpu: str, ts: float) -> GpuSample:
    return GpuSample(event_id=f"{node}-{gpu}-{ts:.0f}", node=node, gpu_uuid=f"{node}-{gpu}",
                     gpu_index=GPUS.index(gpu), gpu_name=H100, ts=ts, interval_s=1.0,
                     sm_util=0.9, mem_util=0.3, tensor_active=0.5, workloads=[f"job-{node}"])


def _report(node: str, gpu: str, end: float) -> FlopReport:
    return FlopReport(event_id=f"{node}-{gpu}-r{end:.0f}", workload=f"job-{node}",
                      rank=GPUS.index(gpu), node=node, gpu_uuid=f"{node}-{gpu}",
                      start=end - 1.0, end=end, flops=MFU_BY_GPU[gpu] * PEAK, precision="bf16")


def _run(envelope_s: float) -> tuple[list[MfuWindow], int]:
    """Agents with ``envelope_s`` -> batch/1 bytes -> one NodeStage -> RollupStage.
    Returns every record (node, workload, fleet) and the number of input messages."""
    node_stage = NodeStage(W, fleet="f", inputs=("tel", "flo"))
    rollup = RollupStage(W, sources=1, fleet="f")
    envelopes = {n: Envelope(envelope_s, 1.0) for n in NODES}
    records: list[MfuWindow] = []
    messages = 0

    def publish(samples: list[GpuSample], reports: list[FlopReport]) -> None:
        nonlocal messages
        for topic, events, model in (("tel", samples, GpuSample), ("flo", reports, FlopReport)):
            good, bad = parse_events(batch(events), model)  # through the wire format
            assert bad == []
            node_stage.add_many(good, topic=topic, offset=messages)
            messages += 1
        close(node_stage.due())

    def close(due: list[float]) -> None:
        for ws in due:
            closed = node_stage.close(ws)
            records.extend(closed.records)
            for p in closed.partials:
                rollup.add_partial(p)
        rollup.add_marker(Marker(src=0, closed_through=node_stage.progress.closed_through))
        for ws in rollup.due():
            records.extend(rollup.close(ws).records)

    for i in range(1, SECONDS + 1):
        ts = T0 + i
        for n in NODES:
            out = envelopes[n].add(ts, [_sample(n, g, ts) for g in GPUS],
                                   [_report(n, g, ts) for g in GPUS])
            if out is not None:
                publish(*out)
    for n in NODES:
        left = envelopes[n].take()
        if len(left[0]):
            publish(*left)
    close(node_stage.flush_idle())
    return records, messages


def test_windows_are_identical_for_k1_and_k5() -> None:
    one, messages_1 = _run(1.0)
    five, messages_5 = _run(5.0)
    # 3 nodes x 40 s x 2 topics = 240 messages at K=1; 5 times fewer at K=5.
    assert (messages_1, messages_5) == (240, 48)
    key = lambda r: (r.scope, r.key, r.window_start)  # noqa: E731
    assert sorted(map(key, one)) == sorted(map(key, five))
    # 4 windows x (3 nodes + 3 workloads + 1 fleet) = 28 records, each exactly once.
    assert len(one) == len(set(map(key, one))) == 28
    by_key = {key(r): r.model_dump() for r in five}
    for r in one:
        assert r.model_dump() == by_key[key(r)]  # every field, bit for bit
        # Each GPU-window: 10 s of samples; MFU (0.3 + 0.5) / 2 = 0.4 for every node,
        # job and the fleet; nothing late, nothing duplicated.
        assert r.gpus == (len(GPUS) * len(NODES) if r.scope == "fleet" else len(GPUS))
        assert r.gpu_seconds == pytest.approx(10.0 * r.gpus)
        assert r.mfu == pytest.approx(0.4)
        assert r.late_events == 0 and r.duplicates == 0
