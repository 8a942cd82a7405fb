"""`mfu agent`, `mfu simulate` and `mfu bench` command lines."""

from __future__ import annotations

import json

import pytest

from mfu.events import FlopReport, GpuSample
from mfucli import bench as bench_cli
from mfucli.main import main


def test_simulate_fast_to_stdout(capsys) -> None:
    rc = main(["simulate", "--fast", "--stdout", "--duration-s", "3", "--nodes", "2",
               "--gpus-per-node", "2", "--start-ts", "1700000000", "--seed", "5",
               "--truth-window-s", "1"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    events = [line for line in lines if "topic" in line]
    truths = [line for line in lines if "scope" in line]
    samples = [GpuSample.model_validate(e["value"]) for e in events
               if e["topic"] == "mfu.telemetry.v1"]
    reports = [FlopReport.model_validate(e["value"]) for e in events
               if e["topic"] == "mfu.flops.v1"]
    assert len(samples) == 3 * 4 and reports
    assert {s.ts for s in samples} == {1700000001.0, 1700000002.0, 1700000003.0}
    fleet = [t for t in truths if t["scope"] == "fleet"]
    assert [t["window_start"] for t in fleet] == [1700000000.0, 1700000001.0, 1700000002.0]
    assert all(t["gpus"] == 4 and 0 <= t["mfu"] < 1 for t in fleet)
    assert sum(t["achieved_flops"] for t in fleet) == pytest.approx(sum(r.flops for r in reports))


def test_simulate_describe(capsys) -> None:
    assert main(["simulate", "--describe", "--nodes", "5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"llm_train", "comm_bound_dp", "mig_inference"} <= {r["archetype"] for r in rows}


@pytest.mark.parametrize(("argv", "message"), [
    (["simulate", "--fast"], "--duration-s"),
    (["simulate", "--describe", "--gpu-models", "NVIDIA Imaginary X1"], "Imaginary"),
    (["simulate", "--describe", "--drift-at-s", "5", "--drift-workload", "nope"], "nope"),
    (["agent", "--interval-s", "-1"], "interval_s"),
    (["agent", "--socket", "relative/path"], "socket"),
])
def test_user_errors_are_one_line_exit_2(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_registry_runs_the_sdk_bench(capsys) -> None:
    assert main(["bench", "sdk", "--sdk-calls", "2000"]) == 0
    assert "step()" in capsys.readouterr().out


def test_bench_missing_module_is_a_user_error(monkeypatch, capsys) -> None:
    monkeypatch.setitem(bench_cli.BENCHMARKS, "ghost", ("streams.no_such_bench", []))
    monkeypatch.setattr(bench_cli, "BENCHMARKS", dict(bench_cli.BENCHMARKS))
    args = type("A", (), {"target": "ghost", "args": []})()
    with pytest.raises(bench_cli.CLIError, match="not available"):
        bench_cli.run(args)


def test_agent_without_nvml_is_a_user_error(monkeypatch, tmp_path, capsys) -> None:
    from agents import nvml
    from mfu_testing.fake_nvml import FakeNvml

    monkeypatch.setattr(nvml, "_load_pynvml",
                        lambda: FakeNvml({"devices": [], "driver_not_loaded": True}))
    argv = ["agent", "--socket", str(tmp_path / "a.sock"), "--spool-dir",
            str(tmp_path / "spool"), "--metrics-port", "0", "--bootstrap", "127.0.0.1:9"]
    assert main(argv) == 2
    assert "cannot initialize NVML" in capsys.readouterr().err


def test_agent_socket_that_cannot_be_bound_is_a_user_error(monkeypatch, tmp_path, capsys) -> None:
    from agents import nvml
    from mfu_testing.fake_nvml import FakeNvml, node_document

    monkeypatch.setattr(nvml, "_load_pynvml", lambda: FakeNvml(node_document(1)))
    (tmp_path / "file").write_text("not a directory")
    argv = ["agent", "--socket", str(tmp_path / "file" / "a.sock"), "--spool-dir",
            str(tmp_path / "spool"), "--metrics-port", "0", "--bootstrap", "127.0.0.1:9"]
    assert main(argv) == 2
    assert "--socket" in capsys.readouterr().err
