"""The `mfu policies` Faust worker on the real broker.

Each test runs the worker as a subprocess (``python -m mfucli.main policies``) with its
own app id, fresh input/output topics (``MFU_POLICIES_*`` settings) and rules file, feeds
MFU windows and reads the CloudEvents back from the policy topic.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from mfu.events import CloudEvent, MfuWindow
from policies.cloudevents import event_id, parse_event, rfc3339

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
PARTITIONS = 2


def window(i: int, mfu: float, key: str = "job-a", scope: str = "workload", **kw: Any) -> bytes:
    return MfuWindow.model_validate(
        {
            "schema": "mfu_window/1",
            "event_id": MfuWindow.make_event_id(scope, key, T0 + 10 * i),
            "scope": scope,
            "key": key,
            "window_start": T0 + 10 * i,
            "window_end": T0 + 10 * i + 10,
            "mfu": mfu,
            "achieved_flops": mfu * 1e16,
            "peak_flops": 1e16,
            "gpu_seconds": 10.0,
            "gpus": 1,
            **kw,
        }
    ).to_json()


class Worker:
    """One `mfu policies` subprocess; its log goes to a file the test can search."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.env = env
        self.tmp_path = tmp_path
        self.log_path = tmp_path / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0  # where this run's log starts

    def start(self) -> None:
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mfucli.main", "policies", "--loglevel", "info"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_log(r"\[\^Worker\]: Ready", timeout=90)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[self.offset :]

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            assert self.proc is not None and self.proc.poll() is None, (
                f"worker exited ({self.proc and self.proc.returncode}):\n{self.log()[-4000:]}"
            )
            time.sleep(0.2)
        raise AssertionError(
            f"no {pattern!r} in the worker log after {timeout} s:\n{self.log()[-4000:]}"
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"worker ignored SIGTERM for 60 s:\n{self.log()[-4000:]}"
            ) from None


class PolicyReader:
    """Reads the policy topic from the beginning (assign, no group) and keeps everything."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        self.events: list[tuple[bytes, CloudEvent]] = []

    def poll_until(self, done: Callable[[list[CloudEvent]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.cloudevents()):
            assert time.monotonic() < deadline, f"timed out; events so far: {self.summary()}"
            self._poll(0.5)

    def drain(self, quiet_s: float) -> None:
        """Read until nothing new arrives for ``quiet_s`` seconds."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if self._poll(0.5):
                last = time.monotonic()

    def _poll(self, timeout: float) -> bool:
        msg = self.consumer.poll(timeout)
        if msg is None or msg.error():
            return False
        self.events.append((msg.key(), parse_event(msg.value())))
        return True

    def cloudevents(self) -> list[CloudEvent]:
        return [e for _, e in self.events]

    def summary(self) -> list[tuple[str, str, Any]]:
        return [(e.type, e.subject, e.data.get("status")) for e in self.cloudevents()]

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def stage(kafka_bootstrap: str, kafka_admin, fresh_topic, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Topics, a rules file, a producer, a policy-topic reader and a (not yet started)
    worker, all private to the test."""
    names = {
        s: fresh_topic(f"pol-{s}", partitions=PARTITIONS)
        for s in ("workload", "node", "fleet", "policy")
    }
    rules = tmp_path / "rules.yaml"
    app_id = f"pol-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MFU_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MFU_POLICIES_APP_ID": app_id,
        "MFU_POLICIES_WORKLOAD_TOPIC": names["workload"],
        "MFU_POLICIES_NODE_TOPIC": names["node"],
        "MFU_POLICIES_FLEET_TOPIC": names["fleet"],
        "MFU_POLICIES_POLICY_TOPIC": names["policy"],
        "MFU_POLICIES_PARTITIONS": str(PARTITIONS),
        "MFU_POLICIES_RULES_FILE": str(rules),
        "MFU_POLICIES_RELOAD_INTERVAL_S": "0.5",
        "MFU_POLICIES_DATA_DIR": str(tmp_path / "faust-data"),
    }
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})

    def send(topic: str, key: str, *values: bytes) -> None:
        for value in values:
            producer.produce(names[topic], key=key.encode(), value=value)
        assert producer.flush(30) == 0

    worker = Worker(tmp_path, env)
    reader = PolicyReader(kafka_bootstrap, names["policy"])
    try:
        yield {"rules": rules, "send": send, "worker": worker, "reader": reader}
    finally:
        worker.stop()
        reader.close()
        # The worker's own topics (table changelogs, assignor): cleanup only.
        leftovers = [t for t in kafka_admin.list_topics(timeout=10).topics if t.startswith(app_id)]
        if leftovers:
            for future in kafka_admin.delete_topics(leftovers, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=30)


RESTART_RULES = """
rules:
  - id: low
    kind: threshold
    scope: workload
    below: 0.2
    clear_above: 0.3
    for_windows: 3
    clear_windows: 2
    cooldown_s: 0
    event: underutilized
  - id: gap
    kind: allocation_gap
    scope: fleet
    for_windows: 1
    clear_windows: 1
"""


def _of(events: list[CloudEvent], subject: str) -> list[CloudEvent]:
    return [e for e in events if e.subject == subject]


def test_incident_survives_a_restart_without_refiring(stage) -> None:  # type: ignore[no-untyped-def]
    stage["rules"].write_text(RESTART_RULES)
    send, worker, reader = stage["send"], stage["worker"], stage["reader"]
    worker.start()
    send("workload", "job-a", *(window(i, 0.5 if i < 2 else 0.1) for i in range(6)))
    send(
        "fleet",
        "pool-1",
        window(0, 0.1, key="pool-1", scope="fleet", gpus=100, allocation=0.95, mfu_allocated=0.1),
    )
    reader.poll_until(
        lambda ev: len(_of(ev, "workload/job-a")) == 1 and len(_of(ev, "fleet/pool-1")) == 1,
        timeout=60,
    )
    key, opened = next((k, e) for k, e in reader.events if e.subject == "workload/job-a")
    assert key == b"workload/job-a"
    assert opened.type == "io.mfu.underutilized.v1" and opened.data["status"] == "open"
    assert opened.id == event_id("low", "workload/job-a", T0 + 40, "open")
    assert opened.time == rfc3339(T0 + 50) and opened.source == "/mfu/policies/low"
    assert opened.data["windows"] == {"start": T0 + 20, "end": T0 + 50, "count": 3}
    gap = _of(reader.cloudevents(), "fleet/pool-1")[0]
    assert gap.type == "io.mfu.allocation_gap.v1"

    # A duplicate record of a processed window changes nothing.
    send("workload", "job-a", window(3, 0.1))
    assert worker.stop() == 0
    # Low windows keep coming while the worker is down and after it is back.
    send("workload", "job-a", *(window(i, 0.1) for i in range(6, 9)))
    worker.start()
    send("workload", "job-a", *(window(i, 0.1) for i in range(9, 11)))
    send("workload", "job-a", *(window(i, 0.5) for i in range(11, 13)))
    reader.poll_until(lambda ev: len(_of(ev, "workload/job-a")) >= 2, timeout=60)
    reader.drain(quiet_s=3)
    job = _of(reader.cloudevents(), "workload/job-a")
    assert [e.data["status"] for e in job] == ["open", "resolved"], reader.summary()
    resolved = job[1]
    assert resolved.data["incident"] == opened.data["incident"]
    assert resolved.id == event_id("low", "workload/job-a", T0 + 120, "resolved")
    assert resolved.data["windows"]["incident_start"] == T0 + 20
    assert len(_of(reader.cloudevents(), "fleet/pool-1")) == 1


GOOD_RULES = """
rules:
  - {id: low, kind: threshold, scope: workload, below: 0.2, for_windows: 1,
     event: underutilized}
"""


def test_bad_rules_are_refused_and_the_running_rules_stay(stage) -> None:  # type: ignore[no-untyped-def]
    rules: Path = stage["rules"]
    send, worker, reader = stage["send"], stage["worker"], stage["reader"]
    rules.write_text(GOOD_RULES)
    worker.start()

    rules.write_text(GOOD_RULES.replace("below: 0.2", "below: lots"))
    refused = worker.wait_log(r"event=rules_refused .*", timeout=30).group(0)
    assert f"{rules}:3: rules[0](id=low).below: Input should be a valid number" in refused
    send("workload", "job-b", window(0, 0.1, key="job-b"))
    reader.poll_until(lambda ev: len(_of(ev, "workload/job-b")) == 1, timeout=60)
    assert _of(reader.cloudevents(), "workload/job-b")[0].type == "io.mfu.underutilized.v1"

    rules.write_text(GOOD_RULES.replace("underutilized", "lowmfu"))
    worker.wait_log(r"event=rules_reloaded .*generation=2", timeout=30)
    send("workload", "job-c", window(0, 0.1, key="job-c"))
    reader.poll_until(lambda ev: len(_of(ev, "workload/job-c")) == 1, timeout=60)
    assert _of(reader.cloudevents(), "workload/job-c")[0].type == "io.mfu.lowmfu.v1"

    worker.signal(signal.SIGHUP)  # forced reload of the same file
    worker.wait_log(r"event=rules_reloaded .*generation=3", timeout=30)
    assert worker.proc is not None and worker.proc.poll() is None
    # Every emitted value is a valid CloudEvent keyed by its subject.
    assert all(k == e.subject.encode() for k, e in reader.events)
    assert json.loads(reader.cloudevents()[0].to_json())["specversion"] == "1.0"
