"""Model FLOPs per token for transformer LMs (dense, GQA, SwiGLU, MoE, MLA).

Units are in the names: ``*_flops`` are FLOPs (per token here), ``*_flops_per_s`` rates,
``*_bytes`` bytes. Decode bytes (the MBU numerator) are in :func:`decode_bytes`.

Standard library only: this module ships in the ``mfu-sdk`` distribution (``sdk/``) so a
training job can count its FLOPs without the pipeline's dependencies; the pipeline's
``mfu.flops`` re-exports it (one definition). Results are frozen dataclasses.

Formulas (PaLM, Chowdhery et al. 2022, appendix B; Megatron, Korthikanti et al. 2022):

- training:   6·N + 12·L·H·Q·T   (forward 2·N, backward 4·N; attention likewise x3)
- prefill:    2·N +  4·L·H·Q·T   (one forward over a prompt of T tokens)
- decode:     2·N +  4·L·H·Q·T   (one new token attending to a context of T tokens)

with L layers, H query heads, Q head dim, T = `seq_len`. The attention term counts the
two matmuls Q·Kᵀ and A·V, 2·H·T·Q FLOPs each per token and layer forward (with distinct
q/k and v head dims, as in MLA: 2·H·T·(Q_qk + Q_v)). `causal=True` halves only the
attention term (on average a token sees half the sequence) for train and prefill; it
does not apply to decode, where `seq_len` is already the context the token attends to.
By default the attention term is not halved, as in PaLM and Megatron.

Hardware FLOPs (for HFU) add recomputation: ``recompute="full"`` re-runs the whole
forward (8·N + 16·L·H·Q·T), ``"selective"`` re-runs the attention core only
(6·N + 16·L·H·Q·T). MFU always uses the model FLOPs.

**N** is `ParamCounts.active_matmul`: the active parameters that take part in a matmul for
each token -- attention and MLP weights of the routed top-k plus shared experts and the
router, *plus the output projection (unembedding)*, which is a real V×d matmul whether or
not it is tied to the input embedding. The input embedding is a table lookup, not a
matmul, and is left out; so are norm weights and biases (elementwise work). This matches
PaLM's 540.35B (tied embedding counted once) and Megatron's ``6·V·h`` logit term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["train", "prefill", "decode"]
Recompute = Literal["none", "selective", "full"]
MODES: tuple[str, ...] = ("train", "prefill", "decode")
RECOMPUTES: tuple[str, ...] = ("none", "selective", "full")

# hidden_act values that name a gated (3-matrix: gate, up, down) MLP ...
_GATED_ACTS = {"silu", "swish", "swiglu", "geglu", "reglu"}
# ... and those that name a plain 2-matrix MLP, unless the architecture is known gated.
_PLAIN_ACTS = {"gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python",
               "quick_gelu", "relu", "relu2", "tanh"}
# Architectures whose MLP is gated whatever hidden_act says (Gemma: GeGLU with a gelu act).
_GATED_MODEL_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                      "deepseek_v2", "deepseek_v3", "gemma", "gemma2", "gemma3_text", "phi3",
                      "olmo", "olmo2", "granite", "internlm2", "palm"}
_PLAIN_MODEL_TYPES = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "mpt", "gpt_bigcode",
                      "starcoder2", "phi"}
# Architectures with biases on every linear layer and LayerNorm (GPT-2 family).
_BIASED_MODEL_TYPES = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "gpt_bigcode", "starcoder2",
                       "phi"}


# Lower bounds of ModelConfig's integer fields: (field, minimum, optional). Checked in
# __post_init__ (stdlib only: this module ships in the dependency-free SDK).
_INT_BOUNDS: tuple[tuple[str, int, bool], ...] = (
    ("num_layers", 1, False), ("hidden_size", 1, False), ("num_attention_heads", 1, False),
    ("num_key_value_heads", 1, False), ("head_dim", 1, False), ("v_head_dim", 1, False),
    ("intermediate_size", 1, False), ("vocab_size", 1, False),
    ("max_position_embeddings", 0, True), ("position_embeddings", 0, False),
    ("num_experts", 0, False), ("num_experts_per_tok", 0, False),
    ("moe_intermediate_size", 1, True), ("num_shared_experts", 0, False),
    ("shared_expert_intermediate_size", 1, True), ("first_k_dense_replace", 0, False),
    ("moe_layer_freq", 1, False), ("decoder_sparse_step", 1, False),
    ("q_lora_rank", 1, True), ("kv_lora_rank", 1, True), ("qk_rope_head_dim", 0, False),
)
_BOOL_FIELDS = ("gated_mlp", "tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias",
                "norm_bias")


def _as_int(name: str, value: Any) -> int:
    """An integer field from JSON: ints, integral floats (32.0) and digit strings ("32")."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{name} must be an integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The shapes that decide a decoder-only transformer's parameters and FLOPs.

    Keyword-only, frozen; every integer field is checked on construction (ValueError
    naming the field): sizes and head counts must be >= 1, counts >= 0.
    """

    name: str | None = None
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int  # query/key head dim (MLA: nope + rope)
    v_head_dim: int  # value head dim (= head_dim except MLA)
    intermediate_size: int  # dense MLP width
    vocab_size: int
    gated_mlp: bool = True
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False  # LayerNorm with bias (True) vs RMSNorm (False)
    max_position_embeddings: int | None = None
    position_embeddings: int = 0  # rows of a learned position-embedding table (GPT-2, MPT)
    # Mixture of experts (num_experts == 0: dense).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int | None = None
    num_shared_experts: int = 0  # DeepSeek: shared experts
    shared_expert_intermediate_size: int | None = None  # Qwen-MoE: one gated shared expert
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    # Multi-head latent attention (DeepSeek-V2/V3): low-rank q and kv projections.
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int = 0

    def __post_init__(self) -> None:
        for name, minimum, optional in _INT_BOUNDS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            value = _as_int(name, value)
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
            object.__setattr__(self, name, value)  # frozen: store the normalised int
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"name must be a string, got {self.name!r}")
        object.__setattr__(self, "mlp_only_layers",
                           tuple(_as_int("mlp_only_layers", i) for i in self.mlp_only_layers))
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok must be in 1..{self.num_experts} for a MoE model, "
                f"got {self.num_experts_per_tok}"
            )
        if self.qk_rope_head_dim and self.kv_lora_rank is None:
            raise ValueError("qk_rope_head_dim is only meaningful with kv_lora_rank (MLA)")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> ModelConfig:
        """Read a Hugging Face ``config.json`` mapping (Llama, Mistral/Mixtral, Qwen(-MoE),
        DeepSeek-V2/V3, GPT-2/NeoX/MPT-style keys). Raises ValueError naming a missing key.
        """
        if not isinstance(config, Mapping):
            raise ValueError("a model config must be a JSON object")
        c: Mapping[str, Any] = config
        if "text_config" in c and _first(c, "num_hidden_layers", "n_layer", "num_layers") is None:
            c = c["text_config"]  # multimodal wrappers keep the LM under text_config
        model_type = str(c.get("model_type") or "").lower()

        layers = _require(c, "num_hidden_layers", "n_layer", "n_layers", "num_layers")
        hidden = _require(c, "hidden_size", "n_embd", "d_model")
        heads = _require(c, "num_attention_heads", "n_head", "n_heads")
        kv_heads = _first(c, "num_key_value_heads", "num_kv_heads", "n_head_kv")
        if kv_heads is None:
            kv_heads = 1 if c.get("multi_query") else heads  # GQA default: MHA
        vocab = _require(c, "vocab_size", "padded_vocab_size", "n_vocab")

        gated = c.get("gated_mlp")
        if gated is None:
            gated = _infer_gated(model_type, c.get("hidden_act") or c.get("activation_function"))

        intermediate = _first(c, "intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim")
        if intermediate is None and c.get("expansion_ratio") is not None:
            intermediate = round(float(c["expansion_ratio"]) * int(hidden))
        if intermediate is None and not gated:
            intermediate = 4 * int(hidden)  # GPT convention when n_inner is null
        if intermediate is None:
            raise ValueError("model config lacks 'intermediate_size' (MLP width)")

        kv_lora = c.get("kv_lora_rank")
        if kv_lora:  # MLA: per-head q/k dim = nope + rope, v dim separate
            nope = int(_require(c, "qk_nope_head_dim"))
            rope = int(c.get("qk_rope_head_dim") or 0)
            head_dim = nope + rope
            v_head_dim = int(c.get("v_head_dim") or nope)
        else:
            rope = 0
            head_dim = c.get("head_dim")
            if head_dim is None:
                if int(hidden) % int(heads):
                    raise ValueError(
                        f"hidden_size {hidden} is not a multiple of num_attention_heads "
                        f"{heads}; give head_dim"
                    )
                head_dim = int(hidden) // int(heads)
            v_head_dim = int(head_dim)

        biased = model_type in _BIASED_MODEL_TYPES
        if model_type == "mpt":
            biased = not c.get("no_bias", True)
        attention_bias = c.get("attention_bias")
        qkv_bias = c.get("qkv_bias")
        if qkv_bias is None:
            qkv_bias = bool(attention_bias) or biased or model_type in {"qwen2", "qwen2_moe"}
        o_bias = bool(attention_bias) if attention_bias is not None else biased
        mlp_bias = c.get("mlp_bias")
        norm_bias = c.get("norm_bias")
        if norm_bias is None:
            norm_bias = biased or (
                "rms_norm_eps" not in c
                and any(k in c for k in ("layer_norm_eps", "layer_norm_epsilon", "layernorm_epsilon"))
            )

        max_positions = _first(c, "max_position_embeddings", "n_positions", "max_seq_len",
                               "seq_length")
        learned = c.get("learned_position_embeddings")
        if learned is None:
            learned = model_type in {"gpt2", "opt", "gpt_bigcode"}
            if model_type == "mpt":
                alibi = (c.get("attn_config") or {}).get("alibi", False)
                learned = bool(c.get("learned_pos_emb", True)) and not alibi
        if learned and max_positions is None:
            raise ValueError("learned position embeddings need max_position_embeddings")

        experts = _first(c, "num_local_experts", "num_experts", "n_routed_experts") or 0
        shared_width = c.get("shared_expert_intermediate_size")
        return cls(
            name=c.get("_name_or_path") or c.get("name") or (model_type or None),
            num_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            v_head_dim=v_head_dim,
            intermediate_size=intermediate,
            vocab_size=vocab,
            gated_mlp=bool(gated),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),  # HF default
            qkv_bias=bool(qkv_bias),
            o_bias=o_bias,
            mlp_bias=bool(mlp_bias) if mlp_bias is not None else biased,
            norm_bias=bool(norm_bias),
            max_position_embeddings=max_positions,
            position_embeddings=int(max_positions) if learned else 0,
            num_experts=experts,
            num_experts_per_tok=(_first(c, "num_experts_per_tok", "moe_top_k")
                                 or 0) if experts else 0,
            moe_intermediate_size=c.get("moe_intermediate_size") if experts else None,
            num_shared_experts=(c.get("n_shared_experts") or 0) if experts else 0,
            shared_expert_intermediate_size=shared_width if experts and shared_width else None,
            first_k_dense_replace=c.get("first_k_dense_replace") or 0,
            moe_layer_freq=c.get("moe_layer_freq") or 1,
            decoder_sparse_step=c.get("decoder_sparse_step") or 1,
            mlp_only_layers=tuple(c.get("mlp_only_layers") or ()),
            q_lora_rank=c.get("q_lora_rank") if kv_lora else None,
            kv_lora_rank=kv_lora or None,
            qk_rope_head_dim=rope,
        )

    # ------------------------------------------------------------------ structure

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, index: int) -> bool:
        """Whether decoder layer `index` (0-based) has a routed-expert MLP."""
        return (
            self.is_moe
            and index >= self.first_k_dense_replace
            and index % self.moe_layer_freq == 0
            and (index + 1) % self.decoder_sparse_step == 0
            and index not in self.mlp_only_layers
        )

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))


@dataclass(frozen=True, kw_only=True)
class ParamCounts:
    """Parameter counts of a model.

    - `total`: every stored parameter (the "7B" in a model's name): embeddings, output
      head when untied, norms, biases, routers, all experts.
    - `active`: the parameters one token touches: `total` minus unselected routed experts.
    - `embedding`: the input lookup tables: token embedding (vocab × hidden) plus any
      learned position embedding.
    - `non_embedding`: `total - embedding`.
    - `active_matmul`: N of 6·N, the active parameters used in a matmul per token,
      including the output projection (tied or not) and excluding the input embedding
      lookup, norms and biases. See the module docstring.
    """

    total: int
    active: int
    embedding: int
    non_embedding: int
    active_matmul: int


@dataclass(frozen=True, kw_only=True)
class FlopsPerToken:
    """FLOPs per token. `model_flops = dense_flops + attention_flops` (the MFU numerator);
    `hardware_flops` adds recomputation (the HFU numerator)."""

    model_flops: float
    hardware_flops: float
    dense_flops: float
    attention_flops: float


# --------------------------------------------------------------------------- counting


def _mlp_matmul(cfg: ModelConfig, width: int) -> int:
    return (3 if cfg.gated_mlp else 2) * cfg.hidden_size * width


def _mlp_bias(cfg: ModelConfig, width: int) -> int:
    if not cfg.mlp_bias:
        return 0
    return (2 * width if cfg.gated_mlp else width) + cfg.hidden_size


def _attention_params(cfg: ModelConfig) -> tuple[int, int]:
    """(matmul weights, other params) of one attention block."""
    d, h, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    qk, v = cfg.head_dim, cfg.v_head_dim
    other = 0
    if cfg.kv_lora_rank is not None:  # MLA
        nope = qk - cfg.qk_rope_head_dim
        if cfg.q_lora_rank is not None:
            q = d * cfg.q_lora_rank + cfg.q_lora_rank * h * qk
            other += cfg.q_lora_rank  # q_a_layernorm
        else:
            q = d * h * qk
        kv_w = d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank * h * (nope + v)
        other += cfg.kv_lora_rank  # kv_a_layernorm
        matmul = q + kv_w + h * v * d
    else:
        matmul = d * h * qk + 2 * d * kv * qk + h * v * d
    if cfg.qkv_bias:
        other += h * qk + kv * qk + kv * v
    if cfg.o_bias:
        other += d
    return matmul, other


def _shared_expert_params(cfg: ModelConfig, expert_width: int) -> tuple[int, int]:
    """(matmul, other) of the always-on shared experts of one MoE layer."""
    matmul = cfg.num_shared_experts * _mlp_matmul(cfg, expert_width)
    other = cfg.num_shared_experts * _mlp_bias(cfg, expert_width)
    if cfg.shared_expert_intermediate_size:
        matmul += _mlp_matmul(cfg, cfg.shared_expert_intermediate_size)
        other += _mlp_bias(cfg, cfg.shared_expert_intermediate_size)
        matmul += cfg.hidden_size  # Qwen-MoE shared_expert_gate (hidden -> 1)
    return matmul, other


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Parameter counts of `cfg` (see `ParamCounts` for what each includes)."""
    d = cfg.hidden_size
    norm = d * (2 if cfg.norm_bias else 1)
    attn_matmul, attn_other = _attention_params(cfg)
    dense_mlp = _mlp_matmul(cfg, cfg.intermediate_size)
    dense_mlp_bias = _mlp_bias(cfg, cfg.intermediate_size)
    expert_width = cfg.moe_intermediate_size or cfg.intermediate_size
    expert = _mlp_matmul(cfg, expert_width)
    expert_bias = _mlp_bias(cfg, expert_width)
    shared_matmul, shared_other = _shared_expert_params(cfg, expert_width)
    router = cfg.num_experts * d

    total = active = matmul = 0
    for index in range(cfg.num_layers):
        layer_common = attn_matmul + attn_other + 2 * norm
        if cfg.is_moe_layer(index):
            k, e = cfg.num_experts_per_tok, cfg.num_experts
            moe_common = shared_matmul + shared_other + router
            total += layer_common + moe_common + e * (expert + expert_bias)
            active += layer_common + moe_common + k * (expert + expert_bias)
            matmul += attn_matmul + shared_matmul + router + k * expert
        else:
            total += layer_common + dense_mlp + dense_mlp_bias
            active += layer_common + dense_mlp + dense_mlp_bias
            matmul += attn_matmul + dense_mlp
    embedding = (cfg.vocab_size + cfg.position_embeddings) * d
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * d
    total += embedding + head + norm
    active += embedding + head + norm
    matmul += cfg.vocab_size * d  # unembedding matmul, tied or not
    return ParamCounts(
        total=total,
        active=active,
        embedding=embedding,
        non_embedding=total - embedding,
        active_matmul=matmul,
    )


# --------------------------------------------------------------------------- FLOPs


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the Q·Kᵀ and A·V matmuls over a context of `seq_len`
    tokens, all layers, no causal halving: L · 2·H·T·(Q_qk + Q_v) (= 4·L·H·Q·T)."""
    per_layer = 2 * cfg.num_attention_heads * seq_len * (cfg.head_dim + cfg.v_head_dim)
    return float(cfg.num_layers * per_layer)


def flops_per_token(
    cfg_or_params: ModelConfig | int | float,
    *,
    seq_len: int,
    mode: Mode = "train",
    causal: bool = False,
    recompute: Recompute = "none",
    params: float | None = None,
) -> FlopsPerToken:
    """FLOPs per token (FLOPs, not FLOP/s) of training or inference.

    - `cfg_or_params`: a ModelConfig, or a plain N (active matmul parameters). With a
      plain count the attention term is omitted (it needs L, H, Q), so FLOPs are a
      lower bound that is close for short sequences.
    - `seq_len`: tokens per sequence (train/prefill), or the context length a decoded
      token attends to, KV cache included (decode).
    - `mode`: "train" (forward + backward), "prefill" or "decode" (forward only).
    - `causal`: halve the attention term (train/prefill; no effect on decode).
    - `recompute`: activation recomputation, train only; changes `hardware_flops` only.
    - `params`: override N while keeping `cfg`'s attention dims.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if recompute not in RECOMPUTES:
        raise ValueError(f"recompute must be one of {', '.join(RECOMPUTES)}, got {recompute!r}")
    if mode != "train" and recompute != "none":
        raise ValueError("recompute only applies to mode='train' (inference keeps no activations)")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")

    if isinstance(cfg_or_params, ModelConfig):
        n = float(param_counts(cfg_or_params).active_matmul) if params is None else float(params)
        attn_forward = attention_flops_per_token(cfg_or_params, seq_len)
    else:
        if params is not None:
            raise ValueError("params= overrides a ModelConfig's N; pass the count directly")
        n = float(cfg_or_params)
        attn_forward = 0.0
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"the parameter count must be a positive number, got {n}")

    if causal and mode != "decode":
        attn_forward /= 2.0
    passes = 3.0 if mode == "train" else 1.0  # backward = 2 x forward
    dense = 2.0 * n * passes
    attention = attn_forward * passes
    model = dense + attention
    if recompute == "full":
        hardware = model + 2.0 * n + attn_forward
    elif recompute == "selective":
        hardware = model + attn_forward
    else:
        hardware = model
    return FlopsPerToken(
        model_flops=model, hardware_flops=hardware, dense_flops=dense, attention_flops=attention
    )


def _utilisation(achieved: float, peak: float | None, unit: str) -> float | None:
    """``achieved / peak`` (both in ``unit``); None where no peak is known (None, zero,
    negative or non-finite); a negative or non-finite ``achieved`` is a caller error."""
    if not math.isfinite(achieved) or achieved < 0:
        raise ValueError(f"achieved {unit} must be a finite non-negative number, got "
                         f"{achieved}")
    if peak is None or not math.isfinite(peak) or peak <= 0:
        return None
    return achieved / peak


def mfu_ratio(achieved_flops_per_s: float, peak_flops_per_s: float | None) -> float | None:
    """Model FLOP utilisation as a ratio (0.43, not 43%).

    None where no peak is known (None, zero, negative or non-finite peak): MFU is then
    undefined, never NaN. A negative or non-finite achieved rate is a caller error.
    """
    return _utilisation(achieved_flops_per_s, peak_flops_per_s, "FLOP/s")


# --------------------------------------------------------------------------- bytes

# Storage width of one element (weight or KV-cache entry) per precision, bytes.
BYTES_PER_ELEMENT: dict[str, float] = {"fp64": 8.0, "fp32": 4.0, "tf32": 4.0, "bf16": 2.0,
                                       "fp16": 2.0, "fp8": 1.0, "int8": 1.0}


@dataclass(frozen=True, kw_only=True)
class DecodeBytes:
    """Model bytes one decode step reads from GPU memory (the MBU numerator).

    Per step of a batch of `batch_size` sequences, each generating one token against a
    context of `context_len` tokens:

        weight_bytes   = weight_params x weight width          (read once per step)
        kv_cache_bytes = batch_size x context_len x kv_cache_bytes_per_context_token
        bytes_per_step = weight_bytes + kv_cache_bytes;  bytes_per_token = per step / batch
    """

    batch_size: int
    context_len: int
    weight_params: int
    weight_bytes: float
    kv_cache_bytes_per_context_token: float
    kv_cache_bytes: float
    bytes_per_step: float
    bytes_per_token: float


def kv_cache_bytes_per_token(cfg: ModelConfig, kv_bytes_per_element: float) -> float:
    """KV-cache bytes one cached token holds over all layers (bytes, per sequence).

    - MHA/GQA: num_key_value_heads x (head_dim + v_head_dim) x layers x width
      (= kv_heads x head_dim x 2 (K and V) x layers x width when v_head_dim = head_dim);
    - MLA (DeepSeek-V2/V3): one latent of kv_lora_rank + qk_rope_head_dim per layer.
    """
    if cfg.kv_lora_rank is not None:
        per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    else:
        per_layer = cfg.num_key_value_heads * (cfg.head_dim + cfg.v_head_dim)
    return float(per_layer * cfg.num_layers) * kv_bytes_per_element


def decode_bytes(cfg: ModelConfig, *, batch_size: int = 1, context_len: int,
                 precision: str = "bf16", kv_precision: str | None = None) -> DecodeBytes:
    """Bytes a decode step reads: active weights once per step + each sequence's KV cache.

    - Weights: `ParamCounts.active_matmul` parameters (attention, dense MLP or the
      router + shared + top-k routed experts of MoE layers, and the unembedding) at
      `precision`'s width. The input embedding is a lookup of `batch_size` rows, norms
      and biases are elementwise: all negligible, left out.
    - KV cache: `context_len` cached tokens per sequence (see
      :func:`kv_cache_bytes_per_token`), at `kv_precision`'s width (default `precision`).

    MoE: with batch_size > 1 different tokens route to different experts, so a step may
    read up to min(E, batch x top-k) experts per layer; this counts top-k (a lower bound).
    Activations and the new token's KV write are left out (small in decode).
    """
    for name, value in (("batch_size", batch_size), ("context_len", context_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    widths = []
    for name, p in (("precision", precision), ("kv_precision", kv_precision or precision)):
        if p not in BYTES_PER_ELEMENT:
            raise ValueError(f"{name} must be one of {', '.join(BYTES_PER_ELEMENT)}, got {p!r}")
        widths.append(BYTES_PER_ELEMENT[p])
    weight_width, kv_width = widths
    params = param_counts(cfg).active_matmul
    weight = float(params) * weight_width
    per_token = kv_cache_bytes_per_token(cfg, kv_width)
    kv = float(batch_size) * context_len * per_token
    step = weight + kv
    return DecodeBytes(batch_size=batch_size, context_len=context_len, weight_params=params,
                       weight_bytes=weight, kv_cache_bytes_per_context_token=per_token,
                       kv_cache_bytes=kv, bytes_per_step=step, bytes_per_token=step / batch_size)


def mbu_ratio(achieved_bytes_per_s: float, peak_bytes_per_s: float | None) -> float | None:
    """Model bandwidth utilisation (ratio): achieved model bytes/s / peak memory bytes/s;
    None where no peak is known."""
    return _utilisation(achieved_bytes_per_s, peak_bytes_per_s, "bytes/s")


# --------------------------------------------------------------------------- helpers


def _first(c: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if c.get(key) is not None:
            return c[key]
    return None


def _require(c: Mapping[str, Any], *keys: str) -> Any:
    value = _first(c, *keys)
    if value is None:
        alternatives = f" (or {', '.join(keys[1:])})" if len(keys) > 1 else ""
        raise ValueError(f"model config lacks {keys[0]!r}{alternatives}")
    return value


def _infer_gated(model_type: str, act: Any) -> bool:
    if model_type in _GATED_MODEL_TYPES:
        return True
    if model_type in _PLAIN_MODEL_TYPES:
        return False
    name = str(act or "").lower()
    if name in _GATED_ACTS:
        return True
    if name in _PLAIN_ACTS:
        return False
    raise ValueError(
        f"cannot tell whether the MLP is gated (model_type={model_type!r}, "
        f"hidden_act={act!r}); set hidden_act (silu -> gated, gelu/relu -> plain) "
        f"or 'gated_mlp': true/false in the config"
    )
