"""Kafka topic names (contract: ../shared/DESIGN.md §3). Keep them exactly."""

from __future__ import annotations

TELEMETRY = "mfu.telemetry.v1"
FLOPS = "mfu.flops.v1"
WORKLOAD = "mfu.workload.v1"
NODE = "mfu.node.v1"
FLEET = "mfu.fleet.v1"
POLICY = "mfu.policy.v1"
DEADLETTER = "mfu.deadletter.v1"
# Not in the contract: events that arrived after their window closed (kept, not dropped),
# and the internal re-keyed partial aggregates between the node and roll-up stages.
LATE = "mfu.late.v1"
PARTIALS = "mfu.partials.v1"

OUTPUT_BY_SCOPE = {"workload": WORKLOAD, "node": NODE, "fleet": FLEET}
