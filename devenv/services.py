"""`mfu dev up`: provision and run Kafka and InfluxDB locally, remembered in a state file.

State lives in ``run_dir()/services.json`` (mode 0600): pids, ports, data and log paths,
connection settings, never a password. The InfluxDB credential goes to
``run_dir()/influxdb.token`` (mode 0600) and only that path is handed out
(``MFU_INFLUX_TOKEN_FILE``). ``up()`` is idempotent: services recorded as running and
answering are reused. Data stays in ``run_dir()`` across ``down()``/``up()`` unless purged.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv import kafka
from devenv.paths import run_dir

SERVICES = ("kafka", "influxdb")
Progress = Callable[[str], object]


class ServiceError(RuntimeError):
    """A local service could not be provisioned or started; the message says why."""


@dataclass(frozen=True)
class InfluxSettings:
    """How to reach an InfluxDB: v2 API settings (1.8: token ``user:pass``, bucket ``db/rp``)."""

    url: str
    token: str
    org: str
    bucket: str
    api: str = "v2"  # "v2": /api/v2/write (influxdb-client); "v1": /write only

    def __repr__(self) -> str:  # never print the secret
        return (
            f"InfluxSettings(url={self.url!r}, token='***', org={self.org!r}, "
            f"bucket={self.bucket!r}, api={self.api!r})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InfluxSettings | None:
        """Settings from ``MFU_INFLUX_URL`` (+ ``_TOKEN`` or ``_TOKEN_FILE``, ``_ORG``,
        ``_BUCKET``, ``_API``), or None when ``MFU_INFLUX_URL`` is unset.

        Raises ServiceError naming what is missing when the URL is set but the rest is not.
        """
        env = os.environ if environ is None else environ
        url = env.get("MFU_INFLUX_URL")
        if not url:
            return None
        token = env.get("MFU_INFLUX_TOKEN")
        if not token and env.get("MFU_INFLUX_TOKEN_FILE"):
            path = Path(env["MFU_INFLUX_TOKEN_FILE"])
            try:
                token = path.read_text().strip()
            except OSError as exc:
                raise ServiceError(f"MFU_INFLUX_TOKEN_FILE={path} cannot be read: {exc}") from exc
        missing = [
            name
            for name, value in (
                ("MFU_INFLUX_TOKEN or MFU_INFLUX_TOKEN_FILE", token),
                ("MFU_INFLUX_BUCKET", env.get("MFU_INFLUX_BUCKET")),
            )
            if not value
        ]
        if missing:
            raise ServiceError(f"MFU_INFLUX_URL is set but {' and '.join(missing)} is not")
        return cls(
            url=url.rstrip("/"),
            token=token or "",
            org=env.get("MFU_INFLUX_ORG", "-"),
            bucket=env["MFU_INFLUX_BUCKET"],
            api=env.get("MFU_INFLUX_API", "v2"),
        )


# --------------------------------------------------------------------------- state


def state_path() -> Path:
    return run_dir() / "services.json"


def token_path() -> Path:
    return run_dir() / "influxdb.token"


def data_dir(name: str) -> Path:
    return run_dir() / name


def load_state() -> dict[str, dict[str, Any]]:
    """What ``up()`` recorded (empty when nothing was started)."""
    try:
        return json.loads(state_path().read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ServiceError(
            f"{state_path()} is corrupt ({exc}); remove it and run 'mfu dev up'"
        ) from exc


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def _save_state(state: Mapping[str, Any]) -> None:
    _write_private(state_path(), json.dumps(state, indent=2, sort_keys=True) + "\n")


def _alive(name: str, entry: Mapping[str, Any]) -> bool:
    """Is the recorded process still this service (not a reused pid)?"""
    pid = entry.get("pid")
    if not isinstance(pid, int):
        return False
    if name == "kafka":
        return kafka.is_kafka_process(pid) and entry.get("properties") in kafka.process_cmdline(pid)
    cmdline = kafka.process_cmdline(pid)
    return kafka.pid_alive(pid) and bool(cmdline) and Path(cmdline[0]).name == "influxd"


def _influx_answers(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=timeout_s) as response:
            return response.status == 204
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- lifecycle


def up(progress: Progress = print, services: Iterable[str] = SERVICES) -> dict[str, dict[str, Any]]:
    """Provision (once) and start the named services; reuse those already running.

    Returns the state (also saved to ``state_path()``); ``env_exports(state)`` turns it
    into shell settings.
    """
    wanted = list(services)
    unknown = set(wanted) - set(SERVICES)
    if unknown:
        raise ServiceError(f"unknown service(s) {sorted(unknown)}; known: {', '.join(SERVICES)}")
    run_dir().mkdir(parents=True, exist_ok=True)
    with kafka.file_lock(run_dir() / ".services.lock"):
        state = load_state()
        for name in SERVICES:
            if name not in wanted:
                continue
            starter = _up_kafka if name == "kafka" else _up_influx
            state[name] = starter(state.get(name), progress)
            _save_state(state)
    return state


def _up_kafka(previous: Mapping[str, Any] | None, progress: Progress) -> dict[str, Any]:
    if previous and _alive("kafka", previous):
        try:
            kafka.wait_for_metadata(previous["bootstrap"], timeout_s=10)
            progress(f"kafka: already running (pid {previous['pid']}) on {previous['bootstrap']}")
            return dict(previous)
        except kafka.KafkaError:
            progress(f"kafka: pid {previous['pid']} does not answer; restarting it")
            kafka.stop_pid(previous["pid"])
    started = time.monotonic()
    try:
        libs = kafka.provision(progress)
        provision_s = time.monotonic() - started
        progress(f"kafka: starting {kafka.KAFKA_VERSION} (KRaft, single node)")
        broker = kafka.LocalKafka(libs, data_dir("kafka")).start(timeout_s=90)
    except kafka.KafkaError as exc:
        raise ServiceError(f"kafka: {exc}") from exc
    assert broker.pid is not None and broker.startup_s is not None
    rss = kafka.rss_bytes(broker.pid)
    progress(
        f"kafka: ready on {broker.bootstrap} (pid {broker.pid}) in {broker.startup_s:.1f} s"
        + (f", RSS {rss / 2**20:.0f} MiB" if rss else "")
    )
    return {
        "pid": broker.pid,
        "version": kafka.KAFKA_VERSION,
        "bootstrap": broker.bootstrap,
        "port": broker.port,
        "controller_port": broker.controller_port,
        "data_dir": str(broker.data_dir),
        "properties": str(broker.properties_path),
        "log_path": str(broker.log_path),
        "started_at": time.time(),
        "provision_s": round(provision_s, 2),
        "start_s": round(broker.startup_s, 2),
    }


def _up_influx(previous: Mapping[str, Any] | None, progress: Progress) -> dict[str, Any]:
    try:
        from devenv import influxdb
    except ImportError as exc:
        raise ServiceError(
            f"influxdb: local provisioning (devenv.influxdb) is unavailable: {exc}"
        ) from exc
    if previous and _alive("influxdb", previous) and _influx_answers(previous["url"]):
        if Path(previous.get("token_file", "")).is_file():
            progress(f"influxdb: already running (pid {previous['pid']}) on {previous['url']}")
            return dict(previous)
        progress(f"influxdb: pid {previous['pid']} lost its token file; restarting it")
    if previous and _alive("influxdb", previous):
        influxdb.stop_pid(previous["pid"])
    started = time.monotonic()
    try:
        install = influxdb.provision(progress)
        provision_s = time.monotonic() - started
        port = previous.get("port") if previous else None
        if port is not None and not kafka.port_free(port):
            port = None
        progress(f"influxdb: starting {install.version} (api {install.api})")
        began = time.monotonic()
        server = influxdb.LocalInflux(install, data_dir("influxdb"), port=port)
        server.start()
    except influxdb.InfluxError as exc:
        raise ServiceError(f"influxdb: {exc}") from exc
    start_s = time.monotonic() - began
    _write_private(token_path(), server.token + "\n")
    progress(f"influxdb: ready on {server.url} (pid {server.pid}) in {start_s:.1f} s")
    return {
        **server.to_state(),
        "binary": str(install.binary),
        "token_file": str(token_path()),
        "started_at": time.time(),
        "provision_s": round(provision_s, 2),
        "start_s": round(start_s, 2),
    }


def down(progress: Progress = print, *, purge: bool = False) -> list[str]:
    """Stop what ``up()`` started (InfluxDB first, then Kafka); return the names stopped.

    ``purge`` also deletes their data, logs and the token file.
    """
    stopped = []
    with kafka.file_lock(run_dir() / ".services.lock"):
        state = load_state()
        for name in reversed(SERVICES):
            entry = state.pop(name, None)
            if entry and _alive(name, entry):
                progress(f"{name}: stopping pid {entry['pid']}")
                if name == "kafka":
                    kafka.stop_pid(entry["pid"])
                else:
                    from devenv import influxdb

                    influxdb.stop_pid(entry["pid"])
                stopped.append(name)
            _save_state(state)
        if purge:
            for name in SERVICES:
                shutil.rmtree(data_dir(name), ignore_errors=True)
            token_path().unlink(missing_ok=True)
            progress(f"removed service data under {run_dir()}")
    return stopped


def status() -> dict[str, dict[str, Any]]:
    """Per service: the recorded state plus ``running`` (bool) and ``rss_bytes``."""
    state = load_state()
    report: dict[str, dict[str, Any]] = {}
    for name in SERVICES:
        entry = dict(state.get(name) or {})
        entry["running"] = bool(entry) and _alive(name, entry)
        if entry["running"]:
            entry["rss_bytes"] = kafka.rss_bytes(entry["pid"])
        report[name] = entry
    return report


def log_path(name: str) -> Path:
    if name not in SERVICES:
        raise ServiceError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    recorded = load_state().get(name, {}).get("log_path")
    if recorded:
        return Path(recorded)
    return data_dir(name) / ("kafka.log" if name == "kafka" else "influxd.log")


def logs(name: str, lines: int = 50) -> str:
    """The last ``lines`` lines of a service's log ('' if it never ran)."""
    return kafka.tail(log_path(name), lines)


def connection_env(state: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The ``MFU_*`` settings clients need for the services in ``state`` (no secrets)."""
    env: dict[str, str] = {}
    if state.get("kafka"):
        env["MFU_KAFKA_BOOTSTRAP"] = str(state["kafka"]["bootstrap"])
    influx = state.get("influxdb")
    if influx:
        env.update(
            MFU_INFLUX_URL=str(influx["url"]),
            MFU_INFLUX_TOKEN_FILE=str(influx["token_file"]),
            MFU_INFLUX_ORG=str(influx["org"]),
            MFU_INFLUX_BUCKET=str(influx["bucket"]),
            MFU_INFLUX_API=str(influx.get("api", "v2")),
        )
    return env


def env_exports(state: Mapping[str, Mapping[str, Any]]) -> str:
    """One shell line, ``export MFU_KAFKA_BOOTSTRAP=... MFU_INFLUX_URL=...``, for ``eval``."""
    env = connection_env(state)
    if not env:
        return ""
    return "export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
