"""Counter-derived FLOP utilisation (OFU) and the FLOP source of a telemetry sample.

OFU follows "Instant GPU Efficiency Visibility at Fleet Scale" (Neale, Pedersen et al.,
arXiv 2605.20799): achieved FLOP/s ~= tensor-pipe activity x (SM clock / max SM clock)
x the dense tensor peak of the precision. The paper characterises five error sources
(tile quantization, precision scaling, clock sampling noise, tensor-core clock domains,
non-tensor undercounting). What this module applies, and why:

- **Clock ratio** (the paper's second counter): per sample, ``min(1, sm_clock_mhz /
  max_sm_clock_mhz)``; 1 where either clock is unknown (assumes the GPU ran at its
  maximum clock, so throttled GPUs without clock telemetry are over-estimated).
- **Clock sampling noise**: every sample is weighted by the seconds it covers and the
  window averages them, rather than trusting one instantaneous clock reading.
- **Precision scaling**: the tensor term uses the dense peak of the precision the GPU's
  FLOP reports name; a GPU with no report is estimated at ``bf16`` (the convention MFU
  is stated against). An fp8 job without reports is therefore over-estimated 2x.
- **Non-tensor undercounting**: the FP32 and FP64 pipe activities (``fp32_active``,
  ``fp64_active``) add their own peaks' worth of FLOPs. ``fp16_active`` (non-tensor FP16)
  marks a sample as having counters but adds no FLOPs: the catalog has no dense vector
  FP16 peak, and on tensor-core parts it is a few percent of the tensor peak.
- **Not applied**: tile quantization (needs GEMM shapes; padded tiles count as pipe work,
  so OFU over-states MFU for small or odd-shaped matrices) and the tensor-core clock
  domain (the datasheet peak stays the ceiling, as in :mod:`mfu.peaks`). OFU also counts
  hardware work: recomputation (activation checkpointing) and non-model kernels raise OFU
  above MFU; that gap is what the reporter-mismatch rule reads, in both directions.

Pure: no I/O; floats in, floats out.
"""

from __future__ import annotations

from typing import Literal

# A sample is idle by its counters below these (DESIGN.md §8 / CONTRACT-ADDITIONS.md).
IDLE_SM_UTIL = 0.05
IDLE_TENSOR_ACTIVE = 0.01

SampleClass = Literal["idle", "counters", "none"]


def clock_ratio(sm_clock_mhz: float | None, max_sm_clock_mhz: float | None) -> float:
    """``min(1, sm_clock / max_sm_clock)``; 1 where either is unknown or zero."""
    if sm_clock_mhz is None or not max_sm_clock_mhz:
        return 1.0
    r = sm_clock_mhz / max_sm_clock_mhz
    return r if r < 1.0 else 1.0


def has_pipe_counters(tensor_active: float | None, fp16_active: float | None,
                      fp32_active: float | None, fp64_active: float | None) -> bool:
    """True where the sample carries any pipe-activity counter."""
    return not (tensor_active is None and fp16_active is None and fp32_active is None
                and fp64_active is None)


def classify(sm_util: float | None, tensor_active: float | None, has_pipes: bool) -> SampleClass:
    """Source of a sample's seconds when no FLOP report covers them.

    ``idle``: ``sm_util <= 0.05`` and, where known, ``tensor_active <= 0.01`` (with no
    ``sm_util``, as on A100 MIG slices, the tensor counter alone decides); ``counters``:
    busy with pipe counters; ``none``: busy (or not known to be idle) without them.
    """
    if sm_util is not None:
        idle = sm_util <= IDLE_SM_UTIL and (tensor_active is None or tensor_active <= IDLE_TENSOR_ACTIVE)
    else:
        idle = tensor_active is not None and tensor_active <= IDLE_TENSOR_ACTIVE
    if idle:
        return "idle"
    return "counters" if has_pipes else "none"


def ofu_flops(tensor_eff_s: float, fp32_eff_s: float, fp64_eff_s: float, *,
              tensor_peak_flops_per_s: float, fp32_peak_flops_per_s: float,
              fp64_peak_flops_per_s: float) -> float:
    """FLOPs the pipes did: Σ activity x clock ratio x seconds (``*_eff_s``) times the
    dense peak FLOP/s of each pipe (0 where the GPU has no peak for it)."""
    return (tensor_eff_s * tensor_peak_flops_per_s + fp32_eff_s * fp32_peak_flops_per_s
            + fp64_eff_s * fp64_peak_flops_per_s)
