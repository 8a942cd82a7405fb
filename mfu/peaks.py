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
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
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
    mig_memory_slices: Mapping[str, int] = Field(
        default_factory=dict, description="MIG GPU-instance profile -> memory slices of 8"
    )
    interconnect: str | None = Field(default=None, description="GPU-to-GPU link, as printed")
    tdp_w: float | None = Field(default=None, gt=0, description="board power limit, W")
    gpm_counters: bool = Field(
        default=False, description="NVML GPM pipe-activity counters (Hopper and later)"
    )
    sources: Mapping[str, str] = Field(
        default_factory=dict, description="where each group of values comes from"
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

    @field_validator("mig_memory_slices", mode="after")
    @classmethod
    def _check_mig_memory(cls, value: Mapping[str, int]) -> Mapping[str, int]:
        out = {}
        for profile, slices in value.items():
            if not 1 <= slices <= 8:
                raise ValueError(f"MIG profile {profile} needs 1..8 memory slices, got {slices}")
            out[normalize_mig_profile(profile)] = int(slices)
        return MappingProxyType(out)

    @field_serializer("peak_flops_per_s", "mig_profiles", "mig_memory_slices", "sources")
    def _plain_dict(self, value: Mapping[str, Any]) -> dict[str, Any]:
        return dict(value)

    @property
    def memory_bytes(self) -> int | None:
        """Capacity in bytes, reading datasheet 'GB' of HBM/GDDR as GiB (how DRAM is built)."""
        return None if self.memory_gb is None else int(self.memory_gb * 2**30)

    @property
    def tensor_cores(self) -> bool:
        """True where a matrix-unit precision (tf32/bf16/fp16/fp8/int8) peaks above plain
        FP32: the part has tensor cores (or AMD matrix cores), so fp32 work wastes them."""
        fp32 = self.peak_flops_per_s.get("fp32", 0.0)  # type: ignore[call-overload]
        return any(self.peak_flops_per_s.get(p, 0.0) > fp32  # type: ignore[call-overload]
                   for p in TENSOR_PRECISIONS)

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

        From the catalog's ``mig_memory_slices``; for a profile it lacks (an operator
        override), derived from the profile's memory size against one eighth of the GPU's
        memory (NVIDIA MIG User Guide: every supported part has 8 memory slices).
        """
        spec = self.lookup(gpu_name, form_factor=form_factor)
        self.mig_sm_count(gpu_name, mig_profile, form_factor=form_factor)  # validates it
        profile = normalize_mig_profile(mig_profile)
        ci = _COMPUTE_INSTANCE.match(profile)
        if ci is not None:  # a compute instance shares its GPU instance's memory
            profile = f"{ci['g']}g.{ci['mem']}"
        if profile in spec.mig_memory_slices:
            return spec.mig_memory_slices[profile] / 8
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
# The facts live in mfu/data/gpus.yaml (one entry per part, each with its sources); this
# module only turns an entry into a GPUSpec. Adding a GPU = one entry there + its test.

DATA_FILE = Path(__file__).with_name("data") / "gpus.yaml"


def _scaled(value: Any, exponent: int) -> float:
    """``value`` x 10**exponent, rounded once: "989.4" TFLOP/s gives exactly 989.4e12 (a
    float multiplication by 1e12 can be one ulp off the literal, and tests compare exactly)."""
    return float(f"{float(value)!r}e{exponent}")


def spec_fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    """GPUSpec fields from one data-file entry (``dense_peak_tflops``, ``peak_tflops``,
    ``memory_bandwidth_gb_per_s`` and ``mig_profiles`` with ``{sms, memory_slices}`` are
    converted; every other key is a GPUSpec field as it is)."""
    fields = dict(entry)
    for key in ("dense_peak_tflops", "peak_tflops"):
        tflops = fields.pop(key, None)
        if tflops is None:
            continue
        if not isinstance(tflops, Mapping):
            raise ValueError(f"{key} must be an object (precision -> TFLOP/s)")
        fields["peak_flops_per_s"] = {str(k): _scaled(v, 12) for k, v in tflops.items()}
    bandwidth = fields.pop("memory_bandwidth_gb_per_s", None)
    if bandwidth is not None:
        fields["memory_bandwidth_bytes_per_s"] = _scaled(bandwidth, 9)
    mig = fields.get("mig_profiles")
    if isinstance(mig, Mapping) and any(isinstance(v, Mapping) for v in mig.values()):
        sms: dict[str, int] = {}
        slices: dict[str, int] = {}
        for profile, body in mig.items():
            if isinstance(body, Mapping):
                sms[profile] = body["sms"]
                if "memory_slices" in body:
                    slices[profile] = body["memory_slices"]
            else:
                sms[profile] = body
        fields["mig_profiles"] = sms
        fields["mig_memory_slices"] = {**slices, **dict(fields.get("mig_memory_slices") or {})}
    if "device_names" in fields:
        fields["device_names"] = tuple(fields["device_names"])
    return fields


def load_specs(path: Path = DATA_FILE) -> tuple[GPUSpec, ...]:
    """Every GPUSpec in a GPU facts file (default: the packaged mfu/data/gpus.yaml)."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of GPU entries")
    specs = []
    for i, entry in enumerate(entries):
        name = entry.get("name", f"entry {i}") if isinstance(entry, Mapping) else f"entry {i}"
        try:
            specs.append(GPUSpec.model_validate(spec_fields(entry)))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: GPU {name!r}: {exc}") from exc
    return tuple(specs)


BUILTIN_SPECS: tuple[GPUSpec, ...] = load_specs()

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
    try:
        fields = spec_fields(fields)  # the data file's units and MIG form are accepted too
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"override for {name!r}: {exc}") from exc
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
