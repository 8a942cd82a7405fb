"""Unknown MFU is never judged as a zero; estimates say basis: estimated; memory-bound
work is judged on MBU; scale events name the binding resource; the precision hint comes
from the GPU catalog."""

from __future__ import annotations

from typing import Any

from mfu.events import CloudEvent, MfuWindow
from policies.engine import Engine
from policies.rules import DEFAULT_RULES_PATH, load_rules, parse_rules

T0 = 1_700_000_000.0
H100 = "NVIDIA H100 80GB HBM3"


def win(i: int, mfu: float | None, **fields: Any) -> MfuWindow:
    base: dict[str, Any] = {
        "event_id": f"w{i}", "scope": "workload", "key": "job", "window_start": T0 + 10 * i,
        "window_end": T0 + 10 * i + 10, "mfu": mfu, "achieved_flops": (mfu or 0.0) * 1e16,
        "peak_flops": 1e16, "gpu_seconds": 10.0, "gpus": 1,
    }
    base.update(fields)
    return MfuWindow.model_validate(base)


def run(eng: Engine, windows: list[MfuWindow]) -> list[CloudEvent]:
    states: dict[str, Any] = {}
    out: list[CloudEvent] = []
    for w in windows:
        subject = f"{w.scope}/{w.key}"
        result = eng.process(w, states.get(subject))
        states[subject] = result.state
        out += result.events
    return out


# An un-instrumented busy job: no FLOP reports, pipe counters, so mfu is unknown (null)
# and coverage 0; the counter estimate is 0.08.
SILENT = {"sm_util": 0.95, "tensor_active": 0.1, "mem_used_ratio": 0.2, "gpu_model": H100,
          "coverage": 0.0, "flop_sources": {"counters": 10.0}}


def test_unknown_mfu_fires_nothing_in_the_default_rules() -> None:
    eng = Engine(load_rules(DEFAULT_RULES_PATH))
    windows = [win(i, None, **SILENT, mfu_reason="no known model FLOPs") for i in range(60)]
    windows += [win(i, None, **{**SILENT, "scope": "node", "key": "n1", "gpus": 8})
                for i in range(60)]
    assert run(eng, windows) == []


def test_estimate_is_used_with_basis_estimated_and_only_where_allowed() -> None:
    eng = Engine(load_rules(DEFAULT_RULES_PATH))
    events = run(eng, [win(i, None, mfu_estimated=0.08, **SILENT) for i in range(40)])
    rules = {e.data["rule"]: e for e in events}
    # busy-but-inefficient and rightsize judge the estimate; the MFU threshold, drift,
    # stall and idle rules do not (idle: 0.08 is not idle).
    assert set(rules) == {"busy-but-inefficient", "rightsize-mig"}
    assert all(e.data["basis"] == "estimated" for e in events)
    b = rules["busy-but-inefficient"]
    assert "(estimated from counters)" in b.data["summary"]
    assert b.data["observed"]["mfu"] is None and b.data["observed"]["mfu_estimated"] == 0.08
    assert b.data["observed"]["coverage"] == 0.0
    # Measured MFU: basis reported.
    (m,) = [e for e in run(Engine(load_rules(DEFAULT_RULES_PATH)),
                           [win(i, 0.08, sm_util=0.95, gpu_model=H100) for i in range(3)])]
    assert m.data["basis"] == "reported"


def test_idle_on_an_estimate_and_fleet_gap_coverage_aware() -> None:
    rules = parse_rules("""
rules:
  - {id: idle, kind: idle, scope: workload, for_windows: 2, clear_windows: 1}
  - {id: gap, kind: allocation_gap, scope: fleet, for_windows: 1, clear_windows: 1}
""")
    (e,) = run(Engine(rules), [win(i, None, mfu_estimated=0.002, coverage=0.0)
                               for i in range(2)])
    assert e.type == "io.mfu.idle.v1" and e.data["basis"] == "estimated"
    fleet = {"scope": "fleet", "key": "f", "gpus": 100, "allocation": 0.95}
    # Coverage 0.3: the measured allocated MFU 0.05 is over the known (mostly idle)
    # GPU-seconds; the estimate 0.38 / 0.95 = 0.40 is judged instead: no gap.
    assert run(Engine(rules), [win(0, 0.04, mfu_allocated=0.05, coverage=0.3,
                                   mfu_estimated=0.38, **fleet)]) == []
    # Estimate 0.1 / 0.95 = 0.105 <= 0.15: a gap, on an estimate.
    (g,) = run(Engine(rules), [win(0, 0.04, mfu_allocated=0.05, coverage=0.3,
                                   mfu_estimated=0.1, **fleet)])
    assert g.data["basis"] == "estimated" and g.data["observed"]["mfu_allocated_mean"] == 0.1053
    # Full coverage: the measured value, as before.
    (r,) = run(Engine(rules), [win(0, 0.04, mfu_allocated=0.05, coverage=1.0, **fleet)])
    assert r.data["basis"] == "reported"


DECODE = {"sm_util": 0.9, "phase": "decode", "regime": "memory", "gpu_model": H100}


def test_memory_bound_judged_on_mbu() -> None:
    eng = Engine(load_rules(DEFAULT_RULES_PATH))
    # Decode at MFU 0.03 with MBU 0.70: expected, nothing at all (not idle, not low MFU).
    assert run(eng, [win(i, 0.03, mbu=0.70, **DECODE) for i in range(40)]) == []
    # MFU 0.03 and MBU 0.10: real waste, an alarm with the bandwidth hint.
    events = run(Engine(load_rules(DEFAULT_RULES_PATH)),
                 [win(i, 0.03, mbu=0.10, **DECODE) for i in range(5)])
    (e,) = [e for e in events if e.data["rule"] == "busy-but-inefficient"]
    assert e.type == "io.mfu.inefficient.v1" and e.data["severity"] == "warning"
    assert e.data["hints"][0]["hint"] == "low_bandwidth_use" and e.data["judged_on"] == "mbu"
    assert "MBU only 10%" in e.data["summary"]
    # A memory-bound prefill (regime memory, no decode phase) with high MBU: no alarm.
    mem = {**DECODE, "phase": "prefill"}
    assert run(Engine(load_rules(DEFAULT_RULES_PATH)),
               [win(i, 0.05, mbu=0.8, **mem) for i in range(40)]) == []
    # An under-batched compute-bound prefill is still flagged.
    pre = {"sm_util": 0.9, "phase": "prefill", "regime": "compute", "tensor_active": 0.1,
           "gpu_model": H100, "mem_used_ratio": 0.3}
    flagged = {e.data["rule"] for e in run(Engine(load_rules(DEFAULT_RULES_PATH)),
                                           [win(i, 0.07, **pre) for i in range(10)])}
    assert {"busy-but-inefficient", "workload-low-mfu"} <= flagged


def test_scale_names_the_binding_resource() -> None:
    rules = parse_rules("rules: [{id: sc, kind: scale, scope: workload, for_windows: 2}]")
    (m,) = run(Engine(rules), [win(i, 0.03, mbu=0.9, **DECODE) for i in range(2)])
    # MBU 0.9 > 0.85 for 2 windows: out, ratio 0.9 / 0.6 = 1.5, bandwidth binds.
    assert m.data["action"] == "scale_out" and m.data["binding_resource"] == "memory_bandwidth"
    assert m.data["ratio"] == 1.5 and m.data["metric"] == "mbu"
    (c,) = run(Engine(rules), [win(i, 0.8) for i in range(2)])
    assert c.data["binding_resource"] == "compute" and c.data["ratio"] == 2.0


def test_precision_hint_from_the_catalog() -> None:
    rules = parse_rules("""
rules:
  - {id: busy, kind: busy_inefficient, scope: workload, for_windows: 1}
""")
    fp32 = {"sm_util": 0.95, "precision": "fp32", "tensor_active": 0.6, "mem_used_ratio": 0.9}
    (e,) = run(Engine(rules), [win(0, 0.1, gpu_model=H100, **fp32)])
    (h,) = e.data["hints"]
    # H100 SXM dense peaks: bf16 989.4 / fp32 66.9 = 14.79x; tf32 494.7 / 66.9 = 7.39x.
    assert h["hint"] == "precision" and h["faster_precisions"]["bf16"] == 14.79
    assert h["faster_precisions"]["tf32"] == 7.39 and "bf16 14.8x" in h["detail"]
    # A GPU the catalog does not know: no claim.
    (u,) = run(Engine(rules), [win(0, 0.1, gpu_model="NVIDIA Foo 9000", **fp32)])
    assert u.data["hints"] == []
    # An operator's glob list still decides where given.
    globs = parse_rules("""
rules:
  - {id: busy, kind: busy_inefficient, scope: workload, for_windows: 1,
     hints: {tensor_core_gpus: ["*Foo*"]}}
""")
    (g,) = run(Engine(globs), [win(0, 0.1, gpu_model="NVIDIA Foo 9000", **fp32)])
    assert [x["hint"] for x in g.data["hints"]] == ["precision"]


def test_cost_counts_unknown_gpu_hours_and_never_alarms_on_them() -> None:
    rules = parse_rules("""
prices: {usd_per_gpu_hour: {"*H100*": 3.0}}
rules: [{id: cost, kind: cost, scope: workload, period_s: 100, max_usd_per_pflop_hour: 1.0}]
""")
    # 10 windows, 10 GPU-s each: 5 with MFU unknown (no FLOPs counted), 5 measured at
    # coverage 0.5 (5 of their GPU-s unknown): unknown = 50 + 25 = 75 of 100 GPU-s.
    ws = [win(i, None, gpu_model=H100, coverage=0.0) for i in range(5)]
    ws += [win(i, 0.1, gpu_model=H100, coverage=0.5, achieved_flops=1e15)
           for i in range(5, 10)]
    (e,) = [e for e in run(Engine(rules), [*ws, win(10, 0.1, gpu_model=H100)])]
    o = e.data["observed"]
    assert o["unknown_gpu_hours"] == round(75 / 3600, 6) and o["coverage"] == 0.25
    # MFU over the measured windows only: 5e15 / 5e16 = 0.1 (not diluted by unknowns).
    assert o["mfu"] == 0.1
    # $0.0833 for 5e15 FLOPs (0.00139 PFLOP-h): $60/PFLOP-h > $1, but coverage 0.25 <
    # 0.9: info, not the rule's severity.
    assert e.data["severity"] == "info"
