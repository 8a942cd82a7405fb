"""The regime of a window without model bytes comes from the counters: the fraction of
the FLOP roof the pipes used (OFU, tensor + fp32 + fp64 pipes) against dram_active. An
fp32 job leaves the tensor cores idle, so tensor_active alone called it memory-bound at
55% MFU (seen in the demo: fp32-0, "memory-bound, MBU unknown")."""

from __future__ import annotations

from streams.aggregate import Partial, accounting_fields


def part(**sums: float) -> Partial:
    return Partial(scope="workload", key="w", node="n", window_start=0.0, window_end=10.0,
                   gpu_seconds=10.0, **sums)


def test_fp32_work_with_pipe_counters_is_judged_on_ofu_not_tensor() -> None:
    # 10 s: OFU 5.5e15 / 1e16 = 0.55 of the roof, tensor_active 0, dram_active 2 / 10 = 0.2:
    # 0.55 / 0.2 = 2.75 > 2 (the band above the ridge): compute-bound.
    p = part(ofu_flops=5.5e15, ofu_peak_flops=1e16, tensor_s=0.0, tensor_seconds=10.0,
             dram_s=2.0, dram_seconds=10.0)
    f = accounting_fields(p, mfu_defined=True)
    assert f["ofu"] == 0.55 and f["regime"] == "compute"
    # same pipes, dram_active 0.4: 0.55 / 0.4 = 1.375, inside [1/2, 2]: mixed
    f = accounting_fields(part(ofu_flops=5.5e15, ofu_peak_flops=1e16, tensor_seconds=10.0,
                               dram_s=4.0, dram_seconds=10.0), mfu_defined=True)
    assert f["regime"] == "mixed"


def test_decode_like_counters_stay_memory_bound() -> None:
    # OFU 0.05, dram_active 0.8: 0.0625 < 1/2: memory-bound
    f = accounting_fields(part(ofu_flops=5e14, ofu_peak_flops=1e16, tensor_s=0.5,
                               tensor_seconds=10.0, dram_s=8.0, dram_seconds=10.0),
                          mfu_defined=True)
    assert f["regime"] == "memory"


def test_without_pipe_counters_tensor_active_is_the_compute_side() -> None:
    # no OFU: tensor_active 3 / 10 = 0.3 vs dram 0.8: 0.375 < 1/2: memory; tensor 0.9 vs
    # dram 0.2: 4.5 > 2: compute
    f = accounting_fields(part(tensor_s=3.0, tensor_seconds=10.0, dram_s=8.0,
                               dram_seconds=10.0), mfu_defined=True)
    assert f["ofu"] is None and f["regime"] == "memory"
    f = accounting_fields(part(tensor_s=9.0, tensor_seconds=10.0, dram_s=2.0,
                               dram_seconds=10.0), mfu_defined=True)
    assert f["regime"] == "compute"
