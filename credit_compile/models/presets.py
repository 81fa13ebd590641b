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
"""

from __future__ import annotations

from typing import Any

import torch

from .configuration_llada import LLaDAConfig
from .modeling_llada import LLaDAModelLM

__all__ = ["PRESETS", "available_presets", "get_config", "build_model"]

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


def available_presets() -> list[str]:
    return sorted(PRESETS)


def get_config(name: str, **overrides: Any) -> LLaDAConfig:
    """The named preset as an `LLaDAConfig`; keyword arguments override its fields."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {available_presets()}")
    return LLaDAConfig(**{**PRESETS[name], **overrides})


def _as_config(preset_or_config: str | dict | LLaDAConfig) -> LLaDAConfig:
    if isinstance(preset_or_config, LLaDAConfig):
        return preset_or_config
    if isinstance(preset_or_config, str):
        return get_config(preset_or_config)
    if isinstance(preset_or_config, dict):
        return LLaDAConfig(**preset_or_config)
    raise TypeError(f"expected a preset name, a config dict or an LLaDAConfig, got {type(preset_or_config)}")


def build_model(
    preset_or_config: str | dict | LLaDAConfig = "tiny",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LLaDAModelLM:
    """A randomly initialised `LLaDAModelLM` in eval mode.

    Weights: every linear/embedding weight ~ N(0, init_std) (0.02 in the presets), biases 0, norm
    weights 1. The model is built on the meta device and materialised directly on ``device`` in
    ``dtype`` (no float32 copy of an 8B model on the host). Deterministic for a given
    ``(config, seed, device type, dtype)``: parameters are drawn in name order from one
    generator seeded with ``seed``.
    """
    config = _as_config(preset_or_config)
    device = torch.device(device)
    with torch.device("meta"):
        model = LLaDAModelLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    std = float(config.init_std)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=generator)
    return model.eval()
