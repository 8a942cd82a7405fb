"""Drift robust to dips that recover (input stalls present from the start), exact; and
the full archetype mix of the simulator through the stream stages and the default rules
for an hour of windows: false drift alarms, detection delay, reporter mismatch."""

from __future__ import annotations

from typing import Any

from agents.simulator import FleetSimulator
from mfu.events import MfuWindow
from policies.engine import Engine
from policies.rules import DEFAULT_RULES_PATH, load_rules, parse_rules
from tests.policies_mix import DEMO_GPU_MODELS, delay_windows, run_mix, windows_between
from tests.policies_mix import T0 as MIX_T0

T0 = 1_700_000_000.0
RULES = """
rules:
  - id: drift
    kind: drift
    scope: workload
    baseline: declared
    sigma: 0.02
    declared_warmup_windows: 1
    min_shift: 0.0
    detector: {method: cusum, k: 0.5, h: 4}
"""
TRANSIENTS = RULES + "    transients: {max_windows: 3, dip_ratio: 0.5, reference_windows: 12}\n"


def _events(rules: str, values: list[float]) -> list[tuple[int, Any]]:
    """(window index, event) of every event the engine emits on one workload whose
    10-s windows have MFU ``values``."""
    eng = Engine(parse_rules(rules))
    state, out = None, []
    for i, x in enumerate(values):
        w = MfuWindow(event_id=str(i), scope="workload", key="j", window_start=T0 + 10 * i,
                      window_end=T0 + 10 * i + 10, mfu=x, achieved_flops=x, peak_flops=1.0,
                      gpu_seconds=10.0, gpus=1, expected_mfu=0.45)
        result = eng.process(w, state)
        state = result.state
        out += [(i, e) for e in result.events]
    return out


def _run(rules: str, values: list[float]) -> list[tuple[int, str, float]]:
    return [(i, e.data["status"], e.data["windows"]["start"]) for i, e in _events(rules, values)]


# A 15 s stall every 60 s straddling window edges: a partial window (0.30), a full one
# (0.02), then back; from the very start.
STALLS = [0.45, 0.45, 0.45, 0.30, 0.02, 0.45] * 10


def test_periodic_stalls_are_drift_without_the_filter_and_not_with_it() -> None:
    # Without: z = (0.30 - 0.45)/0.02 = -7.5 -> S = 7 >= 4 at window 3.
    assert _run(RULES, STALLS)[0][:2] == (3, "open")
    assert _run(TRANSIENTS, STALLS) == []


def test_filter_still_catches_drops() -> None:
    # A 30% drop (0.315 > 0.5 x 0.45: not a dip) at window 20: seen one window late
    # (the look-ahead), z = -6.75, S = 6.25 >= 4: open at window 21, change point 20.
    values = [0.45] * 20 + [0.315] * 10
    assert _run(TRANSIENTS, values) == [(21, "open", T0 + 200)]
    # A drop to 0.1 that stays: windows 20-22 are held as a possible dip; at window 23
    # the dip is longer than max_windows (3), they are fed: open at 23, change point 20.
    values = [0.45] * 20 + [0.1] * 10
    assert _run(TRANSIENTS, values) == [(23, "open", T0 + 200)]
    # With stalls from the start and then a 30% drift at window 30: caught, and only then.
    drifting = STALLS[:30] + [round(v * 0.7, 4) for v in STALLS[30:]]
    opens = [(i, s) for i, s, _ in _run(TRANSIENTS, drifting) if s == "open"]
    assert len(opens) == 1 and 30 <= opens[0][0] <= 35


def test_full_archetype_mix_for_an_hour() -> None:
    """A reduced demo fleet with every archetype (8 nodes x 8, H100 and A100 nodes
    alternating, seed 7), 3600 s of 2-s samples, drift of the first LLM job by 30% at
    1800 s, the simulator's own 2x reporter (moe-train-0); the default rules. The full
    demo fleet's hour is `python -m tests.policies_mix` (numbers in docs/validation.md)."""
    config = load_rules(DEFAULT_RULES_PATH)
    sim, res = run_mix(config, nodes=8, duration_s=3600, interval_s=2.0, drift_at_s=1800)
    drifting = f"workload/{sim.drift_workload}"
    # Every workload closes one window per 10 s of the run: 3600 / 10 = 360 each.
    assert res.windows["workload"] == len(sim.workloads) * 360
    buggy = {f"workload/{n}" for n, w in sim.workloads.items()
             if w.archetype.report_factor > 1.2}
    assert buggy == {"workload/moe-train-0"}
    false_drift = res.opens_of("workload-mfu-drift", [drifting])
    delay = delay_windows(res.first_open("workload-mfu-drift", drifting), MIX_T0 + 1800)
    wrong_mismatch = res.opens_of("reporter-mismatch", buggy)
    mismatch = windows_between(res.first_fully_reported("moe-train-0"),
                               res.first_open("reporter-mismatch", "workload/moe-train-0"))
    print(f"\n[mix] {sum(res.windows.values())} windows ({res.windows['workload']} workload) "
          f"in {res.seconds:.1f} s: false drift {false_drift}, drift delay {delay} windows, "
          f"wrong mismatch {wrong_mismatch}, mismatch after {mismatch} windows")
    assert false_drift == {} and delay is not None and 1 <= delay <= 6
    assert wrong_mismatch == {} and mismatch is not None and mismatch <= 3
    # No drift opened before the change anywhere.
    assert res.opens_of("workload-mfu-drift") == {drifting: 1}


def test_drift_defers_to_a_cause_another_rule_names() -> None:
    """While rule `low` (named in defer_to) has an open incident, drift does not open;
    when `low` resolves and the drift persists, drift opens, saying how long it waited."""
    rules = """
rules:
  - {id: low, kind: threshold, scope: workload, below: 0.35, clear_above: 0.35,
     for_windows: 1, clear_windows: 1, cooldown_s: 0}
""" + RULES.removeprefix("\nrules:\n") + "    defer_to: [low]\n"
    # 0.30 from window 5: `low` opens at 5 (it runs first); drift's CUSUM alarms at 5
    # (z = -7.5, S = 7 >= 4) but waits through windows 5-9. At 0.36 (window 10) `low`
    # resolves; drift is still alarmed (S capped at h/2 = 2, z = -4.5): it opens at 10.
    values = [0.45] * 5 + [0.30] * 5 + [0.36] * 3
    events = _events(rules, values)
    got = [(i, e.data["rule"], e.data["status"]) for i, e in events]
    drift = [e for _, e in events if e.data["rule"] == "drift"]
    assert len(drift) == 1
    assert drift[0].data["detector"]["deferred_windows"] == 5
    assert drift[0].data["windows"]["change_point"] == T0 + 50
    assert got == [(5, "low", "open"), (10, "low", "resolved"), (10, "drift", "open")]


def test_half_the_tenants_without_the_sdk() -> None:
    """Every other reporting workload of the reduced demo fleet (8 nodes x 8, H100/A100)
    reports nothing (15 min, 2-s samples): their windows have mfu null and, on H100 (pipe
    counters), an OFU estimate; on A100 nothing. No rule judges them on a zero. The only
    events on them are busy-but-inefficient (basis estimated) where the counters truly
    see a busy GPU doing little: derived from the simulator's truth below."""
    config = load_rules(DEFAULT_RULES_PATH)
    layout = FleetSimulator(8, 8, DEMO_GPU_MODELS, seed=7, start_ts=MIX_T0)
    names = sorted(n for n, w in layout.workloads.items() if w.archetype.reports)
    silent = frozenset(names[1::2])
    sim, res = run_mix(config, nodes=8, duration_s=900, interval_s=2.0, drift_at_s=None,
                       silent=silent)
    on_silent = [e for e in res.events if e.data["scope"] == "workload"
                 and e.data["key"] in silent and e.data["rule"] != "workload-cost"]
    assert {e.data["basis"] for e in on_silent} == {"estimated"}
    flagged = {(e.data["key"], e.data["rule"]) for e in on_silent}
    # Truth: without reports, the pipeline states MFU against the dense bf16 peak (the
    # GPU's tensor capacity; DESIGN.md §8) and the counters see hardware FLOPs. Busy (the
    # archetype's SM range >= 0.8) with counters (a GPM node) and hardware FLOPs / bf16
    # peak <= mfu_max (0.25) is a true busy-but-inefficient. On this fleet that is fp32-0:
    # an fp32 job on an H100, 0.556 MFU at fp32 x 1.05 overhead x 67 / 989 TF = ~0.04 of
    # the bf16 peak; the tensor cores idle. Correct, not an artefact of the estimate.
    truth = sim.ground_truth(MIX_T0 + 300, MIX_T0 + 400)["workload"]
    dev = {d.uuid: d for d in sim.devices}
    expected = set()
    for n in silent:
        w = sim.workloads[n]
        gpm = all(dev[u].hw.gpm for u in w.devices)
        bf16_peak = sum(dev[u].peak("bf16") for u in w.devices) * 100.0
        if gpm and w.archetype.sm_util[0] >= 0.8 and truth[n].hardware_flops / bf16_peak <= 0.25:
            expected.add((n, "busy-but-inefficient"))
    assert expected == {("fp32-0", "busy-but-inefficient")}
    assert flagged == expected
    # ... and it says why, from the counters (its reports would have named fp32).
    (opened,) = [e for e in on_silent if e.data["status"] == "open"]
    hint = next(h for h in opened.data["hints"] if h["hint"] == "precision")
    assert hint["inferred_from"] == "counters" and hint["faster_precisions"]["bf16"] > 2
    # The reporting half still gets its events on measured MFU.
    reported = [e for e in res.events if e.data["scope"] == "workload"
                and e.data["key"] not in silent]
    assert reported and {e.data["basis"] for e in reported} == {"reported"}
