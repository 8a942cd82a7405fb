"""Rule kind ``placement``: communication-bound jobs, move to an NVLink topology."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from mfu.events import MfuWindow
from policies.evaluation import (
    Assessment,
    EpisodeEvaluator,
    _r,
)
from policies.incidents import Episode
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    Hysteresis,
    Ratio,
    RuleBase,
    Windows,
)


class PlacementRule(RuleBase, Hysteresis):
    """Communication-bound jobs (``io.mfu.placement.v1``: move to an NVLink topology).
    Evidence, either of: MFU at the current node count is below ``drop_ratio`` x the MFU
    the same workload reached on fewer nodes (EWMA per node count, each with at least
    ``min_samples`` windows); or the tensor/context-parallel group (tp x cp) is larger than
    the GPUs per node, so it crosses nodes."""

    kind: Literal["placement"]
    min_nodes: int = Field(2, ge=2)
    drop_ratio: Ratio = 0.8
    min_samples: Windows = 3
    ewma_alpha: float = Field(0.2, gt=0.0, le=1.0)


@dataclass
class PlacementState(Episode):
    # node count (as str, JSON keys) -> [EWMA of MFU, windows seen]
    by_nodes: dict[str, list[float]] = field(default_factory=dict)


class PlacementEvaluator(EpisodeEvaluator):
    rule: PlacementRule
    state_type = PlacementState

    def event_name(self, state: Episode) -> str:
        return "placement"

    def assess(self, w: MfuWindow, state: PlacementState) -> Assessment | None:
        r = self.rule
        if w.nodes is None or w.mfu is None:
            return None
        n = str(w.nodes)
        ewma, count = state.by_nodes.get(n, [w.mfu, 0])
        ewma = w.mfu if count == 0 else ewma + r.ewma_alpha * (w.mfu - ewma)
        state.by_nodes[n] = [ewma, count + 1]
        evidence: list[dict[str, Any]] = []
        if w.nodes >= r.min_nodes and count + 1 >= r.min_samples:
            for other, (other_ewma, other_count) in state.by_nodes.items():
                if (
                    int(other) < w.nodes
                    and other_count >= r.min_samples
                    and (ewma < r.drop_ratio * other_ewma)
                ):
                    evidence.append(
                        {
                            "evidence": "mfu_falls_with_nodes",
                            "detail": f"MFU {ewma:.3f} on {w.nodes} nodes vs {other_ewma:.3f} "
                            f"on {other}",
                            "nodes": w.nodes,
                            "mfu": _r(ewma),
                            "fewer_nodes": int(other),
                            "mfu_on_fewer_nodes": _r(other_ewma),
                        }
                    )
        p = w.parallelism
        if p is not None and w.nodes >= r.min_nodes and w.gpus > 0:
            gpus_per_node = w.gpus / w.nodes
            if p.tp * p.cp > gpus_per_node:
                evidence.append(
                    {
                        "evidence": "tensor_parallel_crosses_nodes",
                        "detail": f"tp x cp = {p.tp * p.cp} > {gpus_per_node:g} GPUs per node",
                        "tp": p.tp,
                        "cp": p.cp,
                        "gpus_per_node": gpus_per_node,
                    }
                )
        observed = {"mfu": _r(w.mfu), "nodes": w.nodes, "gpus": w.gpus, "evidence": evidence}
        expected = {"drop_ratio": r.drop_ratio, "min_nodes": r.min_nodes}
        return Assessment(bool(evidence), not evidence, w.mfu, "mfu", observed, expected)

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        return {
            "advice": "move_to_nvlink_topology",
            "detail": "communication-bound: place the job inside one NVLink domain "
            "(fewer, larger nodes or an NVLink switch system) or keep tp x cp within a node",
            "evidence": a.observed["evidence"],
        }

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        if opened:
            what = "; ".join(e["detail"] for e in a.observed["evidence"])
            return f"communication-bound on {a.observed['nodes']} nodes ({what}): move to NVLink"
        return f"no longer communication-bound for {n} windows"


KIND = RuleKind("placement", PlacementRule, PlacementEvaluator)
