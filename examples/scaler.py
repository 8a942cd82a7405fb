"""Example consumer of ``io.mfu.scale.v1``: turn scaling advice into a replica count.

The advice carries ``ratio = observed MFU / target MFU``; the replica count follows the
Kubernetes HPA rule ``desired = ceil(current x ratio)``, at least one replica in the
advised direction, clamped to ``[min_replicas, max_replicas]``. The scaler prints the
``kubectl scale`` command, and runs it with ``--dry-run=client`` unless told to apply.
Events are de-duplicated by CloudEvent id (delivery is at least once).
"""

from __future__ import annotations

import math
import shlex
import subprocess
from dataclasses import dataclass, field

from mfu.events import CloudEvent

SCALE_TYPE = "io.mfu.scale.v1"


def desired_replicas(current: int, ratio: float, action: str, min_r: int, max_r: int) -> int:
    """Replicas after one piece of advice (HPA formula, >= one step, clamped)."""
    desired = math.ceil(current * ratio - 1e-9)
    if action == "scale_out":
        desired = max(desired, current + 1)
    elif action == "scale_in":
        desired = min(desired, current - 1)
    return max(min_r, min(max_r, desired))


@dataclass
class Decision:
    target: str
    current: int
    desired: int
    command: list[str]
    reason: str

    def line(self) -> str:
        return (
            f"{self.target}: {self.current} -> {self.desired} replicas ({self.reason}); "
            f"{shlex.join(self.command)}"
        )


@dataclass
class Scaler:
    """Tracks the replica count it has set per target; ``initial`` for unseen ones."""

    initial: int = 1
    min_replicas: int = 1
    max_replicas: int = 64
    namespace: str = "default"
    target_template: str = "deployment/{key}"
    apply: bool = False
    replicas: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def decide(self, event: CloudEvent) -> Decision | None:
        """The decision for one event; None for other types, duplicates or no change."""
        if event.type != SCALE_TYPE or event.id in self.seen:
            return None
        self.seen.add(event.id)
        data = event.data
        target_info = data.get("target") or {}
        key = target_info.get("key") or event.subject.split("/", 1)[-1]
        target = self.target_template.format(key=key, scope=target_info.get("scope", ""))
        current = self.replicas.get(target, self.initial)
        desired = desired_replicas(
            current,
            float(data.get("ratio") or 1.0),
            str(data.get("action")),
            self.min_replicas,
            self.max_replicas,
        )
        if desired == current:
            return None
        self.replicas[target] = desired
        command = ["kubectl", "scale", target, f"--replicas={desired}", "-n", self.namespace]
        if not self.apply:
            command.append("--dry-run=client")
        return Decision(target, current, desired, command, str(data.get("reason", "")))

    def execute(self, decision: Decision) -> int:
        """Run the kubectl command (a dry run unless ``apply``); its exit status."""
        try:
            return subprocess.run(decision.command, check=False).returncode
        except FileNotFoundError:
            return 127
