"""Pipe counters of GPUs without GPM (A100) from DCGM profiling fields, through a fake
DCGM reader over the recorded document; and what they get without DCGM."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.dcgm import DcgmPipeCounters, load_dcgm_reader
from agents.nvml import NvmlCollector
from mfu_testing.fake_nvml import FakeDcgmReader, FakeNvml

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1_700_000_000.0
A100_WHOLE = "GPU-a1b2c3d4-0000-4a00-8000-000000000a11"


def fake(name: str) -> FakeNvml:
    return FakeNvml.from_json(FIXTURES / f"nvml_{name}.json")


def pipes(s) -> tuple:
    return (s.tensor_active, s.dram_active, s.fp16_active, s.fp32_active, s.fp64_active)


def test_a100_whole_gpu_gets_dcgm_counters_mig_slices_stay_null() -> None:
    nvml = fake("a100_mig")
    reader = FakeDcgmReader(nvml)
    c = NvmlCollector("n1", nvml=nvml, pipe_counters=DcgmPipeCounters(lambda: reader))
    c.start(T0)
    nvml.advance(1.0)
    big, small, whole = c.collect(T0 + 1)
    # recorded DCGM_FI_PROF_* of GPU 1: tensor 1004 = 0.412, DRAM 1005 = 0.287,
    # FP16 1008 = 0.009, FP32 1007 = 0.051, FP64 1006 = 0.0
    assert whole.gpu_uuid == A100_WHOLE
    assert pipes(whole) == (0.412, 0.287, 0.009, 0.051, 0.0)
    assert pipes(big) == pipes(small) == (None,) * 5  # per-instance profiling not read
    assert c.stats[("pipe_counters", "dcgm")] == 1
    assert reader.reads == 1  # one read per interval, not per GPU


def test_without_dcgm_a100_counters_are_null_not_zero() -> None:
    nvml = fake("a100_mig")
    c = NvmlCollector("n1", nvml=nvml)  # no pipe-counter source
    c.start(T0)
    nvml.advance(1.0)
    whole = c.collect(T0 + 1)[-1]
    assert pipes(whole) == (None,) * 5
    assert ("pipe_counters", "dcgm") not in c.stats


def test_gpm_gpus_never_ask_dcgm() -> None:
    nvml = fake("h100_sxm")
    nvml.devices[0].doc["dcgm"] = {"1004": 0.99}  # would be wrong if it were used
    reader = FakeDcgmReader(nvml)
    c = NvmlCollector("n1", nvml=nvml, pipe_counters=DcgmPipeCounters(lambda: reader))
    c.start(T0)
    for k in (1, 2):
        nvml.advance(1.0)
        busy = c.collect(T0 + k)[0]
    assert busy.tensor_active == pytest.approx(0.384)  # GPM's 38.4 %
    assert reader.reads == 0  # every GPU has GPM: DCGM is not even connected
    assert c.stats[("pipe_counters", "gpm")] == 4  # 2 intervals x 2 GPUs (marked at start)


def test_dcgm_read_error_gives_null_counters_and_reconnects_later() -> None:
    nvml = fake("a100_mig")
    reader = FakeDcgmReader(nvml)
    now = [0.0]
    made = []

    def factory() -> FakeDcgmReader:
        made.append(1)
        return reader

    source = DcgmPipeCounters(factory, retry_s=30.0, clock=lambda: now[0])
    c = NvmlCollector("n1", nvml=nvml, pipe_counters=source)
    c.start(T0)
    reader.fail = RuntimeError("DCGM_ST_CONNECTION_NOT_VALID")
    nvml.advance(1.0)
    assert pipes(c.collect(T0 + 1)[-1]) == (None,) * 5
    assert source.stats[("dcgm_errors", "read")] == 1
    now[0] = 10.0  # before the retry time: not reconnected
    nvml.advance(1.0)
    assert pipes(c.collect(T0 + 2)[-1]) == (None,) * 5
    now[0] = 31.0
    nvml.advance(1.0)
    assert c.collect(T0 + 3)[-1].tensor_active == 0.412
    assert len(made) == 2


def test_missing_bindings_are_tried_once() -> None:
    calls = []

    def factory() -> None:
        calls.append(1)
        raise ImportError("No module named 'DcgmReader'")

    source = DcgmPipeCounters(factory, retry_s=0.0)
    assert source.read() == {} and source.read() == {}
    assert len(calls) == 1 and source.stats[("dcgm_errors", "no_bindings")] == 1


def test_load_dcgm_reader_without_bindings_raises_import_error(tmp_path: Path) -> None:
    with pytest.raises(ImportError):
        load_dcgm_reader(1.0, bindings=str(tmp_path))  # an empty directory


def test_values_are_clamped_and_blank_fields_skipped() -> None:
    class Reader:
        def GetLatestGpuValuesAsFieldIdDict(self):
            # 1.0000002 is rounding above full; NaN and strings are not ratios; GPU 7
            # has no UUID and cannot be matched to an NVML device
            return {0: {54: "GPU-x", 1004: 1.0000002, 1005: float("nan"), 1007: "N/A"},
                    7: {1004: 0.5}}

    assert DcgmPipeCounters(Reader).read() == {"GPU-x": {"tensor_active": 1.0}}
