"""Policy events as InfluxDB points: escaping, tags, timestamp from the event time."""

from __future__ import annotations

from mfu.events import CloudEvent
from policies.annotations import policy_line


def test_policy_line_escapes_and_times() -> None:
    ev = CloudEvent(
        id="1", source="/mfu/policies/r", type="io.mfu.drift.v1",
        subject="workload/llm train,0", time="2026-11-26T10:12:00.000Z",
        data={"rule": "workload-mfu-drift", "status": "open", "severity": "warning",
              "scope": "workload", "key": "llm train,0", "summary": 'MFU "0.299" below'},
    )
    assert policy_line(ev) == (
        "mfu_policy,type=drift,scope=workload,key=llm\\ train\\,0,status=open,"
        "rule=workload-mfu-drift,severity=warning "
        'summary="MFU \\"0.299\\" below",count=1.0 1795687920000000000'
    )


def test_policy_line_without_optional_data() -> None:
    ev = CloudEvent(id="2", source="s", type="io.mfu.scale.v1", subject="workload/j",
                    time="2026-11-26T10:12:00+00:00", data={})
    assert policy_line(ev).startswith(
        'mfu_policy,type=scale,scope=workload,key=j summary="io.mfu.scale.v1",count=1.0 '
    )
