"""The FLOP reporter SDK, kept at its old import path: ``from agents.sdk import FlopReporter``.

The code lives in the stdlib-only ``mfu-sdk`` distribution (``sdk/mfu_sdk/``), which a
training job installs alone (``pip install ./sdk``) and imports as ``mfu_sdk``. This
module re-exports it so existing users and the agent's benchmarks keep working.
"""

from mfu_sdk.reporter import (
    DEFAULT_SOCKET,
    PHASES,
    PRECISIONS,
    SCHEMA,
    SOCKET_ENV,
    FlopReporter,
    default_workload,
    gpu_from_environment,
    measure_flops,
)

__all__ = [
    "DEFAULT_SOCKET",
    "PHASES",
    "PRECISIONS",
    "SCHEMA",
    "SOCKET_ENV",
    "FlopReporter",
    "default_workload",
    "gpu_from_environment",
    "measure_flops",
]
