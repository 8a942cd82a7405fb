"""Numeric precisions a FLOP report or a peak can be stated in."""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
