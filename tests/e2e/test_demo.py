"""The main job, end to end: `mfu demo` on the real services, short run. The report must
exist, name the drifting job and the busy-but-inefficient workloads, and its numbers must
match what InfluxDB holds."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from influxdb_client import InfluxDBClient

DURATION_S = 100


@pytest.fixture(scope="module")
def demo_report(kafka_bootstrap: str, influx, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFU_")}
    env.update({
        "MFU_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MFU_INFLUX_URL": influx.url,
        "MFU_INFLUX_TOKEN": influx.token,
        "MFU_INFLUX_ORG": influx.org,
        "MFU_INFLUX_BUCKET": influx.bucket,
        "MFU_INFLUX_API": influx.api,
    })
    proc = subprocess.run(
        [sys.executable, "-m", "mfucli", "demo", "--duration-s", str(DURATION_S), "--nodes", "6",
         "--gpus-per-node", "8", "--out", str(out), "--no-view"],
        env=env, capture_output=True, text=True, timeout=DURATION_S + 240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return out


def test_report_files_exist(demo_report: Path) -> None:
    for name in ("summary.txt", "mfu-demo.png", "report.json", "records.jsonl",
                 "policy-events.jsonl"):
        assert (demo_report / name).stat().st_size > 0, name
    assert (demo_report / "mfu-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_numbers_match_influxdb(demo_report: Path, influx) -> None:
    report = json.loads((demo_report / "report.json").read_text())
    assert report["fleet_windows"] >= DURATION_S // 10 - 2
    query = (f'from(bucket: "{influx.bucket}") |> range(start: 0) '
             f'|> filter(fn: (r) => r._measurement == "mfu" and r.scope == "fleet" '
             f'and r.fleet == "{report["fleet"]}" and r._field == "mfu")')
    with InfluxDBClient(url=influx.url, token=influx.token, org=influx.org) as client:
        tables = client.query_api().query(query)
    points = {rec.get_time().timestamp(): rec.get_value() for t in tables for rec in t.records}
    assert sorted(points) == pytest.approx(sorted(report["window_starts"]))
    assert statistics.fmean(points.values()) == pytest.approx(report["fleet_mfu_mean"], rel=1e-9)


def test_policy_events_are_marked_in_influxdb(demo_report: Path, influx) -> None:
    """The rules stage copies its events to measurement mfu_policy (the dashboard's marks)."""
    query = (f'from(bucket: "{influx.bucket}") |> range(start: -1h) '
             '|> filter(fn: (r) => r._measurement == "mfu_policy" and r._field == "summary" '
             'and r.type == "drift" and r.key == "llm-train-0")')
    with InfluxDBClient(url=influx.url, token=influx.token, org=influx.org) as client:
        tables = client.query_api().query(query)
    summaries = [rec.get_value() for t in tables for rec in t.records]
    assert summaries and "below expected" in summaries[-1]


def test_report_names_drift_and_busy_inefficient(demo_report: Path) -> None:
    report = json.loads((demo_report / "report.json").read_text())
    summary = (demo_report / "summary.txt").read_text()
    drift_job = "workload/llm-train-0"
    assert drift_job in report["drift_subjects"], report["policy_events_by_type"]
    assert report["busy_but_inefficient"], "no under-batched inference workload identified"
    flagged = {s.split("/", 1)[1] for s in report["busy_inefficient_subjects"]}
    assert flagged & set(report["busy_but_inefficient"])
    assert "llm-train-0" in summary


def _report(demo_report: Path) -> tuple[dict, str, dict[str, dict]]:
    report = json.loads((demo_report / "report.json").read_text())
    rows = {r["workload"]: r for r in report["workloads"]}
    return report, (demo_report / "summary.txt").read_text(), rows


def _family(rows: dict[str, dict], prefix: str) -> list[dict]:
    out = [r for k, r in rows.items() if k.rsplit("-", 1)[0] == prefix]
    assert out, f"no {prefix}-* workload in the report: {sorted(rows)}"
    return out


def test_coverage_and_estimate_against_the_truth(demo_report: Path) -> None:
    """Silent jobs exist, so coverage is below 1 and MFU is over known GPU-seconds; the
    estimate's distance to the simulator's truth decomposes exactly into its causes."""
    report, summary, _ = _report(demo_report)
    src = report["fleet_flop_sources"]
    assert src["counters"] > 0 and src["reported"] > 0  # silent jobs on counters, SDK jobs
    assert 0 < report["fleet_coverage_mean"] < 1
    assert report["fleet_mfu_estimated_mean"] is not None
    for line in ("coverage (GPU-seconds with known FLOPs)", "MFU measured (known GPU-seconds)",
                 "MFU estimated (known + counters)",
                 "Fleet mfu_estimated vs the simulator's ground truth"):
        assert line in summary, line
    gap = report["estimate_vs_truth"]
    assert gap and gap["windows"] >= 3 and gap["estimated_windows"] == gap["windows"]
    parts = (gap["estimator"] + gap["over_reported"] + gap["hardware_not_model"]
             + gap["unknown_excluded"])
    assert parts == pytest.approx(gap["gap_all"], abs=1e-9)
    assert gap["over_reported"] > 0  # the double-counting reporter is in the fleet


def test_decode_is_memory_bound_on_mbu_not_inefficient(demo_report: Path) -> None:
    report, summary, rows = _report(demo_report)
    flagged = {s.split("/", 1)[1] for s in report["busy_inefficient_subjects"]}
    for r in _family(rows, "decode"):
        assert r["phase"] == "decode" and r["regime"] == "memory", r
        assert r["mbu_mean"] is not None and r["mbu_mean"] > r["mfu_mean"], r
        assert r["label"].startswith("memory-bound, MBU "), r["label"]
        assert r["workload"] not in report["busy_but_inefficient"]
        assert r["workload"] not in flagged and r["workload"] not in report["memory_bound_flagged"]
        assert f"{r['workload']} (memory-bound, MBU " in summary
    # memory-bound means intensity below half the ridge, so MFU < MBU / 2 < 0.5: a job at
    # high MFU is never called memory-bound (fp32 training once was, on tensor_active 0)
    for name in report["memory_bound"]:
        assert rows[name]["mfu_mean"] is None or rows[name]["mfu_mean"] < 0.5, rows[name]


def test_underbatched_prefill_is_flagged(demo_report: Path) -> None:
    report, _, rows = _report(demo_report)
    flagged = {s.split("/", 1)[1] for s in report["busy_inefficient_subjects"]}
    for r in _family(rows, "infer"):
        assert r["phase"] == "prefill" and r["label"].startswith("busy but inefficient"), r
        assert r["workload"] in report["busy_but_inefficient"] and r["workload"] in flagged


def test_reporter_mismatch_names_the_double_counting_reporter(demo_report: Path) -> None:
    report, summary, rows = _report(demo_report)
    by = {m["workload"]: m for m in report["reporter_mismatch"]}
    for r in _family(rows, "moe-train"):
        m = by.get(r["workload"])
        assert m is not None, report["reporter_mismatch"]
        assert m["verdict"] == "true positive" and m["over_report"] > 1.2
        assert m["windows_to_detect"] is not None and m["windows_to_detect"] >= 1
        assert f"  {r['workload']}: {m['events']} event(s)" in summary
    assert [m for m in by.values() if m["verdict"] != "true positive"] == []
    assert "  honest reporters flagged: none" in summary


def test_energy_per_workload(demo_report: Path) -> None:
    """Every simulated GPU reports energy; FLOPs per joule only where FLOPs are known (a
    silent job has none, not zero)."""
    report, _, rows = _report(demo_report)
    assert report["fleet_energy_j"] > 0 and report["fleet_flops_per_j"] > 0
    for r in rows.values():
        assert r["energy_j"] is not None and r["energy_j"] > 0, r["workload"]
        if r["mfu_mean"] is None:
            assert r["flops_per_j"] is None, r["workload"]
        elif r["achieved_flops"] > 0:
            assert r["flops_per_j"] > 0, r["workload"]
    total = report["ledger"]["total"]
    assert total["energy_kwh"] * 3.6e6 == pytest.approx(
        sum(r["energy_j"] for r in rows.values()), rel=1e-9)


def test_ledger_by_tenant_closes_the_summary(demo_report: Path) -> None:
    report, summary, rows = _report(demo_report)
    ledger = report["ledger"]
    assert ledger["group_by"] == "tenant"
    tenants = {r["tenant"] or "(no tenant)" for r in rows.values()}
    by = {r["group"]: r for r in ledger["rows"]}
    assert set(by) == tenants
    # the rows add up to the total, which is every workload GPU-second
    gpu_h = sum(r["gpu_seconds"] for r in rows.values()) / 3600.0
    assert sum(r["allocated_gpu_hours"] for r in by.values()) == pytest.approx(gpu_h, rel=1e-9)
    assert ledger["total"]["allocated_gpu_hours"] == pytest.approx(gpu_h, rel=1e-9)
    for tenant, row in by.items():
        assert row["cost_usd"] is not None and row["cost_usd"] > 0, tenant  # rules' prices
        jobs = [r for r in rows.values() if (r["tenant"] or "(no tenant)") == tenant]
        if all(r["mfu_mean"] is None for r in jobs):  # silent tenant: unknown, not zero
            assert row["mfu"] is None and row["unknown_usd"] > 0, tenant
    assert ledger["unallocated"] is not None
    section = summary.split("Ledger by tenant", 1)[1].split("\nFiles:", 1)[0]
    assert all(name in section for name in (*tenants, "(all groups)", "(unallocated)"))
    assert summary.index("Ledger by tenant") > summary.index("Policy events by type")
