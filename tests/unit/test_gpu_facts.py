"""The GPU facts file (mfu/data/gpus.yaml): every entry complete and sourced, and adding a
GPU is one entry in that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mfu import peaks
from mfu.peaks import DATA_FILE, Catalog, load_specs, spec_fields

ENTRIES = yaml.safe_load(DATA_FILE.read_text(encoding="utf-8"))


def test_every_builtin_spec_comes_from_the_data_file() -> None:
    assert [e["name"] for e in ENTRIES] == [s.name for s in peaks.BUILTIN_SPECS]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["name"])
def test_every_entry_is_sourced_and_dense(entry: dict) -> None:
    assert entry["source"], "every GPU names its overall source"
    assert entry["sources"]["peaks"], "peak values need a source"
    assert "sparsity" not in entry["sources"]["peaks"].lower() or "dense" in (
        entry["sources"]["peaks"] + entry["source"]
    ).lower() or "/ 2" in entry["sources"]["peaks"] or "half" in entry["sources"]["peaks"]
    assert entry.get("memory_bandwidth_gb_per_s"), "MBU needs every part's bandwidth"
    if entry.get("mig_profiles"):
        assert entry["sources"]["mig"], "MIG SM counts need a source"


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.get("mig_profiles")],
                         ids=lambda e: e["name"])
def test_mig_memory_slices_agree_with_the_profile_names(entry: dict) -> None:
    # "3g.40gb" on an 80 GB part is 40 / (80 / 8) = 4 of 8 memory slices.
    for profile, body in entry["mig_profiles"].items():
        gb = int(re.search(r"(\d+)gb$", profile)[1])
        assert body["memory_slices"] == max(1, min(8, round(gb / (entry["memory_gb"] / 8))))
        assert 0 < body["sms"] <= entry["compute_units"]


def test_h100_mig_shares_come_from_the_data() -> None:
    # 1g.20gb: 26 of 132 SMs, 2 of 8 memory slices; bandwidth 3350 GB/s x 2/8.
    assert peaks.mig_sm_fraction("NVIDIA H100 80GB HBM3", "1g.20gb") == 26 / 132
    assert peaks.peak_bytes_per_s("NVIDIA H100 80GB HBM3", mig_profile="1g.20gb") == 3.35e12 * 2 / 8
    # A compute instance shares its GPU instance's memory: A100 1c.3g.20gb has 4 of 8.
    assert peaks._DEFAULT.mig_memory_fraction("NVIDIA A100-SXM4-40GB", "1c.3g.20gb") == 4 / 8


def test_units_convert_exactly() -> None:
    # TFLOP/s and GB/s in the file, FLOP/s and bytes/s in the catalog, with no ulp drift.
    h100 = peaks.lookup("NVIDIA H100 80GB HBM3")
    assert h100.peak_flops_per_s["bf16"] == 989.4e12
    assert h100.memory_bandwidth_bytes_per_s == 3.35e12
    assert h100.gpm_counters and h100.tdp_w == 700 and h100.interconnect
    assert not peaks.lookup("NVIDIA A100-SXM4-80GB").gpm_counters


def test_tensor_core_parts_are_known_from_their_peaks() -> None:
    assert peaks.lookup("NVIDIA H100 80GB HBM3").tensor_cores
    plain = peaks.GPUSpec(name="Plain", peak_flops_per_s={"fp32": 10e12, "fp64": 5e12})
    assert not plain.tensor_cores


def test_adding_a_gpu_is_one_entry(tmp_path: Path) -> None:
    # What a contributor writes: one entry in the facts file (here a copy of it).
    new_entry = """
- name: Acme X1
  vendor: other
  device_names: [Acme X1 96GB]
  compute_units: 100
  boost_clock_mhz: 2000
  memory_gb: 96
  memory_bandwidth_gb_per_s: 4000
  dense_peak_tflops: {fp32: 50, bf16: 800}
  mig_profiles:
    1g.12gb: {sms: 12, memory_slices: 1}
  source: Acme X1 datasheet
  sources: {peaks: Acme X1 datasheet table 2}
"""
    path = tmp_path / "gpus.yaml"
    path.write_text(DATA_FILE.read_text(encoding="utf-8") + new_entry, encoding="utf-8")
    cat = Catalog(load_specs(path))
    assert cat.resolve_peak("Acme X1 96GB", "bf16").peak_flops_per_s == 800e12
    assert cat.resolve_peak("Acme X1", "bf16", mig_profile="1g.12gb").peak_flops_per_s == (
        800e12 * 12 / 100)
    assert cat.peak_bytes_per_s("Acme X1", mig_profile="1g.12gb") == 4000e9 / 8
    assert cat.lookup("NVIDIA H100 80GB HBM3").name == "NVIDIA H100 SXM5 80GB"


def test_a_bad_entry_names_the_gpu(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text("- name: Broken\n  dense_peak_tflops: {bf16: -1}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Broken"):
        load_specs(path)


def test_overrides_accept_the_data_file_form() -> None:
    fields = spec_fields({"name": "Y", "dense_peak_tflops": {"bf16": 100},
                          "memory_bandwidth_gb_per_s": 1000,
                          "mig_profiles": {"1g.10gb": {"sms": 10, "memory_slices": 1}}})
    assert fields["peak_flops_per_s"] == {"bf16": 100e12}
    assert fields["memory_bandwidth_bytes_per_s"] == 1e12
    assert (fields["mig_profiles"], fields["mig_memory_slices"]) == ({"1g.10gb": 10},
                                                                    {"1g.10gb": 1})
