"""Dead-letter records that always fit the producer's message limit (pure).

A refused value can be as large as the input limit (1 MiB) and JSON-escaping it (as the
``original`` string) can make it several times larger; a record over the producer's
``max_request_size`` fails to send, and that failure used to kill the node-stage agent.
So ``original`` is cut until the encoded record fits; ``reason``, ``original_bytes``
and ``truncated`` say what happened.
"""

from __future__ import annotations

import time

from mfu.events import DeadLetter

# Encoded dead-letter records stay below this many bytes (Faust's producer refuses
# records over 1,000,000 bytes by default; the rest is headroom for key and headers).
MAX_RECORD_BYTES = 900_000


def dead_letter_value(*, source_topic: str, partition: int | None, offset: int | None,
                      reason: str, original: str, original_bytes: int | None = None,
                      index: int = 0, max_bytes: int = MAX_RECORD_BYTES,
                      now: float | None = None) -> bytes:
    """The encoded ``deadletter/1`` record of one refused input (``index``: which of the
    message's refused events, so each record has its own ``event_id``)."""
    size = len(original.encode("utf-8", "replace")) if original_bytes is None else original_bytes
    event_id = f"{source_topic}:{partition}:{offset}"
    if index:
        event_id += f":{index}"
    rec = DeadLetter(event_id=event_id, source_topic=source_topic, reason=reason[:4096],
                     original=original, ts=time.time() if now is None else now,
                     partition=partition, offset=offset, original_bytes=size)
    value = rec.to_json()
    keep = len(original)
    while len(value) > max_bytes and keep > 0:
        # Cut in proportion to the overshoot (escaping makes the ratio uneven: repeat).
        keep = min(keep - 1, int(keep * max_bytes / len(value) * 0.95))
        keep = max(keep, 0)
        value = rec.model_copy(update={"original": original[:keep], "truncated": True}).to_json()
    return value
