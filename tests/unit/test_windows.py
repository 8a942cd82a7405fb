"""Window math: boundaries, pro-rata splits (exact and property-based)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfu.windows import split_interval, window_start, windows_for_instant

T0 = 1_700_000_000.0


def test_window_start_and_instants() -> None:
    assert window_start(T0 + 9.999, 10) == T0
    assert window_start(T0 + 10, 10) == T0 + 10
    assert windows_for_instant(T0 + 7, 10) == [T0]
    assert windows_for_instant(T0 + 7, 10, 5) == [T0, T0 + 5]
    assert windows_for_instant(T0 + 5, 10, 5) == [T0, T0 + 5]


def test_split_crossing_boundary() -> None:
    assert list(split_interval(T0 + 8, T0 + 13, 10)) == [(T0, 2.0, 0.4), (T0 + 10, 3.0, 0.6)]
    assert list(split_interval(T0 + 2, T0 + 2, 10)) == []


def test_split_spanning_many_windows() -> None:
    parts = list(split_interval(T0 + 5, T0 + 35, 10))
    assert [p[0] for p in parts] == [T0, T0 + 10, T0 + 20, T0 + 30]
    assert [p[1] for p in parts] == [5.0, 10.0, 10.0, 5.0]


times = st.floats(min_value=T0, max_value=T0 + 1e5, allow_nan=False)


@given(start=times, length=st.floats(min_value=1e-3, max_value=500.0),
       size=st.sampled_from([1.0, 5.0, 10.0, 60.0]))
def test_tumbling_fractions_sum_to_one_and_stay_inside(start: float, length: float,
                                                        size: float) -> None:
    parts = list(split_interval(start, start + length, size))
    assert sum(f for _, _, f in parts) == pytest.approx(1.0)
    assert sum(o for _, o, _ in parts) == pytest.approx((start + length) - start)
    for ws, overlap, _ in parts:
        assert ws % size == 0
        assert 0 < overlap <= size + 1e-9
        assert ws < start + length and ws + size > start


@given(start=times, length=st.floats(min_value=1e-3, max_value=100.0))
def test_hopping_fractions_sum_to_windows_per_instant(start: float, length: float) -> None:
    parts = list(split_interval(start, start + length, 10.0, 2.0))
    assert sum(f for _, _, f in parts) == pytest.approx(5.0)  # size / hop
