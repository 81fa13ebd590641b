"""models/modeling_lladamoe.py and configuration_lladamoe.py: the native LLaDA-MoE model against the
official modeling code, through the fixtures it recorded (tests/fixtures/lladamoe_tiny.*, written by
tests/fixtures/record_lladamoe.py: the official file, its commit and the transformers version are
in the JSON's `recorded_with`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import grouped_mm_runs_here
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from credit_compile.models import (
    LLADAMOE_PRESETS,
    LLaDAMoEConfig,
    LLaDAMoEModelLM,
    build_model,
    get_config,
)
from credit_compile.models.modeling_lladamoe import LLaDAMoESparseMoeBlock

FIXTURES = Path(__file__).parents[1] / "fixtures"
META = json.loads((FIXTURES / "lladamoe_tiny.json").read_text())
TENSORS = load_file(FIXTURES / "lladamoe_tiny.safetensors")
WEIGHTS = {k: v for k, v in TENSORS.items() if k.startswith(("model.", "lm_head."))}
MASK = META["mask_token_id"]


def tiny_config(**overrides) -> LLaDAMoEConfig:
    return LLaDAMoEConfig(**{**META["config"], "mask_token_id": MASK, **overrides})


def official_model() -> LLaDAMoEModelLM:
    """The recorded official weights in the native model."""
    model = LLaDAMoEModelLM(tiny_config()).eval()
    model.load_state_dict(WEIGHTS, strict=True)
    return model


def close(actual, expected, atol=1e-4):
    """float32 agreement: the logits reach about 60 here; recorded on another CPU, whose matmuls
    may sum in another order, hence 1e-4 rather than 1e-5."""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The official logits and layout
# ----------------------------------------------------------------------------------------------


def test_fixture_provenance_is_recorded():
    rec = META["recorded_with"]
    assert rec["official_source"] and rec["transformers"].startswith("4.")  # 5 cannot build it
    assert set(rec["official_sha256"]) == {"configuration_lladamoe.py", "modeling_lladamoe.py"}


def test_native_logits_equal_the_official_logits():
    """Without a mask, and with the recorded 2-D padding mask (row 1 left-padded by 3): at the
    official positions 0..L-1 every row, at the default positions (counted over real tokens) the
    real tokens' rows (RoPE sees only position differences)."""
    model = official_model()
    ids, mask = TENSORS["input_ids"], TENSORS["attention_mask"]
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        close(model(ids).logits, TENSORS["logits_full"])
        close(model(ids, attention_mask=torch.ones_like(ids)).logits, TENSORS["logits_full"])
        close(model(ids, attention_mask=mask, position_ids=positions).logits, TENSORS["logits_masked"])
        got = model(ids, attention_mask=mask).logits
    real = mask.bool()
    close(got[real], TENSORS["logits_masked"][real])
    bites = (TENSORS["logits_masked"][1, 3:] - TENSORS["logits_full"][1, 3:]).abs().max()
    assert bites > 1e-2  # the padding mask changes the padded row's logits


def test_a_padded_row_gets_the_logits_it_gets_alone():
    model = official_model()
    ids, mask = TENSORS["input_ids"], TENSORS["attention_mask"]
    with torch.no_grad():
        both = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, 3:]).logits
    torch.testing.assert_close(both[1, 3:], alone[0], atol=2e-5, rtol=1e-5)


def _layout_digest(model) -> tuple[int, str]:
    lines = sorted(f"{name}:{tuple(t.shape)}" for name, t in model.state_dict().items())
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_state_dict_names_and_shapes_equal_the_official_ones():
    """Name for name and shape for shape (the routers' expert_bias buffers included): the tiny
    model as recorded, and the recorded layouts of a plain variant and of LLaDA-MoE-7B-A1B's real
    config (built on the meta device)."""
    native = LLaDAMoEModelLM(tiny_config())
    assert {k: tuple(v.shape) for k, v in native.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in WEIGHTS.items()}
    assert set(META["state_dict_layouts"]) == {"tiny", "tiny_plain", "llada_moe_7b"}
    for name, layout in META["state_dict_layouts"].items():
        with torch.device("meta"):
            model = LLaDAMoEModelLM(LLaDAMoEConfig(**layout["config"]))
        assert _layout_digest(model) == (layout["entries"], layout["sha256"]), name
    seven_b = get_config("llada-moe-7b").to_dict()
    assert all(seven_b[k] == v for k, v in META["state_dict_layouts"]["llada_moe_7b"]["config"].items()
               if k != "pad_token_id")


def test_a_checkpoint_directory_loads_through_the_auto_classes(tmp_path):
    official_model().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "lladamoe"
    assert type(AutoConfig.from_pretrained(tmp_path)) is LLaDAMoEConfig
    for auto in (AutoModel, AutoModelForMaskedLM):
        loaded = auto.from_pretrained(tmp_path)
        assert type(loaded) is LLaDAMoEModelLM
    with torch.no_grad():
        close(loaded(TENSORS["input_ids"]).logits, TENSORS["logits_full"])


def test_the_released_config_naming_model_type_llada_loads_natively_and_not_as_llada(tmp_path):
    """The release's config.json says "model_type": "llada": LLaDAMoEModelLM loads it; the
    Auto classes, which take it for LLaDA, refuse it naming the fix."""
    official_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llada"}))
    loaded = LLaDAMoEModelLM.from_pretrained(tmp_path)
    with torch.no_grad():
        close(loaded(TENSORS["input_ids"]).logits, TENSORS["logits_full"])
    with pytest.raises(ValueError, match=r"LLaDAMoEModelLM\.from_pretrained"):
        AutoModel.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------
# The MoE layer: both formulations against a per-token loop
# ----------------------------------------------------------------------------------------------


def per_token_moe(block: LLaDAMoESparseMoeBlock, hidden: torch.Tensor) -> torch.Tensor:
    """The official routing token by token: softmax of the router, plus the expert bias, top-k,
    the weights not renormalised; each chosen expert's output times its weight."""
    out = torch.zeros_like(hidden)
    for n, h in enumerate(hidden):
        probs = F.softmax(block.gate(h).float(), dim=-1)
        if block.expert_bias is not None:
            probs = probs + block.expert_bias
        weights, experts = probs.topk(block.top_k)
        for w, e in zip(weights.tolist(), experts.tolist(), strict=True):
            out[n] += w * block.experts[e](h)
    return out


@pytest.mark.parametrize("formulation", ["dense", pytest.param("grouped", marks=pytest.mark.skipif(
    not grouped_mm_runs_here(), reason="this torch has no CPU torch._grouped_mm"))])
@settings(max_examples=10, deadline=None)
@given(experts=st.integers(2, 8), data=st.data(), bias=st.booleans(), tokens=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_both_moe_formulations_equal_the_per_token_loop(formulation, experts, data, bias, tokens,
                                                        seed):
    """LLaDA2's routed experts (`RoutedExperts`) under LLaDA-MoE's routing: every expert on every
    token, or sorted by expert and grouped; experts left without a token included."""
    top_k = data.draw(st.integers(1, experts))
    config = tiny_config(num_experts=experts, num_experts_per_tok=top_k,
                         moe_router_enable_expert_bias=bias)
    torch.manual_seed(seed)
    block = LLaDAMoESparseMoeBlock(config)
    block.formulation = formulation
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
        if bias:
            block.expert_bias.normal_(0, 0.1)
        hidden = torch.randn(2, tokens, config.hidden_size)
        got = block(hidden)
        want = per_token_moe(block, hidden.reshape(-1, config.hidden_size)).view_as(hidden)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Config: variants refused by name; the presets
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, match", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(moe_layer_freq=[1, 1]), "moe_layer_freq"),
    (dict(partial_rotary_factor=0.375), "partial_rotary_factor"),  # 3 of 8: odd
    (dict(hidden_act="nope"), "hidden_act"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(dense_intermediate_size=None), "dense_intermediate_size"),
])
def test_a_config_this_model_does_not_build_is_refused_by_name(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_keys_the_official_forward_ignores_are_kept_and_ignored():
    """The official block never renormalises and always takes a softmax, whatever these say."""
    model = official_model()
    other = LLaDAMoEModelLM(tiny_config(norm_topk_prob=True, moe_router_score_function="sigmoid",
                                        routed_scaling_factor=2.5)).eval()
    other.load_state_dict(WEIGHTS, strict=True)
    ids = TENSORS["input_ids"]
    with torch.no_grad():
        assert torch.equal(other(ids).logits, model(ids).logits)


def test_presets_build_and_hold_the_real_shapes():
    tiny = build_model("tiny-lladamoe")
    assert type(tiny) is LLaDAMoEModelLM and not tiny.training
    assert tiny.config.mask_token_id < tiny.config.vocab_size
    assert tiny.layers_alike()  # every layer a MoE: compile_layers_once applies
    c = get_config("llada-moe-7b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.head_dim) == (2048, 16, 16, 128)
    assert (c.num_experts, c.num_experts_per_tok, c.expert_intermediate_size) == (64, 8, 1024)
    assert (c.vocab_size, c.mask_token_id, c.eos_token_id) == (157184, 156895, 156892)
    assert set(LLADAMOE_PRESETS) == {"tiny-lladamoe", "llada-moe-7b"}
    with torch.device("meta"):
        total = sum(p.numel() for p in LLaDAMoEModelLM(c).parameters())
    assert 7.0e9 < total < 7.5e9  # "7B"


def test_the_forward_traces_as_one_graph():
    """fullgraph: no graph break, no data-dependent routing (the MoE's top-k feeds a scatter)."""
    model = build_model("tiny-lladamoe")
    ids = torch.randint(0, 120, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, attention_mask=mask).logits,
                                   model(ids, attention_mask=mask).logits)


def test_a_cached_forward_of_unchanged_tokens_equals_the_uncached_one():
    """The approximate cache is exact while the rest of the sequence has not changed: a block's
    cached forward after the refresh gives the uncached logits there."""
    model = build_model(get_config("tiny-lladamoe", initializer_range=0.5), seed=1)
    ids = torch.randint(0, 120, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    cache = tuple(torch.zeros(model.kv_cache_shape(2, 10)) for _ in range(2))
    block = torch.arange(6, 10)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, kv_cache=cache).logits
        torch.testing.assert_close(full, model(ids, attention_mask=mask).logits)
        cached = model(ids[:, block], attention_mask=mask, kv_cache=cache, cache_positions=block).logits
    torch.testing.assert_close(cached, full[:, block], atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="kv_cache_shape"):
        model(ids, kv_cache=tuple(torch.zeros(1, 2, 2, 10, 8) for _ in range(2)))
