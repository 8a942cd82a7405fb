"""The `mfu` command: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). Modules are imported
lazily by name so that `mfu peaks` never imports Kafka, Faust or InfluxDB.

A subcommand whose stack is not installed (the pipeline's heavy dependencies are extras
in pyproject.toml) ends with one line naming the extra to install, not a traceback.
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


# subcommand -> the pyproject extra its I/O stack comes from
EXTRA_OF_COMMAND: dict[str, str] = {
    "agent": "agent",
    "simulate": "agent",
    "streams": "streams",
    "policies": "streams",
    "ledger": "streams",
    "demo": "demo",
}
# third-party module -> the extra that installs it (for commands not listed above, e.g.
# `mfu bench streams`, and to tell a missing extra from a bug: other modules re-raise)
EXTRA_OF_MODULE: dict[str, str] = {
    "confluent_kafka": "agent",
    "pynvml": "agent",
    "prometheus_client": "agent",
    "faust": "streams",
    "mode": "streams",
    "aiokafka": "streams",
    "cramjam": "streams",
    "influxdb_client": "streams",
    "matplotlib": "demo",
    "testcontainers": "docker",
}


def missing_extra(command: str | None, exc: ModuleNotFoundError) -> str | None:
    """The one-line error for a subcommand whose extra is not installed, or None when
    the missing module belongs to no extra (a bug: let it raise)."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_OF_MODULE:
        return None
    extra = EXTRA_OF_COMMAND.get(command or "", EXTRA_OF_MODULE[top])
    return (f"the Python package {top!r} is not installed; `mfu {command}` needs the "
            f"{extra!r} extra: pip install 'mfu-pipeline[{extra}]' (from a clone: "
            f"pip install ./sdk '.[{extra}]')")


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
            if exc.name != module_name and missing_extra(name, exc) is None:
                raise
            continue  # not installed: `mfu <name>` says which extra when run
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
    except ModuleNotFoundError as exc:
        message = missing_extra(args.command, exc)
        if message is None:
            raise
        print(f"mfu {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
