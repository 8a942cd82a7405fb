"""mfu-sdk: tell the MFU pipeline's node agent what model FLOPs (and bytes) a job computed.

Standard library only, installable alone (``pip install ./sdk``)::

    from mfu_sdk import FlopReporter

    reporter = FlopReporter(workload="job-42", model=hf_config_dict, seq_len=4096)
    for batch in loader:
        train_step(batch)
        reporter.step(tokens=batch.numel())

- :mod:`mfu_sdk.reporter`: :class:`FlopReporter` (``flop_report/1`` datagrams to the agent)
  and :func:`measure_flops` (PyTorch's FLOP counter, when torch is installed);
- :mod:`mfu_sdk.flops`: model FLOPs per token and decode bytes from a Hugging Face config
  (the pipeline's ``mfu.flops`` re-exports it);
- :mod:`mfu_sdk.attribution`: the default workload name, same rules as the agent.
"""

from mfu_sdk.reporter import (
    DEFAULT_SOCKET,
    SOCKET_ENV,
    FlopReporter,
    default_workload,
    gpu_from_environment,
    measure_flops,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "FlopReporter",
    "__version__",
    "default_workload",
    "gpu_from_environment",
    "measure_flops",
]
