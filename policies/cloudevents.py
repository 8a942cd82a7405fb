"""CloudEvents 1.0 envelopes for policy decisions (pure).

The envelope model is :class:`mfu.events.CloudEvent`; this module only fills it the
same way everywhere: ``subject`` = ``<scope>/<key>`` (also the Kafka key), ``type`` =
``io.mfu.<name>.v1``, ``source`` = ``<source>/<rule-id>``, ``time`` = RFC 3339 of the
window end, and an ``id`` derived from rule, subject, window and status so that a
replay of the same input produces the same id (consumers de-duplicate on it).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from mfu.events import CloudEvent

# Namespace for the name-based (v5) UUIDs of policy events.
EVENT_NAMESPACE = uuid.UUID("6f1c1e52-6d1a-4f0e-9a57-6d2f1b0a9c11")


def subject_of(scope: str, key: str) -> str:
    return f"{scope}/{key}"


def rfc3339(ts: float) -> str:
    """Epoch seconds -> RFC 3339 UTC with milliseconds, e.g. 2023-11-14T22:13:30.000Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(rule_id: str, subject: str, window_start: float, status: str) -> str:
    """Deterministic event id (UUIDv5) of one decision of one rule about one window."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{rule_id}|{subject}|{window_start:.3f}|{status}"))


def make_event(
    *,
    name: str,
    subject: str,
    rule_id: str,
    source: str,
    window_start: float,
    window_end: float,
    status: str,
    data: dict[str, Any],
) -> CloudEvent:
    """Build the CloudEvent of one decision (``window_*``: epoch seconds of the window
    that triggered it)."""
    return CloudEvent(
        id=event_id(rule_id, subject, window_start, status),
        source=f"{source.rstrip('/')}/{rule_id}",
        type=f"io.mfu.{name}.v1",
        subject=subject,
        time=rfc3339(window_end),
        data=data,
    )


def parse_event(raw: bytes | str) -> CloudEvent:
    """Decode a structured-mode CloudEvent (raises ``ValueError`` on bad input)."""
    return CloudEvent.model_validate(json.loads(raw))


def format_line(event: CloudEvent) -> str:
    """One readable line: time, type, subject, status and the event's summary."""
    data = event.data
    status = data.get("status", "")
    summary = data.get("summary", "")
    incident = data.get("incident")
    tail = f" [{incident}]" if incident else ""
    return f"{event.time}  {event.type:<26} {event.subject:<32} {status:<8} {summary}{tail}"
