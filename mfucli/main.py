"""The `mfu` command: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). Modules are imported
lazily by name so that `mfu peaks` never imports Kafka, Faust or InfluxDB.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module under mfucli/ that registers it
SUBCOMMANDS: dict[str, str] = {
    "peaks": "mfucli.peaks",
    "flops": "mfucli.flops",
    "dev": "mfucli.dev",
    "agent": "mfucli.agent",
    "simulate": "mfucli.agent",
    "streams": "mfucli.streams",
    "policies": "mfucli.policies",
    "bench": "mfucli.bench",
    "demo": "mfucli.demo",
    "contracts": "mfucli.contracts",
    "ledger": "mfucli.ledger",
}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfu", description="Model FLOP Utilization pipeline")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    seen: set[str] = set()
    for name, module_name in SUBCOMMANDS.items():
        if module_name in seen:
            continue
        # Only import the module the user asked for (fast, and no I/O stack for `peaks`);
        # for --help import all that can be imported.
        if wanted is not None and SUBCOMMANDS.get(wanted) != module_name:
            sub.add_parser(name, help=argparse.SUPPRESS)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        seen.add(module_name)
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except CLIError as exc:
        print(f"mfu {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
