"""`mfu simulate --fast` publishes a whole fleet run to the real broker."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from agents.simulator import FleetSimulator
from mfucli.main import main
from tests.integration.test_agent_publisher import MODELS, consume_all

T0 = 1_700_000_000.0


def test_simulate_fast_publishes_every_event(kafka_bootstrap: str, fresh_topic,
                                             tmp_path: Path) -> None:
    telemetry, flops = fresh_topic("sim-telemetry"), fresh_topic("sim-flops")
    argv = ["simulate", "--fast", "--duration-s", "10", "--nodes", "3", "--gpus-per-node", "2",
            "--gpu-models", ",".join(MODELS), "--seed", "4", "--start-ts", str(T0),
            "--bootstrap", kafka_bootstrap, "--telemetry-topic", telemetry,
            "--flops-topic", flops, "--spool-dir", str(tmp_path / "spool")]
    assert main(argv) == 0
    sim = FleetSimulator(3, 2, MODELS, seed=4, start_ts=T0)
    expected = {e.event_id for t in range(10) for ss, rs in sim.events(t).values()
                for e in (*ss, *rs)}
    messages = consume_all(kafka_bootstrap, [telemetry, flops], expected=len(expected))
    ids = Counter(e["event_id"] for *_, value in messages for e in value["events"])
    assert set(ids) == expected and max(ids.values()) == 1
    telemetry_messages = [m for m in messages if m[0] == telemetry]
    assert len(telemetry_messages) == 10 * 3  # one batch per node per interval
