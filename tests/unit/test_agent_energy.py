"""Energy per interval (``gpu_sample/1.energy_j``): the NVML energy counter's step, with
power x interval where there is no trustworthy step; never a joule counted twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.nvml import MAX_PLAUSIBLE_POWER_W, NvmlCollector, energy_delta_mj
from mfu.events import MAX_INTERVAL_S, GpuSample
from mfu_testing.fake_nvml import ENERGY_COUNTER_MODULUS_MJ, FakeNvml

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1_700_000_000.0
# nvml_h100_sxm GPU 0: 690 112 mW, counter 9 182 736 450 mJ at the start
H100_MW = 690_112


def fake(name: str) -> FakeNvml:
    return FakeNvml.from_json(FIXTURES / f"nvml_{name}.json")


def started(nvml: FakeNvml, ts: float = T0) -> NvmlCollector:
    c = NvmlCollector("n1", nvml=nvml)
    c.start(ts)
    return c


def gpu0(samples: list[GpuSample]) -> GpuSample:
    return next(s for s in samples if s.gpu_index == 0)


def test_energy_delta_is_the_counter_step_modulo_2_64() -> None:
    assert energy_delta_mj(1_000, 691_112, 1.0) == 690_112
    # wrap: 1 000 mJ below the top, then 5 000 past zero = 6 000 mJ in 1 s (6 W)
    assert energy_delta_mj(ENERGY_COUNTER_MODULUS_MJ - 1_000, 5_000, 1.0) == 6_000
    # backwards by 1 mJ is a reset, not a wrap of 2^64 - 1 mJ
    assert energy_delta_mj(5_000, 4_999, 1.0) is None
    # 5 kW over 2 s = 10 000 000 mJ is the most trusted; 1 mJ more is not energy
    limit_mj = int(MAX_PLAUSIBLE_POWER_W * 2.0 * 1000)
    assert limit_mj == 10_000_000
    assert energy_delta_mj(0, limit_mj, 2.0) == limit_mj
    assert energy_delta_mj(0, limit_mj + 1, 2.0) is None
    assert energy_delta_mj(0, 0, 0.0) is None


def test_first_interval_after_start_is_measured_by_the_counter() -> None:
    nvml = fake("h100_sxm")
    c = started(nvml, T0 + 0.25)  # the counter is read at start
    nvml.advance(0.75)
    # power drops after the interval: the counter has the interval's energy, an
    # instantaneous reading would not
    nvml.devices[0].doc["power_mw"] = 100_000
    s = gpu0(c.collect(T0 + 1))
    # 690 112 mW x 0.75 s = 517 584 mJ = 517.584 J
    assert (s.energy_j, s.energy_source) == (517.584, "counter")
    assert s.power_w == pytest.approx(517.584 / 0.75)  # mean power = 690.112 W
    assert s.energy_j == pytest.approx(s.power_w * s.interval_s)
    assert ("energy_fallbacks", "no_reading_at_interval_start") not in c.stats


def test_agent_restart_does_not_count_any_joule_twice() -> None:
    nvml = fake("h100_sxm")
    first = started(nvml, T0)
    samples = []
    for k in (1, 2, 3):
        nvml.advance(1.0)
        samples.append(gpu0(first.collect(T0 + k)))
    first.close()
    nvml.advance(0.5)  # agent down from T0+3 to T0+3.5: nobody measures this
    second = started(nvml, T0 + 3.5)
    for step_s, ts in ((0.5, T0 + 4), (1.0, T0 + 5)):
        nvml.advance(step_s)
        samples.append(gpu0(second.collect(ts)))
    assert [s.energy_source for s in samples] == ["counter"] * 5
    assert [s.interval_s for s in samples] == [1.0, 1.0, 1.0, 0.5, 1.0]
    # 690.112 J/s x (1 + 1 + 1 + 0.5 + 1) s = 690.112 x 4.5 = 3105.504 J reported
    assert sum(s.energy_j for s in samples) == pytest.approx(3105.504, abs=1e-9)
    # the counter rose 690.112 x 5 = 3450.56 J; the 0.5 s outage (345.056 J) is the gap
    counter_rise_j = (nvml.devices[0].energy_mj - 9_182_736_450) / 1000
    assert counter_rise_j == pytest.approx(3450.56, abs=1e-9)
    assert counter_rise_j - sum(s.energy_j for s in samples) == pytest.approx(345.056)


def test_counter_wrap_is_counted_once_across_2_64() -> None:
    # nvml_h200: 655 360 mW, counter starts 1 000 000 mJ below 2^64
    nvml = fake("h200")
    c = started(nvml)
    nvml.advance(1.0)
    one = c.collect(T0 + 1)[0]  # 2^64 - 1 000 000 -> 2^64 - 344 640
    nvml.advance(1.0)
    two = c.collect(T0 + 2)[0]  # 2^64 - 344 640 -> 310 720 (wrapped)
    assert nvml.devices[0].energy_mj == 310_720
    # 344 640 mJ up to the wrap + 310 720 after it = 655 360 mJ = 655.36 J
    assert (one.energy_j, one.energy_source) == (655.36, "counter")
    assert (two.energy_j, two.energy_source) == (655.36, "counter")
    assert two.power_w == pytest.approx(655.36)
    assert not any(k[0] == "energy_fallbacks" for k in c.stats)


def test_counter_going_backwards_falls_back_to_power_then_resumes() -> None:
    nvml = fake("h100_sxm")
    c = started(nvml)
    nvml.advance(1.0)
    assert gpu0(c.collect(T0 + 1)).energy_source == "counter"
    nvml.advance(1.0)
    nvml.devices[0].energy_mj = 5_000  # GPU reset: the counter starts again near zero
    nvml.devices[0].doc["power_mw"] = 500_000  # and the instantaneous power reads 500 W
    reset = gpu0(c.collect(T0 + 2))
    # power x interval = 500 W x 1 s = 500 J, flagged as such
    assert (reset.energy_j, reset.energy_source, reset.power_w) == (500.0, "power", 500.0)
    assert c.stats[("energy_fallbacks", "counter_backwards")] == 1
    nvml.advance(1.0)
    after = gpu0(c.collect(T0 + 3))
    # from the reading at the reset: 5 000 -> 505 000 mJ = 500 J, measured again
    assert (after.energy_j, after.energy_source) == (500.0, "counter")


def test_implausible_jump_is_not_taken_as_energy() -> None:
    nvml = fake("h100_sxm")
    c = started(nvml)
    nvml.advance(1.0)
    nvml.devices[0].energy_mj += 10_000_000  # +10 kJ in 1 s would be 10.7 kW
    s = gpu0(c.collect(T0 + 1))
    # instantaneous 690.112 W x 1 s
    assert (s.energy_j, s.energy_source) == (690.112, "power")
    assert c.stats[("energy_fallbacks", "counter_implausible")] == 1


def test_no_counter_means_power_times_interval() -> None:
    nvml = fake("l40s_old_driver")  # no nvmlDeviceGetTotalEnergyConsumption
    c = started(nvml)
    for k in (1, 2):
        nvml.advance(1.0)
        s = c.collect(T0 + k)[0]
        # 251 000 mW = 251 W x 1 s
        assert (s.energy_j, s.energy_source, s.power_w) == (251.0, "power", 251.0)
    assert c.stats[("energy_fallbacks", "no_counter")] == 2


def test_a_stall_longer_than_an_interval_is_not_billed_to_one_sample() -> None:
    nvml = fake("h100_sxm")
    c = started(nvml)
    nvml.advance(1.0)
    c.collect(T0 + 1)
    nvml.advance(MAX_INTERVAL_S + 10)  # the agent was stopped (SIGSTOP) for an hour
    s = gpu0(c.collect(T0 + 1 + MAX_INTERVAL_S + 10))
    # the sample claims the nominal 1 s: 690.112 W x 1 s, not the hour's counter step
    assert s.interval_s == 1.0
    assert (s.energy_j, s.energy_source) == (690.112, "power")
    assert c.stats[("energy_fallbacks", "no_reading_at_interval_start")] == 2  # both GPUs


def test_after_nvml_reinit_the_first_interval_is_estimated() -> None:
    nvml = fake("h100_sxm")
    c = NvmlCollector("n1", nvml=nvml, lost_retry_s=1.0)
    c.start(T0)
    nvml.advance(1.0)
    c.collect(T0 + 1)
    nvml.initialized = False  # driver reloaded: the counter restarts from its load
    nvml.devices[0].energy_mj = 0
    nvml.advance(1.0)
    assert c.collect(T0 + 2) == []
    nvml.advance(1.0)
    s = gpu0(c.collect(T0 + 3))  # re-discovered now: no reading at T0+2
    assert (s.energy_j, s.energy_source) == (690.112, "power")
    nvml.advance(1.0)
    s = gpu0(c.collect(T0 + 4))
    assert (s.energy_j, s.energy_source) == (690.112, "counter")


def test_mig_slices_carry_no_energy() -> None:
    nvml = fake("h100_mig")
    c = started(nvml)
    nvml.advance(1.0)
    for s in c.collect(T0 + 1):
        assert s.mig_profile is not None
        assert (s.energy_j, s.energy_source, s.power_w) == (None, None, None)
