"""InfluxWriter against the real InfluxDB: bad points rejected with the server's reason
while the rest land, tag values with every special character round-trip (control
characters as U+FFFD), a missing bucket and a wrong token stop with the setting to fix."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest

from mfu.config import InfluxSettings
from mfu.events import MfuWindow
from mfuio.influx import InfluxConfigError, InfluxWriter, to_line

pytestmark = pytest.mark.integration


def _settings(influx: Any, **kw: Any) -> InfluxSettings:
    base = {"url": influx.url, "token": influx.token, "org": influx.org,
            "bucket": influx.bucket, "api": influx.api, "timeout_s": 10.0}
    base.update(kw)
    return InfluxSettings(**base)


def _tag_values(influx: Any, measurement: str) -> list[str]:
    db = influx.bucket.split("/")[0]
    q = f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "key"'
    url = f"{influx.url}/query?" + urllib.parse.urlencode({"db": db, "q": q})
    req = urllib.request.Request(url, headers={"Authorization": f"Token {influx.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
    series = body["results"][0].get("series", [])
    return sorted(v for s in series for _k, v in s["values"])


def _window(key: str, start: float) -> MfuWindow:
    rec = MfuWindow(event_id=f"e-{start}", scope="workload", key="k", window_start=start,
                    window_end=start + 10, mfu=0.5, achieved_flops=5e15, peak_flops=1e16,
                    gpu_seconds=10, gpus=1)
    # The models refuse control characters in names at decode (mfu.events.Name); the writer
    # must still never write a broken line for a record built without validation.
    return rec.model_copy(update={"key": key})


def test_bad_points_rejected_rest_written_and_tags_round_trip(influx: Any) -> None:
    measurement = f"ops_writer_{uuid.uuid4().hex[:10]}"
    writer = InfluxWriter(_settings(influx, measurement=measurement))
    keys = ["plain", "with space,comma=eq", "back\\slash", "nl\nx\ttab\x00nul", "trail\\"]
    recs = [_window(k, 1.7e9 + 10 * i) for i, k in enumerate(keys)]
    lines = [to_line(r, measurement) for r in recs]
    bad = f"{measurement},key=bad v= 1700000000000000000"  # missing field value
    result = writer.write_lines([*lines[:2], bad, *lines[2:]])
    assert result.written == 5
    (rej,) = result.rejected
    assert rej.line == bad and rej.status == 400 and "missing field value" in rej.reason
    assert _tag_values(influx, measurement) == sorted(
        ["plain", "with space,comma=eq", "back\\slash", "nl\ufffdx\ufffdtab\ufffdnul",
         "trail\ufffd"])

    # A field type conflict names no line: bisected down to the one point.
    conflict = f'{measurement},key=plain mfu="text" 1700000000000000000'
    more = [to_line(_window("later", 1.7e9 + 100 + 10 * i), measurement) for i in range(3)]
    result = writer.write_lines([more[0], conflict, more[1], more[2]])
    assert result.written == 3 and [r.line for r in result.rejected] == [conflict]
    assert "conflict" in result.rejected[0].reason


def test_missing_bucket_and_wrong_token_stop_with_the_setting(influx: Any) -> None:
    line = f"ops_writer_cfg,key=a v=1 {1_700_000_000 * 10**9}"
    missing = InfluxWriter(_settings(influx, bucket=f"nosuch_{uuid.uuid4().hex[:8]}/autogen"))
    with pytest.raises(InfluxConfigError) as info:
        missing.write_lines([line])
    assert info.value.status == 404 and info.value.setting == "MFU_INFLUX_BUCKET"
    db = influx.bucket.split("/")[0]
    no_rp = InfluxWriter(_settings(influx, bucket=f"{db}/nosuch_{uuid.uuid4().hex[:6]}"))
    with pytest.raises(InfluxConfigError) as info:  # 1.8 answers this one with HTTP 500
        no_rp.write_lines([line], max_attempts=2)
    assert info.value.setting == "MFU_INFLUX_BUCKET" and "retention policy" in str(info.value)
    wrong = InfluxWriter(_settings(influx, token="nobody:wrong"))
    with pytest.raises(InfluxConfigError) as info:
        wrong.write_lines([line])
    assert info.value.status == 401 and info.value.setting == "MFU_INFLUX_TOKEN"
