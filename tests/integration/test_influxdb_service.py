"""The locally provisioned InfluxDB really speaks the v2 write API and Flux.

Starts ``influxd`` through ``devenv.influxdb`` (building it on first use, about a minute),
writes with ``influxdb-client`` via ``/api/v2/write``, reads back with Flux and InfluxQL,
stops it from another process and restarts it on the same data dir.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from devenv.influxdb import InfluxInstall, LocalInflux, provision

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def install() -> InfluxInstall:
    installed = provision()
    assert installed.api == "v2", (
        f"provisioned InfluxDB {installed.version} is v1-only (no /api/v2/write); "
        "a Go toolchain is needed to build InfluxDB 1.8"
    )
    return installed


def _influxql(influx: LocalInflux, q: str) -> list[list[object]]:
    url = f"{influx.url}/query?" + urllib.parse.urlencode({"db": influx.database, "q": q})
    request = urllib.request.Request(url, headers={"Authorization": f"Token {influx.token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        series = json.load(resp)["results"][0].get("series", [])
    return series[0]["values"] if series else []


def test_v2_write_then_flux_and_influxql_read(install: InfluxInstall, tmp_path: Path) -> None:
    influx = LocalInflux(install, tmp_path / "influx")
    started = time.monotonic()
    influx.start()
    try:
        assert time.monotonic() - started < 60
        assert influx.pid is not None
        assert influx.password not in influx.log_path.read_text()

        ts = int(time.time()) - 30
        with InfluxDBClient(url=influx.url, token=influx.token, org=influx.org) as client:
            client.write_api(write_options=SYNCHRONOUS).write(
                bucket=influx.bucket,
                record=Point("mfu")
                .tag("scope", "node")
                .tag("key", "n1")
                .field("mfu", 0.435)
                .field("gpus", 8.0)
                .time(ts, WritePrecision.S),
            )
            tables = client.query_api().query(
                f'from(bucket: "{influx.bucket}") |> range(start: -1h)'
                ' |> filter(fn: (r) => r._measurement == "mfu" and r._field == "mfu")'
            )
        records = [record for table in tables for record in table.records]
        assert [(r.values["scope"], r.values["key"], r.get_value()) for r in records] == [
            ("node", "n1", 0.435)
        ]
        assert int(records[0].get_time().timestamp()) == ts

        rows = _influxql(influx, 'SELECT "mfu", "gpus" FROM "mfu" WHERE "key" = \'n1\'')
        assert [row[1:] for row in rows] == [[0.435, 8.0]]

        # `mfu dev down` stops it from another process, by pid.
        pid = influx.pid
        stopper = subprocess.run(
            [sys.executable, "-c", f"from devenv.influxdb import stop_pid; print(stop_pid({pid}))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert stopper.stdout.strip() == "True"
        influx.stop()  # reaps our child; nothing left to signal

        # Same data dir again: the saved credentials still work and the point is kept.
        again = LocalInflux(install, tmp_path / "influx")
        again.start()
        try:
            assert again.password == influx.password
            assert [row[1:] for row in _influxql(again, 'SELECT "mfu" FROM "mfu"')] == [[0.435]]
        finally:
            again.stop()
    finally:
        influx.stop()
    assert influx.pid is None
