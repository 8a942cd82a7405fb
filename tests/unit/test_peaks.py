"""GPU peak catalog: datasheet values, name resolution, MIG, clocks, overrides."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mfu import peaks
from mfu.peaks import (
    BUILTIN_SPECS,
    AmbiguousGPUError,
    Catalog,
    GPUSpec,
    UnknownGPUError,
    UnsupportedPrecisionError,
    lookup,
    mig_sm_fraction,
    peak_flops_per_s,
)
from mfu.precision import PRECISIONS

T = 1e12

# Dense peaks written out from the vendor documents (sparse figures halved where only
# those are printed). Retyped here, not imported, so a catalog edit must match a source.
DATASHEET: dict[str, dict[str, float]] = {
    # NVIDIA A100 datasheet: FP64 TC 19.5, FP32 19.5, TF32 156, BF16/FP16 312, INT8 624.
    "NVIDIA A100-SXM4-40GB": {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T,
                              "bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T},
    "NVIDIA A100-SXM4-80GB": {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T,
                              "bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T},
    "NVIDIA A100-PCIE-40GB": {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T,
                              "bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T},
    "NVIDIA A100 80GB PCIe": {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T,
                              "bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T},
    # H100 whitepaper Table 3, SXM5 dense: FP64 TC 66.9, FP32 66.9, TF32 494.7,
    # BF16/FP16 989.4, FP8/INT8 1978.9.
    "NVIDIA H100 80GB HBM3": {"fp64": 66.9 * T, "fp32": 66.9 * T, "tf32": 494.7 * T,
                              "bf16": 989.4 * T, "fp16": 989.4 * T, "fp8": 1978.9 * T,
                              "int8": 1978.9 * T},
    # H100 whitepaper Table 3, PCIe dense: 51.2, 51.2, 378, 756, 756, 1513, 1513.
    "NVIDIA H100 PCIe": {"fp64": 51.2 * T, "fp32": 51.2 * T, "tf32": 378 * T,
                         "bf16": 756 * T, "fp16": 756 * T, "fp8": 1513 * T, "int8": 1513 * T},
    # H100 datasheet, NVL: FP64 TC 60, FP32 60, TF32 835*, BF16 1671*, FP8 3341* (* sparse).
    "NVIDIA H100 NVL": {"fp64": 60 * T, "fp32": 60 * T, "tf32": 835 / 2 * T,
                        "bf16": 1671 / 2 * T, "fp16": 1671 / 2 * T, "fp8": 3341 / 2 * T,
                        "int8": 3341 / 2 * T},
    # H200 datasheet SXM: same GH100 compute as H100 SXM5.
    "NVIDIA H200": {"fp64": 66.9 * T, "fp32": 66.9 * T, "tf32": 494.7 * T, "bf16": 989.4 * T,
                    "fp16": 989.4 * T, "fp8": 1978.9 * T, "int8": 1978.9 * T},
    # H200 datasheet NVL: FP64 TC 60, FP32 60, TF32 835*, BF16 1671*, FP8 3341*.
    "NVIDIA H200 NVL": {"fp64": 60 * T, "fp32": 60 * T, "tf32": 835 / 2 * T,
                        "bf16": 1671 / 2 * T, "fp16": 1671 / 2 * T, "fp8": 3341 / 2 * T,
                        "int8": 3341 / 2 * T},
    # GH200 datasheet: H100 SXM compute (FP8 3958*, BF16 1979*, TF32 989*, FP64 TC 67).
    "NVIDIA GH200 480GB": {"fp64": 66.9 * T, "fp32": 66.9 * T, "tf32": 494.7 * T,
                           "bf16": 989.4 * T, "fp16": 989.4 * T, "fp8": 1978.9 * T,
                           "int8": 1978.9 * T},
    "NVIDIA GH200 144G HBM3e": {"fp64": 66.9 * T, "fp32": 66.9 * T, "tf32": 494.7 * T,
                                "bf16": 989.4 * T, "fp16": 989.4 * T, "fp8": 1978.9 * T,
                                "int8": 1978.9 * T},
    # HGX B200 datasheet, 8 GPUs: FP64 296 TF, FP32 600 TF, TF32 18 PF*, BF16 36 PF*,
    # FP8 72 PF*, INT8 72 POPS*.
    "NVIDIA B200": {"fp64": 296 / 8 * T, "fp32": 600 / 8 * T, "tf32": 18000 / 16 * T,
                    "bf16": 36000 / 16 * T, "fp16": 36000 / 16 * T, "fp8": 72000 / 16 * T,
                    "int8": 72000 / 16 * T},
    # GB200 NVL72 datasheet, 72 GPUs: FP64 3240 TF, FP32 6480 TF, TF32 180 PF*,
    # BF16 360 PF*, FP8 720 PF*, INT8 720 POPS*.
    "NVIDIA GB200": {"fp64": 3240 / 72 * T, "fp32": 6480 / 72 * T, "tf32": 180000 / 144 * T,
                     "bf16": 360000 / 144 * T, "fp16": 360000 / 144 * T,
                     "fp8": 720000 / 144 * T, "int8": 720000 / 144 * T},
    # L40S datasheet: FP32 91.6, TF32 183, BF16/FP16 362.05, FP8 733, INT8 733 (dense).
    "NVIDIA L40S": {"fp32": 91.6 * T, "tf32": 183 * T, "bf16": 362.05 * T, "fp16": 362.05 * T,
                    "fp8": 733 * T, "int8": 733 * T},
    # L4 datasheet: FP32 30.3, TF32 120*, BF16/FP16 242*, FP8 485*, INT8 485*.
    "NVIDIA L4": {"fp32": 30.3 * T, "tf32": 60 * T, "bf16": 121 * T, "fp16": 121 * T,
                  "fp8": 242.5 * T, "int8": 242.5 * T},
    # A10 datasheet: FP32 31.2, TF32 62.5, BF16/FP16 125, INT8 250 (dense).
    "NVIDIA A10": {"fp32": 31.2 * T, "tf32": 62.5 * T, "bf16": 125 * T, "fp16": 125 * T,
                   "int8": 250 * T},
    # A10G (AWS G5; derived): FP32 35, TF32 35, BF16/FP16 70, INT8 140.
    "NVIDIA A10G": {"fp32": 35 * T, "tf32": 35 * T, "bf16": 70 * T, "fp16": 70 * T,
                    "int8": 140 * T},
    # V100 datasheet: SXM2 7.8 / 15.7 / 125; PCIe 7 / 14 / 112; V100S 8.2 / 16.4 / 130.
    "Tesla V100-SXM2-16GB": {"fp64": 7.8 * T, "fp32": 15.7 * T, "fp16": 125 * T},
    "Tesla V100-SXM2-32GB": {"fp64": 7.8 * T, "fp32": 15.7 * T, "fp16": 125 * T},
    "Tesla V100-PCIE-16GB": {"fp64": 7 * T, "fp32": 14 * T, "fp16": 112 * T},
    "Tesla V100-PCIE-32GB": {"fp64": 7 * T, "fp32": 14 * T, "fp16": 112 * T},
    "Tesla V100S-PCIE-32GB": {"fp64": 8.2 * T, "fp32": 16.4 * T, "fp16": 130 * T},
    # AMD MI250X data sheet per OAM (FP64 matrix 95.7, FP32 vector 47.9, BF16/FP16/INT8
    # 383), halved: ROCm shows each of the two GCDs as a device.
    "AMD Instinct MI250X": {"fp64": 95.7 / 2 * T, "fp32": 47.9 / 2 * T, "bf16": 383 / 2 * T,
                            "fp16": 383 / 2 * T, "int8": 383 / 2 * T},
    # MI250 per OAM: FP64 matrix 90.5, FP32 vector 45.3, BF16/FP16/INT8 362.1; per GCD.
    "AMD Instinct MI250": {"fp64": 90.5 / 2 * T, "fp32": 45.3 / 2 * T, "bf16": 362.1 / 2 * T,
                           "fp16": 362.1 / 2 * T, "int8": 362.1 / 2 * T},
    # MI300X / MI325X data sheets: FP64 matrix 163.4, FP32 163.4, TF32 653.7,
    # BF16/FP16 1307.4, FP8/INT8 2614.9.
    "AMD Instinct MI300X": {"fp64": 163.4 * T, "fp32": 163.4 * T, "tf32": 653.7 * T,
                            "bf16": 1307.4 * T, "fp16": 1307.4 * T, "fp8": 2614.9 * T,
                            "int8": 2614.9 * T},
    "AMD Instinct MI325X": {"fp64": 163.4 * T, "fp32": 163.4 * T, "tf32": 653.7 * T,
                            "bf16": 1307.4 * T, "fp16": 1307.4 * T, "fp8": 2614.9 * T,
                            "int8": 2614.9 * T},
    # Google Cloud TPU v4: 275 TFLOPS bf16 per chip.
    "TPU v4": {"bf16": 275 * T},
}

DATASHEET_CASES = [(gpu, p, v) for gpu, values in DATASHEET.items() for p, v in values.items()]


@pytest.mark.parametrize(("gpu", "precision", "expected"), DATASHEET_CASES)
def test_catalog_value_matches_datasheet(gpu: str, precision: str, expected: float) -> None:
    assert peak_flops_per_s(gpu, precision) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("gpu", sorted(DATASHEET))
def test_catalog_lists_exactly_the_datasheet_precisions(gpu: str) -> None:
    assert set(lookup(gpu).peak_flops_per_s) == set(DATASHEET[gpu])
    for precision in set(PRECISIONS) - set(DATASHEET[gpu]):
        with pytest.raises(UnsupportedPrecisionError, match=precision):
            peak_flops_per_s(gpu, precision)


def test_every_builtin_entry_is_checked_against_a_datasheet() -> None:
    checked = {lookup(name).name for name in DATASHEET}
    assert checked == {spec.name for spec in BUILTIN_SPECS}


def test_required_parts_are_in_the_catalog() -> None:
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
                 "NVIDIA H200 NVL", "NVIDIA GH200 480GB", "NVIDIA GH200 144G HBM3e",
                 "NVIDIA B200", "NVIDIA GB200", "NVIDIA L40S", "NVIDIA L4", "NVIDIA A10",
                 "NVIDIA A10G", "Tesla V100-SXM2-32GB", "AMD Instinct MI250X",
                 "AMD Instinct MI300X", "AMD Instinct MI325X"):
        assert isinstance(lookup(name), GPUSpec)


def test_dense_not_sparse() -> None:
    assert peak_flops_per_s("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12
    assert peak_flops_per_s("NVIDIA H100 80GB HBM3", "bf16") != 1979e12
    assert peak_flops_per_s("NVIDIA A100-SXM4-80GB", "bf16") == 312e12  # not 624
    assert peak_flops_per_s("AMD Instinct MI300X", "fp8") == 2614.9e12  # not 5229.8


# Dense tensor FLOP per clock per SM (CU) by architecture; a sparse value would double
# it. bf16 peak / (units x tensor clock) must land on it (L40S's printed 362.05 is ~1% low).
PER_UNIT_PER_CLOCK = {
    "a100": 2048, "h100": 4096, "h200": 4096, "gh200": 4096, "b200": 8192, "gb200": 8192,
    "l40s": 1024, "l4": 1024, "a10": 1024, "a10g": 512, "mi250x": 1024, "mi250": 1024,
    "mi300x": 2048, "mi325x": 2048,
}


@pytest.mark.parametrize("spec", [s for s in BUILTIN_SPECS if s.family in PER_UNIT_PER_CLOCK],
                         ids=lambda s: s.name)
def test_bf16_peak_is_consistent_with_units_and_clock(spec: GPUSpec) -> None:
    clock = spec.reference_clock_mhz("bf16")
    assert spec.compute_units and clock
    per_unit = spec.peak_flops_per_s["bf16"] / (spec.compute_units * clock * 1e6)
    assert per_unit == pytest.approx(PER_UNIT_PER_CLOCK[spec.family], rel=0.015)


def test_v100_fp16_is_1024_flop_per_sm_clock() -> None:
    spec = lookup("Tesla V100-SXM2-32GB")
    assert spec.peak_flops_per_s["fp16"] / (80 * 1530e6) == pytest.approx(1024, rel=0.01)


def test_spec_details() -> None:
    h100 = lookup("NVIDIA H100 80GB HBM3")
    assert (h100.compute_units, h100.boost_clock_mhz, h100.tensor_clock_mhz) == (132, 1980, 1830)
    assert h100.memory_gb == 80 and h100.memory_bandwidth_bytes_per_s == 3.35e12
    assert h100.form_factor == "SXM5" and h100.vendor == "nvidia"
    assert h100.memory_bytes == 80 * 2**30
    a100 = lookup("NVIDIA A100-SXM4-40GB")
    assert (a100.compute_units, a100.boost_clock_mhz, a100.memory_bandwidth_bytes_per_s) == (
        108, 1410, 1555e9)
    mi300x = lookup("AMD Instinct MI300X")
    assert (mi300x.compute_units, mi300x.compute_unit_kind, mi300x.boost_clock_mhz) == (
        304, "CU", 2100)
    assert mi300x.memory_gb == 192 and mi300x.memory_bandwidth_bytes_per_s == 5.3e12
    assert lookup("AMD Instinct MI325X").memory_gb == 256
    assert lookup("NVIDIA H200").memory_bandwidth_bytes_per_s == 4.8e12
    assert lookup("NVIDIA L4").memory_bandwidth_bytes_per_s == 300e9
    for spec in BUILTIN_SPECS:
        assert spec.source, spec.name


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize(("nvml_name", "canonical"), [
    ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"),
    ("NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"),
    ("NVIDIA A100-PCIE-40GB", "NVIDIA A100-PCIE-40GB"),
    ("NVIDIA A100 80GB PCIe", "NVIDIA A100 80GB PCIe"),
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 80GB"),
    ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
    ("NVIDIA H100 NVL", "NVIDIA H100 NVL"),
    ("NVIDIA H200", "NVIDIA H200"),
    ("NVIDIA H200 NVL", "NVIDIA H200 NVL"),
    ("NVIDIA GH200 480GB", "NVIDIA GH200 480GB"),
    ("NVIDIA GH200 144G HBM3e", "NVIDIA GH200 144G HBM3e"),
    ("NVIDIA B200", "NVIDIA B200"),
    ("NVIDIA GB200", "NVIDIA GB200"),
    ("NVIDIA L40S", "NVIDIA L40S"),
    ("NVIDIA L4", "NVIDIA L4"),
    ("NVIDIA A10", "NVIDIA A10"),
    ("NVIDIA A10G", "NVIDIA A10G"),
    ("Tesla V100-SXM2-16GB", "Tesla V100-SXM2-16GB"),
    ("Tesla V100-SXM2-32GB", "Tesla V100-SXM2-32GB"),
    ("Tesla V100-PCIE-32GB", "Tesla V100-PCIE-32GB"),
    ("AMD Instinct MI250X", "AMD Instinct MI250X"),
    ("AMD Instinct MI300X", "AMD Instinct MI300X"),
    ("AMD Instinct MI300X OAM", "AMD Instinct MI300X"),
    ("AMD Instinct MI325X", "AMD Instinct MI325X"),
])
def test_lookup_by_nvml_and_amd_smi_names(nvml_name: str, canonical: str) -> None:
    assert lookup(nvml_name).name == canonical


@pytest.mark.parametrize("spelling", [
    "nvidia a100-sxm4-40gb",  # case
    "  NVIDIA   A100-SXM4-40GB  ",  # whitespace
    "A100-SXM4-40GB",  # old drivers: no "NVIDIA " prefix
    "NVIDIA-A100-SXM4-40GB",  # k8s GPU feature discovery label
    "NVIDIA-A100-SXM4-40GB-SHARED",  # GFD time-slicing suffix
    "NVIDIA A100-SXM4-40GB MIG 1g.5gb",  # NVML name of a MIG device
    "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb",  # GFD label of a MIG device
    "NVIDIA A100 SXM4 40GB",
])
def test_name_normalisation(spelling: str) -> None:
    assert lookup(spelling).name == "NVIDIA A100-SXM4-40GB"


def test_amd_names_without_vendor_prefix() -> None:
    assert lookup("Instinct MI300X").name == "AMD Instinct MI300X"
    assert lookup("MI300X").name == "AMD Instinct MI300X"


def test_generic_name_needs_a_form_factor() -> None:
    with pytest.raises(AmbiguousGPUError) as err:
        lookup("H100")
    message = str(err.value)
    assert "H100" in message and "NVIDIA H100 PCIe" in message and "form factor" in message
    assert lookup("H100", form_factor="SXM").name == "NVIDIA H100 SXM5 80GB"
    assert lookup("NVIDIA H100", form_factor="pcie").name == "NVIDIA H100 PCIe"
    assert lookup("H100", form_factor="NVL").name == "NVIDIA H100 NVL"
    assert lookup("A100 80GB", form_factor="SXM4").name == "NVIDIA A100-SXM4-80GB"
    assert lookup("A100 40GB", form_factor="PCIe").name == "NVIDIA A100-PCIE-40GB"
    with pytest.raises(AmbiguousGPUError):
        lookup("A100 80GB")
    with pytest.raises(AmbiguousGPUError):  # could be an MI250: never guess
        lookup("AMD Instinct MI250X/MI250")
    assert lookup("H200", form_factor="NVL").name == "NVIDIA H200 NVL"


def test_family_tokens_do_not_cross_match() -> None:
    assert lookup("L4", form_factor="PCIe").name == "NVIDIA L4"  # not L40S
    assert lookup("A10").name == "NVIDIA A10"  # not A100 / A10G
    assert lookup("GH200 144GB").name == "NVIDIA GH200 144G HBM3e"  # not H200


def test_form_factor_hint_contradicting_exact_name_raises() -> None:
    with pytest.raises(UnknownGPUError, match="contradicts"):
        lookup("NVIDIA H100 80GB HBM3", form_factor="PCIe")
    assert lookup("NVIDIA H100 80GB HBM3", form_factor="SXM").form_factor == "SXM5"


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "NVIDIA A800 80GB PCIe", "", "   "])
def test_unknown_gpu_error_names_the_gpu_and_the_fix(name: str) -> None:
    with pytest.raises(UnknownGPUError) as err:
        peak_flops_per_s(name, "bf16")
    assert isinstance(err.value, LookupError)
    message = str(err.value)
    assert repr(name) in message
    assert "MFU_PEAK_OVERRIDES" in message and "register" in message


def test_no_silent_fallback_for_unlisted_variant() -> None:
    # An H800 is not an H100: no entry, so no peak (never the A100/H100 value).
    with pytest.raises(UnknownGPUError, match="H800"):
        lookup("NVIDIA H800 80GB HBM3")


# --------------------------------------------------------------------------- MIG

@pytest.mark.parametrize(("gpu", "profile", "sms", "full"), [
    ("NVIDIA A100-SXM4-40GB", "1g.5gb", 14, 108),
    ("NVIDIA A100-SXM4-40GB", "1g.10gb", 14, 108),
    ("NVIDIA A100-SXM4-40GB", "2g.10gb", 28, 108),
    ("NVIDIA A100-SXM4-40GB", "3g.20gb", 42, 108),
    ("NVIDIA A100-SXM4-40GB", "4g.20gb", 56, 108),
    ("NVIDIA A100-SXM4-40GB", "7g.40gb", 98, 108),
    ("NVIDIA A100-PCIE-40GB", "1g.5gb", 14, 108),
    ("NVIDIA A100-SXM4-80GB", "1g.10gb", 14, 108),
    ("NVIDIA A100-SXM4-80GB", "1g.20gb", 14, 108),
    ("NVIDIA A100-SXM4-80GB", "3g.40gb", 42, 108),
    ("NVIDIA A100-SXM4-80GB", "7g.80gb", 98, 108),
    ("NVIDIA A100 80GB PCIe", "2g.20gb", 28, 108),
    ("NVIDIA H100 80GB HBM3", "1g.10gb", 16, 132),
    ("NVIDIA H100 80GB HBM3", "1g.20gb", 26, 132),
    ("NVIDIA H100 80GB HBM3", "2g.20gb", 32, 132),
    ("NVIDIA H100 80GB HBM3", "3g.40gb", 60, 132),
    ("NVIDIA H100 80GB HBM3", "4g.40gb", 64, 132),
    ("NVIDIA H100 80GB HBM3", "7g.80gb", 132, 132),
    ("NVIDIA H100 NVL", "1g.12gb", 16, 132),
    ("NVIDIA H100 NVL", "3g.47gb", 60, 132),
    ("NVIDIA H200", "1g.18gb", 16, 132),
    ("NVIDIA H200", "1g.35gb", 26, 132),
    ("NVIDIA H200", "7g.141gb", 132, 132),
    ("NVIDIA GH200 144G HBM3e", "4g.72gb", 64, 132),
    ("NVIDIA GH200 480GB", "3g.48gb", 60, 132),
    ("NVIDIA B200", "1g.23gb", 18, 148),
    ("NVIDIA B200", "1g.45gb", 30, 148),
    ("NVIDIA B200", "2g.45gb", 36, 148),
    ("NVIDIA GB200", "2g.47gb", 38, 148),
])
def test_mig_fraction_is_slice_sms_over_full_sms(gpu: str, profile: str, sms: int, full: int) -> None:
    assert mig_sm_fraction(gpu, profile) == sms / full


def test_a100_1g_is_14_of_108_not_one_seventh() -> None:
    fraction = mig_sm_fraction("NVIDIA A100-SXM4-40GB", "1g.5gb")
    assert fraction == 14 / 108
    assert fraction != pytest.approx(1 / 7, rel=1e-3)
    assert peak_flops_per_s("NVIDIA A100-SXM4-40GB", "bf16", mig_profile="1g.5gb") == (
        pytest.approx(312e12 * 14 / 108))
    # The 7-slice instance has 98 SMs: a whole-GPU MIG instance is below the full GPU.
    assert peak_flops_per_s("NVIDIA A100-SXM4-40GB", "bf16", mig_profile="7g.40gb") == (
        pytest.approx(312e12 * 98 / 108))


@pytest.mark.parametrize("spelling", ["1g.10gb", "MIG 1g.10gb", "1g.10gb+me", "1G.10GB", " mig-1g.10gb "])
def test_mig_profile_spellings(spelling: str) -> None:
    assert mig_sm_fraction("NVIDIA H100 80GB HBM3", spelling) == 16 / 132


def test_mig_profile_from_device_name() -> None:
    assert peak_flops_per_s("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "bf16") == pytest.approx(
        989.4e12 * 60 / 132)
    # The same profile passed twice is fine; a different one is a contradiction.
    assert peak_flops_per_s("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "bf16",
                            mig_profile="3g.40gb") == pytest.approx(989.4e12 * 60 / 132)
    with pytest.raises(ValueError, match="contradicts"):
        peak_flops_per_s("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "bf16", mig_profile="1g.10gb")


def test_compute_instance_profiles() -> None:
    a100 = "NVIDIA A100-SXM4-40GB"
    assert mig_sm_fraction(a100, "1c.3g.20gb") == 14 / 108
    assert mig_sm_fraction(a100, "2c.3g.20gb") == 28 / 108
    assert mig_sm_fraction(a100, "3c.3g.20gb") == 42 / 108
    assert mig_sm_fraction(a100, "1c.7g.40gb") == 14 / 108
    assert mig_sm_fraction("NVIDIA H100 80GB HBM3", "3c.3g.40gb") == 60 / 132
    with pytest.raises(ValueError, match="compute-instance"):
        mig_sm_fraction("NVIDIA H100 80GB HBM3", "1c.3g.40gb")


@pytest.mark.parametrize(("gpu", "profile"), [
    ("NVIDIA A100-SXM4-40GB", "9g.99gb"),
    ("NVIDIA A100-SXM4-40GB", "7g.80gb"),  # an 80GB profile on a 40GB part
    ("NVIDIA H100 80GB HBM3", "1g.5gb"),
    ("NVIDIA A100-SXM4-40GB", "4c.3g.20gb"),
    ("NVIDIA B200", "7g.180gb"),  # SM count not published: refuse rather than guess
    ("NVIDIA A100-SXM4-40GB", "banana"),
])
def test_unknown_mig_profile_is_a_clear_value_error(gpu: str, profile: str) -> None:
    with pytest.raises(ValueError, match="MIG profile") as err:
        mig_sm_fraction(gpu, profile)
    assert profile in str(err.value)


def test_mig_on_a_gpu_without_mig() -> None:
    with pytest.raises(ValueError, match="no MIG profile table"):
        peak_flops_per_s("NVIDIA L4", "bf16", mig_profile="1g.6gb")


# --------------------------------------------------------------------------- clocks

def test_clock_correction() -> None:
    a100 = "NVIDIA A100-SXM4-40GB"
    assert peak_flops_per_s(a100, "bf16", sm_clock_mhz=1410) == 312e12
    assert peak_flops_per_s(a100, "bf16", sm_clock_mhz=705) == pytest.approx(156e12)
    assert peak_flops_per_s(a100, "fp32", sm_clock_mhz=1057.5) == pytest.approx(19.5e12 * 0.75)
    h100 = "NVIDIA H100 80GB HBM3"
    # Default max clock 1980 MHz is above the 1830 MHz the tensor peak assumes: capped.
    assert peak_flops_per_s(h100, "bf16", sm_clock_mhz=1980) == 989.4e12
    assert peak_flops_per_s(h100, "bf16", sm_clock_mhz=1464) == pytest.approx(989.4e12 * 1464 / 1830)
    # FP32/FP64 peaks assume the 1980 MHz boost clock.
    assert peak_flops_per_s(h100, "fp32", sm_clock_mhz=1830) == pytest.approx(66.9e12 * 1830 / 1980)
    # MIG and clock compose.
    assert peak_flops_per_s(h100, "fp8", mig_profile="2g.20gb", sm_clock_mhz=915) == (
        pytest.approx(1978.9e12 * 32 / 132 * 0.5))


@pytest.mark.parametrize("clock", [0, -100, math.nan, math.inf])
def test_bad_clock(clock: float) -> None:
    with pytest.raises(ValueError, match="sm_clock_mhz"):
        peak_flops_per_s("NVIDIA L4", "bf16", sm_clock_mhz=clock)


def test_resolve_peak_reports_factors() -> None:
    peak = peaks.resolve_peak("NVIDIA A100-SXM4-80GB", "tf32", mig_profile="3g.40gb",
                              sm_clock_mhz=1128)
    assert peak.datasheet_flops_per_s == 156e12
    assert peak.mig_sm_fraction == 42 / 108
    assert peak.clock_factor == pytest.approx(0.8)
    assert peak.peak_flops_per_s == pytest.approx(156e12 * 42 / 108 * 0.8)


# --------------------------------------------------------------------------- precision

@pytest.mark.parametrize(("gpu", "precision"), [
    ("NVIDIA L4", "fp64"), ("Tesla V100-SXM2-32GB", "bf16"), ("Tesla V100-SXM2-32GB", "tf32"),
    ("NVIDIA A100-SXM4-80GB", "fp8"), ("AMD Instinct MI250X", "fp8"), ("TPU v4", "fp32"),
])
def test_precision_the_part_lacks(gpu: str, precision: str) -> None:
    with pytest.raises(UnsupportedPrecisionError, match=f"no dense {precision} peak"):
        peak_flops_per_s(gpu, precision)  # type: ignore[arg-type]


@pytest.mark.parametrize("precision", ["fp4", "BF16", "", "bfloat16"])
def test_unknown_precision(precision: str) -> None:
    with pytest.raises(UnsupportedPrecisionError, match="unknown precision"):
        peak_flops_per_s("NVIDIA H100 80GB HBM3", precision)  # type: ignore[arg-type]
    assert issubclass(UnsupportedPrecisionError, ValueError)


# --------------------------------------------------------------------------- overrides

def test_specs_are_immutable() -> None:
    spec = lookup("NVIDIA H100 80GB HBM3")
    with pytest.raises(TypeError):
        spec.peak_flops_per_s["bf16"] = 1979e12  # type: ignore[index]
    with pytest.raises(ValidationError):
        spec.name = "x"  # type: ignore[misc]
    assert peak_flops_per_s("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12


def test_spec_validation() -> None:
    with pytest.raises(ValidationError):
        GPUSpec(name="x", peak_flops_per_s={})
    with pytest.raises(ValidationError):
        GPUSpec(name="x", peak_flops_per_s={"bf16": -1.0})
    with pytest.raises(ValidationError):
        GPUSpec(name="x", peak_flops_per_s={"fp4": 1e15})  # not a Precision


def test_spec_round_trips_through_json() -> None:
    spec = lookup("NVIDIA A100-SXM4-40GB")
    again = GPUSpec.model_validate_json(spec.model_dump_json())
    assert again.model_dump() == spec.model_dump()


def test_overrides_add_a_gpu() -> None:
    catalog = Catalog(BUILTIN_SPECS)
    added = peaks.load_overrides(
        '{"Acme X1": {"peak_tflops": {"bf16": 500, "fp8": 1000}, "compute_units": 100,'
        ' "boost_clock_mhz": 2000, "form_factor": "PCIe", "mig_profiles": {"1g.10gb": 20}}}',
        catalog,
    )
    assert [s.name for s in added] == ["Acme X1"]
    assert catalog.resolve_peak("acme x1", "bf16").peak_flops_per_s == 500e12
    assert catalog.mig_sm_fraction("Acme X1", "1g.10gb") == 0.2
    assert catalog.resolve_peak("Acme X1", "fp8", sm_clock_mhz=1000).peak_flops_per_s == (
        pytest.approx(500e12))
    with pytest.raises(UnknownGPUError):  # the default catalog is untouched
        lookup("Acme X1")


def test_override_replaces_a_builtin_and_based_on_keeps_other_fields() -> None:
    catalog = Catalog(BUILTIN_SPECS)
    peaks.load_overrides({"NVIDIA L4": {"based_on": "NVIDIA L4", "peak_tflops": {"bf16": 100}}},
                         catalog)
    l4 = catalog.lookup("NVIDIA L4")
    assert l4.peak_flops_per_s["bf16"] == 100e12
    assert l4.peak_flops_per_s["fp8"] == 242.5e12  # kept from the base
    assert l4.compute_units == 58 and "override" in l4.source
    assert [s.name for s in catalog.specs()].count("NVIDIA L4") == 1
    assert peak_flops_per_s("NVIDIA L4", "bf16") == 121e12  # default catalog unchanged


@pytest.mark.parametrize(("value", "match"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"X": {"peak_tflops": {"bf16": -5}}}', "'X'"),
    ('{"X": {"peak_tflops": {"fp4": 5}}}', "'X'"),
    ('{"X": 5}', "'X'"),
    ('{"X": {"based_on": "NVIDIA Nonexistent", "peak_tflops": {"bf16": 5}}}', "Nonexistent"),
])
def test_bad_overrides(value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        peaks.load_overrides(value, Catalog(BUILTIN_SPECS))
    assert "MFU_PEAK_OVERRIDES" in str(err.value)


def test_empty_overrides() -> None:
    assert peaks.load_overrides(None) == []
    assert peaks.load_overrides("  ") == []


def test_register_in_default_catalog_and_catalog_listing() -> None:
    spec = GPUSpec(name="Unit Test GPU 7Q", device_names=("UT-GPU-7Q",),
                   peak_flops_per_s={"bf16": 123e12})
    peaks.register(spec)
    assert lookup("ut gpu 7q").peak_flops_per_s["bf16"] == 123e12
    listed = peaks.catalog()
    assert spec in listed
    assert all(isinstance(s, GPUSpec) for s in listed)
    assert len(listed) >= len(BUILTIN_SPECS)


# --------------------------------------------------------------------------- properties

MIG_CASES = [(s.device_names[0] if s.device_names else s.name, profile)
             for s in BUILTIN_SPECS for profile in s.mig_profiles]


@settings(max_examples=200, deadline=None)
@given(case=st.sampled_from(MIG_CASES), precision=st.sampled_from(PRECISIONS),
       clock=st.none() | st.floats(min_value=100, max_value=3000))
def test_mig_slice_never_exceeds_parent(case: tuple[str, str], precision: str,
                                        clock: float | None) -> None:
    gpu, profile = case
    if precision not in lookup(gpu).peak_flops_per_s:
        return
    parent = peak_flops_per_s(gpu, precision, sm_clock_mhz=clock)  # type: ignore[arg-type]
    child = peak_flops_per_s(gpu, precision, mig_profile=profile, sm_clock_mhz=clock)  # type: ignore[arg-type]
    assert 0 < child <= parent
    assert 0 < mig_sm_fraction(gpu, profile) <= 1


@settings(max_examples=200, deadline=None)
@given(spec=st.sampled_from(BUILTIN_SPECS), clock=st.floats(min_value=1, max_value=10_000))
def test_clock_correction_never_raises_the_peak(spec: GPUSpec, clock: float) -> None:
    for precision, datasheet in spec.peak_flops_per_s.items():
        corrected = peak_flops_per_s(spec.name, precision, sm_clock_mhz=clock)
        assert 0 < corrected <= datasheet
