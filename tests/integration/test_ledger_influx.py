"""`mfu ledger` against the real InfluxDB: window points written in line protocol with the
contract's field names (DESIGN.md §4, §8) under a unique ``fleet`` tag of measurement
``mfu``, read back by the command (in process and as ``python -m mfucli``, Flux and
InfluxQL), and the Grafana ledger dashboard's Flux queries run on the same points.

The stream is the one of tests/unit/test_ledger.py (the table and arithmetic are there):
acme: 160 GPU-s on H100 (2.40/h), 44 measured PFLOP, 4 estimated, 96000 J, cost 384/3600,
wasted 54/3600; beta: 20 GPU-s on A100 (1.20/h), 0.3 PFLOP, 6000 J, cost 24/3600, wasted
9/3600; (no tenant): 10 GPU-s on an unpriced model.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from mfu.config import InfluxSettings as Settings
from mfucli.main import main
from mfuio.influx import InfluxWriter

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
H100 = r"NVIDIA\ H100\ 80GB\ HBM3"
A100 = "NVIDIA\\ A100-SXM4-80GB"
PRICES = json.dumps({"NVIDIA H100 80GB HBM3": 2.40, "*A100*": 1.20})


def approx(x: float) -> Any:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def lines(fleet: str, t0_ns: int) -> list[str]:
    t1 = t0_ns + 10 * 10**9
    wl = f"mfu,scope=workload,fleet={fleet}"
    return [
        f"{wl},key=train-a,tenant=acme,gpu_model={H100} gpu_seconds=80.0,window_s=10.0,"
        "achieved_tflops=3200.0,mfu=0.5,mfu_estimated=0.5,energy_j=56000.0,tokens=1000.0,"
        f"flop_sources_reported=80.0,flop_sources_engine=0.0,flop_sources_idle=0.0,"
        f"flop_sources_counters=0.0,flop_sources_none=0.0 {t0_ns}",
        f"{wl},key=train-a,tenant=acme,gpu_model={H100} gpu_seconds=80.0,window_s=10.0,"
        "achieved_tflops=1200.0,estimated_tflops=400.0,mfu=0.25,mfu_estimated=0.3,"
        "energy_j=40000.0,flop_sources_reported=40.0,flop_sources_idle=20.0,"
        f"flop_sources_counters=20.0 {t1}",
        f"{wl},key=infer-b,tenant=beta,gpu_model={A100} gpu_seconds=20.0,window_s=10.0,"
        "achieved_tflops=30.0,mfu=0.1,energy_j=6000.0,tokens=500.0,flop_sources_engine=10.0,"
        f"flop_sources_none=10.0 {t0_ns}",
        f"{wl},key=mystery,gpu_model=Other\\ GPU gpu_seconds=10.0,window_s=10.0,"
        f"achieved_tflops=0.0,flop_sources_none=10.0 {t0_ns}",
        f"mfu,scope=node,fleet={fleet},key=n1,gpu_model={H100} gpu_seconds=100.0,window_s=10.0,"
        f"allocation=0.8 {t0_ns}",
        f"mfu,scope=node,fleet={fleet},key=n1,gpu_model={H100} gpu_seconds=100.0,window_s=10.0,"
        f"allocation=0.8 {t1}",
        f"mfu,scope=node,fleet={fleet},key=n2,gpu_model={A100} gpu_seconds=40.0,window_s=10.0,"
        f"allocation=0.5 {t0_ns}",
        f"mfu,scope=node,fleet={fleet},key=n3,gpu_model=Other\\ GPU gpu_seconds=10.0,"
        f"window_s=10.0,allocation=1.0 {t0_ns}",
        f"mfu,scope=fleet,fleet={fleet},key={fleet},gpu_model=mixed gpu_seconds=250.0,"
        f"window_s=10.0,allocation=0.76 {t0_ns}",
        # Not a window point (no window_s): skipped with a warning, never a crash.
        f"{wl},key=junk gpu_seconds=5.0 {t0_ns}",
    ]


@pytest.fixture(scope="module")
def written(influx: Any) -> dict[str, Any]:
    fleet = f"ledger-{uuid.uuid4().hex[:10]}"
    t0_s = (int(time.time()) // 10) * 10 - 600
    settings = Settings(url=influx.url, token=influx.token, org=influx.org,
                        bucket=influx.bucket, api=influx.api)
    writer = InfluxWriter(settings)
    try:
        pts = lines(fleet, t0_s * 10**9)
        writer.write_lines(pts, max_attempts=5)
        # A replay after a restart writes the same window again: it must count once.
        writer.write_lines(pts[:1], max_attempts=5)
    finally:
        writer.close()
    env = {
        "MFU_INFLUX_URL": influx.url, "MFU_INFLUX_TOKEN": influx.token,
        "MFU_INFLUX_ORG": influx.org, "MFU_INFLUX_BUCKET": influx.bucket,
        "MFU_INFLUX_API": influx.api, "MFU_LEDGER_PRICES": PRICES,
    }
    return {"fleet": fleet, "t0_s": t0_s, "env": env, "influx": influx}


def _inprocess(written: dict, monkeypatch: pytest.MonkeyPatch, capsys: Any,
               *argv: str, **env: str) -> tuple[int, str, str]:
    for k, v in {**written["env"], **env}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MFU_INFLUX_TOKEN_FILE", raising=False)
    capsys.readouterr()
    rc = main(["ledger", "--since", "30m", "--fleet", written["fleet"], *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _subprocess(written: dict, *argv: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **written["env"], **env, "PYTHONPATH": str(ROOT)}
    full.pop("MFU_INFLUX_TOKEN_FILE", None)
    return subprocess.run(
        [sys.executable, "-m", "mfucli", "ledger", "--since", "30m", "--fleet",
         written["fleet"], *argv],
        cwd=ROOT, env=full, capture_output=True, text=True, timeout=120, check=False,
    )


def test_json_by_tenant_matches_the_hand_ledger(written: dict, monkeypatch: pytest.MonkeyPatch,
                                                capsys: Any) -> None:
    rc, out, err = _inprocess(written, monkeypatch, capsys, "--json")
    assert rc == 0, err
    assert "skipped 1 points" in err and "junk" in err
    data = json.loads(out)
    rows = {r["group"]: r for r in data["rows"]}
    assert list(rows) == ["acme", "beta", "(no tenant)"]
    acme, beta, nobody = rows["acme"], rows["beta"], rows["(no tenant)"]
    assert acme["windows"] == 2  # the replayed window counted once
    assert acme["allocated_gpu_hours"] == approx(160 / 3600)
    assert acme["measured_pflop"] == approx(44)
    assert acme["estimated_pflop"] == approx(4)
    assert acme["mfu"] == approx(55 / 140)
    assert acme["energy_kwh"] == approx(96000 / 3.6e6)
    assert acme["tokens"] == approx(1000)
    assert acme["cost_usd"] == approx(384 / 3600)
    assert acme["wasted_usd"] == approx(54 / 3600)
    assert acme["unknown_usd"] == approx(48 / 3600)
    assert acme["usd_per_useful_pflop_hour"] == approx(384 / 44)
    assert beta["cost_usd"] == approx(24 / 3600)
    assert beta["wasted_usd"] == approx(9 / 3600)
    assert beta["energy_kwh"] == approx(6000 / 3.6e6)
    assert beta["usd_per_useful_pflop_hour"] == approx(80)
    assert nobody["cost_usd"] is None and nobody["unpriced_gpu_hours"] == approx(10 / 3600)
    assert data["total"]["cost_usd"] == approx(408 / 3600)
    assert data["total"]["wasted_usd"] == approx(63 / 3600)
    assert data["capacity"]["source_scope"] == "node"
    assert data["capacity"]["unallocated_gpu_hours"] == approx(60 / 3600)
    assert data["unallocated"]["cost_usd"] == approx(120 / 3600)
    assert data["provider_cost_usd"] == approx(528 / 3600)
    assert data["prices_usd_per_gpu_hour"] == json.loads(PRICES)


def test_csv_file_for_finance(written: dict, monkeypatch: pytest.MonkeyPatch, capsys: Any,
                              tmp_path: Path) -> None:
    path = tmp_path / "ledger.csv"
    rc, out, err = _inprocess(written, monkeypatch, capsys, "--by", "workload", "--csv", str(path))
    assert rc == 0, err
    assert "train-a" in out  # the table still prints
    rows = list(csv.DictReader(path.open()))
    assert rows[0].keys() >= {"period_start", "period_end", "group_by", "cost_usd",
                              "allocated_gpu_hours", "measured_pflop", "energy_kwh",
                              "usd_per_useful_pflop_hour", "wasted_usd"}
    by = {r["group"]: r for r in rows}
    assert list(by) == ["train-a", "infer-b", "mystery", "(all groups)", "(unallocated)"]
    assert {r["group_by"] for r in rows} == {"workload"}
    assert float(by["train-a"]["cost_usd"]) == approx(384 / 3600)
    assert float(by["train-a"]["energy_kwh"]) == approx(96000 / 3.6e6)
    assert by["mystery"]["cost_usd"] == ""  # unpriced: empty, never 0
    assert float(by["(all groups)"]["measured_pflop"]) == approx(44.3)
    assert float(by["(unallocated)"]["unallocated_gpu_hours"]) == approx(60 / 3600)
    assert float(by["(unallocated)"]["wasted_usd"]) == approx(120 / 3600)


def test_subprocess_table_and_influxql(written: dict) -> None:
    table = _subprocess(written, "--by", "tenant")
    assert table.returncode == 0, table.stderr
    lines_ = table.stdout.splitlines()
    acme = next(line.split() for line in lines_ if line.startswith("acme"))
    # GPU-h 160/3600, idle 20/3600, unknown 20/3600, PFLOP 44 / 4, MFU 55/140 = 39.3%,
    # kWh 96000/3.6e6, cost 384/3600, $/PFLOP-h 384/44 = 8.73, wasted 54/3600, unknown 48/3600
    assert acme == ["acme", f"{160 / 3600:.2f}", f"{20 / 3600:.2f}", f"{20 / 3600:.2f}",
                    "44.000", "4.000", "39.3%", f"{96000 / 3.6e6:.3f}", f"{384 / 3600:.2f}",
                    "8.73", f"{54 / 3600:.2f}", f"{48 / 3600:.2f}"]
    assert any("GPU-h on models without a price (Other GPU)" in line for line in lines_)
    assert any(line.startswith("fleet (node points): 0.07 GPU-h installed, 76.0% allocated")
               for line in lines_)

    v2 = _subprocess(written, "--csv", "-")
    assert v2.returncode == 0, v2.stderr
    if _server_version(written["influx"]).startswith("1."):
        # InfluxDB 1.x also answers InfluxQL /query: the v1 reader gives the same ledger.
        v1 = _subprocess(written, "--csv", "-", MFU_INFLUX_API="v1")
        assert v1.returncode == 0, v1.stderr
        strip = [{k: v for k, v in r.items() if k not in ("period_start", "period_end")}
                 for r in csv.DictReader(io.StringIO(v2.stdout))]
        assert strip == [{k: v for k, v in r.items() if k not in ("period_start", "period_end")}
                         for r in csv.DictReader(io.StringIO(v1.stdout))]

    bad = _subprocess(written, "--since", "yesterday-ish")
    assert bad.returncode == 2 and "cannot read time" in bad.stderr


def _server_version(influx: Any) -> str:
    with urllib.request.urlopen(f"{influx.url}/ping", timeout=10) as resp:
        return resp.headers.get("X-Influxdb-Version", "")


def test_grafana_ledger_queries_agree_with_the_command(written: dict,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: Any) -> None:
    from influxdb_client import InfluxDBClient

    influx = written["influx"]
    dash = json.loads((ROOT / "deploy/grafana/dashboards/mfu-ledger.json").read_text())
    (table,) = [p for p in dash["panels"] if p["type"] == "table"]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(written["t0_s"] - 60))
    got: dict[str | None, dict[str, float]] = {}
    with InfluxDBClient(url=influx.url, token=influx.token, org=influx.org) as client:
        for target in table["targets"]:
            q = (target["query"].replace('from(bucket: "mfu")', f'from(bucket: "{influx.bucket}")')
                 .replace("v.timeRangeStart", since).replace("v.timeRangeStop", "now()")
                 .replace("${usd_per_gpu_hour}", "2.5").replace("${fleet}", written["fleet"]))
            for t in client.query_api().query(q):
                for rec in t.records:
                    row = got.setdefault(rec.values.get("tenant"), {})
                    row.update({k: v for k, v in rec.values.items()
                                if k not in ("result", "table", "tenant")})
        for panel in dash["panels"]:  # every time-series query runs on this server too
            if panel["type"] == "timeseries":
                q = (panel["targets"][0]["query"]
                     .replace('from(bucket: "mfu")', f'from(bucket: "{influx.bucket}")')
                     .replace("v.timeRangeStart", since).replace("v.timeRangeStop", "now()")
                     .replace("v.windowPeriod", "1h").replace("${usd_per_gpu_hour}", "2.5")
                     .replace("${fleet}", written["fleet"]))
                assert client.query_api().query(q), panel["title"]
    # One price (2.5 USD/GPU-h) for every model, as the dashboard does: acme 160 s -> 400/3600
    assert got["acme"]["cost_usd"] == approx(400 / 3600)
    assert got["acme"]["allocated_gpu_hours"] == approx(160 / 3600)
    assert got["acme"]["measured_pflop"] == approx(44)
    assert got["acme"]["energy_kwh"] == approx(96000 / 3.6e6)
    assert got["beta"]["cost_usd"] == approx(50 / 3600)
    # the untagged workloads (mystery 10 s; junk 5 s has no window_s but gpu_seconds)
    assert got[None]["allocated_gpu_hours"] == approx(15 / 3600)
    # ... and the command with the same single price agrees per tenant
    rc, out, err = _inprocess(written, monkeypatch, capsys, "--json", "--prices", '{"*": 2.5}',
                              MFU_LEDGER_PRICES="{}")
    assert rc == 0, err
    rows = {r["group"]: r for r in json.loads(out)["rows"]}
    for tenant in ("acme", "beta"):
        assert rows[tenant]["cost_usd"] == approx(got[tenant]["cost_usd"])
        assert rows[tenant]["measured_pflop"] == approx(got[tenant]["measured_pflop"])
        assert rows[tenant]["energy_kwh"] == approx(got[tenant]["energy_kwh"])
