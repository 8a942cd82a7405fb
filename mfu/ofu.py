"""Counter-derived FLOP utilisation (OFU) and the FLOP source of a telemetry sample.

OFU follows "Instant GPU Efficiency Visibility at Fleet Scale" (Neale, Pedersen et al.,
arXiv 2605.20799): achieved FLOP/s ~= tensor-pipe activity x (SM clock / max SM clock)
x the dense tensor peak of the precision. The paper characterises five error sources
(tile quantization, precision scaling, clock sampling noise, tensor-core clock domains,
non-tensor undercounting). What this module applies, and why:

- **Clock ratio** (the paper's second counter): per sample, ``min(1, sm_clock_mhz /
  reference clock)``, where the reference clock is the one the catalog's datasheet peak
  of that pipe assumes (:meth:`mfu.peaks.GPUSpec.reference_clock_mhz`: the tensor clock
  for the tensor pipe, the boost clock for the FP32/FP64 pipes), i.e. exactly the clock
  factor of :func:`mfu.peaks.resolve_peak` with ``sm_clock_mhz``. Why not the GPU's
  maximum clock: a pipe's FLOPs per clock are fixed by the chip, so at clock ``f`` it can
  do ``peak x f / f_ref``; the H100 SXM's tensor peak (989.4 TFLOP/s = 132 SMs x 4096
  FLOP/clk x 1830 MHz) assumes 1830 MHz, not its 1980 MHz maximum, and ``f / f_max``
  under-reads every sample at or below 1830 MHz by 1830/1980 (-7.6 %; -13 % on an H100 NVL,
  1545/1785). Above the reference clock the ratio is capped at 1: the datasheet peak
  stays the ceiling (as in :mod:`mfu.peaks`; the tensor-core clock domain of the paper),
  which under-reads by at most ``f_ref / f`` a pipe that really ran faster. Where the
  catalog has no reference clock, the sample's ``max_sm_clock_mhz`` stands in; where the
  SM clock is unknown, 1 (assumes the reference clock, so throttled GPUs without clock
  telemetry are over-estimated).
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

import functools
from typing import Literal

from mfu import peaks

# A sample is idle by its counters below these (DESIGN.md §8 / CONTRACT-ADDITIONS.md).
IDLE_SM_UTIL = 0.05
IDLE_TENSOR_ACTIVE = 0.01

SampleClass = Literal["idle", "counters", "none"]


def clock_ratio(sm_clock_mhz: float | None, reference_clock_mhz: float | None) -> float:
    """``min(1, sm_clock / reference_clock)``; 1 where either is unknown or zero. The
    reference is the clock the pipe's datasheet peak assumes (:func:`reference_clocks`)."""
    if sm_clock_mhz is None or not reference_clock_mhz:
        return 1.0
    r = sm_clock_mhz / reference_clock_mhz
    return r if r < 1.0 else 1.0


@functools.lru_cache(maxsize=256)
def reference_clocks(gpu_name: str) -> tuple[float | None, float | None]:
    """(tensor pipe, FP32/FP64 pipes) reference clocks of ``gpu_name``, MHz: the clocks
    the catalog's dense peaks assume (``tensor_clock_mhz`` or else ``boost_clock_mhz``
    for the tensor precisions; ``boost_clock_mhz`` for fp32/fp64). None where the
    catalog does not know the GPU or its clocks (the caller falls back to the sample's
    ``max_sm_clock_mhz``)."""
    try:
        spec = peaks.lookup(gpu_name)
    except LookupError:
        return None, None
    return spec.reference_clock_mhz("bf16"), spec.reference_clock_mhz("fp32")


def pipe_clock_ratios(gpu_name: str, sm_clock_mhz: float | None,
                      max_sm_clock_mhz: float | None) -> tuple[float, float]:
    """(tensor, FP32/FP64) clock ratios of one sample: :func:`clock_ratio` against each
    pipe's reference clock, the sample's ``max_sm_clock_mhz`` where the catalog has none."""
    t_ref, v_ref = reference_clocks(gpu_name)
    return (clock_ratio(sm_clock_mhz, t_ref or max_sm_clock_mhz),
            clock_ratio(sm_clock_mhz, v_ref or max_sm_clock_mhz))


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
