"""Issues 12 and 13, "Done when", on the in-process chain: the simulator's default demo
fleet (16 nodes x 8, H100 and A100 nodes alternating, seed 7, 2-s samples as with
``--fast``) -> the pure stream stages (real §8 accounting, no stand-ins) -> the default
rules. One 10-minute run serves every test; each asserts against the simulator's ground
truth (its layout, archetypes and :meth:`FleetSimulator.ground_truth`)."""

from __future__ import annotations

import functools

import pytest

from agents.simulator import FleetSimulator
from policies.rules import DEFAULT_RULES_PATH, load_rules
from tests.policies_mix import T0, MixResult, run_mix, windows_between

DURATION_S = 600.0  # "a 10-minute simulated run"
INEFFICIENT = ("busy-but-inefficient", "workload-idle", "workload-low-mfu")


@functools.lru_cache(maxsize=1)
def _run() -> tuple[FleetSimulator, MixResult]:
    return run_mix(load_rules(DEFAULT_RULES_PATH), duration_s=DURATION_S, drift_at_s=None)


@pytest.fixture(scope="module")
def mix() -> tuple[FleetSimulator, MixResult]:
    return _run()


def _keys(sim: FleetSimulator, archetype: str) -> set[str]:
    return {n for n, w in sim.workloads.items() if w.archetype.name == archetype}


def test_the_run_covers_every_workload_and_source(mix) -> None:
    sim, res = mix
    # 600 s / 10-s windows = 60 windows per workload, node and the fleet.
    assert res.windows["workload"] == len(sim.workloads) * 60
    assert res.windows["fleet"] == 60 and res.windows["node"] == 16 * 60
    # The fleet's GPU-seconds carry all five sources (A100 silent jobs are "none").
    total = {n: 0.0 for n in ("reported", "engine", "idle", "counters", "none")}
    for w in res.fleet_windows:
        for n in total:
            total[n] += getattr(w.flop_sources, n)
    assert all(v > 0 for v in total.values()), total


def test_no_uninstrumented_busy_workload_is_judged_inefficient_or_idle(mix) -> None:
    """(a) Workloads without reports (the simulator's silent archetypes), busy by their
    archetype, whose windows are ``counters`` or ``none``: no busy-but-inefficient,
    idle or low-MFU event, whatever the basis."""
    sim, res = mix
    silent = {n for n, w in sim.workloads.items()
              if not w.archetype.reports and w.archetype.name != "idle"}
    assert silent == _keys(sim, "silent_train") | _keys(sim, "silent_finetune")
    # Their windows really are un-instrumented: counters (H100) or none (A100), busy.
    kinds = set()
    for n in silent:
        for w in res.workload_windows[n]:
            fs = w.flop_sources
            assert w.mfu is None and fs.reported == fs.engine == 0.0
            kinds |= {k for k in ("counters", "none") if getattr(fs, k) > 0}
    assert kinds == {"counters", "none"}
    flagged = {(e.data["key"], e.data["rule"]) for e in res.events
               if e.data["rule"] in INEFFICIENT and e.data["key"] in silent}
    assert flagged == set()
    # The truly idle job (a known zero) still is.
    assert _keys(sim, "idle") <= res.subjects_of("workload-idle")


def test_the_buggy_reporter_is_caught_within_3_windows(mix) -> None:
    """(b) moe-train-* (2x over-count) gets io.mfu.reporter_mismatch.v1 within 3 windows
    of its first fully-reported window (the rule needs 2 in a row)."""
    sim, res = mix
    buggy = _keys(sim, "overcount_train")
    assert buggy and all(sim.workloads[n].archetype.report_factor == 2.0 for n in buggy)
    for n in buggy:
        e = res.first_open("reporter-mismatch", f"workload/{n}")
        assert e is not None and e.type == "io.mfu.reporter_mismatch.v1"
        delay = windows_between(res.first_fully_reported(n), e)
        print(f"\n[mix] {n}: reporter_mismatch after {delay} windows, "
              f"ratio {e.data['observed']['ratio']}")
        assert delay is not None and 2 <= delay <= 3


def test_no_honest_reporter_gets_a_mismatch_in_10_minutes(mix) -> None:
    """(c) Every reporter_mismatch subject over the run reports > 1.2x its true FLOPs."""
    sim, res = mix
    honest = {n for n, w in sim.workloads.items()
              if w.archetype.reports and w.archetype.report_factor <= 1.2}
    assert len(honest) == 49  # 64 workloads - 8 silent - 6 idle - 1 buggy
    assert res.subjects_of("reporter-mismatch") & honest == set()
    assert res.subjects_of("reporter-mismatch") == _keys(sim, "overcount_train")


def test_decode_is_memory_bound_on_mbu_and_prefill_is_inefficient(mix) -> None:
    """(d) Decode: regime memory, MBU as the truth has it, never flagged; the under-batched
    prefill jobs: flagged busy-but-inefficient."""
    sim, res = mix
    decode, prefill = _keys(sim, "decode"), _keys(sim, "underbatched_inference")
    assert decode and prefill
    truth = sim.ground_truth(T0 + 300, T0 + 310)["workload"]
    for n in decode:
        ws = res.workload_windows[n]
        assert {w.regime for w in ws} == {"memory"}
        # Window 30 is [T0 + 300, T0 + 310): MBU exactly the truth's (reported bytes over
        # the peak bytes of the reporting GPU-seconds).
        assert ws[30].window_start == T0 + 300
        assert ws[30].mbu == pytest.approx(truth[n].mbu, rel=1e-9)
        assert all(0.6 <= w.mbu <= 0.8 for w in ws)  # the archetype's MBU range
    assert not any(e.data["key"] in decode and e.data["rule"] in INEFFICIENT
                   for e in res.events)
    assert prefill <= res.subjects_of("busy-but-inefficient")


def test_fleet_estimate_against_the_ground_truth(mix) -> None:
    """(f) Fleet ``mfu_estimated`` vs the truth, per window, decomposed exactly:
    estimated - true(known + counters) = over-reported + hardware-not-model + estimator.
    ``mfu`` (known GPU-seconds) is exact; the estimator term (counter noise) is small;
    the gap is the 2x reporter and the counters seeing hardware FLOPs."""
    sim, res = mix
    rows = []
    for w in res.fleet_windows[::6]:
        t = sim.ground_truth(w.window_start, w.window_end)["fleet"]["default"]
        src = t.by_source
        known = ("reported", "engine", "idle")
        p = sum(src[n]["peak_flops"] for n in (*known, "counters"))
        assert w.mfu == pytest.approx(t.mfu, rel=1e-9)
        assert (w.achieved_flops + w.estimated_flops) / w.mfu_estimated == pytest.approx(p, rel=1e-9)
        over = (t.achieved_flops - sum(src[n]["true_flops"] for n in known)) / p
        hw = (src["counters"]["hardware_flops"] - src["counters"]["true_flops"]) / p
        est = (w.estimated_flops - src["counters"]["hardware_flops"]) / p
        gap = w.mfu_estimated - t.true_mfu_estimable
        assert gap == pytest.approx(over + hw + est, abs=1e-12)
        rows.append((w.mfu_estimated, t.true_mfu_estimable, t.true_mfu, over, hw, est))
    n = len(rows)
    mean = [sum(r[i] for r in rows) / n for i in range(6)]
    print(f"\n[mix] fleet over {n} windows: mfu_estimated {mean[0]:.4f}, truth(known+counters) "
          f"{mean[1]:.4f}, truth(all) {mean[2]:.4f}; gap {mean[0] - mean[1]:+.4f} = "
          f"over-reported {mean[3]:+.4f} + hardware-not-model {mean[4]:+.4f} "
          f"+ estimator {mean[5]:+.4f}")
    assert max(abs(r[5]) for r in rows) < 0.003  # the estimator itself: counter noise only
    assert 0.005 < mean[3] < 0.03 and 0.005 < mean[4] < 0.04
