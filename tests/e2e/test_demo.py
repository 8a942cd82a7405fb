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
