"""NodeStage.add_many (its inlined single-window fast path included) gives exactly what
NodeStage.add gives event by event: returned late/duplicate/max-window, window values."""

from __future__ import annotations

import random

import pytest

from mfu.config import WindowSettings
from mfu.events import FlopReport, GpuSample
from streams.fastdecode import decode_structs, to_model
from streams.stages import NodeStage

T0 = 1_700_000_000.0
H100 = "NVIDIA H100 80GB HBM3"


def _events(rng: random.Random, t: float, n: int) -> tuple[list[GpuSample], list[FlopReport]]:
    samples, reports = [], []
    for i in range(n):
        node = f"n{rng.randrange(3)}"
        gpu = f"{node}-g{rng.randrange(2)}"
        ts = t + rng.choice([0.0, 0.5, 1.0, 9.7, 10.0, rng.uniform(-12, 12)])
        interval = rng.choice([1.0, 1.0, 0.3, 2.5, 25.0])
        eid = f"s{rng.randrange(n * 2)}" if rng.random() < 0.2 else f"s-{t}-{i}"
        samples.append(GpuSample(
            event_id=eid, node=node, gpu_uuid=gpu, gpu_index=0, gpu_name=H100,
            mig_profile=None, ts=ts, interval_s=interval, sm_util=rng.random(),
            mem_util=0.3, tensor_active=rng.choice([None, 0.5]), workloads=["a", "b"][: rng.randrange(3)]))
        start = t + rng.uniform(-12, 12)
        end = start + rng.choice([1.0, 0.4, 3.0, 15.0])
        eid = f"r{rng.randrange(n * 2)}" if rng.random() < 0.2 else f"r-{t}-{i}"
        reports.append(FlopReport(
            event_id=eid, workload=rng.choice(["a", "b"]), rank=rng.randrange(2), node=node,
            gpu_uuid=gpu, start=start, end=end, flops=rng.uniform(0, 1e15),
            precision=rng.choice(["bf16", "fp8"])))
    return samples, reports


def _dump(closed):
    return [(c.window_start, [r.model_dump() for r in c.records],
             [p.model_dump() for p in c.partials]) for c in closed]


@pytest.mark.parametrize("hop", [None, 5.0])
@pytest.mark.parametrize("seed", range(6))
def test_add_many_equals_add(seed: int, hop: float | None) -> None:
    rng = random.Random(seed)
    ws = WindowSettings(size_s=10, hop_s=hop, grace_s=2, idle_timeout_s=5)
    a, b = NodeStage(ws, inputs=("t", "f")), NodeStage(ws, inputs=("t", "f"))
    # c: what the worker does, the checked msgspec Structs with the type given per message
    c = NodeStage(ws, inputs=("t", "f"))
    closed_a, closed_b, closed_c = [], [], []
    offset = 0
    for step in range(12):
        t = T0 + step * 7.0
        samples, reports = _events(rng, t, 15)
        for topic, evs in (("t", samples), ("f", reports)):
            offset += 1
            replay_offset = offset if rng.random() > 0.1 else 0  # an old offset: replay
            exp_max, exp_late, exp_dup = None, [], 0
            for ev in evs:
                d = a.add(ev, topic=topic, offset=replay_offset)
                if d.max_window is not None and (exp_max is None or d.max_window > exp_max):
                    exp_max = d.max_window
                if d.late:
                    exp_late.append(ev)
                exp_dup += d.duplicate
            got = b.add_many(evs, topic=topic, offset=replay_offset)
            assert got == (exp_max, exp_late, exp_dup)
            model = GpuSample if topic == "t" else FlopReport
            raw = b'{"schema":"batch/1","events":[' + b",".join(e.to_json() for e in evs) + b"]}"
            structs, bad = decode_structs(raw, model)
            assert bad == [] and not any(isinstance(e, model) for e in structs)  # fast path
            max_c, late_c, dup_c = c.add_many(structs, topic=topic, offset=replay_offset,
                                              is_sample=topic == "t")
            assert (max_c, [to_model(e) for e in late_c], dup_c) == got
        assert a.progress == b.progress == c.progress and a.registry == b.registry == c.registry
        assert a.pending_late == b.pending_late == c.pending_late
        for ws_ in a.due():
            closed_a.append(a.close(ws_))
        for ws_ in b.due():
            closed_b.append(b.close(ws_))
        for ws_ in c.due():
            closed_c.append(c.close(ws_))
        assert _dump(closed_a) == _dump(closed_b) == _dump(closed_c)
    last_a = _dump([a.close(w) for w in a.flush_idle()])
    assert last_a == _dump([b.close(w) for w in b.flush_idle()])
    assert last_a == _dump([c.close(w) for w in c.flush_idle()])
