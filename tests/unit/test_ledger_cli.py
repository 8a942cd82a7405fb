"""`mfu ledger` without a server: time arguments, query text, CSV/table output, the
Grafana ledger dashboard's queries."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from mfu.config import InfluxSettings
from mfu.ledger import COLUMNS, Prices, build_ledger
from mfucli.ledger import (
    CSV_COLUMNS,
    FIELDS,
    flux_query,
    format_table,
    influxql_query,
    parse_time,
    to_csv,
    to_json,
)
from mfucli.main import CLIError, build_parser
from tests.unit.test_ledger import PRICES, stream

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_796_400_000.0
# The §4/§8 contract fields of measurement ``mfu`` (CONTRACT-ADDITIONS.md).
CONTRACT_FIELDS = {
    "mfu", "achieved_tflops", "peak_tflops", "gpu_seconds", "gpus", "sm_util", "tensor_active",
    "window_s", "allocation", "coverage", "ofu", "mfu_estimated", "estimated_tflops", "mbu",
    "achieved_bytes", "peak_bytes", "dram_active", "energy_j", "flops_per_j", "tokens_per_j",
    "tokens", "flop_sources_reported", "flop_sources_engine", "flop_sources_idle",
    "flop_sources_counters", "flop_sources_none",
}


def test_parse_time_forms() -> None:
    assert parse_time("now", NOW) == NOW
    assert parse_time("24h", NOW) == NOW - 86400
    assert parse_time("90m", NOW) == NOW - 5400
    assert parse_time("7d", NOW) == NOW - 7 * 86400
    assert parse_time("1796000000", NOW) == 1796000000.0
    # 2026-12-01T00:00:00Z: 56 years x 365 + 14 leap days (1972..2024) + 334 days
    # (Jan..Nov 2026) = 20788 days after the epoch, x 86400 s
    assert parse_time("2026-12-01T00:00:00Z", NOW) == 20788 * 86400
    assert parse_time("2026-12-01", NOW) == 20788 * 86400  # UTC when no zone is given
    assert parse_time("2026-12-01T01:00:00+01:00", NOW) == 20788 * 86400
    with pytest.raises(CLIError, match="cannot read time"):
        parse_time("yesterday", NOW)


def test_the_command_is_registered() -> None:
    args = build_parser(["ledger"]).parse_args(
        ["ledger", "--since", "7d", "--by", "gpu-model", "--fleet", "prod", "--json"])
    assert (args.since, args.by, args.fleet, args.json) == ("7d", "gpu-model", "prod", True)
    with pytest.raises(SystemExit):
        build_parser(["ledger"]).parse_args(["ledger", "--by", "node"])


def test_queries_only_read_contract_fields_and_escape_the_fleet() -> None:
    assert set(FIELDS) <= CONTRACT_FIELDS
    s = InfluxSettings(bucket="mfu/autogen")
    flux = flux_query(s, 0.0, 10.0, 'a"b')
    assert 'r.fleet == "a\\"b"' in flux
    assert "range(start: 1970-01-01T00:00:00Z, stop: 1970-01-01T00:00:10Z)" in flux
    ql = influxql_query(s, 1.5, 10.0, "it's")
    assert "\"fleet\" = 'it\\'s'" in ql
    assert "time >= 1500000000 AND time < 10000000000" in ql
    assert "r.fleet" not in flux_query(s, 0.0, 10.0, None)


def test_csv_json_and_table_output() -> None:
    led = build_ledger(stream(), PRICES, by="tenant", since_s=NOW - 3600, until_s=NOW)
    rows = list(csv.DictReader(io.StringIO(to_csv(led))))
    assert list(rows[0]) == list(CSV_COLUMNS) and CSV_COLUMNS[3:] == COLUMNS
    assert [r["group"] for r in rows] == ["acme", "beta", "(no tenant)", "(all groups)",
                                          "(unallocated)"]
    # 1796400000 - 20788 x 86400 (2026-12-01) = 316800 s = 3 days + 16 h
    assert rows[0]["period_end"] == "2026-12-04T16:00:00Z"
    assert float(rows[0]["cost_usd"]) == pytest.approx(384 / 3600, rel=1e-12)
    assert rows[2]["cost_usd"] == ""  # unpriced: empty cell, not 0

    data = to_json(led, PRICES)
    json.dumps(data)  # serialisable
    assert data["provider_cost_usd"] == pytest.approx(528 / 3600, rel=1e-12)
    assert data["rows"][2]["unpriced_models"] == ["Other GPU"]

    text = format_table(led)
    head, rule, *rest = text.splitlines()
    assert head.split()[:3] == ["tenant", "GPU-h", "idle"]
    assert len({len(line) for line in (head, rule, *rest[:3])}) == 1  # aligned columns
    assert "(unallocated)" in text and "provider cost $0.15" in text  # 528/3600 = 0.1467
    assert "Other GPU" in text.splitlines()[-1]  # the unpriced warning names the model

    empty = format_table(build_ledger([], Prices(), since_s=NOW - 60, until_s=NOW))
    assert "(all groups)" in empty


def _dashboard() -> dict:
    return json.loads((ROOT / "deploy/grafana/dashboards/mfu-ledger.json").read_text())


def test_dashboard_queries_read_contract_fields_in_linear_pipelines() -> None:
    dash = _dashboard()
    queries = [t["query"] for p in dash["panels"] for t in p["targets"]]
    assert queries
    for q in queries:
        assert set(re.findall(r'r\._field == "(\w+)"', q)) <= CONTRACT_FIELDS
        assert re.findall(r'r\._measurement == "(\w+)"', q) == ["mfu"]
        # InfluxDB 1.8's Flux 0.65 dies ("concurrent map writes") when one stream variable
        # feeds several branches: every query is one pipeline with one source.
        assert q.count("from(") == 1 and not re.search(r"^\w+ = from\(", q, re.M)
        assert "union(" not in q and "join(" not in q
    names = {v["name"] for v in dash["templating"]["list"]}
    used = set(re.findall(r"\$\{(\w+)\}", " ".join(queries)))
    assert used <= names
    assert {p["title"] for p in dash["panels"]} >= {
        "Cost per tenant (USD per interval)",
        "Useful PFLOPs per tenant (measured, per interval)",
    }
    overview = json.loads((ROOT / "deploy/grafana/dashboards/mfu-overview.json").read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {
        overview["panels"][0]["datasource"]["uid"]}


def test_ledger_summary_of_records_in_hand() -> None:
    from mfu.config import LedgerSettings
    from mfu.events import FlopSources, MfuWindow
    from mfucli.ledger import ledger_summary

    w = MfuWindow(event_id="x", scope="workload", key="train-a", window_start=NOW,
                  window_end=NOW + 10, mfu=0.5, achieved_flops=3.2e16, peak_flops=6.4e16,
                  gpu_seconds=80, gpus=8, gpu_model="NVIDIA H100 80GB HBM3", tenant="acme",
                  flop_sources=FlopSources(reported=80))
    text = ledger_summary([w], settings=LedgerSettings(prices={"*": 3.6}))
    # 80 s x 3.6 USD / 3600 = 0.08 USD; 3.2e16 FLOPs = 32 PFLOP; MFU 50%
    acme = next(line.split() for line in text.splitlines() if line.startswith("acme"))
    assert acme[1] == "0.02" and acme[4] == "32.000" and acme[6] == "50.0%"
    assert acme[8] == "0.08"


def test_bad_settings_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    from mfucli.main import main

    monkeypatch.setenv("MFU_LEDGER_PRICES", '{"*": "cheap"}')
    assert main(["ledger"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfu ledger: error: ledger settings refused") and err.count("\n") == 1
    monkeypatch.setenv("MFU_LEDGER_PRICES", '{"*": 2.0}')
    assert main(["ledger", "--reference-mfu", "1.5"]) == 2
    assert "--reference-mfu must be in (0, 1]" in capsys.readouterr().err
    assert main(["ledger", "--prices", "[1, 2]"]) == 2
    assert "--prices must be a JSON object" in capsys.readouterr().err
    assert main(["ledger", "--since", "1h", "--until", "2h"]) == 2
    assert "must be after --since" in capsys.readouterr().err
    # Nothing listens on port 9 (discard): the error names the URL and the settings to check.
    monkeypatch.setenv("MFU_INFLUX_URL", "http://127.0.0.1:9")
    for api in ("v1", "v2"):
        monkeypatch.setenv("MFU_INFLUX_API", api)
        assert main(["ledger"]) == 2
        err = capsys.readouterr().err
        assert "cannot read InfluxDB at http://127.0.0.1:9" in err and "MFU_INFLUX_URL" in err
