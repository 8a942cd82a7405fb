"""Model FLOPs per token and decode bytes: re-exported from the SDK's :mod:`mfu_sdk.flops`.

The math lives in the dependency-free ``mfu-sdk`` distribution (``sdk/mfu_sdk/flops.py``)
so training jobs can use it without the pipeline; this module keeps ``mfu.flops`` the
pipeline's import path. See :mod:`mfu_sdk.flops` for the formulas and units.
"""

from mfu_sdk.flops import (
    BYTES_PER_ELEMENT,
    MODES,
    RECOMPUTES,
    DecodeBytes,
    FlopsPerToken,
    Mode,
    ModelConfig,
    ParamCounts,
    Recompute,
    attention_flops_per_token,
    decode_bytes,
    flops_per_token,
    kv_cache_bytes_per_token,
    mbu_ratio,
    mfu_ratio,
    param_counts,
)

__all__ = [
    "BYTES_PER_ELEMENT",
    "MODES",
    "RECOMPUTES",
    "DecodeBytes",
    "FlopsPerToken",
    "Mode",
    "ModelConfig",
    "ParamCounts",
    "Recompute",
    "attention_flops_per_token",
    "decode_bytes",
    "flops_per_token",
    "kv_cache_bytes_per_token",
    "mbu_ratio",
    "mfu_ratio",
    "param_counts",
]
