"""Fleet simulator: N nodes x G GPUs running workload archetypes, with ground truth.

It emits the same events as real agents (``gpu_sample/1`` per GPU or MIG slice,
``flop_report/1`` per rank, per interval) and publishes them through the same
:class:`~agents.publisher.Publisher` (one ``batch/1`` per node per interval per topic,
key = node, same spool). Everything is a pure function of ``(seed, device, tick)``, so a
run is deterministic and :meth:`FleetSimulator.ground_truth` can give the exact answer
for any window without replaying the run.

True model FLOPs = catalog peak (``mfu.peaks``, dense, at the workload's precision, MIG
slices scaled by SM fraction) x true MFU x noise x interval. What a tenant *reports* is
another matter (DESIGN.md §8): some tenants have no SDK (counters only, or nothing on
GPUs without pipe counters), inference servers report through engine counters (with
model bytes), one reporter double counts. The hardware counters follow physics, not any
estimator: pipe activity = what the pipe did (model FLOPs x the archetype's overhead:
recomputation, non-model work) / what it can do at the current SM clock; DRAM activity =
bytes/s / peak bandwidth; energy = power x interval (NVML's counter). Archetypes
(:data:`ARCHETYPES`, table in docs/simulator.md) include the seed's failure modes plus a
drift: one workload's MFU drops by ``drift_fraction`` from ``drift_at_s`` on.

Clocks: :meth:`run` paces ticks on the wall clock (``realtime=True``) or emits
``[start_ts, start_ts + duration_s)`` as fast as it can (synthetic clock, no sleeping).

Ground-truth conventions (what later stages should reproduce): a device is a GPU or a
MIG slice (each counts as one in ``gpus``); a device's peak is at the precision of the
reports on it, ``bf16`` where none (idle, unallocated, silent); each device-second gets
the contract's FLOP source; ``Truth.mfu`` is reported FLOPs over known GPU-seconds (the
pipeline's ``mfu``), ``Truth.true_mfu`` true model FLOPs over every GPU-second; totals
that cross a window boundary are split pro rata.
"""

from __future__ import annotations

import math
import re
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.nvml import sample_event_id
from mfu import peaks
from mfu.events import FlopReport, GpuSample, Parallelism
from mfu.ofu import reference_clocks as pipe_reference_clocks
from mfu.topics import FLOPS, TELEMETRY

DEFAULT_MODELS = ("NVIDIA H100 80GB HBM3",)
DEFAULT_PRECISION = "bf16"


# --------------------------------------------------------------------------- hardware

@dataclass(frozen=True)
class Hardware:
    """What NVML would report for a model: memory (bytes), max SM clock (MHz), board
    power limit and idle power (W), whether GPM tensor activity exists (Hopper+)."""

    memory_bytes: int
    max_sm_clock_mhz: float
    tdp_w: float
    idle_w: float
    gpm: bool


# Idle power is not a datasheet value: the simulator derives it as this share of the
# board power limit. ~10% is what an idle (P0, no kernels) H100 SXM/L40S draws in
# nvidia-smi (~70 W of 700 W, ~35 W of 350 W); it only sets the floor of simulated
# power and energy.
IDLE_POWER_SHARE = 0.10
# Fallbacks for catalog entries without a value (e.g. a TPU has no board power in
# gpus.yaml): a generic 400 W accelerator with 80 GiB and 1800 MHz.
FALLBACK_TDP_W = 400.0
FALLBACK_MEMORY_BYTES = 80 << 30
FALLBACK_CLOCK_MHZ = 1800.0


def hardware(gpu_name: str) -> Hardware:
    """Telemetry facts for ``gpu_name``, all from the GPU catalog (``mfu/data/gpus.yaml``):
    ``memory_bytes`` (datasheet GB read as GiB), ``boost_clock_mhz`` (the max SM clock),
    ``tdp_w`` (power limit), ``gpm_counters``; idle power = :data:`IDLE_POWER_SHARE` x
    ``tdp_w``. Raises ``peaks.UnknownGPUError`` for a GPU the catalog lacks."""
    spec = peaks.lookup(gpu_name)
    tdp_w = spec.tdp_w or FALLBACK_TDP_W
    return Hardware(memory_bytes=spec.memory_bytes or FALLBACK_MEMORY_BYTES,
                    max_sm_clock_mhz=spec.boost_clock_mhz or FALLBACK_CLOCK_MHZ,
                    tdp_w=tdp_w, idle_w=IDLE_POWER_SHARE * tdp_w, gpm=spec.gpm_counters)


# --------------------------------------------------------------------------- archetypes

@dataclass(frozen=True)
class Archetype:
    """How one kind of workload looks. Ranges are (low, high) ratios 0..1; ``mfu`` is the
    true model-FLOP MFU against the dense peak at ``precision`` (for ``comm_bound_dp``: on
    one node).

    Physics (what the hardware counters see, independent of any estimator):
    ``overhead`` = hardware FLOPs / model FLOPs (activation recomputation, non-model work:
    1.0-1.3); ``tensor_share`` = share of the hardware FLOPs on the tensor pipe (the rest
    runs on the FP16/FP32 vector pipes); ``mbu`` = true model bytes/s / peak memory
    bandwidth (DRAM traffic is ``DRAM_OVERHEAD`` x that); ``clock_drop`` = how far the SM
    clock may sag below max under load (power capping).

    Reporting: ``reports`` (False: no SDK, the tenant publishes nothing), ``source``
    (``sdk`` or ``engine``: an inference server's own counters), ``report_bytes`` (reports
    carry model bytes), ``report_factor`` (reported / true model FLOPs: 2.0 is a buggy
    reporter). ``tenants``: owners of this archetype's jobs, round robin."""

    name: str
    mfu: tuple[float, float]
    sm_util: tuple[float, float]
    mem_util: tuple[float, float]
    mem_used: tuple[float, float]
    power: tuple[float, float]
    precision: str = "bf16"
    phase: str | None = "train"
    reports: bool = True
    params: float = 7e9  # active parameters, for tokens = flops / (k * N)
    hint: str = ""
    overhead: float = 1.05
    tensor_share: float = 0.98
    mbu: tuple[float, float] = (0.15, 0.30)
    clock_drop: float = 0.0
    source: str = "sdk"
    report_bytes: bool = False
    report_factor: float = 1.0
    tenants: tuple[str, ...] = ("default",)


ARCHETYPES: dict[str, Archetype] = {a.name: a for a in (
    Archetype("llm_train", (0.40, 0.55), (0.93, 0.99), (0.35, 0.50), (0.85, 0.95),
              (0.80, 0.95), params=70e9, hint="well-tuned LLM pre-training",
              overhead=1.15, clock_drop=0.07, tenants=("frontier-lab",)),
    Archetype("underbatched_inference", (0.05, 0.10), (0.85, 0.95), (0.20, 0.35),
              (0.25, 0.45), (0.45, 0.60), phase="prefill", params=8e9,
              hint="under-batched prefill (engine counters): SMs busy, tensor cores idle",
              overhead=1.05, mbu=(0.03, 0.06), source="engine", report_bytes=True,
              tenants=("serve-co",)),
    Archetype("comm_bound_dp", (0.40, 0.50), (0.80, 0.92), (0.30, 0.45), (0.70, 0.85),
              (0.55, 0.75), params=7e9,
              hint="communication-bound: MFU falls as the job spans more nodes",
              tenants=("frontier-lab",)),
    Archetype("input_stall", (0.35, 0.50), (0.90, 0.97), (0.30, 0.45), (0.60, 0.80),
              (0.70, 0.85), params=13e9, hint="input pipeline stalls: periodic MFU drops",
              tenants=("vision-co",)),
    Archetype("idle", (0.0, 0.0), (0.0, 0.02), (0.0, 0.01), (0.10, 0.50), (0.10, 0.15),
              reports=False, hint="allocated but idle: no FLOPs", mbu=(0.0, 0.0),
              tenants=("quiet-corp",)),
    Archetype("mig_inference", (0.15, 0.30), (0.60, 0.85), (0.20, 0.40), (0.40, 0.70),
              (0.40, 0.60), phase="prefill", params=1e9, hint="small model on a MIG slice",
              overhead=1.05, mbu=(0.10, 0.20), tenants=("edge-apps",)),
    Archetype("fp32_train", (0.45, 0.60), (0.95, 0.99), (0.40, 0.55), (0.80, 0.90),
              (0.70, 0.85), precision="fp32", params=1.3e9,
              hint="fp32 on a tensor-core GPU: use bf16/tf32", tensor_share=0.0,
              mbu=(0.20, 0.30), tenants=("vision-co",)),
    Archetype("decode", (0.01, 0.05), (0.55, 0.75), (0.75, 0.92), (0.85, 0.95), (0.55, 0.70),
              phase="decode", params=8e9,
              hint="memory-bound decode (engine counters): low MFU is expected; MBU is high",
              overhead=1.10, mbu=(0.60, 0.80), source="engine", report_bytes=True,
              tenants=("serve-co",)),
    Archetype("silent_train", (0.35, 0.50), (0.93, 0.99), (0.35, 0.50), (0.85, 0.95),
              (0.80, 0.95), reports=False, params=30e9,
              hint="training without the SDK: counters only (full activation recomputation)",
              overhead=1.30, clock_drop=0.07, tenants=("dark-matter",)),
    Archetype("silent_finetune", (0.28, 0.40), (0.88, 0.96), (0.30, 0.45), (0.50, 0.75),
              (0.65, 0.80), reports=False, params=8e9,
              hint="fine-tuning without the SDK: counters only (LoRA, non-model work)",
              overhead=1.20, tenants=("quiet-corp",)),
    Archetype("overcount_train", (0.25, 0.35), (0.93, 0.99), (0.35, 0.50), (0.80, 0.90),
              (0.75, 0.90), params=13e9,
              hint="buggy reporter: MoE FLOPs counted on total, not active, parameters (2x)",
              overhead=1.10, clock_drop=0.05, report_factor=2.0, tenants=("moe-labs",)),
)}
# comm_bound_dp: MFU = base / (1 + COMM_PENALTY * (nodes - 1))
COMM_PENALTY = 0.45
# input_stall: every STALL_PERIOD_S the job stalls STALL_S seconds at STALL_FACTOR x MFU
STALL_PERIOD_S = 60.0
STALL_S = 15.0
STALL_FACTOR = 0.05
NOISE = 0.03  # relative standard deviation of per-interval MFU
COUNTER_NOISE = 0.03  # relative noise of pipe-activity counters around their physics
DRAM_OVERHEAD = 1.10  # DRAM bytes / model bytes (activations, spills, non-model traffic)
# Of the non-tensor hardware FLOPs of a tensor-precision job, this share runs on the
# FP16 vector pipe, the rest on FP32 (softmax, norms, optimizer in fp32).
VECTOR_FP16_SHARE = 0.5
# The contract's idle test (a GPU-second with no report is a known zero below these).
IDLE_SM_UTIL = 0.05
IDLE_TENSOR_ACTIVE = 0.01


# --------------------------------------------------------------------------- randomness

_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finalizer: a well-spread 64-bit hash of ``x``."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _uniform(key: int, tick: int, stream: int) -> float:
    """Deterministic uniform in [0, 1) for (key, tick, stream)."""
    return _mix(_mix(key ^ (tick * 0x100000001B3)) ^ stream) / 2.0**64


def _normal(key: int, tick: int, stream: int) -> float:
    """Approximately standard normal, bounded to +-3 (Irwin-Hall of three uniforms)."""
    total = (_uniform(key, tick, stream) + _uniform(key, tick, stream + 1)
             + _uniform(key, tick, stream + 2))
    return (total - 1.5) * 2.0


def _stable(text: str, seed: int) -> int:
    return _mix(zlib.crc32(text.encode()) ^ (seed * 0x9E3779B1))


def _between(lo_hi: tuple[float, float], u: float) -> float:
    lo, hi = lo_hi
    return lo + (hi - lo) * u


def _uuid(prefix: str, key: int) -> str:
    h = f"{_mix(key):016x}{_mix(key + 1):016x}"
    return f"{prefix}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# --------------------------------------------------------------------------- layout

@dataclass
class SimWorkload:
    """One simulated job: its archetype, devices (uuids), nodes and target MFU."""

    name: str
    archetype: Archetype
    base_mfu: float
    devices: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    model: str = ""
    parallelism: Parallelism | None = None
    tenant: str = "default"

    @property
    def precision(self) -> str:
        return self.archetype.precision

    @property
    def target_mfu(self) -> float:
        """Steady-state MFU without noise, stalls or drift (comm penalty included)."""
        if self.archetype.name == "comm_bound_dp":
            return self.base_mfu / (1.0 + COMM_PENALTY * (len(self.nodes) - 1))
        return self.base_mfu


@dataclass
class SimDevice:
    """One GPU or MIG slice as its telemetry shows it."""

    node: str
    index: int
    uuid: str
    gpu_name: str
    hw: Hardware
    mig_profile: str | None = None
    mig_slot: int | None = None
    memory_bytes: int = 0
    workload: SimWorkload | None = None
    rank: int = 0
    key: int = 0
    # MIG: this slice's SMs / the whole GPU's, and its share of the parent GPU's energy
    # (its SMs / the SMs of all slices on that GPU); 1.0 for a whole GPU.
    sm_fraction: float = 1.0
    energy_share: float = 1.0
    peak_cache: dict[str, float] = field(default_factory=dict)
    _peak_bytes: float | None = None

    def peak(self, precision: str) -> float:
        """Dense peak FLOP/s of this device at ``precision``."""
        value = self.peak_cache.get(precision)
        if value is None:
            value = self.peak_cache[precision] = peaks.peak_flops_per_s(
                self.gpu_name, precision, mig_profile=self.mig_profile)  # type: ignore[arg-type]
        return value

    def peak_bytes_per_s(self) -> float:
        """Peak memory bandwidth of this device (bytes/s; MIG slices by memory slices)."""
        if self._peak_bytes is None:
            self._peak_bytes = peaks.peak_bytes_per_s(self.gpu_name, mig_profile=self.mig_profile)
        return self._peak_bytes

    @property
    def precision(self) -> str:
        w = self.workload
        return w.precision if w is not None and w.archetype.reports else DEFAULT_PRECISION


@dataclass(frozen=True)
class DeviceState:
    """A device over one interval: what the telemetry and the FLOP report carry, and the
    truth behind them.

    ``flops``/``bytes`` are what the report says (0 / None without one; a buggy reporter's
    ``flops`` are ``report_factor`` x the truth); ``model_flops``/``model_bytes`` are the
    true model FLOPs and bytes of the interval, ``hardware_flops`` what the pipes did."""

    mfu: float  # true model-FLOP MFU of the interval
    flops: float
    sm_util: float
    mem_util: float
    tensor_active: float | None
    mem_used_bytes: int
    sm_clock_mhz: float
    power_w: float | None
    throttle_reasons: int
    model_flops: float = 0.0
    hardware_flops: float = 0.0
    model_bytes: float = 0.0
    bytes: float | None = None
    energy_j: float = 0.0
    dram_active: float | None = None
    fp16_active: float | None = None
    fp32_active: float | None = None
    fp64_active: float | None = None
    source: str = "none"  # FLOP source by the contract: reported/engine/idle/counters/none


SOURCES = ("reported", "engine", "idle", "counters", "none")


@dataclass(frozen=True)
class Truth:
    """Exact numbers of one scope/key over ``[window_start, window_end)``.

    ``achieved_flops`` = model FLOPs the reports carry (what the pipeline sees; a buggy
    reporter's are inflated); ``true_flops`` = the model FLOPs actually done (reporting
    or not); ``hardware_flops`` = what the pipes did (recomputation, non-model work).
    ``peak_flops`` and ``gpu_seconds`` cover every device (MIG slices count one each);
    ``by_source`` splits ``seconds``/``peak_flops``/``achieved_flops``/``true_flops``/
    ``hardware_flops``/``true_bytes`` by the device-second's FLOP source (contract §8).
    Allocation fields count devices with a workload. Bytes are model bytes; ``peak_bytes``
    = peak bandwidth x seconds over every device, ``reported_peak_bytes`` over the
    device-seconds whose reports carry bytes."""

    scope: str
    key: str
    window_start: float
    window_end: float
    achieved_flops: float
    peak_flops: float
    gpus: int
    gpu_seconds: float
    allocated_gpus: int
    allocated_peak_flops: float
    allocated_gpu_seconds: float
    archetype: str | None = None
    precision: str | None = None
    tenant: str | None = None
    true_flops: float = 0.0
    hardware_flops: float = 0.0
    true_bytes: float = 0.0
    reported_bytes: float = 0.0
    peak_bytes: float = 0.0
    reported_peak_bytes: float = 0.0
    energy_j: float = 0.0
    by_source: dict[str, dict[str, float]] = field(default_factory=dict)

    def _src(self, *names: str, what: str = "seconds") -> float:
        return sum(self.by_source.get(n, {}).get(what, 0.0) for n in names)

    @property
    def flop_sources(self) -> dict[str, float]:
        """GPU-seconds per FLOP source (contract ``flop_sources``)."""
        return {n: self._src(n) for n in SOURCES}

    @property
    def coverage(self) -> float | None:
        s = self.gpu_seconds
        return self._src("reported", "engine", "idle") / s if s > 0 else None

    @property
    def mfu(self) -> float | None:
        """What the pipeline's ``mfu`` should be: reported FLOPs / peak over the
        GPU-seconds with known model FLOPs (reported, engine, idle); None without any."""
        p = self._src("reported", "engine", "idle", what="peak_flops")
        return self.achieved_flops / p if p > 0 else None

    @property
    def true_mfu(self) -> float | None:
        """True model FLOPs / peak over every GPU-second (what nobody can measure)."""
        return self.true_flops / self.peak_flops if self.peak_flops > 0 else None

    @property
    def true_mfu_estimable(self) -> float | None:
        """True model FLOPs / peak over the GPU-seconds ``mfu_estimated`` covers (known
        + counters): the target an exact estimator would hit."""
        names = ("reported", "engine", "idle", "counters")
        p = self._src(*names, what="peak_flops")
        return self._src(*names, what="true_flops") / p if p > 0 else None

    @property
    def hardware_mfu_estimable(self) -> float | None:
        """Known reported FLOPs + the *hardware* FLOPs of ``counters`` GPU-seconds over
        the same peak: what a counter estimate exact on pipe activity gives (it cannot
        tell recomputation and non-model work from model FLOPs)."""
        names = ("reported", "engine", "idle", "counters")
        p = self._src(*names, what="peak_flops")
        f = self.achieved_flops + self._src("counters", what="hardware_flops")
        return f / p if p > 0 else None

    @property
    def mfu_allocated(self) -> float | None:
        p = self.allocated_peak_flops
        return self.achieved_flops / p if p > 0 else None

    @property
    def allocation(self) -> float | None:
        s = self.gpu_seconds
        return self.allocated_gpu_seconds / s if s > 0 else None

    @property
    def mbu(self) -> float | None:
        """Reported model bytes / peak bytes of the reporting device-seconds (contract)."""
        p = self.reported_peak_bytes
        return self.reported_bytes / p if p > 0 else None

    @property
    def true_mbu(self) -> float | None:
        return self.true_bytes / self.peak_bytes if self.peak_bytes > 0 else None

    @property
    def true_flops_per_j(self) -> float | None:
        return self.true_flops / self.energy_j if self.energy_j > 0 else None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for name in ("mfu", "true_mfu", "true_mfu_estimable", "hardware_mfu_estimable",
                     "mfu_allocated", "allocation", "coverage", "flop_sources", "mbu",
                     "true_mbu", "true_flops_per_j"):
            out[name] = getattr(self, name)
        return out


class EventSink(Protocol):
    """What the simulator publishes through (the agent's Publisher fits)."""

    def publish(self, topic: str, events: Sequence[Any], *, key: str) -> None: ...

    def poll(self, timeout_s: float = 0.0) -> None: ...


_GB = re.compile(r"(\d+)gb$")


class FleetSimulator:
    """A deterministic simulated fleet.

    - ``nodes`` x ``gpus_per_node`` GPUs; node ``i`` gets ``gpu_models[i % len]``
      (catalog names such as ``"NVIDIA H100 80GB HBM3"``, ``"NVIDIA A100-SXM4-80GB"``,
      ``"NVIDIA H200"``, ``"NVIDIA L40S"``).
    - ``seed``: same seed, same fleet, same numbers.
    - ``interval_s``: seconds per sample; ``start_ts``: epoch seconds the run starts at
      (default: now, rounded down to the interval).
    - ``drift_workload``/``drift_at_s``/``drift_fraction``: from ``start_ts + drift_at_s``
      on, that workload's MFU is ``(1 - drift_fraction)`` x what it was (default workload:
      the first LLM training job).
    - ``mig``: partition one node of MIG-capable GPUs (3g + three 1g slices per GPU)
      when the fleet has at least 3 nodes.
    """

    def __init__(
        self,
        nodes: int = 4,
        gpus_per_node: int = 8,
        gpu_models: Sequence[str] = DEFAULT_MODELS,
        *,
        seed: int = 0,
        interval_s: float = 1.0,
        start_ts: float | None = None,
        drift_workload: str | None = None,
        drift_at_s: float | None = None,
        drift_fraction: float = 0.3,
        node_prefix: str = "sim-n",
        mig: bool = True,
    ) -> None:
        if nodes < 1 or gpus_per_node < 1:
            raise ValueError("nodes and gpus_per_node must be >= 1")
        if not gpu_models:
            raise ValueError("gpu_models must name at least one GPU model")
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        if not 0.0 <= drift_fraction <= 1.0:
            raise ValueError("drift_fraction must be within 0..1")
        self.seed = seed
        self.interval_s = float(interval_s)
        if start_ts is None:
            start_ts = math.floor(time.time() / interval_s) * interval_s
        self.start_ts = float(start_ts)
        self.models = [str(m) for m in gpu_models]
        self._hw = {m: hardware(m) for m in self.models}  # fails early on unknown names
        for m in self.models:
            peaks.peak_flops_per_s(m, DEFAULT_PRECISION)  # type: ignore[arg-type]
        self.node_names = [f"{node_prefix}{i:03d}" for i in range(nodes)]
        self.workloads: dict[str, SimWorkload] = {}
        self.devices: list[SimDevice] = []
        self._layout(nodes, gpus_per_node, mig)
        if drift_at_s is not None and drift_workload is None:
            drift_workload = next((w.name for w in self.workloads.values()
                                   if w.archetype.name == "llm_train"), None)
        if drift_workload is not None and drift_workload not in self.workloads:
            raise ValueError(f"unknown drift workload {drift_workload!r}; "
                             f"workloads: {', '.join(sorted(self.workloads))}")
        self.drift_workload = drift_workload if drift_at_s is not None else None
        self.drift_at_s = drift_at_s
        self.drift_fraction = drift_fraction
        self.by_node: dict[str, list[SimDevice]] = {n: [] for n in self.node_names}
        for dev in self.devices:
            self.by_node[dev.node].append(dev)

    # -- layout ------------------------------------------------------------------------
    def _new_workload(self, prefix: str, archetype: str) -> SimWorkload:
        k = sum(1 for w in self.workloads if w.rsplit("-", 1)[0] == prefix)
        name = f"{prefix}-{k}"
        arch = ARCHETYPES[archetype]
        u = _uniform(_stable(name, self.seed), 0, 7)
        # keep a margin inside the range so noise cannot push a window outside it
        lo, hi = arch.mfu
        base = _between((lo + (hi - lo) * 0.15, hi - (hi - lo) * 0.15), u)
        w = SimWorkload(name, arch, base, model=_MODEL_NAMES.get(archetype, ""))
        same = sum(1 for x in self.workloads.values() if x.archetype.name == archetype)
        w.tenant = arch.tenants[same % len(arch.tenants)]
        self.workloads[name] = w
        return w

    def _assign(self, dev: SimDevice, w: SimWorkload | None) -> None:
        dev.workload = w
        if w is not None:
            dev.rank = len(w.devices)
            w.devices.append(dev.uuid)
            if dev.node not in w.nodes:
                w.nodes.append(dev.node)

    def _gpu(self, node: str, index: int, model: str) -> SimDevice:
        key = _stable(f"{node}/{index}", self.seed)
        hw = self._hw[model]
        return SimDevice(node, index, _uuid("GPU", key), model, hw,
                         memory_bytes=hw.memory_bytes, key=key)

    def _layout(self, n_nodes: int, g: int, mig: bool) -> None:
        nodes = list(self.node_names)
        model_of = {n: self.models[i % len(self.models)] for i, n in enumerate(nodes)}
        free = list(nodes)

        def take_nodes(count: int) -> list[str]:
            got = free[:count]
            del free[:count]
            return got

        def whole_node_job(prefix: str, archetype: str, count: int) -> None:
            w = self._new_workload(prefix, archetype)
            for node in take_nodes(count):
                for i in range(g):
                    dev = self._gpu(node, i, model_of[node])
                    self.devices.append(dev)
                    self._assign(dev, w)
            w.parallelism = Parallelism(tp=g, dp=len(w.nodes))

        def split_node(node: str, jobs: list[tuple[str, str]]) -> None:
            """Jobs side by side on one node, in equal blocks of GPUs (the last takes the
            rest); a job with no GPU left is skipped."""
            size = max(1, g // len(jobs))
            for n, (prefix, archetype) in enumerate(jobs):
                lo, hi = n * size, (g if n == len(jobs) - 1 else (n + 1) * size)
                if lo >= g:
                    break
                w = self._new_workload(prefix, archetype)
                for i in range(lo, hi):
                    dev = self._gpu(node, i, model_of[node])
                    self.devices.append(dev)
                    self._assign(dev, w)
                w.parallelism = Parallelism(tp=hi - lo)

        def gpm(node: str) -> bool:
            return self._hw[model_of[node]].gpm

        # Whole-node jobs first; at least one node stays for the per-GPU mix.
        if n_nodes >= 2:
            whole_node_job("llm-train", "llm_train", max(1, n_nodes // 4))
        wide = max(2, n_nodes // 5)
        if len(free) - 1 >= wide:
            whole_node_job("dp-wide", "comm_bound_dp", wide)
        if mig and len(free) >= 2:
            # A MIG-capable node, but not the last free one with pipe counters: the buggy
            # reporter below needs them to be caught (6 nodes H100/A100: MIG on the A100).
            candidates = [n for n in free[1:] if peaks.lookup(model_of[n]).mig_profiles]
            mig_node = next((n for n in candidates if any(gpm(m) for m in free if m != n)),
                            candidates[0] if candidates else None)
            if mig_node is not None:
                free.remove(mig_node)
                self._mig_node(mig_node, model_of[mig_node], g)
        # The buggy reporter next to a tenant without the SDK, on a node with pipe
        # counters where there is one (that is where the pipeline can catch both); then
        # a silent job on a node without counters (its GPU-seconds stay unknown).
        if len(free) >= 2:
            node = next((n for n in free if gpm(n)), free[0])
            free.remove(node)
            split_node(node, [("moe-train", "overcount_train"), ("dark-train", "silent_train")])
        if len(free) >= 2 and any(gpm(n) for n in self.node_names):
            node = next((n for n in free if not gpm(n)), None)
            if node is not None:
                free.remove(node)
                split_node(node, [("dark-train", "silent_train")])
        # A large fleet: one more whole node of silent training where counters exist,
        # so that the counter estimate carries a visible share of the fleet.
        if len(free) >= 4:
            node = next((n for n in free if gpm(n)), None)
            if node is not None:
                free.remove(node)
                split_node(node, [("dark-train", "silent_train")])
        # Per-GPU mix on the rest, in groups that stay within a node; one 8-GPU node
        # holds one of each. dp-narrow (same archetype as dp-wide, one node) comes once.
        mix: list[tuple[str | None, str | None, int]] = [
            ("dp-narrow", "comm_bound_dp", 2), ("infer", "underbatched_inference", 1),
            ("stall", "input_stall", 1), ("idle", "idle", 1), ("fp32", "fp32_train", 1),
            ("decode", "decode", 1), ("finetune", "silent_finetune", 1), (None, None, 1)]
        if n_nodes == 1:  # a lone node still gets a training job
            mix.insert(0, ("llm-train", "llm_train", max(1, g // 2)))
        k = 0
        for node in free:
            i = 0
            while i < g:
                prefix, archetype, size = mix[k % len(mix)]
                k += 1
                if prefix in ("dp-narrow", "llm-train"):
                    mix.remove((prefix, archetype, size))
                    k -= 1
                w = self._new_workload(prefix, archetype) if prefix and archetype else None
                for j in range(i, min(i + size, g)):
                    dev = self._gpu(node, j, model_of[node])
                    self.devices.append(dev)
                    self._assign(dev, w)
                i += size
        self.devices.sort(key=lambda d: (d.node, d.index, d.mig_slot or 0))

    def _mig_node(self, node: str, model: str, g: int) -> None:
        spec = peaks.lookup(model)
        names = sorted(spec.mig_profiles)
        big = next(p for p in names if p.startswith("3g."))
        small = min((p for p in names if p.startswith("1g.")),
                    key=lambda p: int(_GB.search(p).group(1)))  # type: ignore[union-attr]
        layout = (big, small, small, small)
        fractions = [peaks.mig_sm_fraction(model, p) for p in layout]
        for i in range(g):
            parent = self._gpu(node, i, model)
            for slot, profile in enumerate(layout):
                key = _stable(f"{node}/{i}/mig{slot}", self.seed)
                gb = int(_GB.search(profile).group(1))  # type: ignore[union-attr]
                dev = SimDevice(node, i, _uuid("MIG", key), model, parent.hw, mig_profile=profile,
                                mig_slot=slot, memory_bytes=int(gb * 0.98 * (1 << 30)), key=key,
                                sm_fraction=fractions[slot],
                                energy_share=fractions[slot] / sum(fractions))
                self.devices.append(dev)
                # the last 1g slice of each GPU stays unallocated
                self._assign(dev, self._new_workload("mig-infer", "mig_inference")
                             if slot < 3 else None)

    # -- the numbers -------------------------------------------------------------------
    def tick_ts(self, tick: int) -> float:
        """End (epoch s) of tick ``tick``; the tick covers ``[ts - interval_s, ts)``."""
        return self.start_ts + (tick + 1) * self.interval_s

    def mfu_target(self, w: SimWorkload, interval_start: float) -> float:
        """Noise-free MFU of ``w`` in the interval starting at ``interval_start``."""
        m = w.target_mfu
        if w.archetype.name == "input_stall":
            phase_offset = (_stable(w.name, self.seed) % 1000) / 1000.0 * STALL_PERIOD_S
            if (interval_start - self.start_ts + phase_offset) % STALL_PERIOD_S < STALL_S:
                m *= STALL_FACTOR
        if (w.name == self.drift_workload and self.drift_at_s is not None
                and interval_start >= self.start_ts + self.drift_at_s):
            m *= 1.0 - self.drift_fraction
        return m

    def state(self, dev: SimDevice, tick: int) -> DeviceState:
        """Exactly what ``dev`` shows and reports in tick ``tick``, and the truth."""
        w = dev.workload
        arch = w.archetype if w is not None else ARCHETYPES["idle"]
        key = dev.key
        dt = self.interval_s
        start = self.start_ts + tick * dt
        target = self.mfu_target(w, start) if w is not None else 0.0
        mfu = min(max(target * (1.0 + NOISE * _normal(key, tick, 1)), 0.0), 0.95)
        reports = w is not None and arch.reports
        model_flops = dev.peak(arch.precision) * mfu * dt if w is not None else 0.0
        flops = model_flops * arch.report_factor if reports else 0.0
        hardware_flops = model_flops * arch.overhead
        busy = 1.0 if target == 0 or not reports else min(mfu / max(w.target_mfu, 1e-9), 1.0)  # type: ignore[union-attr]
        u = _uniform(key, tick, 10)
        sm = _between(arch.sm_util, u) * (0.1 + 0.9 * busy) if w is not None else 0.0
        mem_util = _between(arch.mem_util, _uniform(key, tick, 11)) * busy if w is not None else 0.0
        mem_frac = _between(arch.mem_used, _uniform(key, 0, 13)) if w is not None else 0.0
        hw = dev.hw
        idle = sm < 0.05
        frac = _between(arch.power, _uniform(key, tick, 14)) if w is not None and not idle else 0.0
        activity = frac * (0.3 + 0.7 * busy)
        # Whole GPU: board power. A MIG slice has no power reading of its own (NVML); its
        # energy is its share of the parent GPU's (idle power by SM share, dynamic power
        # by its SMs' activity), so the slices of one GPU add up to the GPU's energy.
        if dev.mig_slot is None:
            power: float | None = hw.idle_w + (hw.tdp_w - hw.idle_w) * activity
            energy_j = power * dt  # type: ignore[operator]
        else:
            power = None
            energy_j = (hw.idle_w * dev.energy_share
                        + (hw.tdp_w - hw.idle_w) * dev.sm_fraction * activity) * dt
        # Under load the SM clock sags below max (power capping), more with more power.
        clock = hw.max_sm_clock_mhz
        if idle:
            clock = 345.0
        elif arch.clock_drop:
            clock *= 1.0 - arch.clock_drop * _uniform(key, tick, 15)
        model_bytes = dev.peak_bytes_per_s() * _between(arch.mbu, _uniform(key, tick, 16)) * dt \
            if w is not None else 0.0
        tensor = fp16 = fp32 = fp64 = dram = None
        if hw.gpm:
            # Physics: pipe activity = FLOP/s the pipe did / what it can do at this clock;
            # DRAM activity = bytes/s / peak bandwidth. A pipe's FLOPs per clock are fixed,
            # so at clock f it can do dense peak x f / (the clock that peak assumes: the
            # catalog's tensor clock for the tensor pipe, boost for the vector pipes),
            # capped at the peak (the datasheet peak is the ceiling). (It was f / max
            # clock: on an H100, whose tensor peak assumes 1830 MHz, not its 1980 MHz
            # maximum, that under-stated the pipe by up to 7.6 % below 1830 MHz.)
            t_ref, v_ref = pipe_reference_clocks(dev.gpu_name)
            ratio = min(1.0, clock / (t_ref or hw.max_sm_clock_mhz))
            v_ratio = min(1.0, clock / (v_ref or hw.max_sm_clock_mhz))
            tensor_flops = hardware_flops * arch.tensor_share
            vector_flops = hardware_flops - tensor_flops
            tensor_peak = dev.peak(arch.precision) if arch.tensor_share > 0 else 1.0
            fp16_flops = vector_flops * VECTOR_FP16_SHARE if arch.tensor_share > 0 else 0.0
            fp32_flops = vector_flops - fp16_flops

            def active(done: float, peak_flops_per_s: float, r: float, stream: int) -> float:
                if done <= 0:
                    return 0.0
                x = done / (peak_flops_per_s * r * dt)
                return min(max(x * (1.0 + COUNTER_NOISE * _normal(key, tick, stream)), 0.0), 1.0)

            tensor = active(tensor_flops, tensor_peak, ratio, 20)
            # vector (non-tensor) FP16 runs at twice the FP32 rate on Hopper
            fp16 = active(fp16_flops, 2.0 * dev.peak("fp32"), v_ratio, 23)
            fp32 = active(fp32_flops, dev.peak("fp32"), v_ratio, 26)
            fp64 = 0.0
            dram = min(max(model_bytes * DRAM_OVERHEAD / (dev.peak_bytes_per_s() * dt)
                           * (1.0 + COUNTER_NOISE * _normal(key, tick, 29)), 0.0), 1.0)
        sm_util = min(sm, 1.0)
        if reports:
            source = "engine" if arch.source == "engine" else "reported"
        elif sm_util <= IDLE_SM_UTIL and (tensor is None or tensor <= IDLE_TENSOR_ACTIVE):
            source = "idle"
        elif tensor is not None:
            source = "counters"
        else:
            source = "none"
        return DeviceState(
            mfu=mfu,
            flops=flops,
            sm_util=sm_util,
            mem_util=min(mem_util, 1.0),
            tensor_active=tensor,
            mem_used_bytes=int(dev.memory_bytes * mem_frac) + (512 << 20),
            sm_clock_mhz=clock,
            power_w=power,
            throttle_reasons=1 if idle else 0,  # nvmlClocksEventReasonGpuIdle
            model_flops=model_flops,
            hardware_flops=hardware_flops,
            model_bytes=model_bytes,
            bytes=model_bytes if reports and arch.report_bytes else None,
            energy_j=energy_j,
            dram_active=dram,
            fp16_active=fp16,
            fp32_active=fp32,
            fp64_active=fp64,
            source=source,
        )

    def events(self, tick: int) -> dict[str, tuple[list[GpuSample], list[FlopReport]]]:
        """Per node: the samples and FLOP reports of tick ``tick``."""
        ts = self.tick_ts(tick)
        start = ts - self.interval_s
        ms = int(ts * 1000)
        out: dict[str, tuple[list[GpuSample], list[FlopReport]]] = {}
        for node, devices in self.by_node.items():
            samples: list[GpuSample] = []
            reports: list[FlopReport] = []
            for dev in devices:
                st = self.state(dev, tick)
                w = dev.workload
                # model_construct: values are in range by construction (tests re-validate).
                samples.append(GpuSample.model_construct(
                    event_id=sample_event_id(node, dev.index, dev.mig_slot, ts), node=node,
                    gpu_uuid=dev.uuid, gpu_index=dev.index, gpu_name=dev.gpu_name,
                    mig_profile=dev.mig_profile, ts=ts, interval_s=self.interval_s,
                    sm_util=st.sm_util, mem_util=st.mem_util, tensor_active=st.tensor_active,
                    sm_clock_mhz=st.sm_clock_mhz, max_sm_clock_mhz=dev.hw.max_sm_clock_mhz,
                    power_w=st.power_w, mem_used_bytes=st.mem_used_bytes,
                    mem_total_bytes=dev.memory_bytes, throttle_reasons=st.throttle_reasons,
                    workloads=[w.name] if w is not None else [],
                    energy_j=st.energy_j, energy_source="counter", dram_active=st.dram_active,
                    fp16_active=st.fp16_active, fp32_active=st.fp32_active,
                    fp64_active=st.fp64_active,
                    tenants={w.name: w.tenant} if w is not None else None))
                if w is not None and w.archetype.reports:
                    arch = w.archetype
                    per_token = (6.0 if arch.phase == "train" else 2.0) * arch.params
                    engine = arch.source == "engine"
                    # tokens count what was really done: a double-counting reporter
                    # inflates its FLOPs, not its token counter
                    reports.append(FlopReport.model_construct(
                        event_id=f"{w.name}-{'e' if engine else 'r'}{dev.rank}-{ms}",
                        workload=w.name, rank=dev.rank, node=node, gpu_uuid=dev.uuid,
                        start=start, end=ts, flops=st.flops, precision=arch.precision,
                        tokens=st.model_flops / per_token,
                        # an inference server knows neither an expected MFU nor a layout
                        expected_mfu=None if engine else round(
                            min(w.target_mfu * arch.report_factor, 1.0), 4),
                        model=w.model or None, phase=arch.phase,
                        parallelism=None if engine else w.parallelism,
                        bytes=st.bytes, source=arch.source))
            out[node] = (samples, reports)
        return out

    # -- publishing --------------------------------------------------------------------
    def ticks_for(self, duration_s: float) -> range:
        return range(round(duration_s / self.interval_s))

    def run(self, sink: EventSink, *, duration_s: float | None, realtime: bool = True,
            stop: threading.Event | None = None, telemetry_topic: str = TELEMETRY,
            flops_topic: str = FLOPS, progress: Any = None) -> int:
        """Publish ticks through ``sink`` (e.g. a Publisher); returns ticks published.

        ``realtime``: publish tick k when its interval ends on the wall clock (from
        ``start_ts``; a start in the past catches up at once). Otherwise no sleeping.
        ``duration_s`` None runs until ``stop`` is set."""
        tick = 0
        last_tick = None if duration_s is None else len(self.ticks_for(duration_s))
        while (last_tick is None or tick < last_tick) and not (stop and stop.is_set()):
            ts = self.tick_ts(tick)
            if realtime:
                delay = ts - time.time()
                if delay > 0:
                    sink.poll(min(delay, 0.25))
                    continue
            for node, (samples, reports) in self.events(tick).items():
                sink.publish(telemetry_topic, samples, key=node)
                sink.publish(flops_topic, reports, key=node)
            sink.poll(0.0)
            tick += 1
            if progress is not None:
                progress(tick, last_tick)
        return tick

    # -- ground truth ------------------------------------------------------------------
    def ground_truth(self, window_start: float, window_end: float
                     ) -> dict[str, dict[str, Truth]]:
        """Exact numbers per scope (``workload``, ``node``, ``fleet``) and key over
        ``[window_start, window_end)`` (epoch seconds), from the run's own numbers.

        Only ticks inside the simulated run (from ``start_ts``) count; call with a window
        inside the run's duration. Interval totals (FLOPs, bytes, energy) that cross a
        window edge split pro rata."""
        acc: dict[tuple[str, str], dict[str, Any]] = {}
        zero = dict.fromkeys(("seconds", "peak_flops", "achieved_flops", "true_flops",
                              "hardware_flops", "true_bytes"), 0.0)

        def add(scope: str, key: str, dev: SimDevice, st: DeviceState, fraction: float,
                peak: float, seconds: float, allocated: bool) -> None:
            a = acc.get((scope, key))
            if a is None:
                a = acc[(scope, key)] = {
                    "flops": 0.0, "peak": 0.0, "devices": set(), "seconds": 0.0,
                    "alloc": set(), "alloc_peak": 0.0, "alloc_seconds": 0.0, "true": 0.0,
                    "hw": 0.0, "bytes": 0.0, "rbytes": 0.0, "pbytes": 0.0, "rpbytes": 0.0,
                    "energy": 0.0, "src": {n: dict(zero) for n in SOURCES}}
            a["flops"] += st.flops * fraction
            a["peak"] += peak
            a["seconds"] += seconds
            a["devices"].add(dev.uuid)
            a["true"] += st.model_flops * fraction
            a["hw"] += st.hardware_flops * fraction
            a["bytes"] += st.model_bytes * fraction
            pbytes = dev.peak_bytes_per_s() * seconds
            a["pbytes"] += pbytes
            if st.bytes is not None:
                a["rbytes"] += st.bytes * fraction
                a["rpbytes"] += pbytes
            a["energy"] += st.energy_j * fraction
            src = a["src"][st.source]
            src["seconds"] += seconds
            src["peak_flops"] += peak
            src["achieved_flops"] += st.flops * fraction
            src["true_flops"] += st.model_flops * fraction
            src["hardware_flops"] += st.hardware_flops * fraction
            src["true_bytes"] += st.model_bytes * fraction
            if allocated:
                a["alloc"].add(dev.uuid)
                a["alloc_peak"] += peak
                a["alloc_seconds"] += seconds

        dt = self.interval_s
        first = max(0, math.floor((window_start - self.start_ts) / dt))
        last = math.ceil((window_end - self.start_ts) / dt)
        for tick in range(first, last):
            t0 = self.start_ts + tick * dt
            overlap = min(t0 + dt, window_end) - max(t0, window_start)
            if overlap <= 0:
                continue
            fraction = overlap / dt
            for dev in self.devices:
                st = self.state(dev, tick)
                peak = dev.peak(dev.precision) * overlap
                w = dev.workload
                if w is not None:
                    add("workload", w.name, dev, st, fraction, peak, overlap, True)
                add("node", dev.node, dev, st, fraction, peak, overlap, w is not None)
                add("fleet", "default", dev, st, fraction, peak, overlap, w is not None)
        out: dict[str, dict[str, Truth]] = {"workload": {}, "node": {}, "fleet": {}}
        for (scope, key), a in acc.items():
            w = self.workloads.get(key) if scope == "workload" else None
            out[scope][key] = Truth(
                scope, key, window_start, window_end, a["flops"], a["peak"], len(a["devices"]),
                a["seconds"], len(a["alloc"]), a["alloc_peak"], a["alloc_seconds"],
                archetype=w.archetype.name if w else None, precision=w.precision if w else None,
                tenant=w.tenant if w else None, true_flops=a["true"], hardware_flops=a["hw"],
                true_bytes=a["bytes"], reported_bytes=a["rbytes"], peak_bytes=a["pbytes"],
                reported_peak_bytes=a["rpbytes"], energy_j=a["energy"], by_source=a["src"])
        return out

    def truth_windows(self, duration_s: float, window_s: float = 10.0) -> Iterator[Truth]:
        """Ground truth of every tumbling window of ``window_s`` inside the run."""
        end = self.start_ts + duration_s
        ws = math.ceil(self.start_ts / window_s) * window_s
        while ws + window_s <= end + 1e-9:
            for scope in self.ground_truth(ws, ws + window_s).values():
                yield from scope.values()
            ws += window_s

    def describe(self) -> list[dict[str, Any]]:
        """The workloads: archetype, devices, nodes, target MFU, hint."""
        return [{"workload": w.name, "archetype": w.archetype.name, "precision": w.precision,
                 "tenant": w.tenant, "gpus": len(w.devices), "nodes": list(w.nodes),
                 "gpu_models": sorted({self.by_node[n][0].gpu_name for n in w.nodes}),
                 "target_mfu": round(w.target_mfu, 4), "mfu_range": list(w.archetype.mfu),
                 "reports": (w.archetype.source if w.archetype.reports else "none"),
                 "report_factor": w.archetype.report_factor,
                 "overhead": w.archetype.overhead, "mbu_range": list(w.archetype.mbu),
                 "hint": w.archetype.hint} for w in self.workloads.values()]


_MODEL_NAMES = {"llm_train": "llama-3-70b", "comm_bound_dp": "llama-2-7b",
                "input_stall": "llama-2-13b", "underbatched_inference": "llama-3-8b",
                "mig_inference": "tinyllama-1.1b", "fp32_train": "gpt2-xl",
                "decode": "llama-3-8b", "overcount_train": "moe-26b-a13b"}
