"""Drift detectors: exact steps, and measured false-alarm rate / detection delay.

The statistical tests are seeded (deterministic) and print what they measured; run
``pytest -s tests/unit/test_policies_detectors.py`` to see the figures.
"""

from __future__ import annotations

import math
import random
import statistics

import pytest

from mfu.events import MfuWindow
from policies.detectors import D2, D4, Cusum, Ewma, NoiseEstimator, cusum_arl0, cusum_delay
from policies.engine import Engine
from policies.rules import parse_rules

T0 = 1_700_000_000.0


def test_cusum_down_side_alarm_cap_and_recovery_exact() -> None:
    c = Cusum()
    trace = []
    for z in (-1.5, -1.5, -1.5, -1.5):
        c.update(z, k=0.5, h=4.0, recover_h=2.0, direction="down")
        trace.append((c.low, c.alarmed))
    # S = 1, 2, 3, 4 -> alarm at S >= h, then capped at recover_h.
    assert trace == [(1.0, False), (2.0, False), (3.0, False), (2.0, True)]
    c.update(0.0, 0.5, 4.0, 2.0, "down")
    assert (c.low, c.alarmed) == (1.5, True)
    c.update(1.0, 0.5, 4.0, 2.0, "down")  # 1.5 - 1 - 0.5 = 0 -> recovered
    assert (c.low, c.alarmed) == (0.0, False)
    assert c.neutral("down")


def test_cusum_direction() -> None:
    up = Cusum()
    for _ in range(10):
        up.update(-3.0, 0.5, 4.0, 2.0, "up")
    assert not up.alarmed and up.low == 0.0 and up.neutral("up")
    up.update(5.0, 0.5, 4.0, 2.0, "up")
    assert up.alarm_high and up.high == 2.0
    both = Cusum()
    both.update(-5.0, 0.5, 4.0, 2.0, "both")
    assert both.alarm_low and not both.alarm_high


def test_ewma_exact() -> None:
    e = Ewma()
    e.update(-2.0, lam=0.5, limit=1.0, recover_limit=0.25, direction="down")
    assert (e.e, e.alarmed) == (-1.0, False)  # not beyond the limit
    e.update(-2.0, 0.5, 1.0, 0.25, "down")
    assert (e.e, e.alarmed) == (-1.5, True)
    e.update(1.0, 0.5, 1.0, 0.25, "down")
    assert (e.e, e.alarmed) == (-0.25, True)  # on the recovery band's edge: still alarmed
    e.update(1.0, 0.5, 1.0, 0.25, "down")
    assert (e.e, e.alarmed) == (0.375, False)


def test_noise_estimator_moving_range_and_baseline() -> None:
    n = NoiseEstimator()
    for x in (0.4, 0.5, 0.4, 0.5):
        n.update(x, warmup=4, baseline_windows=4)
    assert n.ready(4)
    assert n.sigma == pytest.approx(0.1 / D2)
    assert n.baseline_mean == pytest.approx(0.45)
    # After warm-up a jump is clipped at D4 x mean range and folded in slowly; the
    # baseline is frozen.
    n.update(1.5, warmup=4, baseline_windows=4)
    assert n.mean_range == pytest.approx(0.1 + 0.01 * (D4 * 0.1 - 0.1))
    assert n.baseline_mean == pytest.approx(0.45)


def test_siegmund_approximations_match_published_values() -> None:
    # Montgomery, Introduction to SQC, table 9.3: k=0.5, h=5 -> ARL0 ~ 930 (exact);
    # Siegmund gives 938; ARL1 for a 1-sigma shift: 10.4.
    assert cusum_arl0(0.5, 5.0) == pytest.approx(938, rel=0.01)
    assert cusum_delay(0.5, 5.0, 1.0) == pytest.approx(10.4, rel=0.02)


# --- the drift rule over long seeded runs ---------------------------------------------

NOISE_SIGMA = 0.02
LEVEL = 0.45
RULES = """
rules:
  - id: drift
    kind: drift
    scope: workload
    baseline: {baseline}
    direction: down
    detector: {{method: cusum, k: 0.5, h: 12}}
    warmup_windows: 20
    min_shift: 0.05
"""


def _window(i: int, mfu: float, expected: float | None) -> MfuWindow:
    # model_construct: these values are valid by construction and the run is long.
    return MfuWindow.model_construct(
        schema_name="mfu_window/1",
        event_id=str(i),
        scope="workload",
        key="job",
        window_start=T0 + 10 * i,
        window_end=T0 + 10 * i + 10,
        mfu=mfu,
        expected_mfu=expected,
        achieved_flops=0.0,
        peak_flops=1.0,
        gpu_seconds=10.0,
        gpus=1,
        phase=None,
        model=None,
        gpu_model=None,
    )


def _run(eng: Engine, values: list[float], expected: float | None) -> list[tuple[int, str]]:
    state = None
    out = []
    for i, x in enumerate(values):
        result = eng.process(_window(i, x, expected), state)
        state = result.state
        out.extend((i, e.data["status"]) for e in result.events)
    return out


@pytest.mark.parametrize("baseline,expected", [("declared", LEVEL), ("learned", None)])
def test_stationary_noise_raises_no_drift(baseline: str, expected: float | None) -> None:
    """False alarms on stationary N(0.45, 0.02) MFU: 10 seeded streams x 10,000 windows."""
    eng = Engine(parse_rules(RULES.format(baseline=baseline)))
    streams, n = 10, 10_000
    alarms = 0
    for seed in range(streams):
        rnd = random.Random(seed)
        values = [max(0.0, rnd.gauss(LEVEL, NOISE_SIGMA)) for _ in range(n)]
        alarms += sum(1 for _, s in _run(eng, values, expected) if s == "open")
    rate = alarms / (streams * n)
    print(
        f"\n[drift/{baseline}] false alarms: {alarms} in {streams * n} windows ({rate:.1e}/window)"
    )
    assert alarms == 0


@pytest.mark.parametrize("baseline,expected", [("declared", LEVEL), ("learned", None)])
def test_step_drop_detected_quickly_and_recovery_announced(
    baseline: str, expected: float | None
) -> None:
    """A step drop of 0.05 MFU (2.5 sigma, -11%) at window 300, back at window 500."""
    eng = Engine(parse_rules(RULES.format(baseline=baseline)))
    drop, start, end = 0.05, 300, 500
    delays, recoveries = [], []
    for seed in range(100):
        rnd = random.Random(10_000 + seed)
        values = [
            LEVEL - (drop if start <= i < end else 0.0) + rnd.gauss(0.0, NOISE_SIGMA)
            for i in range(700)
        ]
        events = _run(eng, values, expected)
        opens = [i for i, s in events if s == "open"]
        resolves = [i for i, s in events if s == "resolved"]
        assert len(opens) == 1 and len(resolves) == 1, events
        delays.append(opens[0] - start + 1)  # windows after the change, inclusive
        recoveries.append(resolves[0] - end + 1)
    delays.sort()
    recoveries.sort()
    p95 = delays[94]
    print(
        f"\n[drift/{baseline}] 2.5-sigma drop: detection delay mean "
        f"{statistics.mean(delays):.1f}, median {delays[50]}, p95 {p95}, max {delays[-1]} "
        f"windows; recovery after return mean {statistics.mean(recoveries):.1f}, "
        f"p95 {recoveries[94]}, max {recoveries[-1]} windows"
    )
    assert min(delays) >= 1  # never before the change
    assert delays[-1] <= 12 and statistics.mean(delays) <= 8
    # Recovery drains recover_h = h/2 = 6 at ~k per window: ~11 windows, longer when the
    # noise keeps the statistic up.
    assert statistics.mean(recoveries) <= 15 and recoveries[-1] <= 60


def test_large_drop_detected_in_one_window() -> None:
    eng = Engine(parse_rules(RULES.format(baseline="declared")))
    rnd = random.Random(7)
    values = [LEVEL + rnd.gauss(0, NOISE_SIGMA) for _ in range(100)] + [0.1] * 5
    assert _run(eng, values, LEVEL) == [(100, "open")]


def test_min_shift_ignores_statistically_real_but_tiny_drops() -> None:
    """With sigma 0.002 a 2% drop is 4.5 sigma, but below min_shift (5%): no alarm."""
    eng = Engine(parse_rules(RULES.format(baseline="declared")))
    rnd = random.Random(3)
    values = [LEVEL * (0.98 if i >= 200 else 1.0) + rnd.gauss(0, 0.002) for i in range(2000)]
    assert _run(eng, values, LEVEL) == []
    values = [LEVEL * (0.90 if i >= 200 else 1.0) + rnd.gauss(0, 0.002) for i in range(300)]
    assert [s for _, s in _run(eng, values, LEVEL)] == ["open"]
    assert math.isfinite(cusum_arl0(0.5, 10.0))


def test_declared_baseline_detects_early_drop_after_short_warmup() -> None:
    """A job declaring its expected MFU is watched after declared_warmup_windows (5), so a
    30% drop at window 7 (as in the demo) is caught within three windows."""
    eng = Engine(parse_rules(RULES.format(baseline="declared")))
    rnd = random.Random(11)
    values = [LEVEL * (0.7 if i >= 7 else 1.0) + rnd.gauss(0, NOISE_SIGMA) for i in range(20)]
    opens = [i for i, s in _run(eng, values, LEVEL) if s == "open"]
    assert len(opens) == 1 and 7 <= opens[0] <= 9


def test_short_warmup_raises_no_false_alarm_early_on() -> None:
    """The short warm-up's rough noise estimate: 2,000 fresh 30-window streams, no alarm."""
    eng = Engine(parse_rules(RULES.format(baseline="declared")))
    alarms = 0
    for seed in range(2000):
        rnd = random.Random(50_000 + seed)
        values = [max(0.0, rnd.gauss(LEVEL, NOISE_SIGMA)) for _ in range(30)]
        alarms += sum(1 for _, s in _run(eng, values, LEVEL) if s == "open")
    assert alarms == 0
