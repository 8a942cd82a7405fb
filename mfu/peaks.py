"""GPU peak catalog: dense peak FLOP/s per precision, keyed by the device name NVML reports.

Every value here is a **dense** peak (never the "with sparsity" figure datasheets print
first), in FLOP/s (integer precisions: operations/s). Per precision:

- ``fp64``: FP64 Tensor Core (or AMD FP64 matrix) where the part has it, else FP64 vector;
- ``fp32``: plain FP32 on the CUDA cores / vector units (non-tensor);
- ``tf32``, ``bf16``, ``fp16``, ``fp8``, ``int8``: tensor core / matrix, dense,
  FP32 accumulate where the datasheet distinguishes.

A precision a part lacks is absent (asking for it raises `UnsupportedPrecisionError`).

MIG slices get ``slice SMs / full SMs`` of the parent's peak (an A100 ``1g.5gb`` has
14 of 108 SMs: 0.130, not 1/7). An optional clock correction scales by
``sm_clock_mhz / reference clock``; callers pass the *enforced maximum* SM clock
(NVML ``max_sm_clock_mhz`` / application clock), not an instantaneous sample. The factor
is capped at 1: the datasheet peak stays the ceiling, so a GPU whose default max clock
sits above the clock its datasheet tensor peak assumes (H100 SXM: 1980 vs 1830 MHz) keeps
its datasheet peak, and MFU stays comparable with published numbers; a clock locked
below the reference lowers the peak.

Unknown GPUs raise `UnknownGPUError`; there is no silent fallback to another part.
Operators add or correct entries with `register` or `load_overrides` (the
``MFU_PEAK_OVERRIDES`` JSON read by the command line).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from mfu.precision import PRECISIONS, Precision

# Precisions whose datasheet peak runs on the tensor cores (matrix units) and so
# assumes GPUSpec.tensor_clock_mhz; fp32 and fp64 assume GPUSpec.boost_clock_mhz.
TENSOR_PRECISIONS: frozenset[str] = frozenset({"tf32", "bf16", "fp16", "fp8", "int8"})

OVERRIDES_ENV = "MFU_PEAK_OVERRIDES"


class UnknownGPUError(LookupError):
    """The catalog has no entry for a GPU name (or the name fits several entries)."""

    def __init__(self, gpu_name: str, reason: str = "", *, message: str | None = None) -> None:
        self.gpu_name = gpu_name
        detail = f": {reason}" if reason else ""
        super().__init__(
            message
            or f"unknown GPU {gpu_name!r}{detail}. No peak FLOP/s is known for it, so its MFU "
            f"is undefined. Add an entry with mfu.peaks.register(GPUSpec(...)) or set "
            f'{OVERRIDES_ENV}=\'{{"{gpu_name}": {{"peak_tflops": {{"bf16": ...}}}}}}\' '
            f"(dense TFLOP/s per precision); `mfu peaks --list` shows the known GPUs"
        )


class AmbiguousGPUError(UnknownGPUError):
    """A generic name (e.g. "H100") matches several catalog entries."""

    def __init__(self, gpu_name: str, candidates: Iterable[GPUSpec]) -> None:
        self.candidates = tuple(candidates)
        names = ", ".join(f"{c.name} [{c.form_factor}]" for c in self.candidates)
        super().__init__(
            gpu_name,
            message=f"ambiguous GPU name {gpu_name!r}: it matches {names}. Pass a form "
            f"factor (e.g. 'SXM', 'PCIe', 'NVL') or the exact NVML device name "
            f"(`mfu peaks --list` shows them)",
        )


class UnsupportedPrecisionError(ValueError):
    """The precision is unknown, or the GPU has no dense peak for it."""


class GPUSpec(BaseModel):
    """One GPU part as a datasheet describes it. Units are in the field names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="canonical display name")
    vendor: Literal["nvidia", "amd", "google", "other"] = "other"
    family: str | None = Field(
        default=None,
        description="lower-case family token (e.g. 'h100') used to resolve generic names",
    )
    device_names: tuple[str, ...] = Field(
        default=(), description="names as NVML / amd-smi report them"
    )
    form_factor: str | None = None
    compute_units: int | None = Field(default=None, gt=0, description="SMs (NVIDIA), CUs (AMD)")
    compute_unit_kind: Literal["SM", "CU", "TensorCore"] = "SM"
    boost_clock_mhz: float | None = Field(
        default=None, gt=0, description="max boost clock; what the fp32/fp64 peaks assume"
    )
    tensor_clock_mhz: float | None = Field(
        default=None,
        gt=0,
        description="clock the datasheet tensor peaks assume, where it differs from boost",
    )
    memory_gb: float | None = Field(default=None, gt=0, description="datasheet capacity, GB")
    memory_bandwidth_bytes_per_s: float | None = Field(default=None, gt=0)
    peak_flops_per_s: Mapping[Precision, float] = Field(
        description="dense peak FLOP/s (int8: op/s) per precision"
    )
    mig_profiles: Mapping[str, int] = Field(
        default_factory=dict, description="MIG GPU-instance profile -> SM count"
    )
    mig_compute_slice_sms: int | None = Field(
        default=None, gt=0, description="SMs of one MIG compute slice ('1c.') where uniform"
    )
    source: str = ""
    notes: str = ""

    @field_validator("peak_flops_per_s", mode="after")
    @classmethod
    def _check_peaks(cls, value: Mapping[str, float]) -> Mapping[str, float]:
        if not value:
            raise ValueError("a GPUSpec needs at least one peak_flops_per_s entry")
        for precision, flops in value.items():
            if not (math.isfinite(flops) and flops > 0):
                raise ValueError(f"peak for {precision} must be a positive FLOP/s, got {flops}")
        return MappingProxyType(dict(value))  # read-only: specs are shared

    @field_validator("mig_profiles", mode="after")
    @classmethod
    def _check_mig(cls, value: Mapping[str, int]) -> Mapping[str, int]:
        out = {}
        for profile, sms in value.items():
            if sms <= 0:
                raise ValueError(f"MIG profile {profile} needs a positive SM count")
            out[normalize_mig_profile(profile)] = int(sms)
        return MappingProxyType(out)

    @field_serializer("peak_flops_per_s", "mig_profiles")
    def _plain_dict(self, value: Mapping[str, Any]) -> dict[str, Any]:
        return dict(value)

    @property
    def memory_bytes(self) -> int | None:
        """Capacity in bytes, reading datasheet 'GB' of HBM/GDDR as GiB (how DRAM is built)."""
        return None if self.memory_gb is None else int(self.memory_gb * 2**30)

    def reference_clock_mhz(self, precision: str) -> float | None:
        """The clock (MHz) the datasheet peak for `precision` assumes."""
        if precision in TENSOR_PRECISIONS and self.tensor_clock_mhz is not None:
            return self.tensor_clock_mhz
        return self.boost_clock_mhz


class Peak(BaseModel):
    """A resolved peak with the factors that produced it."""

    model_config = ConfigDict(frozen=True)

    gpu: GPUSpec
    precision: Precision
    datasheet_flops_per_s: float
    mig_profile: str | None
    mig_sm_fraction: float
    clock_factor: float
    peak_flops_per_s: float


# --------------------------------------------------------------------------- names

_SEPARATORS = re.compile(r"[\s_\-/,]+")
_PREFIXES = ("nvidia ", "amd ", "tesla ", "instinct ", "google ")
_SUFFIXES = (" shared",)  # k8s GPU feature discovery marks time-sliced GPUs "-SHARED"
_MIG_IN_NAME = re.compile(r"^(?P<parent>.*?)\s+mig\s+(?P<profile>\S+)$")
_FORM_TOKENS = ("sxm", "pcie", "nvl", "oam", "superchip")
_MEMORY_TOKEN = re.compile(r"^(\d+)(?:gb|g)$")


def normalize_gpu_name(name: str) -> str:
    """Canonical key for a device name: case, separators and vendor prefixes folded.

    "NVIDIA A100-SXM4-40GB", "nvidia a100 sxm4 40gb" and the k8s label form
    "NVIDIA-A100-SXM4-40GB" all give "a100 sxm4 40gb". MIG suffixes are kept; see
    `split_mig`.
    """
    s = _SEPARATORS.sub(" ", name.strip().lower()).strip()
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if s.startswith(prefix):
                s = s[len(prefix) :]
                changed = True
        for suffix in _SUFFIXES:
            if s.endswith(suffix):
                s = s[: -len(suffix)]
                changed = True
    return s.strip()


def split_mig(gpu_name: str) -> tuple[str, str | None]:
    """Split "NVIDIA A100-SXM4-40GB MIG 1g.5gb" into ("a100 sxm4 40gb", "1g.5gb").

    The parent comes back normalised (see `normalize_gpu_name`); the profile is None
    when the name has no MIG suffix.
    """
    key = normalize_gpu_name(gpu_name)
    match = _MIG_IN_NAME.match(key)
    if match is None:
        return key, None
    return match["parent"], normalize_mig_profile(match["profile"])


def normalize_mig_profile(profile: str) -> str:
    """"MIG 1g.10gb+me" -> "1g.10gb". Media-extension variants have the same SMs."""
    p = profile.strip().lower()
    if p.startswith("mig"):
        p = p[3:].lstrip(" -_")
    p = p.split("+", 1)[0]
    if p.endswith("-me"):
        p = p[:-3]
    return p.strip()


_COMPUTE_INSTANCE = re.compile(r"^(?P<c>\d+)c\.(?P<g>\d+)g\.(?P<mem>\d+gb)$")


def _form_matches(spec: GPUSpec, hint: str) -> bool:
    want = re.sub(r"[^a-z0-9]", "", hint.lower())
    have = re.sub(r"[^a-z0-9]", "", (spec.form_factor or "").lower())
    return bool(want) and have.startswith(want)


# --------------------------------------------------------------------------- catalog


class Catalog:
    """A set of GPUSpecs with name resolution. Later registrations win (overrides)."""

    def __init__(self, specs: Iterable[GPUSpec] = ()) -> None:
        self._specs: list[GPUSpec] = []
        self._by_key: dict[str, GPUSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: GPUSpec) -> GPUSpec:
        """Add `spec`; its names now resolve to it, replacing any earlier owner."""
        for key in {normalize_gpu_name(n) for n in (spec.name, *spec.device_names)}:
            self._by_key[key] = spec
        owned = {id(s) for s in self._by_key.values()}
        # A spec whose every name was taken over is gone (also from generic matching).
        self._specs = [s for s in self._specs if id(s) in owned and s is not spec]
        self._specs.append(spec)
        return spec

    def specs(self) -> list[GPUSpec]:
        return list(self._specs)

    def lookup(self, gpu_name: str, *, form_factor: str | None = None) -> GPUSpec:
        """Resolve a device name (NVML / amd-smi spelling, any case) to its GPUSpec.

        A MIG suffix resolves to the parent GPU. Generic names ("H100", "A100 80GB")
        resolve when one entry fits, using `form_factor` ("SXM", "PCIe", "NVL", ...)
        and any memory size in the name; otherwise `AmbiguousGPUError`.
        """
        if not gpu_name or not gpu_name.strip():
            raise UnknownGPUError(gpu_name, "empty GPU name")
        key, _ = split_mig(gpu_name)
        spec = self._by_key.get(key)
        if spec is not None:
            if form_factor and not _form_matches(spec, form_factor):
                if key == spec.family:
                    # The bare family name ("NVIDIA H200" is also the SXM part's NVML
                    # name): let the hint pick the variant.
                    return self._resolve_generic(gpu_name, key, form_factor)
                raise UnknownGPUError(
                    gpu_name,
                    f"it is the {spec.form_factor} part {spec.name!r}, "
                    f"which contradicts form_factor={form_factor!r}",
                )
            return spec
        return self._resolve_generic(gpu_name, key, form_factor)

    def _resolve_generic(self, gpu_name: str, key: str, form_factor: str | None) -> GPUSpec:
        tokens = key.split()
        candidates = [s for s in self._specs if s.family is not None and s.family in tokens]
        if not candidates:
            raise UnknownGPUError(gpu_name)
        memory = [int(m[1]) for t in tokens if (m := _MEMORY_TOKEN.match(t))]
        if memory:
            candidates = [c for c in candidates if c.memory_gb is not None and c.memory_gb in memory]
        hints = [t for t in tokens if t.startswith(_FORM_TOKENS)]
        if form_factor:
            hints.append(form_factor)
        for hint in hints:
            candidates = [c for c in candidates if _form_matches(c, hint)]
        if not candidates:
            raise UnknownGPUError(gpu_name, "no catalog entry fits its memory size / form factor")
        if len(candidates) > 1:
            raise AmbiguousGPUError(gpu_name, candidates)
        return candidates[0]

    def mig_sm_count(
        self, gpu_name: str, mig_profile: str, *, form_factor: str | None = None
    ) -> int:
        """SMs of a MIG GPU-instance ("3g.40gb") or compute-instance ("1c.3g.40gb") profile."""
        spec = self.lookup(gpu_name, form_factor=form_factor)
        profile = normalize_mig_profile(mig_profile)
        if not spec.mig_profiles:
            raise ValueError(
                f"{spec.name} has no MIG profile table in the catalog; "
                f"cannot size MIG profile {mig_profile!r}"
            )
        known = ", ".join(sorted(spec.mig_profiles))
        if profile in spec.mig_profiles:
            return spec.mig_profiles[profile]
        ci = _COMPUTE_INSTANCE.match(profile)
        if ci is not None:
            compute, gpu_slices = int(ci["c"]), int(ci["g"])
            parent = f"{gpu_slices}g.{ci['mem']}"
            if parent in spec.mig_profiles and 0 < compute <= gpu_slices:
                if compute == gpu_slices:
                    return spec.mig_profiles[parent]
                if spec.mig_compute_slice_sms is not None:
                    return min(compute * spec.mig_compute_slice_sms, spec.mig_profiles[parent])
                raise ValueError(
                    f"the SM count of compute-instance profile {mig_profile!r} on {spec.name} "
                    f"is not in the catalog (only whole GPU instances are: {known})"
                )
        raise ValueError(
            f"unknown MIG profile {mig_profile!r} for {spec.name}; known profiles: {known}"
        )

    def mig_sm_fraction(
        self, gpu_name: str, mig_profile: str, *, form_factor: str | None = None
    ) -> float:
        """Slice SMs / full-GPU SMs (A100 1g.5gb: 14/108)."""
        spec = self.lookup(gpu_name, form_factor=form_factor)
        if spec.compute_units is None:
            raise ValueError(f"{spec.name} has no SM count in the catalog")
        sms = self.mig_sm_count(gpu_name, mig_profile, form_factor=form_factor)
        return sms / spec.compute_units

    def mig_memory_fraction(
        self, gpu_name: str, mig_profile: str, *, form_factor: str | None = None
    ) -> float:
        """Memory slices of a MIG profile / the GPU's 8 memory slices (H100 3g.40gb: 4/8).

        Derived from the profile's memory size against one eighth of the GPU's memory
        (NVIDIA MIG User Guide: every supported part has 8 memory slices).
        """
        spec = self.lookup(gpu_name, form_factor=form_factor)
        self.mig_sm_count(gpu_name, mig_profile, form_factor=form_factor)  # validates it
        match = re.search(r"(\d+)gb$", normalize_mig_profile(mig_profile))
        if match is None or spec.memory_gb is None:
            raise ValueError(f"cannot size the memory of MIG profile {mig_profile!r}")
        slices = max(1, min(8, round(int(match[1]) / (spec.memory_gb / 8))))
        return slices / 8

    def peak_bytes_per_s(
        self, gpu_name: str, *, mig_profile: str | None = None, form_factor: str | None = None
    ) -> float:
        """Peak memory bandwidth, bytes/s, of one GPU or MIG slice (by memory slices).

        Raises UnknownGPUError, or ValueError where the catalog has no bandwidth.
        """
        spec = self.lookup(gpu_name, form_factor=form_factor)
        if spec.memory_bandwidth_bytes_per_s is None:
            raise ValueError(f"{spec.name} has no memory bandwidth in the catalog")
        _, profile_in_name = split_mig(gpu_name)
        profile = mig_profile or profile_in_name
        fraction = 1.0
        if profile:
            fraction = self.mig_memory_fraction(gpu_name, profile, form_factor=form_factor)
        return spec.memory_bandwidth_bytes_per_s * fraction

    def resolve_peak(
        self,
        gpu_name: str,
        precision: str,
        *,
        mig_profile: str | None = None,
        sm_clock_mhz: float | None = None,
        form_factor: str | None = None,
    ) -> Peak:
        """The dense peak FLOP/s with the MIG and clock factors that produced it."""
        if precision not in PRECISIONS:
            raise UnsupportedPrecisionError(
                f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
            )
        spec = self.lookup(gpu_name, form_factor=form_factor)
        datasheet = spec.peak_flops_per_s.get(precision)  # type: ignore[call-overload]
        if datasheet is None:
            have = ", ".join(p for p in PRECISIONS if p in spec.peak_flops_per_s)
            raise UnsupportedPrecisionError(
                f"{spec.name} has no dense {precision} peak in the catalog "
                f"(it lists: {have}); report FLOPs in one of those precisions"
            )
        _, profile_in_name = split_mig(gpu_name)
        if mig_profile and profile_in_name and normalize_mig_profile(mig_profile) != profile_in_name:
            raise ValueError(
                f"MIG profile {mig_profile!r} contradicts the one in the name {gpu_name!r}"
            )
        profile = mig_profile or profile_in_name
        fraction = 1.0
        if profile:
            fraction = self.mig_sm_fraction(gpu_name, profile, form_factor=form_factor)
        clock_factor = 1.0
        if sm_clock_mhz is not None:
            if not (math.isfinite(sm_clock_mhz) and sm_clock_mhz > 0):
                raise ValueError(f"sm_clock_mhz must be a positive number, got {sm_clock_mhz}")
            reference = spec.reference_clock_mhz(precision)
            if reference is None:
                raise ValueError(
                    f"{spec.name} has no reference clock in the catalog; "
                    f"cannot correct its peak for sm_clock_mhz={sm_clock_mhz}"
                )
            clock_factor = min(1.0, sm_clock_mhz / reference)
        return Peak(
            gpu=spec,
            precision=precision,  # type: ignore[arg-type]
            datasheet_flops_per_s=datasheet,
            mig_profile=profile,
            mig_sm_fraction=fraction,
            clock_factor=clock_factor,
            peak_flops_per_s=datasheet * fraction * clock_factor,
        )


# --------------------------------------------------------------------------- data
#
# Sources (dense = the datasheet's non-sparse figure, or its sparse figure / 2 where
# only "with sparsity" is printed; each entry says which):
#   [A100]   NVIDIA A100 Tensor Core GPU datasheet (2021), spec table.
#   [H100WP] NVIDIA H100 Tensor Core GPU Architecture whitepaper (v1.0x), Table 3,
#            which prints dense and sparse separately (989.4 / 1978.9 for SXM5 BF16).
#   [H100DS] NVIDIA H100 Tensor Core GPU datasheet (2023/24), spec table (SXM / NVL).
#   [H200DS] NVIDIA H200 Tensor Core GPU datasheet (2024), spec table (SXM / NVL).
#   [GH200]  NVIDIA GH200 Grace Hopper Superchip datasheet (2023/24).
#   [B200]   NVIDIA HGX B200 / DGX B200 datasheet (2024): 8-GPU totals, / 8 per GPU.
#   [GB200]  NVIDIA GB200 NVL72 datasheet (2024): 72-GPU totals, / 72 per GPU.
#   [L40S], [L4], [A10]: the NVIDIA datasheets of those boards.
#   [V100]   NVIDIA Tesla V100 datasheet (2020), SXM2 / PCIe / V100S columns.
#   [MI250X] AMD Instinct MI250X / MI250 data sheets (per OAM; halved per GCD).
#   [MI300X] AMD Instinct MI300X data sheet; [MI325X] AMD Instinct MI325X data sheet.
#   [TPUv4]  Google Cloud TPU v4 documentation; PaLM paper (Chowdhery et al. 2022) §4.
#   [MIG]    NVIDIA MIG User Guide, "Supported MIG Profiles", and `nvidia-smi mig -lgip`
#            output (SM column) published in NVIDIA/mig-parted and gpu-operator PRs.
# SM counts and clocks: the architecture whitepapers (A100, H100) and the boards' specs.

_A100_40_MIG = {"1g.5gb": 14, "1g.10gb": 14, "2g.10gb": 28, "3g.20gb": 42, "4g.20gb": 56,
                "7g.40gb": 98}  # [MIG] A100-SXM4-40GB lgip; 7g has 98 of 108 SMs
_A100_80_MIG = {"1g.10gb": 14, "1g.20gb": 14, "2g.20gb": 28, "3g.40gb": 42, "4g.40gb": 56,
                "7g.80gb": 98}  # [MIG] A100 80GB: same SMs, profile names by memory
_H100_80_MIG = {"1g.10gb": 16, "1g.20gb": 26, "2g.20gb": 32, "3g.40gb": 60, "4g.40gb": 64,
                "7g.80gb": 132}  # [MIG] H100 80GB HBM3 lgip (1g.20gb has 26 SMs, not 16)
_H100_94_MIG = {"1g.12gb": 16, "1g.24gb": 26, "2g.24gb": 32, "3g.47gb": 60, "4g.47gb": 64,
                "7g.94gb": 132}  # [MIG] H100 NVL lgip (gpu-operator PR #900)
_H200_MIG = {"1g.18gb": 16, "1g.35gb": 26, "2g.35gb": 32, "3g.71gb": 60, "4g.71gb": 64,
             "7g.141gb": 132}  # [MIG] H200 lgip (mig-parted issue #120)
_GH200_96_MIG = {"1g.12gb": 16, "1g.24gb": 26, "2g.24gb": 32, "3g.48gb": 60, "4g.48gb": 64,
                 "7g.96gb": 132}  # [MIG] H100 on GH200 96GB, same SM split as H100
_GH200_144_MIG = {"1g.18gb": 16, "1g.36gb": 26, "2g.36gb": 32, "3g.72gb": 60,
                  "4g.72gb": 64, "7g.144gb": 132}  # [MIG] GH200 144G lgip (mig-parted #139)
# Blackwell: only the profiles whose SM counts were published in lgip output are listed;
# the 3g/4g/7g SM counts are not, so those profiles raise until an operator adds them.
_B200_MIG = {"1g.23gb": 18, "1g.45gb": 30, "2g.45gb": 36}  # [MIG] B200 lgip (gpu-operator #1242)
_GB200_MIG = {"1g.23gb": 18, "1g.24gb": 18, "1g.47gb": 32, "2g.47gb": 38}  # [MIG] gpu-operator #1303

_HOPPER_SXM_PEAKS = {
    # [H100WP] Table 3, H100 SXM5 dense column. FP64 = FP64 Tensor Core (66.9; vector is 33.5).
    "fp64": 66.9e12, "fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12,
    "fp16": 989.4e12, "fp8": 1978.9e12, "int8": 1978.9e12,
}
_HOPPER_NVL_PEAKS = {
    # [H100DS]/[H200DS] NVL column: FP64 30, FP64 TC 60, FP32 60, TF32 835*, BF16/FP16 1671*,
    # FP8 3341*, INT8 3341* (* = with sparsity; dense is half).
    "fp64": 60e12, "fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12,
    "fp16": 835.5e12, "fp8": 1670.5e12, "int8": 1670.5e12,
}
_A100_PEAKS = {
    # [A100] FP64 9.7, FP64 TC 19.5, FP32 19.5, TF32 156 | 312*, BF16/FP16 312 | 624*,
    # INT8 624 | 1248*. Same for SXM4 and PCIe, 40 and 80 GB.
    "fp64": 19.5e12, "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12,
    "int8": 624e12,
}
_MI300_PEAKS = {
    # [MI300X]/[MI325X]: FP64 matrix 163.4 (vector 81.7), FP32 vector 163.4,
    # TF32 653.7, FP16/BF16 1307.4, FP8 2614.9, INT8 2614.9 TOPS (dense; sparse is 2x).
    "fp64": 163.4e12, "fp32": 163.4e12, "tf32": 653.7e12, "bf16": 1307.4e12,
    "fp16": 1307.4e12, "fp8": 2614.9e12, "int8": 2614.9e12,
}


def _nvidia(**fields: Any) -> GPUSpec:
    return GPUSpec(vendor="nvidia", **fields)


BUILTIN_SPECS: tuple[GPUSpec, ...] = (
    # ---- Ampere A100: 108 SMs, 1410 MHz boost (A100 whitepaper Table 1).
    _nvidia(name="NVIDIA A100-SXM4-40GB", family="a100", form_factor="SXM4",
            device_names=("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
            compute_units=108, boost_clock_mhz=1410, memory_gb=40,
            memory_bandwidth_bytes_per_s=1555e9, peak_flops_per_s=_A100_PEAKS,
            mig_profiles=_A100_40_MIG, mig_compute_slice_sms=14,
            source="NVIDIA A100 datasheet (SXM4 40GB column)"),
    _nvidia(name="NVIDIA A100-SXM4-80GB", family="a100", form_factor="SXM4",
            device_names=("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB", "NVIDIA A100-SXM-80GB"),
            compute_units=108, boost_clock_mhz=1410, memory_gb=80,
            memory_bandwidth_bytes_per_s=2039e9, peak_flops_per_s=_A100_PEAKS,
            mig_profiles=_A100_80_MIG, mig_compute_slice_sms=14,
            source="NVIDIA A100 datasheet (SXM4 80GB column)"),
    _nvidia(name="NVIDIA A100-PCIE-40GB", family="a100", form_factor="PCIe",
            device_names=("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB", "NVIDIA A100 40GB PCIe"),
            compute_units=108, boost_clock_mhz=1410, memory_gb=40,
            memory_bandwidth_bytes_per_s=1555e9, peak_flops_per_s=_A100_PEAKS,
            mig_profiles=_A100_40_MIG, mig_compute_slice_sms=14,
            source="NVIDIA A100 datasheet (PCIe 40GB column)"),
    _nvidia(name="NVIDIA A100 80GB PCIe", family="a100", form_factor="PCIe",
            device_names=("NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-80GB"),
            compute_units=108, boost_clock_mhz=1410, memory_gb=80,
            memory_bandwidth_bytes_per_s=1935e9, peak_flops_per_s=_A100_PEAKS,
            mig_profiles=_A100_80_MIG, mig_compute_slice_sms=14,
            source="NVIDIA A100 datasheet (PCIe 80GB column)"),
    # ---- Hopper. Tensor peaks assume 1830 MHz on SXM5 (989.4e12 = 132 SMs x 4096
    # FLOP/clk x 1.83 GHz) while FP32/FP64 assume the 1980 MHz max boost ([H100WP]).
    _nvidia(name="NVIDIA H100 SXM5 80GB", family="h100", form_factor="SXM5",
            device_names=("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 80GB", "H100 80GB HBM3"),
            compute_units=132, boost_clock_mhz=1980, tensor_clock_mhz=1830, memory_gb=80,
            memory_bandwidth_bytes_per_s=3.35e12, peak_flops_per_s=_HOPPER_SXM_PEAKS,
            mig_profiles=_H100_80_MIG,
            source="NVIDIA H100 whitepaper Table 3 (SXM5, dense); H100 datasheet (SXM)"),
    _nvidia(name="NVIDIA H100 PCIe", family="h100", form_factor="PCIe",
            device_names=("NVIDIA H100 PCIe",),
            # [H100WP] Table 3 PCIe: FP64 TC 51.2, FP32 51.2, TF32 378, FP16/BF16 756,
            # FP8/INT8 1513 (dense). 114 SMs; tensor peak at 1620 MHz, 1755 MHz boost.
            compute_units=114, boost_clock_mhz=1755, tensor_clock_mhz=1620, memory_gb=80,
            memory_bandwidth_bytes_per_s=2.0e12,
            peak_flops_per_s={"fp64": 51.2e12, "fp32": 51.2e12, "tf32": 378e12,
                              "bf16": 756e12, "fp16": 756e12, "fp8": 1513e12,
                              "int8": 1513e12},
            source="NVIDIA H100 whitepaper Table 3 (PCIe, dense); H100 datasheet (PCIe)",
            notes="MIG SM counts for the 114-SM PCIe part are not in the catalog"),
    _nvidia(name="NVIDIA H100 NVL", family="h100", form_factor="NVL",
            device_names=("NVIDIA H100 NVL",),
            compute_units=132, boost_clock_mhz=1785, tensor_clock_mhz=1545, memory_gb=94,
            memory_bandwidth_bytes_per_s=3.9e12, peak_flops_per_s=_HOPPER_NVL_PEAKS,
            mig_profiles=_H100_94_MIG,
            source="NVIDIA H100 datasheet (H100 NVL column, per GPU, sparse/2)",
            notes="tensor_clock_mhz derived: 835.5e12 / (132 SMs x 4096 FLOP/clk)"),
    _nvidia(name="NVIDIA H200", family="h200", form_factor="SXM5",
            device_names=("NVIDIA H200", "NVIDIA H200 141GB HBM3e"),
            compute_units=132, boost_clock_mhz=1980, tensor_clock_mhz=1830, memory_gb=141,
            memory_bandwidth_bytes_per_s=4.8e12, peak_flops_per_s=_HOPPER_SXM_PEAKS,
            mig_profiles=_H200_MIG,
            source="NVIDIA H200 datasheet (SXM: same GH100 compute as H100 SXM5; "
                   "dense values from H100 whitepaper Table 3)"),
    _nvidia(name="NVIDIA H200 NVL", family="h200", form_factor="NVL",
            device_names=("NVIDIA H200 NVL",),
            compute_units=132, boost_clock_mhz=1785, tensor_clock_mhz=1545, memory_gb=141,
            memory_bandwidth_bytes_per_s=4.8e12, peak_flops_per_s=_HOPPER_NVL_PEAKS,
            mig_profiles=_H200_MIG,
            source="NVIDIA H200 datasheet (H200 NVL column, sparse/2)",
            notes="MIG table assumed equal to H200 SXM (same 141 GB, 132 SMs)"),
    _nvidia(name="NVIDIA GH200 480GB", family="gh200", form_factor="Superchip",
            device_names=("NVIDIA GH200 480GB", "NVIDIA GH200 96GB HBM3"),
            compute_units=132, boost_clock_mhz=1980, tensor_clock_mhz=1830, memory_gb=96,
            memory_bandwidth_bytes_per_s=4.0e12, peak_flops_per_s=_HOPPER_SXM_PEAKS,
            mig_profiles=_GH200_96_MIG,
            source="NVIDIA GH200 datasheet (96GB HBM3 GPU + 480GB LPDDR5X; H100 SXM compute)"),
    _nvidia(name="NVIDIA GH200 144G HBM3e", family="gh200", form_factor="Superchip",
            device_names=("NVIDIA GH200 144G HBM3e", "NVIDIA GH200 144GB HBM3e"),
            compute_units=132, boost_clock_mhz=1980, tensor_clock_mhz=1830, memory_gb=144,
            memory_bandwidth_bytes_per_s=4.9e12, peak_flops_per_s=_HOPPER_SXM_PEAKS,
            mig_profiles=_GH200_144_MIG,
            source="NVIDIA GH200 datasheet (144GB HBM3e GPU; H100 SXM compute)"),
    # ---- Blackwell. Per-GPU values = 8-GPU (HGX) or 72-GPU (NVL72) totals / N, sparse / 2.
    _nvidia(name="NVIDIA B200", family="b200", form_factor="SXM",
            device_names=("NVIDIA B200", "NVIDIA B200 180GB HBM3e"),
            # [B200] HGX B200: FP64/FP64 TC 296 TF, FP32 600 TF, TF32 18 PF*, FP16/BF16 36 PF*,
            # FP8 72 PF*, INT8 72 POPS* for 8 GPUs.
            compute_units=148, boost_clock_mhz=1965, tensor_clock_mhz=1856, memory_gb=180,
            memory_bandwidth_bytes_per_s=8e12,
            peak_flops_per_s={"fp64": 37e12, "fp32": 75e12, "tf32": 1.125e15,
                              "bf16": 2.25e15, "fp16": 2.25e15, "fp8": 4.5e15,
                              "int8": 4.5e15},
            mig_profiles=_B200_MIG,
            source="NVIDIA HGX B200 datasheet (8-GPU totals / 8, sparse / 2)",
            notes="tensor_clock_mhz derived: 2.25e15 / (148 SMs x 8192 FLOP/clk)"),
    _nvidia(name="NVIDIA GB200", family="gb200", form_factor="Superchip",
            device_names=("NVIDIA GB200",),
            # [GB200] NVL72: FP64/FP64 TC 3,240 TF, FP32 6,480 TF, TF32 180 PF*,
            # FP16/BF16 360 PF*, FP8 720 PF*, INT8 720 POPS* for 72 GPUs.
            compute_units=148, boost_clock_mhz=2062, memory_gb=186,
            memory_bandwidth_bytes_per_s=8e12,
            peak_flops_per_s={"fp64": 45e12, "fp32": 90e12, "tf32": 1.25e15,
                              "bf16": 2.5e15, "fp16": 2.5e15, "fp8": 5e15, "int8": 5e15},
            mig_profiles=_GB200_MIG,
            source="NVIDIA GB200 NVL72 datasheet (72-GPU totals / 72, sparse / 2)",
            notes="boost_clock_mhz derived: 2.5e15 / (148 SMs x 8192 FLOP/clk)"),
    # ---- Ada / Ampere inference boards.
    _nvidia(name="NVIDIA L40S", family="l40s", form_factor="PCIe",
            device_names=("NVIDIA L40S",),
            # [L40S] FP32 91.6, TF32 183 | 366*, BF16/FP16 362.05 | 733*, FP8 733 | 1466*,
            # INT8 733 | 1466*. No FP64 figure is published (FP64 is 1/64 rate).
            compute_units=142, boost_clock_mhz=2520, memory_gb=48,
            memory_bandwidth_bytes_per_s=864e9,
            peak_flops_per_s={"fp32": 91.6e12, "tf32": 183e12, "bf16": 362.05e12,
                              "fp16": 362.05e12, "fp8": 733e12, "int8": 733e12},
            source="NVIDIA L40S datasheet",
            notes="datasheet BF16 dense 362.05 is ~1% below half its 733 sparse figure; kept"),
    _nvidia(name="NVIDIA L4", family="l4", form_factor="PCIe",
            device_names=("NVIDIA L4",),
            # [L4] FP32 30.3, TF32 120*, BF16/FP16 242*, FP8 485*, INT8 485* (sparse).
            compute_units=58, boost_clock_mhz=2040, memory_gb=24,
            memory_bandwidth_bytes_per_s=300e9,
            peak_flops_per_s={"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12,
                              "fp16": 121e12, "fp8": 242.5e12, "int8": 242.5e12},
            source="NVIDIA L4 datasheet (sparse / 2)"),
    _nvidia(name="NVIDIA A10", family="a10", form_factor="PCIe",
            device_names=("NVIDIA A10",),
            # [A10] FP32 31.2, TF32 62.5 | 125*, BF16/FP16 125 | 250*, INT8 250 | 500*.
            compute_units=72, boost_clock_mhz=1695, memory_gb=24,
            memory_bandwidth_bytes_per_s=600e9,
            peak_flops_per_s={"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12,
                              "fp16": 125e12, "int8": 250e12},
            source="NVIDIA A10 datasheet"),
    _nvidia(name="NVIDIA A10G", family="a10g", form_factor="PCIe",
            device_names=("NVIDIA A10G",),
            # AWS-only part, no NVIDIA datasheet. 80 SMs at 1710 MHz, tensor FP16/BF16 with
            # FP32 accumulate at half the A10's per-SM rate (GA102 consumer rate):
            # 80 x 512 FLOP/clk x 1.71 GHz = 70 TF; TF32 35, INT8 140, FP32 35.
            compute_units=80, boost_clock_mhz=1710, memory_gb=24,
            memory_bandwidth_bytes_per_s=600e9,
            peak_flops_per_s={"fp32": 35e12, "tf32": 35e12, "bf16": 70e12, "fp16": 70e12,
                              "int8": 140e12},
            source="AWS EC2 G5 documentation; derived from SMs x clock (no NVIDIA datasheet)",
            notes="uncertain: derived, not from a vendor datasheet"),
    # ---- Volta: FP16 tensor only (no BF16/TF32); fp64 is the vector rate (no FP64 TC).
    _nvidia(name="Tesla V100-SXM2-16GB", family="v100", form_factor="SXM2",
            device_names=("Tesla V100-SXM2-16GB",),
            compute_units=80, boost_clock_mhz=1530, memory_gb=16,
            memory_bandwidth_bytes_per_s=900e9,
            peak_flops_per_s={"fp64": 7.8e12, "fp32": 15.7e12, "fp16": 125e12},
            source="NVIDIA V100 datasheet (SXM2 column)"),
    _nvidia(name="Tesla V100-SXM2-32GB", family="v100", form_factor="SXM2",
            device_names=("Tesla V100-SXM2-32GB",),
            compute_units=80, boost_clock_mhz=1530, memory_gb=32,
            memory_bandwidth_bytes_per_s=900e9,
            peak_flops_per_s={"fp64": 7.8e12, "fp32": 15.7e12, "fp16": 125e12},
            source="NVIDIA V100 datasheet (SXM2 column)"),
    _nvidia(name="Tesla V100-PCIE-16GB", family="v100", form_factor="PCIe",
            device_names=("Tesla V100-PCIE-16GB",),
            compute_units=80, boost_clock_mhz=1380, memory_gb=16,
            memory_bandwidth_bytes_per_s=900e9,
            peak_flops_per_s={"fp64": 7e12, "fp32": 14e12, "fp16": 112e12},
            source="NVIDIA V100 datasheet (PCIe column)"),
    _nvidia(name="Tesla V100-PCIE-32GB", family="v100", form_factor="PCIe",
            device_names=("Tesla V100-PCIE-32GB",),
            compute_units=80, boost_clock_mhz=1380, memory_gb=32,
            memory_bandwidth_bytes_per_s=900e9,
            peak_flops_per_s={"fp64": 7e12, "fp32": 14e12, "fp16": 112e12},
            source="NVIDIA V100 datasheet (PCIe column)"),
    _nvidia(name="Tesla V100S-PCIE-32GB", family="v100s", form_factor="PCIe",
            device_names=("Tesla V100S-PCIE-32GB",),
            compute_units=80, boost_clock_mhz=1597, memory_gb=32,
            memory_bandwidth_bytes_per_s=1134e9,
            peak_flops_per_s={"fp64": 8.2e12, "fp32": 16.4e12, "fp16": 130e12},
            source="NVIDIA V100 datasheet (V100S PCIe column)"),
    # ---- AMD CDNA2: ROCm shows each MI250X/MI250 GCD as its own device, so entries are
    # per GCD (half of the per-OAM datasheet figures).
    GPUSpec(name="AMD Instinct MI250X", vendor="amd", family="mi250x", form_factor="OAM",
            device_names=("AMD Instinct MI250X", "Instinct MI250X"),
            compute_units=110, compute_unit_kind="CU", boost_clock_mhz=1700, memory_gb=64,
            memory_bandwidth_bytes_per_s=1.6384e12,
            # [MI250X] per OAM: FP64 matrix 95.7, FP32 vector 47.9, FP16/BF16 383, INT8 383.
            peak_flops_per_s={"fp64": 47.85e12, "fp32": 23.95e12, "bf16": 191.5e12,
                              "fp16": 191.5e12, "int8": 191.5e12},
            source="AMD Instinct MI250X data sheet (per OAM / 2 GCDs)",
            notes="per GCD (one ROCm device); an OAM package is two devices"),
    GPUSpec(name="AMD Instinct MI250", vendor="amd", family="mi250", form_factor="OAM",
            device_names=("AMD Instinct MI250", "Instinct MI250"),
            compute_units=104, compute_unit_kind="CU", boost_clock_mhz=1700, memory_gb=64,
            memory_bandwidth_bytes_per_s=1.6384e12,
            # [MI250X] MI250 per OAM: FP64 matrix 90.5, FP32 vector 45.3, FP16/BF16 362.1.
            peak_flops_per_s={"fp64": 45.25e12, "fp32": 22.65e12, "bf16": 181.05e12,
                              "fp16": 181.05e12, "int8": 181.05e12},
            source="AMD Instinct MI250 data sheet (per OAM / 2 GCDs)",
            notes="per GCD (one ROCm device); an OAM package is two devices"),
    GPUSpec(name="AMD Instinct MI300X", vendor="amd", family="mi300x", form_factor="OAM",
            device_names=("AMD Instinct MI300X", "AMD Instinct MI300X OAM",
                          "AMD Instinct MI300X VF"),
            compute_units=304, compute_unit_kind="CU", boost_clock_mhz=2100, memory_gb=192,
            memory_bandwidth_bytes_per_s=5.3e12, peak_flops_per_s=_MI300_PEAKS,
            source="AMD Instinct MI300X data sheet"),
    GPUSpec(name="AMD Instinct MI325X", vendor="amd", family="mi325x", form_factor="OAM",
            device_names=("AMD Instinct MI325X", "AMD Instinct MI325X OAM"),
            compute_units=304, compute_unit_kind="CU", boost_clock_mhz=2100, memory_gb=256,
            memory_bandwidth_bytes_per_s=6.0e12, peak_flops_per_s=_MI300_PEAKS,
            source="AMD Instinct MI325X data sheet (same compute as MI300X)"),
    # ---- Google TPU v4, for reproducing published TPU runs (PaLM). Per chip.
    GPUSpec(name="TPU v4", vendor="google", form_factor="TPU",
            device_names=("TPU v4", "Google TPU v4"),
            compute_units=2, compute_unit_kind="TensorCore", boost_clock_mhz=1050,
            memory_gb=32, memory_bandwidth_bytes_per_s=1.2e12,
            peak_flops_per_s={"bf16": 275e12},
            source="Google Cloud TPU v4 documentation; PaLM (Chowdhery et al. 2022) §4"),
)

_DEFAULT = Catalog(BUILTIN_SPECS)


# --------------------------------------------------------------------------- overrides


def spec_from_override(name: str, body: Mapping[str, Any], catalog: Catalog | None = None) -> GPUSpec:
    """Build a GPUSpec from one ``MFU_PEAK_OVERRIDES`` entry.

    `body` holds GPUSpec fields; peaks may be given as ``peak_flops_per_s`` (FLOP/s) or
    ``peak_tflops`` (TFLOP/s). ``based_on`` names a catalog GPU to start from (e.g. a
    power-capped variant that only changes a few fields).
    """
    if not isinstance(body, Mapping):
        raise ValueError(f"override for {name!r} must be a JSON object")
    fields = dict(body)
    base_name = fields.pop("based_on", None)
    data: dict[str, Any] = {}
    if base_name is not None:
        base = (catalog or _DEFAULT).lookup(str(base_name))
        data = base.model_dump()
        # The override answers to its own name only; keeping the family would make
        # generic names ("H100") ambiguous between the part and its override.
        data["device_names"] = ()
        data["family"] = None
    tflops = fields.pop("peak_tflops", None)
    if tflops is not None:
        if not isinstance(tflops, Mapping):
            raise ValueError(f"override for {name!r}: peak_tflops must be an object")
        fields["peak_flops_per_s"] = {str(k): float(v) * 1e12 for k, v in tflops.items()}
    if base_name is not None and "peak_flops_per_s" in fields:
        # based_on: the given precisions replace the base's, the others are kept.
        fields["peak_flops_per_s"] = {**data["peak_flops_per_s"], **fields["peak_flops_per_s"]}
    data.update(fields)
    data["name"] = name
    data["device_names"] = (name, *tuple(data.get("device_names") or ()))
    data.setdefault("source", f"operator override ({OVERRIDES_ENV})")
    if base_name is not None and "source" not in fields:
        data["source"] = f"operator override of {base_name} ({OVERRIDES_ENV})"
    return GPUSpec.model_validate(data)


def load_overrides(value: str | Mapping[str, Any] | None, catalog: Catalog | None = None) -> list[GPUSpec]:
    """Register the specs in an ``MFU_PEAK_OVERRIDES`` value (JSON text or mapping).

    Format: ``{"<device name as NVML reports it>": {"peak_tflops": {"bf16": 500}, ...}}``.
    Returns the registered specs; raises ValueError (with the offending name) on bad input.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{OVERRIDES_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(value, Mapping):
        raise ValueError(f"{OVERRIDES_ENV} must be a JSON object keyed by GPU name")
    target = catalog or _DEFAULT
    specs = []
    for name, body in value.items():
        try:
            spec = spec_from_override(str(name), body, target)
        except (ValueError, LookupError) as exc:
            raise ValueError(f"{OVERRIDES_ENV} entry {name!r}: {exc}") from exc
        specs.append(target.register(spec))
    return specs


# --------------------------------------------------------------------------- module API


def register(spec: GPUSpec) -> GPUSpec:
    """Add (or replace, by name) a GPU in the default catalog."""
    return _DEFAULT.register(spec)


def catalog() -> list[GPUSpec]:
    """All GPUs in the default catalog, built-ins first, then registered ones."""
    return _DEFAULT.specs()


def lookup(gpu_name: str, *, form_factor: str | None = None) -> GPUSpec:
    """The GPUSpec for a device name as NVML / amd-smi report it (see `Catalog.lookup`)."""
    return _DEFAULT.lookup(gpu_name, form_factor=form_factor)


def mig_sm_fraction(gpu_name: str, mig_profile: str, *, form_factor: str | None = None) -> float:
    """Slice SMs / full SMs of a MIG profile ("1g.5gb", "3g.40gb", "1c.3g.20gb").

    Raises ValueError for a profile the GPU does not have.
    """
    return _DEFAULT.mig_sm_fraction(gpu_name, mig_profile, form_factor=form_factor)


def resolve_peak(
    gpu_name: str,
    precision: str,
    *,
    mig_profile: str | None = None,
    sm_clock_mhz: float | None = None,
    form_factor: str | None = None,
) -> Peak:
    """Like `peak_flops_per_s`, returning the factors used as well."""
    return _DEFAULT.resolve_peak(
        gpu_name, precision, mig_profile=mig_profile, sm_clock_mhz=sm_clock_mhz,
        form_factor=form_factor,
    )


def peak_flops_per_s(
    gpu_name: str,
    precision: Precision,
    *,
    mig_profile: str | None = None,
    sm_clock_mhz: float | None = None,
    form_factor: str | None = None,
) -> float:
    """Dense peak FLOP/s of one GPU (or MIG slice) at `precision`.

    - `mig_profile`: MIG profile of the slice (also read from a name such as
      "NVIDIA A100-SXM4-40GB MIG 1g.5gb"); the peak scales by slice SMs / full SMs.
    - `sm_clock_mhz`: the enforced maximum SM clock (NVML max/application clock). The
      peak scales by min(1, sm_clock_mhz / the clock the datasheet peak assumes).

    Raises UnknownGPUError, UnsupportedPrecisionError, or ValueError (bad MIG profile
    or clock).
    """
    return resolve_peak(
        gpu_name, precision, mig_profile=mig_profile, sm_clock_mhz=sm_clock_mhz,
        form_factor=form_factor,
    ).peak_flops_per_s


def peak_bytes_per_s(
    gpu_name: str, *, mig_profile: str | None = None, form_factor: str | None = None
) -> float:
    """Peak memory bandwidth of one GPU (or MIG slice, by its memory slices), bytes/s.

    Raises UnknownGPUError, or ValueError (no bandwidth in the catalog, bad MIG profile).
    """
    return _DEFAULT.peak_bytes_per_s(gpu_name, mig_profile=mig_profile, form_factor=form_factor)
