"""Pipe counters from DCGM profiling fields, for GPUs NVML GPM does not cover.

NVML GPM (the collector's own source of ``tensor_active``, ``dram_active`` and the
FP16/FP32/FP64 pipe ratios) starts with Hopper. On Volta, Turing, Ampere (A100) and Ada
(L40S) the same counters exist as DCGM profiling fields, served by ``nv-hostengine``
(the daemon dcgm-exporter also uses):

=====  ================================  ==========================
id     DCGM field                        ``gpu_sample/1`` field
=====  ================================  ==========================
1004   ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE``  ``tensor_active``
1005   ``DCGM_FI_PROF_DRAM_ACTIVE``         ``dram_active``
1006   ``DCGM_FI_PROF_PIPE_FP64_ACTIVE``    ``fp64_active``
1007   ``DCGM_FI_PROF_PIPE_FP32_ACTIVE``    ``fp32_active``
1008   ``DCGM_FI_PROF_PIPE_FP16_ACTIVE``    ``fp16_active``
=====  ================================  ==========================

Values are ratios 0..1 of the latest DCGM sample (the fields are watched every agent
interval, so the latest sample covers about the agent's interval, not exactly it).
GPUs are matched by UUID (``DCGM_FI_DEV_UUID``, 54). Whole GPUs only: per-MIG-instance
profiling (DCGM GPU-instance entities) is not read, so A100 MIG slices keep null
counters.

DCGM's Python bindings are not on PyPI; they ship with the datacenter-gpu-manager
package under ``/usr/local/dcgm/bindings/python3``. They are imported only when a GPU
without GPM is found; where they or ``nv-hostengine`` are absent the counters stay
null (counted in ``stats``), never zero. :class:`DcgmPipeCounters` takes a reader
factory, so tests pass a fake reader with recorded values.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_BINDINGS = "/usr/local/dcgm/bindings/python3"
DCGM_FI_DEV_UUID = 54
# DCGM profiling field id -> gpu_sample/1 field
PROF_FIELDS = {
    1004: "tensor_active",
    1005: "dram_active",
    1006: "fp64_active",
    1007: "fp32_active",
    1008: "fp16_active",
}


def load_dcgm_reader(interval_s: float, *, host: str = "localhost",
                     bindings: str = DEFAULT_BINDINGS) -> Any:
    """A DCGM ``DcgmReader`` watching :data:`PROF_FIELDS` and the UUID every ``interval_s``
    seconds on ``host``'s nv-hostengine. Raises ``ImportError`` where the bindings are
    absent and DCGM's error where the host engine cannot be reached."""
    if bindings and bindings not in sys.path:
        sys.path.append(bindings)
    from DcgmReader import DcgmReader  # type: ignore[import-not-found]

    reader = DcgmReader(hostname=host, fieldIds=[DCGM_FI_DEV_UUID, *PROF_FIELDS],
                        updateFrequency=max(int(interval_s * 1e6), 100_000),
                        fieldGroupName="mfu_agent_pipe_counters")
    reader.Init()
    return reader


class DcgmPipeCounters:
    """Latest DCGM pipe counters per GPU UUID, from a lazily created reader.

    ``reader_factory``: zero-argument callable returning an object with DCGM's
    ``GetLatestGpuValuesAsFieldIdDict() -> {gpu_id: {field_id: value}}``. A factory
    that fails is retried after ``retry_s`` seconds of ``clock`` (missing bindings: never
    again). Counters in ``stats``: ``("dcgm_errors", reason)``.
    """

    def __init__(self, reader_factory: Callable[[], Any], *, retry_s: float = 300.0,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self._factory = reader_factory
        self._reader: Any = None
        self._retry_s = retry_s
        self._clock = clock or time.monotonic
        self._next_try = 0.0
        self._gave_up = False
        self.stats: Counter[tuple[str, ...]] = Counter()

    def read(self) -> dict[str, dict[str, float]]:
        """``{gpu_uuid: {field: ratio}}`` of the GPUs DCGM has values for ({} if none)."""
        reader = self._connect()
        if reader is None:
            return {}
        try:
            values = reader.GetLatestGpuValuesAsFieldIdDict()
        except Exception as exc:  # DCGM raises its own error classes; keep sampling
            self.stats[("dcgm_errors", "read")] += 1
            log.warning("dcgm_read_failed error=%s", exc)
            self._reader = None
            self._next_try = self._clock() + self._retry_s
            return {}
        out: dict[str, dict[str, float]] = {}
        for fields in values.values():
            uuid = fields.get(DCGM_FI_DEV_UUID)
            if not uuid:
                continue
            ratios = {}
            for field_id, name in PROF_FIELDS.items():
                value = fields.get(field_id)
                if isinstance(value, (int, float)) and value == value:  # not NaN
                    ratios[name] = min(max(float(value), 0.0), 1.0)
            out[str(uuid)] = ratios
        return out

    def _connect(self) -> Any:
        if self._reader is not None or self._gave_up or self._clock() < self._next_try:
            return self._reader
        try:
            self._reader = self._factory()
        except ImportError:
            self._gave_up = True
            self.stats[("dcgm_errors", "no_bindings")] += 1
            log.info("dcgm_unavailable: DCGM Python bindings not found; GPUs without GPM "
                     "get null pipe counters (install datacenter-gpu-manager to fill them)")
        except Exception as exc:  # host engine down or refusing the profiling fields
            self.stats[("dcgm_errors", "connect")] += 1
            self._next_try = self._clock() + self._retry_s
            log.warning("dcgm_connect_failed error=%s: retrying in %.0f s", exc, self._retry_s)
        return self._reader
