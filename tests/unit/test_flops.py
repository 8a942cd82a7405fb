"""Model FLOPs: parameter counts from HF configs, per-token FLOPs formulas, MFU ratio."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mfu.flops import (
    FlopsPerToken,
    ModelConfig,
    ParamCounts,
    attention_flops_per_token,
    flops_per_token,
    mfu_ratio,
    param_counts,
)

DATA = Path(__file__).parent / "data"


def load(name: str) -> ModelConfig:
    return ModelConfig.from_hf_config(json.loads((DATA / f"{name}.json").read_text()))


# A toy model small enough to count by hand: L=2, d=64, H=4, KV=2, Q=16, f=128, V=100.
TOY: dict[str, Any] = {
    "model_type": "llama", "hidden_act": "silu", "num_hidden_layers": 2, "hidden_size": 64,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
    "vocab_size": 100, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
}
# attention: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12288; MLP 3*64*128 = 24576
TOY_N = 2 * (12288 + 24576) + 100 * 64  # + unembedding = 80128
L, H, Q = 2, 4, 16


def toy(**changes: Any) -> ModelConfig:
    return ModelConfig.from_hf_config({**TOY, **changes})


# --------------------------------------------------------------------------- counts

def test_toy_param_counts_by_hand() -> None:
    counts = param_counts(toy())
    assert counts == ParamCounts(
        total=73728 + 2 * 128 + 64 + 6400 + 6400,  # layers + norms + final norm + emb + head
        active=86848,
        embedding=6400,
        non_embedding=86848 - 6400,
        active_matmul=TOY_N,
    )
    assert TOY_N == 80128


def test_tied_embeddings_count_once_but_unembedding_stays_in_n() -> None:
    untied, tied = param_counts(toy()), param_counts(toy(tie_word_embeddings=True))
    assert untied.total - tied.total == 100 * 64
    assert tied.active_matmul == untied.active_matmul == TOY_N


def test_plain_mlp_has_two_matrices() -> None:
    counts = param_counts(toy(model_type="toy", hidden_act="gelu"))
    assert counts.active_matmul == 2 * (12288 + 2 * 64 * 128) + 6400
    assert param_counts(toy(model_type="toy", hidden_act="relu")) == counts
    assert param_counts(toy(model_type="toy", hidden_act="swiglu")) == param_counts(toy())


def test_gemma_is_gated_despite_gelu() -> None:
    assert toy(model_type="gemma", hidden_act="gelu_pytorch_tanh").gated_mlp


def test_gqa_changes_params_not_attention_flops() -> None:
    mha, gqa = toy(num_key_value_heads=4), toy(num_key_value_heads=1)
    assert param_counts(mha).active_matmul - param_counts(gqa).active_matmul == 2 * 2 * 64 * 48
    assert attention_flops_per_token(mha, 100) == attention_flops_per_token(gqa, 100)


def test_toy_moe_with_shared_expert_and_dense_first_layer() -> None:
    cfg = toy(n_routed_experts=4, num_experts_per_tok=1, moe_intermediate_size=32,
              n_shared_experts=1, first_k_dense_replace=1)
    assert cfg.num_moe_layers == 1 and not cfg.is_moe_layer(0) and cfg.is_moe_layer(1)
    expert = 3 * 64 * 32  # 6144
    counts = param_counts(cfg)
    common = 2 * 12288 + 2 * 128 + 24576 + expert + 4 * 64 + 64 + 2 * 6400
    assert counts.total == common + 4 * expert == 93248
    assert counts.active == common + 1 * expert == 74816
    assert counts.active_matmul == 2 * 12288 + 24576 + 2 * expert + 4 * 64 + 6400 == 68096


# Fixtures of real architectures. Exact counts computed by this module, with the
# published figure each must agree with.
@pytest.mark.parametrize(("name", "total", "active", "n"), [
    # HF model card: 6,738,415,616 parameters (exact).
    ("llama-2-7b", 6_738_415_616, 6_738_415_616, 6_607_077_376),
    # HF: 68,976,648,192 (exact).
    ("llama-2-70b", 68_976_648_192, 68_976_648_192, 68_713_185_280),
    # Meta: 405B (405.85B with both embedding tables).
    ("llama-3.1-405b", 405_853_388_800, 405_853_388_800, 403_747_897_344),
    # GPT-3 paper Table 2.1: 175.0B.
    ("gpt3-175b", 174_604_259_328, 174_604_259_328, 174_563_733_504),
    # Mistral: 46.7B total, 12.9B active per token.
    ("mixtral-8x7b", 46_702_792_704, 12_879_925_248, 12_748_587_008),
    # DeepSeek-V3 report: 671B total, 37B activated.
    ("deepseek-v3", 671_026_404_352, 37_552_282_624, 36_624_596_992),
    # DeepSeek-V2 paper: V2-Lite 15.7B total, 2.4B activated.
    ("deepseek-v2-lite", 15_706_484_224, 2_661_150_208, 2_451_308_544),
    # Qwen: Qwen1.5-MoE-A2.7B, 14.3B total, 2.7B activated.
    ("qwen1.5-moe-a2.7b", 14_315_784_192, 2_689_173_504, 2_377_760_768),
    # PaLM paper: 540.35B (shared embedding counted once) = exactly our N.
    ("palm-540b", 540_358_649_856, 540_358_649_856, 540_354_281_472),
    # MT-NLG: 530B.
    ("mt-nlg-530b", 529_600_819_200, 529_600_819_200, 529_530_880_000),
    # llm-foundry benchmark table NumParams: 6658859008 and 64862437376 (exact).
    ("mpt-7b", 6_658_859_008, 6_658_859_008, 6_648_758_272),
    ("mpt-70b", 64_862_437_376, 64_862_437_376, 64_837_124_096),
])
def test_fixture_param_counts(name: str, total: int, active: int, n: int) -> None:
    counts = param_counts(load(name))
    assert (counts.total, counts.active, counts.active_matmul) == (total, active, n)
    assert counts.non_embedding == counts.total - counts.embedding


@pytest.mark.parametrize(("name", "published_total", "published_active"), [
    ("mixtral-8x7b", 46.7e9, 12.9e9),
    ("deepseek-v3", 671e9, 37e9),
    ("qwen1.5-moe-a2.7b", 14.3e9, 2.7e9),
    ("deepseek-v2-lite", 15.7e9, 2.4e9),
])
def test_moe_counts_agree_with_published_rounding(name: str, published_total: float,
                                                  published_active: float) -> None:
    counts = param_counts(load(name))
    assert counts.total == pytest.approx(published_total, rel=0.005)
    # Vendors round "activated" differently (with or without embeddings): N or active
    # lands within 2.5% of the published figure.
    assert min(abs(counts.active / published_active - 1),
               abs(counts.active_matmul / published_active - 1)) < 0.025


def test_moe_layer_placement() -> None:
    assert load("deepseek-v3").num_moe_layers == 58  # first 3 of 61 dense
    assert load("deepseek-v2-lite").num_moe_layers == 26
    assert load("mixtral-8x7b").num_moe_layers == 32
    assert load("qwen1.5-moe-a2.7b").num_moe_layers == 24
    assert toy(num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2).num_moe_layers == 1
    assert toy(num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0, 1]).num_moe_layers == 0


def test_mla_shapes() -> None:
    cfg = load("deepseek-v3")
    assert (cfg.head_dim, cfg.v_head_dim, cfg.q_lora_rank, cfg.kv_lora_rank) == (192, 128, 1536, 512)
    lite = load("deepseek-v2-lite")
    assert lite.q_lora_rank is None and lite.head_dim == 192


# --------------------------------------------------------------------------- config

def test_config_aliases_and_defaults() -> None:
    gpt3 = load("gpt3-175b")
    assert (gpt3.num_layers, gpt3.hidden_size, gpt3.intermediate_size) == (96, 12288, 4 * 12288)
    assert not gpt3.gated_mlp and gpt3.tie_word_embeddings and gpt3.norm_bias
    assert gpt3.position_embeddings == 2048
    llama = load("llama-2-7b")
    assert llama.num_key_value_heads == 32 and llama.head_dim == 128 and not llama.norm_bias
    mpt = load("mpt-7b")
    assert (mpt.intermediate_size, mpt.num_attention_heads, mpt.max_position_embeddings) == (
        16384, 32, 2048)
    no_kv = dict(TOY)
    del no_kv["num_key_value_heads"]
    assert ModelConfig.from_hf_config(no_kv).num_key_value_heads == 4  # default: MHA
    assert ModelConfig.from_hf_config({"text_config": TOY}).num_layers == 2
    assert toy(head_dim=32).head_dim == 32


@pytest.mark.parametrize(("drop", "key"), [
    ("num_hidden_layers", "num_hidden_layers"), ("hidden_size", "hidden_size"),
    ("vocab_size", "vocab_size"), ("intermediate_size", "intermediate_size"),
    ("num_attention_heads", "num_attention_heads"),
])
def test_missing_key_is_named(drop: str, key: str) -> None:
    config = dict(TOY)
    del config[drop]
    with pytest.raises(ValueError, match=key):
        ModelConfig.from_hf_config(config)


def test_bad_configs() -> None:
    with pytest.raises(ValueError, match="gated"):
        ModelConfig.from_hf_config({**TOY, "model_type": "toy", "hidden_act": None})
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig.from_hf_config({**TOY, "num_attention_heads": 5})
    # ModelConfig is a stdlib dataclass (it ships in the dependency-free SDK): its bound
    # checks raise ValueError naming the field, where pydantic raised ValidationError.
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        ModelConfig.from_hf_config({**TOY, "hidden_size": -64})
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        ModelConfig.from_hf_config({**TOY, "num_local_experts": 8, "num_experts_per_tok": 9})
    with pytest.raises(ValueError, match="JSON object"):
        ModelConfig.from_hf_config([1, 2])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- FLOPs

T = 32


def test_training_is_6n_plus_12lhqt() -> None:
    f = flops_per_token(toy(), seq_len=T, mode="train")
    assert f == FlopsPerToken(model_flops=6 * TOY_N + 12 * L * H * Q * T,
                              hardware_flops=6 * TOY_N + 12 * L * H * Q * T,
                              dense_flops=6 * TOY_N, attention_flops=12 * L * H * Q * T)
    assert f.model_flops == 529920


def test_causal_halves_only_attention() -> None:
    f = flops_per_token(toy(), seq_len=T, mode="train", causal=True)
    assert (f.dense_flops, f.attention_flops) == (6 * TOY_N, 6 * L * H * Q * T)


def test_prefill_and_decode_are_2n_plus_4lhqt() -> None:
    prefill = flops_per_token(toy(), seq_len=T, mode="prefill")
    assert (prefill.dense_flops, prefill.attention_flops) == (2 * TOY_N, 4 * L * H * Q * T)
    causal = flops_per_token(toy(), seq_len=T, mode="prefill", causal=True)
    assert causal.attention_flops == 2 * L * H * Q * T
    decode = flops_per_token(toy(), seq_len=1000, mode="decode")
    assert decode.model_flops == 2 * TOY_N + 4 * L * H * Q * 1000
    # decode attends to the whole context: causal does not apply
    assert flops_per_token(toy(), seq_len=1000, mode="decode", causal=True) == decode


def test_recompute_changes_hardware_flops_only() -> None:
    full = flops_per_token(toy(), seq_len=T, recompute="full")
    assert full.model_flops == 6 * TOY_N + 12 * L * H * Q * T
    assert full.hardware_flops == 8 * TOY_N + 16 * L * H * Q * T
    selective = flops_per_token(toy(), seq_len=T, recompute="selective")
    assert selective.hardware_flops == 6 * TOY_N + 16 * L * H * Q * T
    causal_full = flops_per_token(toy(), seq_len=T, recompute="full", causal=True)
    assert causal_full.model_flops == 6 * TOY_N + 6 * L * H * Q * T
    assert causal_full.hardware_flops == 8 * TOY_N + 8 * L * H * Q * T


def test_plain_parameter_count_omits_attention() -> None:
    f = flops_per_token(7e9, seq_len=2048)
    assert (f.model_flops, f.attention_flops) == (42e9, 0.0)
    assert flops_per_token(7e9, seq_len=2048, mode="decode").model_flops == 14e9
    assert flops_per_token(7e9, seq_len=2048, recompute="full").hardware_flops == 56e9


def test_params_override_keeps_attention_dims() -> None:
    f = flops_per_token(toy(), seq_len=T, params=1e9)
    assert (f.dense_flops, f.attention_flops) == (6e9, 12 * L * H * Q * T)


def test_mla_attention_uses_qk_and_v_head_dims() -> None:
    f = flops_per_token(load("deepseek-v3"), seq_len=4096)
    assert f.attention_flops == 3 * 61 * 2 * 128 * 4096 * (192 + 128) == 61_404_610_560
    assert f.dense_flops == 6 * 36_624_596_992


def test_llama2_7b_training_flops() -> None:
    # 6N + 12LHQT with N = 6,607,077,376 (incl. unembedding), L=32, H=32, Q=128, T=4096.
    f = flops_per_token(load("llama-2-7b"), seq_len=4096)
    assert f.model_flops == 6 * 6_607_077_376 + 12 * 32 * 32 * 128 * 4096 == 46_084_915_200


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"mode": "serve"}, "mode"),
    ({"recompute": "some"}, "recompute"),
    ({"mode": "prefill", "recompute": "full"}, "recompute only applies"),
    ({"seq_len": 0}, "seq_len"),
    ({"seq_len": 2.5}, "seq_len"),
])
def test_bad_flops_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"seq_len": 128, **kwargs}
    with pytest.raises(ValueError, match=match):
        flops_per_token(toy(), **args)


@pytest.mark.parametrize("n", [0, -1.0, math.nan, math.inf])
def test_bad_parameter_count(n: float) -> None:
    with pytest.raises(ValueError, match="parameter count"):
        flops_per_token(n, seq_len=128)


# --------------------------------------------------------------------------- MFU

def test_mfu_ratio() -> None:
    assert mfu_ratio(430e12, 989.4e12) == pytest.approx(0.4346, abs=1e-4)
    assert mfu_ratio(0.0, 312e12) == 0.0
    for peak in (None, 0.0, -1.0, math.nan, math.inf):
        assert mfu_ratio(1e12, peak) is None
    for achieved in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="achieved"):
            mfu_ratio(achieved, 312e12)


# --------------------------------------------------------------------------- properties

@st.composite
def model_configs(draw: st.DrawFn) -> ModelConfig:
    heads = draw(st.integers(1, 16))
    kv = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0]))
    head_dim = draw(st.sampled_from([8, 16, 64, 128]))
    layers = draw(st.integers(1, 8))
    experts = draw(st.sampled_from([0, 0, 2, 8, 64]))
    config: dict[str, Any] = {
        "model_type": "toy",
        "hidden_act": draw(st.sampled_from(["silu", "gelu", "relu"])),
        "num_hidden_layers": layers,
        "hidden_size": heads * head_dim,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": draw(st.integers(1, 4096)),
        "vocab_size": draw(st.integers(1, 50_000)),
        "tie_word_embeddings": draw(st.booleans()),
        "attention_bias": draw(st.booleans()),
    }
    if experts:
        config.update({
            "num_experts": experts,
            "num_experts_per_tok": draw(st.integers(1, experts)),
            "moe_intermediate_size": draw(st.integers(1, 2048)),
            "n_shared_experts": draw(st.integers(0, 2)),
            "first_k_dense_replace": draw(st.integers(0, layers)),
        })
    return ModelConfig.from_hf_config(config)


@settings(max_examples=200, deadline=None)
@given(cfg=model_configs())
def test_active_never_exceeds_total(cfg: ModelConfig) -> None:
    counts = param_counts(cfg)
    assert 0 < counts.active_matmul <= counts.active <= counts.total
    if not cfg.num_moe_layers or cfg.num_experts_per_tok == cfg.num_experts:
        assert counts.active == counts.total
    elif cfg.num_moe_layers:
        assert counts.active < counts.total


@settings(max_examples=200, deadline=None)
@given(cfg=model_configs(), seq_len=st.integers(1, 200_000),
       mode=st.sampled_from(["train", "prefill"]))
def test_causal_changes_only_the_attention_term(cfg: ModelConfig, seq_len: int, mode: str) -> None:
    full = flops_per_token(cfg, seq_len=seq_len, mode=mode)  # type: ignore[arg-type]
    half = flops_per_token(cfg, seq_len=seq_len, mode=mode, causal=True)  # type: ignore[arg-type]
    assert half.dense_flops == full.dense_flops
    assert half.attention_flops == pytest.approx(full.attention_flops / 2)
    assert full.model_flops - half.model_flops == pytest.approx(full.attention_flops / 2)


@settings(max_examples=200, deadline=None)
@given(cfg=model_configs(), a=st.integers(1, 100_000), b=st.integers(1, 100_000),
       mode=st.sampled_from(["train", "prefill", "decode"]), causal=st.booleans())
def test_flops_monotone_in_seq_len(cfg: ModelConfig, a: int, b: int, mode: str,
                                   causal: bool) -> None:
    assume(a != b)
    lo, hi = sorted((a, b))
    f_lo = flops_per_token(cfg, seq_len=lo, mode=mode, causal=causal)  # type: ignore[arg-type]
    f_hi = flops_per_token(cfg, seq_len=hi, mode=mode, causal=causal)  # type: ignore[arg-type]
    assert f_lo.model_flops < f_hi.model_flops
    assert f_lo.dense_flops == f_hi.dense_flops


@settings(max_examples=200, deadline=None)
@given(cfg=model_configs(), seq_len=st.integers(1, 100_000),
       recompute=st.sampled_from(["none", "selective", "full"]))
def test_hardware_flops_never_below_model_flops(cfg: ModelConfig, seq_len: int,
                                                recompute: str) -> None:
    f = flops_per_token(cfg, seq_len=seq_len, recompute=recompute)  # type: ignore[arg-type]
    assert f.hardware_flops >= f.model_flops
    assert f.model_flops == f.dense_flops + f.attention_flops


@settings(max_examples=300, deadline=None)
@given(tokens=st.floats(0, 1e7), factor=st.floats(0, 1e3),
       n=st.floats(1e6, 1e12), peak=st.floats(1e12, 1e16))
def test_mfu_scales_linearly_with_throughput(tokens: float, factor: float, n: float,
                                             peak: float) -> None:
    per_token = flops_per_token(n, seq_len=2048).model_flops
    base = mfu_ratio(tokens * per_token, peak)
    scaled = mfu_ratio(factor * tokens * per_token, peak)
    assert base is not None and scaled is not None
    assert scaled == pytest.approx(factor * base, rel=1e-9, abs=1e-300)
