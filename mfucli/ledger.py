"""`mfu ledger`: who held which GPUs, how much useful model math came out, at what cost.

    mfu ledger --since 24h [--until now] [--by tenant|workload|gpu-model] [--fleet NAME]
               [--csv FILE|-] [--json] [--reference-mfu 0.4] [--prices JSON]

Reads the window points of measurement ``mfu`` back from InfluxDB (``MFU_INFLUX_*``:
Flux over the v2 API, or InfluxQL ``/query`` with ``MFU_INFLUX_API=v1``), computes the
ledger with :mod:`mfu.ledger` and prints a table, CSV (stable column names with units,
for finance) or JSON. Prices: ``MFU_LEDGER_PRICES`` / ``MFU_LEDGER_PRICES_FILE``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

from mfu.config import InfluxSettings, LedgerSettings
from mfu.ledger import (
    COLUMNS,
    GROUP_BYS,
    SOURCES,
    GroupBy,
    Ledger,
    LedgerPoint,
    Prices,
    build_ledger,
    row_dict,
    unallocated_row,
)

FIELDS: tuple[str, ...] = (
    "gpu_seconds", "window_s", "achieved_tflops", "estimated_tflops", "mfu", "mfu_estimated",
    "energy_j", "tokens", "allocation", *(f"flop_sources_{s}" for s in SOURCES),
)
TAGS: tuple[str, ...] = ("scope", "key", "tenant", "gpu_model", "fleet")
SCOPES: tuple[str, ...] = ("workload", "node", "fleet")
# Columns that lead every CSV line, so monthly files concatenate and stay self-describing.
CSV_COLUMNS: tuple[str, ...] = ("period_start", "period_end", "group_by", *COLUMNS)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(sub: Any) -> None:
    p = sub.add_parser("ledger", help="GPU-hours, useful PFLOPs, energy and cost per tenant")
    p.add_argument("--since", default="24h",
                   help="start: a duration back from now (90m, 24h, 7d) or a time "
                   "(2026-12-01, 2026-12-01T00:00:00Z, Unix seconds); default 24h")
    p.add_argument("--until", default="now", help="end (exclusive), same forms; default now")
    p.add_argument("--by", choices=GROUP_BYS, default="tenant", help="grouping (default tenant)")
    p.add_argument("--fleet", metavar="NAME", help="only points whose fleet tag is NAME")
    p.add_argument("--csv", metavar="FILE", help="also write CSV to FILE ('-': CSV on stdout)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--reference-mfu", type=float, default=None,
                   help="MFU counted as fully useful (MFU_LEDGER_REFERENCE_MFU, default 0.4)")
    p.add_argument("--prices", help="JSON {gpu_model or glob: USD per GPU-hour}, overrides "
                   "MFU_LEDGER_PRICES")
    p.add_argument("--hop-s", type=float, default=None,
                   help="window hop when windows overlap (MFU_WINDOW_HOP_S; default tumbling)")
    p.set_defaults(func=_run)


# --- time -----------------------------------------------------------------------------


def parse_time(text: str, now_s: float) -> float:
    """Unix seconds from ``now``, a duration back from now, a number, or ISO 8601 (UTC
    unless it says otherwise)."""
    from mfucli.main import CLIError

    t = text.strip()
    if t == "now":
        return now_s
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", t)
    if m:
        return now_s - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"cannot read time {text!r}: use a duration (24h, 7d, 90m), "
                       "an ISO 8601 time (2026-12-01T00:00:00Z) or Unix seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# --- reading InfluxDB -----------------------------------------------------------------


def _flux_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flux_query(settings: InfluxSettings, since_s: float, until_s: float,
               fleet: str | None) -> str:
    """One table per series, one row per point, fields pivoted into columns."""
    fleet_filter = f" and r.fleet == {_flux_str(fleet)}" if fleet else ""
    scopes = " or ".join(f'r.scope == "{s}"' for s in SCOPES)
    fields = ", ".join(f'"{f}"' for f in FIELDS)
    return (
        f"from(bucket: {_flux_str(settings.bucket)})"
        f" |> range(start: {_iso(since_s)}, stop: {_iso(until_s)})"
        f" |> filter(fn: (r) => r._measurement == {_flux_str(settings.measurement)}"
        f" and ({scopes}){fleet_filter})"
        f" |> filter(fn: (r) => contains(value: r._field, set: [{fields}]))"
        ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
    )


def _add(points: list[LedgerPoint], skipped: list[str], time_s: float,
         tags: dict[str, Any], fields: dict[str, Any]) -> None:
    """Append the point, or note why it is not a window point (others write to ``mfu`` too)."""
    try:
        points.append(LedgerPoint.from_influx(time_s, tags, fields))
    except ValueError as exc:
        skipped.append(str(exc).splitlines()[0])


def _read_v2(settings: InfluxSettings, since_s: float, until_s: float,
             fleet: str | None, skipped: list[str]) -> list[LedgerPoint]:
    from influxdb_client import InfluxDBClient

    token = settings.token.get_secret_value() if settings.token else ""
    points: list[LedgerPoint] = []
    with InfluxDBClient(url=settings.url, token=token, org=settings.org,
                        timeout=int(settings.timeout_s * 1000)) as client:
        for table in client.query_api().query(flux_query(settings, since_s, until_s, fleet)):
            for rec in table.records:
                v = rec.values
                _add(points, skipped, rec.get_time().timestamp(), {t: v.get(t) for t in TAGS},
                     {f: v.get(f) for f in FIELDS})
    return points


def _ql_ident(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _ql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def influxql_query(settings: InfluxSettings, since_s: float, until_s: float,
                   fleet: str | None) -> str:
    scopes = " OR ".join(f"\"scope\" = '{s}'" for s in SCOPES)
    fleet_filter = f" AND \"fleet\" = {_ql_str(fleet)}" if fleet else ""
    return (
        f"SELECT {', '.join(_ql_ident(f) for f in FIELDS)} FROM {_ql_ident(settings.measurement)}"
        f" WHERE time >= {round(since_s * 1e9)} AND time < {round(until_s * 1e9)}"
        f" AND ({scopes}){fleet_filter} GROUP BY *"
    )


def _read_v1(settings: InfluxSettings, since_s: float, until_s: float,
             fleet: str | None, skipped: list[str]) -> list[LedgerPoint]:
    db, rp = settings.v1_database()
    params = {"db": db, "q": influxql_query(settings, since_s, until_s, fleet), "epoch": "ns"}
    if rp:
        params["rp"] = rp
    req = urllib.request.Request(f"{settings.url.rstrip('/')}/query?"
                                 f"{urllib.parse.urlencode(params)}")
    if settings.token:
        cred = base64.b64encode(settings.token.get_secret_value().encode()).decode()
        req.add_header("Authorization", f"Basic {cred}")
    with urllib.request.urlopen(req, timeout=settings.timeout_s) as resp:
        body = json.load(resp)
    points: list[LedgerPoint] = []
    for result in body.get("results", []):
        if "error" in result:
            raise OSError(f"InfluxQL query refused: {result['error']}")
        for series in result.get("series", []):
            tags = series.get("tags", {})
            cols = series["columns"]
            for values in series["values"]:
                row = dict(zip(cols, values, strict=True))
                _add(points, skipped, row.pop("time") / 1e9, tags, row)
    return points


def read_points(settings: InfluxSettings, since_s: float, until_s: float,
                fleet: str | None = None, skipped: list[str] | None = None
                ) -> list[LedgerPoint]:
    """Workload, node and fleet points with ``since_s <= window_start < until_s``; points
    that are not window points (no ``window_s``, invalid values) go to ``skipped``."""
    reader = _read_v1 if settings.api == "v1" else _read_v2
    return reader(settings, since_s, until_s, fleet, [] if skipped is None else skipped)


# --- output ---------------------------------------------------------------------------


def csv_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """Group lines, the total over the groups, then unallocated capacity (if known)."""
    head = {
        "period_start": _iso(ledger.since_s) if ledger.since_s is not None else None,
        "period_end": _iso(ledger.until_s) if ledger.until_s is not None else None,
        "group_by": ledger.group_by,
    }
    rows = [row_dict(r) for r in ledger.rows] + [row_dict(ledger.total)]
    if ledger.capacity is not None:
        rows.append(unallocated_row(ledger.capacity))
    return [{**head, **r} for r in rows]


def to_csv(ledger: Ledger) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(ledger):
        # repr-exact floats: finance re-sums these, so no rounding here; empty = unknown.
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def to_json(ledger: Ledger, prices: Prices) -> dict[str, Any]:
    data = ledger.model_dump(mode="json")
    data["rows"] = [row_dict(r) | {"unpriced_models": r.unpriced_models} for r in ledger.rows]
    data["total"] = row_dict(ledger.total) | {"unpriced_models": ledger.total.unpriced_models}
    data["unallocated"] = unallocated_row(ledger.capacity) if ledger.capacity else None
    data["provider_cost_usd"] = ledger.provider_cost_usd()
    data["period_start"] = _iso(ledger.since_s) if ledger.since_s is not None else None
    data["period_end"] = _iso(ledger.until_s) if ledger.until_s is not None else None
    data["prices_usd_per_gpu_hour"] = prices.usd_per_gpu_hour
    return data


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


# (header, column, format) of the terminal table; the CSV has every column.
_TABLE = (
    ("GPU-h", "allocated_gpu_hours", ",.2f"),
    ("idle GPU-h", "idle_gpu_hours", ",.2f"),
    ("unknown GPU-h", "unknown_gpu_hours", ",.2f"),
    ("PFLOP meas.", "measured_pflop", ",.3f"),
    ("PFLOP est.", "estimated_pflop", ",.3f"),
    ("MFU", "mfu", ".1%"),
    ("kWh", "energy_kwh", ",.3f"),
    ("cost $", "cost_usd", ",.2f"),
    ("$/PFLOP-h", "usd_per_useful_pflop_hour", ",.2f"),
    ("wasted $", "wasted_usd", ",.2f"),
    ("unknown $", "unknown_usd", ",.2f"),
)


def format_table(ledger: Ledger) -> str:
    """An aligned plain-text table (no dependency), then the period and fleet notes."""
    lines_in = csv_rows(ledger)
    head = [ledger.group_by, *(h for h, _, _ in _TABLE)]
    body = [[str(r["group"]), *(_num(r[c], f) for _, c, f in _TABLE)] for r in lines_in]
    unalloc = [r for r in lines_in if r["unallocated_gpu_hours"] is not None]
    for r, cells in zip(lines_in, body, strict=True):
        if r["unallocated_gpu_hours"] is not None:
            cells[1] = _num(r["unallocated_gpu_hours"], ",.2f")
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    n_groups = len(ledger.rows)
    out = [fmt(head), fmt(["-" * w for w in widths])]
    out += [fmt(c) for c in body[:n_groups]]
    out.append(fmt(["-" * w for w in widths]))
    out += [fmt(c) for c in body[n_groups:]]
    period = (f"{_iso(ledger.since_s)} .. {_iso(ledger.until_s)}"
              if ledger.since_s is not None and ledger.until_s is not None else "all points")
    out.append("")
    out.append(f"period {period}; wasted = per window, cost of known GPU-hours x max(0, 1 - "
               f"MFU / {ledger.reference_mfu:g}); $/PFLOP-h = cost / (measured FLOPs / 3.6e18)")
    cap = ledger.capacity
    if cap is not None:
        out.append(
            f"fleet ({cap.source_scope} points): {cap.installed_gpu_hours:,.2f} GPU-h installed, "
            f"{_num(cap.allocation, '.1%')} allocated, {cap.unallocated_gpu_hours:,.2f} GPU-h "
            f"unallocated; provider cost ${_num(ledger.provider_cost_usd(), ',.2f')}"
        )
    if unalloc and cap is not None and cap.unpriced_gpu_hours:
        out.append(f"  {cap.unpriced_gpu_hours:,.2f} unallocated GPU-h have no price")
    if ledger.total.unpriced_gpu_hours:
        out.append(
            f"warning: {ledger.total.unpriced_gpu_hours:,.2f} GPU-h on models without a price "
            f"({', '.join(ledger.total.unpriced_models)}) are not in any cost: set "
            "MFU_LEDGER_PRICES='{\"<gpu_model>\": USD_PER_GPU_HOUR, \"*\": ...}'"
        )
    return "\n".join(out)


def ledger_summary(records: Any, *, by: GroupBy = "tenant",
                   settings: LedgerSettings | None = None) -> str:
    """The ledger table of ``mfu_window/1`` records already in hand (the demo's summary
    ends with it), priced by ``MFU_LEDGER_*``; no InfluxDB needed."""
    settings = settings or LedgerSettings()
    points = [LedgerPoint.from_window(r) for r in records]
    ledger = build_ledger(points, Prices(usd_per_gpu_hour=settings.prices), by=by,
                          reference_mfu=settings.reference_mfu)
    return format_table(ledger)


# --- command --------------------------------------------------------------------------


def _prices(args: argparse.Namespace, settings: LedgerSettings) -> Prices:
    from mfucli.main import CLIError

    table = dict(settings.prices)
    if args.prices:
        try:
            extra = json.loads(args.prices)
            if not isinstance(extra, dict):
                raise ValueError("not an object")
            table.update({str(k): float(v) for k, v in extra.items()})
        except (ValueError, TypeError) as exc:
            raise CLIError(f"--prices must be a JSON object {{gpu_model: USD per GPU-hour}}: "
                           f"{exc}") from None
    bad = {k: v for k, v in table.items() if not v > 0}
    if bad:
        raise CLIError(f"prices must be positive USD per GPU-hour, got {bad}")
    return Prices(usd_per_gpu_hour=table)


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from mfu.config import WindowSettings
    from mfucli.main import CLIError

    try:
        settings = LedgerSettings()
        hop_s = args.hop_s if args.hop_s is not None else WindowSettings().hop_s
    except ValidationError as exc:
        raise CLIError(f"ledger settings refused: {exc.errors()[0]['msg']} "
                       "(check MFU_LEDGER_PRICES / MFU_LEDGER_PRICES_FILE)") from None
    prices = _prices(args, settings)
    reference = args.reference_mfu if args.reference_mfu is not None else settings.reference_mfu
    if not 0 < reference <= 1:
        raise CLIError(f"--reference-mfu must be in (0, 1], got {reference}")
    now_s = float(int(time.time()))  # whole seconds: the period prints and re-runs cleanly
    since_s, until_s = parse_time(args.since, now_s), parse_time(args.until, now_s)
    if until_s <= since_s:
        raise CLIError(f"--until ({_iso(until_s)}) must be after --since ({_iso(since_s)})")
    try:
        influx = InfluxSettings()
    except ValidationError as exc:
        raise CLIError(f"InfluxDB settings refused: {exc.errors()[0]['msg']} "
                       "(check MFU_INFLUX_*)") from None
    try:
        skipped: list[str] = []
        points = read_points(influx, since_s, until_s, args.fleet, skipped)
    except (OSError, urllib.error.URLError) as exc:
        raise CLIError(f"cannot read InfluxDB at {influx.url}: {exc} (check MFU_INFLUX_URL, "
                       "_TOKEN, _BUCKET, _API)") from None
    except Exception as exc:  # influxdb-client: ApiException; urllib3: connection errors
        module = type(exc).__module__
        if module.startswith("urllib3"):
            raise CLIError(f"cannot read InfluxDB at {influx.url}: {type(exc).__name__} "
                           "(check MFU_INFLUX_URL, _TOKEN, _BUCKET, _API)") from None
        if module.startswith("influxdb_client"):
            raise CLIError(f"InfluxDB at {influx.url} refused the query: "
                           f"{str(exc).splitlines()[0][:300]}") from None
        raise
    if skipped:
        print(f"warning: skipped {len(skipped)} points that are not window points, e.g. "
              f"{skipped[0]}", file=sys.stderr)
    ledger = build_ledger(points, prices, by=args.by, reference_mfu=reference, hop_s=hop_s,
                          since_s=since_s, until_s=until_s)
    if args.csv and args.csv != "-":
        try:
            with open(args.csv, "w", newline="") as fh:
                fh.write(to_csv(ledger))
        except OSError as exc:
            raise CLIError(f"cannot write --csv {args.csv}: {exc.strerror}") from None
    if args.csv == "-":
        sys.stdout.write(to_csv(ledger))
    elif args.json:
        print(json.dumps(to_json(ledger, prices), indent=2))
    else:
        if not ledger.rows:
            print(f"no workload windows between {_iso(since_s)} and {_iso(until_s)}"
                  + (f" in fleet {args.fleet}" if args.fleet else ""), file=sys.stderr)
        print(format_table(ledger))
    return 0
