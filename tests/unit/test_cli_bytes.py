"""`mfu peaks` memory bandwidth + ridge point, and `mfu flops --mode decode` bytes/MBU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mfucli.main import main

H100 = "NVIDIA H100 80GB HBM3"
DATA = Path(__file__).parent / "data"


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- peaks


def test_peaks_bandwidth_and_ridge_full_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["peaks", "--gpu", H100, "--precision", "bf16"])
    # H100 SXM: 3.35 TB/s HBM3; ridge = 989.4e12 FLOP/s / 3.35e12 B/s = 295.34 FLOP/B
    assert out["peak_bytes_per_s"] == 3.35e12 and out["peak_tb_per_s"] == 3.35
    assert out["mig_memory_fraction"] == 1.0
    assert out["ridge_flops_per_byte"] == pytest.approx(989.4e12 / 3.35e12)
    assert out["memory_bandwidth_bytes_per_s"] == 3.35e12  # existing key kept


def test_peaks_bandwidth_and_ridge_mig_slice(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["peaks", "--gpu", H100, "--precision", "fp8",
                            "--mig-profile", "3g.40gb"])
    # 3g.40gb: 40 GB of 80 -> 4 of 8 memory slices -> 3.35e12 * 4/8 = 1.675e12 B/s;
    # 60 of 132 SMs -> 1978.9e12 * 60/132 FLOP/s; ridge = their ratio
    assert out["peak_bytes_per_s"] == pytest.approx(1.675e12)
    assert out["mig_memory_fraction"] == pytest.approx(0.5)
    assert out["ridge_flops_per_byte"] == pytest.approx((1978.9e12 * 60 / 132) / 1.675e12)


def test_peaks_text_line_shows_bandwidth_and_ridge(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["peaks", "--gpu", H100, "--precision", "bf16"]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    assert "3.350 TB/s memory bandwidth" in line and "ridge point 295.3 FLOP/byte" in line


def test_peaks_without_bandwidth_in_catalog(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFU_PEAK_OVERRIDES", '{"Bandwidthless GPU 1": {"peak_tflops": {"bf16": 100}}}')
    out = run_json(capsys, ["peaks", "--gpu", "Bandwidthless GPU 1", "--precision", "bf16"])
    assert out["peak_bytes_per_s"] is None and out["ridge_flops_per_byte"] is None
    assert main(["peaks", "--gpu", "Bandwidthless GPU 1", "--precision", "bf16"]) == 0
    assert "memory bandwidth not in the catalog" in capsys.readouterr().out


# --------------------------------------------------------------------------- flops


@pytest.fixture
def llama() -> str:
    return str(DATA / "llama-3-8b.json")


def test_flops_decode_bytes_and_mbu(capsys: pytest.CaptureFixture[str], llama: str) -> None:
    out = run_json(capsys, ["flops", "--model", llama, "--mode", "decode", "--gpu", H100,
                            "--precision", "bf16", "--tokens-per-s-per-gpu", "1000",
                            "--batch-size", "8", "--context-len", "2048"])
    # bytes per step = weights 7,504,658,432 * 2 + KV 8 * 2048 * 131,072 (see
    # test_decode_bytes.py) = 15,009,316,864 + 2,147,483,648 = 17,156,800,512
    assert out["weight_bytes_per_step"] == 15_009_316_864
    assert out["kv_cache_bytes_per_step"] == 2_147_483_648
    assert out["bytes_per_step"] == 17_156_800_512
    assert out["bytes_per_token"] == 2_144_600_064  # / batch 8
    assert (out["batch_size"], out["context_len"], out["seq_len"]) == (8, 2048, 2048)
    # 1000 tokens/s * 2,144,600,064 B = 2.144600064e12 B/s of 3.35e12 -> MBU 0.64018
    assert out["achieved_bytes_per_s_per_gpu"] == 2_144_600_064_000
    assert out["peak_bytes_per_s_per_gpu"] == 3.35e12
    assert out["mbu"] == pytest.approx(0.6401791236, rel=1e-9)
    assert out["ridge_flops_per_byte"] == pytest.approx(989.4e12 / 3.35e12)
    assert out["arithmetic_intensity_flops_per_byte"] == pytest.approx(
        out["model_flops_per_token"] / 2_144_600_064)
    assert out["mfu"] is not None and out["mode"] == "decode"  # existing keys kept


def test_flops_decode_text(capsys: pytest.CaptureFixture[str], llama: str) -> None:
    assert main(["flops", "--model", llama, "--mode", "decode", "--gpu", H100, "--precision",
                 "bf16", "--tokens-per-s-per-gpu", "1000", "--batch-size", "8",
                 "--context-len", "2048"]) == 0
    text = capsys.readouterr().out
    assert "decode bytes/step (batch 8, context 2048): 1.716e+10" in text
    assert "MBU 0.6402 (64.0%)" in text


def test_flops_decode_with_params_only_has_no_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["flops", "--params", "7e9", "--mode", "decode", "--gpu", H100,
                            "--precision", "bf16", "--tokens-per-s-per-gpu", "10"])
    assert out["bytes_per_step"] is None and out["mbu"] is None and "--model" in out["bytes_note"]


@pytest.mark.parametrize(("extra", "needle"), [
    (["--mode", "train", "--batch-size", "8"], "only applies to --mode decode"),
    (["--mode", "decode", "--batch-size", "0"], "--batch-size"),
    (["--mode", "decode", "--context-len", "100", "--seq-len", "200"], "differ"),
    (["--mode", "decode", "--kv-precision", "fp4"], "unknown precision"),
])
def test_flops_decode_user_errors(capsys: pytest.CaptureFixture[str], llama: str,
                                  extra: list[str], needle: str) -> None:
    argv = ["flops", "--model", llama, "--gpu", H100, "--precision", "bf16",
            "--tokens-per-s-per-gpu", "10", *extra]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
