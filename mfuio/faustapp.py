"""Faust application factory shared by the stream and policy stages.

Every Faust app of this project is built here so that Kafka security settings pass
through the same way, the web server stays off (many workers share a host), and the
table state directory lives under a configurable folder.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import faust

from mfu.config import KafkaSettings


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Map ``MFU_KAFKA_*`` security settings to Faust/aiokafka credentials (or None)."""
    context: ssl.SSLContext | None = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None
        )
        if kafka.ssl_certificate_location:
            context.load_cert_chain(
                str(kafka.ssl_certificate_location),
                keyfile=str(kafka.ssl_key_location) if kafka.ssl_key_location else None,
                password=(
                    kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
                ),
            )
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


# Lock files held for the process lifetime (one per static instance id taken here).
_INSTANCE_LOCKS: list[int] = []


def _cache_dir() -> Path:
    return Path(os.environ.get("MFU_CACHE_DIR") or Path.home() / ".cache" / "mfu-pipeline")


def static_instance_id(app_id: str, *, host: str | None = None,
                       lock_dir: Path | None = None, max_slots: int = 256) -> str:
    """A ``group.instance.id`` that is stable across restarts and unique among live
    workers: ``<host>-<n>``, ``n`` the lowest slot on this host whose lock file no live
    process holds.

    Static membership (KIP-345) lets a restarted worker take its dead predecessor's
    partitions at once instead of after the session timeout. Two live members with one
    id would fence each other, so each slot is an ``flock`` held while the process lives;
    the kernel drops it when the process dies (even by SIGKILL), and the restart finds
    the same slot free. In a container the host name is the pod name.
    """
    host = host or socket.gethostname()
    safe_host = re.sub(r"[^A-Za-z0-9._-]", "_", host)[:200]
    folder = lock_dir or _cache_dir() / "instances"
    folder.mkdir(parents=True, exist_ok=True)
    safe_app = re.sub(r"[^A-Za-z0-9._-]", "_", app_id)[:200]
    for slot in range(max_slots):
        fd = os.open(folder / f"{safe_app}@{safe_host}-{slot}.lock", os.O_CREAT | os.O_RDWR,
                     0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _INSTANCE_LOCKS.append(fd)
        return f"{safe_host}-{slot}"
    raise RuntimeError(f"no free static-membership slot among {max_slots} on {host} for "
                       f"{app_id}; set MFU_STREAMS_INSTANCE_ID or clean {folder}")


def make_app(
    app_id: str,
    kafka: KafkaSettings,
    *,
    partitions: int = 8,
    data_dir: Path | None = None,
    **overrides: Any,
) -> faust.App:
    """A Faust app with this project's defaults.

    ``partitions`` is the partition count for topics and tables the app declares; it must
    equal the partition count of the topics the app consumes (co-partitioning).
    """
    options: dict[str, Any] = {
        "broker": kafka.faust_url(),
        "broker_credentials": faust_credentials(kafka),
        "store": "memory://",
        "topic_partitions": partitions,
        "topic_replication_factor": kafka.replication_factor,
        "web_enabled": False,
        "producer_acks": -1,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": 1.0,
        "table_cleanup_interval": 30.0,
        "value_serializer": "raw",
        "key_serializer": "raw",
    }
    # Faust keeps a folder per app even with in-memory tables: not in the working directory.
    if data_dir is None:
        data_dir = _cache_dir() / "faust"
    data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    options["datadir"] = str(data_dir / "{conf.name}-data")
    options.update(overrides)
    return faust.App(app_id, **options)
