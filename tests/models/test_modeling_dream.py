"""models/modeling_dream.py and configuration_dream.py: Dream on transformers' Qwen2 against the
official modeling code, through the fixtures it recorded (tests/fixtures/dream_tiny.*, written by
tests/fixtures/record_dream.py: the official files, their commits and the transformers version
are in the JSON's `recorded_with`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
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
