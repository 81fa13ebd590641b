"""Named LLaDA configurations and a helper that builds randomly initialised models.

Presets (all use the LLaDA-8B architecture: llama block, RMSNorm, SiLU-gated MLP, RoPE,
bidirectional attention, untied LM head):

- ``tiny``: seconds on CPU. vocab_size = embedding_size = 128: ids 0..124 are ordinary tokens,
  125 is EOS (and padding, as LLaDA pads with EOS), 126 is ``[MASK]``, 127 is an unused spare row.
  d_model 32, 2 layers, 4 heads of 8, MLP 64.
- ``tiny-gqa``: ``tiny`` with grouped-query attention (4 query heads, 2 key/value heads).
- ``llada-8b``: the shapes of GSAI-ML/LLaDA-8B-Instruct (and -Base) ``config.json``: d_model 4096,
  32 layers, 32 heads (n_kv_heads 32), MLP 12288, vocab 126464 (= embedding_size), rope_theta 5e5,
  max_sequence_length 4096, rms_norm_eps 1e-5, weight_tying False, mask 126336, EOS/pad 126081.
- ``llada-moe-active``: a *dense* stand-in with the per-token active shapes of
  inclusionAI/LLaDA-MoE-7B-A1B: d_model 2048, 16 layers, 16 heads of 128, vocab 157184,
  rope_theta 50000, max_sequence_length 8192, mask 156895, EOS/pad 156892. Its MoE layers route
  each token to 8 of 64 experts of width 1024; here they are one dense gated MLP of width
  8 x 1024 = 8192, so the FLOPs and weight bytes touched per token match the active experts.
  Approximations: no router (a 2048 x 64 linear per layer) and no gather/scatter cost; the
  checkpoint's QK-norm (per-layer RMSNorm on queries and keys) is left out (attention_layer_norm
  False); the real MoE vocabulary/rope values are taken from its published config and model card.
  It cannot load LLaDA-MoE weights: it is a benchmarking shape only.

LLaDA2.x presets (`LLADA2_PRESETS`, `LLaDA2Config` / `LLaDA2ModelLM`: Bailing-MoE-v2, block
diffusion). `get_config` and `build_model` take their names too; `available_presets()` and
`PRESETS` list LLaDA's, whose models every decoding mode of the benchmarks runs (LLaDA2 decodes
with its block cache or none, docs/llada2.md):

- ``tiny-llada2``: seconds on CPU, every LLaDA2 feature: vocab_size 128 (ids 0..124 ordinary,
  125 EOS and padding, 126 ``<|mask|>``, 127 spare), hidden 32, 2 layers (layer 0 dense, MLP 64;
  layer 1 MoE: 8 experts of width 16 in 4 groups, 2 groups then top-2 per token, one shared
  expert, routed_scaling_factor 2.5), 4 query heads and 2 key/value heads of 8, QK norm, RoPE on
  half of each head (theta 10000).
- ``llada2-mini``: the shapes of inclusionAI/LLaDA2.0-mini's ``config.json`` (16B total, about
  1.4B active): hidden 2048, 20 layers (the first dense, MLP 5120), 16 heads and 4 key/value
  heads of 128, QK norm, RoPE on 64 of 128 dims (theta 6e5), 256 experts of width 512 in 8
  groups (4 chosen, top-8), one shared expert, vocab 157184, mask 156895, EOS/pad 156892. For
  benchmarks with random bf16 weights (about 32 GB); never built in the tests.

LLaDA-MoE presets (`LLADAMOE_PRESETS`, `LLaDAMoEConfig` / `LLaDAMoEModelLM`), listed apart as
LLaDA2's (`get_config` and `build_model` take their names); `optimize()` decodes them with every
mode LLaDA has:

- ``tiny-lladamoe``: seconds on CPU: vocab_size 128 (ids 0..124 ordinary, 125 EOS and padding,
  126 ``<|mask|>``, 127 spare), hidden 32, 2 MoE layers (8 experts of width 16, top-2, expert
  bias, a shared expert of 16), 4 query heads and 2 key/value heads of 8, QK norm, RoPE on half
  of each head (theta 10000).
- ``llada-moe-7b``: the shapes of inclusionAI/LLaDA-MoE-7B-A1B (7B total, about 1.4B active):
  hidden 2048, 16 MoE layers of 64 experts of width 1024 (top-8, softmax router), 16 heads of 128,
  QK norm, RoPE theta 50000, vocab 157184, mask 156895, EOS/pad 156892. For benchmarks with
  random bf16 weights (about 15 GB); never built in the tests.

Dream presets (`DREAM_PRESETS`, `DreamConfig` / `DreamModel`: Qwen2 with bidirectional attention
and logits shifted by one, docs/dream.md), listed apart as LLaDA2's are; `get_config` and
`build_model` take their names too:

- ``tiny-dream``: seconds on CPU: vocab_size 128 (ids 0..124 ordinary, 125 EOS and padding, 126
  the mask, 127 spare), hidden 32, 2 layers, 4 query heads and 2 key/value heads of 8 (q/k/v
  biases, as Qwen2), MLP 64, RoPE theta 10000.
- ``dream-7b``: the shapes of Dream-org/Dream-v0-Instruct-7B's ``config.json`` (Qwen2.5-7B's):
  hidden 3584, 28 layers, 28 heads and 4 key/value heads of 128, MLP 18944, vocab 152064, RoPE
  theta 1e6, mask 151666, EOS/pad/BOS 151643. For benchmarks with random bf16 weights (about
  15 GB); never built in the tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .configuration_dream import DreamConfig
from .configuration_llada import LLaDAConfig
from .configuration_llada2 import LLaDA2Config
from .configuration_lladamoe import LLaDAMoEConfig
from .modeling_dream import DreamModel
from .modeling_llada import LLaDAModelLM
from .modeling_llada2 import LLaDA2ModelLM
from .modeling_lladamoe import LLaDAMoEModelLM

__all__ = ["PRESETS", "LLADA2_PRESETS", "LLADAMOE_PRESETS", "DREAM_PRESETS", "available_presets",
           "get_config", "build_model"]

_COMMON: dict[str, Any] = {
    "block_type": "llama",
    "activation_type": "silu",
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "bias_for_layer_norm": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "rope": True,
    "rope_full_precision": True,
    "rms_norm_eps": 1e-5,
    "weight_tying": False,
    "scale_logits": False,
    "input_emb_norm": False,
    "attention_layer_norm": False,
    "init_std": 0.02,
    "architectures": ["LLaDAModelLM"],
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **_COMMON,
        "d_model": 32,
        "n_heads": 4,
        "n_kv_heads": 4,
        "n_layers": 2,
        "mlp_hidden_size": 64,
        "mlp_ratio": 2,
        "vocab_size": 128,
        "embedding_size": 128,
        "max_sequence_length": 512,
        "rope_theta": 10000.0,
        "mask_token_id": 126,
        "eos_token_id": 125,
        "pad_token_id": 125,
    },
    "tiny-gqa": {
        **_COMMON,
        "d_model": 32,
        "n_heads": 4,
        "n_kv_heads": 2,
        "n_layers": 2,
        "mlp_hidden_size": 64,
        "mlp_ratio": 2,
        "vocab_size": 128,
        "embedding_size": 128,
        "max_sequence_length": 512,
        "rope_theta": 10000.0,
        "mask_token_id": 126,
        "eos_token_id": 125,
        "pad_token_id": 125,
    },
    "llada-8b": {
        **_COMMON,
        "d_model": 4096,
        "n_heads": 32,
        "n_kv_heads": 32,
        "n_layers": 32,
        "mlp_hidden_size": 12288,
        "mlp_ratio": 4,
        "vocab_size": 126464,
        "embedding_size": 126464,
        "max_sequence_length": 4096,
        "rope_theta": 500000.0,
        "mask_token_id": 126336,
        "eos_token_id": 126081,
        "pad_token_id": 126081,
    },
    "llada-moe-active": {
        **_COMMON,
        "d_model": 2048,
        "n_heads": 16,
        "n_kv_heads": 16,
        "n_layers": 16,
        "mlp_hidden_size": 8192,
        "mlp_ratio": 4,
        "vocab_size": 157184,
        "embedding_size": 157184,
        "max_sequence_length": 8192,
        "rope_theta": 50000.0,
        "mask_token_id": 156895,
        "eos_token_id": 156892,
        "pad_token_id": 156892,
    },
}


_LLADA2_TINY: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_qk_norm": True,
    "use_bias": False,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.5,
    "num_experts": 8,
    "num_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 4,
    "topk_group": 2,
    "routed_scaling_factor": 2.5,
    "moe_intermediate_size": 16,
    "first_k_dense_replace": 1,
    "mask_token_id": 126,
    "eos_token_id": 125,
    "pad_token_id": 125,
    "initializer_range": 0.02,
    "architectures": ["LLaDA2MoeModelLM"],
}

LLADA2_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llada2": _LLADA2_TINY,
    "llada2-mini": {
        "vocab_size": 157184,
        "hidden_size": 2048,
        "intermediate_size": 5120,
        "num_hidden_layers": 20,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_qk_norm": True,
        "use_bias": False,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
        "rope_theta": 600000.0,
        "partial_rotary_factor": 0.5,
        "num_experts": 256,
        "num_shared_experts": 1,
        "num_experts_per_tok": 8,
        "n_group": 8,
        "topk_group": 4,
        "routed_scaling_factor": 2.5,
        "moe_intermediate_size": 512,
        "first_k_dense_replace": 1,
        "mask_token_id": 156895,
        "eos_token_id": 156892,
        "pad_token_id": 156892,
        "initializer_range": 0.02,
        "architectures": ["LLaDA2MoeModelLM"],
    },
}


LLADAMOE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-lladamoe": {
        "vocab_size": 128,
        "hidden_size": 32,
        "dense_intermediate_size": 64,
        "expert_intermediate_size": 16,
        "shared_expert_intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "qk_layernorm": True,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_layer_freq": [1, 1],
        "moe_router_enable_expert_bias": True,
        "mask_token_id": 126,
        "eos_token_id": 125,
        "pad_token_id": 125,
        "initializer_range": 0.02,
        "architectures": ["LLaDAMoEModelLM"],
    },
    "llada-moe-7b": {
        "vocab_size": 157184,
        "hidden_size": 2048,
        "dense_intermediate_size": 8192,
        "expert_intermediate_size": 1024,
        "shared_expert_intermediate_size": None,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 50000.0,
        "partial_rotary_factor": 1.0,
        "qk_layernorm": True,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "moe_layer_freq": [1] * 16,
        "moe_router_enable_expert_bias": False,
        "mask_token_id": 156895,
        "eos_token_id": 156892,
        "pad_token_id": 156892,
        "initializer_range": 0.02,
        "architectures": ["LLaDAMoEModelLM"],
    },
}

_DREAM_COMMON: dict[str, Any] = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "initializer_range": 0.02,
    "architectures": ["DreamModel"],
}

DREAM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-dream": {
        **_DREAM_COMMON,
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "mask_token_id": 126,
        "eos_token_id": 125,
        "pad_token_id": 125,
    },
    "dream-7b": {
        **_DREAM_COMMON,
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 131072,
        "rope_theta": 1000000.0,
        "mask_token_id": 151666,
        "eos_token_id": 151643,
        "pad_token_id": 151643,
        "bos_token_id": 151643,
    },
}

_Config = LLaDAConfig | LLaDA2Config | LLaDAMoEConfig | DreamConfig


def available_presets() -> list[str]:
    """LLaDA's presets (the ones `optimize()` decodes); LLaDA2's are `LLADA2_PRESETS`."""
    return sorted(PRESETS)


def get_config(name: str, **overrides: Any) -> _Config:
    """The named preset as an `LLaDAConfig` (or, for a LLaDA2, LLaDA-MoE or Dream preset, an
    `LLaDA2Config`, `LLaDAMoEConfig` or `DreamConfig`); keyword arguments override its fields."""
    for presets, config_cls in ((LLADA2_PRESETS, LLaDA2Config), (LLADAMOE_PRESETS, LLaDAMoEConfig),
                                (DREAM_PRESETS, DreamConfig)):
        if name in presets:
            return config_cls(**{**presets[name], **overrides})
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {available_presets()} "
                       f"(LLaDA2: {sorted(LLADA2_PRESETS)}; LLaDA-MoE: {sorted(LLADAMOE_PRESETS)}; "
                       f"Dream: {sorted(DREAM_PRESETS)})")
    return LLaDAConfig(**{**PRESETS[name], **overrides})


def _as_config(preset_or_config: str | dict | _Config) -> _Config:
    if isinstance(preset_or_config, (LLaDAConfig, LLaDA2Config, LLaDAMoEConfig, DreamConfig)):
        return preset_or_config
    if isinstance(preset_or_config, str):
        return get_config(preset_or_config)
    if isinstance(preset_or_config, dict):
        return LLaDAConfig(**preset_or_config)
    raise TypeError(f"expected a preset name, a config dict, an LLaDAConfig, an LLaDA2Config or a "
                    f"DreamConfig, got {type(preset_or_config)}")


def build_model(
    preset_or_config: str | dict | _Config = "tiny",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LLaDAModelLM | LLaDA2ModelLM | LLaDAMoEModelLM | DreamModel:
    """A randomly initialised `LLaDAModelLM` (or `LLaDA2ModelLM`, `LLaDAMoEModelLM`, `DreamModel`
    for their configs) in eval mode.

    Weights: every linear/embedding weight ~ N(0, init_std) (0.02 in the presets; LLaDA2 and
    Dream: ``initializer_range``), the LLaDA2 routers' weights too, biases 0, norm weights 1, the LLaDA2
    routers' ``expert_bias`` buffers 0. The model is built on the meta device and materialised
    directly on ``device`` in ``dtype`` (no float32 copy of an 8B model on the host).
    Deterministic for a given ``(config, seed, device type, dtype)``: parameters are drawn in name
    order from one generator seeded with ``seed``. Dream's RoPE table is computed, not drawn.
    """
    config = _as_config(preset_or_config)
    device = torch.device(device)
    model_cls = {LLaDA2Config: LLaDA2ModelLM, LLaDAMoEConfig: LLaDAMoEModelLM,
                 DreamConfig: DreamModel}.get(type(config), LLaDAModelLM)
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    if model_cls is not LLaDAModelLM and config.tie_word_embeddings:  # to_empty makes new tensors
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    std = float(config.init_std if model_cls is LLaDAModelLM else config.initializer_range)
    with torch.no_grad():
        for _, buffer in model.named_buffers():  # to_empty leaves them uninitialised
            buffer.zero_()
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=generator)
    if model_cls is DreamModel:  # RoPE's inverse frequencies, a float32 buffer of Qwen2's rotary embedding
        with torch.device(device):
            model.model.rotary_emb = type(model.model.rotary_emb)(config)
    return model.eval()
