"""`mfu bench <target>`: run one stage's benchmark.

Each target names a module exposing ``main(argv: list[str]) -> int`` and arguments put
before the user's; modules are imported only when their target runs.
"""

from __future__ import annotations

import argparse
import importlib

from mfucli.main import CLIError

# target -> (module with main(argv) -> int, leading argv)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "agent": ("bench.agent", []),
    "sdk": ("bench.agent", ["--only", "sdk"]),
    "streams": ("bench.streams", []),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS),
                       description="Run a stage's benchmark; arguments after the target go "
                       "to it (e.g. `mfu bench agent --gpus 8 --seconds 600`).")
    p.add_argument("target", choices=sorted(BENCHMARKS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module_name, leading = BENCHMARKS[args.target]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CLIError(f"benchmark {args.target!r} is not available: module "
                           f"{module_name} is missing") from None
        raise
    return int(module.main([*leading, *args.args]) or 0)
