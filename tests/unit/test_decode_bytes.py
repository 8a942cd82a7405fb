"""Decode bytes per step/token from a model config (MBU numerator), by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfu.flops import ModelConfig, decode_bytes, kv_cache_bytes_per_token, mbu_ratio

DATA = Path(__file__).parent / "data"

LLAMA_3_8B = json.loads((DATA / "llama-3-8b.json").read_text())


def test_llama_3_8b_decode_bytes_by_hand() -> None:
    cfg = ModelConfig.from_hf_config(LLAMA_3_8B)
    got = decode_bytes(cfg, batch_size=8, context_len=2048, precision="bf16")
    # Weights read once per step (active matmul params, bf16 = 2 bytes):
    #   attention/layer: q 4096*32*128 = 16,777,216 + k,v 2*4096*8*128 = 8,388,608
    #                    + o 32*128*4096 = 16,777,216                 -> 41,943,040
    #   MLP/layer (SwiGLU): 3*4096*14336                              -> 176,160,768
    #   32 layers * 218,103,808 = 6,979,321,856; + unembedding 128256*4096 = 525,336,576
    #   -> 7,504,658,432 params -> 15,009,316,864 bytes
    assert got.weight_params == 7_504_658_432
    assert got.weight_bytes == 15_009_316_864
    # KV cache per context token (GQA): 8 kv heads * 128 head_dim * 2 (K,V) * 32 layers
    #   * 2 bytes = 131,072 bytes; batch 8 * context 2048 * 131,072 = 2,147,483,648
    assert got.kv_cache_bytes_per_context_token == 131_072
    assert got.kv_cache_bytes == 2_147_483_648
    # step = 15,009,316,864 + 2,147,483,648 = 17,156,800,512; per token / 8 = 2,144,600,064
    assert got.bytes_per_step == 17_156_800_512
    assert got.bytes_per_token == 2_144_600_064


def test_fp8_weights_with_bf16_kv_cache() -> None:
    cfg = ModelConfig.from_hf_config(LLAMA_3_8B)
    got = decode_bytes(cfg, batch_size=1, context_len=1000, precision="fp8", kv_precision="bf16")
    # 7,504,658,432 * 1 byte + 1 * 1000 * 131,072 = 7,504,658,432 + 131,072,000
    assert got.bytes_per_step == 7_635_730_432 == got.bytes_per_token


def test_moe_reads_only_active_experts() -> None:
    cfg = ModelConfig.from_hf_config(json.loads((DATA / "mixtral-8x7b.json").read_text()))
    got = decode_bytes(cfg, batch_size=1, context_len=1)
    # Mixtral 8x7B, top-2 of 8 experts: per layer attention 41,943,040 (as Llama-3-8B)
    #   + router 8*4096 = 32,768 + 2 experts * 3*4096*14336 = 352,321,536 -> 394,297,344
    #   * 32 layers = 12,617,515,008 + unembedding 32000*4096 = 131,072,000
    #   -> 12,748,587,008 active params (not the 46.7B stored), bf16 -> 25,497,174,016 bytes
    assert got.weight_params == 12_748_587_008
    assert got.weight_bytes == 25_497_174_016
    # + 1 context token: 8*128*2*32*2 = 131,072
    assert got.bytes_per_step == 25_497_174_016 + 131_072


def test_mla_caches_one_latent_per_layer() -> None:
    cfg = ModelConfig.from_hf_config(json.loads((DATA / "deepseek-v2-lite.json").read_text()))
    # DeepSeek-V2-Lite: (kv_lora_rank 512 + rope 64) * 27 layers * 2 bytes = 31,104
    assert kv_cache_bytes_per_token(cfg, 2.0) == 31_104


def test_decode_bytes_refuses_bad_input() -> None:
    cfg = ModelConfig.from_hf_config(LLAMA_3_8B)
    with pytest.raises(ValueError, match="batch_size"):
        decode_bytes(cfg, batch_size=0, context_len=10)
    with pytest.raises(ValueError, match="precision"):
        decode_bytes(cfg, context_len=10, precision="fp4")


def test_mbu_ratio() -> None:
    # 2,144,600,064 bytes/token * 1000 tokens/s = 2.144600064e12 B/s on an H100 SXM's
    # 3.35e12 B/s -> 2.144600064 / 3.35 = 0.64017912358...
    assert mbu_ratio(2_144_600_064 * 1000, 3.35e12) == pytest.approx(0.6401791236, rel=1e-9)
    assert mbu_ratio(1.0, None) is None and mbu_ratio(1.0, 0.0) is None
