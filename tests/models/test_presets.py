"""models/presets.py: the named configurations and `build_model`."""

from __future__ import annotations

import pytest
import torch

from credit_compile.models import (
    PRESETS,
    build_model,
    get_config,
)


def test_build_model_is_deterministic_and_in_eval_mode():
    a, b, c = build_model("tiny", seed=3), build_model("tiny", seed=3), build_model("tiny", seed=4)
    assert not a.training
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    key = "model.transformer.wte.weight"
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    assert build_model("tiny", dtype=torch.bfloat16).lm_head_weight.dtype == torch.bfloat16


def test_presets():
    c = get_config("llada-8b")
    assert (c.d_model, c.n_layers, c.n_heads, c.effective_n_kv_heads) == (4096, 32, 32, 32)
    assert (c.mlp_hidden_size, c.vocab_size, c.embedding_size) == (12288, 126464, 126464)
    assert (c.rope_theta, c.max_sequence_length, c.rms_norm_eps) == (500000.0, 4096, 1e-5)
    assert (c.weight_tying, c.mask_token_id, c.eos_token_id) == (False, 126336, 126081)
    moe = get_config("llada-moe-active")
    assert moe.d_model == 2048 and moe.intermediate_size == 8 * 1024
    tiny = get_config("tiny")
    assert tiny.mask_token_id < tiny.vocab_size and tiny.eos_token_id < tiny.vocab_size
    assert get_config("tiny-gqa").effective_n_kv_heads < get_config("tiny-gqa").n_heads
    assert set(PRESETS) >= {"tiny", "tiny-gqa", "llada-8b", "llada-moe-active"}
    with pytest.raises(KeyError):
        get_config("nope")


def test_build_model_init_matches_its_docstring():
    model = build_model(get_config("tiny", include_bias=True, bias_for_layer_norm=True,
                                   attention_layer_norm=True, init_std=0.1))
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert 0.08 < p.std().item() < 0.12, (name, p.std().item())
    # A config dict is accepted as well as a preset name or an LLaDAConfig.
    as_dict = build_model(dict(PRESETS["tiny"]), seed=5)
    assert all(torch.equal(a, b) for a, b in zip(as_dict.state_dict().values(),
                                                 build_model("tiny", seed=5).state_dict().values(),
                                                 strict=True))
    with pytest.raises(TypeError):
        build_model(42)


@pytest.mark.parametrize(("preset", "tie"), [
    ("tiny", {"weight_tying": True}), ("tiny-llada2", {"tie_word_embeddings": True}),
    ("tiny-lladamoe", {"tie_word_embeddings": True}), ("tiny-dream", {"tie_word_embeddings": True}),
])
def test_a_tied_config_builds_a_model_whose_head_is_its_embedding(preset, tie):
    tied, untied = build_model(get_config(preset, **tie)), build_model(preset)
    head = tied.get_output_embeddings()
    assert head is None or head.weight is tied.get_input_embeddings().weight
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
