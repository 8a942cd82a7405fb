"""The useful-work ledger of a known stream of window points, recomputed by hand.

Windows of 10 s. Prices: H100 2.40 USD/GPU-h, A100 (glob) 1.20, "Other GPU" unpriced.
Reference MFU 0.4.

  point  tenant  key      model       gpu_s  sources (s)                     mfu   mfu_est  TFLOP/s  est TFLOP/s  energy_j  tokens
  W1     acme    train-a  H100        80     reported 80                     0.50  0.50     3200     -            56000     1000
  W2     acme    train-a  H100        80     reported 40, idle 20, counters 20  0.25  0.30   1200     400          40000     -
  W3     beta    infer-b  A100        20     engine 10, none 10              0.10  -        30       -            6000      500
  W4     -       mystery  Other GPU   10     none 10                         -     -        -        -            -         -

achieved FLOPs = TFLOP/s x window_s x 1e12: W1 3200 x 10 x 1e12 = 3.2e16 (32 PFLOP),
W2 1.2e16 (12 PFLOP), W3 3e14 (0.3 PFLOP); estimated W2 400 x 10 x 1e12 = 4e15 (4 PFLOP).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfu.config import LedgerSettings
from mfu.events import FlopSources, MfuWindow
from mfu.ledger import (
    COLUMNS,
    NO_TENANT,
    TOTAL,
    LedgerPoint,
    Prices,
    build_ledger,
    row_dict,
    unallocated_row,
)

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
PRICES = Prices(usd_per_gpu_hour={H100: 2.40, "*A100*": 1.20})
T0 = 1_796_000_000.0


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def point(t: float, tags: dict, **fields: float) -> LedgerPoint:
    return LedgerPoint.from_influx(t, tags, {"window_s": 10.0, **fields})


def src(**s: float) -> dict[str, float]:
    return {f"flop_sources_{k}": v for k, v in s.items()}


def stream() -> list[LedgerPoint]:
    wl = {"scope": "workload", "fleet": "f1"}
    return [
        point(T0, {**wl, "key": "train-a", "tenant": "acme", "gpu_model": H100},
              gpu_seconds=80, mfu=0.5, mfu_estimated=0.5, achieved_tflops=3200,
              energy_j=56000, tokens=1000, **src(reported=80, engine=0, idle=0, counters=0, none=0)),
        point(T0 + 10, {**wl, "key": "train-a", "tenant": "acme", "gpu_model": H100},
              gpu_seconds=80, mfu=0.25, mfu_estimated=0.3, achieved_tflops=1200,
              estimated_tflops=400, energy_j=40000,
              **src(reported=40, engine=0, idle=20, counters=20, none=0)),
        point(T0, {**wl, "key": "infer-b", "tenant": "beta", "gpu_model": A100},
              gpu_seconds=20, mfu=0.1, achieved_tflops=30, energy_j=6000, tokens=500,
              **src(engine=10, none=10)),
        point(T0, {**wl, "key": "mystery", "gpu_model": "Other GPU"},
              gpu_seconds=10, **src(none=10)),
        # Capacity: node n1 (10 H100) 80% allocated in both windows, n2 (4 A100) 50%, n3 full.
        point(T0, {"scope": "node", "key": "n1", "gpu_model": H100}, gpu_seconds=100,
              allocation=0.8),
        point(T0 + 10, {"scope": "node", "key": "n1", "gpu_model": H100}, gpu_seconds=100,
              allocation=0.8),
        point(T0, {"scope": "node", "key": "n2", "gpu_model": A100}, gpu_seconds=40,
              allocation=0.5),
        point(T0, {"scope": "node", "key": "n3", "gpu_model": "Other GPU"}, gpu_seconds=10,
              allocation=1.0),
        # The fleet point is not used when node points exist (they price per model).
        point(T0, {"scope": "fleet", "key": "f1", "gpu_model": "mixed"}, gpu_seconds=150,
              allocation=0.1),
    ]


def test_by_tenant_by_hand() -> None:
    led = build_ledger(stream(), PRICES, by="tenant", reference_mfu=0.4)
    rows = {r.group: r for r in led.rows}
    assert [r.group for r in led.rows] == ["acme", "beta", NO_TENANT]  # by cost, unpriced last

    acme = rows["acme"]
    assert acme.windows == 2
    assert acme.allocated_gpu_hours == approx(160 / 3600)
    # known = W1 80 + W2 (reported 40 + idle 20) 60 = 140 s; unknown = W2 counters 20 s
    assert acme.known_gpu_hours == approx(140 / 3600)
    assert acme.idle_gpu_hours == approx(20 / 3600)
    assert acme.unknown_gpu_hours == approx(20 / 3600)
    assert acme.measured_pflop == approx(32 + 12)
    assert acme.estimated_pflop == approx(4)
    # MFU over known seconds: (0.5 x 80 + 0.25 x 60) / 140 = 55 / 140
    assert acme.mfu == approx(55 / 140)
    # mfu_estimated over known + counters: (0.5 x 80 + 0.3 x 80) / 160 = 64 / 160 = 0.4
    assert acme.mfu_estimated == approx(0.4)
    # energy 56000 + 40000 = 96000 J = 96000 / 3.6e6 kWh; FLOPs per J 4.4e16 / 96000
    assert acme.energy_kwh == approx(96000 / 3.6e6)
    assert acme.flops_per_j == approx(4.4e16 / 96000)
    assert acme.tokens == 1000
    # cost 160 s x 2.40 / 3600 = 384 / 3600 USD = known 140 x 2.4 (336) + unknown 20 x 2.4 (48)
    assert acme.cost_usd == approx(384 / 3600)
    assert acme.unknown_usd == approx(48 / 3600)
    # wasted per window: W1 0.5 >= 0.4 -> 0; W2 known 60 s x 2.4 / 3600 = 144/3600 USD
    # x (1 - 0.25 / 0.4 = 0.375) = 54 / 3600
    assert acme.wasted_usd == approx(54 / 3600)
    # $/useful PFLOP-h = (384/3600) / (4.4e16 / 1e15 / 3600 = 44/3600) = 384/44
    assert acme.usd_per_useful_pflop_hour == approx(384 / 44)
    assert acme.unpriced_gpu_hours == 0

    beta = rows["beta"]
    assert beta.allocated_gpu_hours == approx(20 / 3600)
    assert beta.known_gpu_hours == approx(10 / 3600)  # engine 10 s; none 10 s unknown
    assert beta.mfu == approx(0.1)
    assert beta.mfu_estimated is None
    assert beta.measured_pflop == approx(0.3)
    assert beta.estimated_pflop == 0
    assert beta.energy_kwh == approx(6000 / 3.6e6)
    assert beta.tokens == 500
    # 20 s x 1.20 / 3600 = 24/3600; known 12/3600, unknown 12/3600
    assert beta.cost_usd == approx(24 / 3600)
    assert beta.unknown_usd == approx(12 / 3600)
    # wasted 12/3600 x (1 - 0.1/0.4 = 0.75) = 9/3600
    assert beta.wasted_usd == approx(9 / 3600)
    # (24/3600) / (0.3/3600) = 80
    assert beta.usd_per_useful_pflop_hour == approx(80)

    nobody = rows[NO_TENANT]
    assert nobody.allocated_gpu_hours == approx(10 / 3600)
    assert nobody.unpriced_gpu_hours == approx(10 / 3600)
    assert nobody.unpriced_models == ["Other GPU"]
    # unpriced and silent: no cost of any kind, no MFU, no energy (never zeros)
    assert (nobody.cost_usd, nobody.wasted_usd, nobody.unknown_usd) == (None, None, None)
    assert (nobody.mfu, nobody.energy_kwh, nobody.tokens) == (None, None, None)
    assert nobody.usd_per_useful_pflop_hour is None

    total = led.total
    assert total.group == TOTAL
    assert total.allocated_gpu_hours == approx(190 / 3600)
    # MFU over 140 + 10 known seconds: (55 + 0.1 x 10) / 150
    assert total.mfu == approx(56 / 150)
    assert total.cost_usd == approx(408 / 3600)  # 384 + 24, the unpriced 10 s left out
    assert total.wasted_usd == approx(63 / 3600)  # additive: 54 + 9
    assert total.energy_kwh == approx(102000 / 3.6e6)
    # priced FLOPs only: 4.4e16 + 3e14 -> 44.3 PFLOP; (408/3600) / (44.3/3600)
    assert total.usd_per_useful_pflop_hour == approx(408 / 44.3)
    assert total.unpriced_gpu_hours == approx(10 / 3600)

    cap = led.capacity
    assert cap is not None and cap.source_scope == "node"
    # installed 100 + 100 + 40 + 10 = 250 s; unallocated 20 + 20 + 20 + 0 = 60 s
    assert cap.installed_gpu_hours == approx(250 / 3600)
    assert cap.unallocated_gpu_hours == approx(60 / 3600)
    assert cap.allocation == approx(190 / 250)
    # 40 s of H100 x 2.40 + 20 s of A100 x 1.20 = (96 + 24) / 3600
    assert cap.unallocated_usd == approx(120 / 3600)
    assert led.provider_cost_usd() == approx(528 / 3600)
    un = unallocated_row(cap)
    assert un["unallocated_gpu_hours"] == approx(60 / 3600)
    assert un["wasted_usd"] == un["cost_usd"]


def test_groupings_sum_to_the_same_total() -> None:
    by = {g: build_ledger(stream(), PRICES, by=g) for g in ("tenant", "workload", "gpu-model")}
    for led in by.values():
        assert sum(r.cost_usd or 0 for r in led.rows) == approx(408 / 3600)
        assert sum(r.wasted_usd or 0 for r in led.rows) == approx(63 / 3600)
        assert sum(r.measured_pflop for r in led.rows) == approx(44.3)
        assert led.total.model_dump() == by["tenant"].total.model_dump()
    assert {r.group for r in by["workload"].rows} == {"train-a", "infer-b", "mystery"}
    assert {r.group for r in by["gpu-model"].rows} == {H100, A100, "Other GPU"}


def test_replayed_window_counts_once_and_hopping_windows_are_weighted() -> None:
    pts = stream()
    replay = pts[0].model_copy(update={"gpu_model": H100})  # the same window written again
    led = build_ledger([*pts, replay], PRICES)
    assert led.total.model_dump() == build_ledger(pts, PRICES).total.model_dump()
    # Hopping 10 s windows every 5 s: each window stands for 5/10 of itself.
    half = build_ledger(pts, PRICES, hop_s=5.0)
    assert half.total.allocated_gpu_hours == approx(95 / 3600)
    assert half.total.energy_kwh == approx(51000 / 3.6e6)
    assert half.total.mfu == approx(56 / 150)  # a ratio: unchanged


def test_points_written_before_section_8() -> None:
    """No flop_sources fields: MFU was over every GPU-second, all of them known."""
    p = point(T0, {"scope": "workload", "key": "old", "gpu_model": H100}, gpu_seconds=40,
              mfu=0.2, achieved_tflops=100)
    row = build_ledger([p], PRICES).total
    assert row.known_gpu_hours == approx(40 / 3600)
    assert row.unknown_usd == 0
    # 40 x 2.4 / 3600 x (1 - 0.2/0.4) = 48/3600
    assert row.wasted_usd == approx(48 / 3600)


def test_from_window_matches_from_influx() -> None:
    w = MfuWindow(event_id="x", scope="workload", key="train-a", window_start=T0 + 10,
                  window_end=T0 + 20, mfu=0.25, achieved_flops=1.2e16, peak_flops=4.8e16,
                  gpu_seconds=80, gpus=8, gpu_model=H100, fleet="f1", tenant="acme",
                  energy_j=40000, mfu_estimated=0.3,
                  flop_sources=FlopSources(reported=40, idle=20, counters=20))
    a = LedgerPoint.from_window(w)
    b = stream()[1]
    assert a.model_dump(exclude={"estimated_flops"}) == b.model_dump(exclude={"estimated_flops"})


def test_prices_lookup_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = Prices(usd_per_gpu_hour={"*": 2.0, "*H100*": 2.49, H100: 2.2})
    assert p.price(H100) == 2.2  # exact name first
    assert p.price("NVIDIA H100 PCIe") == 2.49  # then globs in order, "*" last
    assert p.price("Tesla T4") == 2.0
    assert p.price(None) == 2.0
    assert Prices(usd_per_gpu_hour={"*H100*": 2.49}).price("Tesla T4") is None

    rules = tmp_path / "rules.yaml"  # the policies' prices block prices the ledger alike
    rules.write_text("prices:\n  usd_per_gpu_hour:\n    '*H100*': 3.0\n  default: 2.0\n")
    toml = tmp_path / "prices.toml"
    toml.write_text('"NVIDIA A100-SXM4-80GB" = 1.5\n"*" = 1.0\n')
    monkeypatch.setenv("MFU_LEDGER_PRICES_FILE", str(rules))
    monkeypatch.setenv("MFU_LEDGER_PRICES", json.dumps({"*": 2.5}))
    assert LedgerSettings().prices == {"*H100*": 3.0, "*": 2.5}  # env overrides the file
    monkeypatch.delenv("MFU_LEDGER_PRICES")
    monkeypatch.setenv("MFU_LEDGER_PRICES_FILE", str(toml))
    assert LedgerSettings().prices == {A100: 1.5, "*": 1.0}
    toml.write_text('"x" = "cheap"\n')
    with pytest.raises(ValueError, match="must map GPU model"):
        LedgerSettings()
    monkeypatch.delenv("MFU_LEDGER_PRICES_FILE")
    monkeypatch.setenv("MFU_LEDGER_PRICES", '{"*": -1}')
    with pytest.raises(ValueError, match="positive"):
        LedgerSettings()


def test_rows_have_the_stable_columns() -> None:
    led = build_ledger(stream(), PRICES)
    assert list(row_dict(led.rows[0])) == list(COLUMNS)
    assert list(unallocated_row(led.capacity)) == list(COLUMNS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reference_mfu"):
        build_ledger(stream(), PRICES, reference_mfu=0)


def test_point_without_window_s_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="no window_s field"):
        LedgerPoint.from_influx(T0, {"scope": "workload", "key": "k"}, {"mfu": 0.3})
