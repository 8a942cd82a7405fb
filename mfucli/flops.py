"""`mfu flops`: MFU (and HFU) of a run from its model, throughput and GPU.

    mfu flops --model config.json --gpu "NVIDIA H100 80GB HBM3" --precision bf16 \\
              --tokens-per-s-per-gpu 3200 [--seq-len 4096] [--mode train] [--causal] \\
              [--recompute full] [--json]
    mfu flops --params 7e9 --gpu ... --precision bf16 --achieved-tflops-per-gpu 400
    mfu flops --model config.json --mode decode --batch-size 8 --context-len 2048 \\
              --gpu "NVIDIA H100 80GB HBM3" --precision bf16 --tokens-per-s-per-gpu 1000

In decode mode with ``--model`` it also prints the bytes a decode step reads (weights once
per step + the batch's KV cache, ``mfu.flops.decode_bytes``) and the MBU inputs: achieved
bytes/s per GPU, the GPU's peak memory bandwidth, MBU, the arithmetic intensity and the
ridge point.

Throughput is per GPU. ``--achieved-tflops-per-gpu`` is read as *model* TFLOP/s (the MFU
numerator). With ``--params`` alone the attention term is omitted (it needs the model's
layers, heads and head dim); add ``--model`` to include it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from mfu import peaks
from mfu.flops import (
    MODES,
    RECOMPUTES,
    ModelConfig,
    decode_bytes,
    flops_per_token,
    mbu_ratio,
    mfu_ratio,
    param_counts,
)
from mfu.roofline import ridge_flops_per_byte
from mfucli.main import CLIError
from mfucli.peaks import (
    check_precision,
    load_env_overrides,
    one_line,
    parse_number,
    resolve,
    tflops,
)

DEFAULT_SEQ_LEN = 2048
_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="MFU/HFU of a run from model config, throughput and GPU",
        description="Model FLOPs per token (6N + 12LHQT for training, PaLM appendix B) and "
        "the resulting MFU against the GPU's dense peak. Throughput is per GPU.",
    )
    parser.add_argument("--model", help="Hugging Face style config.json of the model")
    parser.add_argument(
        "--params",
        help="N, active matmul parameters (e.g. 7e9 or 6.7B); overrides the config's count",
    )
    parser.add_argument("--gpu", help='device name as NVML reports it, e.g. "NVIDIA H100 80GB HBM3"')
    parser.add_argument("--precision", help="precision of the peak: bf16, fp16, fp8, tf32, ...")
    parser.add_argument("--tokens-per-s-per-gpu", help="measured tokens/s per GPU")
    parser.add_argument(
        "--achieved-tflops-per-gpu", help="measured model TFLOP/s per GPU (instead of tokens/s)"
    )
    parser.add_argument(
        "--seq-len",
        help="sequence length (train/prefill) or context length (decode); default: the "
        f"config's max_position_embeddings, else {DEFAULT_SEQ_LEN}",
    )
    parser.add_argument("--mode", default="train", help=f"one of {', '.join(MODES)} (default train)")
    parser.add_argument("--causal", action="store_true", help="halve the attention term")
    parser.add_argument(
        "--recompute", default="none", help=f"activation recomputation: {', '.join(RECOMPUTES)}"
    )
    parser.add_argument("--batch-size", help="decode: sequences per step (default 1)")
    parser.add_argument(
        "--context-len", help="decode: tokens in each sequence's KV cache (default: --seq-len)"
    )
    parser.add_argument(
        "--kv-precision", help="decode: KV-cache element type (default: --precision)"
    )
    parser.add_argument("--mig-profile", help="MIG profile when the GPU is a slice")
    parser.add_argument("--sm-clock-mhz", help="enforced max SM clock (MHz)")
    parser.add_argument("--form-factor", help="disambiguates generic GPU names: SXM, PCIe, NVL")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def parse_count(text: str) -> float:
    """ "7e9", "6.7B", "70m", "1_000" -> float; CLIError otherwise."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)", cleaned, re.IGNORECASE)
    if match is None:
        raise CLIError(f"--params must be a positive number such as 7e9 or 6.7B, got {text!r}")
    value = float(match[1]) * _SUFFIXES.get(match[2].lower(), 1.0)
    if not value > 0:
        raise CLIError(f"--params must be positive, got {text!r}")
    return value


def load_model(path: str) -> ModelConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot read model config {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"model config {path} is not valid JSON: {exc}") from exc
    try:
        return ModelConfig.from_hf_config(data)
    except ValueError as exc:
        raise CLIError(f"model config {path}: {one_line(exc)}") from exc


def run(args: argparse.Namespace) -> int:
    load_env_overrides()
    precision = check_precision(args.precision)
    if args.mode not in MODES:
        raise CLIError(f"--mode must be one of {', '.join(MODES)}, got {args.mode!r}")
    if args.recompute not in RECOMPUTES:
        raise CLIError(f"--recompute must be one of {', '.join(RECOMPUTES)}, got {args.recompute!r}")
    if args.mode != "train" and args.recompute != "none":
        raise CLIError("--recompute only applies to --mode train")
    if args.model is None and args.params is None:
        raise CLIError("give --model CONFIG.json and/or --params N")
    if (args.tokens_per_s_per_gpu is None) == (args.achieved_tflops_per_gpu is None):
        raise CLIError("give exactly one of --tokens-per-s-per-gpu and --achieved-tflops-per-gpu")
    tokens_per_s = parse_number("--tokens-per-s-per-gpu", args.tokens_per_s_per_gpu, allow_zero=True)
    achieved_tflops = parse_number(
        "--achieved-tflops-per-gpu", args.achieved_tflops_per_gpu, allow_zero=True
    )

    cfg = load_model(args.model) if args.model else None
    n_override = parse_count(args.params) if args.params is not None else None
    if args.seq_len is not None:
        seq = parse_number("--seq-len", args.seq_len)
        if seq is None or seq != int(seq):
            raise CLIError(f"--seq-len must be a positive integer, got {args.seq_len!r}")
        seq_len, seq_source = int(seq), "argument"
    elif cfg is not None and cfg.max_position_embeddings:
        seq_len, seq_source = cfg.max_position_embeddings, "max_position_embeddings"
    else:
        seq_len, seq_source = DEFAULT_SEQ_LEN, "default"
    batch_size, kv_precision = _decode_args(args, precision)
    if args.context_len is not None:
        context = _positive_int("--context-len", args.context_len)
        if args.seq_len is not None and context != seq_len:
            raise CLIError("--context-len and --seq-len differ; in decode mode they are the "
                           "same thing (the context a new token attends to): give one")
        seq_len, seq_source = context, "--context-len"

    try:
        if cfg is not None:
            counts = param_counts(cfg)
            total, active = counts.total, counts.active
            n = n_override if n_override is not None else float(counts.active_matmul)
            per_token = flops_per_token(
                cfg, seq_len=seq_len, mode=args.mode, causal=args.causal,
                recompute=args.recompute, params=n_override,
            )
        else:
            assert n_override is not None
            total = active = n = n_override
            per_token = flops_per_token(
                n_override, seq_len=seq_len, mode=args.mode, causal=args.causal,
                recompute=args.recompute,
            )
    except ValueError as exc:
        raise CLIError(one_line(exc)) from exc

    peak = resolve(args, precision)
    if tokens_per_s is not None:
        achieved = tokens_per_s * per_token.model_flops
    else:
        assert achieved_tflops is not None
        achieved = achieved_tflops * 1e12
        tokens_per_s = achieved / per_token.model_flops
    hardware = tokens_per_s * per_token.hardware_flops
    mfu = mfu_ratio(achieved, peak.peak_flops_per_s)
    hfu = mfu_ratio(hardware, peak.peak_flops_per_s)
    attention = "included" if cfg is not None else "omitted: --params without --model gives no L/H/Q"

    out: dict[str, Any] = {
        "model": cfg.name if cfg is not None else None,
        "params": total,
        "active_params": active,
        "flops_params": n,
        "mode": args.mode,
        "seq_len": seq_len,
        "seq_len_source": seq_source,
        "causal": args.causal,
        "recompute": args.recompute,
        "attention_term": attention,
        "model_flops_per_token": per_token.model_flops,
        "hardware_flops_per_token": per_token.hardware_flops,
        "dense_flops_per_token": per_token.dense_flops,
        "attention_flops_per_token": per_token.attention_flops,
        "tokens_per_s_per_gpu": tokens_per_s,
        "achieved_flops_per_s_per_gpu": achieved,
        "hardware_flops_per_s_per_gpu": hardware,
        "gpu": peak.gpu.name,
        "precision": precision,
        "mig_profile": peak.mig_profile,
        "peak_flops_per_s_per_gpu": peak.peak_flops_per_s,
        "mfu": mfu,
        "hfu": hfu,
    }
    if args.mode == "decode":
        out.update(_decode_out(args, cfg, precision, kv_precision, batch_size, seq_len,
                               tokens_per_s, per_token.model_flops, peak.peak_flops_per_s))
    if mfu is not None and mfu > 1.0:
        print(
            f"mfu flops: warning: MFU {mfu:.2f} > 1; is the throughput per GPU and the "
            f"precision the one the run used?",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    name = cfg.name if cfg is not None else "model"
    print(f"{name}: N={n:.4g} active matmul params (total {total:.4g}, active {active:.4g})")
    causal = "causal" if args.causal else "non-causal"
    print(
        f"FLOPs/token ({args.mode}, seq_len {seq_len} [{seq_source}], {causal}): "
        f"model {per_token.model_flops:.4g} = dense {per_token.dense_flops:.4g} + attention "
        f"{per_token.attention_flops:.4g} ({attention}); hardware {per_token.hardware_flops:.4g} "
        f"(recompute {args.recompute})"
    )
    mfu_text = "n/a" if mfu is None else f"{mfu:.4f} ({mfu:.1%})"
    hfu_text = "n/a" if hfu is None else f"{hfu:.4f}"
    print(
        f"{tokens_per_s:,.1f} tokens/s/GPU -> {tflops(achieved)} model of "
        f"{tflops(peak.peak_flops_per_s)} peak ({peak.gpu.name}, {precision} dense): "
        f"MFU {mfu_text}, HFU {hfu_text}"
    )
    if args.mode == "decode":
        _print_decode(out)
    return 0


def _positive_int(option: str, text: str) -> int:
    value = parse_number(option, text)
    if value is None or value != int(value):
        raise CLIError(f"{option} must be a positive integer, got {text!r}")
    return int(value)


def _decode_args(args: argparse.Namespace, precision: str) -> tuple[int, str]:
    """(batch size, KV-cache precision) of a decode run; CLIError outside decode mode."""
    if args.mode != "decode":
        for option, value in (("--batch-size", args.batch_size),
                              ("--context-len", args.context_len),
                              ("--kv-precision", args.kv_precision)):
            if value is not None:
                raise CLIError(f"{option} only applies to --mode decode")
        return 1, precision
    batch = 1 if args.batch_size is None else _positive_int("--batch-size", args.batch_size)
    kv = precision if args.kv_precision is None else check_precision(args.kv_precision)
    return batch, kv


def _decode_out(args: argparse.Namespace, cfg: ModelConfig | None, precision: str,
                kv_precision: str, batch_size: int, context_len: int, tokens_per_s: float,
                flops_per_token: float, peak_flops_per_s: float) -> dict[str, Any]:
    """Decode bytes and MBU inputs (null where --model is missing or no bandwidth known)."""
    try:
        peak_bytes: float | None = peaks.peak_bytes_per_s(
            args.gpu, mig_profile=args.mig_profile, form_factor=args.form_factor)
    except (LookupError, ValueError):
        peak_bytes = None
    ridge = None if not peak_bytes else ridge_flops_per_byte(peak_flops_per_s, peak_bytes)
    out: dict[str, Any] = {
        "batch_size": batch_size, "context_len": context_len, "kv_precision": kv_precision,
        "peak_bytes_per_s_per_gpu": peak_bytes, "ridge_flops_per_byte": ridge,
        "weight_params": None, "weight_bytes_per_step": None,
        "kv_cache_bytes_per_context_token": None, "kv_cache_bytes_per_step": None,
        "bytes_per_step": None, "bytes_per_token": None,
        "achieved_bytes_per_s_per_gpu": None, "mbu": None,
        "arithmetic_intensity_flops_per_byte": None,
    }
    if cfg is None:
        out["bytes_note"] = "decode bytes need --model (KV-cache shape)"
        return out
    try:
        b = decode_bytes(cfg, batch_size=batch_size, context_len=context_len,
                         precision=precision, kv_precision=kv_precision)
    except ValueError as exc:
        raise CLIError(one_line(exc)) from exc
    achieved = tokens_per_s * b.bytes_per_token
    out.update({
        "weight_params": b.weight_params, "weight_bytes_per_step": b.weight_bytes,
        "kv_cache_bytes_per_context_token": b.kv_cache_bytes_per_context_token,
        "kv_cache_bytes_per_step": b.kv_cache_bytes, "bytes_per_step": b.bytes_per_step,
        "bytes_per_token": b.bytes_per_token, "achieved_bytes_per_s_per_gpu": achieved,
        "mbu": mbu_ratio(achieved, peak_bytes),
        "arithmetic_intensity_flops_per_byte": flops_per_token / b.bytes_per_token,
    })
    return out


def _print_decode(out: dict[str, Any]) -> None:
    if out["bytes_per_step"] is None:
        print(f"decode bytes: n/a ({out['bytes_note']})")
        return
    print(
        f"decode bytes/step (batch {out['batch_size']}, context {out['context_len']}): "
        f"{out['bytes_per_step']:.4g} = weights {out['weight_bytes_per_step']:.4g} "
        f"({out['weight_params']:.4g} params) + KV cache {out['kv_cache_bytes_per_step']:.4g} "
        f"({out['kv_cache_bytes_per_context_token']:.4g} B per context token, "
        f"{out['kv_precision']}); {out['bytes_per_token']:.4g} bytes/token"
    )
    peak = out["peak_bytes_per_s_per_gpu"]
    mbu = "n/a" if out["mbu"] is None else f"{out['mbu']:.4f} ({out['mbu']:.1%})"
    peak_text = "unknown" if peak is None else f"{peak / 1e12:,.3f} TB/s"
    ridge = out["ridge_flops_per_byte"]
    ridge_text = "n/a" if ridge is None else f"{ridge:,.1f}"
    print(
        f"{out['achieved_bytes_per_s_per_gpu'] / 1e12:,.3f} TB/s/GPU of {peak_text} peak: "
        f"MBU {mbu}; arithmetic intensity "
        f"{out['arithmetic_intensity_flops_per_byte']:,.1f} FLOP/B vs ridge {ridge_text} FLOP/B"
    )
