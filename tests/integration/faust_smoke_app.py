"""A tiny Faust app for the broker smoke test (run by test_kafka_service.py as a worker).

Configured through environment variables so each test run gets its own app id, topics
and data folder: ``SMOKE_BOOTSTRAP``, ``SMOKE_APP_ID``, ``SMOKE_SOURCE``, ``SMOKE_RESULT``,
``SMOKE_PARTITIONS``, ``SMOKE_DATADIR``, ``SMOKE_TIMINGS`` (a JSON file the worker writes
its start and first-assignment times to, epoch seconds), ``SMOKE_GUARANTEE``.

Each source event ``{"key": k, "n": i}`` bumps a per-key count in a changelogged table
and produces ``{"key": k, "n": i, "count": c}`` to the result topic.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import faust

STARTED = time.time()
TIMINGS = Path(os.environ.get("SMOKE_TIMINGS", os.devnull))
PARTITIONS = int(os.environ.get("SMOKE_PARTITIONS", "4"))

app = faust.App(
    os.environ.get("SMOKE_APP_ID", "mfu-faust-smoke"),
    broker=f"kafka://{os.environ.get('SMOKE_BOOTSTRAP', '127.0.0.1:9092')}",
    store="memory://",
    datadir=os.environ.get("SMOKE_DATADIR", "/tmp/mfu-faust-smoke"),
    web_enabled=False,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    processing_guarantee=os.environ.get("SMOKE_GUARANTEE", "at_least_once"),
    broker_commit_every=50,
    broker_commit_interval=0.5,
)
source = app.topic(
    os.environ.get("SMOKE_SOURCE", "smoke-source"), value_serializer="json", key_serializer="raw"
)
result = app.topic(
    os.environ.get("SMOKE_RESULT", "smoke-result"), value_serializer="json", key_serializer="raw"
)
counts = app.Table("counts", default=int, partitions=PARTITIONS)
_timings: dict[str, float] = {"started": STARTED}


def _record(name: str) -> None:
    if name not in _timings:
        _timings[name] = time.time()
        TIMINGS.write_text(json.dumps(_timings))


@app.on_partitions_assigned.connect
async def on_assigned(sender: object, assigned: set, **kwargs: object) -> None:
    if assigned:
        _record("assigned")  # the consumer group join (first rebalance) finished


@app.on_rebalance_complete.connect
async def on_rebalanced(sender: object, **kwargs: object) -> None:
    _record("rebalanced")  # assignment handled, table recovery started


@app.agent(source)
async def count(stream):  # type: ignore[no-untyped-def]
    async for event in stream:
        key = event["key"]
        counts[key] += 1
        await result.send(
            key=key.encode(), value={"key": key, "n": event["n"], "count": counts[key]}
        )
