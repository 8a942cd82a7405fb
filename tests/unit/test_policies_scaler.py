"""The example autoscaler (io.mfu.scale.v1 -> replicas) and the tail line format."""

from __future__ import annotations

from examples.scaler import Scaler, desired_replicas
from mfu.events import CloudEvent
from policies.cloudevents import format_line, make_event, parse_event


def scale_event(action: str, ratio: float, window_start: float = 1.7e9) -> CloudEvent:
    return make_event(
        name="scale",
        subject="workload/chat-api",
        rule_id="sc",
        source="/mfu/policies",
        window_start=window_start,
        window_end=window_start + 10,
        status="recommendation",
        data={
            "status": "recommendation",
            "action": action,
            "ratio": ratio,
            "target": {"scope": "workload", "key": "chat-api"},
            "reason": "sustained MFU above 0.6",
            "summary": f"scale {action}",
        },
    )


def test_desired_replicas_follows_hpa_and_moves_at_least_one_step() -> None:
    assert desired_replicas(4, 1.6, "scale_out", 1, 64) == 7  # ceil(6.4)
    assert desired_replicas(4, 1.01, "scale_out", 1, 64) == 5  # at least +1
    assert desired_replicas(4, 0.25, "scale_in", 1, 64) == 1
    assert desired_replicas(4, 0.9, "scale_in", 1, 64) == 3  # at least -1
    assert desired_replicas(60, 2.0, "scale_out", 1, 64) == 64  # clamped
    assert desired_replicas(1, 0.1, "scale_in", 1, 64) == 1


def test_scaler_tracks_replicas_dedupes_and_builds_a_dry_run_command() -> None:
    scaler = Scaler(initial=2, namespace="inference")
    out = scale_event("scale_out", 2.0)
    d = scaler.decide(out)
    assert d is not None and (d.current, d.desired) == (2, 4)
    assert d.command == [
        "kubectl",
        "scale",
        "deployment/chat-api",
        "--replicas=4",
        "-n",
        "inference",
        "--dry-run=client",
    ]
    assert "deployment/chat-api: 2 -> 4 replicas" in d.line()
    assert scaler.decide(out) is None  # same CloudEvent id: at-least-once redelivery
    d2 = scaler.decide(scale_event("scale_in", 0.5, window_start=1.7e9 + 600))
    assert d2 is not None and (d2.current, d2.desired) == (4, 2)
    other = CloudEvent(
        id="x", source="/s", type="io.mfu.drift.v1", subject="workload/a", time="t", data={}
    )
    assert scaler.decide(other) is None
    assert Scaler(apply=True).decide(out).command[-1] == "default"  # type: ignore[union-attr]


def test_tail_line_is_readable_and_events_round_trip() -> None:
    e = scale_event("scale_out", 2.0)
    again = parse_event(e.to_json())
    assert again == e
    line = format_line(e)
    assert line.startswith("2023-11-14T22:13:30.000Z  io.mfu.scale.v1")
    assert "workload/chat-api" in line and "recommendation" in line and "scale scale_out" in line
