"""The input-stall rule: periodic dips that recover are stalls; a steady level is not."""

from __future__ import annotations

from mfu.events import MfuWindow
from policies.engine import Engine
from policies.evaluators import dip_runs
from policies.rules import parse_rules

T0 = 1_700_000_000.0
RULES = """
rules:
  - id: input-stalls
    kind: stall
    scope: workload
    history_windows: 12
    dip_ratio: 0.5
    min_dips: 2
    clear_windows: 6
"""


def _run(values: list[float]) -> list[tuple[int, str, str]]:
    eng = Engine(parse_rules(RULES))
    state, out = None, []
    for i, x in enumerate(values):
        w = MfuWindow(event_id=str(i), scope="workload", key="stall-0",
                      window_start=T0 + 10 * i, window_end=T0 + 10 * i + 10, mfu=x,
                      achieved_flops=x, peak_flops=1.0, gpu_seconds=10.0, gpus=1)
        result = eng.process(w, state)
        state = result.state
        out += [(i, e.data["status"], e.data["summary"]) for e in result.events]
    return out


def test_dip_runs() -> None:
    assert dip_runs([0.4, 0.1, 0.1, 0.4, 0.1, 0.4], 0.2) == 2
    assert dip_runs([0.1, 0.1], 0.2) == 1 and dip_runs([], 0.2) == 0


def test_periodic_dips_open_once_then_resolve() -> None:
    pattern = [0.45, 0.45, 0.45, 0.45, 0.05, 0.45]  # a 10 s stall every 60 s
    events = _run(pattern * 4 + [0.45] * 20)
    # opens at the second dip; resolves 6 clean windows after the last dip left history
    assert [(i, s) for i, s, _ in events] == [(10, "open"), (39, "resolved")]
    assert "input-pipeline stalls" in events[0][2]


def test_steady_low_or_steady_high_is_no_stall() -> None:
    assert _run([0.08] * 40) == []
    assert _run([0.45] * 40) == []
    assert _run([0.45] * 10 + [0.05] * 30) == []  # one drop that stays: drift, not stalls
