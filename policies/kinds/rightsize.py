"""Rule kind ``rightsize``: a low-MFU, low-memory job on a whole GPU fits a MIG shape
(sized by SM share and memory from the GPU catalog)."""

from __future__ import annotations

from typing import Any, Literal

from mfu.events import MfuWindow
from policies.evaluation import (
    Assessment,
    EpisodeEvaluator,
    _r,
    coverage_observed,
    judged_mfu,
)
from policies.gpus import MigCatalog, MigProfile, is_mig_slice
from policies.incidents import Episode
from policies.kinds.registry import RuleKind
from policies.rulebase import (
    EventName,
    Hysteresis,
    Ratio,
    RuleBase,
)


class RightsizeRule(RuleBase, Hysteresis):
    """A workload on one whole GPU with low MFU and low memory use fits a MIG slice: the
    smallest profile whose compute share (its SMs / the GPU's, from the GPU catalog) keeps
    the slice's MFU <= ``target_slice_mfu`` and whose memory holds the used memory with
    ``mem_margin`` to spare. An un-instrumented job (``mfu`` unknown) is judged on
    ``mfu_estimated`` when ``use_estimate``, and its event says ``basis: estimated``."""

    kind: Literal["rightsize"]
    mfu_max: Ratio = 0.15
    mem_used_ratio_max: Ratio = 0.45
    target_slice_mfu: Ratio = 0.6
    mem_margin: Ratio = 0.1
    use_estimate: bool = True
    event: EventName = "rightsize"


def choose_mig(
    catalog: MigCatalog, mfu: float, mem_used_ratio: float, target_slice_mfu: float, margin: float
) -> MigProfile | None:
    """Smallest MIG profile that carries the work: its compute share keeps the slice's
    MFU (``mfu / share``) <= ``target_slice_mfu`` and its memory holds the memory in use
    (``mem_used_ratio`` x GPU memory, GB) with ``margin`` spare. None if none fits."""
    used_gb = mem_used_ratio * catalog.memory_gb
    for p in sorted(catalog.profiles, key=lambda p: (p.compute, p.memory_gb)):
        if mfu / p.compute <= target_slice_mfu and used_gb <= p.memory_gb * (1 - margin):
            return p
    return None


class RightsizeEvaluator(EpisodeEvaluator):
    rule: RightsizeRule

    def assess(self, w: MfuWindow, state: Episode) -> Assessment | None:
        r = self.rule
        mfu, basis = judged_mfu(w, use_estimate=r.use_estimate)
        if w.gpus != 1 or mfu is None or w.mem_used_ratio is None or is_mig_slice(w.gpu_model):
            return None
        catalog = self.config.mig_catalog(w.gpu_model)
        if catalog is None:
            return None  # not a MIG-capable whole GPU (or one the catalog does not know)
        low = mfu <= r.mfu_max and w.mem_used_ratio <= r.mem_used_ratio_max
        shape = choose_mig(catalog, mfu, w.mem_used_ratio, r.target_slice_mfu, r.mem_margin)
        observed = {
            "mfu": _r(w.mfu),
            **coverage_observed(w),
            "mem_used_ratio": _r(w.mem_used_ratio),
            "gpu_model": w.gpu_model,
            "gpus": w.gpus,
        }
        expected = {
            "mfu_max": r.mfu_max,
            "mem_used_ratio_max": r.mem_used_ratio_max,
            "target_slice_mfu": r.target_slice_mfu,
        }
        return Assessment(
            low and shape is not None, not low, mfu, "mfu", observed, expected, basis
        )

    def facts(self, w: MfuWindow, a: Assessment) -> dict[str, Any]:
        catalog = self.config.mig_catalog(w.gpu_model)
        assert catalog is not None and a.value is not None and w.mem_used_ratio is not None
        r = self.rule
        p = choose_mig(catalog, a.value, w.mem_used_ratio, r.target_slice_mfu, r.mem_margin)
        assert p is not None
        return {
            "recommended_shape": p.name,
            "shape_compute_share": _r(p.compute),
            "shape_memory_gb": p.memory_gb,
            "expected_slice_mfu": _r(a.value / p.compute),
            "memory_used_gb": _r(w.mem_used_ratio * catalog.memory_gb, 1),
        }

    def summary(
        self, a: Assessment, mean: float, n: int, opened: bool, facts: dict[str, Any]
    ) -> str:
        o = a.observed
        if opened:
            return (
                f"whole GPU at MFU {mean:.3f} with {o['mem_used_ratio']:.0%} memory for "
                f"{n} windows: fits MIG {facts['recommended_shape']}"
            )
        return f"uses the whole GPU again (MFU {mean:.3f}) for {n} windows"


KIND = RuleKind("rightsize", RightsizeRule, RightsizeEvaluator)
