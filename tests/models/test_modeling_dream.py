"""models/modeling_dream.py and configuration_dream.py: Dream on transformers' Qwen2 against the
official modeling code, through the fixtures it recorded (tests/fixtures/dream_tiny.*, written by
tests/fixtures/record_dream.py: the official files, their commits and the transformers version
are in the JSON's `recorded_with`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Qwen2ForCausalLM

from credit_compile.models import (
    DREAM_MASK_TOKEN_ID,
    DREAM_PRESETS,
    DreamConfig,
    DreamModel,
    available_presets,
    build_model,
    get_config,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
META = json.loads((FIXTURES / "dream_tiny.json").read_text())
TENSORS = load_file(FIXTURES / "dream_tiny.safetensors")
WEIGHTS = {k: v for k, v in TENSORS.items() if k.startswith(("model.", "lm_head."))}
PAD = META["pad"]


def official_model() -> DreamModel:
    """The recorded official weights in the native model."""
    model = DreamModel(DreamConfig(**META["config"])).eval()
    model.load_state_dict(WEIGHTS, strict=True)
    return model


def close(actual, expected):
    """Recorded on another CPU: float32 matmuls may sum in another order (about 1e-5 apart)."""
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-5)


def test_fixture_provenance_is_recorded():
    rec = META["recorded_with"]
    assert rec["transformers"].startswith("4.")  # 5 cannot build the official model
    for side in ("official", "fast_dllm"):
        assert rec[side]["source"]
        assert set(rec[side]["sha256"]) == {"configuration_dream.py", "modeling_dream.py",
                                            "generation_utils.py"}


def test_native_logits_equal_the_official_logits():
    """Unshifted, as the official forward returns them: with no mask, and for a left-padded row
    with a 2-D mask (positions counted over real tokens by default, as the official generation
    code passes them) at its real positions; the unpadded row is untouched by the mask."""
    model = official_model()
    ids, mask = TENSORS["input_ids"], TENSORS["attention_mask"]
    with torch.no_grad():
        close(model(ids).logits, TENSORS["logits_full"])
        padded = model(ids, attention_mask=mask).logits
        close(padded[0], TENSORS["logits_padded"][0])
        close(padded[1, PAD:], TENSORS["logits_padded"][1, PAD:])
        assert padded.isfinite().all()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        close(model(ids, attention_mask=mask, position_ids=positions).logits[1, PAD:],
              TENSORS["logits_padded"][1, PAD:])
        # The padded row's real tokens alone: the same logits.
        close(model(ids[1:, PAD:]).logits[0], TENSORS["logits_padded"][1, PAD:])


def test_eager_attention_reads_the_padding_mask_as_sdpa_does():
    """transformers' "eager" attention adds its mask: the padding mask is given to it additive."""
    model = DreamModel(DreamConfig(**META["config"], attn_implementation="eager")).eval()
    model.load_state_dict(WEIGHTS)
    assert model.config._attn_implementation == "eager"
    ids, mask = TENSORS["input_ids"], TENSORS["attention_mask"]
    with torch.no_grad():
        close(model(ids, attention_mask=mask).logits[1, PAD:], TENSORS["logits_padded"][1, PAD:])
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        model(ids, attention_mask=mask)


def test_it_is_qwen2_with_the_official_parameter_names():
    """The in-tree Qwen2, its every layer bidirectional; the official state dict loads name for
    name (strict) into it."""
    model = official_model()
    assert isinstance(model, Qwen2ForCausalLM)
    assert not any(layer.self_attn.is_causal for layer in model.model.layers)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in WEIGHTS.items()}


def test_attention_is_bidirectional():
    """The last token changes the first position's logits (a causal model's would not)."""
    model = official_model()
    ids = TENSORS["input_ids"][:1].clone()
    with torch.no_grad():
        before = model(ids).logits[0, 0]
        ids[0, -1] = 11
        assert not torch.allclose(model(ids).logits[0, 0], before)


def official_config_json(**over) -> dict:
    """A config.json laid out as Dream-v0-Instruct-7B's (its keys, remote-code auto_map), tiny."""
    d = {"architectures": ["DreamModel"],
         "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                      "AutoModel": "modeling_dream.DreamModel"},
         "model_type": "Dream", "torch_dtype": "float32", "transformers_version": "4.46.2",
         **META["config"]}
    d.update(over)
    return d


def test_an_official_checkpoint_directory_loads_through_the_auto_classes(tmp_path):
    """config.json with the remote-code auto_map, model.safetensors under the official names, no
    modeling file: the Auto classes give the native model without trust_remote_code."""
    (tmp_path / "config.json").write_text(json.dumps(official_config_json(), indent=1))
    save_file(WEIGHTS, tmp_path / "model.safetensors", metadata={"format": "pt"})
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, DreamConfig) and cfg.mask_token_id == META["mask_token_id"]
    with torch.no_grad():
        for loader in (AutoModel, AutoModelForCausalLM, DreamModel):
            model = loader.from_pretrained(tmp_path)
            assert type(model) is DreamModel and not model.training
            assert not any(layer.self_attn.is_causal for layer in model.model.layers)
            close(model(TENSORS["input_ids"]).logits, TENSORS["logits_full"])


def test_config_defaults_are_the_official_ones():
    cfg = DreamConfig()
    assert (cfg.mask_token_id, cfg.pad_token_id, cfg.use_cache) == (DREAM_MASK_TOKEN_ID, 151643, False)
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}


@pytest.mark.parametrize("key,value", [
    ("use_sliding_window", True), ("rope_scaling", {"rope_type": "yarn", "factor": 4.0})])
def test_unbuilt_variants_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        DreamConfig(**{**META["config"], key: value})


def test_bad_masks_the_autoregressive_cache_and_generate_are_refused():
    model = official_model()
    ids = TENSORS["input_ids"]
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(ids, attention_mask=torch.ones(2, 1, 12))
    with pytest.raises(ValueError, match="use_cache"):
        model(ids, use_cache=True)
    with pytest.raises(ValueError, match=r"credit_compile.optimize\(model\)"):
        model.generate(ids)  # transformers' autoregressive decoding


def test_the_forward_compiles_as_one_graph():
    """fullgraph=True, with and without a padding mask; the compiled logits are the eager ones."""
    model = official_model()
    ids, mask = TENSORS["input_ids"], TENSORS["attention_mask"]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        close(compiled(ids).logits, TENSORS["logits_full"])
        close(compiled(ids, attention_mask=mask).logits[1, PAD:], TENSORS["logits_padded"][1, PAD:])


def test_dream_presets():
    """tiny-dream builds (ones in the norms, zero biases, RoPE's table computed); dream-7b has
    Dream-v0-7B's shapes (never built here). Neither is offered where LLaDA's are listed."""
    model = build_model("tiny-dream", seed=1)
    assert type(model) is DreamModel and not model.training
    assert torch.equal(model.model.rotary_emb.inv_freq, 1.0 / 10000.0 ** (torch.arange(0, 8, 2) / 8))
    assert all(torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters()
               if n.endswith(".bias"))
    assert torch.equal(build_model("tiny-dream", seed=1).lm_head.weight, model.lm_head.weight)
    with torch.no_grad():
        assert model(torch.randint(0, 125, (2, 8))).logits.isfinite().all()
    big = get_config("dream-7b")
    assert (big.hidden_size, big.num_hidden_layers, big.num_attention_heads, big.num_key_value_heads,
            big.intermediate_size, big.vocab_size, big.mask_token_id, big.eos_token_id) == \
        (3584, 28, 28, 4, 18944, 152064, 151666, 151643)
    assert big.rope_parameters["rope_theta"] == 1e6
    assert not set(DREAM_PRESETS) & set(available_presets())


def empty_cache(model, batch, length):
    # NaN-filled: a read of anything the forward did not write shows in its output.
    shape = model.kv_cache_shape(batch, length)
    return torch.full(shape, float("nan")), torch.full(shape, float("nan"))


def tokens(batch, length, seed, pad=0):
    """Random tokens (in both models' vocabularies); with `pad`, the last row left-padded by that
    many."""
    ids = torch.randint(0, 60, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[-1, :pad] = 0
    return ids, (mask if pad else None)


@pytest.mark.parametrize("pad", [0, 3])
@torch.no_grad()
def test_refresh_returns_the_plain_logits_and_fills_the_cache(pad):
    model = official_model()
    ids, mask = tokens(2, 12, seed=1, pad=pad)
    keys, values = empty_cache(model, 2, 12)
    assert model.kv_cache_shape(2, 12) == (2, 2, 2, 12, 8)  # layers, batch, kv heads, T, head_dim
    refreshed = model(ids, mask, kv_cache=(keys, values)).logits
    torch.testing.assert_close(refreshed, model(ids, mask).logits, atol=1e-6, rtol=1e-6)
    assert not keys.isnan().any() and not values.isnan().any()


@settings(max_examples=10, deadline=None)
@given(start=st.integers(0, 15), length=st.integers(1, 6), pad=st.integers(0, 5),
       seed=st.integers(0, 2**16))
@torch.no_grad()
def test_cached_forward_of_an_unchanged_sequence_equals_the_plain_one(start, length, pad, seed):
    """Nothing is stale: the kept keys and values are the sequence's own (padded queries too)."""
    model = build_model(get_config("tiny-dream", initializer_range=0.5), seed=seed % 5)
    ids, mask = tokens(2, 20, seed=seed, pad=pad)
    cache = empty_cache(model, 2, 20)
    plain = model(ids, mask, kv_cache=cache).logits
    positions = torch.arange(start, min(start + length, 20))
    cached = model(ids[:, positions], mask, kv_cache=cache, cache_positions=positions).logits
    scale = plain.abs().max().item()
    torch.testing.assert_close(cached, plain[:, positions], atol=2e-5 * scale, rtol=0)


@pytest.mark.parametrize("span", ["block", "generated"])
@torch.no_grad()
def test_a_cached_forward_sees_the_rest_as_the_refresh_left_it(span):
    """The oracle: a plain forward of the changed sequence whose key and value projections
    outside the recomputed span are, in every layer, the refresh's. A cache that kept a row it
    should recompute, or recomputed one it should keep, differs from it."""
    model = build_model(get_config("tiny-dream", initializer_range=0.5), seed=5)
    ids, mask = tokens(2, 20, seed=8, pad=3)
    recomputed = torch.arange(8, 12) if span == "block" else torch.arange(8, 20)
    changed = ids.clone()
    changed[:, 8:12] = torch.randint(0, 60, (2, 4), generator=torch.Generator().manual_seed(9))
    kept = torch.ones(20, dtype=torch.bool)
    kept[recomputed] = False

    projections, handles = {}, []
    for layer, block in enumerate(model.model.layers):
        for name in ("k_proj", "v_proj"):
            def hook(module, args, output, key=(layer, name)):
                if key not in projections:  # the refresh: record
                    projections[key] = output
                    return output
                return torch.where(kept[None, :, None], projections[key], output)
            handles.append(getattr(block.self_attn, name).register_forward_hook(hook))
    cache = empty_cache(model, 2, 20)
    model(ids, mask, kv_cache=cache)
    oracle = model(changed, mask).logits[:, recomputed]
    for handle in handles:
        handle.remove()

    cached = model(changed[:, recomputed], mask, kv_cache=cache,
                   cache_positions=recomputed).logits
    scale = oracle.abs().max().item()
    torch.testing.assert_close(cached, oracle, atol=2e-5 * scale, rtol=0)
    exact = model(changed, mask).logits[:, recomputed]
    assert (exact - oracle).abs().max() > 1e-2 * scale  # the test sees stale rows


@torch.no_grad()
def test_a_cache_that_would_decode_wrong_logits_is_refused():
    """LLaDA's checks (shape, dtype, one tensor for both, the whole sequence's mask), and what
    only Dream's forward takes (a 4-D mask, transformers' extra arguments) refused by name."""
    model = official_model()
    ids, mask = tokens(2, 10, seed=1, pad=2)
    block = torch.arange(6, 10)
    with pytest.raises(ValueError, match=r"kv_cache keys of shape .*model.kv_cache_shape"):
        model(ids, kv_cache=empty_cache(model, 1, 10))
    with pytest.raises(ValueError, match=r"cache_positions without kv_cache"):
        model(ids[:, block], cache_positions=block)
    one = torch.zeros(model.kv_cache_shape(2, 10))
    with pytest.raises(ValueError, match=r"share their memory"):
        model(ids, mask, kv_cache=(one, one))
    cache = empty_cache(model, 2, 10)
    model(ids, mask, kv_cache=cache)
    with pytest.raises(ValueError, match=r"give the whole sequence's \[B, T\] = \(2, 10\) mask"):
        model(ids[:, block], mask[:, block], kv_cache=cache, cache_positions=block)
    with pytest.raises(ValueError, match=r"2-D \[batch, length\] padding mask"):
        model(ids, torch.ones(2, 1, 10, 10, dtype=torch.bool), kv_cache=cache)
    with pytest.raises(TypeError, match="output_hidden_states"):
        model(ids, mask, kv_cache=cache, output_hidden_states=True)

