"""Create the pipeline's topics with the right partition count (idempotent)."""

from __future__ import annotations

import logging

from confluent_kafka.admin import AdminClient, NewTopic

from mfu.config import KafkaSettings

log = logging.getLogger("mfu.kafka")


def ensure_topics(kafka: KafkaSettings, names: list[str], *, partitions: int | None = None,
                  timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; returns those created. Existing topics whose partition count
    differs are reported (co-partitioned inputs must match) but left alone."""
    n = partitions or kafka.partitions
    admin = AdminClient(kafka.confluent_config())
    meta = admin.list_topics(timeout=timeout_s)
    missing = [t for t in dict.fromkeys(names) if t not in meta.topics]
    for t in names:
        existing = meta.topics.get(t)
        if existing is not None and len(existing.partitions) != n:
            log.warning("topic has unexpected partition count",
                        extra={"topic": t, "partitions": len(existing.partitions), "expected": n})
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=n, replication_factor=kafka.replication_factor)
         for t in missing],
        operation_timeout=timeout_s,
    )
    created = []
    for topic, fut in futures.items():
        try:
            fut.result()
            created.append(topic)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
