"""The house rules of the layout, read from the import statements of each package.

- ``mfu_sdk`` (the ``mfu-sdk`` distribution) imports the standard library and itself only;
- ``mfu`` (the pure core) imports no stage, I/O or test package;
- ``policies`` imports nothing from ``streams`` (the Faust app factory, Kafka admin and
  InfluxDB writer live in the shared I/O package ``mfuio``);
- no product package imports the fakes (``mfu_testing``), ``bench`` or ``examples``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
PRODUCT = ("mfu", "mfuio", "agents", "streams", "policies", "mfucli", "devenv")


def imports(package: str) -> dict[str, set[str]]:
    """Module path -> the absolute module names it imports (top level and in functions)."""
    found: dict[str, set[str]] = {}
    root = REPO / package
    for path in sorted(root.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    assert found, f"no modules under {root}"
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def test_sdk_imports_the_standard_library_only() -> None:
    for module, names in imports("sdk/mfu_sdk").items():
        # torch is imported inside measure_flops only, with an ImportError telling what to do
        outside = {n for n in names if top(n) not in sys.stdlib_module_names
                   and top(n) not in {"mfu_sdk", "__future__", "torch"}}
        assert not outside, (module, outside)


def test_the_pure_core_imports_no_stage() -> None:
    stages = {"agents", "streams", "policies", "mfuio", "mfucli", "devenv", "bench",
              "mfu_testing", "examples", "faust", "confluent_kafka", "influxdb_client",
              "pynvml", "prometheus_client"}
    for module, names in imports("mfu").items():
        assert not {n for n in names if top(n) in stages}, module


def test_policies_import_nothing_from_streams() -> None:
    for module, names in imports("policies").items():
        from_streams = {n for n in names if top(n) == "streams"}
        assert not from_streams, (module, from_streams)


def test_shared_io_imports_no_stage() -> None:
    # mfuio is what both stages use: it must not reach back into either of them.
    for module, names in imports("mfuio").items():
        stages = {n for n in names if top(n) in {"streams", "policies", "agents", "mfucli"}}
        assert not stages, (module, stages)


@pytest.mark.parametrize("package", PRODUCT)
def test_product_packages_import_no_fake_bench_or_example(package: str) -> None:
    for module, names in imports(package).items():
        if module == "mfucli/bench.py":
            continue  # `mfu bench`: names bench modules as strings, imports them on demand
        dev = {n for n in names if top(n) in {"mfu_testing", "bench", "examples"}}
        if module == "mfucli/policies.py":
            dev -= {"examples.scaler"}  # `mfu policies scaler` runs the example, lazily
        assert not dev, (module, dev)
