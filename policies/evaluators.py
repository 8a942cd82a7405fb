"""The evaluator table, derived from the rule-kind registry (:mod:`policies.kinds`).

The shared evaluator machinery lives in :mod:`policies.evaluation`; each kind's evaluator
in its own module. Names that lived here before are re-exported for callers.
"""

from __future__ import annotations

from policies.evaluation import (
    Assessment,
    Emission,
    EpisodeEvaluator,
    Evaluator,
    judged_mfu,
    metric_value,
)
from policies.kinds import kinds
from policies.kinds.rightsize import choose_mig
from policies.kinds.stall import dip_runs

EVALUATORS: dict[str, type[Evaluator]] = {name: k.evaluator for name, k in kinds().items()}

__all__ = [
    "EVALUATORS", "Assessment", "Emission", "EpisodeEvaluator", "Evaluator", "choose_mig",
    "dip_runs", "judged_mfu", "metric_value",
]
