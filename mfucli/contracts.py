"""``mfu contracts``: the field tables of docs/contracts.md, generated from the pydantic
models (the one definition of every event) and from the InfluxDB point builder.

``mfu contracts --write`` rewrites the generated blocks of ``docs/contracts.md`` in place
(prose outside the markers is kept); ``--check`` exits 1 when they are stale (a unit test
runs it, so a model change without its documentation fails CI).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mfu import events, topics

DOC = Path(__file__).resolve().parent.parent / "docs" / "contracts.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)",
                   re.DOTALL)


def _type_of(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        kinds = [_type_of(p, defs) for p in prop["anyOf"]]
        return " \\| ".join(dict.fromkeys(kinds))
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list[{_type_of(prop.get('items', {}), defs)}]"
    if kind == "object":
        extra = prop.get("additionalProperties")
        if isinstance(extra, dict):
            return f"object of {_type_of(extra, defs)}"
        return "object"
    return {"number": "float", "integer": "int", "string": "string", "boolean": "bool",
            "null": "null"}.get(kind, kind)


def _limits(prop: dict[str, Any]) -> str:
    found: list[str] = []
    for p in [prop, *prop.get("anyOf", [])]:
        for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                         ("exclusiveMaximum", "<"), ("minLength", "len >="),
                         ("maxLength", "len <="), ("maxItems", "items <="),
                         ("maxProperties", "keys <="), ("pattern", "matches")):
            if key in p:
                found.append(f"{sym} {p[key]}")
    return ", ".join(dict.fromkeys(found))


def field_table(model: type[BaseModel]) -> str:
    """Markdown table of a model's wire fields: name, type, required, limits, default."""
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    required = set(model.model_json_schema(by_alias=True, mode="validation").get("required", []))
    defs = schema.get("$defs", {})
    rows = ["| field | type | required | limits | default |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        default = "" if name in required or "default" not in prop else (
            f"`{json.dumps(prop['default'])}`")
        rows.append(f"| `{name}` | {_type_of(prop, defs)} | {'yes' if name in required else ''} "
                    f"| {_limits(prop)} | {default} |")
    return "\n".join(rows) + "\n"


def _full_window() -> events.MfuWindow:
    """A workload window with every optional field set (to list the InfluxDB point)."""
    payload: dict[str, Any] = {
        "event_id": "workload:w:1700000000.000", "scope": "workload", "key": "w",
        "window_start": 1.7e9, "window_end": 1.7e9 + 10, "mfu": 0.4, "achieved_flops": 1.0,
        "peak_flops": 2.5, "gpu_seconds": 10.0, "gpus": 1, "precision": "bf16",
        "gpu_model": "NVIDIA H100 80GB HBM3", "fleet": "default", "tenant": "team-a",
        "regime": "compute",
    }
    for name, info in events.MfuWindow.model_fields.items():
        if name in payload or info.is_required() or name == "schema_name":
            continue
        ann = str(info.annotation)
        if "FlopSources" in ann:
            payload[name] = events.FlopSources(reported=1.0)
        elif "Parallelism" in ann:
            payload[name] = events.Parallelism()
        elif "float" in ann or "Annotated" in ann:
            payload[name] = 0.5
        elif "int" in ann:
            payload[name] = 1
    return events.MfuWindow.model_validate(payload)


def influx_table() -> str:
    """Markdown table of the ``mfu`` measurement: tags and float fields."""
    from mfuio.influx import point_fields, to_line

    rec = _full_window()
    head = re.split(r"(?<!\\) ", to_line(rec), maxsplit=1)[0]  # up to the first unescaped space
    tags = [t.split("=", 1)[0] for t in re.split(r"(?<!\\),", head)[1:]]
    fields = sorted(point_fields(rec))
    rows = ["| kind | names |", "|---|---|", "| measurement | `mfu` |",
            "| tags | " + ", ".join(f"`{t}`" for t in tags) + " |",
            "| fields (float) | " + ", ".join(f"`{f}`" for f in fields) + " |",
            "| timestamp | `window_start`, nanoseconds |"]
    return "\n".join(rows) + "\n"


def topics_table() -> str:
    rows = ["| topic | carries | key |", "|---|---|---|",
            f"| `{topics.TELEMETRY}` | `gpu_sample/1` (or `batch/1` of them) | node |",
            f"| `{topics.FLOPS}` | `flop_report/1` (or `batch/1` of them) | node |",
            f"| `{topics.WORKLOAD}` | `mfu_window/1`, scope workload | workload |",
            f"| `{topics.NODE}` | `mfu_window/1`, scope node | node |",
            f"| `{topics.FLEET}` | `mfu_window/1`, scope fleet | fleet name |",
            f"| `{topics.POLICY}` | CloudEvents 1.0 (structured JSON) | subject |",
            f"| `{topics.DEADLETTER}` | `deadletter/1` | source key |",
            f"| `{topics.LATE}` (ours) | events that arrived after their window closed | node |",
            f"| `{topics.PARTIALS}` (internal) | node-stage partial sums and markers | scope key |"]
    return "\n".join(rows) + "\n"


GENERATORS = {
    "topics": topics_table,
    "gpu_sample": lambda: field_table(events.GpuSample),
    "flop_report": lambda: field_table(events.FlopReport),
    "parallelism": lambda: field_table(events.Parallelism),
    "mfu_window": lambda: field_table(events.MfuWindow),
    "flop_sources": lambda: field_table(events.FlopSources),
    "deadletter": lambda: field_table(events.DeadLetter),
    "cloudevent": lambda: field_table(events.CloudEvent),
    "influxdb": influx_table,
}


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    def fill(m: re.Match[str]) -> str:
        gen = GENERATORS.get(m["name"])
        if gen is None:
            raise SystemExit(f"docs/contracts.md: unknown generated block {m['name']!r}")
        return m.group(1) + gen() + m.group(4)
    return BLOCK.sub(fill, text)


def run(args: argparse.Namespace) -> int:
    text = args.doc.read_text(encoding="utf-8")
    new = render(text)
    if args.write:
        args.doc.write_text(new, encoding="utf-8")
        print(f"wrote {args.doc}")
        return 0
    if args.check:
        if new != text:
            print(f"{args.doc} is stale: run `mfu contracts --write`", file=sys.stderr)
            return 1
        print(f"{args.doc} is up to date")
        return 0
    sys.stdout.write(new)
    return 0


def register(sub: Any) -> None:
    ap = sub.add_parser("contracts", help="event and InfluxDB contract tables (docs/contracts.md)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="rewrite docs/contracts.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/contracts.md is stale")
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.set_defaults(func=run)
