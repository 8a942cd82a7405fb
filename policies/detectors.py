"""Change detectors for MFU drift (pure; state as small dataclasses that JSON-serialise).

Every detector reads the standardised residual ``z = (x - baseline) / sigma`` of one
window at a time, where ``x`` is the window's MFU, and keeps an alarm flag with
hysteresis, so a caller sees one alarm and one recovery per episode:

- :class:`Cusum`: tabular CUSUM (Page 1954). Down side ``S = max(0, S - z - k)``, up side
  ``S = max(0, S + z - k)``. Alarm when ``S >= h``. After the alarm ``S`` is capped at
  ``recover_h`` and recovery is announced when it drains back to 0, i.e. after the
  process has been near the baseline for about ``recover_h / k`` windows. With known
  sigma, the default ``k = 0.5, h = 12`` gives an in-control average run length of
  ~1e6 windows (Siegmund's approximation) and flags a 2-sigma drop in ~8.6 windows,
  a 2.5-sigma drop in ~6.5. With sigma and baseline estimated from the data, the
  measured figures are in tests/unit/test_policies_detectors.py.
- :class:`Ewma`: EWMA control chart (Roberts 1959), ``e = lam*z + (1-lam)*e``; alarm
  when ``|e| > L * sqrt(lam/(2-lam))`` on the watched side, recovery when back inside
  ``recover_L`` times that.

:class:`NoiseEstimator` learns the baseline (mean of the first ``baseline_windows``
windows) and sigma from the average moving range ``|x_t - x_{t-1}| / d2`` (Shewhart's
individuals chart), which a level shift barely disturbs, unlike the sample standard
deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Direction = Literal["down", "up", "both"]

# E|X1 - X2| = d2 * sigma for independent normal X (d2 = 2/sqrt(pi)).
D2 = 2.0 / math.sqrt(math.pi)
# Upper control limit of a moving-range chart is D4 * mean range; a larger range is a
# level jump or an outlier, and is clipped so it does not inflate sigma.
D4 = 3.267
# After warm-up, sigma follows slow changes in noise with this EWMA weight.
NOISE_ALPHA = 0.01


@dataclass
class NoiseEstimator:
    """Baseline level and noise sigma of a stream of MFU values (MFU units)."""

    n: int = 0
    prev: float | None = None
    mean_range: float = 0.0
    n_ranges: int = 0
    baseline_mean: float = 0.0

    def update(self, x: float, warmup: int, baseline_windows: int) -> None:
        """Add one observation. The first ``warmup`` values set the initial moving-range
        average; the first ``baseline_windows`` values the learned baseline (their mean,
        frozen afterwards: a baseline that kept learning would absorb a slow drift)."""
        if self.prev is not None:
            r = abs(x - self.prev)
            if self.n < warmup:
                self.mean_range += (r - self.mean_range) / (self.n_ranges + 1)
            else:
                r = min(r, D4 * self.mean_range) if self.mean_range > 0 else r
                self.mean_range += NOISE_ALPHA * (r - self.mean_range)
            self.n_ranges += 1
        if self.n < baseline_windows:
            self.baseline_mean += (x - self.baseline_mean) / (self.n + 1)
        self.n += 1
        self.prev = x

    def ready(self, warmup: int) -> bool:
        return self.n >= warmup

    @property
    def sigma(self) -> float | None:
        """Estimated noise standard deviation (MFU units), None before two values."""
        return self.mean_range / D2 if self.n_ranges else None


@dataclass
class Cusum:
    """Two one-sided CUSUM statistics (in sigma units) and their alarm flags."""

    low: float = 0.0
    high: float = 0.0
    alarm_low: bool = False
    alarm_high: bool = False

    def update(self, z: float, k: float, h: float, recover_h: float, direction: Direction) -> None:
        if direction in ("down", "both"):
            self.low, self.alarm_low = _cusum_side(self.low, -z, k, h, recover_h, self.alarm_low)
        if direction in ("up", "both"):
            self.high, self.alarm_high = _cusum_side(self.high, z, k, h, recover_h, self.alarm_high)

    @property
    def alarmed(self) -> bool:
        return self.alarm_low or self.alarm_high

    def neutral(self, direction: Direction) -> bool:
        """True where no evidence of a shift is accumulating on the watched side(s)."""
        low_ok = self.low == 0.0 or direction == "up"
        high_ok = self.high == 0.0 or direction == "down"
        return low_ok and high_ok

    @property
    def statistic(self) -> float:
        return max(self.low, self.high)


def _cusum_side(
    s: float, y: float, k: float, h: float, recover_h: float, alarm: bool
) -> tuple[float, bool]:
    s = max(0.0, s + y - k)
    if not alarm and s >= h:
        alarm = True
    if alarm:
        s = min(s, recover_h)
        if s == 0.0:
            alarm = False
    return s, alarm


@dataclass
class Ewma:
    """EWMA of z (sigma units) and its alarm flags."""

    e: float = 0.0
    alarm_low: bool = False
    alarm_high: bool = False

    def update(
        self, z: float, lam: float, limit: float, recover_limit: float, direction: Direction
    ) -> None:
        """``limit`` and ``recover_limit`` are in units of z (already multiplied by the
        chart's asymptotic standard deviation)."""
        self.e = lam * z + (1.0 - lam) * self.e
        if direction in ("down", "both"):
            if not self.alarm_low and self.e < -limit:
                self.alarm_low = True
            elif self.alarm_low and self.e > -recover_limit:
                self.alarm_low = False
        if direction in ("up", "both"):
            if not self.alarm_high and self.e > limit:
                self.alarm_high = True
            elif self.alarm_high and self.e < recover_limit:
                self.alarm_high = False

    @property
    def alarmed(self) -> bool:
        return self.alarm_low or self.alarm_high

    def neutral(self, direction: Direction) -> bool:
        low_ok = self.e >= 0.0 or direction == "up"
        high_ok = self.e <= 0.0 or direction == "down"
        return low_ok and high_ok

    @property
    def statistic(self) -> float:
        return self.e


def ewma_sd(lam: float) -> float:
    """Asymptotic standard deviation of the EWMA of unit-variance white noise."""
    return math.sqrt(lam / (2.0 - lam))


def cusum_arl0(k: float, h: float) -> float:
    """Siegmund's approximation of a one-sided CUSUM's in-control average run length
    (windows between false alarms) for unit-normal z."""
    b = h + 1.166
    return (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)


def cusum_delay(k: float, h: float, shift: float) -> float:
    """Siegmund's approximation of the windows a one-sided CUSUM needs to flag a shift
    of ``shift`` sigma (``shift > k``)."""
    d = shift - k
    b = h + 1.166
    return (math.exp(-2 * d * b) + 2 * d * b - 1) / (2 * d * d)
