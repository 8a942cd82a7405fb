"""`mfu peaks`: dense peak FLOP/s and memory bandwidth of a GPU (or MIG slice) from the
catalog, and the ridge point (peak FLOP/s / peak bytes/s, FLOP per byte: work with a lower
arithmetic intensity is memory-bound on that GPU).

    mfu peaks --gpu "NVIDIA H100 80GB HBM3" --precision bf16 [--mig-profile 1g.10gb]
              [--sm-clock-mhz 1410] [--form-factor SXM] [--json]
    mfu peaks --list [--json]

Operators add GPUs with the MFU_PEAK_OVERRIDES environment variable (JSON, see
`mfu.peaks.load_overrides`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from mfu import peaks
from mfu.precision import PRECISIONS
from mfu.roofline import ridge_flops_per_byte
from mfucli.main import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "peaks",
        help="dense peak FLOP/s of a GPU from the catalog",
        description="Dense (non-sparse) peak FLOP/s of a GPU or MIG slice, per precision. "
        f"Add GPUs with {peaks.OVERRIDES_ENV} (JSON).",
    )
    parser.add_argument("--gpu", help='device name as NVML reports it, e.g. "NVIDIA H100 80GB HBM3"')
    parser.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)}")
    parser.add_argument("--mig-profile", help="MIG profile of the slice, e.g. 1g.10gb")
    parser.add_argument(
        "--sm-clock-mhz",
        help="enforced max SM clock (MHz); scales the peak down when below the datasheet clock",
    )
    parser.add_argument("--form-factor", help="disambiguates generic names: SXM, PCIe, NVL, ...")
    parser.add_argument("--list", action="store_true", help="list the catalog")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


# ------------------------------------------------------------------ shared with `mfu flops`


def load_env_overrides() -> None:
    """Register the GPUs in MFU_PEAK_OVERRIDES; a malformed value is a user error."""
    try:
        peaks.load_overrides(os.environ.get(peaks.OVERRIDES_ENV))
    except ValueError as exc:
        raise CLIError(one_line(exc)) from exc


def parse_number(option: str, text: str | None, *, allow_zero: bool = False) -> float | None:
    """A finite, positive (or non-negative) float from an option value, else CLIError."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"{option} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise CLIError(f"{option} must be a finite {bound} number, got {text!r}")
    return value


def check_precision(precision: str | None) -> str:
    if not precision:
        raise CLIError(f"--precision is required (one of {', '.join(PRECISIONS)})")
    if precision.lower() not in PRECISIONS:
        raise CLIError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return precision.lower()


def resolve(args: argparse.Namespace, precision: str) -> peaks.Peak:
    """The peak for args.gpu / --mig-profile / --sm-clock-mhz / --form-factor."""
    if not args.gpu:
        raise CLIError('--gpu is required (a device name such as "NVIDIA H100 80GB HBM3")')
    clock = parse_number("--sm-clock-mhz", args.sm_clock_mhz)
    try:
        return peaks.resolve_peak(
            args.gpu,
            precision,
            mig_profile=args.mig_profile,
            sm_clock_mhz=clock,
            form_factor=args.form_factor,
        )
    except (LookupError, ValueError) as exc:
        raise CLIError(one_line(exc)) from exc


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def tflops(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:,.1f} TFLOP/s"


# ------------------------------------------------------------------ command


def run(args: argparse.Namespace) -> int:
    load_env_overrides()
    if args.list:
        return _list(args)
    precision = check_precision(args.precision)
    peak = resolve(args, precision)
    spec = peak.gpu
    peak_bytes = _peak_bytes(args)
    ridge = None if peak_bytes is None else ridge_flops_per_byte(peak.peak_flops_per_s,
                                                                 peak_bytes)
    memory_fraction = None
    if peak_bytes is not None and spec.memory_bandwidth_bytes_per_s:
        memory_fraction = peak_bytes / spec.memory_bandwidth_bytes_per_s
    if args.json:
        out: dict[str, Any] = {
            "gpu": spec.name,
            "gpu_name": args.gpu,
            "precision": precision,
            "peak_flops_per_s": peak.peak_flops_per_s,
            "peak_tflops": peak.peak_flops_per_s / 1e12,
            "dense": True,
            "datasheet_peak_flops_per_s": peak.datasheet_flops_per_s,
            "mig_profile": peak.mig_profile,
            "mig_sm_fraction": peak.mig_sm_fraction,
            "sm_clock_mhz": parse_number("--sm-clock-mhz", args.sm_clock_mhz),
            "reference_clock_mhz": spec.reference_clock_mhz(precision),
            "clock_factor": peak.clock_factor,
            "form_factor": spec.form_factor,
            "compute_units": spec.compute_units,
            "memory_bandwidth_bytes_per_s": spec.memory_bandwidth_bytes_per_s,
            "peak_bytes_per_s": peak_bytes,
            "peak_tb_per_s": None if peak_bytes is None else peak_bytes / 1e12,
            "mig_memory_fraction": memory_fraction,
            "ridge_flops_per_byte": ridge,
            "source": spec.source,
        }
        print(json.dumps(out, indent=2))
        return 0
    parts = [f"{spec.name} ({spec.form_factor}) {precision}: {tflops(peak.peak_flops_per_s)} dense peak"]
    if peak.mig_profile:
        parts.append(f"MIG {peak.mig_profile} = {peak.mig_sm_fraction:.4f} of the SMs")
    if peak.clock_factor != 1.0:
        parts.append(f"clock factor {peak.clock_factor:.4f}")
    if peak.peak_flops_per_s != peak.datasheet_flops_per_s:
        parts.append(f"datasheet {tflops(peak.datasheet_flops_per_s)}")
    if peak_bytes is None:
        parts.append("memory bandwidth not in the catalog")
    else:
        slices = "" if memory_fraction in (None, 1.0) else \
            f" ({memory_fraction:.4g} of the memory slices)"
        parts.append(f"{peak_bytes / 1e12:,.3f} TB/s memory bandwidth{slices}; "
                     f"ridge point {ridge:,.1f} FLOP/byte")
    print("; ".join(parts) + f"  [source: {spec.source}]")
    return 0


def _peak_bytes(args: argparse.Namespace) -> float | None:
    """Peak memory bandwidth (bytes/s) of the GPU or MIG slice; None where the catalog
    has no bandwidth for it."""
    try:
        return peaks.peak_bytes_per_s(args.gpu, mig_profile=args.mig_profile,
                                      form_factor=args.form_factor)
    except ValueError:
        return None


def _list(args: argparse.Namespace) -> int:
    specs = peaks.catalog()
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in specs], indent=2))
        return 0
    header = f"{'GPU':<28} {'form':<9} {'units':>6} {'MHz':>6} {'mem GB':>7} {'TB/s':>5}  " + " ".join(
        f"{p:>8}" for p in PRECISIONS
    )
    print(header)
    for s in specs:
        values = " ".join(
            f"{s.peak_flops_per_s[p] / 1e12:>8.1f}" if p in s.peak_flops_per_s else f"{'-':>8}"
            for p in PRECISIONS
        )
        bandwidth = (s.memory_bandwidth_bytes_per_s or 0) / 1e12
        print(
            f"{s.name:<28} {s.form_factor or '-':<9} {s.compute_units or 0:>6} "
            f"{s.boost_clock_mhz or 0:>6.0f} {s.memory_gb or 0:>7.0f} {bandwidth:>5.2f}  {values}"
        )
    print("(dense TFLOP/s; int8 in TOPS)", file=sys.stderr)
    return 0
