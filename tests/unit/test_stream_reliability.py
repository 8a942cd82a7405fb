"""Pure parts of the stream stage's delivery guarantees: in-order acks, the input guard's
decode reasons, dead-letter truncation, partition planning and static instance ids."""

from __future__ import annotations

import json
import multiprocessing
import random
from pathlib import Path

import pytest

from mfu.config import WindowSettings
from mfu.events import DeadLetter, FlopReport, GpuSample
from mfuio.faustapp import static_instance_id
from mfuio.kafka_admin import PartitionCountError, plan_partitions
from streams.deadletter import dead_letter_value
from streams.decode import decode
from streams.frontier import InOrderAcks
from streams.stages import NodeStage

NEG_INF = float("-inf")

# --------------------------------------------------------------------------- frontier


def test_release_stops_at_the_first_message_not_durable() -> None:
    acks = InOrderAcks()
    # offsets 0..4 of one topic: 0 and 1 count in window 0, 2 in window 10, 3 has no
    # valid event (a dead letter), 4 in window 0 again.
    for offset, until in [(0, 0.0), (1, 0.0), (2, 10.0), (3, None), (4, 0.0)]:
        acks.add("t", offset, offset, until=until)
    # Nothing closed: not even the message without windows (3) may pass 0..2.
    assert acks.release(NEG_INF, 0) == []
    # Window 0 closed (closed_through 10): 0 and 1; 2 waits for window 10, so 3 and 4
    # wait behind it although they are done.
    assert acks.release(10.0, 1) == [0, 1]
    assert acks.lowest_pending() == {"t": 2}
    assert acks.release(20.0, 2) == [2, 3, 4]
    assert acks.pending() == 0


def test_first_message_not_done_blocks_everything_even_with_nothing_committed() -> None:
    # The case: Faust committed past an unacked message right after the
    # committed offset, and with nothing committed yet did not check at all.
    acks = InOrderAcks()
    acks.add("t", 1505, "open-window", until=30.0)
    acks.add("t", 1506, "closed-window", until=20.0)
    acks.add("t", 1507, "closed-window", until=20.0)
    assert acks.release(30.0, 1) == []  # window 30 not closed: nothing, not 1506-1507
    assert acks.release(40.0, 2) == ["open-window", "closed-window", "closed-window"]


def test_state_effects_wait_for_a_persist_after_them() -> None:
    acks = InOrderAcks()
    acks.add("t", 0, "late", seq=3)  # processed after persist #3 completed
    assert acks.waiting_for_persist(3)
    assert acks.release(100.0, 3) == []
    assert acks.release(100.0, 4) == ["late"]
    assert not acks.waiting_for_persist(4)


def test_topics_release_independently_and_redeliveries_are_refused() -> None:
    acks = InOrderAcks()
    acks.add("a", 5, "a5", until=10.0)
    acks.add("b", 7, "b7")
    assert acks.release(0.0, 0) == ["b7"]
    assert not acks.is_new("a", 5) and not acks.is_new("a", 4) and acks.is_new("a", 6)
    with pytest.raises(ValueError, match="out of order"):
        acks.add("a", 5, "again")


def test_random_release_never_passes_an_unfinished_message() -> None:
    rng = random.Random(11)
    acks = InOrderAcks()
    until = {}
    for offset in range(500):
        until[offset] = rng.choice([None, *[float(10 * k) for k in range(8)]])
        acks.add("t", offset, offset, until=until[offset])
    released: list[int] = []
    for closed_through in [float(10 * k) for k in range(9)]:
        released += acks.release(closed_through, 0)
        # Released = the longest prefix whose windows are all below closed_through.
        expect = 0
        while expect < 500 and (until[expect] is None or until[expect] < closed_through):
            expect += 1
        assert released == list(range(expect))


# --------------------------------------------------------------------------- node stage


def _report(eid: str, start: float) -> FlopReport:
    return FlopReport(event_id=eid, workload="w", rank=0, node="n", gpu_uuid="g",
                      start=start, end=start + 1, flops=1e12, precision="bf16")


def test_a_duplicates_only_message_waits_for_its_window() -> None:
    stage = NodeStage(WindowSettings(size_s=10, grace_s=0), inputs=("f",))
    t0 = 1_700_000_000.0
    first, _, dups = stage.add_many([_report("e1", t0 + 1)], topic="f", offset=0)
    assert (first, dups) == (t0, 0)
    again, _, dups = stage.add_many([_report("e1", t0 + 1)], topic="f", offset=1)
    # It changed window t0's ``duplicates``: it must not be committed before t0 closes.
    assert (again, dups) == (t0, 1)


def test_late_counts_survive_in_progress() -> None:
    settings = WindowSettings(size_s=10, grace_s=0)
    stage = NodeStage(settings, inputs=("f",))
    t0 = 1_700_000_000.0
    stage.add_many([_report("e1", t0 + 1)], topic="f", offset=0)
    stage.add_many([_report("e2", t0 + 12)], topic="f", offset=1)  # watermark t0+13
    for ws in stage.due():
        stage.close(ws)
    _, late, _ = stage.add_many([_report("e3", t0 + 2)], topic="f", offset=2)
    assert len(late) == 1
    restored = NodeStage(settings, progress=stage.snapshot(), inputs=("f",))
    # one late report: one for its node, one for its workload
    assert restored.pending_late == {("node", "n"): 1, ("workload", "w"): 1}
    # Replayed from the committed offset, the late message (offset 2 <= persisted) is a
    # replay and is not counted again.
    _, late, _ = restored.add_many([_report("e3", t0 + 2)], topic="f", offset=2)
    assert late == [] and restored.pending_late[("node", "n")] == 1


# --------------------------------------------------------------------------- decode


SAMPLE = {"schema": "gpu_sample/1", "event_id": "s1", "node": "n1", "gpu_uuid": "G",
          "gpu_index": 0, "gpu_name": "NVIDIA H100 80GB HBM3", "ts": 1_700_000_001.0,
          "interval_s": 1.0, "sm_util": 0.5, "mem_util": 0.5, "workloads": ["job"]}
REPORT = {"schema": "flop_report/1", "event_id": "r1", "workload": "job", "rank": 0,
          "node": "n1", "gpu_uuid": "G", "start": 1_700_000_000.0, "end": 1_700_000_001.0,
          "flops": 5e14, "precision": "bf16"}


@pytest.mark.parametrize(("raw", "model", "reason"), [
    (None, GpuSample, "tombstone"),
    (b"[" * 50_000 + b"]" * 50_000, GpuSample, "nesting too deep"),
    (b'{"schema":"batch/1","events":' + b"[" * 5000 + b"]" * 5000 + b"}", FlopReport,
     "nesting too deep"),
    (b" " * 1_048_577, GpuSample, "oversized value: 1048577 bytes"),
    (json.dumps(dict(REPORT, flops="5e14")).encode(), FlopReport,
     "flops: Input should be a valid number"),
    (json.dumps(dict(REPORT, rank="0")).encode(), FlopReport, "rank: Input should be"),
    (json.dumps(dict(SAMPLE, sm_util=True)).encode(), GpuSample, "sm_util: Input should be"),
    (json.dumps(dict(REPORT, workload="job\n1")).encode(), FlopReport,
     "workload: must not contain control characters"),
    (json.dumps(dict(SAMPLE, workloads=["a\tb"])).encode(), GpuSample,
     "workloads.0: must not contain control characters"),
    (json.dumps(dict(SAMPLE, node="n\u00001")).encode(), GpuSample,
     "node: must not contain control characters"),
    (b"\x00\x01 not json", GpuSample, "not valid JSON"),
])
def test_bad_inputs_get_a_clear_reason(raw: bytes | None, model: type, reason: str) -> None:
    good, bad = decode(raw, model)
    assert good == [] and len(bad) == 1
    assert reason in bad[0].reason, bad[0].reason


def test_integers_still_count_as_floats() -> None:
    good, bad = decode(json.dumps(dict(REPORT, flops=500_000_000_000_000)).encode(),
                       FlopReport)
    assert bad == [] and good[0].flops == 5e14


# --------------------------------------------------------------------------- dead letters


def test_dead_letter_of_an_oversized_value_fits_and_says_so() -> None:
    original = "\x01" * 1_048_577  # escapes to 6 bytes per character in JSON
    value = dead_letter_value(source_topic="t", partition=3, offset=9, reason="oversized",
                              original=original, original_bytes=1_048_577, max_bytes=900_000)
    assert len(value) <= 900_000
    rec = DeadLetter.model_validate_json(value)
    assert rec.truncated and rec.original_bytes == 1_048_577 and rec.reason == "oversized"
    assert original.startswith(rec.original) and len(rec.original) > 100_000
    small = DeadLetter.model_validate_json(dead_letter_value(
        source_topic="t", partition=0, offset=1, reason="r", original="abc", index=2))
    assert (small.original, small.truncated, small.original_bytes) == ("abc", False, 3)
    assert small.event_id == "t:0:1:2"


# --------------------------------------------------------------------------- partitions


def test_worker_adopts_the_input_topics_count() -> None:
    counts = {"tel": 4, "flops": 4, "partials": 4}
    assert plan_partitions(counts, inputs=["tel", "flops"], copartitioned=["partials"],
                           configured=8) == 4
    assert plan_partitions({}, inputs=["tel", "flops"], copartitioned=["partials"],
                           configured=8) == 8
    assert plan_partitions({"flops": 6}, inputs=["tel", "flops"], copartitioned=[],
                           configured=8) == 6


def test_mismatched_counts_are_refused_with_topic_counts_and_fix() -> None:
    with pytest.raises(PartitionCountError) as exc:
        plan_partitions({"tel": 4, "flops": 8}, inputs=["tel", "flops"], copartitioned=[],
                        configured=8, bootstrap="b:9092")
    text = str(exc.value)
    assert "tel has 4" in text and "flops has 8" in text
    assert "--alter --topic tel --partitions 8" in text
    with pytest.raises(PartitionCountError) as exc:
        plan_partitions({"tel": 4, "flops": 4, "partials": 8}, inputs=["tel", "flops"],
                        copartitioned=["partials"], configured=8)
    assert "partials has 8 partitions, expected 4" in str(exc.value)
    assert "--delete --topic partials" in str(exc.value)


# --------------------------------------------------------------------------- membership


def _take_id(lock_dir: str, out: multiprocessing.Queue, done: multiprocessing.Event  # type: ignore[type-arg]
             ) -> None:
    out.put(static_instance_id("app", host="h", lock_dir=Path(lock_dir)))
    done.wait(20)  # hold the slot until told to exit


def _spawn(ctx, lock_dir: Path):  # type: ignore[no-untyped-def]
    out, done = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_take_id, args=(str(lock_dir), out, done))
    p.start()
    return p, out.get(timeout=10), done


def test_static_instance_ids_are_unique_while_alive_and_reused_after_death(
        tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    p1, id1, _ = _spawn(ctx, tmp_path)
    p2, id2, done2 = _spawn(ctx, tmp_path)
    assert (id1, id2) == ("h-0", "h-1")  # slot 0 is held by a live process
    p1.kill()  # SIGKILL: the kernel drops its lock
    p1.join(10)
    p3, id3, done3 = _spawn(ctx, tmp_path)
    assert id3 == "h-0"  # the restart gets the dead one's id back
    for p, done in ((p2, done2), (p3, done3)):
        done.set()
        p.join(10)
