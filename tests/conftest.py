"""Service fixtures for the whole suite: a real Kafka broker and a real InfluxDB.

Each service comes from, in order:
1. environment variables: ``MFU_KAFKA_BOOTSTRAP``; ``MFU_INFLUX_URL`` with
   ``MFU_INFLUX_TOKEN`` or ``MFU_INFLUX_TOKEN_FILE``, ``MFU_INFLUX_ORG``,
   ``MFU_INFLUX_BUCKET``, ``MFU_INFLUX_API`` (what `mfu dev up` prints);
2. testcontainers, when a Docker engine answers (pinned images below);
3. local provisioning (devenv): reused if `mfu dev up` runs it, else started once for the
   session in a temporary folder and stopped at the end.
A test that needs a service nobody can provide fails (it never skips). Fixtures are lazy:
unit tests that use none of them start nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from devenv import kafka as devkafka
from devenv import services
from devenv.services import InfluxSettings

KAFKA_IMAGE = f"apache/kafka:{devkafka.KAFKA_VERSION}"
INFLUX_IMAGE = "influxdb:2.7"
T = TypeVar("T")


class _Unavailable(Exception):
    """This source cannot provide the service; try the next one."""


def _docker_answers() -> None:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:
        raise _Unavailable(f"no Docker engine answers ({type(exc).__name__})") from None


def _first_available(
    what: str, sources: list[tuple[str, Callable[[ExitStack], T]]], stack: ExitStack, hint: str
) -> T:
    """The service from the first source that provides it; its cleanup joins ``stack``.

    Fails the requesting test (never skips) with every source's reason when none works.
    """
    tried = []
    for label, source in sources:
        attempt = ExitStack()
        try:
            value = source(attempt)
        except _Unavailable as exc:
            attempt.close()
            tried.append(f"{label}: {exc}")
            continue
        except Exception as exc:
            attempt.close()
            tried.append(f"{label}: failed: {type(exc).__name__}: {exc}")
            continue
        stack.push(attempt)
        return value
    pytest.fail(f"no {what} for the tests. Tried: " + "; ".join(tried) + f". {hint}", pytrace=False)


def _influx_ping(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=3) as response:
                if response.status in (200, 204):
                    return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise services.ServiceError(
                    f"InfluxDB at {url} does not answer /ping: {exc}"
                ) from exc
        time.sleep(0.3)


def _progress(message: str) -> None:
    print(f"[conftest] {message}")


# --------------------------------------------------------------------------- Kafka


def _kafka_from_env(_stack: ExitStack) -> str:
    configured = os.environ.get("MFU_KAFKA_BOOTSTRAP")
    if not configured:
        raise _Unavailable("MFU_KAFKA_BOOTSTRAP is not set")
    try:
        devkafka.wait_for_metadata(configured, timeout_s=30)
    except devkafka.KafkaError as exc:  # set but broken: say so, don't fall back silently
        pytest.fail(f"MFU_KAFKA_BOOTSTRAP={configured} is set but unusable: {exc}", pytrace=False)
    return configured


def _kafka_container(stack: ExitStack) -> str:
    _docker_answers()
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = devkafka.free_port()  # fixed host port: the broker must advertise it
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://0.0.0.0:9092,CONTROLLER://localhost:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://localhost:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        )
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_NUM_PARTITIONS", "4")
    )
    container.start()
    stack.callback(container.stop)
    wait_for_logs(container, "Kafka Server started", timeout=120)
    bootstrap = f"localhost:{port}"
    devkafka.wait_for_metadata(bootstrap, timeout_s=60)
    return bootstrap


def _kafka_local(stack: ExitStack, data_dir: Path) -> str:
    recorded = services.status()["kafka"]
    if recorded["running"]:  # `mfu dev up` runs one: use it and leave it running
        devkafka.wait_for_metadata(recorded["bootstrap"], timeout_s=30)
        return recorded["bootstrap"]
    broker = devkafka.LocalKafka(devkafka.provision(_progress), data_dir)
    broker.start(timeout_s=120)
    stack.callback(broker.stop)
    _progress(f"local Kafka on {broker.bootstrap} ready in {broker.startup_s:.1f} s")
    return broker.bootstrap


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real Kafka broker (KRaft), shared by the whole session."""
    with ExitStack() as stack:
        yield _first_available(
            "Kafka broker",
            [
                ("env", _kafka_from_env),
                (f"testcontainers {KAFKA_IMAGE}", _kafka_container),
                ("local devenv.kafka", lambda s: _kafka_local(s, tmp_path_factory.mktemp("kafka"))),
            ],
            stack,
            "Run 'mfu dev up' and export what it prints, or set MFU_KAFKA_BOOTSTRAP.",
        )


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    """A confluent-kafka AdminClient for the session's broker."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def fresh_topic(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Factory ``fresh_topic(name_prefix="test", partitions=4, config=None) -> name``.

    Creates a uniquely named topic (replication factor 1) and waits until it is in the
    metadata, so tests never share data; the topics are deleted after the test.
    """
    created: list[str] = []

    def make(
        name_prefix: str = "test", partitions: int = 4, config: dict[str, str] | None = None
    ) -> str:
        name = f"{name_prefix}-{uuid.uuid4().hex[:10]}"
        new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        kafka_admin.create_topics([new], operation_timeout=30)[name].result(timeout=60)
        created.append(name)
        deadline = time.monotonic() + 30
        while name not in kafka_admin.list_topics(timeout=10).topics:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} was created but is not in metadata after 30 s")
            time.sleep(0.1)
        return name

    yield make
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # cleanup only: a leftover topic fails nothing
                future.result(timeout=30)


# --------------------------------------------------------------------------- InfluxDB


def _influx_from_env(_stack: ExitStack) -> InfluxSettings:
    try:
        configured = InfluxSettings.from_env()
        if configured is None:
            raise _Unavailable("MFU_INFLUX_URL is not set")
        _influx_ping(configured.url)
    except services.ServiceError as exc:  # set but broken: say so, don't fall back silently
        pytest.fail(f"MFU_INFLUX_* settings are unusable: {exc}", pytrace=False)
    return configured


def _influx_container(stack: ExitStack) -> InfluxSettings:
    _docker_answers()
    # testcontainers' InfluxDb2Container module imports the v1 `influxdb` client, which
    # this project does not install: a generic container does the same job.
    from testcontainers.core.container import DockerContainer

    token = uuid.uuid4().hex
    container = (
        DockerContainer(INFLUX_IMAGE)
        .with_exposed_ports(8086)
        .with_env("DOCKER_INFLUXDB_INIT_MODE", "setup")
        .with_env("DOCKER_INFLUXDB_INIT_USERNAME", "mfu")
        .with_env("DOCKER_INFLUXDB_INIT_PASSWORD", uuid.uuid4().hex)
        .with_env("DOCKER_INFLUXDB_INIT_ORG", "mfu")
        .with_env("DOCKER_INFLUXDB_INIT_BUCKET", "mfu")
        .with_env("DOCKER_INFLUXDB_INIT_ADMIN_TOKEN", token)
    )
    container.start()
    stack.callback(container.stop)
    url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8086)}"
    _influx_ping(url, timeout_s=60)
    return InfluxSettings(url=url, token=token, org="mfu", bucket="mfu", api="v2")


def _influx_local(stack: ExitStack, data_dir: Path) -> InfluxSettings:
    recorded = services.status()["influxdb"]
    if recorded["running"]:  # `mfu dev up` runs one: use it and leave it running
        settings = InfluxSettings.from_env(services.connection_env({"influxdb": recorded}))
        assert settings is not None
        _influx_ping(settings.url)
        return settings
    from devenv import influxdb

    install = influxdb.provision(_progress)
    server = influxdb.LocalInflux(install, data_dir)
    server.start()
    stack.callback(server.stop)
    return InfluxSettings(
        url=server.url, token=server.token, org=server.org, bucket=server.bucket, api=install.api
    )


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxSettings]:
    """A real InfluxDB: ``.url``, ``.token``, ``.org``, ``.bucket``, ``.api`` ("v2"/"v1")."""
    with ExitStack() as stack:
        yield _first_available(
            "InfluxDB",
            [
                ("env", _influx_from_env),
                (f"testcontainers {INFLUX_IMAGE}", _influx_container),
                (
                    "local devenv.influxdb",
                    lambda s: _influx_local(s, tmp_path_factory.mktemp("influxdb")),
                ),
            ],
            stack,
            "Run 'mfu dev up' and export what it prints, or set MFU_INFLUX_URL and friends.",
        )
