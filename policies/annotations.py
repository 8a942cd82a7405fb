"""Policy events as InfluxDB points (measurement ``mfu_policy``), so dashboards can mark
them next to the MFU they were decided on. Kafka (``mfu.policy.v1``) stays the source
of truth: these points are best effort and never hold the rules stage back.

Point: time = the event's ``time`` (end of the window it decided on); tags ``type``
(``drift``, ``inefficient``…), ``scope``, ``key``, ``status``, ``rule``, ``severity``;
fields ``summary`` (string) and ``count`` (1.0), each of one type forever.
"""

from __future__ import annotations

from datetime import datetime

from mfu.events import CloudEvent

MEASUREMENT = "mfu_policy"


def _tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_line(ev: CloudEvent, measurement: str = MEASUREMENT) -> str:
    """One line-protocol line for a policy CloudEvent (nanosecond timestamp)."""
    data = ev.data
    kind = ev.type.removeprefix("io.mfu.").rsplit(".v", 1)[0]
    scope, _, key = ev.subject.partition("/")
    tags = {"type": kind, "scope": data.get("scope") or scope, "key": data.get("key") or key,
            "status": data.get("status"), "rule": data.get("rule"),
            "severity": data.get("severity")}
    tag_text = ",".join(f"{k}={_tag(str(v))}" for k, v in tags.items() if v)
    ts_ns = round(datetime.fromisoformat(ev.time).timestamp() * 1_000_000_000)
    summary = str(data.get("summary") or ev.type)
    return (f"{_tag(measurement)},{tag_text} summary={_string_field(summary)},count=1.0 "
            f"{ts_ns}")
