"""credit_compile.models: checkpoint layout, numerics against a hand-written reference, padding,
save/load through the transformers Auto classes, and torch.compile without graph breaks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from credit_compile.models import (
    PRESETS,
    LLaDAConfig,
    LLaDAModelLM,
    build_model,
    get_config,
    register_auto_classes,
)

PAD, MASK = 125, 126


def _expected_keys(n_layers: int, weight_tying: bool) -> set[str]:
    keys = {"model.transformer.wte.weight", "model.transformer.ln_f.weight"}
    if not weight_tying:
        keys.add("model.transformer.ff_out.weight")
    for i in range(n_layers):
        for name in ("attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj",
                     "up_proj", "ff_out"):
            keys.add(f"model.transformer.blocks.{i}.{name}.weight")
    return keys


def _randomize(model: LLaDAModelLM, seed: int = 1, scale: float = 0.25) -> LLaDAModelLM:
    """Weights large enough that attention is far from uniform and RoPE matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(scale * noise)
    return model


# ----------------------------------------------------------------------------------------------
# Independent reference: the official LLaDA math, written out by hand (float64, einsum).
# ----------------------------------------------------------------------------------------------


def _ref_norm(x, sd, prefix, kind, eps):
    """The official norms in float64: RMS (``w * x``), Gemma RMS (``x * (1 + w)``) or LayerNorm
    (eps fixed at 1e-5), each with its optional bias."""
    w, b = sd.get(prefix + ".weight"), sd.get(prefix + ".bias")
    if kind in ("rms", "gemma_rms"):
        y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        if w is not None:
            y = y * (1 + w) if kind == "gemma_rms" else y * w
    else:
        mean = x.mean(-1, keepdim=True)
        y = (x - mean) / torch.sqrt((x - mean).pow(2).mean(-1, keepdim=True) + 1e-5)
        if w is not None:
            y = y * w
    return y if b is None else y + b


_REF_ACT = {"silu": lambda g: g * torch.sigmoid(g), "gelu": torch.nn.functional.gelu,
            "relu": torch.relu}


def _ref_rope(t, pos, theta, interleaved=False):
    """t [B, H, L, D], pos [B, L]. Official convention: halves (x1 = first half, x2 = second half),
    out = (x1 cos - x2 sin, x2 cos + x1 sin). ``interleaved`` is the GPT-J pairing, used only to
    show the test tells the conventions apart."""
    D = t.shape[-1]
    half = D // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float64) * 2.0 / D)
    ang = pos.double()[:, None, :, None] * inv  # [B, 1, L, half]
    cos, sin = ang.cos(), ang.sin()
    if interleaved:
        x1, x2 = t[..., 0::2], t[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return out.flatten(-2)
    x1, x2 = t[..., :half], t[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _ref_forward(model: LLaDAModelLM, ids, mask=None, interleaved_rope=False):
    """The logits in float64: every norm kind, QK norm, bias and activation the config allows."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    t = "model.transformer."
    B, L = ids.shape
    H, Hkv = cfg.n_heads, cfg.effective_n_kv_heads
    Dh = cfg.d_model // H
    kind, eps = str(cfg.layer_norm_type), cfg.rms_norm_eps
    if mask is None:
        pos = torch.arange(L).expand(B, L)
        keep = torch.ones(B, L, dtype=torch.bool)
    else:
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        keep = mask.bool()

    def lin(x, name):
        y = torch.einsum("bld,od->blo", x, sd[name + ".weight"])
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    x = sd[t + "wte.weight"][ids]
    if cfg.input_emb_norm:
        x = x * math.sqrt(cfg.d_model)
    for i in range(cfg.n_layers):
        p = f"{t}blocks.{i}."
        h = _ref_norm(x, sd, p + "attn_norm", kind, eps)
        q, k, v = lin(h, p + "q_proj"), lin(h, p + "k_proj"), lin(h, p + "v_proj")
        if cfg.attention_layer_norm:
            q, k = _ref_norm(q, sd, p + "q_norm", kind, eps), _ref_norm(k, sd, p + "k_norm", kind, eps)
        q = q.view(B, L, H, Dh).permute(0, 2, 1, 3)
        k = k.view(B, L, Hkv, Dh).permute(0, 2, 1, 3)
        v = v.view(B, L, Hkv, Dh).permute(0, 2, 1, 3)
        q = _ref_rope(q, pos, cfg.rope_theta, interleaved_rope)
        k = _ref_rope(k, pos, cfg.rope_theta, interleaved_rope)
        kv_of = torch.arange(H) // (H // Hkv)  # query head h reads key/value head h // group
        k, v = k[:, kv_of], v[:, kv_of]
        s = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(Dh)
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
        a = torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)
        x = x + lin(a.permute(0, 2, 1, 3).reshape(B, L, H * Dh), p + "attn_out")
        h = _ref_norm(x, sd, p + "ff_norm", kind, eps)
        gate = _REF_ACT[cfg.activation_type](lin(h, p + "ff_proj"))
        x = x + lin(gate * lin(h, p + "up_proj"), p + "ff_out")
    x = _ref_norm(x, sd, t + "ln_f", kind, eps)
    head = t + ("wte" if cfg.weight_tying else "ff_out")
    logits = lin(x, head) if not cfg.weight_tying else torch.einsum("bld,vd->blv", x, sd[head + ".weight"])
    if cfg.scale_logits:
        logits = logits / math.sqrt(cfg.d_model)
    return logits


# ----------------------------------------------------------------------------------------------
# Layout and config
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_tying", [False, True])
def test_state_dict_names_match_the_official_checkpoint(weight_tying):
    model = build_model(get_config("tiny", weight_tying=weight_tying))
    assert set(model.state_dict()) == _expected_keys(2, weight_tying)
    cfg = model.config
    blk = "model.transformer.blocks.0."
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["model.transformer.wte.weight"] == (128, 32)
    assert shapes[blk + "ff_proj.weight"] == (cfg.mlp_hidden_size, 32)
    assert shapes[blk + "ff_out.weight"] == (32, cfg.mlp_hidden_size)


def test_gqa_preset_shapes_and_forward():
    model = build_model("tiny-gqa")
    sd = model.state_dict()
    assert sd["model.transformer.blocks.0.k_proj.weight"].shape == (2 * 8, 32)
    assert sd["model.transformer.blocks.0.q_proj.weight"].shape == (32, 32)
    ids = torch.randint(0, PAD, (2, 6))
    with torch.no_grad():
        assert model(ids).logits.shape == (2, 6, 128)


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


def test_mask_token_id_is_a_config_attribute():
    assert LLaDAConfig().mask_token_id == 126336
    assert get_config("tiny").mask_token_id == MASK


def _official_config_dict(**over):
    """A LLaDA-8B-Instruct config.json, key for key, with the sizes shrunk."""
    d = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": 32, "embedding_dropout": 0.0, "embedding_size": 128, "eos_token_id": PAD,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
        "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
        "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "mask_token_id": MASK, "max_sequence_length": 4096, "mlp_hidden_size": 48, "mlp_ratio": 4,
        "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4,
        "n_layers": 2, "pad_token_id": PAD, "precision": "amp_bf16", "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
        "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
        "vocab_size": 128, "weight_tying": False,
    }
    d.update(over)
    return d


def test_official_config_dict_loads():
    d = _official_config_dict()
    cfg = LLaDAConfig(**{k: v for k, v in d.items() if k != "model_type"})
    assert cfg.auto_map["AutoModel"] == "modeling_llada.LLaDAModelLM"
    assert cfg.architectures == ["LLaDAModelLM"]
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id) == (MASK, PAD, PAD)
    assert cfg.hidden_size == 32 and cfg.intermediate_size == 48 and not cfg.tie_word_embeddings
    model = LLaDAModelLM(cfg)
    assert set(model.state_dict()) == _expected_keys(2, False)


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError):
        get_config("tiny", block_type="sequential")
    with pytest.raises(ValueError):
        get_config("tiny", rope=False)
    with pytest.raises(ValueError):
        get_config("tiny", activation_type="swiglu")


# ----------------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------------

_PARITY_CASES = {
    "tiny": {},
    "gqa": {"n_kv_heads": 2},
    "variants": {"include_bias": True, "scale_logits": True, "input_emb_norm": True, "embedding_size": 256},
    "tied": {"weight_tying": True},
}


@pytest.mark.parametrize("case", sorted(_PARITY_CASES))
def test_matches_hand_written_reference(case):
    over = _PARITY_CASES[case]
    model = _randomize(build_model(get_config("tiny", rope_theta=100.0, **over)))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, PAD, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        for m in (None, mask):
            got = model(ids, attention_mask=m).logits
            ref = _ref_forward(model, ids, m).float()
            assert got.shape == (2, 12, model.config.padded_vocab_size)
            keep = torch.ones_like(ids, dtype=torch.bool) if m is None else m.bool()
            torch.testing.assert_close(got[keep], ref[keep], atol=2e-5, rtol=1e-4)
        # The reference can fail: the GPT-J (interleaved) rotary convention gives other logits.
        wrong = _ref_forward(model, ids, None, interleaved_rope=True).float()
        assert (model(ids).logits - wrong).abs().max() > 1e-2


def test_left_padded_batch_equals_single_runs():
    model = _randomize(build_model("tiny"))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, PAD, (n,), generator=g) for n in (5, 9, 2)]
    prompts[0][-2:] = MASK
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), PAD)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = p
        mask[i, L - len(p):] = 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for i, p in enumerate(prompts):
            alone = model(p[None]).logits[0]
            torch.testing.assert_close(batch[i, L - len(p):], alone, atol=1e-5, rtol=0)
        # Ignoring the mask (the official forward) gets the padded rows wrong.
        unmasked = model(ids).logits
        assert (unmasked[0, L - 5:] - batch[0, L - 5:]).abs().max() > 1e-3


def test_explicit_position_ids_and_bool_mask():
    model = _randomize(build_model("tiny"))
    ids = torch.randint(0, PAD, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, :2] = False
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        a = model(ids, attention_mask=mask).logits
        b = model(ids, attention_mask=mask.long(), position_ids=pos).logits
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        # RoPE is relative: shifting every position changes nothing, spreading them does.
        shifted = model(ids, attention_mask=mask, position_ids=pos + 3).logits
        torch.testing.assert_close(shifted, a, atol=1e-5, rtol=0)
        spread = model(ids, attention_mask=mask, position_ids=pos * 2).logits
        assert (a - spread).abs().max() > 1e-3


def test_forward_hidden_and_lm_head_compose():
    model = _randomize(build_model("tiny"))
    ids = torch.randint(0, PAD, (1, 5))
    with torch.no_grad():
        hidden = model.forward_hidden(ids)
        assert hidden.shape == (1, 5, 32)
        torch.testing.assert_close(model.lm_head(hidden), model(ids).logits, atol=0, rtol=0)
        assert model(ids, return_dict=False)[0].shape == (1, 5, 128)


def test_bfloat16_close_to_float32():
    ref = _randomize(build_model("tiny"))
    low = build_model("tiny", dtype=torch.bfloat16)
    low.load_state_dict(ref.state_dict())
    ids = torch.randint(0, PAD, (2, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = low(ids).logits
        assert out.dtype == torch.bfloat16
        expected = ref(ids).logits
        rel = (out.float() - expected).abs().max() / expected.abs().max()
        assert rel < 0.1, rel  # bf16 rounding through 2 chaotic random layers: ~3%


# ----------------------------------------------------------------------------------------------
# transformers round trip
# ----------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    register_auto_classes()
    register_auto_classes()  # idempotent
    model = _randomize(build_model("tiny"))
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, PAD, (2, 6))
    with torch.no_grad():
        ref = model(ids).logits
        for loader in (LLaDAModelLM, AutoModelForMaskedLM, AutoModel, AutoModelForCausalLM):
            loaded = loader.from_pretrained(tmp_path)
            assert type(loaded) is LLaDAModelLM and not loaded.training
            sd, sd2 = model.state_dict(), loaded.state_dict()
            assert set(sd) == set(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
            torch.testing.assert_close(loaded(ids).logits, ref, atol=0, rtol=0)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, LLaDAConfig) and cfg.mask_token_id == MASK


def test_official_checkpoint_directory_loads_without_remote_code(tmp_path):
    """A directory laid out like GSAI-ML/LLaDA-8B-Instruct (config.json with auto_map and no
    modeling file) loads through the Auto classes without trust_remote_code."""
    fields = {k: v for k, v in _official_config_dict().items() if k != "model_type"}
    model = _randomize(build_model(LLaDAConfig(**fields)))
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_official_config_dict(), indent=2))
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, LLaDAConfig) and cfg.precision == "amp_bf16" and "AutoModel" in cfg.auto_map
    ids = torch.randint(0, PAD, (1, 5))
    with torch.no_grad():
        for loader in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM, LLaDAModelLM):
            loaded = loader.from_pretrained(tmp_path)
            assert type(loaded) is LLaDAModelLM
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------


def _compile_inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, PAD, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids, mask


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
def test_compile_fullgraph_eager_backend_no_graph_breaks(preset):
    from torch._dynamo.utils import counters

    model = _randomize(build_model(preset))
    ids, mask = _compile_inputs()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        for m in (mask, None):
            torch.testing.assert_close(compiled(ids, attention_mask=m).logits,
                                       model(ids, attention_mask=m).logits, atol=1e-6, rtol=0)
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def test_compile_inductor_matches_eager():
    from torch._dynamo.utils import counters

    model = _randomize(build_model("tiny"))
    ids, mask = _compile_inputs()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        out = compiled(ids, attention_mask=mask).logits
        torch.testing.assert_close(out, model(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)
    assert not counters["graph_break"]
    torch._dynamo.reset()


def test_compile_dynamic_shapes_single_graph_without_item():
    """dynamic=True: one graph for all lengths, inputs are only ids/mask (+ sizes), no `.item()`."""
    model = _randomize(build_model(get_config("tiny", input_emb_norm=True, scale_logits=True)))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=True)
    with torch.no_grad():
        for L in (6, 11):
            ids = torch.randint(0, PAD, (2, L))
            mask = torch.ones_like(ids)
            mask[1, :2] = 0
            torch.testing.assert_close(compiled(ids, attention_mask=mask).logits,
                                       model(ids, attention_mask=mask).logits, atol=1e-6, rtol=0)
    assert len(graphs) == 1
    nodes = list(graphs[0].graph.nodes)
    assert not [n for n in nodes if n.op == "call_method" and n.target == "item"]
    tensor_inputs = [n.name for n in nodes if n.op == "placeholder"
                     and "parameters" not in n.name and not n.name.startswith("s")]
    assert tensor_inputs == ["l_input_ids_", "l_attention_mask_"], tensor_inputs
    torch._dynamo.reset()


def test_lm_head_is_the_last_op():
    """ln_f then a single linear end the graph, so a pass can slice hidden states before the head."""
    model = build_model("tiny")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, fullgraph=True, backend=backend)(torch.randint(0, PAD, (1, 5)))
    calls = [n for n in graphs[0].graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    assert calls[-1].target is torch._C._nn.linear
    assert "ln_f" in str(calls[-2].args) or "ln_f" in str(calls[-2].kwargs)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# Config fields the presets leave at one value: norms, QK norm, biases, activations
# ----------------------------------------------------------------------------------------------




_NORM_CASES = {
    "gemma-rms-bias-qknorm-gelu": dict(layer_norm_type="gemma_rms", bias_for_layer_norm=True,
                                       attention_layer_norm=True, activation_type="gelu"),
    "layernorm-bias-relu": dict(layer_norm_type="default", bias_for_layer_norm=True,
                                activation_type="relu"),
    "low-precision-layernorm-qknorm-gqa": dict(layer_norm_type="low_precision",
                                              attention_layer_norm=True, n_kv_heads=2),
    "rms-qkv-bias-large-eps": dict(include_qkv_bias=True, rms_norm_eps=0.1,
                                   attention_layer_norm=True,
                                   attention_layer_norm_with_affine=False),
}


@pytest.mark.parametrize("case", sorted(_NORM_CASES))
def test_norm_attention_and_activation_variants_match_the_reference(case):
    model = _randomize(build_model(get_config("tiny", rope_theta=100.0, **_NORM_CASES[case])))
    ids = torch.randint(0, PAD, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, _ref_forward(model, ids).float(),
                                   atol=2e-5, rtol=1e-4)


def test_norm_classes_follow_the_config():
    from credit_compile.models.modeling_llada import LLaDALayerNorm, LLaDARMSNorm

    for kind, cls in [("rms", LLaDARMSNorm), ("gemma_rms", LLaDARMSNorm),
                      ("default", LLaDALayerNorm), ("low_precision", LLaDALayerNorm)]:
        block = build_model(get_config("tiny", layer_norm_type=kind, attention_layer_norm=True)
                            ).model.transformer.blocks[0]
        for norm in (block.attn_norm, block.ff_norm, block.q_norm, block.k_norm):
            assert type(norm) is cls, kind
            assert getattr(norm, "gemma", False) == (kind == "gemma_rms")
    # bias_for_layer_norm=None follows include_bias; an explicit value wins.
    for over, has_bias in [({"bias_for_layer_norm": None, "include_bias": True}, True),
                           ({"bias_for_layer_norm": False, "include_bias": True}, False),
                           ({"bias_for_layer_norm": True, "include_bias": False}, True)]:
        model = build_model(get_config("tiny", **over))
        assert (model.model.transformer.ln_f.bias is not None) == has_bias, over


def test_rope_full_precision_rounds_once():
    # In bf16, full precision computes the rotation in float32 and rounds once at the end;
    # without it every product and sum rounds to bf16.
    from credit_compile.models.modeling_llada import apply_rotary, rotary_cos_sin

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 4, 64, 16, generator=g).to(torch.bfloat16) for _ in range(2))
    cos, sin = rotary_cos_sin(torch.arange(64)[None] * 37, 16, 10000.0)
    exact = apply_rotary(q.float(), k.float(), cos, sin, full_precision=True)
    full = apply_rotary(q, k, cos, sin, full_precision=True)
    low = apply_rotary(q, k, cos, sin, full_precision=False)
    for got, want in zip(full, exact, strict=True):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16))
    assert not all(torch.equal(a, b) for a, b in zip(low, full, strict=True))


def test_random_init_of_a_fresh_model():
    """`LLaDAModelLM(config)` (training from scratch): linear and embedding weights ~ N(0, init_std),
    biases 0, norm weights 1, as the official reset_parameters."""
    torch.manual_seed(0)
    model = LLaDAModelLM(get_config("tiny", init_std=0.1, include_bias=True,
                                    bias_for_layer_norm=True, attention_layer_norm=True))
    for name, p in model.named_parameters():
        if "norm" in name or "ln_f" in name:
            expected = 1.0 if name.endswith(".weight") else 0.0
            assert torch.equal(p, torch.full_like(p, expected)), name
        elif name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert 0.08 < p.std().item() < 0.12, (name, p.std().item())


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


def test_forward_refuses_what_it_does_not_do():
    model = build_model("tiny")
    ids = torch.randint(0, PAD, (1, 4))
    with torch.no_grad():
        model(ids, use_cache=False, output_attentions=None, past_key_values=None)  # asks nothing
        for name, value in [("use_cache", True), ("output_hidden_states", True),
                            ("labels", ids), ("past_key_values", ())]:
            with pytest.raises(TypeError, match=name):
                model(ids, **{name: value})
