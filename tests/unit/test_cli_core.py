"""`mfu peaks` and `mfu flops` through mfucli.main.main: JSON contract and user errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mfucli.main import main

DATA = Path(__file__).parent / "data"
LLAMA = str(DATA / "llama-2-7b.json")
H100 = "NVIDIA H100 80GB HBM3"


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def run_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"mfu {argv[0]}: error: ")
    return lines[0]


# --------------------------------------------------------------------------- peaks

def test_peaks_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["peaks", "--gpu", H100, "--precision", "bf16"])
    assert out["peak_flops_per_s"] == 989.4e12
    assert out["gpu"] == "NVIDIA H100 SXM5 80GB" and out["gpu_name"] == H100
    assert out["precision"] == "bf16" and out["dense"] is True
    assert out["mig_sm_fraction"] == 1.0 and out["clock_factor"] == 1.0
    assert "whitepaper" in out["source"]


def test_peaks_mig_and_clock(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["peaks", "--gpu", "NVIDIA A100-SXM4-40GB", "--precision", "bf16",
                            "--mig-profile", "1g.5gb", "--sm-clock-mhz", "705"])
    assert out["peak_flops_per_s"] == pytest.approx(312e12 * 14 / 108 * 0.5)
    assert out["mig_profile"] == "1g.5gb" and out["mig_sm_fraction"] == 14 / 108
    assert out["clock_factor"] == 0.5 and out["sm_clock_mhz"] == 705


def test_peaks_form_factor(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["peaks", "--gpu", "H100", "--form-factor", "PCIe",
                            "--precision", "fp8"])
    assert out["gpu"] == "NVIDIA H100 PCIe" and out["peak_flops_per_s"] == 1513e12


def test_peaks_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["peaks", "--gpu", H100, "--precision", "bf16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "989.4 TFLOP/s" in lines[0] and "dense" in lines[0]


def test_peaks_list(capsys: pytest.CaptureFixture[str]) -> None:
    listed = run_json(capsys, ["peaks", "--list"])
    names = {spec["name"] for spec in listed}
    assert {"NVIDIA H100 SXM5 80GB", "AMD Instinct MI300X", "NVIDIA L4"} <= names
    h100 = next(s for s in listed if s["name"] == "NVIDIA H100 SXM5 80GB")
    assert h100["peak_flops_per_s"]["bf16"] == 989.4e12 and h100["compute_units"] == 132
    assert main(["peaks", "--list"]) == 0
    text = capsys.readouterr().out
    assert "NVIDIA H100 SXM5 80GB" in text and "989.4" in text


def test_peaks_override_from_environment(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFU_PEAK_OVERRIDES",
                       '{"CLI Test GPU 9": {"peak_tflops": {"bf16": 250}, "form_factor": "PCIe"}}')
    out = run_json(capsys, ["peaks", "--gpu", "cli test gpu 9", "--precision", "bf16"])
    assert out["peak_flops_per_s"] == 250e12


@pytest.mark.parametrize(("argv", "needle"), [
    (["peaks", "--gpu", "NVIDIA Imaginary 9000", "--precision", "bf16"], "NVIDIA Imaginary 9000"),
    (["peaks", "--gpu", H100, "--precision", "fp4"], "unknown precision"),
    (["peaks", "--gpu", "NVIDIA L4", "--precision", "fp64"], "no dense fp64"),
    (["peaks", "--precision", "bf16"], "--gpu"),
    (["peaks", "--gpu", H100], "--precision"),
    (["peaks", "--gpu", H100, "--precision", "bf16", "--sm-clock-mhz", "-5"], "--sm-clock-mhz"),
    (["peaks", "--gpu", H100, "--precision", "bf16", "--sm-clock-mhz", "fast"], "--sm-clock-mhz"),
    (["peaks", "--gpu", H100, "--precision", "bf16", "--mig-profile", "9g.1gb"], "9g.1gb"),
    (["peaks", "--gpu", "H100", "--precision", "bf16"], "ambiguous"),
])
def test_peaks_user_errors(capsys: pytest.CaptureFixture[str], argv: list[str],
                           needle: str) -> None:
    assert needle in run_error(capsys, argv)


def test_peaks_bad_override_environment(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFU_PEAK_OVERRIDES", "{oops")
    assert "MFU_PEAK_OVERRIDES" in run_error(capsys, ["peaks", "--list"])


# --------------------------------------------------------------------------- flops

def test_flops_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["flops", "--model", LLAMA, "--gpu", H100, "--precision", "bf16",
                            "--tokens-per-s-per-gpu", "3000", "--seq-len", "4096"])
    for key in ("params", "active_params", "model_flops_per_token", "achieved_flops_per_s_per_gpu",
                "peak_flops_per_s_per_gpu", "mfu", "hfu", "hardware_flops_per_token"):
        assert key in out
    assert out["params"] == 6_738_415_616 and out["active_params"] == 6_738_415_616
    assert out["model_flops_per_token"] == 46_084_915_200
    assert out["achieved_flops_per_s_per_gpu"] == 3000 * 46_084_915_200
    assert out["peak_flops_per_s_per_gpu"] == 989.4e12
    assert out["mfu"] == pytest.approx(3000 * 46_084_915_200 / 989.4e12)
    assert 0.13 < out["mfu"] < 0.15  # a ratio, not a percentage
    assert out["hfu"] == out["mfu"] and out["hardware_flops_per_token"] == 46_084_915_200
    assert out["seq_len"] == 4096 and out["mode"] == "train" and out["recompute"] == "none"


def test_flops_params_only_omits_attention(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["flops", "--params", "7B", "--gpu", H100, "--precision", "bf16",
                            "--achieved-tflops-per-gpu", "400"])
    assert out["params"] == 7e9 and out["model_flops_per_token"] == 42e9
    assert out["attention_flops_per_token"] == 0.0 and "omitted" in out["attention_term"]
    assert out["achieved_flops_per_s_per_gpu"] == 400e12
    assert out["mfu"] == pytest.approx(400 / 989.4)
    assert out["tokens_per_s_per_gpu"] == pytest.approx(400e12 / 42e9)


def test_flops_recompute_gives_hfu(capsys: pytest.CaptureFixture[str]) -> None:
    # MT-NLG 530B, 280 DGX A100: 126 TFLOP/s per GPU with full recomputation (Smith et al.).
    tokens_per_s = 1920 * 2048 / 60.1 / 2240
    out = run_json(capsys, ["flops", "--model", str(DATA / "mt-nlg-530b.json"),
                            "--gpu", "NVIDIA A100-SXM4-40GB", "--precision", "bf16",
                            "--tokens-per-s-per-gpu", str(tokens_per_s), "--seq-len", "2048",
                            "--recompute", "full"])
    assert out["hfu"] == pytest.approx(126 / 312, rel=0.02)
    assert out["mfu"] == pytest.approx(0.302, rel=0.02)
    assert out["hardware_flops_per_token"] > out["model_flops_per_token"]


def test_flops_modes_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["flops", "--model", LLAMA, "--gpu", "NVIDIA L4", "--precision", "bf16",
            "--tokens-per-s-per-gpu", "10"]
    default = run_json(capsys, base)
    assert default["seq_len"] == 4096 and default["seq_len_source"] == "max_position_embeddings"
    decode = run_json(capsys, [*base, "--mode", "decode", "--seq-len", "1000"])
    assert decode["model_flops_per_token"] == 2 * 6_607_077_376 + 4 * 32 * 32 * 128 * 1000
    causal = run_json(capsys, [*base, "--seq-len", "1000", "--causal"])
    assert causal["attention_flops_per_token"] == 6 * 32 * 32 * 128 * 1000
    assert causal["causal"] is True


def test_flops_readable_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--model", LLAMA, "--gpu", H100, "--precision", "bf16",
                 "--tokens-per-s-per-gpu", "3000", "--seq-len", "4096"]) == 0
    text = capsys.readouterr().out
    assert "MFU 0.1397" in text and "TFLOP/s" in text


def test_flops_warns_when_mfu_exceeds_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--params", "7e9", "--gpu", "NVIDIA L4", "--precision", "bf16",
                 "--tokens-per-s-per-gpu", "1e6", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["mfu"] > 1 and "warning" in captured.err


@pytest.mark.parametrize(("extra", "needle"), [
    (["--model", "/nonexistent/config.json"], "cannot read model config"),
    (["--model", "BADJSON"], "not valid JSON"),
    (["--model", "NOKEYS"], "num_hidden_layers"),
    (["--model", "NEGATIVE"], "hidden_size"),
    (["--params=-7e9"], "--params"),
    (["--params", "seven"], "--params"),
    ([], "--model"),
])
def test_flops_model_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            extra: list[str], needle: str) -> None:
    files = {
        "BADJSON": "{not json",
        "NOKEYS": json.dumps({"hidden_size": 64}),
        "NEGATIVE": json.dumps({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": -64,
                                "num_attention_heads": 4, "head_dim": 16,
                                "intermediate_size": 128, "vocab_size": 100}),
    }
    argv = ["flops", "--gpu", H100, "--precision", "bf16", "--tokens-per-s-per-gpu", "10"]
    for arg in extra:
        if arg in files:
            path = tmp_path / f"{arg}.json"
            path.write_text(files[arg])
            arg = str(path)
        argv.append(arg)
    assert needle in run_error(capsys, argv)


@pytest.mark.parametrize(("extra", "needle"), [
    (["--gpu", "NVIDIA Imaginary 9000", "--precision", "bf16", "--tokens-per-s-per-gpu", "10"],
     "NVIDIA Imaginary 9000"),
    (["--gpu", H100, "--precision", "fp5", "--tokens-per-s-per-gpu", "10"], "unknown precision"),
    (["--gpu", H100, "--precision", "bf16", "--tokens-per-s-per-gpu", "-10"], "non-negative"),
    (["--gpu", H100, "--precision", "bf16", "--achieved-tflops-per-gpu", "nan"], "finite"),
    (["--gpu", H100, "--precision", "bf16"], "exactly one"),
    (["--gpu", H100, "--precision", "bf16", "--tokens-per-s-per-gpu", "1",
      "--achieved-tflops-per-gpu", "1"], "exactly one"),
    (["--gpu", H100, "--precision", "bf16", "--tokens-per-s-per-gpu", "1", "--seq-len", "0"],
     "--seq-len"),
    (["--gpu", H100, "--precision", "bf16", "--tokens-per-s-per-gpu", "1", "--seq-len", "1.5"],
     "--seq-len"),
    (["--gpu", H100, "--precision", "bf16", "--tokens-per-s-per-gpu", "1", "--mode", "serve"],
     "--mode"),
    (["--gpu", H100, "--precision", "bf16", "--tokens-per-s-per-gpu", "1", "--mode", "decode",
      "--recompute", "full"], "--recompute"),
    (["--precision", "bf16", "--tokens-per-s-per-gpu", "1"], "--gpu"),
])
def test_flops_input_errors(capsys: pytest.CaptureFixture[str], extra: list[str],
                            needle: str) -> None:
    assert needle in run_error(capsys, ["flops", "--model", LLAMA, *extra])
