"""NVML collector against a fake NVML built from recorded values (tests/unit/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.attribution import ProcAttributor
from agents.nvml import NvmlCollector, mig_profile_from_name
from mfu.events import GpuSample, parse_events
from mfu_testing import fake_nvml
from mfu_testing.fake_nvml import FakeNvml, node_document, record

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1_700_000_000.0


def fake(name: str) -> FakeNvml:
    return FakeNvml.from_json(FIXTURES / f"nvml_{name}.json")


def write_proc(root: Path, pid: int, env: dict[str, str], cgroup: str = "0::/\n") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
    (d / "cgroup").write_text(cgroup)


def collector_for(nvml: FakeNvml, tmp_path: Path, **kw) -> NvmlCollector:
    c = NvmlCollector("n1", nvml=nvml, attributor=ProcAttributor(tmp_path / "proc"), **kw)
    c.start(T0)
    return c


def step(nvml: FakeNvml, c: NvmlCollector, ts: float) -> list[GpuSample]:
    nvml.advance(1.0)
    return c.collect(ts)


def test_every_field_of_an_h100(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    write_proc(tmp_path / "proc", 4242, {"PATH": "/bin", "MFU_WORKLOAD": "job-42"})
    c = collector_for(nvml, tmp_path)
    step(nvml, c, T0 + 1)
    busy, idle = step(nvml, c, T0 + 2)

    assert busy.event_id == "n1-0-1700000002000"
    assert (busy.node, busy.gpu_index, busy.gpu_name) == ("n1", 0, "NVIDIA H100 80GB HBM3")
    assert busy.gpu_uuid == "GPU-5f2b9b8c-1c3e-7d4a-9b0e-2a6f1c7d8e90"
    assert busy.mig_profile is None
    assert (busy.ts, busy.interval_s, busy.start) == (T0 + 2, 1.0, T0 + 1)
    assert busy.sm_util == pytest.approx(0.97)
    assert busy.mem_util == pytest.approx(0.41)
    assert busy.tensor_active == pytest.approx(0.384)
    # GPM pipe counters, percent / 100: DRAM 40.2, FP16 1.6, FP32 7.3, FP64 0.0
    assert busy.dram_active == pytest.approx(0.402)
    assert (busy.fp16_active, busy.fp32_active, busy.fp64_active) == pytest.approx(
        (0.016, 0.073, 0.0))
    assert (busy.sm_clock_mhz, busy.max_sm_clock_mhz) == (1980, 1980)
    assert busy.power_w == pytest.approx(690.112)  # energy delta over the interval
    assert (busy.energy_j, busy.energy_source) == (690.112, "counter")  # 690 112 mJ
    assert (busy.mem_used_bytes, busy.mem_total_bytes) == (72142176256, 85520809984)
    assert busy.throttle_reasons == 0
    assert busy.workloads == ["job-42"]

    assert idle.sm_util == 0.0 and idle.tensor_active == 0.0
    assert (idle.dram_active, idle.fp16_active, idle.fp32_active, idle.fp64_active) == (
        0.0, 0.0, 0.0, 0.0)
    assert (idle.energy_j, idle.energy_source) == (71.25, "counter")  # 71 250 mJ
    assert busy.tenants is None and idle.tenants is None  # no owner known
    assert idle.throttle_reasons == 1 and idle.workloads == []
    assert idle.power_w == pytest.approx(71.25)
    assert c.pid_to_uuid == {4242: busy.gpu_uuid}
    assert not any(k[0] == "nvml_errors" for k in c.stats)

    # what goes on the wire validates as the contract's event
    good, bad = parse_events(busy.to_json(), GpuSample)
    assert bad == [] and good == [busy]


def test_first_interval_starts_at_start_with_power_from_the_counter(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    c = NvmlCollector("n1", nvml=nvml, interval_s=1.0)
    c.start(T0 + 0.25)
    nvml.advance(0.75)
    first = c.collect(T0 + 1)[0]
    assert first.interval_s == pytest.approx(0.75)
    # the counter was read at start: 517 584 mJ over 0.75 s = 690.112 W
    assert first.power_w == pytest.approx(690.112)
    assert (first.energy_j, first.energy_source) == (517.584, "counter")


def test_utilization_is_averaged_over_the_interval(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    c = collector_for(nvml, tmp_path)
    dev = nvml.devices[0].doc
    dev["utilization"] = {"gpu": 100, "memory": 60}
    nvml.advance(0.5)  # three driver samples at 100 %
    dev["utilization"] = {"gpu": 0, "memory": 0}
    nvml.advance(0.5)  # three at 0 %
    sample = c.collect(T0 + 1)[0]
    assert sample.sm_util == pytest.approx(0.5)
    assert sample.mem_util == pytest.approx(0.3)


def test_falls_back_to_utilization_rates_without_new_samples(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    c = collector_for(nvml, tmp_path)
    # no driver sample since the last read (interval shorter than the sampling period)
    sample = c.collect(T0 + 0.1)[0]
    assert sample.sm_util == pytest.approx(0.97)
    assert not any(k[:2] == ("nvml_errors", "sm_util") for k in c.stats)


def test_gpm_unsupported_gives_null_pipe_counters(tmp_path: Path) -> None:
    nvml = fake("a100_mig")
    c = collector_for(nvml, tmp_path)
    samples = step(nvml, c, T0 + 1)
    for s in samples:  # Ampere has no GPM: unknown, never a made-up 0
        assert (s.tensor_active, s.dram_active, s.fp16_active, s.fp32_active,
                s.fp64_active) == (None, None, None, None, None)
    whole = samples[-1]
    assert whole.gpu_index == 1 and whole.mig_profile is None
    assert whole.sm_util == pytest.approx(0.88) and whole.throttle_reasons == 4


def test_a100_mig_slices_are_samples_of_their_own(tmp_path: Path) -> None:
    nvml = fake("a100_mig")
    write_proc(tmp_path / "proc", 5001, {"MFU_WORKLOAD": "svc-a"})
    write_proc(tmp_path / "proc", 5002, {"SLURM_JOB_ID": "77"})
    c = collector_for(nvml, tmp_path)
    samples = step(nvml, c, T0 + 1)
    big, small, _whole = samples
    assert [s.mig_profile for s in samples] == ["3g.40gb", "1g.10gb", None]
    assert big.gpu_name == "NVIDIA A100-SXM4-80GB"  # parent name, profile apart
    assert big.gpu_index == small.gpu_index == 0
    assert big.gpu_uuid.startswith("MIG-") and big.event_id == "n1-0m0-1700000001000"
    assert small.event_id == "n1-0m3-1700000001000"
    assert (big.mem_used_bytes, big.mem_total_bytes) == (30064771072, 42580574208)
    assert big.power_w is None  # board power is not a slice's
    assert big.sm_clock_mhz == 1410  # the parent's clock
    assert big.workloads == ["svc-a"] and small.workloads == ["slurm-77"]
    # A100 MIG has no utilization source at all: null on the wire, counted
    assert big.sm_util is None and big.mem_util is None
    assert c.stats[("unavailable", "sm_util")] == 2
    assert [d.mig_profile for d in c.devices] == ["3g.40gb", "1g.10gb", None]


def test_h100_mig_reads_gpm_per_gpu_instance(tmp_path: Path) -> None:
    nvml = fake("h100_mig")
    c = collector_for(nvml, tmp_path)
    step(nvml, c, T0 + 1)
    big, small = step(nvml, c, T0 + 2)
    assert big.mig_profile == "3g.40gb" and small.mig_profile == "1g.10gb"
    assert big.sm_util == pytest.approx(0.77) and big.mem_util == pytest.approx(0.33)
    assert big.tensor_active == pytest.approx(0.215)
    # per GPU instance: DRAM 33 %, FP16 0.8 %, FP32 4.5 %, FP64 0.2 %
    assert (big.dram_active, big.fp16_active, big.fp32_active, big.fp64_active) == \
        pytest.approx((0.33, 0.008, 0.045, 0.002))
    assert small.tensor_active == 0.0 and small.mem_util == pytest.approx(0.005)
    assert small.dram_active == pytest.approx(0.005) and small.fp32_active == 0.0
    assert ("unavailable", "sm_util") not in c.stats


def test_h200_pipe_counters_of_a_memory_bound_server(tmp_path: Path) -> None:
    nvml = fake("h200")
    c = collector_for(nvml, tmp_path)
    step(nvml, c, T0 + 1)
    s = step(nvml, c, T0 + 2)[0]
    assert s.gpu_name == "NVIDIA H200" and s.mem_total_bytes == 143771 << 20
    # tensor 12.5 %, DRAM 71 %, FP16 3.25 %, FP32 9.5 %, FP64 0 %
    assert (s.tensor_active, s.dram_active, s.fp16_active, s.fp32_active,
            s.fp64_active) == pytest.approx((0.125, 0.71, 0.0325, 0.095, 0.0))


def test_a_gpm_metric_the_driver_lacks_is_null_alone(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    del nvml.devices[0].doc["gpm"]["metrics"]["13"]  # no FP16_UTIL from this driver
    c = collector_for(nvml, tmp_path)
    step(nvml, c, T0 + 1)
    s = step(nvml, c, T0 + 2)[0]
    assert s.fp16_active is None
    assert (s.tensor_active, s.fp32_active) == pytest.approx((0.384, 0.073))


def test_not_supported_field_is_null_and_counted_once(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    errors = nvml.devices[0].doc.setdefault("errors", {})
    errors["nvmlDeviceGetPowerUsage"] = "NOT_SUPPORTED"
    errors["nvmlDeviceGetTotalEnergyConsumption"] = "NOT_SUPPORTED"
    errors["nvmlDeviceGetMemoryInfo"] = "NOT_SUPPORTED"
    c = collector_for(nvml, tmp_path)
    for k in range(1, 4):
        s = step(nvml, c, T0 + k)[0]
        assert s.power_w is None and s.mem_used_bytes is None and s.mem_total_bytes is None
        assert s.energy_j is None and s.energy_source is None  # neither counter nor power
        assert s.sm_util == pytest.approx(0.97)
    assert c.stats[("nvml_errors", "power_w", "not_supported")] == 2  # energy + power
    assert c.stats[("nvml_errors", "mem_used_bytes", "not_supported")] == 1


def test_transient_error_is_counted_each_time_and_recovers(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    c = collector_for(nvml, tmp_path)
    errors = nvml.devices[0].doc.setdefault("errors", {})
    errors["nvmlDeviceGetClockInfo"] = "UNKNOWN"
    errors["nvmlGpmMetricsGet"] = "TIMEOUT"
    for k in range(1, 3):
        s = step(nvml, c, T0 + k)[0]
        assert s.sm_clock_mhz is None and s.tensor_active is None and s.fp32_active is None
    assert c.stats[("nvml_errors", "sm_clock_mhz", "unknown")] == 2
    assert c.stats[("nvml_errors", "tensor_active", "timeout")] == 2
    errors.clear()
    s = step(nvml, c, T0 + 3)[0]
    assert s.sm_clock_mhz == 1980 and s.tensor_active == pytest.approx(0.384)


def test_samples_carry_the_tenant_of_each_workload(tmp_path: Path) -> None:
    nvml = fake("a100_mig")  # pids 5001 (3g slice), 5002 (1g slice), 5003 (GPU 1)
    proc = tmp_path / "proc"
    write_proc(proc, 5001, {"MFU_WORKLOAD": "llm-train", "SLURM_JOB_ACCOUNT": "physics"})
    write_proc(proc, 5002, {"MFU_WORKLOAD": "llm-eval"})
    write_proc(proc, 5003, {"MFU_WORKLOAD": "notebook"})
    c = NvmlCollector("n1", nvml=nvml,
                      attributor=ProcAttributor(proc, tenants={"llm-*": "team-a"}))
    c.start(T0)
    big, small, whole = step(nvml, c, T0 + 1)
    assert big.tenants == {"llm-train": "physics"}  # Slurm account before configuration
    assert small.tenants == {"llm-eval": "team-a"}  # configured glob
    assert whole.workloads == ["notebook"] and whole.tenants is None  # owner unknown
    good, bad = parse_events(big.to_json(), GpuSample)
    assert bad == [] and good[0].tenants == {"llm-train": "physics"}


def test_lost_gpu_is_dropped_counted_and_rediscovered(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    c = collector_for(nvml, tmp_path, lost_retry_s=5.0)
    assert len(step(nvml, c, T0 + 1)) == 2
    nvml.devices[1].doc["lost"] = True  # Xid 79: fallen off the bus
    samples = step(nvml, c, T0 + 2)
    assert [s.gpu_index for s in samples] == [0]
    assert c.stats[("gpu_lost",)] == 1
    for k in range(3, 9):
        assert [s.gpu_index for s in step(nvml, c, T0 + k)] == [0]
    assert c.stats[("gpu_lost",)] == 1  # not re-counted every interval
    assert c.stats[("gpu_lost_at_discovery",)] >= 1  # the retry still saw it lost
    nvml.devices[1].doc["lost"] = False  # reset done
    indexes = set()
    for k in range(9, 16):
        indexes |= {s.gpu_index for s in step(nvml, c, T0 + k)}
    assert indexes == {0, 1}


def test_error_during_rediscovery_keeps_sampling_the_gpu(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    c = collector_for(nvml, tmp_path, rediscover_s=2.0)
    step(nvml, c, T0 + 1)
    nvml.devices[1].doc.setdefault("errors", {})["nvmlDeviceGetName"] = "TIMEOUT"
    for k in range(2, 6):
        assert [s.gpu_index for s in step(nvml, c, T0 + k)] == [0, 1]
    assert c.stats[("discovery_errors", "timeout")] >= 1


def test_driver_reinitialized_after_it_went_away(tmp_path: Path) -> None:
    nvml = fake("h100_sxm")
    c = collector_for(nvml, tmp_path, lost_retry_s=2.0)
    step(nvml, c, T0 + 1)
    nvml.initialized = False  # driver reloaded under us
    assert step(nvml, c, T0 + 2) == []
    assert c.stats[("nvml_reinit",)] == 1
    got = [len(step(nvml, c, T0 + k)) for k in range(3, 7)]
    assert got[-1] == 2 and nvml.init_calls >= 2


def test_old_driver_fallbacks_and_locked_application_clock(tmp_path: Path) -> None:
    nvml = fake("l40s_old_driver")
    c = collector_for(nvml, tmp_path)
    for k in range(1, 3):
        s = step(nvml, c, T0 + k)[0]
    assert s.throttle_reasons == 4  # from ...ThrottleReasons
    assert s.power_w == pytest.approx(251.0)  # instantaneous reading
    assert s.max_sm_clock_mhz == 2100  # the locked applications clock, not 2520
    assert s.tensor_active is None and s.mig_profile is None
    assert c.stats[("nvml_errors", "throttle_reasons", "function_not_found")] == 1


def test_event_ids_are_unique_per_device_and_interval(tmp_path: Path) -> None:
    nvml = FakeNvml(node_document(8))
    c = collector_for(nvml, tmp_path)
    ids = [s.event_id for k in range(1, 21) for s in step(nvml, c, T0 + k)]
    assert len(ids) == len(set(ids)) == 160


def test_uninitializable_nvml_raises_at_start() -> None:
    nvml = FakeNvml({"devices": [], "driver_not_loaded": True})
    c = NvmlCollector("n1", nvml=nvml)
    with pytest.raises(fake_nvml.NVMLError):
        c.start(T0)


@pytest.mark.parametrize(("name", "parent", "profile"), [
    ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", None, "1g.10gb"),
    ("NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb", None, "1c.3g.40gb"),
    ("NVIDIA H100 80GB HBM3 3g.40gb", "NVIDIA H100 80GB HBM3", "3g.40gb"),
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", None),
])
def test_mig_profile_from_name(name: str, parent: str | None, profile: str | None) -> None:
    assert mig_profile_from_name(name, parent) == profile


def test_record_writes_what_the_fake_replays() -> None:
    doc = record(fake("a100_mig"), wait=lambda: None)
    replay = FakeNvml(doc)
    assert [d.doc["uuid"] for d in replay.devices] == [d["uuid"] for d in doc["devices"]]
    mig = doc["devices"][0]["mig"]
    assert mig["devices"][0]["name"].endswith("MIG 3g.40gb")
    assert mig["devices"][0]["gpu_instance_id"] == 2
    assert doc["devices"][0]["errors"]["nvmlDeviceGetUtilizationRates"] == "NOT_SUPPORTED"
    assert doc["devices"][1]["processes"] == [{"pid": 5003, "used_memory": 59000000000}]
    assert doc["devices"][0]["gpm"] == {"supported": False}


def test_record_measures_gpm_between_two_samples() -> None:
    for name in ("h100_sxm", "h100_mig"):
        source = fake(name)
        doc = record(source, wait=lambda source=source: source.advance(1.0))
        replay = FakeNvml(doc)
        original = source.devices[0].doc["gpm"]
        assert replay.devices[0].doc["gpm"]["supported"] is True
        if name == "h100_sxm":
            assert doc["devices"][0]["gpm"]["metrics"] == original["metrics"] == {
                "5": 38.4, "2": 95.1, "10": 40.2, "13": 1.6, "12": 7.3, "11": 0.0}
        else:  # per GPU instance
            child = doc["devices"][0]["mig"]["devices"][0]
            assert child["gpm"]["metrics"] == {
                "5": 21.5, "2": 77.0, "10": 33.0, "13": 0.8, "12": 4.5, "11": 0.2}
