"""Event models: strict validation with reasons naming the field; batches keep good events."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from mfu.events import (
    CloudEvent,
    DeadLetter,
    FlopReport,
    GpuSample,
    MfuWindow,
    batch,
    parse_events,
)

SAMPLE = {"schema": "gpu_sample/1", "event_id": "n1-0-1700000000", "node": "n1",
          "gpu_uuid": "GPU-1", "gpu_index": 0, "gpu_name": "NVIDIA H100 80GB HBM3",
          "mig_profile": None, "ts": 1700000000.0, "interval_s": 1.0, "sm_util": 0.97,
          "mem_util": 0.41, "tensor_active": 0.38, "sm_clock_mhz": 1980,
          "max_sm_clock_mhz": 1980, "power_w": 690.0, "mem_used_bytes": 70000000000,
          "workloads": ["job-42"]}
REPORT = {"schema": "flop_report/1", "event_id": "job-42-r3-1007", "workload": "job-42",
          "rank": 3, "node": "n1", "gpu_uuid": "GPU-1", "start": 1700000000.0,
          "end": 1700000001.0, "flops": 4.3e14, "precision": "bf16", "tokens": 163.0}


def test_design_examples_parse_and_round_trip() -> None:
    s = GpuSample.model_validate(SAMPLE)
    r = FlopReport.model_validate(REPORT)
    assert json.loads(s.to_json())["schema"] == "gpu_sample/1"
    assert GpuSample.model_validate_json(s.to_json()) == s
    assert FlopReport.model_validate_json(r.to_json()) == r
    assert r.duration_s == 1.0 and s.start == 1699999999.0


def test_unknown_fields_are_ignored() -> None:
    assert FlopReport.model_validate({**REPORT, "future_field": 1}).flops == 4.3e14


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"flops": -1.0}, "flops"),
        ({"flops": float("nan")}, "flops"),
        ({"flops": float("inf")}, "flops"),
        ({"end": 1700000000.0}, "end"),
        ({"end": 1699999999.0}, "end"),
        ({"precision": "bf17"}, "precision"),
        ({"start": 1700000000000.0, "end": 1700000001000.0}, "start"),  # milliseconds
        ({"flops": 1e18}, "FLOP/s"),  # 1e18 FLOP/s on one GPU is a unit bug
        ({"rank": -1}, "rank"),
        ({"workload": ""}, "workload"),
        ({"hardware_flops": 1.0}, "hardware_flops"),
        ({"expected_mfu": 1.2}, "expected_mfu"),
    ],
)
def test_bad_flop_reports_are_refused_naming_the_problem(change: dict, field: str) -> None:
    good, bad = parse_events(json.dumps({**REPORT, **change}, allow_nan=True), FlopReport)
    assert good == []
    assert len(bad) == 1 and field in bad[0].reason


@pytest.mark.parametrize(
    ("change", "field"),
    [({"sm_util": 1.01}, "sm_util"), ({"mem_util": -0.1}, "mem_util"),
     ({"tensor_active": 2}, "tensor_active"), ({"interval_s": 0}, "interval_s"),
     ({"gpu_index": "zero"}, "gpu_index"), ({"workloads": "job"}, "workloads"),
     ({"node": None}, "node")],
)
def test_bad_samples_are_refused(change: dict, field: str) -> None:
    _, bad = parse_events(json.dumps({**SAMPLE, **change}), GpuSample)
    assert len(bad) == 1 and field in bad[0].reason


def test_nan_token_garbage_and_wrong_schema() -> None:
    nan_text = json.dumps(REPORT).replace("4.3e+14", "NaN").replace("430000000000000.0", "NaN")
    reason = parse_events(nan_text, FlopReport)[1][0].reason
    assert "flops" in reason and "finite" in reason
    assert "not valid JSON" in parse_events(b"\xff\xfe", FlopReport)[1][0].reason
    assert "expected a JSON object" in parse_events(b"[1, 2]", FlopReport)[1][0].reason
    _, bad = parse_events(json.dumps(SAMPLE), FlopReport)
    assert "schema" in bad[0].reason and "gpu_sample/1" in bad[0].reason


def test_batch_keeps_valid_events_and_rejects_bad_ones() -> None:
    good_a = FlopReport.model_validate(REPORT)
    good_b = good_a.model_copy(update={"event_id": "other"})
    raw = json.loads(batch([good_a, good_b]))
    raw["events"].insert(1, {**REPORT, "flops": -5})
    good, bad = parse_events(json.dumps(raw), FlopReport)
    assert [e.event_id for e in good] == ["job-42-r3-1007", "other"]
    assert len(bad) == 1 and "flops" in bad[0].reason
    assert json.loads(bad[0].original)["flops"] == -5


def test_batch_envelope_errors() -> None:
    assert "must be a list" in parse_events(b'{"schema":"batch/1","events":3}', GpuSample)[1][0].reason


def test_output_and_envelope_models() -> None:
    w = MfuWindow(event_id=MfuWindow.make_event_id("workload", "job-42", 1700000000.0),
                  scope="workload", key="job-42", window_start=1700000000.0,
                  window_end=1700000010.0, mfu=None, mfu_reason="unknown GPU",
                  achieved_flops=4.3e15, peak_flops=0.0, gpu_seconds=10.0, gpus=1)
    body = json.loads(w.to_json())
    assert body["mfu"] is None and body["schema"] == "mfu_window/1"
    assert body["event_id"] == "workload:job-42:1700000000.000"
    with pytest.raises(ValidationError):
        MfuWindow.model_validate({**body, "mfu": float("nan")})
    ce = CloudEvent(id="1", source="/mfu/policies/r", type="io.mfu.drift.v1",
                    subject="workload/job-42", time="2023-11-14T22:13:30Z", data={"x": 1})
    assert json.loads(ce.to_json())["specversion"] == "1.0"
    with pytest.raises(ValidationError):
        CloudEvent(id="1", source="s", type="drift", subject="s", time="t", data={})
    dl = DeadLetter(event_id="t:0:1", source_topic="mfu.flops.v1", reason="r", original="x",
                    ts=1.0)
    assert json.loads(dl.to_json())["source_topic"] == "mfu.flops.v1"
