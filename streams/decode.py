"""Decoding of input values: the worker's guard around the fast decoder.

:func:`mfu.events.parse_events` decodes with ``json.loads`` and validates event by event
in Python, which gives a precise reason for each bad event but costs about 7 us per
event. Nearly every message is a valid batch from an agent, so :func:`decode` first
decodes and checks the whole value in one msgspec call (:func:`streams.fastdecode.decode`,
about 2 us per event against 3-4.6 us for pydantic's ``validate_json``) and, if anything
in it is wrong (or it is not a batch), falls back to ``parse_events``, which then returns
the valid events and a dead-letter reason for each bad one. The fast path accepts only
what the fallback accepts, with the same values (tests/unit/test_fastdecode.py and the
integration tests compare the two on valid and mutated input). This module adds what
the fast decoder leaves to its caller: tombstones, oversized values, deep nesting.

:func:`validate_json_events` (the previous fast path, one pydantic-core call) is kept for
the decode benchmark and the differential tests.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from mfu.events import MAX_BATCH_EVENTS, E, Rejected, parse_events
from streams import fastdecode


@lru_cache(maxsize=8)
def _batch_adapter(model: type[E]) -> TypeAdapter[Any]:
    class Batch(BaseModel):
        model_config = ConfigDict(extra="ignore")
        schema_name: Literal["batch/1"] = Field(alias="schema")
        events: list[model] = Field(max_length=MAX_BATCH_EVENTS)  # type: ignore[valid-type]

    return TypeAdapter(Batch)


# Largest input value accepted, bytes: an agent's batch for one node and interval is a
# few kB; a value this large is a producer bug, and its dead letter must still fit the
# producer's message limit (it is cut to fit, see streams.deadletter).
MAX_VALUE_BYTES = 1_048_576


def decode(raw: bytes | str | None, model: type[E], *, max_bytes: int = MAX_VALUE_BYTES,
           structs: bool = False) -> tuple[list[Any], list[Rejected]]:
    """Valid events of one Kafka value and a :class:`Rejected` per bad one (as
    :func:`mfu.events.parse_events`, faster for valid batches). Never raises on bad
    input: a tombstone (null value), a value over ``max_bytes`` and JSON nested deeper
    than the decoder's recursion limit each get their own reason.

    ``structs``: the valid events of a batch the fast path accepts are the checked
    msgspec Structs (:func:`streams.fastdecode.decode_structs`, ~3x cheaper), the rest
    pydantic events; :func:`streams.fastdecode.to_model` gives the pydantic event."""
    if raw is None:
        return [], [Rejected(original="", reason=(
            "tombstone: the Kafka value is null (a delete marker); input topics carry "
            "events, never deletes: do not enable compaction on them or produce null values"))]
    if len(raw) > max_bytes:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else raw
        return [], [Rejected(original=text, reason=(
            f"oversized value: {len(raw)} bytes exceed the {max_bytes}-byte input limit; "
            "send one batch/1 message per node and interval"))]
    try:
        fast = fastdecode.decode_structs if structs else fastdecode.decode
        return fast(raw, model)  # falls back to parse_events by itself
    except RecursionError:
        return [], [_too_deep(raw)]


def validate_json_events(raw: bytes | str, model: type[E]) -> tuple[list[E], list[Rejected]]:
    """The previous fast path: the whole value in one pydantic ``validate_json`` call,
    ``parse_events`` for anything it refuses (no tombstone/size/nesting handling)."""
    try:
        return _batch_adapter(model).validate_json(raw).events, []
    except ValidationError:
        return parse_events(raw, model)


def _too_deep(raw: bytes | str) -> Rejected:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else raw
    return Rejected(original=text, reason=(
        "nesting too deep: the JSON value nests beyond the decoder's recursion limit; "
        "events are flat objects (batch/1 adds one level)"))
