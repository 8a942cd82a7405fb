"""GPU facts the rules need, read from the one GPU catalog (:mod:`mfu.peaks`), never
from name patterns or hand-written tables:

- MIG shapes of a GPU: each profile's share of the GPU's compute is its SM count over the
  GPU's (``mfu.peaks.mig_sm_fraction``: an H100 ``1g.20gb`` has 26 of 132 SMs, 0.197, not
  1/7), its memory the profile's GB;
- tensor-core (matrix-unit) precisions: the precisions whose dense peak beats the one a
  job runs at, e.g. bf16 at 14.8x fp32 on an H100 SXM.

A rules file's ``mig:`` entries, where given, take precedence (an operator's own shapes).
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from mfu import peaks
from mfu.peaks import TENSOR_PRECISIONS

_PROFILE_GB = re.compile(r"(\d+)gb$")


class MigProfile(BaseModel):
    """One MIG profile: ``name`` (e.g. 3g.40gb), its share of the GPU's compute
    (``compute``: slice SMs / GPU SMs) and its memory (GB)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    compute: float = Field(ge=0.0, le=1.0)
    memory_gb: float = Field(gt=0.0)


class MigCatalog(BaseModel):
    """MIG profiles of one GPU family (``gpu_model`` glob); ``memory_gb`` of the whole GPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu_model: str
    memory_gb: float = Field(gt=0.0)
    profiles: list[MigProfile] = Field(min_length=1)


def is_mig_slice(gpu_model: str | None) -> bool:
    """True for a MIG slice's name ("NVIDIA H100 80GB HBM3 MIG 3g.40gb")."""
    return bool(gpu_model) and peaks.split_mig(gpu_model or "")[1] is not None


@lru_cache(maxsize=256)
def catalog_mig(gpu_model: str) -> MigCatalog | None:
    """The MIG shapes a whole GPU can be cut into, from the catalog: every profile
    smaller than the whole GPU (the 7g profile is the GPU itself), with its SM share and
    memory. None for a GPU the catalog does not know, one without MIG, or a MIG slice."""
    if is_mig_slice(gpu_model):
        return None
    try:
        spec = peaks.lookup(gpu_model)
    except peaks.UnknownGPUError:
        return None
    if not spec.mig_profiles or spec.memory_gb is None or spec.compute_units is None:
        return None
    profiles = []
    for name in spec.mig_profiles:
        match = _PROFILE_GB.search(name)
        if match is None:
            continue
        memory_gb = float(match[1])
        if memory_gb >= spec.memory_gb:
            continue  # the whole GPU (7g.80gb): not a smaller shape
        compute = peaks.mig_sm_fraction(gpu_model, name)
        profiles.append(MigProfile(name=name, compute=compute, memory_gb=memory_gb))
    if not profiles:
        return None
    return MigCatalog(gpu_model=spec.name, memory_gb=spec.memory_gb, profiles=profiles)


def faster_precisions(gpu_model: str | None, precision: str | None) -> list[tuple[str, float]]:
    """Tensor-core precisions of ``gpu_model`` whose dense peak is at least twice that of
    ``precision``, with the ratio, bf16 first (H100 SXM at fp32: bf16 14.8, fp16 14.8, tf32 7.4, fp8 29.6).
    Empty where the GPU or the precision's peak is unknown: no claim without a fact."""
    if not gpu_model or not precision:
        return []
    try:
        spec = peaks.lookup(gpu_model)
    except peaks.UnknownGPUError:
        return []
    base = spec.peak_flops_per_s.get(precision)  # type: ignore[call-overload]
    if not base:
        return []
    # int8 is not a training/inference float precision a hint can suggest by itself.
    out = [
        (p, flops / base)
        for p, flops in spec.peak_flops_per_s.items()
        if p in TENSOR_PRECISIONS and p != "int8" and flops >= 2.0 * base
    ]
    # The usual first step (bf16 mixed precision) first, fp8 last.
    order = {"bf16": 0, "fp16": 1, "tf32": 2, "fp8": 3}
    return sorted(out, key=lambda pr: order.get(pr[0], 9))
