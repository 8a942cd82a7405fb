"""The demo's report: PNG chart of MFU per level with policy events, a text summary,
the raw records, and how to query the same data in InfluxDB."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mfu.events import FLOP_SOURCES


def busy_thresholds() -> tuple[float, float]:
    """(SM busy at least, MFU below): the rules stage's own busy-but-inefficient rule, so
    the report and the policy events name workloads by the same definition."""

    from policies.rules import DEFAULT_RULES_PATH, BusyInefficientRule, load_rules

    path = os.environ.get("MFU_POLICIES_RULES_FILE") or DEFAULT_RULES_PATH
    for rule in load_rules(path).rules:
        if isinstance(rule, BusyInefficientRule):
            return rule.sm_util_min, rule.mfu_max
    return 0.8, 0.25


def archetype(key: str) -> str:
    """Workload family for grouping: ``infer-3`` -> ``infer`` (the simulator's naming)."""
    head, sep, tail = key.rpartition("-")
    return head if sep and tail.isdigit() else key


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def _sum(recs: list[dict[str, Any]], field: str) -> float | None:
    xs = [r[field] for r in recs if r.get(field) is not None]
    return math.fsum(xs) if xs else None


def _ratio_over(recs: list[dict[str, Any]], num: str, den: str) -> float | None:
    """Σ num / Σ den over the records that carry both (a span-level ratio)."""
    pairs = [(r[num], r[den]) for r in recs if r.get(num) is not None and r.get(den)]
    d = math.fsum(p[1] for p in pairs)
    return math.fsum(p[0] for p in pairs) / d if d > 0 else None


def _flops_per_known_j(recs: list[dict[str, Any]]) -> float | None:
    """Measured FLOPs per joule of the GPU-seconds whose FLOPs are known: Σ achieved_flops
    / Σ known joules, a window's known joules being achieved_flops / flops_per_j (the
    streams' own ratio, over known GPU-seconds), or energy_j x coverage at a known zero.
    None where no window knows its FLOPs: a silent busy job is not 0 FLOP/J."""
    flops = joules = 0.0
    for r in recs:
        fpj, ach = r.get("flops_per_j"), r.get("achieved_flops") or 0.0
        if fpj is None or r.get("mfu") is None:
            continue
        if fpj > 0:
            flops, joules = flops + ach, joules + ach / fpj
        elif r.get("energy_j") is not None:
            joules += r["energy_j"] * (r.get("coverage") if r.get("coverage") is not None
                                       else 1.0)
    return flops / joules if joules > 0 else None


def _mode(xs: list[Any]) -> Any:
    xs = [x for x in xs if x is not None]
    return Counter(xs).most_common(1)[0][0] if xs else None


def _sources(recs: list[dict[str, Any]]) -> dict[str, float]:
    out = dict.fromkeys(FLOP_SOURCES, 0.0)
    for r in recs:
        for k, v in (r.get("flop_sources") or {}).items():
            if k in out and v is not None:
                out[k] += v
    return out


def index_truth(truth: list[dict[str, Any]] | None) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Ground-truth rows (``Truth.as_dict()`` of the simulator, one per scope, key and
    window) by (scope, key); the fleet's key is ``"fleet"`` whatever the fleet's name."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for t in truth or []:
        out[(t["scope"], "fleet" if t["scope"] == "fleet" else t["key"])].append(t)
    return out


def _truth_for(index: dict[tuple[str, str], list[dict[str, Any]]], scope: str, key: str,
               recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The truth rows of the windows the pipeline closed for this key."""
    starts = {round(r["window_start"], 3) for r in recs}
    k = "fleet" if scope == "fleet" else key
    return [t for t in index.get((scope, k), []) if round(t["window_start"], 3) in starts]


def _by_src(t: dict[str, Any], names: tuple[str, ...], what: str) -> float:
    return math.fsum((t.get("by_source") or {}).get(n, {}).get(what, 0.0) for n in names)


ESTIMABLE = ("reported", "engine", "idle", "counters")


def estimate_gap(fleet_recs: list[dict[str, Any]], truth_rows: list[dict[str, Any]]
                 ) -> dict[str, Any] | None:
    """Fleet ``mfu_estimated`` against the simulator's truth, window by window, and why
    they differ (means over the windows both have, in MFU points = ratio units):

    - ``over_reported``: reported FLOPs above the true model FLOPs (a buggy reporter);
    - ``hardware_not_model``: the counters see hardware FLOPs (recomputation, non-model
      work), so even an exact counter estimate over-counts model FLOPs;
    - ``estimator``: the pipeline's estimate against an estimate exact on hardware FLOPs
      (counter noise, clock handling, the corrections it applies);
    - ``unknown_excluded``: truth over the estimable GPU-seconds minus truth over all
      (the ``none`` GPU-seconds are outside ``mfu_estimated``).

    ``estimated - truth_all = estimator + over_reported + hardware_not_model +
    unknown_excluded`` holds exactly per window."""
    by_start = {round(t["window_start"], 3): t for t in truth_rows}
    rows = []
    for r in fleet_recs:
        t = by_start.get(round(r["window_start"], 3))
        if t is None:
            continue
        peak = _by_src(t, ESTIMABLE, "peak_flops")
        if peak <= 0 or not t.get("peak_flops"):
            continue
        known = ("reported", "engine", "idle")
        truth_est = _by_src(t, ESTIMABLE, "true_flops") / peak
        exact_hw = (_by_src(t, known, "achieved_flops")
                    + _by_src(t, ("counters",), "hardware_flops")) / peak
        rows.append({
            "estimated": r.get("mfu_estimated"),
            "measured": r.get("mfu"),
            "truth_estimable": truth_est,
            "truth_all": t["true_flops"] / t["peak_flops"],
            "exact_on_counters": exact_hw,
            "over_reported": (_by_src(t, known, "achieved_flops")
                              - _by_src(t, known, "true_flops")) / peak,
            "hardware_not_model": (_by_src(t, ("counters",), "hardware_flops")
                                   - _by_src(t, ("counters",), "true_flops")) / peak,
        })
    if not rows:
        return None
    out: dict[str, Any] = {"windows": len(rows)}
    for k in ("truth_estimable", "truth_all", "exact_on_counters", "over_reported",
              "hardware_not_model"):
        out[k] = statistics.fmean(x[k] for x in rows)
    est = [x for x in rows if x["estimated"] is not None]
    out["estimated"] = statistics.fmean(x["estimated"] for x in est) if est else None
    out["estimated_windows"] = len(est)
    meas = [x["measured"] for x in rows if x["measured"] is not None]
    out["measured"] = statistics.fmean(meas) if meas else None
    out["unknown_excluded"] = out["truth_estimable"] - out["truth_all"]
    if est:
        out["estimator"] = statistics.fmean(x["estimated"] - x["exact_on_counters"] for x in est)
        out["gap_all"] = out["estimated"] - statistics.fmean(x["truth_all"] for x in est)
        out["gap_estimable"] = out["estimated"] - statistics.fmean(
            x["truth_estimable"] for x in est)
    return out


def workload_label(row: dict[str, Any], busy: set[str]) -> str:
    """How the report names a workload's efficiency: memory-bound work on its MBU (decode,
    or regime memory), not as inefficient; unknown stays unknown."""
    mbu = row.get("mbu_mean")
    if row.get("regime") == "memory" or row.get("phase") == "decode":
        return "memory-bound" + (f", MBU {100 * mbu:.0f}%" if mbu is not None else ", MBU unknown")
    if row["workload"] in busy:
        return "busy but inefficient" + (f" (MBU {100 * mbu:.0f}%)" if mbu is not None else "")
    if row.get("mfu_mean") is None:
        if row.get("mfu_estimated_mean") is not None:
            return "not reported: estimated from counters"
        return "not reported, no counters: unknown"
    if row["mfu_mean"] == 0 and (row.get("sm_util_mean") or 0) < 0.05:
        return "idle: allocated, no work (a known zero)"
    return row.get("regime") or "regime unknown (no bytes, no pipe counters)"


def mismatch_summary(policy: list[dict[str, Any]], firsts: dict[str, float], window_s: float,
                     over_report: dict[str, float | None]) -> list[dict[str, Any]]:
    """One row per workload named by ``io.mfu.reporter_mismatch.v1``: its first event,
    how many windows after the workload's first window it came (by the event's window
    end), and whether the truth says the reporter over-reports (reported / true FLOPs)."""
    out: dict[str, dict[str, Any]] = {}
    for e in policy:
        if e.get("type") != "io.mfu.reporter_mismatch.v1":
            continue
        subject = e.get("subject", "")
        key = subject.split("/", 1)[1] if "/" in subject else subject
        data = e.get("data") or {}
        end = (data.get("windows") or {}).get("end")
        row = out.setdefault(key, {"workload": key, "events": 0, "first_end": None,
                                   "summary": data.get("summary", ""),
                                   "over_report": over_report.get(key)})
        row["events"] += 1
        if end is not None and (row["first_end"] is None or float(end) < row["first_end"]):
            row["first_end"] = float(end)
    for row in out.values():
        first = firsts.get(row["workload"])
        row["windows_to_detect"] = (round((row["first_end"] - first) / window_s)
                                    if row["first_end"] is not None and first is not None
                                    and window_s > 0 else None)
        ratio = row["over_report"]
        row["verdict"] = ("unknown" if ratio is None else
                          "true positive" if ratio > 1.2 else "false positive (honest reporter)")
    return sorted(out.values(), key=lambda r: r["workload"])


def ledger_prices() -> tuple[Any, str]:
    """(prices, where they came from): ``MFU_LEDGER_PRICES`` / ``MFU_LEDGER_PRICES_FILE``
    when set, else the rules file's ``prices`` block, so the demo's ledger costs GPU-hours
    exactly like the rules stage's cost rule (``mfu ledger`` on its own leaves an
    unset price unpriced; the demo has a rules file, so it uses it)."""
    from mfu.config import LedgerSettings
    from mfu.ledger import Prices
    from policies.rules import DEFAULT_RULES_PATH

    settings = LedgerSettings()
    if settings.prices:
        return Prices(usd_per_gpu_hour=settings.prices), "MFU_LEDGER_PRICES"
    path = os.environ.get("MFU_POLICIES_RULES_FILE") or str(DEFAULT_RULES_PATH)
    settings = LedgerSettings(prices_file=Path(path))
    return Prices(usd_per_gpu_hour=settings.prices), f"the rules file's prices ({path})"


def ledger_by_tenant(records: list[dict[str, Any]]) -> tuple[Any, Any, str]:
    """(ledger, prices, price source): :func:`mfu.ledger.build_ledger` by tenant over the
    demo's ``mfu_window/1`` records (workload points make the rows, node points the
    unallocated capacity), the same ledger ``mfu ledger --by tenant`` computes from
    InfluxDB. Reference MFU: ``MFU_LEDGER_REFERENCE_MFU`` (default 0.4)."""
    from mfu.config import LedgerSettings
    from mfu.events import MfuWindow
    from mfu.ledger import LedgerPoint, build_ledger

    prices, source = ledger_prices()
    points = [LedgerPoint.from_window(MfuWindow.model_validate(r)) for r in records]
    ledger = build_ledger(points, prices, by="tenant",
                          reference_mfu=LedgerSettings().reference_mfu)
    return ledger, prices, source


def summarize(collected: Any, truth: list[dict[str, Any]] | None = None,
              window_s: float = 10.0) -> dict[str, Any]:
    """Numbers of the report, from the records read off the output topics and, where
    given, the simulator's ground truth (``Truth.as_dict()`` rows per window)."""
    fleet = collected.by_scope("fleet")
    tindex = index_truth(truth)
    workloads: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in collected.by_scope("workload"):
        workloads[r["key"]].append(r)
    rows = []
    for key, recs in sorted(workloads.items()):
        mfus = [r["mfu"] for r in recs if r.get("mfu") is not None]
        sms = [r["sm_util"] for r in recs if r.get("sm_util") is not None]
        tens = [r["tensor_active"] for r in recs if r.get("tensor_active") is not None]
        trs = _truth_for(tindex, "workload", key, recs)
        t_true = math.fsum(t["true_flops"] for t in trs)
        t_ach = math.fsum(t["achieved_flops"] for t in trs)
        t_energy = math.fsum(t["energy_j"] for t in trs)
        t_pb = math.fsum(t["peak_bytes"] for t in trs)
        t_peak = math.fsum(t["peak_flops"] for t in trs)
        known = [r for r in recs if r.get("flop_sources")]
        rows.append({
            "workload": key,
            "windows": len(recs),
            "mfu_mean": _mean(mfus),
            "mfu_first": mfus[0] if mfus else None,
            "mfu_last": mfus[-1] if mfus else None,
            "sm_util_mean": _mean(sms),
            "tensor_active_mean": _mean(tens),
            "gpus": max((r.get("gpus") or 0) for r in recs),
            "precision": recs[-1].get("precision"),
            "model": recs[-1].get("model"),
            "phase": _mode([r.get("phase") for r in recs]),
            "tenant": _mode([r.get("tenant") for r in recs]) or _mode(
                [t.get("tenant") for t in trs]),
            "coverage_mean": _mean([r["coverage"] for r in recs if r.get("coverage") is not None]),
            "mfu_estimated_mean": _mean([r["mfu_estimated"] for r in recs
                                         if r.get("mfu_estimated") is not None]),
            "ofu_mean": _mean([r["ofu"] for r in recs if r.get("ofu") is not None]),
            "mbu_mean": _ratio_over(recs, "achieved_bytes", "peak_bytes")
            or _mean([r["mbu"] for r in recs if r.get("mbu") is not None]),
            "regime": _mode([r.get("regime") for r in recs]),
            "flop_sources": _sources(recs) if known else None,
            "gpu_seconds": _sum(recs, "gpu_seconds") or 0.0,
            "achieved_flops": _sum(recs, "achieved_flops") or 0.0,
            "estimated_flops": _sum(recs, "estimated_flops") or 0.0,
            "energy_j": _sum(recs, "energy_j"),
            "flops_per_j": _flops_per_known_j(recs),
            "tokens_per_j": _ratio_over(recs, "tokens", "energy_j"),
            "truth_windows": len(trs),
            "true_mfu": t_true / t_peak if t_peak > 0 else None,
            "true_mbu": math.fsum(t["true_bytes"] for t in trs) / t_pb if t_pb > 0 else None,
            "true_flops_per_j": t_true / t_energy if t_energy > 0 else None,
            "over_report": t_ach / t_true if t_true > 0 and trs and any(
                t["achieved_flops"] for t in trs) else None,
            "uninstrumented": bool(trs) and all(
                _by_src(t, ("counters", "none"), "seconds") >= t["gpu_seconds"] - 1e-9
                for t in trs),
        })
    for row in rows:
        if not row["truth_windows"] and row["flop_sources"]:
            src = row["flop_sources"]
            total = math.fsum(src.values())
            row["uninstrumented"] = total > 0 and src["counters"] + src["none"] >= total - 1e-9
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[archetype(r["workload"])].append(r)

    def fmean(rs: list[dict[str, Any]], k: str) -> float | None:
        return _mean([r[k] for r in rs if r.get(k) is not None])

    families = [{
        "family": fam,
        "workloads": len(rs),
        "gpus": sum(r["gpus"] for r in rs),
        "mfu_mean": fmean(rs, "mfu_mean"),
        "sm_util_mean": fmean(rs, "sm_util_mean"),
        "tensor_active_mean": fmean(rs, "tensor_active_mean"),
        "coverage_mean": fmean(rs, "coverage_mean"),
        "mfu_estimated_mean": fmean(rs, "mfu_estimated_mean"),
        "true_mfu": fmean(rs, "true_mfu"),
        "mbu_mean": fmean(rs, "mbu_mean"),
        "regime": _mode([r["regime"] for r in rs]),
        "tenant": _mode([r["tenant"] for r in rs]),
        "precision": rs[0]["precision"],
        "phase": rs[0]["phase"],
    } for fam, rs in sorted(groups.items())]
    # Structural views: GPU-seconds-weighted MFU by GPU model, model and parallelism.
    structure: dict[str, dict[str, list[float]]] = {"gpu_model": {}, "model": {},
                                                      "parallelism": {}}
    for r in collected.by_scope("workload"):
        if r.get("mfu") is None or not r.get("gpu_seconds"):
            continue
        par = r.get("parallelism") or {}
        keys = {"gpu_model": r.get("gpu_model") or "(unknown)",
                "model": r.get("model") or "(not reported)",
                "parallelism": (f"tp{par.get('tp', 1)}·pp{par.get('pp', 1)}·dp{par.get('dp', 1)}"
                                if par else "(not reported)")}
        for view, k in keys.items():
            acc = structure[view].setdefault(k, [0.0, 0.0])
            acc[0] += r["mfu"] * r["gpu_seconds"]
            acc[1] += r["gpu_seconds"]
    structural = {view: {k: v[0] / v[1] for k, v in sorted(groups.items()) if v[1] > 0}
                  for view, groups in structure.items()}
    busy_sm, low_mfu = busy_thresholds()
    memory_bound = [r["workload"] for r in rows
                    if r["regime"] == "memory" or r["phase"] == "decode"]
    busy = [r["workload"] for r in rows if (r["sm_util_mean"] or 0) >= busy_sm
            and r["mfu_mean"] is not None and r["mfu_mean"] < low_mfu
            and r["workload"] not in memory_bound]
    for r in rows:
        r["label"] = workload_label(r, set(busy))
    by_type = Counter(e.get("type", "?") for e in collected.policy)
    drift_events = [e for e in collected.policy if e.get("type") == "io.mfu.drift.v1"]
    busy_events = [e for e in collected.policy
                   if "busy" in e.get("type", "") or "inefficient" in e.get("type", "")]
    # every event that would call a workload wasteful: inefficient, idle, underutilized
    idle_events = [e for e in collected.policy if e.get("type") in (
        "io.mfu.idle.v1", "io.mfu.underutilized.v1")]
    uninstrumented = {r["workload"] for r in rows if r["uninstrumented"]}

    def subjects(events: list[dict[str, Any]]) -> list[str]:
        return sorted({e.get("subject", "") for e in events})

    def named(events: list[dict[str, Any]]) -> set[str]:
        return {s.split("/", 1)[1] for s in subjects(events) if s.startswith("workload/")}

    firsts = {r["workload"]: min(x["window_start"] for x in workloads[r["workload"]])
              for r in rows}
    truth_fleet = _truth_for(tindex, "fleet", "fleet", fleet)
    return {
        "fleet_windows": len(fleet),
        "fleet_mfu_mean": _mean([f["mfu"] for f in fleet if f.get("mfu") is not None]),
        "fleet_allocation_mean": _mean([f["allocation"] for f in fleet
                                        if f.get("allocation") is not None]),
        "fleet_mfu_allocated_mean": _mean([f["mfu_allocated"] for f in fleet
                                           if f.get("mfu_allocated") is not None]),
        "fleet_coverage_mean": _mean([f["coverage"] for f in fleet
                                      if f.get("coverage") is not None]),
        "fleet_mfu_estimated_mean": _mean([f["mfu_estimated"] for f in fleet
                                           if f.get("mfu_estimated") is not None]),
        "fleet_ofu_mean": _mean([f["ofu"] for f in fleet if f.get("ofu") is not None]),
        "fleet_mbu": _ratio_over(fleet, "achieved_bytes", "peak_bytes"),
        "fleet_flop_sources": _sources(fleet),
        "fleet_energy_j": _sum(fleet, "energy_j"),
        "fleet_flops_per_j": _flops_per_known_j(fleet),
        "fleet_gpus": max((f.get("gpus") or 0) for f in fleet) if fleet else 0,
        "window_starts": [f["window_start"] for f in fleet],
        "estimate_vs_truth": estimate_gap(fleet, truth_fleet),
        "workloads": rows,
        "families": families,
        "structural": structural,
        "busy_but_inefficient": busy,
        "memory_bound": memory_bound,
        "busy_thresholds": {"sm_util_min": busy_sm, "mfu_max": low_mfu},
        "policy_events_by_type": dict(by_type),
        "drift_subjects": subjects(drift_events),
        "busy_inefficient_subjects": subjects(busy_events),
        "uninstrumented": sorted(uninstrumented),
        "uninstrumented_flagged": sorted((named(busy_events) | named(idle_events))
                                         & uninstrumented),
        "memory_bound_flagged": sorted(named(busy_events) & set(memory_bound)),
        "reporter_mismatch": mismatch_summary(
            collected.policy, firsts, window_s, {r["workload"]: r["over_report"] for r in rows}),
    }


def _chart(path: Path, collected: Any, t_ref: float,
           truth: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(13, 14), sharex=True)
    fleet = collected.by_scope("fleet")
    ax = axes[0]
    xs = [f["window_start"] - t_ref for f in fleet]
    ax.plot(xs, [f.get("mfu") for f in fleet], "-o", label="fleet MFU (installed GPUs)", ms=3)
    ax.plot(xs, [f.get("mfu_allocated") for f in fleet], "-s", label="MFU of allocated GPUs", ms=3)
    ax.plot(xs, [f.get("allocation") for f in fleet], "--", label="allocation", color="grey")
    ax.plot(xs, [f.get("sm_util") for f in fleet], ":", label="SM busy", color="black")
    ax.set_title("Fleet: allocated and busy is not the same as useful")
    ax.set_ylabel("ratio")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper right", fontsize=8)
    # Coverage and measured vs estimated MFU (and the simulator's truth where known).
    ax = axes[1]
    ax.plot(xs, [f.get("coverage") for f in fleet], "--", color="grey",
            label="coverage (GPU-seconds with known model FLOPs)")
    ax.plot(xs, [f.get("mfu") for f in fleet], "-o", ms=3, label="MFU measured (known GPU-seconds)")
    ax.plot(xs, [f.get("mfu_estimated") for f in fleet], "-^", ms=3,
            label="MFU estimated (known + counter estimate)")
    if truth:
        by_start = {round(t["window_start"], 3): t for t in truth if t["scope"] == "fleet"}
        pts = [(f["window_start"] - t_ref, by_start[round(f["window_start"], 3)])
               for f in fleet if round(f["window_start"], 3) in by_start]
        ax.plot([p[0] for p in pts],
                [p[1]["true_flops"] / p[1]["peak_flops"] if p[1]["peak_flops"] else None
                 for p in pts], ":", color="black",
                label="true MFU (simulator, every GPU-second)")
    ax.set_title("Fleet: coverage, measured vs estimated MFU")
    ax.set_ylabel("ratio")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="center right", fontsize=8)
    from cycler import cycler

    # More families than tab10 has colours: solid, then dashed, so no two lines look alike.
    distinct = cycler(linestyle=["-", "--", ":"]) * cycler(color=plt.cm.tab10.colors)
    for ax, scope in ((axes[2], "workload"), (axes[3], "node")):
        ax.set_prop_cycle(distinct)
        series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        buckets: dict[tuple[str, float], list[float]] = defaultdict(list)
        for r in collected.by_scope(scope):
            value = r.get("mfu") if r.get("mfu") is not None else r.get("mfu_estimated")
            if value is not None:
                name = archetype(r["key"]) if scope == "workload" else r["key"]
                buckets[(name, r["window_start"] - t_ref)].append(value)
        for (name, x), vals in sorted(buckets.items()):
            series[name].append((x, statistics.fmean(vals)))
        for key, pts in sorted(series.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1,
                    label=key if scope == "workload" else None)
        ax.set_title("MFU per workload family (mean over its jobs; estimated where not "
                     "reported)\nmarks: policy events, red drift, purple reporter mismatch, "
                     "orange the others" if scope == "workload"
                     else "MFU per node (estimated where not reported)")
        ax.set_ylabel("MFU")
        ax.set_ylim(0, max(0.7, *(p[1] for pts in series.values() for p in pts)) if series else 1)
        if scope == "workload" and series:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    # Policy events: marks on the workload panel, drift and reporter mismatch annotated.
    seen: set[str] = set()
    for e in collected.policy:
        data = e.get("data") or {}
        windows = data.get("windows") or {}
        t = windows.get("end") or windows.get("start")
        if t is None:
            continue
        x = float(t) - t_ref
        kind = e.get("type", "")[7:-3]
        color = {"drift": "red", "recovery": "green", "reporter_mismatch": "purple"}.get(
            kind, "orange")
        axes[2].axvline(x, color=color, alpha=0.25, lw=1)
        label = f"{kind} {e.get('subject', '')}"
        if kind in ("drift", "reporter_mismatch") and label not in seen:
            axes[2].annotate(label, (x, 0.02), rotation=90, fontsize=7, color=color)
            seen.add(label)
    axes[3].set_xlabel("seconds since the simulated fleet started (window start)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


SUMMED = ("gpus", "energy_j", "gpu_seconds", "achieved_flops", "estimated_flops", "windows")


def display_rows(rows: list[dict[str, Any]], max_jobs: int = 4) -> list[dict[str, Any]]:
    """Workload rows for the text tables: a family of more than ``max_jobs`` jobs (24 MIG
    slices of one inference service) is one line ``name-* (N jobs)``: ratios as means over
    its jobs, GPUs and energy summed, names (tenant, phase, regime, label) as the most
    common. report.json keeps every job."""
    fams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        fams[archetype(r["workload"])].append(r)
    out = []
    for fam, rs in fams.items():
        if len(rs) <= max_jobs:
            out += rs
            continue
        row: dict[str, Any] = {"workload": f"{fam}-* ({len(rs)} jobs)"}
        for k in rs[0]:
            if k == "workload":
                continue
            vals = [r.get(k) for r in rs if r.get(k) is not None]
            if k in SUMMED:
                row[k] = sum(vals) if vals else None
            elif vals and all(isinstance(v, int | float) and not isinstance(v, bool)
                              for v in vals):
                row[k] = statistics.fmean(vals)
            else:
                row[k] = _mode([v if not isinstance(v, dict | list) else None for v in vals])
        out.append(row)
    return sorted(out, key=lambda r: r["workload"])


def _kj(x: float | None) -> str:
    return "     -" if x is None else f"{x / 1e3:6.0f}"


def _pts(x: float | None) -> str:
    return "   -   " if x is None else f"{100 * x:+5.1f} pts"


def _g(x: float | None, scale: float = 1e9) -> str:
    return "    -" if x is None else f"{x / scale:7.1f}"


def render_summary(s: dict[str, Any], *, fleet: str, args: Any, drift_at_s: float,
                   ledger_table: str | None = None) -> list[str]:
    """The text summary (lines) of a :func:`summarize` result, ending with the ledger
    (``ledger_table``: :func:`mfucli.ledger.format_table` of the tenant ledger)."""
    lines = [
        "MFU pipeline demo report",
        "========================",
        f"fleet '{fleet}': {args.nodes} nodes x {args.gpus_per_node} GPUs, "
        f"{args.duration_s:.0f} s simulated, {args.window_s:.0f} s windows, "
        f"{s['fleet_windows']} fleet windows closed",
        "",
        "Provider view (fleet)",
        f"  allocation (GPU-seconds with a workload)  {_pct(s['fleet_allocation_mean'])}",
        f"  coverage (GPU-seconds with known FLOPs)   {_pct(s.get('fleet_coverage_mean'))}",
        f"  MFU measured (known GPU-seconds)          {_pct(s['fleet_mfu_mean'])}",
        f"  MFU estimated (known + counters)          {_pct(s.get('fleet_mfu_estimated_mean'))}",
        f"  OFU (counter-derived, where counters)     {_pct(s.get('fleet_ofu_mean'))}",
        f"  MFU over allocated GPUs                   {_pct(s['fleet_mfu_allocated_mean'])}",
        f"  MBU (GPU-seconds with reported bytes)     {_pct(s.get('fleet_mbu'))}",
        f"  useful FLOPs per joule (measured)         {_g(s.get('fleet_flops_per_j'))} GFLOP/J",
    ]
    src = s.get("fleet_flop_sources") or {}
    total = math.fsum(src.values())
    if total > 0:
        lines.append("  GPU-seconds by FLOP source: " + ", ".join(
            f"{k} {100 * v / total:.0f}%" for k, v in src.items()))
    gap = s.get("estimate_vs_truth")
    lines += ["", "Fleet mfu_estimated vs the simulator's ground truth"]
    if gap is None:
        lines.append("  (no ground truth for these windows)")
    else:
        lines += [
            f"  over {gap['windows']} windows; pipeline mfu_estimated "
            f"{_pct(gap['estimated'])} (measured mfu {_pct(gap['measured'])})",
            f"  true MFU over the same GPU-seconds (known + counters) {_pct(gap['truth_estimable'])}",
            f"  true MFU over every GPU-second                        {_pct(gap['truth_all'])}",
        ]
        if gap["estimated"] is None:
            lines.append("  the pipeline wrote no mfu_estimated (stream stage without §8 "
                         "accounting); the truth's own decomposition:")
        else:
            lines.append(f"  apart by {_pts(gap['gap_all'])} from the truth over every "
                         f"GPU-second ({_pts(gap['gap_estimable'])} over the same GPU-seconds); why:")
            lines.append(f"    the estimator itself (counter noise, clocks, corrections) "
                         f"{_pts(gap['estimator'])}")
        lines += [
            f"    over-reported FLOPs (a reporter counting twice)         {_pts(gap['over_reported'])}",
            f"    counters see hardware FLOPs (recompute, non-model work)  "
            f"{_pts(gap['hardware_not_model'])}",
            f"    busy GPUs without counters left out ('none')             "
            f"{_pts(gap['unknown_excluded'])}",
        ]
    lines += ["", "Tenant view, by workload family  jobs GPUs  coverage measured estimated "
              "true MFU  SM busy  MBU    regime   phase"]
    for f in s["families"]:
        lines.append(f"  {f['family'][:30]:<30} {f['workloads']:>4} {f['gpus']:>4}  "
                     f"{_pct(f.get('coverage_mean'))}  {_pct(f['mfu_mean'])}  "
                     f"{_pct(f.get('mfu_estimated_mean'))}  {_pct(f.get('true_mfu'))}  "
                     f"{_pct(f['sm_util_mean'])} {_pct(f.get('mbu_mean'))}  "
                     f"{f.get('regime') or '-':<8} {f['phase'] or '-'}")
    shown = display_rows(s["workloads"])
    lines += ["", "Per workload: measured vs estimated  tenant        coverage measured "
              "estimated  OFU    true MFU  energy kJ  GFLOP/J  label",
              "  (estimated: known + counter estimate; GFLOP/J: measured FLOPs per joule of "
              "the known GPU-seconds, '-' where nothing is known)"]
    for r in shown:
        lines.append(f"  {r['workload'][:34]:<34} {(r.get('tenant') or '-')[:13]:<13} "
                     f"{_pct(r.get('coverage_mean'))}  {_pct(r['mfu_mean'])}  "
                     f"{_pct(r.get('mfu_estimated_mean'))} {_pct(r.get('ofu_mean'))}  "
                     f"{_pct(r.get('true_mfu'))}     {_kj(r.get('energy_j'))}  "
                     f"{_g(r.get('flops_per_j'))}  {r.get('label', '')}")
    inference = [r for r in shown if r.get("phase") in ("decode", "prefill")
                 or r.get("mbu_mean") is not None]
    if inference:
        lines += ["", "Inference: judged on the binding resource     MFU    MBU  true MBU "
                  "regime   tokens/J"]
        for r in inference:
            tpj = r.get("tokens_per_j")
            lines.append(f"  {r['workload'][:28]:<28} {r.get('phase') or '-':<8} "
                         f"{_pct(r['mfu_mean'])} {_pct(r.get('mbu_mean'))} "
                         f"{_pct(r.get('true_mbu'))}  {r.get('regime') or '-':<8} "
                         f"{'-' if tpj is None else f'{tpj:.1f}':>7}  {r.get('label', '')}")
    for view, title in (("gpu_model", "GPU model"), ("model", "model"),
                        ("parallelism", "parallelism")):
        groups = s["structural"].get(view) or {}
        if groups:
            lines.append("")
            lines.append(f"MFU by {title} (GPU-seconds weighted, workloads)")
            lines += [f"  {k[:40]:<40} {_pct(v)}" for k, v in groups.items()]
    lines += ["", "Lowest-MFU workloads            mean MFU  first   last   SM busy GPUs"]
    worst = sorted((r for r in shown if r["mfu_mean"] is not None),
                   key=lambda r: r["mfu_mean"])[:10]
    for r in worst:
        lines.append(f"  {r['workload'][:28]:<28} {_pct(r['mfu_mean'])}  {_pct(r['mfu_first'])} "
                     f"{_pct(r['mfu_last'])}  {_pct(r['sm_util_mean'])} {r['gpus']:>4}")
    lines += [
        "",
        f"Busy but inefficient (mean SM busy >= {s['busy_thresholds']['sm_util_min']:.0%}, "
        f"mean MFU < {s['busy_thresholds']['mfu_max']:.0%}, not memory-bound): "
        + (", ".join(s["busy_but_inefficient"]) or "none"),
        "  flagged by the rules stage: " + (", ".join(s["busy_inefficient_subjects"]) or "none"),
        "Memory-bound (judged on MBU, not MFU): " + (", ".join(
            f"{r['workload']} ({r['label']})" for r in s["workloads"]
            if r["workload"] in s["memory_bound"]) or "none"),
        "  of these flagged inefficient by the rules stage: "
        + (", ".join(s["memory_bound_flagged"]) or "none"),
        f"Un-instrumented workloads (no report on any GPU-second): {len(s['uninstrumented'])}"
        + (f" ({', '.join(s['uninstrumented'])})" if s["uninstrumented"] else "")
        + "; flagged inefficient, underutilized or idle: "
        + (", ".join(s["uninstrumented_flagged"]) or "none"),
        f"Drift detected (io.mfu.drift.v1; the drifting job degrades at +{drift_at_s:.0f} s): "
        + (", ".join(s["drift_subjects"]) or "none"),
        "Reporter mismatch (io.mfu.reporter_mismatch.v1: reported MFU well above the "
        "counters' OFU): " + (", ".join(m["workload"] for m in s["reporter_mismatch"])
                              or "none"),
    ]
    honest = [m["workload"] for m in s["reporter_mismatch"] if m["verdict"].startswith("false")]
    if s["reporter_mismatch"]:
        lines.append("  honest reporters flagged: " + (", ".join(honest) or "none"))
    for m in s["reporter_mismatch"]:
        ratio = m.get("over_report")
        lines.append(f"  {m['workload']}: {m['events']} event(s), first after "
                     f"{m['windows_to_detect'] if m['windows_to_detect'] is not None else '?'} "
                     f"window(s); truth: reports {'?' if ratio is None else f'{ratio:.2f}x'} "
                     f"its model FLOPs -> {m['verdict']}")
    lines.append("Policy events by type: "
                 + (", ".join(f"{k}={v}" for k, v in sorted(s["policy_events_by_type"].items()))
                    or "none"))
    led = s.get("ledger") or {}
    lines += ["", "Ledger by tenant (mfu.ledger, the same table as `mfu ledger --by tenant`; "
              f"prices from {s.get('ledger_prices_source', '-')})"]
    if ledger_table and led.get("rows"):
        lines += ["  " + line if line else "" for line in ledger_table.splitlines()]
    else:
        lines.append("  (no workload records)")
    return lines


def write_report(out: Path, collected: Any, *, sim_started: float, fleet: str,
                 drift_at_s: float, args: Any,
                 truth: list[dict[str, Any]] | None = None) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(collected, truth, window_s=args.window_s)
    from mfucli.ledger import format_table, to_json

    ledger, prices, s["ledger_prices_source"] = ledger_by_tenant(
        list(collected.records.values()))
    s["ledger"] = to_json(ledger, prices)
    s.update({"fleet": fleet, "sim_started": sim_started, "drift_at_s": drift_at_s,
              "nodes": args.nodes, "gpus_per_node": args.gpus_per_node,
              "duration_s": args.duration_s, "window_s": args.window_s})
    (out / "report.json").write_text(json.dumps(s, indent=2, default=str))
    with open(out / "records.jsonl", "w") as fh:
        for r in sorted(collected.records.values(), key=lambda r: (r["scope"], r["window_start"])):
            fh.write(json.dumps(r) + "\n")
    with open(out / "policy-events.jsonl", "w") as fh:
        for e in collected.policy:
            fh.write(json.dumps(e) + "\n")
    if truth:
        with open(out / "truth.jsonl", "w") as fh:
            for t in truth:
                fh.write(json.dumps(t) + "\n")
    chart = out / "mfu-demo.png"
    t_ref = min(s["window_starts"], default=sim_started)
    _chart(chart, collected, t_ref, truth)

    url = os.environ.get("MFU_INFLUX_URL", "http://localhost:8086")
    bucket = os.environ.get("MFU_INFLUX_BUCKET", "mfu/autogen")
    lines = render_summary(s, fleet=fleet, args=args, drift_at_s=drift_at_s,
                           ledger_table=format_table(ledger))
    lines += [
        "",
        "Files: mfu-demo.png (chart), report.json (these numbers), records.jsonl (every "
        "mfu_window/1 record), policy-events.jsonl (CloudEvents), truth.jsonl (the "
        "simulator's ground truth per window), logs/",
        "",
        "Query the same data in InfluxDB (measurement 'mfu', tags scope/key/fleet):",
        f"  export MFU_INFLUX_URL={url}  # token: see `mfu dev env`",
        "  Flux:     from(bucket: \"" + bucket + "\") |> range(start: -1h)"
        f" |> filter(fn: (r) => r._measurement == \"mfu\" and r.scope == \"fleet\" and r.fleet == \"{fleet}\""
        " and r._field == \"mfu\")",
        f"  InfluxQL: SELECT mean(mfu), mean(mfu_estimated), mean(coverage) FROM mfu "
        f"WHERE scope='workload' AND fleet='{fleet}' GROUP BY \"key\"",
        "  curl:     curl -s -H \"Authorization: Token $(cat $MFU_INFLUX_TOKEN_FILE)\" "
        f"\"$MFU_INFLUX_URL/query?db={bucket.split('/')[0]}\" --data-urlencode "
        f"\"q=SELECT mfu, allocation FROM mfu WHERE scope='fleet' AND fleet='{fleet}'\"",
        "",
    ]
    summary = out / "summary.txt"
    summary.write_text("\n".join(lines))
    return {"summary": str(summary), "chart": str(chart), "json": str(out / "report.json")}
