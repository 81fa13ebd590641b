"""models/configuration_llada.py: `LLaDAConfig` reads the official config, derives its values and
refuses the settings the model does not implement."""

from __future__ import annotations

import pytest
import torch
from llada_configs import MASK, PAD, expected_keys, official_config_dict

from credit_compile.models import (
    LLaDAConfig,
    LLaDAModelLM,
    build_model,
    get_config,
)


def test_mask_token_id_is_a_config_attribute():
    assert LLaDAConfig().mask_token_id == 126336
    assert get_config("tiny").mask_token_id == MASK


def test_official_config_dict_loads():
    d = official_config_dict()
    cfg = LLaDAConfig(**{k: v for k, v in d.items() if k != "model_type"})
    assert cfg.auto_map["AutoModel"] == "modeling_llada.LLaDAModelLM"
    assert cfg.architectures == ["LLaDAModelLM"]
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id) == (MASK, PAD, PAD)
    assert cfg.hidden_size == 32 and cfg.intermediate_size == 48 and not cfg.tie_word_embeddings
    model = LLaDAModelLM(cfg)
    assert set(model.state_dict()) == expected_keys(2, False)


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError):
        get_config("tiny", block_type="sequential")
    with pytest.raises(ValueError):
        get_config("tiny", rope=False)
    with pytest.raises(ValueError):
        get_config("tiny", activation_type="swiglu")


def test_derived_config_values():
    assert get_config("tiny", mlp_hidden_size=None, mlp_ratio=3).intermediate_size == 96
    block = build_model(get_config("tiny", mlp_hidden_size=None, mlp_ratio=3)).model.transformer.blocks[0]
    assert block.ff_proj.weight.shape == (96, 32)
    # include_qkv_bias: biases on the q/k/v projections only (include_bias: on every linear).
    block = build_model(get_config("tiny", include_qkv_bias=True)).model.transformer.blocks[0]
    assert all(getattr(block, n).bias is not None for n in ("q_proj", "k_proj", "v_proj"))
    assert all(getattr(block, n).bias is None for n in ("attn_out", "ff_proj", "up_proj", "ff_out"))
    # Multi-query attention: one key/value head unless n_kv_heads says otherwise (then it must agree).
    assert get_config("tiny", n_kv_heads=None, multi_query_attention=True).effective_n_kv_heads == 1
    assert get_config("tiny", n_kv_heads=None, multi_query_attention=False).effective_n_kv_heads == 4
    with pytest.raises(ValueError, match="multi_query_attention"):
        _ = get_config("tiny", n_kv_heads=2, multi_query_attention=True).effective_n_kv_heads
    # transformers' tie_word_embeddings is another name for weight_tying.
    assert LLaDAConfig(tie_word_embeddings=True).weight_tying is True
    assert LLaDAConfig(tie_word_embeddings=False, weight_tying=True).weight_tying is False
    # embedding_size rows of wte and logit columns, beyond vocab_size (padded vocabularies).
    wide = build_model(get_config("tiny", embedding_size=160))
    assert wide.model.transformer.wte.weight.shape == (160, 32)
    with torch.no_grad():
        assert wide(torch.zeros(1, 3, dtype=torch.long)).logits.shape == (1, 3, 160)
    moe = get_config("llada-moe-active")
    assert (moe.n_layers, moe.n_heads, moe.head_dim, moe.vocab_size, moe.rope_theta) == (
        16, 16, 128, 157184, 50000.0)
    assert (moe.max_sequence_length, moe.mask_token_id, moe.eos_token_id) == (8192, 156895, 156892)


@pytest.mark.parametrize("over", [
    dict(d_model=36, n_heads=8),             # not divisible by n_heads (head dim 4 even)
    dict(n_kv_heads=3),                      # n_heads not a multiple of n_kv_heads
    dict(d_model=12, n_heads=4),             # odd head dimension: no rotary pairs
    dict(embedding_size=100),                # fewer embedding rows than the vocabulary
    dict(layer_norm_type="rmsnorm"),
    dict(alibi=True),
    dict(block_group_size=2),
], ids=lambda over: next(iter(over)))
def test_more_unsupported_settings_are_refused(over):
    with pytest.raises(ValueError):
        get_config("tiny", **over)
