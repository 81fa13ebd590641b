"""models/modeling_llada.py: the LLaDA model. Checkpoint layout, numerics against a hand-written
reference, padding, save/load through the transformers Auto classes, torch.compile without graph
breaks, its KV cache (the cached forward against an independent oracle, and exact where nothing
it keeps can go stale) and compile_layers_once (one layer compiled for all)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import layer_calls, record_graphs
from hypothesis import given, settings
from hypothesis import strategies as st
from llada_configs import MASK, PAD, expected_keys, official_config_dict
from torch._dynamo.utils import counters
from toy_models import layered_model, token_prompts
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

import credit_compile as cc
from credit_compile import step_cache
from credit_compile.models import (
    LLaDAConfig,
    LLaDAModelLM,
    build_model,
    get_config,
    register_auto_classes,
)


@pytest.fixture
def step_graphs(monkeypatch):
    """The FX graphs of the optimized model's compiled steps, one per step."""
    return record_graphs(monkeypatch, step_cache)


@pytest.mark.cheap_compile
def test_one_layer_is_traced_and_called_for_every_layer(step_graphs):
    model = layered_model(3)
    ids = torch.randint(0, 120, (1, 5), generator=torch.Generator().manual_seed(0))
    fast = cc.optimize(model, gen_length=8, block_length=4, compile_layers_once=True)
    fast.generate(ids)
    (gm,) = step_graphs
    assert layer_calls(gm) == ["subgraph_0"] * 3  # one region, called by each layer


@pytest.mark.cheap_compile
def test_without_it_every_layer_is_inlined(step_graphs):
    fast = cc.optimize(layered_model(3), gen_length=8, block_length=4)
    fast.generate(torch.randint(0, 120, (1, 5)))
    (gm,) = step_graphs
    assert layer_calls(gm) == []


def test_eager_forward_is_unchanged():
    model = layered_model(2)
    ids = torch.randint(0, 120, (2, 7))
    assert torch.equal(model(ids).logits, model(ids, compile_layers_once=True).logits)


@pytest.mark.cheap_compile
def test_a_second_call_compiles_nothing():
    # The region's guards hold across calls: no recompile of the step.
    fast = cc.optimize(layered_model(4), gen_length=8, block_length=4, compile_layers_once=True)
    ids = torch.randint(0, 120, (1, 5))
    before = counters["stats"]["unique_graphs"]
    fast.generate(ids)
    fast.generate(ids)
    assert counters["stats"]["unique_graphs"] - before == 1


@pytest.mark.cheap_compile
def test_a_hook_on_a_later_layer_is_honoured():
    # Found by review: the shared region ran the first layer's trace for all, dropping a hook
    # on layer 1 without a word. Now the layers are compiled one by one, with a warning.
    model = layered_model(3, seed=1)
    model.model.transformer.blocks[1].register_forward_hook(lambda m, i, out: out + 1.0)
    ids = torch.randint(0, 120, (2, 5), generator=torch.Generator().manual_seed(0))
    decode = dict(gen_length=8, block_length=4)
    ref = cc.generate_reference(model, ids, **decode)
    fast = cc.optimize(model, compile_layers_once=True, **decode)
    with pytest.warns(UserWarning, match=r"layers differ in more than their weights"):
        out = fast.generate(ids)
    assert torch.equal(out.sequences, ref.sequences)


@pytest.mark.cheap_compile
def test_a_layer_with_an_adapter_compiles_each_layer_instead_of_crashing(step_graphs):
    from torch import nn

    class LoRA(nn.Module):  # an adapter on one layer only (PEFT's layers_to_transform)
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.a = nn.Parameter(torch.full((2, base.in_features), 0.1))
            self.b = nn.Parameter(torch.full((base.out_features, 2), 0.1))

        def forward(self, t):
            return self.base(t) + t @ self.a.T @ self.b.T

    model = layered_model(2, seed=1)
    block = model.model.transformer.blocks[1]
    block.q_proj = LoRA(block.q_proj)
    ids = torch.randint(0, 120, (1, 5), generator=torch.Generator().manual_seed(0))
    decode = dict(gen_length=8, block_length=4)
    ref = cc.generate_reference(model, ids, **decode)
    with pytest.warns(UserWarning, match=r"an adapter on some layers"):
        out = cc.optimize(model, compile_layers_once=True, **decode).generate(ids)
    assert torch.equal(out.sequences, ref.sequences)
    (gm,) = step_graphs
    assert layer_calls(gm) == []  # every layer inlined


def empty_cache(model, batch, length):
    # NaN-filled: a read of anything the forward did not write shows in its output.
    shape = model.kv_cache_shape(batch, length)
    return torch.full(shape, float("nan")), torch.full(shape, float("nan"))


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
@torch.no_grad()
def test_refresh_returns_the_plain_logits_and_fills_the_cache(preset):
    model = layered_model(2, preset=preset)
    ids, mask = token_prompts(2, 12, seed=1)
    keys, values = empty_cache(model, 2, 12)
    refreshed = model(ids, mask, kv_cache=(keys, values)).logits
    assert torch.equal(refreshed, model(ids, mask).logits)
    assert not keys.isnan().any() and not values.isnan().any()


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa"])
@settings(max_examples=10, deadline=None)
@given(start=st.integers(0, 11), length=st.integers(1, 6), padded=st.booleans(),
       seed=st.integers(0, 2**16))
@torch.no_grad()
def test_cached_forward_of_an_unchanged_sequence_equals_the_plain_one(preset, start, length,
                                                                       padded, seed):
    # Nothing is stale: the kept keys and values are the sequence's own.
    model = layered_model(2, seed=seed % 5, preset=preset)
    ids, mask = token_prompts(2, 18, seed=seed, padded=padded)
    cache = empty_cache(model, 2, 18)
    plain = model(ids, mask, kv_cache=cache).logits
    positions = torch.arange(start, start + length)
    cached = model(ids[:, positions], mask, kv_cache=cache, cache_positions=positions).logits
    # Float rounding only: the GEMMs and attention kernels see other row counts (measured up to
    # 7e-6 of the logits' scale, through two layers of init_std 0.5); a wrong key or position
    # moves logits by a large fraction of it.
    scale = plain.abs().max().item()
    torch.testing.assert_close(cached, plain[:, positions], atol=2e-5 * scale, rtol=0)


@torch.no_grad()
def test_one_layer_cache_is_exact_after_the_block_changes_and_two_layers_are_not():
    # In one layer the kept keys and values of the rest depend on their own tokens only, so new
    # tokens in the block leave nothing stale; from the second layer on they do.
    positions = torch.arange(8, 14)
    ids, mask = token_prompts(2, 20, seed=3)
    changed = ids.clone()
    changed[:, positions] = torch.randint(0, 120, (2, len(positions)),
                                          generator=torch.Generator().manual_seed(4))
    errors = {}
    for layers in (1, 2):
        model = layered_model(layers, seed=2)
        cache = empty_cache(model, 2, 20)
        model(ids, mask, kv_cache=cache)
        cached = model(changed[:, positions], mask, kv_cache=cache,
                       cache_positions=positions).logits
        exact = model(changed, mask).logits[:, positions]
        errors[layers] = ((cached - exact).abs().max() / exact.abs().max()).item()
    assert errors[1] < 2e-6
    assert errors[2] > 1e-3  # the approximation this test would see in one layer


@pytest.mark.parametrize("span", ["block", "generated"])
@torch.no_grad()
def test_a_cached_forward_sees_the_rest_as_the_refresh_left_it(span):
    # The oracle: a plain forward of the changed sequence whose key and value projections
    # outside the recomputed span are replaced, in every layer, by the refresh's. A cache that
    # kept a row it should recompute, or recomputed one it should keep, differs from it.
    model = layered_model(3, seed=5, preset="tiny-gqa")
    ids, mask = token_prompts(2, 20, seed=8)
    recomputed = torch.arange(8, 12) if span == "block" else torch.arange(8, 20)
    changed = ids.clone()
    changed[:, 8:12] = torch.randint(0, 120, (2, 4), generator=torch.Generator().manual_seed(9))
    kept = torch.ones(20, dtype=torch.bool)
    kept[recomputed] = False

    projections, handles = {}, []
    for layer, block in enumerate(model.model.transformer.blocks):
        for name in ("k_proj", "v_proj"):
            def hook(module, args, output, key=(layer, name)):
                if key not in projections:  # the refresh: record
                    projections[key] = output
                    return output
                return torch.where(kept[None, :, None], projections[key], output)
            handles.append(getattr(block, name).register_forward_hook(hook))
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


def test_a_cache_of_the_wrong_shape_names_the_fix():
    model = layered_model(2)
    ids = torch.randint(0, 120, (2, 10))
    keys, values = empty_cache(model, 1, 10)
    with pytest.raises(ValueError, match=r"kv_cache keys of shape .*model.kv_cache_shape"):
        model(ids, kv_cache=(keys, values))
    keys, values = empty_cache(model, 2, 10)
    with pytest.raises(ValueError, match=r"one canvas position per input token"):
        model(ids[:, :3], kv_cache=(keys, values), cache_positions=torch.arange(4))
    with pytest.raises(ValueError, match=r"cache_positions without kv_cache"):
        model(ids[:, :3], cache_positions=torch.arange(3))


@torch.no_grad()
def test_a_cache_that_would_decode_wrong_logits_is_refused():
    # Each of these ran before and gave logits off by about 10 from the plain forward's.
    model = layered_model(2)
    ids, mask = token_prompts(2, 10, seed=1)
    shape, block = model.kv_cache_shape(2, 10), torch.arange(6, 10)
    one = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"share their memory: allocate two tensors"):
        model(ids, mask, kv_cache=(one, one))
    as_ints = (torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long))
    with pytest.raises(ValueError, match=r"dtype torch.int64 .*floating-point"):
        model(ids, mask, kv_cache=as_ints)
    with pytest.raises(ValueError, match=r"keys of dtype torch.float32 and values of dtype "
                                         r"torch.bfloat16"):
        model(ids, mask, kv_cache=(torch.zeros(shape), torch.zeros(shape, dtype=torch.bfloat16)))
    cache = empty_cache(model, 2, 10)
    model(ids, mask, kv_cache=cache)
    with pytest.raises(ValueError, match=r"give the whole sequence's \[B, T\] = \(2, 10\) mask"):
        model(ids[:, block], mask[:, block], kv_cache=cache, cache_positions=block)
    # Two views of one allocation are two tensors: accepted, and exact.
    pair = torch.zeros(2, *shape)
    model(ids, mask, kv_cache=(pair[0], pair[1]))
    cached = model(ids[:, block], mask, kv_cache=(pair[0], pair[1]), cache_positions=block)
    assert torch.allclose(cached.logits, model(ids, mask).logits[:, block], atol=1e-5)


@pytest.mark.cheap_compile
def test_under_autocast_the_cache_keeps_the_lower_precision_values():
    # A float32 model under bfloat16 autocast: its keys come out in bfloat16 and the float32
    # cache holds them exactly; the cached step casts them back, as the reference does. The
    # cache's dtypes are the traced graph's (Inductor's bfloat16 code for the CPU takes a minute
    # of g++ to build and proves nothing of the cache).
    model = layered_model(1, seed=4)
    ids, mask = token_prompts(2, 6, seed=7)
    decode = dict(gen_length=16, block_length=4, kv_cache="dual")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = cc.generate_reference(model, ids, mask, **decode)
        out = cc.optimize(model, **decode).generate(ids, mask)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        keys, values = empty_cache(model, 2, 6)
        model(ids, mask, kv_cache=(keys, values))
    assert torch.equal(keys, keys.bfloat16().float())  # bfloat16 values, stored exactly


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


@pytest.mark.parametrize("weight_tying", [False, True])
def test_state_dict_names_match_the_official_checkpoint(weight_tying):
    model = build_model(get_config("tiny", weight_tying=weight_tying))
    assert set(model.state_dict()) == expected_keys(2, weight_tying)
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
    fields = {k: v for k, v in official_config_dict().items() if k != "model_type"}
    model = _randomize(build_model(LLaDAConfig(**fields)))
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(official_config_dict(), indent=2))
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, LLaDAConfig) and cfg.precision == "amp_bf16" and "AutoModel" in cfg.auto_map
    ids = torch.randint(0, PAD, (1, 5))
    with torch.no_grad():
        for loader in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM, LLaDAModelLM):
            loaded = loader.from_pretrained(tmp_path)
            assert type(loaded) is LLaDAModelLM
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


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

    model = _randomize(build_model(get_config("tiny", n_layers=1)))  # Inductor: one layer's kernels
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


def test_forward_refuses_what_it_does_not_do():
    model = build_model("tiny")
    ids = torch.randint(0, PAD, (1, 4))
    with torch.no_grad():
        model(ids, use_cache=False, output_attentions=None, past_key_values=None)  # asks nothing
        for name, value in [("use_cache", True), ("output_hidden_states", True),
                            ("labels", ids), ("past_key_values", ())]:
            with pytest.raises(TypeError, match=name):
                model(ids, **{name: value})
