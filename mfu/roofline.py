"""Compute- or memory-bound: arithmetic intensity against the ridge point (pure).

The ridge point of a GPU is peak FLOP/s / peak bytes/s (FLOP per byte). Work whose
intensity (FLOPs / bytes moved) lies below half the ridge is ``memory``-bound, above
twice the ridge ``compute``-bound, and ``mixed`` between (a factor-2 band, because near
the ridge neither roof binds clearly and model byte counts are estimates).
"""

from __future__ import annotations

from typing import Literal

Regime = Literal["compute", "memory", "mixed"]
BAND = 2.0


def ridge_flops_per_byte(peak_flops_per_s: float, peak_bytes_per_s: float) -> float:
    """Ridge point, FLOP per byte."""
    return peak_flops_per_s / peak_bytes_per_s


def regime_from_intensity(intensity_flops_per_byte: float, ridge: float) -> Regime:
    if intensity_flops_per_byte < ridge / BAND:
        return "memory"
    if intensity_flops_per_byte > ridge * BAND:
        return "compute"
    return "mixed"


def regime(achieved_flops: float, achieved_bytes: float | None, peak_flops: float,
           peak_bytes: float, tensor_active: float | None = None,
           dram_active: float | None = None) -> Regime | None:
    """Regime of a window from totals over the same GPU-seconds.

    With model bytes: intensity ``achieved_flops / achieved_bytes`` against the ridge
    ``peak_flops / peak_bytes`` (both totals, FLOPs and bytes). Without: the counters,
    ``tensor_active`` vs ``dram_active`` (each a fraction of its own roof, so their ratio
    is intensity / ridge). ``tensor_active`` stands for the compute side: the streams pass
    OFU there where pipe counters exist (fp32 work leaves the tensor cores idle). None
    where neither is known (or both counters are zero).
    """
    if achieved_bytes and peak_bytes > 0 and peak_flops > 0:
        return regime_from_intensity(achieved_flops / achieved_bytes,
                                     ridge_flops_per_byte(peak_flops, peak_bytes))
    if tensor_active is not None and dram_active is not None and (tensor_active > 0 or dram_active > 0):
        if dram_active == 0:
            return "compute"
        return regime_from_intensity(tensor_active / dram_active, 1.0)
    return None
