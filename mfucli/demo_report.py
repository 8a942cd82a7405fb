"""The demo's report: PNG chart of MFU per level with policy events, a text summary,
the raw records, and how to query the same data in InfluxDB."""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


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


def summarize(collected: Any) -> dict[str, Any]:
    """Numbers of the report, from the records read off the output topics."""
    fleet = collected.by_scope("fleet")
    workloads: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in collected.by_scope("workload"):
        workloads[r["key"]].append(r)
    rows = []
    for key, recs in sorted(workloads.items()):
        mfus = [r["mfu"] for r in recs if r.get("mfu") is not None]
        sms = [r["sm_util"] for r in recs if r.get("sm_util") is not None]
        tens = [r["tensor_active"] for r in recs if r.get("tensor_active") is not None]
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
            "phase": recs[-1].get("phase"),
        })
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[archetype(r["workload"])].append(r)
    families = [{
        "family": fam,
        "workloads": len(rs),
        "gpus": sum(r["gpus"] for r in rs),
        "mfu_mean": _mean([r["mfu_mean"] for r in rs if r["mfu_mean"] is not None]),
        "sm_util_mean": _mean([r["sm_util_mean"] for r in rs if r["sm_util_mean"] is not None]),
        "tensor_active_mean": _mean([r["tensor_active_mean"] for r in rs
                                     if r["tensor_active_mean"] is not None]),
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
    busy = [r["workload"] for r in rows if (r["sm_util_mean"] or 0) >= busy_sm
            and r["mfu_mean"] is not None and r["mfu_mean"] < low_mfu]
    by_type = Counter(e.get("type", "?") for e in collected.policy)
    drift_events = [e for e in collected.policy if e.get("type") == "io.mfu.drift.v1"]
    busy_events = [e for e in collected.policy
                   if "busy" in e.get("type", "") or "inefficient" in e.get("type", "")]
    return {
        "fleet_windows": len(fleet),
        "fleet_mfu_mean": _mean([f["mfu"] for f in fleet if f.get("mfu") is not None]),
        "fleet_allocation_mean": _mean([f["allocation"] for f in fleet
                                        if f.get("allocation") is not None]),
        "fleet_mfu_allocated_mean": _mean([f["mfu_allocated"] for f in fleet
                                           if f.get("mfu_allocated") is not None]),
        "fleet_gpus": max((f.get("gpus") or 0) for f in fleet) if fleet else 0,
        "window_starts": [f["window_start"] for f in fleet],
        "workloads": rows,
        "families": families,
        "structural": structural,
        "busy_but_inefficient": busy,
        "busy_thresholds": {"sm_util_min": busy_sm, "mfu_max": low_mfu},
        "policy_events_by_type": dict(by_type),
        "drift_subjects": sorted({e.get("subject", "") for e in drift_events}),
        "busy_inefficient_subjects": sorted({e.get("subject", "") for e in busy_events}),
    }


def _chart(path: Path, collected: Any, t_ref: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(13, 11), sharex=True)
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
    for ax, scope in ((axes[1], "workload"), (axes[2], "node")):
        series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        buckets: dict[tuple[str, float], list[float]] = defaultdict(list)
        for r in collected.by_scope(scope):
            if r.get("mfu") is not None:
                name = archetype(r["key"]) if scope == "workload" else r["key"]
                buckets[(name, r["window_start"] - t_ref)].append(r["mfu"])
        for (name, x), vals in sorted(buckets.items()):
            series[name].append((x, statistics.fmean(vals)))
        for key, pts in sorted(series.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1,
                    label=key if scope == "workload" else None)
        ax.set_title("MFU per workload family (mean over its jobs)" if scope == "workload"
                     else "MFU per node")
        ax.set_ylabel("MFU")
        ax.set_ylim(0, max(0.7, *(p[1] for pts in series.values() for p in pts)) if series else 1)
        if scope == "workload" and series:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    # Policy events: marks on the workload panel, drift annotated.
    seen: set[str] = set()
    for e in collected.policy:
        data = e.get("data") or {}
        windows = data.get("windows") or {}
        t = windows.get("end") or windows.get("start")
        if t is None:
            continue
        x = float(t) - t_ref
        kind = e.get("type", "")[7:-3]
        color = {"drift": "red", "recovery": "green"}.get(kind, "orange")
        axes[1].axvline(x, color=color, alpha=0.25, lw=1)
        label = f"{kind} {e.get('subject', '')}"
        if kind == "drift" and label not in seen:
            axes[1].annotate(label, (x, 0.02), rotation=90, fontsize=7, color="red")
            seen.add(label)
    axes[2].set_xlabel("seconds since the simulated fleet started (window start)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(out: Path, collected: Any, *, sim_started: float, fleet: str,
                 drift_at_s: float, args: Any) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(collected)
    s.update({"fleet": fleet, "sim_started": sim_started, "drift_at_s": drift_at_s,
              "nodes": args.nodes, "gpus_per_node": args.gpus_per_node,
              "duration_s": args.duration_s, "window_s": args.window_s})
    (out / "report.json").write_text(json.dumps(s, indent=2))
    with open(out / "records.jsonl", "w") as fh:
        for r in sorted(collected.records.values(), key=lambda r: (r["scope"], r["window_start"])):
            fh.write(json.dumps(r) + "\n")
    with open(out / "policy-events.jsonl", "w") as fh:
        for e in collected.policy:
            fh.write(json.dumps(e) + "\n")
    chart = out / "mfu-demo.png"
    t_ref = min(s["window_starts"], default=sim_started)
    _chart(chart, collected, t_ref)

    url = os.environ.get("MFU_INFLUX_URL", "http://localhost:8086")
    bucket = os.environ.get("MFU_INFLUX_BUCKET", "mfu/autogen")
    lines = [
        "MFU pipeline demo report",
        "========================",
        f"fleet '{fleet}': {args.nodes} nodes x {args.gpus_per_node} GPUs, "
        f"{args.duration_s:.0f} s simulated, {args.window_s:.0f} s windows, "
        f"{s['fleet_windows']} fleet windows closed",
        "",
        "Provider view (fleet)",
        f"  allocation (GPU-seconds with a workload)  {_pct(s['fleet_allocation_mean'])}",
        f"  MFU over all installed GPUs               {_pct(s['fleet_mfu_mean'])}",
        f"  MFU over allocated GPUs                   {_pct(s['fleet_mfu_allocated_mean'])}",
        "",
        "Tenant view, by workload family  jobs GPUs  mean MFU  SM busy  tensor  precision phase",
    ]
    for f in s["families"]:
        lines.append(f"  {f['family'][:30]:<30} {f['workloads']:>4} {f['gpus']:>4}   "
                     f"{_pct(f['mfu_mean'])}   {_pct(f['sm_util_mean'])}  "
                     f"{_pct(f['tensor_active_mean'])}  {f['precision'] or '-':<9} {f['phase'] or '-'}")
    for view, title in (("gpu_model", "GPU model"), ("model", "model"),
                        ("parallelism", "parallelism")):
        groups = s["structural"].get(view) or {}
        if groups:
            lines.append("")
            lines.append(f"MFU by {title} (GPU-seconds weighted, workloads)")
            lines += [f"  {k[:40]:<40} {_pct(v)}" for k, v in groups.items()]
    lines += ["", "Lowest-MFU workloads            mean MFU  first   last   SM busy GPUs"]
    worst = sorted((r for r in s["workloads"] if r["mfu_mean"] is not None),
                   key=lambda r: r["mfu_mean"])[:10]
    for r in worst:
        lines.append(f"  {r['workload'][:28]:<28} {_pct(r['mfu_mean'])}  {_pct(r['mfu_first'])} "
                     f"{_pct(r['mfu_last'])}  {_pct(r['sm_util_mean'])} {r['gpus']:>4}")
    lines += [
        "",
        f"Busy but inefficient (mean SM busy >= {s['busy_thresholds']['sm_util_min']:.0%}, "
        f"mean MFU < {s['busy_thresholds']['mfu_max']:.0%}): "
        + (", ".join(s["busy_but_inefficient"]) or "none"),
        "  flagged by the rules stage: " + (", ".join(s["busy_inefficient_subjects"]) or "none"),
        f"Drift detected (io.mfu.drift.v1; the drifting job degrades at +{drift_at_s:.0f} s): "
        + (", ".join(s["drift_subjects"]) or "none"),
        "Policy events by type: "
        + (", ".join(f"{k}={v}" for k, v in sorted(s["policy_events_by_type"].items())) or "none"),
        "",
        "Files: mfu-demo.png (chart), report.json (these numbers), records.jsonl (every "
        "mfu_window/1 record), policy-events.jsonl (CloudEvents), logs/",
        "",
        "Query the same data in InfluxDB (measurement 'mfu', tags scope/key/fleet):",
        f"  export MFU_INFLUX_URL={url}  # token: see `mfu dev env`",
        "  Flux:     from(bucket: \"" + bucket + "\") |> range(start: -1h)"
        f" |> filter(fn: (r) => r._measurement == \"mfu\" and r.scope == \"fleet\" and r.fleet == \"{fleet}\""
        " and r._field == \"mfu\")",
        f"  InfluxQL: SELECT mean(mfu) FROM mfu WHERE scope='workload' AND fleet='{fleet}' "
        "GROUP BY \"key\"",
        "  curl:     curl -s -H \"Authorization: Token $(cat $MFU_INFLUX_TOKEN_FILE)\" "
        f"\"$MFU_INFLUX_URL/query?db={bucket.split('/')[0]}\" --data-urlencode "
        f"\"q=SELECT mfu, allocation FROM mfu WHERE scope='fleet' AND fleet='{fleet}'\"",
        "",
    ]
    summary = out / "summary.txt"
    summary.write_text("\n".join(lines))
    return {"summary": str(summary), "chart": str(chart), "json": str(out / "report.json")}
