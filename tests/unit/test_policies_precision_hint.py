"""busy_inefficient's precision hint from the counters: a job without reports whose
tensor pipe is idle while the FP32 pipe does the math (fp32 on a tensor-core GPU)."""

from __future__ import annotations

from typing import Any

from mfu.events import FlopSources, MfuWindow
from mfu.peaks import peak_flops_per_s
from policies.engine import Engine
from policies.rules import DEFAULT_RULES_PATH, load_rules

T0 = 1_700_000_000.0
H100 = "NVIDIA H100 80GB HBM3"
P = peak_flops_per_s(H100, "bf16")  # 989.4e12
F32 = peak_flops_per_s(H100, "fp32")  # 66.9e12


def silent_window(i: int, tensor: float, fp32_active: float) -> MfuWindow:
    """10 s of one H100 without reports, at full clock: OFU = (tensor x P + fp32 x F32) /
    P; the estimate is the same (every second is ``counters``)."""
    ofu = (tensor * P + fp32_active * F32) / P
    return MfuWindow(
        event_id=f"w{i}", scope="workload", key="job", window_start=T0 + 10 * i,
        window_end=T0 + 10 * i + 10, mfu=None, achieved_flops=0.0, peak_flops=0.0,
        gpu_seconds=10.0, gpus=1, sm_util=0.96, tensor_active=tensor, mem_used_ratio=0.85,
        gpu_model=H100, precision=None, flop_sources=FlopSources(counters=10.0),
        coverage=0.0, ofu=ofu, mfu_estimated=ofu, estimated_flops=ofu * P * 10)


def opened(windows: list[MfuWindow]) -> list[dict[str, Any]]:
    eng = Engine(load_rules(DEFAULT_RULES_PATH))
    state, out = None, []
    for w in windows:
        r = eng.process(w, state)
        state = r.state
        out += [e.data for e in r.events
                if e.data["rule"] == "busy-but-inefficient" and e.data["status"] == "open"]
    return out


def test_fp32_pipe_busy_tensor_idle_gets_the_precision_hint() -> None:
    # fp32_active 0.6: OFU = 0.6 x 66.9 / 989.4 = 0.0406 <= mfu_max 0.25, SMs 96 % busy:
    # opens at the 3rd window (for_windows 3), basis estimated.
    (e,) = opened([silent_window(i, 0.0, 0.6) for i in range(3)])
    assert e["basis"] == "estimated"
    (hint,) = [h for h in e["hints"] if h["hint"] == "precision"]
    assert hint["inferred_from"] == "counters" and hint["precision"] is None
    # dense bf16 / fp32 on an H100 SXM: 989.4 / 66.9 = 14.79
    assert hint["faster_precisions"]["bf16"] == round(P / F32, 2) == 14.79


def test_no_precision_hint_when_the_tensor_pipe_works() -> None:
    # tensor 0.05 (> 0.02): tensor cores in use; OFU 0.05 + 0.0406 = 0.0906, still
    # inefficient, but the hint would be a guess: under-batching (tensor <= 0.3) is not
    # given either (memory 85 % used > 0.6); no precision hint.
    (e,) = opened([silent_window(i, 0.05, 0.6) for i in range(3)])
    assert [h["hint"] for h in e["hints"]] == []
    # Tensor idle but nothing on the vector pipes either (OFU 0.004 < 0.005): no hint.
    (e,) = opened([silent_window(i, 0.0, 0.06) for i in range(3)])
    assert [h["hint"] for h in e["hints"]] == []
