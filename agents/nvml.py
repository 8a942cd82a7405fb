"""NVML collector: one ``gpu_sample/1`` per GPU, or per MIG device, per interval.

The collector is an *input* in the Telegraf sense: :meth:`NvmlCollector.collect` reads
the GPUs and returns events; batching, Kafka and buffering belong to the publisher. It
takes an NVML-like object (default: the ``pynvml`` module, imported on first use), so
tests pass :class:`mfu_testing.fake_nvml.FakeNvml` built from recorded values.

What each field is read from (per interval ``[ts - interval_s, ts)``, stamped at ``ts``):

- ``sm_util``/``mem_util``: mean of the driver's utilization samples newer than the
  previous read (``nvmlDeviceGetSamples``), i.e. averaged over the interval; falls back
  to ``nvmlDeviceGetUtilizationRates`` (the driver's last period), then to GPM
  ``SM_UTIL``/``DRAM_BW_UTIL`` (the only source on MIG devices, Hopper+).
- Pipe counters, from GPM between the sample taken at the previous tick and this one
  (``nvmlGpmSampleGet``, or ``nvmlGpmMigSampleGet`` per GPU instance on a MIG slice, +
  ``nvmlGpmMetricsGet``): ``tensor_active`` = ``ANY_TENSOR_UTIL`` (5), ``dram_active`` =
  ``DRAM_BW_UTIL`` (10), ``fp16_active``/``fp32_active``/``fp64_active`` =
  ``FP16_UTIL``/``FP32_UTIL``/``FP64_UTIL`` (13/12/11, non-tensor pipes), percent / 100.
  Before Hopper (A100, L40S...: ``nvmlGpmQueryDeviceSupport`` says no) a whole GPU gets
  them from DCGM's profiling fields where a ``pipe_counters`` source is given and has
  values (:mod:`agents.dcgm`); else, and on pre-Hopper MIG slices, they are null, as is
  a metric the driver does not return. GPM errors are counted as field ``tensor_active``;
  samples with counters as ``("pipe_counters", "gpm" | "dcgm")``.
- ``sm_clock_mhz``: current SM clock. ``max_sm_clock_mhz``: ``nvmlDeviceGetMaxClockInfo``,
  lowered to the applications clock where an operator set one (it differs from the
  default applications clock): that clock is then the ceiling the GPU runs at.
- ``energy_j``/``energy_source``/``power_w``: the step of the total-energy counter (mJ
  since driver load, Volta+) over the interval, ``"counter"``, with ``power_w`` its mean;
  else instantaneous power x ``interval_s``, ``"power"`` (see :meth:`NvmlCollector._energy`
  for when). Null on MIG devices (power and energy are per board).
- ``throttle_reasons``: ``nvmlDeviceGetCurrentClocksEventReasons`` bitmask (older drivers:
  ``...ThrottleReasons``).
- ``workloads``: from ``nvmlDeviceGetComputeRunningProcesses`` pids via the attributor;
  ``tenants`` (``{workload: tenant}``, null when no owner is known) from its ``tenants``.

MIG: when MIG mode is on, each MIG device is a sample (``gpu_uuid`` = its ``MIG-...`` UUID,
``gpu_index``/``gpu_name`` = its parent's, ``mig_profile`` parsed from its name, e.g.
``1g.10gb``) and the parent itself is not. Clocks and throttle reasons are the parent's.

Errors: an NVML error on one field makes that field null and is counted in
``stats[("nvml_errors", field, error)]`` (a field NVML calls *not supported* is counted
once and then not asked again). ``sm_util``/``mem_util`` are null where no source has
them (A100 MIG slices) and counted as ``("unavailable", field)``: a made-up 0.0 would
read as an idle GPU. A GPU that is lost (``GPU_IS_LOST``, ``RESET_REQUIRED``: Xid
79, resets) is dropped from the sample set and counted; NVML is re-initialized and the
GPUs re-discovered every ``rediscover_s`` until it is back.

Event ids: ``{node}-{gpu_index}-{ts_ms}`` for a GPU and ``{node}-{gpu_index}m{slot}-{ts_ms}``
for MIG slot ``slot``, ``ts_ms = int(ts * 1000)``. The agent stamps strictly increasing
``ts`` (see :mod:`agents.agent`), so ids are unique and the same sample resent from the
spool keeps its id.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mfu.events import MAX_INTERVAL_S, GpuSample

log = logging.getLogger(__name__)

# NVML return codes (stable across driver versions; see nvml.h).
_NOT_SUPPORTED = 3
_NOT_FOUND = 6
_FUNCTION_NOT_FOUND = 13
_LOST = frozenset({15, 16})  # GPU_IS_LOST, RESET_REQUIRED
_REINIT = frozenset({1, 9, 18})  # UNINITIALIZED, DRIVER_NOT_LOADED, LIB_RM_VERSION_MISMATCH
_ERROR_NAMES = {
    1: "uninitialized", 2: "invalid_argument", 3: "not_supported", 4: "no_permission",
    6: "not_found", 9: "driver_not_loaded", 10: "timeout", 12: "library_not_found",
    13: "function_not_found", 15: "gpu_is_lost", 16: "reset_required", 21: "no_data",
    999: "unknown",
}

_GPU_SAMPLES = 1  # NVML_GPU_UTILIZATION_SAMPLES
_MEM_SAMPLES = 2  # NVML_MEMORY_UTILIZATION_SAMPLES
_CLOCK_SM = 1
_MIG_ENABLE = 1
# GPM metric ids (nvmlGpmMetricId_t, nvidia-ml-py 13.x ``NVML_GPM_METRIC_*``), percent.
_GPM_SM_UTIL = 2  # SM_UTIL: share of SMs busy
_GPM_TENSOR = 5  # ANY_TENSOR_UTIL: SMs doing any tensor (HMMA/IMMA/DMMA) work
_GPM_DRAM_BW = 10  # DRAM_BW_UTIL: DRAM bandwidth used vs the theoretical peak
_GPM_FP64 = 11  # FP64_UTIL: non-tensor FP64 math
_GPM_FP32 = 12  # FP32_UTIL: non-tensor FP32 math
_GPM_FP16 = 13  # FP16_UTIL: non-tensor FP16 math
_GPM_METRICS = (_GPM_TENSOR, _GPM_SM_UTIL, _GPM_DRAM_BW, _GPM_FP16, _GPM_FP32, _GPM_FP64)
# gpu_sample/1 pipe-counter field -> GPM metric id
PIPE_METRICS = {"tensor_active": _GPM_TENSOR, "dram_active": _GPM_DRAM_BW,
                "fp16_active": _GPM_FP16, "fp32_active": _GPM_FP32, "fp64_active": _GPM_FP64}
# nvmlValueType_t -> member of the nvmlValue_t union
_VALUE_MEMBER = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                 6: "usVal"}
_MIG_PROFILE = re.compile(r"\bMIG\s+(\S+)\s*$")


# nvmlDeviceGetTotalEnergyConsumption is an unsigned 64-bit count of millijoules.
ENERGY_COUNTER_MODULUS_MJ = 1 << 64
# No single GPU board draws more (B200 ~1.2 kW, GB200 per-GPU share below 2 kW): a
# counter step implying more is a reset or a glitch, not energy, and is not trusted.
MAX_PLAUSIBLE_POWER_W = 5000.0


def energy_delta_mj(prev_mj: int, now_mj: int, interval_s: float) -> int | None:
    """Millijoules used between two readings of the energy counter ``interval_s`` apart.

    A reading below the previous one is a wrap of the 64-bit counter when the wrapped
    step is plausible (at most :data:`MAX_PLAUSIBLE_POWER_W` over the interval), else a
    reset (driver reload, GPU reset): None, and the caller falls back to power x time.
    A forward step implying more than that power is not trusted either (None).
    """
    if interval_s <= 0:
        return None
    delta = now_mj - prev_mj
    if delta < 0:
        delta += ENERGY_COUNTER_MODULUS_MJ
    if delta / 1000.0 / interval_s > MAX_PLAUSIBLE_POWER_W:
        return None
    return delta


def sample_event_id(node: str, gpu_index: int, mig_slot: int | None, ts: float) -> str:
    """Event id of the sample of GPU ``gpu_index`` (MIG slot ``mig_slot``) ending at ``ts``."""
    device = str(gpu_index) if mig_slot is None else f"{gpu_index}m{mig_slot}"
    return f"{node}-{device}-{int(ts * 1000)}"


def mig_profile_from_name(name: str, parent_name: str | None = None) -> str | None:
    """``'NVIDIA A100-SXM4-80GB MIG 1g.10gb'`` -> ``'1g.10gb'`` (None if not a MIG name)."""
    m = _MIG_PROFILE.search(name)
    if m:
        return m.group(1)
    if parent_name and name.startswith(parent_name) and name != parent_name:
        return name[len(parent_name):].strip() or None
    return None


class DeviceInfo(NamedTuple):
    """What the agent knows about one sampled device (for FLOP-report GPU lookup)."""

    index: int
    uuid: str
    name: str
    mig_profile: str | None


class _GpuLost(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Reinit(Exception):
    pass


@dataclass(eq=False)
class _Gpm:
    prev: Any
    next: Any
    get: Any
    primed: bool = False


@dataclass(eq=False)
class _Device:
    info: DeviceInfo
    handle: Any
    root: Any  # handle clocks/power/throttle are read from (the parent for MIG)
    mig_slot: int | None = None
    gpu_instance_id: int | None = None
    max_sm_clock_mhz: float | None = None
    gpm: _Gpm | None = None
    util_seen_us: dict[int, int] = field(default_factory=dict)
    energy_mj: int | None = None
    energy_ts: float | None = None
    unsupported: set[str] = field(default_factory=set)


def _load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise RuntimeError(
            "pynvml (package nvidia-ml-py) is not installed; install it or run `mfu simulate`"
        ) from exc
    return pynvml


class NvmlCollector:
    """Reads every GPU and MIG device once per :meth:`collect`.

    ``node``: host name stamped on samples. ``nvml``: the NVML binding (default
    ``pynvml``). ``attributor``: object with ``workloads(pids) -> list[str]`` and
    ``prune(live_pids)`` (see :class:`agents.attribution.ProcAttributor`), or None.
    ``interval_s``: nominal sampling period in seconds (used for the first sample).
    ``rediscover_s``: seconds between GPU re-discoveries (MIG reconfiguration, lost GPUs).
    ``pipe_counters``: source of pipe counters for whole GPUs without GPM, an object with
    ``read() -> {gpu_uuid: {field: ratio}}`` (:class:`agents.dcgm.DcgmPipeCounters`), or
    None; read once per :meth:`collect`, only while such a GPU is sampled.
    """

    def __init__(
        self,
        node: str,
        *,
        nvml: Any = None,
        attributor: Any = None,
        interval_s: float = 1.0,
        rediscover_s: float = 60.0,
        lost_retry_s: float = 10.0,
        pipe_counters: Any = None,
    ) -> None:
        self.node = node
        self._nvml = nvml
        self.attributor = attributor
        self.interval_s = interval_s
        self.rediscover_s = rediscover_s
        self.lost_retry_s = lost_retry_s
        self.pipe_counters = pipe_counters
        self._external_pipes: dict[str, dict[str, float]] = {}
        self.stats: Counter[tuple[str, ...]] = Counter()
        self._devices: list[_Device] = []
        self._initialized = False
        self._last_ts: float | None = None
        self._discover_at = 0.0
        # pid -> device uuid from the latest collect (for FLOP reports without a GPU id)
        self.pid_to_uuid: dict[int, str] = {}
        self._pids: dict[int, str] = {}

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def nvml(self) -> Any:
        if self._nvml is None:
            self._nvml = _load_pynvml()
        return self._nvml

    def start(self, ts: float) -> None:
        """Initialize NVML and discover GPUs; ``ts`` (epoch s) starts the first interval.

        Raises the NVML error if NVML cannot be initialized at all (not a GPU host)."""
        self._init()
        self._discover(ts)
        self._last_ts = ts

    def close(self) -> None:
        for dev in self._devices:
            self._free_gpm(dev)
        self._devices = []
        if self._initialized:
            with contextlib.suppress(self.nvml.NVMLError):
                self.nvml.nvmlShutdown()
            self._initialized = False

    @property
    def devices(self) -> list[DeviceInfo]:
        """Devices sampled at the latest collect (lost ones excluded)."""
        return [d.info for d in self._devices]

    def _init(self) -> None:
        self.nvml.nvmlInit()
        self._initialized = True

    # -- discovery ---------------------------------------------------------------------
    def _discover(self, ts: float) -> None:
        """(Re)build the device list, keeping the state of devices already known."""
        nvml = self.nvml
        known = {d.info.uuid: d for d in self._devices}
        found: list[_Device] = []
        retry_soon = False
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                found.extend(self._discover_gpu(index, known, ts))
            except (nvml.NVMLError, _GpuLost) as exc:
                code = exc.code if isinstance(exc, _GpuLost) else exc.value
                if code in _REINIT:
                    raise
                retry_soon = True
                if code in _LOST:
                    self.stats[("gpu_lost_at_discovery",)] += 1
                    log.warning("gpu_lost index=%d error=%s", index, _error_name(code))
                    continue
                # another error on this GPU: keep sampling what we knew of it
                self.stats[("discovery_errors", _error_name(code))] += 1
                found.extend(d for d in self._devices if d.info.index == index)
        for dev in known.values():
            if all(dev is not d for d in found):
                self._free_gpm(dev)
        if [d.info for d in found] != [d.info for d in self._devices]:
            log.info("gpus_discovered node=%s devices=%s", self.node,
                     ",".join(f"{d.info.index}:{d.info.mig_profile or 'full'}" for d in found))
        self._devices = found
        # a lost GPU may come back after a reset: look again soon
        self._discover_at = ts + (self.lost_retry_s if retry_soon else self.rediscover_s)

    def _discover_gpu(self, index: int, known: dict[str, _Device], ts: float) -> list[_Device]:
        nvml = self.nvml
        h = nvml.nvmlDeviceGetHandleByIndex(index)
        name = str(nvml.nvmlDeviceGetName(h))
        uuid = str(nvml.nvmlDeviceGetUUID(h))
        gpm_ok = self._gpm_supported(h)
        try:
            mig_on = nvml.nvmlDeviceGetMigMode(h)[0] == _MIG_ENABLE
        except nvml.NVMLError as exc:
            if exc.value in _LOST:
                raise
            mig_on = False  # not MIG-capable
        if not mig_on:
            dev = known.get(uuid)
            if dev is None:
                dev = _Device(DeviceInfo(index, uuid, name, None), h, h)
                self._prepare(dev, gpm_ok, ts)
            dev.handle = dev.root = h
            return [dev]
        devices = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(h)):
            try:
                mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
            except nvml.NVMLError as exc:
                if exc.value in _LOST:
                    raise
                continue  # empty slot
            mig_uuid = str(nvml.nvmlDeviceGetUUID(mh))
            dev = known.get(mig_uuid)
            if dev is None:
                profile = mig_profile_from_name(str(nvml.nvmlDeviceGetName(mh)), name)
                dev = _Device(DeviceInfo(index, mig_uuid, name, profile), mh, h, mig_slot=slot)
                try:
                    dev.gpu_instance_id = int(nvml.nvmlDeviceGetGpuInstanceId(mh))
                except nvml.NVMLError:
                    gpm_ok = False  # GPM on MIG needs the GPU instance id
                self._prepare(dev, gpm_ok, ts)
            dev.handle, dev.root = mh, h
            devices.append(dev)
        return devices

    def _gpm_supported(self, h: Any) -> bool:
        nvml = self.nvml
        try:
            return bool(nvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice)
        except (nvml.NVMLError, AttributeError):
            return False

    def _prepare(self, dev: _Device, gpm_ok: bool, ts: float) -> None:
        """Read what does not change per interval and take the first GPM/util/energy
        marks (``ts``: now, epoch s)."""
        nvml = self.nvml
        max_clock = self._read(dev, "max_sm_clock_mhz", "nvmlDeviceGetMaxClockInfo",
                               dev.root, _CLOCK_SM)
        app = self._read(dev, "max_sm_clock_mhz", "nvmlDeviceGetApplicationsClock",
                         dev.root, _CLOCK_SM, count=False)
        default_app = self._read(dev, "max_sm_clock_mhz", "nvmlDeviceGetDefaultApplicationsClock",
                                 dev.root, _CLOCK_SM, count=False)
        if app and default_app and app != default_app:
            max_clock = min(max_clock, app) if max_clock else app
        dev.max_sm_clock_mhz = float(max_clock) if max_clock else None
        if gpm_ok:
            try:
                get = nvml.c_nvmlGpmMetricsGet_t()
                get.version = nvml.NVML_GPM_METRICS_GET_VERSION
                get.numMetrics = len(_GPM_METRICS)
                for i, metric in enumerate(_GPM_METRICS):
                    get.metrics[i].metricId = metric
                dev.gpm = _Gpm(nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc(), get)
            except (nvml.NVMLError, AttributeError) as exc:
                self._count_error("tensor_active", exc)
        self._gpm_mark(dev)
        for kind in (_GPU_SAMPLES, _MEM_SAMPLES):
            self._util_mean(dev, kind)  # sets the high-water mark; history is discarded
        if dev.mig_slot is None:
            # The first interval after start then has a counter reading at its start
            # and gets measured energy, not an estimate (see _energy).
            dev.energy_mj = self._read(dev, "power_w", "nvmlDeviceGetTotalEnergyConsumption",
                                       dev.root)
            dev.energy_ts = ts

    def _free_gpm(self, dev: _Device) -> None:
        if dev.gpm is not None:
            for sample in (dev.gpm.prev, dev.gpm.next):
                with contextlib.suppress(self.nvml.NVMLError):
                    self.nvml.nvmlGpmSampleFree(sample)
            dev.gpm = None

    # -- reading -----------------------------------------------------------------------
    def _count_error(self, field_name: str, exc: Any) -> None:
        self.stats[("nvml_errors", field_name, _error_name(getattr(exc, "value", -1)))] += 1

    def _read(self, dev: _Device, field_name: str, function: str, *args: Any,
              quiet: tuple[int, ...] = (), count: bool = True) -> Any:
        """Call ``nvml.<function>(*args)``; None on a per-field error (counted)."""
        if function in dev.unsupported:
            return None
        nvml = self.nvml
        fn = getattr(nvml, function, None)
        if fn is None:  # binding too old for this function
            dev.unsupported.add(function)
            return None
        try:
            return fn(*args)
        except nvml.NVMLError as exc:
            code = exc.value
            if code in _LOST:
                raise _GpuLost(code) from None
            if code in _REINIT:
                raise _Reinit from None
            if code in quiet:
                return None
            if code in (_NOT_SUPPORTED, _FUNCTION_NOT_FOUND):
                dev.unsupported.add(function)
            if count:
                self._count_error(field_name, exc)
            return None

    def _util_mean(self, dev: _Device, kind: int) -> float | None:
        """Mean utilization (0..1) of the driver samples newer than the last call."""
        seen = dev.util_seen_us.get(kind, 0)
        got = self._read(dev, "sm_util" if kind == _GPU_SAMPLES else "mem_util",
                         "nvmlDeviceGetSamples", dev.handle, kind, seen, quiet=(_NOT_FOUND,))
        if not got:
            return None
        value_type, samples = got
        member = _VALUE_MEMBER.get(value_type, "uiVal")
        total = 0.0
        n = 0
        newest = seen
        for s in samples:
            t = s.timeStamp
            if t > seen:
                total += getattr(s.sampleValue, member)
                n += 1
                if t > newest:
                    newest = t
        dev.util_seen_us[kind] = newest
        return min(total / n / 100.0, 1.0) if n else None

    def _gpm_mark(self, dev: _Device) -> bool:
        """Take a GPM sample into ``gpm.next``; False (GPM off for the device) on error."""
        gpm = dev.gpm
        if gpm is None:
            return False
        if dev.mig_slot is None:
            ok = self._read(dev, "tensor_active", "nvmlGpmSampleGet", dev.root, gpm.next)
        else:
            ok = self._read(dev, "tensor_active", "nvmlGpmMigSampleGet", dev.root,
                            dev.gpu_instance_id, gpm.next)
        if ok is None:
            if dev.unsupported & {"nvmlGpmSampleGet", "nvmlGpmMigSampleGet"}:
                self._free_gpm(dev)
            else:
                gpm.primed = False
            return False
        gpm.prev, gpm.next = gpm.next, gpm.prev
        was_primed, gpm.primed = gpm.primed, True
        return was_primed

    def _gpm_metrics(self, dev: _Device) -> dict[int, float]:
        """GPM metrics (0..1) over [previous mark, now); {} where unavailable."""
        if not self._gpm_mark(dev):
            return {}
        gpm = dev.gpm
        assert gpm is not None
        get = gpm.get
        # After _gpm_mark's swap, prev holds the sample just taken.
        get.sample1, get.sample2 = gpm.next, gpm.prev
        if self._read(dev, "tensor_active", "nvmlGpmMetricsGet", get) is None:
            return {}
        out = {}
        for i in range(len(_GPM_METRICS)):
            m = get.metrics[i]
            if m.nvmlReturn == 0:
                out[int(m.metricId)] = min(max(m.value / 100.0, 0.0), 1.0)
        return out

    def _sample(self, dev: _Device, ts: float, interval_s: float) -> GpuSample:
        h, root = dev.handle, dev.root
        read = self._read
        sm_util = self._util_mean(dev, _GPU_SAMPLES)
        mem_util = self._util_mean(dev, _MEM_SAMPLES)
        if sm_util is None or mem_util is None:
            rates = read(dev, "sm_util", "nvmlDeviceGetUtilizationRates", h)
            if rates is not None:
                sm_util = rates.gpu / 100.0 if sm_util is None else sm_util
                mem_util = rates.memory / 100.0 if mem_util is None else mem_util
        gpm = self._gpm_metrics(dev)
        pipes = {name: gpm.get(metric) for name, metric in PIPE_METRICS.items()}
        if dev.gpm is None and dev.mig_slot is None:  # no GPM at all: DCGM, if any
            pipes.update(self._external_pipes.get(dev.info.uuid, {}))
        if any(v is not None for v in pipes.values()):
            self.stats[("pipe_counters", "gpm" if gpm else "dcgm")] += 1
        if sm_util is None:
            sm_util = gpm.get(_GPM_SM_UTIL)
        if mem_util is None:
            mem_util = gpm.get(_GPM_DRAM_BW)
        if sm_util is None:
            self.stats[("unavailable", "sm_util")] += 1
        if mem_util is None:
            self.stats[("unavailable", "mem_util")] += 1

        mem = read(dev, "mem_used_bytes", "nvmlDeviceGetMemoryInfo", h)
        sm_clock = read(dev, "sm_clock_mhz", "nvmlDeviceGetClockInfo", root, _CLOCK_SM)
        throttle = read(dev, "throttle_reasons", "nvmlDeviceGetCurrentClocksEventReasons", root)
        if throttle is None and "nvmlDeviceGetCurrentClocksEventReasons" in dev.unsupported:
            throttle = read(dev, "throttle_reasons",
                            "nvmlDeviceGetCurrentClocksThrottleReasons", root)
        if dev.mig_slot is None:
            energy_j, energy_source, power_w = self._energy(dev, ts, interval_s)
        else:  # board power and energy are not a slice's
            energy_j = energy_source = power_w = None

        workloads: list[str] = []
        tenants: dict[str, str] = {}
        procs = read(dev, "workloads", "nvmlDeviceGetComputeRunningProcesses", h)
        if procs:
            pids = [p.pid for p in procs]
            for pid in pids:
                self._pids[pid] = dev.info.uuid
            if self.attributor is not None:
                workloads = self.attributor.workloads(pids)
                owners = getattr(self.attributor, "tenants", None)
                if owners is not None:
                    tenants = owners(pids)

        info = dev.info
        return GpuSample(
            event_id=sample_event_id(self.node, info.index, dev.mig_slot, ts),
            node=self.node,
            gpu_uuid=info.uuid,
            gpu_index=info.index,
            gpu_name=info.name,
            mig_profile=info.mig_profile,
            ts=ts,
            interval_s=interval_s,
            sm_util=sm_util,
            mem_util=mem_util,
            tensor_active=pipes["tensor_active"],
            dram_active=pipes["dram_active"],
            fp16_active=pipes["fp16_active"],
            fp32_active=pipes["fp32_active"],
            fp64_active=pipes["fp64_active"],
            sm_clock_mhz=sm_clock,
            max_sm_clock_mhz=dev.max_sm_clock_mhz,
            power_w=power_w,
            energy_j=energy_j,
            energy_source=energy_source,
            mem_used_bytes=None if mem is None else mem.used,
            mem_total_bytes=None if mem is None else mem.total,
            throttle_reasons=throttle,
            workloads=workloads,
            tenants=tenants or None,
        )

    def _energy(self, dev: _Device, ts: float, interval_s: float
                ) -> tuple[float | None, str | None, float | None]:
        """(energy_j, energy_source, power_w) of the interval ``[ts - interval_s, ts)``.

        ``counter``: the energy counter's step (mJ) between the reading that opened this
        interval and now; ``power_w`` is then the interval's mean power. ``power``: the
        instantaneous power x ``interval_s`` where there is no such step: no counter
        (pre-Volta, error), no reading at the interval's start (device just discovered,
        NVML re-initialized, a stall longer than the longest interval), or a step that
        is not energy (the counter went backwards: driver reload or GPU reset). Each
        reading is used as the start of exactly one interval, so no joule is counted
        twice; a wrap of the 64-bit counter is taken modulo 2^64.
        """
        now = self._read(dev, "power_w", "nvmlDeviceGetTotalEnergyConsumption", dev.root)
        prev, prev_ts = dev.energy_mj, dev.energy_ts
        dev.energy_mj, dev.energy_ts = now, ts
        if now is None:
            reason = "no_counter"
        elif prev is None or prev_ts is None or abs(ts - prev_ts - interval_s) > 1e-6:
            reason = "no_reading_at_interval_start"
        else:
            delta_mj = energy_delta_mj(prev, now, interval_s)
            if delta_mj is not None:
                return delta_mj / 1000.0, "counter", delta_mj / 1000.0 / interval_s
            reason = "counter_backwards" if now < prev else "counter_implausible"
        self.stats[("energy_fallbacks", reason)] += 1
        mw = self._read(dev, "power_w", "nvmlDeviceGetPowerUsage", dev.root)
        if mw is None:
            return None, None, None
        power_w = mw / 1000.0
        return power_w * interval_s, "power", power_w

    # -- the interval ------------------------------------------------------------------
    def collect(self, ts: float) -> list[GpuSample]:
        """One sample per device for the interval ending at ``ts`` (epoch seconds).

        Never raises for NVML trouble: failing fields are null, lost GPUs are skipped,
        a lost driver is re-initialized on a later call.
        """
        last = self._last_ts
        interval_s = ts - last if last is not None and 0 < ts - last <= MAX_INTERVAL_S \
            else self.interval_s
        self._last_ts = ts
        if ((not self._initialized or ts >= self._discover_at) and not self._rediscover(ts)
                and not self._initialized):
            return []  # NVML is down; with NVML up a failed re-discovery keeps the old GPUs
        self._pids = {}
        self._external_pipes = {}
        if self.pipe_counters is not None and any(
                d.gpm is None and d.mig_slot is None for d in self._devices):
            try:
                self._external_pipes = self.pipe_counters.read()
            except Exception:  # an optional source must never cost the interval
                self.stats[("pipe_counter_errors",)] += 1
                log.exception("pipe_counters_read_failed node=%s", self.node)
        samples: list[GpuSample] = []
        lost: list[_Device] = []
        for dev in self._devices:
            try:
                samples.append(self._sample(dev, ts, interval_s))
            except _GpuLost as exc:
                lost.append(dev)
                self.stats[("gpu_lost",)] += 1
                log.warning("gpu_lost node=%s index=%d uuid=%s error=%s", self.node,
                            dev.info.index, dev.info.uuid, _error_name(exc.code))
            except _Reinit:
                self.stats[("nvml_reinit",)] += 1
                log.warning("nvml_uninitialized node=%s: re-initializing", self.node)
                self._initialized = False
                self._discover_at = ts + self.lost_retry_s
                return samples
        if lost:
            for dev in lost:
                self._free_gpm(dev)
            self._devices = [d for d in self._devices if d not in lost]
            self._discover_at = min(self._discover_at, ts + self.lost_retry_s)
        self.pid_to_uuid = self._pids  # one assignment: the intake thread reads it
        if self.attributor is not None:
            self.attributor.prune(self._pids.keys())
        self.stats[("samples",)] += len(samples)
        return samples

    def _rediscover(self, ts: float) -> bool:
        nvml = self.nvml
        try:
            if not self._initialized:
                self._init()
                # handles and GPM samples of the old session are void after a re-init
                for dev in self._devices:
                    with contextlib.suppress(nvml.NVMLError, _GpuLost, _Reinit):
                        self._free_gpm(dev)
                self._devices = []
            self._discover(ts)
            return True
        except (nvml.NVMLError, _Reinit) as exc:
            code = getattr(exc, "value", 1)
            self.stats[("discovery_errors", _error_name(code))] += 1
            log.warning("nvml_discovery_failed node=%s error=%s", self.node, _error_name(code))
            if code in _REINIT:
                self._initialized = False
            self._discover_at = ts + self.lost_retry_s
            return False


def _error_name(code: int) -> str:
    return _ERROR_NAMES.get(code, str(code))
