"""models/modeling_llada2.py and configuration_llada2.py: the native LLaDA2.x (Bailing-MoE-v2)
model against the official modeling code, through the fixtures it recorded
(tests/fixtures/llada2_tiny.*, written by tests/fixtures/record_llada2.py: the official file, its
commit and the transformers version are in the JSON's `recorded_with`)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import grouped_mm_runs_here
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from credit_compile.models import (
    LLADA2_PRESETS,
    LLaDA2Config,
    LLaDA2ModelLM,
    available_presets,
    block_causal_mask,
    build_model,
    get_config,
)
from credit_compile.models.modeling_llada2 import (
    LLaDA2Gate,
    LLaDA2SparseMoeBlock,
    fuse_experts,
    moe_formulation,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
META = json.loads((FIXTURES / "llada2_tiny.json").read_text())
TENSORS = load_file(FIXTURES / "llada2_tiny.safetensors")
WEIGHTS = {k: v for k, v in TENSORS.items() if k.startswith(("model.", "lm_head."))}
MASK = META["mask_token_id"]
EOS = META["config"]["eos_token_id"]
BLOCK = META["block_length"]


def tiny_config(**overrides) -> LLaDA2Config:
    return LLaDA2Config(**{**META["config"], "mask_token_id": MASK, **overrides})


def official_model() -> LLaDA2ModelLM:
    """The recorded official weights in the native model."""
    model = LLaDA2ModelLM(tiny_config()).eval()
    model.load_state_dict(WEIGHTS, strict=True)
    return model


def block_mask_4d(length: int, block: int, dtype=torch.float32) -> torch.Tensor:
    """The official generate()'s mask: log(tril(ones(blocks, blocks))) repeated on both axes."""
    blocks = math.ceil(length / block)
    tril = torch.tril(torch.ones(blocks, blocks)).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return tril[:length, :length][None, None].log().to(dtype)


def close(actual, expected):
    """float32 agreement: logits reach about 40 here, so 5e-5 is about 1e-6 of their scale."""
    torch.testing.assert_close(actual, expected, atol=5e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The official logits and layout
# ----------------------------------------------------------------------------------------------


def test_fixture_provenance_is_recorded():
    rec = META["recorded_with"]
    assert rec["official_source"] and rec["transformers"].startswith("4.")  # 5 cannot import it
    assert set(rec["official_sha256"]) == {"configuration_llada2_moe.py", "modeling_llada2_moe.py"}


def test_native_logits_equal_the_official_logits():
    """The official forward's logits (float32) with the official generate()'s block mask and with
    no mask, from every way of asking the native model for the same attention."""
    model = official_model()
    ids = TENSORS["input_ids"]
    length = ids.shape[1]
    with torch.no_grad():
        close(model(ids, block_length=BLOCK).logits, TENSORS["logits_block"])
        for dtype in (torch.float32, torch.bfloat16):  # generate() builds it in bfloat16
            mask = block_mask_4d(length, BLOCK, dtype)
            close(model(ids, attention_mask=mask).logits, TENSORS["logits_block"])
        bool_mask = block_mask_4d(length, BLOCK) == 0
        close(model(ids, attention_mask=bool_mask).logits, TENSORS["logits_block"])
        close(model(ids, attention_mask=bool_mask.expand(2, 1, -1, -1),
                    position_ids=torch.arange(length)[None]).logits, TENSORS["logits_block"])
        close(model(ids).logits, TENSORS["logits_full"])
        close(model(ids, attention_mask=torch.ones_like(ids)).logits, TENSORS["logits_full"])
        # A block longer than the sequence is no mask at all.
        close(model(ids, block_length=length).logits, TENSORS["logits_full"])


def _layout_digest(model) -> tuple[int, str]:
    lines = sorted(f"{name}:{tuple(t.shape)}" for name, t in model.state_dict().items())
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_state_dict_names_and_shapes_equal_the_official_ones():
    """Name for name and shape for shape (the routers' expert_bias buffers included): the tiny
    model as recorded, and the recorded layouts of other variants and of LLaDA2.0-mini's real
    config (built on the meta device)."""
    native = LLaDA2ModelLM(tiny_config())
    assert {k: tuple(v.shape) for k, v in native.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in WEIGHTS.items()}
    assert set(META["state_dict_layouts"]) == {"tiny", "tiny_plain", "tiny_dense", "llada2_mini"}
    for name, layout in META["state_dict_layouts"].items():
        with torch.device("meta"):
            model = LLaDA2ModelLM(LLaDA2Config(**layout["config"]))
        assert _layout_digest(model) == (layout["entries"], layout["sha256"]), name


def test_layers_are_dense_below_first_k_dense_replace_and_moe_above():
    model = LLaDA2ModelLM(tiny_config(num_hidden_layers=4, first_k_dense_replace=2))
    kinds = [type(layer.mlp).__name__ for layer in model.model.layers]
    assert kinds == ["LLaDA2MLP", "LLaDA2MLP", "LLaDA2SparseMoeBlock", "LLaDA2SparseMoeBlock"]
    assert all(type(layer.mlp).__name__ == "LLaDA2MLP"
               for layer in LLaDA2ModelLM(tiny_config(num_experts=None)).model.layers)


# ----------------------------------------------------------------------------------------------
# The exact block KV cache
# ----------------------------------------------------------------------------------------------


def new_cache(model, batch, length):
    shape = model.kv_cache_shape(batch, length)
    return torch.zeros(shape), torch.zeros(shape)


def padded_canvas(pad=BLOCK):
    """Two rows of 16: the recorded input ids (12) then masks, the second row left-padded."""
    ids = torch.cat([TENSORS["input_ids"], torch.full((2, 4), MASK)], dim=1)
    ids[1] = torch.cat([torch.full((pad,), EOS), ids[1, :16 - pad]])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    return ids, mask


def test_filling_the_cache_computes_the_plain_forward():
    model = official_model()
    ids, mask = padded_canvas()
    cache = new_cache(model, 2, 16)
    with torch.no_grad():
        plain = model(ids, mask, block_length=BLOCK).logits
        torch.testing.assert_close(model(ids, mask, block_length=BLOCK, kv_cache=cache).logits, plain,
                                   atol=0, rtol=0)
    assert cache[0].abs().sum() > 0 and cache[1].abs().sum() > 0


@pytest.mark.parametrize("start", [0, 4, 8, 12])
def test_a_cached_block_gets_the_uncached_logits_whatever_the_cache_holds_later(start):
    """The block's tokens alone against the cache give the block's rows of the uncached
    block-causal forward; the cache was filled from a canvas whose later blocks held other
    tokens, and the positions after the block hold noise: a later block is never seen, so the
    cache is exact. A left-padded row too: its blocks follow its positions, which here stay
    aligned with the canvas's blocks (padding by a multiple of block_length)."""
    model = official_model()
    ids, mask = padded_canvas()
    other = ids.clone()
    noise = torch.Generator().manual_seed(1)
    other[:, start:] = torch.randint(3, MASK, other[:, start:].shape, generator=noise)
    cache = new_cache(model, 2, 16)
    block = torch.arange(start, start + BLOCK)
    with torch.no_grad():
        full = model(ids, mask, block_length=BLOCK).logits
        model(other, mask, block_length=BLOCK, kv_cache=cache)
        for tensor in cache:
            tensor[:, :, :, start + BLOCK:] = torch.randn_like(tensor[:, :, :, start + BLOCK:])
        cached = model(ids[:, block], mask, block_length=BLOCK, kv_cache=cache, cache_positions=block).logits
    real = mask[:, block].bool()  # padding's own rows are never read
    assert real.sum() >= 4
    close(cached[real], full[:, block][real])


@pytest.mark.parametrize("k", [0, 1, 2])
def test_per_row_cache_positions_cache_each_rows_own_block(k):
    """Padding by 3 shifts the second row's blocks by 3 canvas slots: with cache_positions per
    row, each row's block k (canvas slots pad + 4k ...) gets the uncached logits, the cache
    filled from a canvas that differs from block k on."""
    model = official_model()
    ids, mask = padded_canvas(pad=3)
    rows = torch.stack([torch.arange(4 * k, 4 * k + 4), torch.arange(3 + 4 * k, 7 + 4 * k)])
    other = ids.clone()
    for row in range(2):
        other[row, int(rows[row, 0]):] = MASK
    cache = new_cache(model, 2, 16)
    with torch.no_grad():
        full = model(ids, mask, block_length=BLOCK).logits
        model(other, mask, block_length=BLOCK, kv_cache=cache)
        cached = model(ids.gather(1, rows), mask, block_length=BLOCK, kv_cache=cache,
                       cache_positions=rows).logits
    for row in range(2):
        close(cached[row], full[row, rows[row]])


def test_a_padded_row_whose_blocks_straddle_the_cached_slice_is_not_exact():
    """Blocks follow positions: padding by 3 shifts the second row's blocks by 3 canvas slots, so
    one slice of the canvas for both rows spans two of its blocks, and the later one sees what the
    cache holds ahead of the slice: per-row cache_positions are the way (above)."""
    model = official_model()
    ids, mask = padded_canvas(pad=3)
    other = ids.clone()
    other[:, 8:] = torch.randint(3, MASK, (2, 8), generator=torch.Generator().manual_seed(2))
    cache = new_cache(model, 2, 16)
    block = torch.arange(4, 8)
    with torch.no_grad():
        full = model(ids, mask, block_length=BLOCK).logits
        model(other, mask, block_length=BLOCK, kv_cache=cache)
        cached = model(ids[:, block], mask, block_length=BLOCK, kv_cache=cache, cache_positions=block).logits
    close(cached[0], full[0, block])
    assert not torch.allclose(cached[1], full[1, block], atol=1e-3)


def llada2_generate_cached(model, prompt, *, gen_length, block_length, steps, threshold=0.95,
                           eos_early_stop=False, eos_id=EOS, mask_id=MASK):
    """LLaDA2's sampler rules (as `models.llada2_generate`) on the exact block cache: one
    forward of the whole canvas fills it (the prompt's finished blocks are final), then each
    denoising step runs the current block's tokens only against it, and a finished block's
    keys and values are written by one more forward of its final tokens (not counted: it picks
    no token). Returns (tokens, the counted forwards)."""
    p = prompt.shape[1]
    n_blocks = (p + gen_length + block_length - 1) // block_length
    x = torch.full((1, n_blocks * block_length), mask_id, dtype=torch.long)
    x[:, :p] = prompt
    cache = new_cache(model, 1, x.shape[1])
    model(x, block_length=block_length, kv_cache=cache)
    schedule = [block_length // steps + (1 if i < block_length % steps else 0) for i in range(steps)]
    nfe = 0
    for b in range(p // block_length, n_blocks):
        block = torch.arange(b * block_length, (b + 1) * block_length)
        for step in range(steps):
            active = x[0, block] == mask_id
            if not active.any():
                break
            nfe += 1
            logits = model(x[:, block], block_length=block_length, kv_cache=cache,
                           cache_positions=block).logits[0]
            conf, tokens = logits.float().softmax(-1).max(-1)
            conf = torch.where(active, conf, -torch.inf)
            commit = conf > threshold
            if int(commit.sum()) < schedule[step]:
                commit = torch.zeros_like(commit)
                commit[conf.topk(min(schedule[step], int(active.sum()))).indices] = True
            x[0, block[commit]] = tokens[commit]
            if eos_early_stop and (tokens[commit] == eos_id).any():
                eos = (x[0] == eos_id).nonzero()
                if len(eos) and (x[0, p:int(eos[0])] != mask_id).all():
                    return x[:, p:int(eos[0]) + 1], nfe
        model(x[:, block], block_length=block_length, kv_cache=cache, cache_positions=block)
        if (x[0, p:(b + 1) * block_length] == eos_id).any():
            break
    out = x[0, p:p + gen_length]
    eos = (out == eos_id).nonzero()
    return out[:int(eos[0]) + 1 if len(eos) else gen_length][None], nfe


@pytest.mark.parametrize("name", sorted(META["generate"]))
def test_decoding_on_the_exact_cache_gives_the_official_generate_tokens(name):
    """Each step runs one block (the official generate() recomputes the whole window): the same
    tokens and the same number of steps as the official generate() recorded."""
    settings = {k: v for k, v in META["generate"][name].items()
                if k not in ("temperature", "eos_id", "mask_id")}
    with torch.no_grad():
        tokens, nfe = llada2_generate_cached(official_model(), TENSORS["prompt"], **settings)
    assert tokens.tolist() == TENSORS[f"generate_{name}"].tolist()
    assert nfe == META["generate_nfe"][name]


def test_the_cached_forward_compiles_as_one_graph():
    model = official_model()
    ids, mask = padded_canvas()
    block = torch.arange(8, 12)
    compiled = torch.compile(model.forward_hidden, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        eager_cache, compiled_cache = new_cache(model, 2, 16), new_cache(model, 2, 16)
        model.forward_hidden(ids, mask, None, BLOCK, eager_cache)
        compiled(ids, mask, None, BLOCK, compiled_cache)
        close(compiled_cache[0], eager_cache[0])
        close(compiled(ids[:, block], mask, None, BLOCK, compiled_cache, block),
              model.forward_hidden(ids[:, block], mask, None, BLOCK, eager_cache, block))


def test_cache_arguments_that_do_not_fit_are_refused():
    model = official_model()
    ids, mask = padded_canvas()
    cache = new_cache(model, 2, 16)
    block = torch.arange(4, 8)
    with pytest.raises(ValueError, match="needs block_length"):
        model(ids[:, block], mask, kv_cache=cache, cache_positions=block)
    with pytest.raises(ValueError, match="cache_positions without kv_cache"):
        model(ids[:, block], mask, block_length=BLOCK, cache_positions=block)
    with pytest.raises(ValueError, match=r"kv_cache_shape"):
        model(ids[:, :8], kv_cache=cache)
    with pytest.raises(ValueError, match=r"cache_positions of shape \(2,\)"):
        model(ids[:, block], mask, block_length=BLOCK, kv_cache=cache, cache_positions=block[:2])
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 4\)"):
        model(ids[:, block], mask[:, block], block_length=BLOCK, kv_cache=cache, cache_positions=block)
    with pytest.raises(ValueError, match="share their memory"):
        model(ids, kv_cache=(cache[0], cache[0]))


# ----------------------------------------------------------------------------------------------
# The mixture of experts against a per-token loop
# ----------------------------------------------------------------------------------------------


def route_one_token(x, gate_weight, expert_bias, cfg):
    """The official routing for one token, spelled out: sigmoid scores; on the biased scores each
    group's score is the sum of its two best; the best `topk_group` groups; the best
    `num_experts_per_tok` experts in them; their unbiased scores, normalised, scaled."""
    scores = torch.sigmoid(gate_weight.float() @ x.float())
    biased = scores + expert_bias.float()
    size = cfg.num_experts // cfg.n_group
    groups = [sorted(biased[g * size:(g + 1) * size].tolist(), reverse=True) for g in range(cfg.n_group)]
    best_groups = sorted(range(cfg.n_group), key=lambda g: groups[g][0] + groups[g][1], reverse=True)
    candidates = [e for e in range(cfg.num_experts) if e // size in best_groups[:cfg.topk_group]]
    chosen = sorted(candidates, key=lambda e: biased[e].item(), reverse=True)[:cfg.num_experts_per_tok]
    weights = scores[chosen]
    if cfg.num_experts_per_tok > 1:
        weights = weights / (weights.sum() + 1e-20)
    return chosen, weights * cfg.routed_scaling_factor


def moe_per_token(block: LLaDA2SparseMoeBlock, x: torch.Tensor, cfg) -> torch.Tensor:
    out = torch.empty_like(x)
    for i, token in enumerate(x.reshape(-1, x.shape[-1])):
        chosen, weights = route_one_token(token, block.gate.weight, block.gate.expert_bias, cfg)
        y = sum(w * block.experts[e](token).float() for e, w in zip(chosen, weights, strict=True)).to(x.dtype)
        if block.shared_experts is not None:
            y = y + block.shared_experts(token)
        out.view(-1, x.shape[-1])[i] = y
    return out


@st.composite
def moe_cases(draw):
    n_group = draw(st.sampled_from([1, 2, 4]))
    per_group = draw(st.sampled_from([2, 3, 4]))
    topk_group = draw(st.integers(1, n_group))
    top_k = draw(st.integers(1, topk_group * per_group))
    return dict(num_experts=n_group * per_group, n_group=n_group, topk_group=topk_group,
                num_experts_per_tok=top_k, num_shared_experts=draw(st.sampled_from([None, 0, 1, 2])),
                routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
                hidden_act=draw(st.sampled_from(["silu", "gelu"])),
                tokens=draw(st.integers(1, 7)), seed=draw(st.integers(0, 2**16)))


FORMULATIONS = ["dense", pytest.param("grouped", marks=pytest.mark.skipif(
    not grouped_mm_runs_here(), reason="this torch has no CPU torch._grouped_mm"))]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")  # a width-0 shared expert
@pytest.mark.parametrize("formulation", FORMULATIONS)
@given(case=moe_cases(), fused=st.booleans())
def test_moe_block_equals_the_per_token_loop(formulation, case, fused):
    """Both formulations of the routed experts (every expert on every token weighted by the
    sparse routing; the tokens sorted by expert, one grouped GEMM per projection) equal the
    per-token loop over the routed experts, float32, for any grouping, top-k and shared
    experts, with their weights stacked now or fused, and experts left without a token (2 to
    14 tokens, up to 16 experts); the gate picks the experts the spelled-out rule picks."""
    tokens, seed = case.pop("tokens"), case.pop("seed")
    cfg = tiny_config(hidden_size=16, moe_intermediate_size=8, **case)
    g = torch.Generator().manual_seed(seed)
    block = LLaDA2SparseMoeBlock(cfg)
    block.formulation = formulation
    with torch.no_grad():
        for t in block.parameters():
            t.copy_(torch.randn(t.shape, generator=g) * 0.5)
        block.gate.expert_bias.copy_(torch.randn(cfg.num_experts, generator=g) * 0.3)
        if fused:
            block.fuse_experts()
            assert block.fused()
        x = torch.randn(2, tokens, 16, generator=g)
        close(block(x), moe_per_token(block, x, cfg))
        experts, weights = block.gate(x.reshape(-1, 16))
        for row, token in enumerate(x.reshape(-1, 16)):
            chosen, reference = route_one_token(token, block.gate.weight, block.gate.expert_bias, cfg)
            assert sorted(experts[row].tolist()) == sorted(chosen)
            close(dict(zip(experts[row].tolist(), weights[row].tolist(), strict=True)),
                  dict(zip(chosen, reference.tolist(), strict=True)))


def test_the_formulation_is_dense_on_the_cpu_and_grouped_on_cuda_in_bfloat16():
    """The one place that decides: float32 or the CPU run densely (there torch.compile cannot
    trace the grouped GEMM, or it has no fast kernel); CUDA in bfloat16 groups."""
    assert moe_formulation(torch.ones(2, 16), 16, 8) == "dense"
    assert moe_formulation(torch.ones(2, 16, dtype=torch.bfloat16), 16, 8) == "dense"
    if torch.cuda.is_available():
        on_cuda = torch.ones(2, 16, dtype=torch.bfloat16, device="cuda")
        assert moe_formulation(on_cuda, 16, 8) == ("grouped" if hasattr(torch, "_grouped_mm") else "dense")
        assert moe_formulation(on_cuda, 16, 12) == "dense"  # 24-byte rows: not 16-byte aligned
        assert moe_formulation(on_cuda.float(), 16, 8) == "dense"


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="this torch has no torch._grouped_mm")
def test_a_block_built_on_its_own_is_defined():
    """Every parameter of a MoE block built outside a model is drawn, none left as memory
    `torch.empty` handed out (deterministic mode fills that with NaN, so this fails if any is)."""
    torch.use_deterministic_algorithms(True)
    try:
        block = LLaDA2SparseMoeBlock(tiny_config(hidden_size=16, moe_intermediate_size=8))
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.isfinite(t).all() for t in block.state_dict().values())


def test_the_grouped_moe_compiles_as_one_graph():
    """fullgraph=True in bfloat16 (the dtype it runs in): the sort, the segment offsets and the
    scatter back are computed on the device, with no data-dependent shape or host sync; the
    graph's output is the eager block's (dynamo and AOTAutograd, not Inductor's kernels)."""
    cfg = tiny_config(hidden_size=16, moe_intermediate_size=8, num_experts=8, n_group=4,
                      topk_group=2, num_experts_per_tok=2)
    block = LLaDA2SparseMoeBlock(cfg).to(torch.bfloat16)
    block.formulation = "grouped"
    block.fuse_experts()
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)  # 12 pairs for 8 experts: some get none
    with torch.no_grad():
        try:
            expected = block(x)
        except RuntimeError as error:  # 2.11's CPU has no bfloat16 kernel
            pytest.skip(f"torch._grouped_mm does not run here: {error}")
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), expected)


def test_fused_experts_stay_fused_through_a_cast_and_save_as_the_checkpoints():
    """After `fuse_experts` each expert's weight is a view of its stack; a cast fuses again; the
    state dict keeps the per-expert names, as copies (a checkpoint saves and loads as before)."""
    model = LLaDA2ModelLM(tiny_config())
    blocks = [m for m in model.modules() if isinstance(m, LLaDA2SparseMoeBlock)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_experts(model)
    assert blocks and all(block.fused() for block in blocks)
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    name = next(k for k in state if ".experts.1.up_proj" in k)
    assert state[name].data_ptr() != model.get_parameter(name).data_ptr()
    model.to(torch.float64)
    assert all(block.fused() and block._stacks[0].dtype == torch.float64 for block in blocks)
    model.load_state_dict({k: v.double() + 1 for k, v in before.items()})  # in place: still fused
    assert all(block.fused() for block in blocks)
    assert torch.equal(blocks[0]._stacks[1][1], before[name].double() + 1)
    # One middle expert's weight set anew: no longer fused, and fusing again reads it.
    middle = blocks[0].experts[1].up_proj
    middle.weight = torch.nn.Parameter(torch.zeros_like(middle.weight))
    assert not blocks[0].fused()
    blocks[0].fuse_experts()
    assert blocks[0].fused() and not blocks[0]._stacks[1][1].any()


def test_expert_bias_steers_the_choice_but_not_the_weights():
    cfg = tiny_config(hidden_size=16, num_experts=4, n_group=1, topk_group=1, num_experts_per_tok=1,
                      routed_scaling_factor=1.0)
    gate = LLaDA2Gate(cfg)
    with torch.no_grad():
        gate.weight.zero_()  # every score sigmoid(0) = 0.5
        gate.expert_bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0]))
        experts, weights = gate(torch.randn(3, 16))
    assert experts.flatten().tolist() == [2, 2, 2]
    assert weights.flatten().tolist() == [0.5, 0.5, 0.5]  # the unbiased score, top-1: not normalised


# ----------------------------------------------------------------------------------------------
# Block-causal attention
# ----------------------------------------------------------------------------------------------


def test_block_causal_mask_is_the_official_block_mask():
    for length, block in ((12, 4), (10, 4), (7, 3), (5, 1), (6, 8)):
        mask = block_causal_mask(torch.arange(length)[None], block)
        assert torch.equal(mask, block_mask_4d(length, block) == 0), (length, block)
    # Padding keys are hidden, but every token sees itself.
    padding = torch.tensor([[0, 0, 1, 1, 1, 1]])
    mask = block_causal_mask(torch.tensor([[0, 0, 0, 1, 2, 3]]), 2, padding)[0, 0]
    assert mask[:, :2].tolist() == [[True, False]] + [[False, True]] + [[False, False]] * 4
    assert mask[2:, 2:].tolist() == [[True, True, False, False], [True, True, False, False],
                                     [True, True, True, True], [True, True, True, True]]


def test_a_block_sees_itself_and_earlier_blocks_never_later_ones():
    model = official_model()
    ids = TENSORS["input_ids"][:1].clone()
    with torch.no_grad():
        ref = model(ids, block_length=BLOCK).logits
        later = ids.clone()
        later[0, 8:] = torch.tensor([3, 4, 5, 6])  # the last block changes
        out = model(later, block_length=BLOCK).logits
        torch.testing.assert_close(out[:, :8], ref[:, :8], atol=0, rtol=0)
        assert not torch.allclose(out[:, 8:], ref[:, 8:])
        earlier = ids.clone()
        earlier[0, 1] = (int(ids[0, 1]) + 1) % MASK  # the first block changes: every block sees it
        out = model(earlier, block_length=BLOCK).logits
        for b in range(3):
            assert not torch.allclose(out[:, b * BLOCK:(b + 1) * BLOCK], ref[:, b * BLOCK:(b + 1) * BLOCK])


@pytest.mark.parametrize("pad", [1, 3, 4])
def test_a_left_padded_row_gets_the_logits_it_gets_alone(pad):
    """With a 2-D padding mask, positions count real tokens and blocks follow the positions, so
    a left-padded row's real tokens get their unpadded logits (with and without blocks)."""
    model = official_model()
    ids = TENSORS["input_ids"][1:]
    padded = torch.cat([torch.full((1, pad), EOS), ids], dim=1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(ids)], dim=1)
    batch = torch.cat([padded, torch.cat([ids, ids[:, :pad]], dim=1)])
    batch_mask = torch.cat([mask, torch.ones_like(mask)])
    with torch.no_grad():
        for block in (BLOCK, None):
            alone = model(ids, block_length=block).logits
            out = model(batch, attention_mask=batch_mask, block_length=block).logits
            close(out[:1, pad:], alone)
            assert out.isfinite().all()
    close(alone, TENSORS["logits_full"][1:])


def test_mask_arguments_that_do_not_fit_are_refused():
    model = official_model()
    ids = TENSORS["input_ids"]
    with pytest.raises(ValueError, match="block_length with a 4-D attention_mask"):
        model(ids, attention_mask=block_mask_4d(12, BLOCK), block_length=BLOCK)
    with pytest.raises(ValueError, match="3 dimensions"):
        model(ids, attention_mask=torch.ones(2, 12, 12))
    with pytest.raises(ValueError, match="block_length=0"):
        model(ids, block_length=0)
    with pytest.raises(TypeError, match="use_cache=True"):
        model(ids, use_cache=True)
    assert model(ids, use_cache=False, output_attentions=None).logits.shape == (2, 12, 64)


# ----------------------------------------------------------------------------------------------
# Config: official keys, refusals
# ----------------------------------------------------------------------------------------------


def official_config_json(**over) -> dict:
    """A config.json laid out as LLaDA2.0-mini's (its keys, remote-code auto_map), tiny sizes."""
    d = {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                     "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                     "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "model_type": "llada2_moe", "dtype": "float32", "transformers_version": "4.56.1",
        "embedding_dropout": 0.0, "attention_dropout": 0.0, "output_dropout": 0.0,
        "initializer_range": 0.02, "max_window_layers": 28, "sliding_window": 4096,
        "use_sliding_window": False, "rope_scaling": None, "norm_head": False,
        "norm_topk_prob": True, "score_function": "sigmoid", "router_dtype": "fp32",
        "moe_router_enable_expert_bias": True, "output_router_logits": False, "use_cache": False,
        **{k: v for k, v in META["config"].items()},
    }
    d.update(over)
    return d


def test_the_official_config_keys_load_and_defaults_are_llada2_mini():
    cfg = LLaDA2Config(**{k: v for k, v in official_config_json().items() if k != "model_type"})
    assert cfg.auto_map["AutoModelForCausalLM"] == "modeling_llada2_moe.LLaDA2MoeModelLM"
    assert (cfg.head_dim, cfg.rotary_dim, cfg.num_key_value_heads) == (16, 8, 2)
    mini = LLaDA2Config()
    assert (mini.hidden_size, mini.num_hidden_layers, mini.num_experts, mini.num_experts_per_tok,
            mini.vocab_size, mini.mask_token_id, mini.eos_token_id) == \
        (2048, 20, 256, 8, 157184, 156895, 156892)
    assert LLaDA2Config(num_key_value_heads=0).num_key_value_heads == 16  # 0: the query heads
    assert LLaDA2Config(head_dim=None, hidden_size=1024).head_dim == 64


@pytest.mark.parametrize("key,value", [
    ("num_nextn_predict_layers", 1), ("use_sliding_window", True),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}), ("score_function", "softmax"),
    ("norm_topk_prob", False), ("norm_head", True), ("router_dtype", "bf16"),
])
def test_unbuilt_variants_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        tiny_config(**{key: value})


@pytest.mark.parametrize("overrides,match", [
    (dict(n_group=3), "n_group"), (dict(n_group=8), "fewer than 2 experts"),
    (dict(topk_group=5), "topk_group"), (dict(num_experts_per_tok=5), "num_experts_per_tok"),
    (dict(num_key_value_heads=3), "num_key_value_heads"), (dict(partial_rotary_factor=0.1875), "rotary"),
    (dict(hidden_act="nope"), "hidden_act"), (dict(moe_intermediate_size=None), "moe_intermediate_size"),
])
def test_inconsistent_shapes_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_default_rope_scaling_entry_is_accepted():
    assert tiny_config(rope_scaling={"rope_type": "default"}).rope_scaling == {"rope_type": "default"}


# ----------------------------------------------------------------------------------------------
# transformers: Auto classes, from_pretrained, tied embeddings
# ----------------------------------------------------------------------------------------------


def test_an_official_checkpoint_directory_loads_through_the_auto_classes(tmp_path):
    """A directory laid out as the checkpoints are (config.json with the remote-code auto_map,
    model.safetensors under the official names, no modeling file): the Auto classes give the
    native model, without trust_remote_code, and it computes the official logits."""
    (tmp_path / "config.json").write_text(json.dumps(official_config_json(), indent=1))
    save_file(WEIGHTS, tmp_path / "model.safetensors", metadata={"format": "pt"})
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, LLaDA2Config) and cfg.mask_token_id == 156895  # not in config.json
    with torch.no_grad():
        for loader in (AutoModelForCausalLM, AutoModel, AutoModelForMaskedLM, LLaDA2ModelLM):
            model = loader.from_pretrained(tmp_path)
            assert type(model) is LLaDA2ModelLM and not model.training
            close(model(TENSORS["input_ids"], block_length=BLOCK).logits, TENSORS["logits_block"])


def test_save_and_load_round_trip(tmp_path):
    model = official_model()
    model.save_pretrained(tmp_path)
    loaded = LLaDA2ModelLM.from_pretrained(tmp_path)
    assert loaded.config.mask_token_id == MASK
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert set(sd) == set(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_tied_word_embeddings(tmp_path):
    model = LLaDA2ModelLM(tiny_config(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.word_embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = LLaDA2ModelLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.word_embeddings.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------


def test_the_forward_compiles_as_one_graph():
    """fullgraph=True: no graph break (the routing's top-k, scatter and the dense experts, the
    block mask built from block_length, the partial RoPE); the compiled logits are the eager ones."""
    model = official_model()
    ids = TENSORS["input_ids"]
    compiled = torch.compile(model.forward_hidden, fullgraph=True, backend="aot_eager")
    with torch.no_grad():  # with a padding mask: test_the_cached_forward_compiles_as_one_graph
        close(model.lm_head_logits(compiled(ids, None, None, BLOCK)), TENSORS["logits_block"])


def test_bfloat16_forward_follows_float32():
    model = official_model()
    with torch.no_grad():
        low = model.to(torch.bfloat16)(TENSORS["input_ids"], block_length=BLOCK).logits
    assert low.dtype == torch.bfloat16
    reference = TENSORS["logits_block"]
    agree = (low.float().argmax(-1) == reference.argmax(-1)).float().mean()
    assert agree >= 0.8 and F.cosine_similarity(low.float().flatten(), reference.flatten(), dim=0) > 0.99


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def test_llada2_presets():
    """tiny-llada2 builds (zeroed routing bias, ones in the norms, a finite block-causal forward);
    llada2-mini is LLaDA2.0-mini's config (its layout is checked against the official one above;
    it is never built here). Neither is offered where optimize() decodes (available_presets)."""
    model = build_model("tiny-llada2", seed=1)
    assert type(model) is LLaDA2ModelLM and not model.training
    assert all(torch.equal(b, torch.zeros_like(b)) for _, b in model.named_buffers())
    norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert len(norms) == 9 and all(torch.equal(p, torch.ones_like(p)) for p in norms)
    assert torch.equal(build_model("tiny-llada2", seed=1).lm_head.weight, model.lm_head.weight)
    cfg = model.config
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.vocab_size) == (126, 125, 128)
    assert [type(layer.mlp).__name__ for layer in model.model.layers] == ["LLaDA2MLP", "LLaDA2SparseMoeBlock"]
    with torch.no_grad():
        assert model(torch.randint(0, 125, (2, 8)), block_length=4).logits.isfinite().all()
    mini = get_config("llada2-mini")
    layout = META["state_dict_layouts"]["llada2_mini"]["config"]
    assert all(getattr(mini, key) == value for key, value in layout.items())
    assert (mini.mask_token_id, mini.eos_token_id) == (156895, 156892)
    assert not set(LLADA2_PRESETS) & set(available_presets())


def test_random_init_of_a_fresh_model():
    """`LLaDA2ModelLM(config)` (training from scratch), through transformers' `_init_weights`:
    linear, embedding and router weights ~ N(0, initializer_range), biases 0, norm weights 1,
    routing biases 0 (the initialisation it shares with LLaDA, plus the router's)."""
    torch.manual_seed(0)
    model = LLaDA2ModelLM(tiny_config(initializer_range=0.1))
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif p.numel() >= 64:  # enough draws for the spread
            assert 0.07 < p.std().item() < 0.13, (name, p.std().item())
    assert all(torch.equal(b, torch.zeros_like(b)) for n, b in model.named_buffers()
               if n.endswith("expert_bias"))


def test_the_docs_example_runs(capsys):
    import re

    doc = (Path(__file__).parents[2] / "docs" / "llada2.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[0]  # the model; [1] decodes (test_llada2_decode)
    exec(compile(code, "docs/llada2.md", "exec"), {})
    assert capsys.readouterr().out == "torch.Size([1, 8, 128])\n"
