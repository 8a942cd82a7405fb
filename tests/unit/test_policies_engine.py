"""Each rule kind of the policies engine on hand-built MFU window sequences."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfu.events import CloudEvent, MfuWindow
from policies.cloudevents import event_id, rfc3339
from policies.engine import Engine
from policies.incidents import incident_id
from policies.rules import parse_rules

T0 = 1_700_000_000.0
H100 = "NVIDIA H100 80GB HBM3"


def win(i: int, mfu: float | None = 0.5, **fields: Any) -> MfuWindow:
    """Window ``i`` (10 s, starting at T0 + 10 i) of workload ``job-a`` unless overridden."""
    base: dict[str, Any] = {
        "schema": "mfu_window/1",
        "event_id": f"w{i}",
        "scope": "workload",
        "key": "job-a",
        "window_start": T0 + 10 * i,
        "window_end": T0 + 10 * i + 10,
        "mfu": mfu,
        "achieved_flops": (mfu or 0.0) * 9.89e15,
        "peak_flops": 9.89e15,
        "gpu_seconds": 10.0,
        "gpus": 1,
    }
    base.update(fields)
    return MfuWindow.model_validate(base)


def engine(rules_yaml: str, **top: Any) -> Engine:
    return Engine(parse_rules(rules_yaml))


class Run:
    """Feeds windows through an engine, keeping one entity's state per subject."""

    def __init__(self, eng: Engine):
        self.eng = eng
        self.states: dict[str, Any] = {}
        self.events: list[CloudEvent] = []

    def feed(self, *windows: MfuWindow) -> list[CloudEvent]:
        out = []
        for w in windows:
            subject = f"{w.scope}/{w.key}"
            result = self.eng.process(w, self.states.get(subject))
            self.states[subject] = result.state
            out.extend(result.events)
        self.events.extend(out)
        return out


def statuses(events: list[CloudEvent]) -> list[tuple[str, str]]:
    return [(e.type, e.data["status"]) for e in events]


THRESHOLD = """
rules:
  - id: low
    kind: threshold
    scope: workload
    metric: mfu
    below: 0.2
    clear_above: 0.25
    for_windows: 3
    clear_windows: 2
    cooldown_s: 60
    event: underutilized
"""


def test_threshold_opens_after_k_windows_and_clears_after_m() -> None:
    run = Run(engine(THRESHOLD))
    assert run.feed(win(0, 0.1), win(1, 0.1)) == []
    (opened,) = run.feed(win(2, 0.1))
    assert opened.type == "io.mfu.underutilized.v1"
    d = opened.data
    assert d["status"] == "open" and d["rule"] == "low" and d["rule_kind"] == "threshold"
    assert d["windows"] == {"start": T0, "end": T0 + 30, "count": 3}
    assert d["observed"]["mfu_mean"] == pytest.approx(0.1)
    assert d["expected"] == {"below": 0.2, "clear_above": 0.25}
    assert d["incident"].startswith("inc-")
    # Inside the hysteresis band (0.2 <= mfu <= 0.25): neither bad nor good.
    assert run.feed(win(3, 0.22), win(4, 0.3), win(5, 0.24), win(6, 0.3)) == []
    (resolved,) = run.feed(win(7, 0.3))
    assert resolved.data["status"] == "resolved"
    assert resolved.data["incident"] == d["incident"]
    assert resolved.data["windows"]["start"] == T0 + 60
    assert resolved.data["windows"]["incident_start"] == T0
    assert resolved.data["windows"]["incident_duration_s"] == 80.0


def test_threshold_streak_broken_by_a_good_window_and_cooldown_holds() -> None:
    run = Run(engine(THRESHOLD))
    assert run.feed(win(0, 0.1), win(1, 0.1), win(2, 0.21), win(3, 0.1), win(4, 0.1)) == []
    assert statuses(run.feed(win(5, 0.1))) == [("io.mfu.underutilized.v1", "open")]
    assert statuses(run.feed(win(6, 0.3), win(7, 0.3))) == [
        ("io.mfu.underutilized.v1", "resolved")
    ]  # resolved at window 7, ends T0+80: cooldown until T0+140
    assert run.feed(win(8, 0.1), win(9, 0.1), win(10, 0.1), win(11, 0.1), win(12, 0.1)) == []
    (again,) = run.feed(win(14, 0.1))  # starts T0+140: the cooldown is over
    assert again.data["status"] == "open"
    assert again.data["windows"]["start"] == T0 + 80  # evidence counted during cooldown
    assert again.data["incident"] != run.events[0].data["incident"]


def test_threshold_above_with_clear_below() -> None:
    run = Run(
        engine("""
rules:
  - {id: hot, kind: threshold, scope: node, metric: sm_util, above: 0.9, clear_below: 0.8,
     for_windows: 2, clear_windows: 1, cooldown_s: 0}
""")
    )
    node = {"scope": "node", "key": "n1"}
    assert run.feed(win(0, sm_util=0.95, **node)) == []
    (e,) = run.feed(win(1, sm_util=0.97, **node))
    assert e.subject == "node/n1" and e.type == "io.mfu.threshold.v1"
    assert e.data["observed"]["sm_util_mean"] == pytest.approx(0.96)
    assert run.feed(win(2, sm_util=0.85, **node)) == []
    assert statuses(run.feed(win(3, sm_util=0.7, **node))) == [("io.mfu.threshold.v1", "resolved")]


def test_cloudevent_envelope_is_deterministic() -> None:
    run = Run(engine(THRESHOLD))
    run.feed(*(win(i, 0.1) for i in range(3)))
    (e,) = run.events
    assert e.specversion == "1.0" and e.datacontenttype == "application/json"
    assert e.subject == "workload/job-a"
    assert e.source == "/mfu/policies/low"
    assert e.time == rfc3339(T0 + 30) == "2023-11-14T22:13:50.000Z"
    assert e.id == event_id("low", "workload/job-a", T0 + 20, "open")
    again = Run(engine(THRESHOLD))
    again.feed(*(win(i, 0.1) for i in range(3)))
    assert again.events[0].id == e.id and again.events[0].data == e.data
    json.loads(e.to_json())  # structured mode: one JSON object


def test_duplicate_and_stale_windows_are_processed_once() -> None:
    eng = engine(THRESHOLD)
    state = None
    for i in range(2):
        state = eng.process(win(i, 0.1), state).state
    dup = eng.process(win(1, 0.1), state)
    assert dup.duplicate and dup.events == [] and dup.state is state
    stale = eng.process(win(0, 0.1), state)
    assert stale.duplicate
    # The duplicate did not count: the third *distinct* low window opens.
    assert statuses(eng.process(win(2, 0.1), state).events) == [("io.mfu.underutilized.v1", "open")]


def test_restart_mid_incident_does_not_refire_and_resolves_once() -> None:
    eng = engine(THRESHOLD)
    state: Any = None
    events: list[CloudEvent] = []
    for i in range(4):
        r = eng.process(win(i, 0.1), state)
        state, events = r.state, events + r.events
    assert statuses(events) == [("io.mfu.underutilized.v1", "open")]
    # "Restart": state goes through JSON (the table's changelog) into a new engine.
    stored = json.loads(json.dumps(state))
    eng2 = engine(THRESHOLD)
    later: list[CloudEvent] = []
    for i in range(4, 10):
        r = eng2.process(win(i, 0.1), stored)
        stored, later = r.state, later + r.events
    assert later == []
    for i in range(10, 14):
        r = eng2.process(win(i, 0.5), stored)
        stored, later = r.state, later + r.events
    assert statuses(later) == [("io.mfu.underutilized.v1", "resolved")]
    assert later[0].data["incident"] == events[0].data["incident"]


def test_match_filters_and_rules_of_other_scopes() -> None:
    run = Run(
        engine("""
rules:
  - id: low
    kind: threshold
    scope: workload
    below: 0.2
    for_windows: 1
    match: {keys: ["job-*"], exclude_phases: [decode], min_gpus: 2}
""")
    )
    assert run.feed(win(0, 0.1, gpus=2, phase="decode")) == []
    assert run.feed(win(1, 0.1, gpus=1)) == []
    assert run.feed(win(2, 0.1, gpus=2, key="other")) == []
    assert run.feed(win(3, 0.1, gpus=2, scope="node")) == []
    assert len(run.feed(win(4, 0.1, gpus=2, phase="train"))) == 1


DRIFT = """
expected:
  - {{key: "cfg-*", mfu: 0.40}}
rules:
  - id: drift
    kind: drift
    scope: workload
    baseline: {baseline}
    detector: {{method: cusum, k: 0.5, h: 4}}
    sigma: 0.02
    min_shift: 0.0
    warmup_windows: {warmup}
    baseline_windows: {warmup}
"""


def test_drift_cusum_against_declared_expected_mfu_exact() -> None:
    run = Run(engine(DRIFT.format(baseline="declared", warmup=1)))
    ok = [win(i, 0.45, expected_mfu=0.45) for i in range(5)]
    assert run.feed(*ok) == []
    # z = (0.41 - 0.45) / 0.02 = -2: S = 1.5, 3.0, 4.5 -> alarm on the third low window.
    assert run.feed(win(5, 0.41, expected_mfu=0.45), win(6, 0.41, expected_mfu=0.45)) == []
    (e,) = run.feed(win(7, 0.41, expected_mfu=0.45))
    d = e.data
    assert e.type == "io.mfu.drift.v1" and d["status"] == "open"
    assert d["windows"] == {"start": T0 + 50, "end": T0 + 80, "count": 3, "change_point": T0 + 50}
    assert d["observed"]["mfu_mean"] == pytest.approx(0.41)
    assert d["observed"]["shift_sigma"] == pytest.approx(-2.0)
    assert d["expected"]["mfu"] == 0.45 and d["expected"]["baseline"] == "declared"
    assert d["detector"]["k"] == 0.5 and d["detector"]["h"] == 4
    # Capped at recover_h = h/2 = 2 (still low at window 8); back at the target S drains
    # by k: 1.5, 1.0, 0.5, 0 -> recovered on the fourth window at the target.
    back = [win(i, 0.45, expected_mfu=0.45) for i in range(9, 12)]
    assert run.feed(win(8, 0.41, expected_mfu=0.45), *back) == []
    (r,) = run.feed(win(12, 0.45, expected_mfu=0.45))
    assert r.data["status"] == "resolved" and r.data["incident"] == d["incident"]
    assert r.data["observed"]["mfu_mean_during_incident"] == pytest.approx(
        (0.41 * 2 + 0.45 * 4) / 6, abs=1e-4
    )


def test_drift_expected_from_rules_file_and_ewma() -> None:
    rules = DRIFT.format(baseline="auto", warmup=1).replace(
        "{method: cusum, k: 0.5, h: 4}", "{method: ewma, lam: 0.5, L: 2.0, recover_L: 0.5}"
    )
    run = Run(engine(rules))
    # Limit = 2 * sqrt(0.5/1.5) = 1.155 sigma. z = (0.36 - 0.40)/0.02 = -2:
    # e = -1.0, then -1.5 -> alarm on the second window.
    assert run.feed(win(0, 0.36, key="cfg-1")) == []
    (e,) = run.feed(win(1, 0.36, key="cfg-1"))
    assert e.data["expected"]["mfu"] == 0.40 and e.data["detector"]["method"] == "ewma"
    # Recovery band 0.5 * 0.577 = 0.289: e = -0.75, -0.375, -0.1875 -> resolved on the 3rd.
    assert run.feed(win(2, 0.40, key="cfg-1"), win(3, 0.40, key="cfg-1")) == []
    assert statuses(run.feed(win(4, 0.40, key="cfg-1"))) == [("io.mfu.drift.v1", "resolved")]


def test_drift_learned_baseline_waits_for_warmup() -> None:
    run = Run(engine(DRIFT.format(baseline="learned", warmup=5)))
    assert run.feed(*(win(i, 0.5) for i in range(5))) == []  # baseline 0.5 learned
    assert run.feed(win(5, 0.46), win(6, 0.46)) == []  # z=-2: S=1.5, 3.0
    (e,) = run.feed(win(7, 0.46))
    assert e.data["expected"] == {
        "mfu": 0.5,
        "baseline": "learned",
        "sigma": 0.02,
        "min_shift": 0.0,
    }


def test_drift_declared_without_expectation_stays_silent() -> None:
    run = Run(engine(DRIFT.format(baseline="declared", warmup=1)))
    assert run.feed(*(win(i, 0.01 if i > 3 else 0.5) for i in range(30))) == []


BUSY = """
rules:
  - id: busy
    kind: busy_inefficient
    scope: workload
    sm_util_min: 0.8
    mfu_max: 0.25
    for_windows: 2
    clear_windows: 1
    decode: {decode}
"""


def test_busy_but_inefficient_with_under_batching_and_precision_hints() -> None:
    run = Run(engine(BUSY.format(decode="report")))
    w = {
        "sm_util": 0.97,
        "tensor_active": 0.12,
        "mem_used_ratio": 0.35,
        "precision": "fp32",
        "gpu_model": H100,
    }
    assert run.feed(win(0, 0.1, **w)) == []
    (e,) = run.feed(win(1, 0.1, **w))
    assert e.type == "io.mfu.inefficient.v1" and e.data["severity"] == "warning"
    assert [h["hint"] for h in e.data["hints"]] == ["under_batching", "precision"]
    assert "65% memory free" in e.data["hints"][0]["detail"]
    assert e.data["observed"]["sm_util"] == 0.97
    (r,) = run.feed(win(2, 0.4, **w))
    assert r.data["status"] == "resolved" and r.type == "io.mfu.inefficient.v1"


def test_busy_but_inefficient_no_hint_without_evidence() -> None:
    run = Run(engine(BUSY.format(decode="report")))
    w = {"sm_util": 0.9, "tensor_active": 0.6, "mem_used_ratio": 0.9, "precision": "bf16"}
    (e,) = run.feed(win(0, 0.1, **w), win(1, 0.1, **w))
    assert e.data["hints"] == []
    # Not busy (SM 50%): no incident at all.
    run2 = Run(engine(BUSY.format(decode="report")))
    assert run2.feed(*(win(i, 0.05, sm_util=0.5) for i in range(5))) == []


def test_decode_phase_is_reported_not_alarmed() -> None:
    run = Run(engine(BUSY.format(decode="report")))
    w = {"sm_util": 0.9, "mem_util": 0.85, "phase": "decode"}
    (e,) = run.feed(win(0, 0.05, **w), win(1, 0.05, **w))
    assert e.type == "io.mfu.report.v1" and e.data["severity"] == "info"
    assert e.data["alarm"] is False
    assert e.data["hints"][0]["hint"] == "memory_bound_decode"
    assert e.data["hints"][0]["mem_util"] == 0.85
    ignored = Run(engine(BUSY.format(decode="ignore")))
    assert ignored.feed(*(win(i, 0.05, **w) for i in range(5))) == []


def test_straggler() -> None:
    run = Run(
        engine("""
rules:
  - {id: strag, kind: straggler, scope: workload, ratio_max: 0.7, clear_ratio: 0.8,
     for_windows: 2, clear_windows: 1}
""")
    )
    slow = {"ranks": 16, "rank_mfu_min": 0.2, "rank_mfu_median": 0.4}
    assert (
        run.feed(win(0, 0.38, **slow), win(1, 0.38, ranks=1, rank_mfu_min=0.1, rank_mfu_median=0.4))
        == []
    )
    (e,) = run.feed(win(2, 0.38, **slow))
    assert e.type == "io.mfu.straggler.v1"
    assert e.data["observed"]["ratio"] == 0.5 and e.data["observed"]["ranks"] == 16
    assert e.data["windows"]["count"] == 2
    assert run.feed(win(3, 0.4, ranks=16, rank_mfu_min=0.3, rank_mfu_median=0.4)) == []  # 0.75
    assert statuses(run.feed(win(4, 0.4, ranks=16, rank_mfu_min=0.35, rank_mfu_median=0.4))) == [
        ("io.mfu.straggler.v1", "resolved")
    ]


def test_idle_allocation_and_fleet_allocation_gap() -> None:
    run = Run(
        engine("""
rules:
  - {id: idle, kind: idle, scope: workload, for_windows: 2, clear_windows: 1}
  - {id: gap, kind: allocation_gap, scope: fleet, for_windows: 1, clear_windows: 1}
""")
    )
    assert run.feed(win(0, 0.0, gpus=0), win(1, 0.0, gpus=0)) == []  # nothing allocated
    (e,) = run.feed(win(2, 0.0, gpus=8), win(3, 0.004, gpus=8))
    assert e.type == "io.mfu.idle.v1" and "8 GPU(s) allocated but idle" in e.data["summary"]
    fleet = {"scope": "fleet", "key": "default", "gpus": 100}
    (g,) = run.feed(win(0, 0.10, allocation=0.95, mfu_allocated=0.11, allocated_gpus=95, **fleet))
    assert g.subject == "fleet/default" and g.type == "io.mfu.allocation_gap.v1"
    assert g.data["observed"]["allocation"] == 0.95
    assert statuses(run.feed(win(1, 0.3, allocation=0.95, mfu_allocated=0.32, **fleet))) == [
        ("io.mfu.allocation_gap.v1", "resolved")
    ]


def test_node_consolidation_candidate() -> None:
    run = Run(
        engine("""
rules:
  - {id: cons, kind: consolidation, scope: node, for_windows: 2, clear_windows: 1,
     severity: info}
""")
    )
    node = {"scope": "node", "key": "n7", "gpus": 8}
    assert (
        run.feed(win(0, 0.05, mem_used_ratio=0.2, **node), win(1, 0.05, mem_used_ratio=0.5, **node))
        == []
    )
    (e,) = run.feed(
        win(2, 0.05, mem_used_ratio=0.2, **node), win(3, 0.02, mem_used_ratio=0.1, **node)
    )
    assert (
        e.type == "io.mfu.consolidation.v1" and e.data["advice"] == "consolidate_or_oversubscribe"
    )
    assert e.data["severity"] == "info"


def test_cost_per_effective_pflop_hour() -> None:
    run = Run(
        engine("""
prices:
  usd_per_gpu_hour: {"*H100*": 3.0}
rules:
  - {id: cost, kind: cost, scope: workload, period_s: 100, max_usd_per_pflop_hour: 5.0}
""")
    )
    w = {"gpu_model": H100, "achieved_flops": 5e15, "gpu_seconds": 10.0}
    assert run.feed(*(win(i, **w) for i in range(10))) == []  # T0 is a multiple of 100
    (e,) = run.feed(win(10, **w))
    o = e.data["observed"]
    # 100 GPU-s = 1/36 GPU-h x $3; 5e16 FLOPs = 5e16/1e15/3600 PFLOP-h; ratio $6.
    assert o["cost_usd"] == pytest.approx(3.0 / 36, abs=1e-4)
    assert o["effective_pflop_hours"] == pytest.approx(5e16 / 1e15 / 3600, abs=1e-6)
    assert o["usd_per_effective_pflop_hour"] == pytest.approx(6.0)
    assert e.data["severity"] == "warning"  # above max_usd_per_pflop_hour
    assert e.data["windows"]["period_start"] == T0 and e.data["windows"]["count"] == 10
    assert e.time == rfc3339(T0 + 100) and e.type == "io.mfu.cost.v1"
    assert e.data["incident"] == incident_id("cost", "workload/job-a", T0)  # report id


def test_cost_without_price_is_unpriced() -> None:
    run = Run(engine("rules: [{id: cost, kind: cost, scope: fleet, period_s: 10}]"))
    fleet = {"scope": "fleet", "key": "default"}
    (e,) = run.feed(win(0, **fleet), win(1, **fleet))
    assert e.data["observed"]["cost_usd"] is None
    assert e.data["observed"]["unpriced_gpu_hours"] == pytest.approx(10 / 3600, abs=1e-6)


def test_rightsize_names_a_mig_shape() -> None:
    run = Run(
        engine("""
rules:
  - {id: mig, kind: rightsize, scope: workload, for_windows: 2, clear_windows: 1}
""")
    )
    # 0.10 MFU needs a share >= 0.10/0.6 (2 of 7 slices); 30% of 80 GB = 24 GB needs the
    # 40 GB profiles: 3g.40gb.
    w = {"gpu_model": H100, "mem_used_ratio": 0.3}
    (e,) = run.feed(win(0, 0.10, **w), win(1, 0.10, **w))
    assert e.type == "io.mfu.rightsize.v1" and e.data["recommended_shape"] == "3g.40gb"
    assert "fits MIG 3g.40gb" in e.data["summary"]
    assert e.data["memory_used_gb"] == 24.0
    a100 = Run(engine("rules: [{id: mig, kind: rightsize, scope: workload, for_windows: 1}]"))
    (s,) = a100.feed(win(0, 0.05, gpu_model="NVIDIA A100-SXM4-40GB", mem_used_ratio=0.1))
    assert s.data["recommended_shape"] == "1g.5gb"
    # Not on a whole GPU, or already a MIG slice: nothing.
    assert a100.feed(win(1, 0.05, gpus=2, gpu_model=H100, mem_used_ratio=0.1)) == []
    assert (
        Run(a100.eng).feed(win(0, 0.05, gpu_model="NVIDIA H100 MIG 3g.40gb", mem_used_ratio=0.1))
        == []
    )


def test_scale_recommendations_with_cooldown() -> None:
    run = Run(
        engine("""
rules:
  - {id: sc, kind: scale, scope: workload, target_mfu: 0.4, scale_out_above: 0.6,
     scale_in_below: 0.2, for_windows: 2, cooldown_s: 50}
""")
    )
    (e,) = run.feed(win(0, 0.8), win(1, 0.8))
    assert e.type == "io.mfu.scale.v1" and e.data["status"] == "recommendation"
    assert e.data["action"] == "scale_out" and e.data["ratio"] == 2.0
    assert e.data["target"] == {"scope": "workload", "key": "job-a"}
    # Cooldown: the advice came at window 1 (ends T0+20); none before T0+70.
    assert run.feed(win(2, 0.8), win(3, 0.8), win(4, 0.8), win(5, 0.8), win(6, 0.8)) == []
    assert len(run.feed(win(7, 0.8))) == 1
    (i,) = run.feed(win(20, 0.1), win(21, 0.1))
    assert i.data["action"] == "scale_in" and i.data["ratio"] == 0.25


def test_admission_advice_changes() -> None:
    run = Run(engine("rules: [{id: adm, kind: admission, scope: fleet, for_windows: 2}]"))
    pool = {"scope": "fleet", "key": "pool-a"}
    busy = {"allocation": 0.95, "mfu_allocated": 0.5, **pool}
    (q,) = run.feed(win(0, **busy), win(1, **busy), win(2, **busy))
    assert q.type == "io.mfu.admission.v1" and q.data["advice"] == "queue"
    assert q.data["previous"] is None and q.data["pool"] == "pool-a"
    idle = {"allocation": 0.95, "mfu_allocated": 0.05, **pool}
    assert run.feed(win(3, **idle)) == []
    (o,) = run.feed(win(4, **idle))
    assert o.data["advice"] == "admit_oversubscribe" and o.data["previous"] == "queue"
    free = {"allocation": 0.5, "mfu_allocated": 0.3, **pool}
    assert [e.data["advice"] for e in run.feed(win(5, **free), win(6, **free))] == ["admit"]


def test_placement_when_mfu_falls_with_nodes_and_when_tp_crosses_nodes() -> None:
    run = Run(
        engine("""
rules:
  - {id: place, kind: placement, scope: workload, min_samples: 2, for_windows: 1,
     clear_windows: 1, ewma_alpha: 1.0}
""")
    )
    assert run.feed(win(0, 0.5, nodes=1, gpus=8), win(1, 0.5, nodes=1, gpus=8)) == []
    assert run.feed(win(2, 0.3, nodes=4, gpus=32)) == []  # one sample on 4 nodes
    (e,) = run.feed(win(3, 0.3, nodes=4, gpus=32))
    assert e.type == "io.mfu.placement.v1" and e.data["advice"] == "move_to_nvlink_topology"
    assert e.data["evidence"][0]["evidence"] == "mfu_falls_with_nodes"
    assert e.data["evidence"][0]["fewer_nodes"] == 1
    tp = Run(run.eng)
    (t,) = tp.feed(win(0, 0.4, nodes=2, gpus=16, parallelism={"tp": 16, "pp": 1, "dp": 1}))
    assert t.data["evidence"][0]["evidence"] == "tensor_parallel_crosses_nodes"
    assert statuses(tp.feed(win(1, 0.4, nodes=2, gpus=16, parallelism={"tp": 8}))) == [
        ("io.mfu.placement.v1", "resolved")
    ]


def test_default_rules_run_on_every_scope() -> None:
    from policies.rules import DEFAULT_RULES_PATH, load_rules

    run = Run(Engine(load_rules(DEFAULT_RULES_PATH)))
    full = {
        "sm_util": 0.95,
        "tensor_active": 0.1,
        "mem_used_ratio": 0.2,
        "gpu_model": H100,
        "allocation": 0.95,
        "mfu_allocated": 0.05,
        "nodes": 1,
    }
    for scope in ("workload", "node", "fleet"):
        run.feed(*(win(i, 0.05, scope=scope, **full) for i in range(40)))
    kinds = {(e.subject.split("/")[0], e.data["rule"]) for e in run.events}
    assert {
        ("workload", "busy-but-inefficient"),
        ("workload", "workload-low-mfu"),
        ("workload", "rightsize-mig"),
        ("node", "node-consolidation"),
        ("fleet", "fleet-allocation-gap"),
        ("fleet", "pool-admission"),
    } <= kinds


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.05, 0.15, 0.22, 0.3, 0.6]), min_size=1, max_size=60),
    cut=st.integers(min_value=0, max_value=60),
)
def test_incidents_alternate_and_survive_any_restart(values: list[float], cut: int) -> None:
    rules = (
        THRESHOLD
        + """
  - {id: drift, kind: drift, scope: workload, sigma: 0.02, warmup_windows: 1,
     detector: {method: cusum, h: 3}}
"""
    )
    windows = [win(i, v, expected_mfu=0.3) for i, v in enumerate(values)]
    straight = Run(engine(rules))
    straight.feed(*windows)
    # Same input with a restart (state through JSON, new engine) before window `cut`,
    # and the window before the cut delivered again (at-least-once replay).
    first = Run(engine(rules))
    first.feed(*windows[:cut])
    second = Run(engine(rules))
    second.states = json.loads(json.dumps(first.states))
    second.feed(*windows[max(0, cut - 1) :])
    assert [e.id for e in first.events + second.events] == [e.id for e in straight.events]
    for rule in ("low", "drift"):
        seq = [e.data["status"] for e in straight.events if e.data["rule"] == rule]
        assert seq == ["open", "resolved"] * (len(seq) // 2) + ["open"] * (len(seq) % 2)


def test_rightsize_sizes_mig_shapes_by_sm_share_from_the_catalog() -> None:
    """H100 80GB at MFU 0.10 using 10 GB (0.125 of 80): the catalog's SM shares are
    1g.10gb 16/132 = 0.121, 1g.20gb 26/132 = 0.197, 2g.20gb 32/132 = 0.242. Slice MFU
    0.10 / 0.121 = 0.825 > 0.6 (too small); 0.10 / 0.197 = 0.508 <= 0.6 and 10 GB <= 20 x
    0.9 = 18 GB: 1g.20gb. (slices/7 gave 1g.20gb 1/7 = 0.143 -> 0.70 > 0.6 -> 2g.20gb.)"""
    run = Run(engine("rules: [{id: mig, kind: rightsize, scope: workload, for_windows: 1}]"))
    (e,) = run.feed(win(0, 0.10, gpu_model=H100, mem_used_ratio=0.125))
    assert e.data["recommended_shape"] == "1g.20gb"
    assert e.data["shape_compute_share"] == round(26 / 132, 4)
    assert e.data["expected_slice_mfu"] == round(0.10 / (26 / 132), 4)
    assert e.data["memory_used_gb"] == 10.0 and e.data["basis"] == "reported"
    # H200 (141 GB): MFU 0.04 with 14.1 GB: 1g.18gb has 16/132 SMs: 0.04/0.1212 = 0.33
    # <= 0.6 and 14.1 <= 18 x 0.9 = 16.2: 1g.18gb.
    h200 = Run(run.eng)
    (h,) = h200.feed(win(0, 0.04, gpu_model="NVIDIA H200", mem_used_ratio=0.1))
    assert h.data["recommended_shape"] == "1g.18gb"
    # A GPU without MIG in the catalog (L40S) gets nothing; an un-instrumented job (mfu
    # unknown) is judged on its estimate and says so.
    assert Run(run.eng).feed(win(0, 0.05, gpu_model="NVIDIA L40S", mem_used_ratio=0.1)) == []
    est = Run(run.eng).feed(
        win(0, None, gpu_model=H100, mem_used_ratio=0.125, mfu_estimated=0.10, coverage=0.0)
    )
    assert est[0].data["basis"] == "estimated" and est[0].data["recommended_shape"] == "1g.20gb"
    assert est[0].data["observed"]["mfu"] is None
