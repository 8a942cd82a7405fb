"""The stream stage's decisions as plain values (streams.partition): what a partition sends,
writes and persists for given messages, when each message's ack is released, and that a
crash at any step boundary (state dropped, rebuilt from the last persisted snapshot,
input replayed from the committed offset) gives exactly the windows of a run without one.
No Faust, no Kafka: the adapter's part (carry a step out, then ``done``) is played here."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest

from mfu.config import WindowSettings
from mfu.events import FlopReport, GpuSample, batch
from mfu.peaks import peak_flops_per_s
from streams.aggregate import Marker, Partial
from streams.partition import NodePartition, RollupPartition, Step, Topics
from streams.stages import Progress

T0 = 1_700_000_000.0
H100 = "NVIDIA H100 80GB HBM3"
PEAK = peak_flops_per_s(H100, "bf16")
W = WindowSettings(size_s=10, grace_s=2, idle_timeout_s=5)
TOPICS = Topics(telemetry="tel", flops="flops", partials="partials", deadletter="dead",
                late="late", outputs={"node": "out.node", "workload": "out.workload",
                                      "fleet": "out.fleet"})
HORIZON = T0 + 1e6  # no clock skew unless a test says so


@dataclass
class Msg:
    topic: str
    offset: int
    value: bytes | None
    key: bytes | None = b"n1"
    partition: int = 0


def tel(offset: int, second: int, *, node: str = "n1", gpus: int = 2) -> Msg:
    """One node-interval of telemetry: ``gpus`` samples at T0 + second."""
    events = [GpuSample(event_id=f"{node}-g{g}-{second}", node=node, gpu_uuid=f"g{g}",
                        gpu_index=g, gpu_name=H100, ts=T0 + second, interval_s=1.0,
                        sm_util=0.9, mem_util=0.3, tensor_active=0.5, workloads=["job"])
              for g in range(gpus)]
    return Msg("tel", offset, batch(events), key=node.encode())


def flops(offset: int, second: int, *, node: str = "n1", gpus: int = 2,
          mfu: float = 0.4) -> Msg:
    events = [FlopReport(event_id=f"job-{g}-{second}", workload="job", rank=g, node=node,
                         gpu_uuid=f"g{g}", start=T0 + second - 1, end=T0 + second,
                         flops=mfu * PEAK, precision="bf16") for g in range(gpus)]
    return Msg("flops", offset, batch(events), key=node.encode())


def part(restored: Progress | None = None, n_partials: int = 2) -> NodePartition:
    return NodePartition(0, W, "fleet", TOPICS, n_partials, restored, now=0.0)


def carry_out(p: NodePartition | RollupPartition, step: Step | None,
              persisted: dict[str, bytes] | None = None) -> list[str]:
    """The adapter's part: everything sent is acknowledged, the snapshot written; then
    ``done`` and the released acks."""
    if step is not None:
        if step.progress is not None and persisted is not None:
            persisted["progress"] = step.progress
        p.done(step)
    return p.release()


def take_all(p: NodePartition, msgs: list[Msg], now: float = 1.0) -> None:
    for m in msgs:
        p.take(m, f"{m.topic}@{m.offset}", now, HORIZON)


def interleaved(seconds: range, start: int = 0) -> list[Msg]:
    """Telemetry and FLOP reports of each second, offsets per topic from ``start``."""
    out = []
    for i, s in enumerate(seconds):
        out += [tel(start + i, s), flops(start + i, s)]
    return out


# --------------------------------------------------------------------------- one step


def test_a_due_window_becomes_one_step_in_the_contract_order() -> None:
    p = part(n_partials=3)
    take_all(p, interleaved(range(1, 11)))  # window [T0, T0+10) filled, not yet due
    assert p.cut(1.0, frozenset()) is None
    take_all(p, interleaved(range(11, 14), start=10))  # watermark T0+13 >= end + grace
    step = p.cut(1.0, frozenset())
    assert step is not None and step.number == 1 and step.snapshot == 1
    topics = [s.topic for s in step.sends]
    assert topics.count("out.node") == 1 and "partials" in topics
    (rec,) = step.records
    assert rec.scope == "node" and rec.window_start == T0
    assert rec.mfu == pytest.approx(0.4)
    # A marker per partials partition, after the partials, saying window 0 is closed.
    assert [m.partition for m in step.markers] == [0, 1, 2]
    marker = Marker.model_validate_json(step.markers[0].value)
    assert marker.closed_through == T0 + 10 and not marker.idle
    assert Progress.model_validate_json(step.progress).closed_through == T0 + 10
    assert step.window_end == T0 + 10


def test_acks_wait_for_the_step_that_makes_them_durable_and_go_in_offset_order() -> None:
    p = part()
    take_all(p, interleaved(range(1, 14)))
    assert p.release() == []  # nothing is durable before the step is carried out
    step = p.cut(1.0, frozenset())
    assert p.release() == []
    released = carry_out(p, step)
    # Seconds 1..10 count only in window 0 (offsets 0..9 of each topic); second 11's
    # sample (ts T0+11) and report (end T0+11) fall in window 10, still open.
    assert released == [f"tel@{i}" for i in range(10)] + [f"flops@{i}" for i in range(10)]
    assert p.acks.lowest_pending() == {"tel": 10, "flops": 10}


def test_steps_pipeline_the_next_run_is_taken_while_the_last_step_is_in_flight() -> None:
    p = part()
    take_all(p, interleaved(range(1, 14)))
    first = p.cut(1.0, frozenset())
    take_all(p, interleaved(range(14, 24), start=13))  # window 10 becomes due
    second = p.cut(1.0, frozenset())
    assert first is not None and second is not None
    assert (first.number, second.number) == (1, 2)
    assert (first.snapshot, second.snapshot) == (1, 2)
    # The second snapshot was taken after the second close, not when the first was durable.
    assert Progress.model_validate_json(second.progress).closed_through == T0 + 20
    with pytest.raises(ValueError, match="in order"):
        p.done(second)  # steps are carried out in order
    p.done(first)
    # First done: window 0's messages only; the second step's messages still wait.
    assert p.durable_closed_through == T0 + 10
    assert p.release() == [f"tel@{i}" for i in range(10)] + [f"flops@{i}" for i in range(10)]
    carry_out(p, second)
    assert p.acks.lowest_pending() == {"tel": 20, "flops": 20}


def test_a_dead_letter_holds_its_message_and_those_after_it_until_sent() -> None:
    p = part()
    bad = Msg("tel", 0, b'{"schema": "batch/1", "events": [{"node": "n1"}]}')
    take_all(p, [bad])
    step = p.cut(1.0, frozenset())
    assert step is not None and step.snapshot == 0 and step.progress is None
    (dl,) = step.sends
    assert dl.topic == "dead" and json.loads(dl.value)["offset"] == 0
    assert p.tally.dead_reasons and p.release() == []
    assert carry_out(p, step) == ["tel@0"]


def test_the_guard_dead_letters_a_message_that_fails_inside_the_stage() -> None:
    p = part()

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("stage bug")

    p.stage.add_many = boom  # type: ignore[method-assign]
    take_all(p, [tel(0, 1), tel(1, 2)])
    step = p.cut(1.0, frozenset())
    assert step is not None
    reasons = [json.loads(s.value)["reason"] for s in step.sends]
    assert reasons == ["processing failed: RuntimeError: stage bug"] * 2
    assert carry_out(p, step) == ["tel@0", "tel@1"]


def test_late_events_go_to_the_late_topic_and_wait_in_a_snapshot() -> None:
    p = part()
    take_all(p, interleaved(range(1, 14)))
    carry_out(p, p.cut(1.0, frozenset()))
    late = tel(13, 5)  # window 0 is closed
    take_all(p, [late])
    step = p.cut(1.0, frozenset())
    assert step is not None and step.snapshot == 2
    assert [s.topic for s in step.sends] == ["late", "late"]
    assert Progress.model_validate_json(step.progress).late == [("node", "n1", 2)]
    entry = p.acks.queues["tel"][-1]
    assert entry.event == "tel@13" and entry.seq == 1  # needs snapshot 2
    carry_out(p, step)
    # Only its place behind the open window's messages holds it now.
    assert p.snapshots_done == 2 and entry.seq < p.snapshots_done and entry.until is None


def test_clock_skew_and_key_mismatch_are_refused_with_reasons() -> None:
    p = part()
    ahead = tel(0, 100)
    wrong_key = tel(1, 1)
    wrong_key.key = b"n9"
    p.take(ahead, "a", 1.0, T0 + 50)
    p.take(wrong_key, "b", 1.0, HORIZON)
    reasons = [r.split(":")[0] for r in p.tally.dead_reasons]
    assert reasons == ["clock skew", "clock skew", "key/node mismatch", "key/node mismatch"]


def test_an_offset_jump_asks_for_a_seek_and_drops_until_the_gap_is_filled() -> None:
    p = part()
    assert p.take(tel(0, 1), "t0", 1.0, HORIZON)
    assert not p.take(tel(3, 4), "t3", 1.0, HORIZON)  # 1 and 2 missing
    assert p.seeks == [("tel", 1)] and p.tally.gaps == 1
    assert not p.take(tel(4, 5), "t4", 1.0, HORIZON)  # still waiting for 1
    assert p.take(tel(1, 2), "t1", 1.0, HORIZON)
    assert not p.take(tel(1, 2), "t1-again", 1.0, HORIZON)  # a redelivery
    assert p.tally.redelivered == 1


def test_idle_partition_closes_everything_and_says_so_then_resumes() -> None:
    p = part()
    take_all(p, interleaved(range(1, 4)), now=1.0)
    assert p.tick(3.0, frozenset()) is None  # quiet for 2 s < idle_timeout 5 s
    step = p.tick(7.0, frozenset())
    assert step is not None and [r.window_start for r in step.records] == [T0]
    assert Marker.model_validate_json(step.markers[0].value).idle
    carry_out(p, step)
    assert p.acks.pending() == 0
    # Data again: the next step tells the roll-up to wait for this partition.
    take_all(p, interleaved(range(30, 31), start=3), now=8.0)
    resume = p.cut(8.0, frozenset())
    assert resume is not None and not Marker.model_validate_json(resume.markers[0].value).idle
    assert p.release() == []  # the resume marker must be sent first
    assert carry_out(p, resume) == []  # (and their window is open)


def test_a_backlog_keeps_a_silent_input_from_counting_as_idle() -> None:
    p = part()
    take_all(p, interleaved(range(1, 4)), now=1.0)
    assert p.tick(100.0, frozenset({"tel"})) is None  # data waits at the broker


# --------------------------------------------------------------------------- crashes


def run_without_crash(msgs: list[Msg]) -> dict[float, str]:
    p = part()
    records: dict[float, str] = {}
    for chunk in chunks(msgs):
        take_all(p, chunk)
        step = p.cut(1.0, frozenset())
        if step is not None:
            records.update({r.window_start: r.to_json().decode() for r in step.records})
            carry_out(p, step)
    return records


def chunks(msgs: list[Msg], size: int = 5) -> list[list[Msg]]:
    return [msgs[i:i + size] for i in range(0, len(msgs), size)]


def normalized(record_json: str) -> dict:
    rec = json.loads(record_json)
    rec.pop("event_id", None)
    rec.pop("emitted_at", None)
    return rec


@pytest.mark.parametrize("seed", range(12))
def test_a_crash_at_any_step_boundary_replays_to_the_same_windows(seed: int) -> None:
    """Steps cut but not done are lost with the process (up to two in flight); the new
    state comes from the last done snapshot and replays each topic from its lowest
    unreleased offset (what Faust committed)."""
    rnd = random.Random(seed)
    msgs = interleaved(range(1, 60))
    expected = run_without_crash(msgs)
    p = part()
    persisted: dict[str, bytes] = {}
    out: dict[float, str] = {}
    in_flight: list[Step] = []
    crash_after = rnd.randrange(3, len(chunks(msgs)) - 3)
    committed = {"tel": 0, "flops": 0}
    for i, chunk in enumerate(chunks(msgs)):
        take_all(p, chunk)
        step = p.cut(1.0, frozenset())
        if step is not None:
            # Sent records may reach the topic although the step never finishes.
            out.update({r.window_start: r.to_json().decode() for r in step.records
                        if r.window_start not in out})
            in_flight.append(step)
        while len(in_flight) > rnd.choice([0, 1, 2]):
            carry_out(p, in_flight.pop(0), persisted)
        for topic, offset in p.acks.lowest_pending().items():
            committed[topic] = offset
        for topic in committed:
            if topic not in p.acks.lowest_pending():
                committed[topic] = p.acks.taken.get(topic, -1) + 1
        if i == crash_after:
            break
    # Crash: in-flight steps lost; restart from the snapshot and the committed offsets.
    restored = Progress.model_validate_json(persisted["progress"]) if persisted else None
    p = part(restored)
    replay = [m for m in msgs if m.offset >= committed[m.topic]]
    for chunk in chunks(replay):
        take_all(p, chunk)
        step = p.cut(1.0, frozenset())
        if step is not None:
            for r in step.records:
                out.setdefault(r.window_start, r.to_json().decode())
            carry_out(p, step, persisted)
    assert sorted(out) == sorted(expected)
    for ws in expected:
        assert normalized(out[ws]) == normalized(expected[ws]), ws


# --------------------------------------------------------------------------- roll-up


def partial_msg(offset: int, src: int, ws: float, flops_total: float) -> Msg:
    p = Partial(scope="fleet", key="fleet", window_start=ws, window_end=ws + 10,
                node=f"n{src}", gpu_seconds=10.0, gpus=1, achieved_flops=flops_total,
                peak_flops=flops_total / 0.4)
    return Msg("partials", offset, p.model_dump_json(by_alias=True).encode(), key=b"fleet")


def marker_msg(offset: int, src: int, closed_through: float, idle: bool = False) -> Msg:
    m = Marker(src=src, closed_through=closed_through, idle=idle)
    return Msg("partials", offset, m.model_dump_json(by_alias=True).encode(), key=None)


def rollup_part() -> RollupPartition:
    return RollupPartition(0, W, "fleet", TOPICS, 2, None, now=0.0)


def test_rollup_closes_a_window_once_every_source_has_closed_it() -> None:
    r = rollup_part()
    msgs = [partial_msg(0, 0, T0, 1e15), marker_msg(1, 0, T0 + 10),
            partial_msg(2, 1, T0, 3e15)]
    for m in msgs:
        r.take(m, m.offset, 1.0)
    assert r.cut() is None  # source 1 has not closed the window yet: nothing to do
    assert r.release() == []
    r.take(marker_msg(3, 1, T0 + 10), 3, 1.0)
    step = r.cut()
    assert step is not None and step.snapshot >= 1
    (rec,) = step.records
    assert rec.scope == "fleet" and rec.window_start == T0
    carry_out(r, step)
    assert r.acks.pending() == 0


def test_rollup_persists_a_marker_at_once_when_nothing_is_open() -> None:
    r = rollup_part()
    r.take(marker_msg(0, 0, T0 + 10), "m", 1.0)
    step = r.cut()
    assert step is not None and step.records == [] and step.progress is not None
    assert carry_out(r, step) == ["m"]


def test_rollup_dead_letters_a_bad_partial_and_acks_it_once_sent() -> None:
    r = rollup_part()
    r.take(Msg("partials", 0, b"not json", key=None), "bad", 1.0)
    step = r.cut()
    assert step is not None and step.sends[0].topic == "dead"
    assert r.release() == []
    assert carry_out(r, step) == ["bad"]
