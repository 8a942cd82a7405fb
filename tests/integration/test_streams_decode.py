"""streams.decode (the stream stage's fast input decoder) agrees with
mfu.events.parse_events on valid and mutated input: the fast path may only accept what
the event-by-event path accepts, with the same values. Pure (no services); it sits with
the stream-stage tests it speeds up."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mfu.events import FlopReport, GpuSample, parse_events
from streams.decode import decode

SAMPLE: dict[str, Any] = {
    "schema": "gpu_sample/1", "event_id": "n1-0-1", "node": "n1", "gpu_uuid": "GPU-1",
    "gpu_index": 0, "gpu_name": "NVIDIA H100 80GB HBM3", "mig_profile": None,
    "ts": 1_700_000_001.0, "interval_s": 1.0, "sm_util": 0.9, "mem_util": 0.4,
    "tensor_active": 0.38, "sm_clock_mhz": 1980, "max_sm_clock_mhz": 1980, "power_w": 690.0,
    "mem_used_bytes": 70_000_000_000, "workloads": ["job-42"],
}
REPORT: dict[str, Any] = {
    "schema": "flop_report/1", "event_id": "job-42-r3-1", "workload": "job-42", "rank": 3,
    "node": "n1", "gpu_uuid": "GPU-1", "start": 1_700_000_000.0, "end": 1_700_000_001.0,
    "flops": 4.3e14, "precision": "bf16", "tokens": 163.0,
    "parallelism": {"tp": 8, "pp": 1, "dp": 2}, "phase": "train",
}
NAN, INF = float("nan"), float("inf")

MUTATIONS: list[tuple[str, Any]] = [
    ("sm_util", NAN), ("sm_util", 1.5), ("sm_util", -0.1), ("sm_util", "0.5"), ("sm_util", True),
    ("sm_util", None), ("mem_util", None), ("tensor_active", None), ("ts", INF), ("ts", 1.7e12),
    ("ts", "1700000001"), ("ts", 1_700_000_001), ("interval_s", 0), ("gpu_index", 1.0),
    ("gpu_index", 1.5), ("gpu_index", "2"), ("gpu_index", True), ("gpu_index", -1),
    ("node", ""), ("node", 5), ("node", "n" * 300), ("workloads", "job"), ("workloads", [1]),
    ("workloads", None), ("mig_profile", "1g.10gb"), ("event_id", None), ("schema", "x/1"),
    ("extra_field", NAN), ("extra_field", {"a": [1, 2]}), ("mem_used_bytes", 1.5),
    ("flops", NAN), ("flops", -1.0), ("flops", 1e30), ("flops", "4e14"), ("precision", "fp4"),
    ("precision", "BF16"), ("rank", 1.0), ("rank", "3"), ("end", 1_700_000_000.0),
    ("hardware_flops", 1.0), ("parallelism", {"tp": 0}), ("parallelism", None),
    ("phase", "serve"), ("expected_mfu", 1.2), ("tokens", None), ("start", None),
]


def _both(raw: bytes, model: type) -> None:
    # The two decoders compared on content: decode's input size limit (tested in
    # tests/unit/test_stream_reliability.py) is lifted here.
    fast = decode(raw, model, max_bytes=len(raw) + 1)
    slow = parse_events(raw, model)
    assert fast == slow


@pytest.mark.parametrize(("field", "value"), MUTATIONS)
@pytest.mark.parametrize("model", [GpuSample, FlopReport])
def test_mutated_batch_decodes_as_parse_events(model: type, field: str, value: Any) -> None:
    base = SAMPLE if model is GpuSample else REPORT
    good = [dict(base, event_id=f"e{i}") for i in range(3)]
    bad = dict(base, event_id="bad")
    bad[field] = value
    for events in ([*good, bad], [bad], [bad, *good]):
        raw = json.dumps({"schema": "batch/1", "events": events}).encode()
        _both(raw, model)
        _both(json.dumps(events[0]).encode(), model)  # a single event


@pytest.mark.parametrize("raw", [
    b"", b"garbage{", b"null", b"[]", b'"text"', b"{}", b'{"schema": "batch/1"}',
    b'{"schema": "batch/1", "events": {}}', b'{"schema": "batch/1", "events": [1, null]}',
    b'{"schema": "batch/1", "events": []}', b'{"schema": "batch/2", "events": []}',
    b"\xff\xfe", json.dumps({"schema": "batch/1", "events": [SAMPLE] * 10_001}).encode(),
    # duplicate keys: the last wins in both decoders
    json.dumps(SAMPLE).encode()[:-1] + b', "sm_util": 2.0}',
    json.dumps(SAMPLE).encode()[:-1] + b', "sm_util": 0.1}',
    ('{"schema": "batch/1", "events": [' + json.dumps(dict(SAMPLE, node="n\u00e9\u4e2d"))
     + "]}").encode(),
])
def test_odd_values_decode_as_parse_events(raw: bytes) -> None:
    _both(raw, GpuSample)
    _both(raw, FlopReport)


def test_valid_batch_takes_the_fast_path_with_equal_events() -> None:
    raw = json.dumps({"schema": "batch/1", "events": [SAMPLE, dict(SAMPLE, event_id="2")],
                      "extra": 1}).encode()
    events, rejected = decode(raw, GpuSample)
    assert rejected == [] and [e.event_id for e in events] == ["n1-0-1", "2"]
    assert events == parse_events(raw, GpuSample)[0]
    assert events[0].workloads == ["job-42"] and events[0].ts == 1_700_000_001.0
