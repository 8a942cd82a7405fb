"""The demo's report on synthetic records: coverage and measured vs estimated MFU, the
estimate against the simulator's truth (and why they differ), memory-bound inference on
MBU, reporter mismatch, energy, and the ledger by tenant (mfu.ledger)."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest

from mfucli.demo import Collected, simulator_truth
from mfucli.demo_report import (
    estimate_gap,
    ledger_by_tenant,
    summarize,
    workload_label,
    write_report,
)

WS = 1_700_000_000.0


def rec(scope: str, key: str, k: int, **fields: Any) -> dict[str, Any]:
    """One mfu_window/1 record as the demo reads it (window k of 10 s)."""
    base = {"scope": scope, "key": key, "window_start": WS + 10 * k,
            "window_end": WS + 10 * k + 10, "event_id": f"{scope}:{key}:{k}",
            "gpus": 1, "gpu_seconds": 10.0, "achieved_flops": 0.0, "peak_flops": 0.0}
    base.update(fields)
    return base


def src(**seconds: float) -> dict[str, float]:
    return {"reported": 0.0, "engine": 0.0, "idle": 0.0, "counters": 0.0, "none": 0.0,
            **seconds}


def part(seconds: float, peak: float, achieved: float, true: float, hw: float) -> dict:
    return {"seconds": seconds, "peak_flops": peak, "achieved_flops": achieved,
            "true_flops": true, "hardware_flops": hw, "true_bytes": 0.0}


def fleet_truth(k: int) -> dict[str, Any]:
    """One fleet window: 10 s each of reported (a reporter that says 30 for a true 20),
    idle, counters (true 40, the pipes did 50) and none (true 30); peak 100 each."""
    by_source = {"reported": part(10, 100, 30, 20, 25), "engine": part(0, 0, 0, 0, 0),
                 "idle": part(10, 100, 0, 0, 0), "counters": part(10, 100, 0, 40, 50),
                 "none": part(10, 100, 0, 30, 36)}
    return {"scope": "fleet", "key": "default", "window_start": WS + 10 * k,
            "true_flops": 90.0, "peak_flops": 400.0, "achieved_flops": 30.0,
            "gpu_seconds": 40.0, "energy_j": 0.0, "peak_bytes": 0.0, "true_bytes": 0.0,
            "tenant": None, "by_source": by_source}


def test_estimate_gap_decomposes_exactly() -> None:
    # peak over estimable GPU-seconds (reported + idle + counters) = 300
    # truth there: (20 + 0 + 40) / 300 = 0.2; over all: 90 / 400 = 0.225
    # exact on counters: (30 + 50) / 300 = 0.26667; over-reported: (30 - 20) / 300;
    # hardware, not model: (50 - 40) / 300; pipeline estimate 0.28 -> estimator +0.01333
    fleet = [rec("fleet", "demo-x", 0, mfu=0.15, mfu_estimated=0.28)]
    gap = estimate_gap(fleet, [fleet_truth(0)])
    assert gap["windows"] == 1 and gap["estimated"] == 0.28 and gap["measured"] == 0.15
    assert gap["truth_estimable"] == pytest.approx(0.2)
    assert gap["truth_all"] == pytest.approx(0.225)
    assert gap["exact_on_counters"] == pytest.approx(80 / 300)
    assert gap["over_reported"] == pytest.approx(10 / 300)
    assert gap["hardware_not_model"] == pytest.approx(10 / 300)
    assert gap["unknown_excluded"] == pytest.approx(-0.025)
    assert gap["estimator"] == pytest.approx(0.28 - 80 / 300)
    assert gap["gap_all"] == pytest.approx(0.055)  # 0.28 - 0.225
    parts = gap["estimator"] + gap["over_reported"] + gap["hardware_not_model"] \
        + gap["unknown_excluded"]
    assert parts == pytest.approx(gap["gap_all"])
    # no estimate from the pipeline: the truth's side still comes out
    bare = estimate_gap([rec("fleet", "demo-x", 0, mfu=0.15)], [fleet_truth(0)])
    assert bare["estimated"] is None and "estimator" not in bare
    assert estimate_gap(fleet, []) is None


def test_labels_judge_memory_bound_work_on_mbu() -> None:
    decode = {"workload": "decode-0", "phase": "decode", "regime": "memory", "mbu_mean": 0.712,
              "mfu_mean": 0.03}
    assert workload_label(decode, set()) == "memory-bound, MBU 71%"
    prefill = {"workload": "infer-0", "phase": "prefill", "regime": "mixed", "mbu_mean": 0.04,
               "mfu_mean": 0.07}
    assert workload_label(prefill, {"infer-0"}) == "busy but inefficient (MBU 4%)"
    silent = {"workload": "dark-0", "mfu_mean": None, "mfu_estimated_mean": 0.4}
    assert workload_label(silent, set()) == "not reported: estimated from counters"
    assert workload_label({"workload": "a", "mfu_mean": None}, set()) == \
        "not reported, no counters: unknown"


def demo_collected() -> tuple[Collected, list[dict[str, Any]]]:
    c = Collected()
    truth: list[dict[str, Any]] = []
    for k in range(4):
        for r in (
            rec("workload", "decode-0", k, mfu=0.03, sm_util=0.65, phase="decode",
                regime="memory", mbu=0.7, achieved_bytes=7.0, peak_bytes=10.0,
                achieved_flops=3.0, energy_j=2.0, flops_per_j=1.5, tokens=10.0,
                tenant="serve-co",
                coverage=1.0, flop_sources=src(engine=10)),
            rec("workload", "infer-0", k, mfu=0.07, sm_util=0.9, phase="prefill",
                regime="mixed", mbu=0.04, achieved_bytes=0.4, peak_bytes=10.0,
                achieved_flops=7.0, energy_j=3.0, flops_per_j=7 / 3, tenant="serve-co",
                coverage=1.0,
                flop_sources=src(engine=10)),
            rec("workload", "dark-train-0", k, mfu=None, mfu_estimated=0.4, ofu=0.44,
                sm_util=0.95, coverage=0.0, estimated_flops=40.0, energy_j=5.0,
                tenant="dark-matter", flop_sources=src(counters=10)),
            rec("workload", "moe-train-0", k, mfu=0.6, sm_util=0.96, ofu=0.33,
                achieved_flops=60.0, energy_j=6.0, flops_per_j=10.0, tenant="moe-labs",
                coverage=1.0,
                flop_sources=src(reported=10)),
        ):
            c.records[r["event_id"]] = r
        f = rec("fleet", "demo-x", k, mfu=0.15, mfu_estimated=0.28, coverage=0.5,
                allocation=1.0, achieved_flops=30.0, energy_j=10.0, flops_per_j=6.0,
                flop_sources=src(reported=10, idle=10, counters=10, none=10))
        c.records[f["event_id"]] = f
        truth.append(fleet_truth(k))
        for key, achieved, true in (("moe-train-0", 60.0, 30.0), ("decode-0", 3.0, 3.0)):
            truth.append({"scope": "workload", "key": key, "window_start": WS + 10 * k,
                          "achieved_flops": achieved, "true_flops": true, "peak_flops": 100.0,
                          "energy_j": 6.0, "peak_bytes": 10.0, "true_bytes": 7.0,
                          "gpu_seconds": 10.0, "tenant": None,
                          "by_source": {"reported": part(10, 100, achieved, true, true)}})
    c.policy = [
        {"type": "io.mfu.reporter_mismatch.v1", "subject": "workload/moe-train-0",
         "data": {"summary": "reported MFU 60% above OFU 33%", "basis": "reported",
                  "windows": {"start": WS + 20, "end": WS + 30}}},
        {"type": "io.mfu.reporter_mismatch.v1", "subject": "workload/moe-train-0",
         "data": {"windows": {"start": WS + 30, "end": WS + 40}}},
        {"type": "io.mfu.inefficient.v1", "subject": "workload/infer-0",
         "data": {"windows": {"start": WS, "end": WS + 30}}},
    ]
    return c, truth


def test_summary_names_memory_bound_silent_and_mismatch() -> None:
    c, truth = demo_collected()
    s = summarize(c, truth, window_s=10.0)
    assert s["busy_but_inefficient"] == ["infer-0"]  # decode is memory-bound, not here
    assert s["memory_bound"] == ["decode-0"]
    assert s["uninstrumented"] == ["dark-train-0"] and s["uninstrumented_flagged"] == []
    assert s["memory_bound_flagged"] == []
    (m,) = s["reporter_mismatch"]
    # first event ends at WS + 30, the job's first window starts at WS: 3 windows
    assert m["workload"] == "moe-train-0" and m["events"] == 2 and m["windows_to_detect"] == 3
    assert m["over_report"] == pytest.approx(2.0) and m["verdict"] == "true positive"
    rows = {r["workload"]: r for r in s["workloads"]}
    # decode: Σ achieved_bytes / Σ peak_bytes = 28 / 40; 12 FLOPs / 8 J; 40 tokens / 8 J
    assert rows["decode-0"]["mbu_mean"] == pytest.approx(0.7)
    assert rows["decode-0"]["flops_per_j"] == pytest.approx(1.5)
    assert rows["decode-0"]["tokens_per_j"] == pytest.approx(5.0)
    assert rows["decode-0"]["label"] == "memory-bound, MBU 70%"
    assert rows["decode-0"]["true_mbu"] == pytest.approx(0.7)
    assert rows["dark-train-0"]["mfu_mean"] is None
    assert rows["dark-train-0"]["mfu_estimated_mean"] == pytest.approx(0.4)
    assert rows["dark-train-0"]["coverage_mean"] == 0.0
    assert rows["moe-train-0"]["true_mfu"] == pytest.approx(0.3)  # 120 / 400
    assert s["fleet_coverage_mean"] == 0.5 and s["fleet_mfu_estimated_mean"] == 0.28
    # 30 FLOPs per window over the known GPU-seconds' 5 J (flops_per_j 6): 120 / 20 J;
    # the silent half's joules are not in it, and a silent job has no FLOP/J at all
    assert s["fleet_flops_per_j"] == pytest.approx(6.0)
    assert rows["dark-train-0"]["flops_per_j"] is None
    assert s["estimate_vs_truth"]["windows"] == 4
    assert s["fleet_flop_sources"] == src(reported=40, idle=40, counters=40, none=40)


def test_ledger_by_tenant_is_mfu_ledger_priced_by_the_rules(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's ledger is mfu.ledger's, over the records, priced by the rules file's
    ``prices`` block unless MFU_LEDGER_PRICES is set."""
    monkeypatch.delenv("MFU_LEDGER_PRICES", raising=False)
    monkeypatch.delenv("MFU_LEDGER_PRICES_FILE", raising=False)
    monkeypatch.delenv("MFU_POLICIES_RULES_FILE", raising=False)
    h100 = {"gpu_model": "NVIDIA H100 80GB HBM3"}
    records = [
        # a: 2 windows of 3600 GPU-s, all reported, MFU 0.5 and 0.1; 2 kWh each
        rec("workload", "a-0", 0, gpu_seconds=3600.0, achieved_flops=4e15, mfu=0.5,
            energy_j=3.6e6, tenant="a", flop_sources=src(reported=3600), **h100),
        rec("workload", "a-0", 1, gpu_seconds=3600.0, achieved_flops=1e15, mfu=0.1,
            energy_j=3.6e6, tenant="a", flop_sources=src(reported=3600), **h100),
        # b: 1800 GPU-s busy and silent, counters estimate 2 PFLOPs
        rec("workload", "b-0", 0, gpu_seconds=1800.0, mfu=None, mfu_estimated=0.3,
            estimated_flops=2e15, tenant="b", flop_sources=src(counters=1800), **h100),
    ]
    ledger, prices, source = ledger_by_tenant(records)
    assert "default_rules.yaml" in source and prices.price(h100["gpu_model"]) == 3.00
    rows = {r.group: r for r in ledger.rows}
    a, b = rows["a"], rows["b"]
    # a: 7200 s = 2 GPU-h at $3.00 = $6; MFU (0.5 x 3600 + 0.1 x 3600) / 7200 = 0.3;
    # 5 PFLOP measured; wasted: $3 x max(0, 1 - 0.1 / 0.4) = $2.25 (the 0.5 window: 0)
    assert a.allocated_gpu_hours == 2.0 and a.mfu == pytest.approx(0.3)
    assert a.measured_pflop == pytest.approx(5.0) and a.energy_kwh == pytest.approx(2.0)
    assert a.cost_usd == pytest.approx(6.0) and a.wasted_usd == pytest.approx(2.25)
    # b: 0.5 GPU-h, nothing known: $1.50 unknown, never wasted; 2 PFLOP estimated
    assert b.mfu is None and b.estimated_pflop == pytest.approx(2.0)
    assert b.unknown_usd == pytest.approx(1.5) and b.wasted_usd == 0.0
    monkeypatch.setenv("MFU_LEDGER_PRICES", '{"*": 1.0}')
    ledger, _, source = ledger_by_tenant(records)
    assert source.startswith("MFU_LEDGER_PRICES") and ledger.total.cost_usd == pytest.approx(2.5)


def test_write_report_files_and_summary(tmp_path: Path) -> None:
    c, truth = demo_collected()
    args = Namespace(nodes=2, gpus_per_node=2, duration_s=40.0, window_s=10.0)
    paths = write_report(tmp_path, c, sim_started=WS, fleet="demo-x", drift_at_s=16,
                         args=args, truth=truth)
    text = Path(paths["summary"]).read_text()
    for needle in ("coverage (GPU-seconds with known FLOPs)    50.0%",
                   "MFU estimated (known + counters)           28.0%",
                   "Fleet mfu_estimated vs the simulator's ground truth",
                   "over-reported FLOPs (a reporter counting twice)          +3.3 pts",
                   "decode-0 (memory-bound, MBU 70%)",
                   "moe-train-0: 2 event(s), first after 3 window(s); truth: reports 2.00x",
                   "  honest reporters flagged: none",
                   "Ledger by tenant (mfu.ledger"):
        assert needle in text, needle
    ledger = text.split("Ledger by tenant", 1)[1]
    for tenant in ("serve-co", "dark-matter", "moe-labs", "(all groups)"):
        assert tenant in ledger, tenant
    report = json.loads((tmp_path / "report.json").read_text())
    assert {r["group"] for r in report["ledger"]["rows"]} == {"serve-co", "dark-matter",
                                                             "moe-labs"}
    assert (tmp_path / "mfu-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "truth.jsonl").read_text().splitlines()) == len(truth)


def test_simulator_truth_covers_the_closed_windows() -> None:
    args = Namespace(nodes=3, gpus_per_node=2, seed=4, duration_s=30.0, window_s=10.0)
    models = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]
    # the run starts at WS + 3: the window at WS is partial, WS + 30 runs past the end
    rows = simulator_truth(args, models, WS + 3, 12.0, [WS, WS + 10, WS + 20, WS + 30])
    fleet = [r for r in rows if r["scope"] == "fleet"]
    assert [r["window_start"] for r in fleet] == [WS + 10, WS + 20]
    assert all(r["gpu_seconds"] == pytest.approx(10.0 * r["gpus"]) for r in fleet)
    assert {r["scope"] for r in rows} == {"fleet", "workload"}


def test_live_view_shows_coverage_and_estimate() -> None:
    from mfucli.demo import render_view

    c, _ = demo_collected()
    view = render_view(c, 35.0, 40.0)
    assert "coverage  50.0%   MFU measured  15.0%   MFU estimated  28.0%" in view
    # the last window's workloads, lowest MFU first; the silent job has no MFU to rank
    assert view.index("decode-0") < view.index("infer-0") < view.index("moe-train-0")
    assert "dark-train-0" not in view.split("WORST NODES")[0]


def test_flags_on_unknown_or_memory_bound_work_are_named() -> None:
    """The report calls out what the rules must not do: flag a silent job, or flag decode
    as inefficient, or flag an honest reporter for a mismatch."""
    c, truth = demo_collected()
    c.policy += [
        {"type": "io.mfu.idle.v1", "subject": "workload/dark-train-0", "data": {}},
        {"type": "io.mfu.inefficient.v1", "subject": "workload/decode-0", "data": {}},
        {"type": "io.mfu.reporter_mismatch.v1", "subject": "workload/decode-0",
         "data": {"windows": {"start": WS, "end": WS + 10}}},
    ]
    s = summarize(c, truth, window_s=10.0)
    assert s["uninstrumented_flagged"] == ["dark-train-0"]
    assert s["memory_bound_flagged"] == ["decode-0"]
    verdicts = {m["workload"]: (m["verdict"], m["windows_to_detect"])
                for m in s["reporter_mismatch"]}
    # decode reports 3 for a true 3: honest; its first event ends one window in
    assert verdicts == {"decode-0": ("false positive (honest reporter)", 1),
                        "moe-train-0": ("true positive", 3)}


def test_display_rows_fold_large_families_and_flops_per_known_joule() -> None:
    from mfucli.demo_report import _flops_per_known_j, display_rows

    rows = [{"workload": f"mig-{i}", "tenant": "edge", "mfu_mean": m, "gpus": 1,
             "energy_j": 10.0, "label": ""} for i, m in enumerate((0.1, 0.2, 0.3, 0.4, 0.5))]
    rows.append({"workload": "solo-0", "tenant": "t", "mfu_mean": 0.6, "gpus": 2,
                 "energy_j": 5.0, "label": "mixed"})
    (mig, solo) = display_rows(rows)
    # 5 jobs > 4: one line, MFU mean (0.1 + ... + 0.5) / 5 = 0.3, GPUs 5, energy 50 J
    assert mig["workload"] == "mig-* (5 jobs)" and mig["mfu_mean"] == pytest.approx(0.3)
    assert mig["gpus"] == 5 and mig["energy_j"] == 50.0 and mig["tenant"] == "edge"
    assert solo == rows[-1]
    # window 1: 8 FLOPs at 2 FLOP/J = 4 known J; window 2 idle (a known zero): 6 J x
    # coverage 1; window 3 silent (mfu None): left out. 8 / (4 + 6) = 0.8
    recs = [{"mfu": 0.4, "achieved_flops": 8.0, "flops_per_j": 2.0, "energy_j": 9.0},
            {"mfu": 0.0, "achieved_flops": 0.0, "flops_per_j": 0.0, "energy_j": 6.0,
             "coverage": 1.0},
            {"mfu": None, "achieved_flops": 0.0, "flops_per_j": None, "energy_j": 7.0}]
    assert _flops_per_known_j(recs) == pytest.approx(0.8)
    assert _flops_per_known_j(recs[2:]) is None
