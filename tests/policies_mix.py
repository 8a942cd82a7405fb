"""Offline harness: the simulator's full archetype mix through the pure stream stages and
the pure policy engine, in process (no Kafka, no Faust), to measure what the rules do
over long runs: false alarms per rule and workload, detection delays.

    agents.simulator.FleetSimulator.events(tick)      gpu_sample/1 + flop_report/1
      -> streams.stages.NodeStage (one partition)       node windows + partials
      -> streams.stages.RollupStage (one source)        workload and fleet windows
      -> policies.engine.Engine (state per subject)     CloudEvents

Run it: ``python -m tests.policies_mix --duration-s 3600`` (prints the numbers; the
default fleet is the demo's: 16 nodes x 8, H100 and A100 nodes alternating, seed 7).

No stand-ins: every DESIGN.md §8 field a rule reads (``flop_sources``, ``coverage``,
``ofu``, ``mfu_estimated``, ``mbu``, ``regime``) is what the stream stages compute from the
simulator's samples and reports. The simulator has its own un-instrumented tenants, engine
reporters and buggy reporter (``moe-train-*``, 2x); ``silent`` and ``over_count`` only add
scenarios on top (drop a workload's reports before the stage; multiply them).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agents.simulator import FleetSimulator
from mfu.config import WindowSettings
from mfu.events import CloudEvent, MfuWindow
from policies.engine import Engine
from policies.rules import RulesConfig
from streams.aggregate import Marker
from streams.stages import NodeStage, RollupStage

T0 = 1_700_000_000.0  # a window boundary


def sim_windows(
    sim: FleetSimulator,
    duration_s: float,
    *,
    window_s: float = 10.0,
    over_count: dict[str, float] | None = None,
    silent: frozenset[str] = frozenset(),
) -> Iterator[MfuWindow]:
    """Every closed window (node, workload, fleet) of ``duration_s`` of the simulation,
    in close order. ``over_count``: workload -> factor its FLOP reports are multiplied by
    (a buggy reporter); ``silent``: workloads whose reports are dropped (no SDK)."""
    settings = WindowSettings(size_s=window_s, grace_s=0.0)
    node = NodeStage(settings, inputs=("telemetry", "flops"))
    rollup = RollupStage(settings, sources=1)
    factors = over_count or {}

    def close(starts: Iterable[float]) -> Iterator[MfuWindow]:
        for ws in starts:
            closed = node.close(ws)
            yield from closed.records
            for p in closed.partials:
                rollup.add_partial(p)
        rollup.add_marker(Marker(src=0, closed_through=node.progress.closed_through))
        for rws in rollup.due():
            yield from rollup.close(rws).records

    for tick in sim.ticks_for(duration_s):
        for _, (samples, reports) in sim.events(tick).items():
            if silent:
                reports = [r for r in reports if r.workload not in silent]
            if factors:
                reports = [
                    r.model_copy(update={"flops": r.flops * factors[r.workload]})
                    if r.workload in factors
                    else r
                    for r in reports
                ]
            node.add_many(samples, topic="telemetry")
            if reports:
                node.add_many(reports, topic="flops")
        yield from close(node.due())
    yield from close(node.flush_idle())


DEMO_GPU_MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")  # mfu simulate's


@dataclass
class MixResult:
    """What the rules made of one run, and the windows they saw."""

    windows: Counter[str] = field(default_factory=Counter)  # scope -> windows evaluated
    opens: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, subject)
    events: list[CloudEvent] = field(default_factory=list)
    # workload -> its windows in close order (the fields the checks read; slim copies)
    workload_windows: dict[str, list[MfuWindow]] = field(default_factory=dict)
    fleet_windows: list[MfuWindow] = field(default_factory=list)
    seconds: float = 0.0

    def first_open(self, rule: str, subject: str) -> CloudEvent | None:
        for e in self.events:
            if e.data["rule"] == rule and e.subject == subject and e.data["status"] == "open":
                return e
        return None

    def opens_of(self, rule: str, exclude: Iterable[str] = ()) -> dict[str, int]:
        skip = set(exclude)
        return {s: n for (r, s), n in self.opens.items() if r == rule and s not in skip}

    def subjects_of(self, rule: str) -> set[str]:
        """Workload keys that got any event (open, report) of ``rule``."""
        return {e.data["key"] for e in self.events
                if e.data["rule"] == rule and e.data["scope"] == "workload"}

    def first_fully_reported(self, workload: str, share: float = 1.0) -> MfuWindow | None:
        """The workload's first window whose GPU-seconds are covered by reports (SDK or
        engine) to at least ``share``."""
        for w in self.workload_windows.get(workload, []):
            fs = w.flop_sources
            if fs is not None and w.gpu_seconds > 0 and (
                    fs.reported + fs.engine) >= share * w.gpu_seconds - 1e-9:
                return w
        return None


KEEP = ("scope", "key", "window_start", "window_end", "mfu", "achieved_flops", "peak_flops",
        "gpu_seconds", "gpus", "sm_util", "tensor_active", "precision", "phase",
        "flop_sources", "coverage", "ofu", "mfu_estimated", "estimated_flops", "mbu",
        "regime", "achieved_bytes", "peak_bytes")


def run_mix(
    config: RulesConfig,
    *,
    nodes: int = 16,
    gpus_per_node: int = 8,
    gpu_models: tuple[str, ...] = DEMO_GPU_MODELS,
    duration_s: float = 3600.0,
    interval_s: float = 2.0,
    seed: int = 7,
    drift_at_s: float | None = 1800.0,
    drift_fraction: float = 0.3,
    over_count: dict[str, float] | None = None,
    silent: frozenset[str] = frozenset(),
    keep_windows: bool = True,
) -> tuple[FleetSimulator, MixResult]:
    """Simulate, window and evaluate; returns the simulator (for its layout and ground
    truth) and the result. The drifting workload is the simulator's default (the first
    LLM training). Defaults: the demo's fleet with ``--fast``-style 2-s samples."""
    sim = FleetSimulator(
        nodes, gpus_per_node, gpu_models, seed=seed, interval_s=interval_s, start_ts=T0,
        drift_at_s=drift_at_s, drift_fraction=drift_fraction,
    )
    eng = Engine(config)
    states: dict[str, Any] = {}
    out = MixResult()
    started = time.perf_counter()
    for w in sim_windows(sim, duration_s, over_count=over_count, silent=silent):
        subject = f"{w.scope}/{w.key}"
        result = eng.process(w, states.get(subject))
        states[subject] = result.state
        out.windows[w.scope] += 1
        if keep_windows and w.scope in ("workload", "fleet"):
            slim = MfuWindow.model_construct(**{k: getattr(w, k) for k in KEEP})
            if w.scope == "fleet":
                out.fleet_windows.append(slim)
            else:
                out.workload_windows.setdefault(w.key, []).append(slim)
        for e in result.events:
            out.events.append(e)
            if e.data["status"] == "open":
                out.opens[(e.data["rule"], e.subject)] += 1
    out.seconds = time.perf_counter() - started
    return sim, out


def windows_between(first: MfuWindow | None, e: CloudEvent | None,
                    window_s: float = 10.0) -> int | None:
    """Windows from ``first`` to the event's window, both counted."""
    if first is None or e is None:
        return None
    return round((e.data["windows"]["end"] - first.window_start) / window_s)


def delay_windows(e: CloudEvent | None, change_s: float, window_s: float = 10.0) -> int | None:
    """Windows from the change to the decision, counting the window the change is in."""
    if e is None:
        return None
    return round((e.data["windows"]["end"] - change_s) / window_s)


def estimate_gap(sim: FleetSimulator, res: MixResult, every: int = 6) -> dict[str, float]:
    """Fleet ``mfu_estimated`` vs the ground truth, mean over every ``every``-th fleet
    window, with the exact decomposition ``estimated - truth(known + counters) =
    over_reported + hardware_not_model + estimator`` (see docs/validation.md)."""
    keys = ("mfu", "truth_mfu", "mfu_estimated", "truth_estimable", "truth_all",
            "over_reported", "hardware_not_model", "estimator")
    acc = dict.fromkeys(keys, 0.0)
    rows = res.fleet_windows[::every]
    for w in rows:
        t = sim.ground_truth(w.window_start, w.window_end)["fleet"]["default"]
        src = t.by_source
        known = ("reported", "engine", "idle")
        p = sum(src[n]["peak_flops"] for n in (*known, "counters"))
        vals = (w.mfu or 0.0, t.mfu or 0.0, w.mfu_estimated or 0.0, t.true_mfu_estimable or 0.0,
                t.true_mfu or 0.0,
                (t.achieved_flops - sum(src[n]["true_flops"] for n in known)) / p,
                (src["counters"]["hardware_flops"] - src["counters"]["true_flops"]) / p,
                ((w.estimated_flops or 0.0) - src["counters"]["hardware_flops"]) / p)
        for k, v in zip(keys, vals, strict=True):
            acc[k] += v / len(rows)
    acc["windows"] = len(rows)
    return acc


def main(argv: list[str] | None = None) -> int:
    from policies.rules import DEFAULT_RULES_PATH, load_rules

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--interval-s", type=float, default=2.0, help="sample interval (--fast: 2)")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--gpu-models", default=",".join(DEMO_GPU_MODELS))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rules", default=str(DEFAULT_RULES_PATH))
    ap.add_argument("--drift-at-s", type=float, default=None, help="default: half the run")
    args = ap.parse_args(argv)
    config = load_rules(args.rules)
    drift_at = args.duration_s / 2 if args.drift_at_s is None else args.drift_at_s
    models = tuple(m.strip() for m in args.gpu_models.split(",") if m.strip())
    sim, res = run_mix(
        config, nodes=args.nodes, gpu_models=models, duration_s=args.duration_s,
        interval_s=args.interval_s, seed=args.seed, drift_at_s=drift_at,
    )
    drifting = f"workload/{sim.drift_workload}"
    buggy = sorted(n for n, w in sim.workloads.items() if w.archetype.report_factor > 1.2)
    print(f"windows evaluated: {dict(res.windows)} in {res.seconds:.1f} s "
          f"({len(sim.workloads)} workloads, {len(sim.devices)} devices, "
          f"{args.duration_s:.0f} s simulated, drift of {drifting} at {drift_at:.0f} s)")
    print(f"drift opens outside {drifting}: {res.opens_of('workload-mfu-drift', [drifting])}")
    d = delay_windows(res.first_open("workload-mfu-drift", drifting), T0 + drift_at)
    print(f"drift detection delay for {drifting}: {d} windows")
    print(f"reporter-mismatch opens outside {buggy}: "
          f"{res.opens_of('reporter-mismatch', [f'workload/{n}' for n in buggy])}")
    for n in buggy:
        b = res.first_open("reporter-mismatch", f"workload/{n}")
        print(f"reporter-mismatch for {n}: "
              f"{windows_between(res.first_fully_reported(n), b)} windows after its first "
              "fully-reported window")
    silent = {n for n, w in sim.workloads.items()
              if not w.archetype.reports and w.archetype.name != "idle"}
    judged = sorted({(e.data["key"], e.data["rule"]) for e in res.events
                     if e.data["key"] in silent and e.data["rule"] in
                     ("busy-but-inefficient", "workload-idle", "workload-low-mfu")})
    print(f"un-instrumented busy workloads judged inefficient/idle: {judged}")
    by_rule = Counter(r for (r, _), n in res.opens.items() for _ in range(n))
    print(f"opens by rule: {dict(sorted(by_rule.items()))}")
    g = estimate_gap(sim, res)
    print(f"fleet over {g['windows']:.0f} windows: mfu {g['mfu']:.4f} (truth {g['truth_mfu']:.4f}), "
          f"mfu_estimated {g['mfu_estimated']:.4f} vs truth(known+counters) "
          f"{g['truth_estimable']:.4f}, truth(all) {g['truth_all']:.4f}: gap "
          f"{g['mfu_estimated'] - g['truth_estimable']:+.4f} = over-reported "
          f"{g['over_reported']:+.4f} + hardware-not-model {g['hardware_not_model']:+.4f} "
          f"+ estimator {g['estimator']:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
