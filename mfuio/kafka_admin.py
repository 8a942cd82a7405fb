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


class PartitionCountError(RuntimeError):
    """Topics whose partition counts cannot work together (the message says the fix)."""


def topic_partition_counts(kafka: KafkaSettings, names: list[str],
                           timeout_s: float = 30.0) -> dict[str, int]:
    """Partition count of each existing topic among ``names``."""
    admin = AdminClient(kafka.confluent_config())
    meta = admin.list_topics(timeout=timeout_s)
    return {t: len(meta.topics[t].partitions) for t in dict.fromkeys(names)
            if t in meta.topics and meta.topics[t].error is None}


def plan_partitions(counts: dict[str, int], *, inputs: list[str], copartitioned: list[str],
                    configured: int, bootstrap: str = "<bootstrap>") -> int:
    """The partition count the stream stage must run with (pure).

    The input topics decide: if they exist, their (common) count is adopted, whatever
    ``MFU_KAFKA_PARTITIONS`` says (so a worker started after ``make demo``'s 4-partition
    topics just works); if none exists, ``configured`` is used to create them. Inputs with
    different counts are not co-partitioned (a node's telemetry and FLOP reports would
    meet in different partitions) and ``copartitioned`` topics (the partials topic, whose
    partitions receive the node stage's markers, and the progress changelog) must have
    the same count: both refuse with the topic, the counts and the fix.
    """
    have = {t: counts[t] for t in inputs if t in counts}
    if len(set(have.values())) > 1:
        low = min(have, key=have.__getitem__)
        high = max(have.values())
        raise PartitionCountError(
            "input topics are not co-partitioned: "
            + ", ".join(f"{t} has {n}" for t, n in have.items())
            + f" partitions (expected equal counts). Fix: kafka-topics.sh --bootstrap-server "
            f"{bootstrap} --alter --topic {low} --partitions {high} (while the topic is "
            "empty: existing keys would move), or point MFU_STREAMS_*_TOPIC at new topics")
    n = next(iter(have.values())) if have else configured
    if have and n != configured:
        log.warning("adopting the input topics' partition count",
                    extra={"topics": sorted(have), "partitions": n, "configured": configured})
    for t in copartitioned:
        if t in counts and counts[t] != n:
            raise PartitionCountError(
                f"topic {t} has {counts[t]} partitions, expected {n} (the input topics' "
                "count: it must match them). Fix: stop the stream workers, delete this "
                f"internal topic (kafka-topics.sh --bootstrap-server {bootstrap} --delete "
                f"--topic {t}) and start again, which recreates it with {n}; or use a new "
                "MFU_STREAMS_APP_ID / MFU_STREAMS_PARTIALS_TOPIC")
    return n
