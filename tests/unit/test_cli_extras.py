"""`mfu <subcommand>` without its extra says which extra to install, in one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mfucli.main import EXTRA_OF_COMMAND, SUBCOMMANDS, main, missing_extra

ROOT = Path(__file__).parents[2]


def _forget(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    """Drop cached modules so the next import runs again (and meets the blocked one)."""
    for name in list(sys.modules):
        if name.split(".")[0] in prefixes or name in prefixes:
            monkeypatch.delitem(sys.modules, name)


def test_streams_without_faust_names_the_streams_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _forget(monkeypatch, "streams", "mfucli.streams", "faust", "mode")
    monkeypatch.setitem(sys.modules, "faust", None)  # `import faust` -> ModuleNotFoundError
    assert main(["streams"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0  # one line, no traceback
    assert err.startswith("mfu streams: error: the Python package 'faust' is not installed")
    assert "pip install 'mfu-pipeline[streams]'" in err
    assert "pip install ./sdk '.[streams]'" in err


def test_mapping_by_command_then_module() -> None:
    exc = ModuleNotFoundError("No module named 'confluent_kafka'", name="confluent_kafka")
    # confluent-kafka is in two extras: the command decides
    assert "[agent]" in (missing_extra("agent", exc) or "")
    assert "[streams]" in (missing_extra("policies", exc) or "")
    # `mfu bench` spans stacks: the module decides
    faust = ModuleNotFoundError("No module named 'faust'", name="faust.worker")
    assert "[streams]" in (missing_extra("bench", faust) or "")
    # a module of no extra is a bug, not a missing extra
    assert missing_extra("streams", ModuleNotFoundError("x", name="streams.nope")) is None
    assert set(EXTRA_OF_COMMAND.values()) <= {"agent", "streams", "demo"}


def test_a_missing_project_module_still_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module of no extra missing is a bug: the traceback is kept."""
    (tmp_path / "broken_cmd.py").write_text(
        "import mfu.no_such_module\n\ndef register(sub):\n    pass\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SUBCOMMANDS, "broken", "broken_cmd")
    with pytest.raises(ModuleNotFoundError, match=r"mfu\.no_such_module"):
        main(["broken"])


def test_core_commands_need_no_extra() -> None:
    """`mfu peaks/flops/contracts/policies check` run with every extra's modules blocked."""
    code = textwrap.dedent("""
        import sys
        for m in ("faust", "mode", "aiokafka", "confluent_kafka", "influxdb_client",
                  "prometheus_client", "pynvml", "matplotlib", "cramjam"):
            sys.modules[m] = None  # import -> ModuleNotFoundError, as if not installed
        from mfucli.main import main
        rcs = [main(["peaks", "--gpu", "NVIDIA H100 80GB HBM3", "--precision", "bf16"]),
               main(["flops", "--params", "7e9", "--gpu", "NVIDIA H100 80GB HBM3", "--precision", "bf16",
                     "--tokens-per-s-per-gpu", "1000"]),
               main(["contracts", "--check"]),
               main(["policies", "check", "policies/default_rules.yaml"])]
        print("RCS", rcs)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "RCS [0, 0, 0, 0]"
