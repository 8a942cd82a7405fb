"""A stand-in for the ``pynvml`` module, driven by recorded values (no GPU needed).

The collector takes an NVML-like object; tests and the benchmark pass a :class:`FakeNvml`
built from a JSON document (``tests/unit/fixtures/nvml_*.json``), the way
prometheus_client's tests pass a fake ``/proc`` tree. The document is what
:func:`record` writes on a real host (``python -m mfu_testing.fake_nvml > nvml_host.json``), so
a new GPU model is covered by recording it once.

Document shape (every key but ``name``/``uuid`` optional)::

    {"devices": [{
        "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...",
        "utilization": {"gpu": 97, "memory": 41},        # percent
        "memory": {"used": 70e9, "total": 85e9},          # bytes
        "clocks": {"sm": 1980, "max_sm": 1980, "app_sm": 1980, "default_app_sm": 1980},
        "power_mw": 690000, "energy_mj": 1000000,         # milliwatts, millijoules
        "clock_event_reasons": 0,
        "processes": [{"pid": 4242, "used_memory": 1e9}],
        "gpm": {"supported": true,                        # metric id -> percent:
                "metrics": {"5": 38.0, "2": 95.0, "10": 40.0,  # tensor, SM, DRAM bw,
                            "13": 1.5, "12": 6.0, "11": 0.0}},  # FP16, FP32, FP64
        "mig": {"current": 1, "max_devices": 7, "devices": [ {device...,
                "mig_slot": 0, "gpu_instance_id": 1} ]},
        "dcgm": {"1004": 0.31, "1005": 0.45},             # DCGM profiling field -> ratio
        "errors": {"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED"},  # function -> error name
        "lost": false}]}

Only the functions the collector calls are provided. The fake keeps its own clock
(:meth:`FakeNvml.advance`): energy grows with power (integer mJ, modulo 2^64 like the
driver's counter; tests set ``FakeDevice.energy_mj`` to simulate a reset) and a
utilization sample is recorded every 1/6 s, so interval averages can be checked.
GPM metrics are constant over time: any two samples give the recorded percentages.

Fixtures: ``nvml_h100_sxm`` (Hopper, GPM with every pipe metric), ``nvml_h100_mig``
(GPM per GPU instance), ``nvml_h200`` (GPM, memory-bound decode), ``nvml_a100_mig``
(Ampere: no GPM, so null pipe counters; MIG slices without utilization or power),
``nvml_l40s_old_driver`` (old binding names, instantaneous power only). The A100's
whole GPU also carries DCGM profiling values for :class:`FakeDcgmReader`.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999
ERRORS_BY_NAME = {
    name.removeprefix("NVML_ERROR_"): value
    for name, value in globals().items()
    if name.startswith("NVML_ERROR_")
}

NVML_CLOCK_SM = 1
NVML_GPU_UTILIZATION_SAMPLES = 1
NVML_MEMORY_UTILIZATION_SAMPLES = 2
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_DEVICE_MIG_ENABLE = 1
NVML_GPM_METRIC_SM_UTIL = 2
NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
NVML_GPM_METRIC_DRAM_BW_UTIL = 10
NVML_GPM_METRIC_FP64_UTIL = 11
NVML_GPM_METRIC_FP32_UTIL = 12
NVML_GPM_METRIC_FP16_UTIL = 13
NVML_GPM_METRICS_GET_VERSION = 1
NVML_GPM_METRIC_MAX = 16  # the real struct holds 477; the collector asks for six
ENERGY_COUNTER_MODULUS_MJ = 1 << 64

# Driver utilization sampling period (µs): NVML keeps about six samples a second.
_UTIL_PERIOD_US = 166_667


class NVMLError(Exception):
    """Same contract as ``pynvml.NVMLError``: the NVML return code is in ``.value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        names = {v: k for k, v in ERRORS_BY_NAME.items()}
        return f"NVML error {names.get(self.value, self.value)}"


class c_nvmlGpmMetricsGet_t:
    """Plain-Python twin of pynvml's ctypes struct of the same name."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [
            SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0)
            for _ in range(NVML_GPM_METRIC_MAX)
        ]


class FakeDevice:
    """One GPU or MIG device; its attributes are the recorded document, editable in tests."""

    def __init__(self, doc: dict[str, Any], parent: FakeDevice | None, nvml: FakeNvml) -> None:
        self.doc = doc
        self.parent = parent
        self.nvml = nvml
        # integer millijoules modulo 2^64, like the driver's unsigned 64-bit counter
        self.energy_mj = int(doc.get("energy_mj", 0)) % ENERGY_COUNTER_MODULUS_MJ
        self.mig_devices = [
            FakeDevice(child, self, nvml) for child in doc.get("mig", {}).get("devices", [])
        ]

    @property
    def lost(self) -> bool:
        root = self.parent or self
        return bool(root.doc.get("lost"))

    def check(self, function: str) -> None:
        """Raise what the recorded document says this call raises."""
        if self.nvml.clock is not None:
            self.nvml.follow_clock()
        if self.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if not self.nvml.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        error = self.doc.get("errors", {}).get(function)
        if error is not None:
            raise NVMLError(ERRORS_BY_NAME[error] if isinstance(error, str) else int(error))

    def get(self, function: str, key: str) -> Any:
        self.check(function)
        if key not in self.doc:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return self.doc[key]


class FakeNvml:
    """Module-like object with the pynvml functions the collector uses."""

    NVMLError = NVMLError
    c_nvmlGpmMetricsGet_t = c_nvmlGpmMetricsGet_t

    def __init__(self, doc: dict[str, Any], *, start_us: int = 1_700_000_000_000_000,
                 clock: Any = None) -> None:
        """``clock``: optional wall clock (e.g. ``time.time``); the fake then follows it
        on its own instead of waiting for :meth:`advance` (for paced benchmarks)."""
        self.clock = clock
        if clock is not None:
            start_us = int(clock() * 1e6)
        self.doc = copy.deepcopy(doc)
        self.initialized = False
        self.init_calls = 0
        self.calls = 0
        self.now_us = start_us
        self.devices = [FakeDevice(d, None, self) for d in self.doc["devices"]]
        # Per device and sampling type: [(timestamp µs, percent)], newest last.
        self._util_samples: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._record_util_samples(self.now_us)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_json(cls, path: str | Path) -> FakeNvml:
        return cls(json.loads(Path(path).read_text()))

    # -- test controls -----------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Move the fake clock: energy accrues at the recorded power, utilization
        samples are taken at the driver's cadence."""
        end_us = self.now_us + round(seconds * 1e6)
        for dev in self._all_devices():
            power_mw = dev.doc.get("power_mw")
            if power_mw is not None:
                dev.energy_mj = (dev.energy_mj + round(power_mw * seconds)) \
                    % ENERGY_COUNTER_MODULUS_MJ
        t = self.now_us + _UTIL_PERIOD_US
        while t <= end_us:
            self._record_util_samples(t)
            t += _UTIL_PERIOD_US
        self.now_us = end_us

    def follow_clock(self) -> None:
        behind = self.clock() - self.now_us / 1e6
        if behind > 0.01:
            self.advance(behind)

    def _all_devices(self) -> list[FakeDevice]:
        out = []
        for dev in self.devices:
            out.append(dev)
            out.extend(dev.mig_devices)
        return out

    def _record_util_samples(self, t_us: int) -> None:
        for i, dev in enumerate(self.devices):
            util = dev.doc.get("utilization")
            if util is None:
                continue
            for kind, key in ((NVML_GPU_UTILIZATION_SAMPLES, "gpu"),
                              (NVML_MEMORY_UTILIZATION_SAMPLES, "memory")):
                buf = self._util_samples.setdefault((i, kind), [])
                buf.append((t_us, int(util[key])))
                del buf[:-120]  # the driver keeps a short ring buffer

    # -- library lifecycle -------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.doc.get("driver_not_loaded"):
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        self.calls += 1
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if not 0 <= index < len(self.devices):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        dev = self.devices[index]
        dev.check("nvmlDeviceGetHandleByIndex")
        return dev

    # -- identity ----------------------------------------------------------------------
    def nvmlDeviceGetName(self, h: FakeDevice) -> str:
        self.calls += 1
        return h.get("nvmlDeviceGetName", "name")

    def nvmlDeviceGetUUID(self, h: FakeDevice) -> str:
        self.calls += 1
        return h.get("nvmlDeviceGetUUID", "uuid")

    def nvmlDeviceGetIndex(self, h: FakeDevice) -> int:
        self.calls += 1
        return h.get("nvmlDeviceGetIndex", "index")

    # -- utilization -------------------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, h: FakeDevice) -> SimpleNamespace:
        self.calls += 1
        util = h.get("nvmlDeviceGetUtilizationRates", "utilization")
        return SimpleNamespace(gpu=int(util["gpu"]), memory=int(util["memory"]))

    def nvmlDeviceGetSamples(self, h: FakeDevice, sampling_type: int, last_seen_us: int):
        self.calls += 1
        h.check("nvmlDeviceGetSamples")
        if h.parent is not None or "utilization" not in h.doc:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        buf = self._util_samples.get((self.devices.index(h), sampling_type), [])
        newer = [
            SimpleNamespace(timeStamp=t, sampleValue=SimpleNamespace(uiVal=v))
            for t, v in buf
            if t > last_seen_us
        ]
        if not newer:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return NVML_VALUE_TYPE_UNSIGNED_INT, newer

    # -- memory, clocks, power ---------------------------------------------------------
    def nvmlDeviceGetMemoryInfo(self, h: FakeDevice) -> SimpleNamespace:
        self.calls += 1
        mem = h.get("nvmlDeviceGetMemoryInfo", "memory")
        return SimpleNamespace(used=int(mem["used"]), total=int(mem["total"]),
                               free=int(mem["total"]) - int(mem["used"]))

    def _clock(self, h: FakeDevice, function: str, key: str, clock_type: int) -> int:
        self.calls += 1
        if clock_type != NVML_CLOCK_SM:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        clocks = h.get(function, "clocks")
        if key not in clocks:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(clocks[key])

    def nvmlDeviceGetClockInfo(self, h: FakeDevice, clock_type: int) -> int:
        return self._clock(h, "nvmlDeviceGetClockInfo", "sm", clock_type)

    def nvmlDeviceGetMaxClockInfo(self, h: FakeDevice, clock_type: int) -> int:
        return self._clock(h, "nvmlDeviceGetMaxClockInfo", "max_sm", clock_type)

    def nvmlDeviceGetApplicationsClock(self, h: FakeDevice, clock_type: int) -> int:
        return self._clock(h, "nvmlDeviceGetApplicationsClock", "app_sm", clock_type)

    def nvmlDeviceGetDefaultApplicationsClock(self, h: FakeDevice, clock_type: int) -> int:
        return self._clock(h, "nvmlDeviceGetDefaultApplicationsClock", "default_app_sm",
                           clock_type)

    def nvmlDeviceGetPowerUsage(self, h: FakeDevice) -> int:
        self.calls += 1
        return int(h.get("nvmlDeviceGetPowerUsage", "power_mw"))

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeDevice) -> int:
        self.calls += 1
        h.get("nvmlDeviceGetTotalEnergyConsumption", "energy_mj")
        return h.energy_mj

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeDevice) -> int:
        self.calls += 1
        return int(h.get("nvmlDeviceGetCurrentClocksEventReasons", "clock_event_reasons"))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeDevice) -> int:
        self.calls += 1
        return int(h.get("nvmlDeviceGetCurrentClocksThrottleReasons", "clock_event_reasons"))

    # -- processes ---------------------------------------------------------------------
    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeDevice) -> list[SimpleNamespace]:
        self.calls += 1
        h.check("nvmlDeviceGetComputeRunningProcesses")
        return [
            SimpleNamespace(pid=int(p["pid"]), usedGpuMemory=p.get("used_memory"))
            for p in h.doc.get("processes", [])
        ]

    # -- MIG ---------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, h: FakeDevice) -> list[int]:
        self.calls += 1
        mig = h.get("nvmlDeviceGetMigMode", "mig")
        return [int(mig.get("current", 0)), int(mig.get("pending", mig.get("current", 0)))]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeDevice) -> int:
        self.calls += 1
        return int(h.get("nvmlDeviceGetMaxMigDeviceCount", "mig").get("max_devices", 7))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeDevice, index: int) -> FakeDevice:
        self.calls += 1
        h.check("nvmlDeviceGetMigDeviceHandleByIndex")
        for child in h.mig_devices:
            if int(child.doc.get("mig_slot", -1)) == index:
                return child
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetGpuInstanceId(self, h: FakeDevice) -> int:
        self.calls += 1
        return int(h.get("nvmlDeviceGetGpuInstanceId", "gpu_instance_id"))

    # -- GPM ---------------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, h: FakeDevice) -> SimpleNamespace:
        self.calls += 1
        h.check("nvmlGpmQueryDeviceSupport")
        return SimpleNamespace(isSupportedDevice=int(bool(h.doc.get("gpm", {}).get("supported"))))

    def nvmlGpmSampleAlloc(self) -> SimpleNamespace:
        return SimpleNamespace(device=None, gpu_instance_id=None, t_us=None, freed=False)

    def nvmlGpmSampleFree(self, sample: SimpleNamespace) -> None:
        sample.freed = True

    def nvmlGpmSampleGet(self, h: FakeDevice, sample: SimpleNamespace) -> SimpleNamespace:
        self.calls += 1
        h.check("nvmlGpmSampleGet")
        if not h.doc.get("gpm", {}).get("supported"):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        sample.device, sample.gpu_instance_id, sample.t_us = h, None, self.now_us
        return sample

    def nvmlGpmMigSampleGet(self, h: FakeDevice, gpu_instance_id: int, sample: SimpleNamespace):
        self.calls += 1
        h.check("nvmlGpmMigSampleGet")
        if not h.doc.get("gpm", {}).get("supported"):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not any(c.doc.get("gpu_instance_id") == gpu_instance_id for c in h.mig_devices):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        sample.device, sample.gpu_instance_id, sample.t_us = h, gpu_instance_id, self.now_us
        return sample

    def nvmlGpmMetricsGet(self, get: c_nvmlGpmMetricsGet_t) -> c_nvmlGpmMetricsGet_t:
        self.calls += 1
        s1, s2 = get.sample1, get.sample2
        if (get.version != NVML_GPM_METRICS_GET_VERSION or s1 is None or s2 is None
                or s1.device is not s2.device or s1.gpu_instance_id != s2.gpu_instance_id
                or s1.t_us is None or s2.t_us is None or s2.t_us <= s1.t_us):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        dev: FakeDevice = s1.device
        dev.check("nvmlGpmMetricsGet")
        if s1.gpu_instance_id is not None:
            dev = next(c for c in dev.mig_devices
                       if c.doc.get("gpu_instance_id") == s1.gpu_instance_id)
        values = dev.doc.get("gpm", {}).get("metrics", {})
        for m in get.metrics[: get.numMetrics]:
            value = values.get(str(m.metricId))
            if value is None:
                m.nvmlReturn, m.value = NVML_ERROR_NOT_SUPPORTED, 0.0
            else:
                m.nvmlReturn, m.value = NVML_SUCCESS, float(value)
        return get


class FakeDcgmReader:
    """Stand-in for DCGM's ``DcgmReader`` over the same document: each whole GPU with a
    ``dcgm`` table (DCGM profiling field id -> ratio, as ``dcgmi dmon -e 1004,...``
    shows) is a DCGM GPU with those latest values and its UUID (field 54).
    ``fail``: an exception to raise on the next read (a host engine that went away)."""

    def __init__(self, nvml: FakeNvml) -> None:
        self.nvml = nvml
        self.reads = 0
        self.fail: Exception | None = None

    def GetLatestGpuValuesAsFieldIdDict(self) -> dict[int, dict[int, Any]]:
        self.reads += 1
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        out: dict[int, dict[int, Any]] = {}
        for gpu_id, dev in enumerate(self.nvml.devices):
            table = dev.doc.get("dcgm")
            if table is None:
                continue
            out[gpu_id] = {54: dev.doc["uuid"], **{int(k): v for k, v in table.items()}}
        return out


# The pynvml module's constants, as attributes of the fake (the collector reads some).
for _name, _value in list(globals().items()):
    if _name.startswith("NVML_"):
        setattr(FakeNvml, _name, _value)


def node_document(n_gpus: int = 8, *, name: str = "NVIDIA H100 80GB HBM3",
                  memory_total: int = 81559 << 20, max_sm_clock: int = 1980,
                  gpm: bool = True, first_pid: int = 1000) -> dict[str, Any]:
    """A FakeNvml document of ``n_gpus`` busy GPUs of one model, one process each
    (pid ``first_pid + index``); defaults are an H100 SXM node as NVML reports it."""
    devices = []
    for i in range(n_gpus):
        devices.append({
            "index": i, "name": name, "uuid": f"GPU-{i:08x}-0000-4000-8000-{i:012x}",
            "utilization": {"gpu": 97, "memory": 41},
            "memory": {"used": memory_total * 85 // 100, "total": memory_total},
            "clocks": {"sm": max_sm_clock, "max_sm": max_sm_clock,
                       "app_sm": max_sm_clock, "default_app_sm": max_sm_clock},
            "power_mw": 650_000, "energy_mj": 10_000_000 * (i + 1),
            "clock_event_reasons": 0,
            "processes": [{"pid": first_pid + i, "used_memory": memory_total * 8 // 10}],
            "gpm": {"supported": gpm, "metrics": {"5": 38.0, "2": 92.0, "10": 40.0,
                                                  "13": 1.5, "12": 6.0, "11": 0.0}},
            "mig": {"current": 0, "pending": 0},
        })
    return {"devices": devices}


# What record() asks GPM for: the collector's metric ids (tensor, SM, DRAM bw, FP16/32/64).
RECORDED_GPM_METRICS = (5, 2, 10, 13, 12, 11)


def _record_gpm(nvml: Any, take: Any, wait: Any) -> dict[str, float] | None:
    """GPM metrics (id -> percent) between two samples ``wait()`` apart; None on error."""
    samples = []
    try:
        samples = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
        take(samples[0])
        wait()
        take(samples[1])
        get = nvml.c_nvmlGpmMetricsGet_t()
        get.version = nvml.NVML_GPM_METRICS_GET_VERSION
        get.numMetrics = len(RECORDED_GPM_METRICS)
        get.sample1, get.sample2 = samples
        for i, metric in enumerate(RECORDED_GPM_METRICS):
            get.metrics[i].metricId = metric
        nvml.nvmlGpmMetricsGet(get)
        return {str(int(m.metricId)): round(float(m.value), 3)
                for m in get.metrics[: len(RECORDED_GPM_METRICS)] if m.nvmlReturn == 0}
    except nvml.NVMLError:
        return None
    finally:
        for sample in samples:
            nvml.nvmlGpmSampleFree(sample)


def record(nvml: Any, *, wait: Any = None) -> dict[str, Any]:
    """Read every GPU (and MIG device) through ``nvml`` into a FakeNvml document.

    Run on a GPU host to add a fixture: ``python -m mfu_testing.fake_nvml > nvml_<model>.json``.
    Calls that fail are written into ``errors`` so the fake fails the same way. GPM
    metrics are measured between two samples ``wait()`` apart (default: 1 s sleep).
    """
    if wait is None:
        import time

        def wait() -> None:
            time.sleep(1.0)

    sm = nvml.NVML_CLOCK_SM
    names = {getattr(nvml, k): k.removeprefix("NVML_ERROR_") for k in dir(nvml)
             if k.startswith("NVML_ERROR_") and isinstance(getattr(nvml, k), int)}

    def read(doc: dict[str, Any], key: str, function: str, *args: Any,
             convert: Any = lambda v: v) -> None:
        try:
            doc[key] = convert(getattr(nvml, function)(*args))
        except nvml.NVMLError as exc:
            doc.setdefault("errors", {})[function] = names.get(exc.value, exc.value)

    def read_device(h: Any, doc: dict[str, Any]) -> dict[str, Any]:
        read(doc, "name", "nvmlDeviceGetName", h)
        read(doc, "uuid", "nvmlDeviceGetUUID", h)
        read(doc, "utilization", "nvmlDeviceGetUtilizationRates", h,
             convert=lambda u: {"gpu": u.gpu, "memory": u.memory})
        read(doc, "memory", "nvmlDeviceGetMemoryInfo", h,
             convert=lambda m: {"used": m.used, "total": m.total})
        clocks: dict[str, Any] = {}
        for key, function in (("sm", "nvmlDeviceGetClockInfo"),
                              ("max_sm", "nvmlDeviceGetMaxClockInfo"),
                              ("app_sm", "nvmlDeviceGetApplicationsClock"),
                              ("default_app_sm", "nvmlDeviceGetDefaultApplicationsClock")):
            read(clocks, key, function, h, sm)
        errors = clocks.pop("errors", {})
        if clocks:
            doc["clocks"] = clocks
        if errors:
            doc.setdefault("errors", {}).update(errors)
        read(doc, "power_mw", "nvmlDeviceGetPowerUsage", h)
        read(doc, "energy_mj", "nvmlDeviceGetTotalEnergyConsumption", h)
        read(doc, "clock_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons", h)
        read(doc, "processes", "nvmlDeviceGetComputeRunningProcesses", h,
             convert=lambda ps: [{"pid": p.pid, "used_memory": p.usedGpuMemory} for p in ps])
        return doc

    nvml.nvmlInit()
    try:
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(index)
            doc = read_device(h, {"index": index})
            try:
                doc["gpm"] = {"supported": bool(nvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice)}
            except nvml.NVMLError:
                doc["gpm"] = {"supported": False}
            if doc["gpm"]["supported"]:
                metrics = _record_gpm(nvml, lambda s, h=h: nvml.nvmlGpmSampleGet(h, s), wait)
                if metrics is not None:
                    doc["gpm"]["metrics"] = metrics
            try:
                current, pending = nvml.nvmlDeviceGetMigMode(h)
                mig: dict[str, Any] = {"current": current, "pending": pending, "devices": []}
                if current == nvml.NVML_DEVICE_MIG_ENABLE:
                    mig["max_devices"] = nvml.nvmlDeviceGetMaxMigDeviceCount(h)
                    for slot in range(mig["max_devices"]):
                        try:
                            mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
                        except nvml.NVMLError:
                            continue
                        child = read_device(mh, {"mig_slot": slot})
                        read(child, "gpu_instance_id", "nvmlDeviceGetGpuInstanceId", mh)
                        if doc["gpm"]["supported"] and "gpu_instance_id" in child:
                            gi = child["gpu_instance_id"]
                            metrics = _record_gpm(
                                nvml, lambda s, h=h, gi=gi: nvml.nvmlGpmMigSampleGet(h, gi, s),
                                wait)
                            child["gpm"] = {"supported": metrics is not None,
                                            "metrics": metrics or {}}
                        mig["devices"].append(child)
                doc["mig"] = mig
            except nvml.NVMLError:
                pass
            devices.append(doc)
        return {"devices": devices}
    finally:
        nvml.nvmlShutdown()


if __name__ == "__main__":
    import pynvml

    json.dump(record(pynvml), sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
