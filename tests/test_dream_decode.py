"""Dream decoded by `optimize()` and the eager reference: logits shifted by one (the adapter's
`ModelInfo.shifted_logits`), Fast-dLLM's threshold decoding's and Dream's own samplers' recorded
tokens, padded batches, and Fast-dLLM's approximate KV caches (the block cache refused)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import credit_compile as cc
from credit_compile import reference
from credit_compile.adapters import describe_model
from credit_compile.generation_setup import setup_generation
from credit_compile.models import DreamConfig, DreamModel, build_model, get_config

FIXTURES = Path(__file__).parent / "fixtures"
META = json.loads((FIXTURES / "dream_tiny.json").read_text())
TENSORS = load_file(FIXTURES / "dream_tiny.safetensors")
MASK = 126  # tiny-dream's mask token
EOS = 125


@functools.cache
def official() -> DreamModel:
    """The fixture's official weights in the native model."""
    model = DreamModel(DreamConfig(**META["config"])).eval()
    model.load_state_dict({k: v for k, v in TENSORS.items() if k.startswith(("model.", "lm_head."))})
    return model


@functools.cache
def dream(layers: int = 2) -> DreamModel:
    """tiny-dream with weights of std 0.5: confidences far apart, so compiled and eager kernels'
    rounding never flips a decision (docs/architecture.md, Exactness). The Inductor tests take
    one layer: a quarter fewer kernels to build, the layers' caches proven on two elsewhere."""
    return build_model(get_config("tiny-dream", initializer_range=0.5, num_hidden_layers=layers),
                       seed=1)


def prompt(length: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, EOS, (batch, length), generator=torch.Generator().manual_seed(seed))


def padded_pair(length: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows: a prompt of `length`, and one of `length - pad` left-padded by `pad`."""
    ids = torch.cat([prompt(length, 1), prompt(length, 2)])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    ids[1, :pad] = EOS
    return ids, mask


def decode(**overrides) -> dict:
    return {"gen_length": 8, "block_length": 4, **overrides}


def test_the_decoders_read_position_i_from_the_row_before_it():
    """Dream is described as shifted, and the one forward every decoder calls returns row i-1 of
    the model's logits at row i (row 0 keeps its own), as Dream's generation code does."""
    model, ids = official(), TENSORS["input_ids"][:1]
    assert describe_model(model).shifted_logits and describe_model(model).kind == "dream"
    assert not describe_model(build_model("tiny")).shifted_logits
    setup = setup_generation(model, ids[:, :6], None, cc.DecodeConfig(**decode()))
    with torch.no_grad():
        logits = model(ids).logits
        shifted = setup.forward(ids, None, None)
    assert torch.equal(shifted, torch.cat([logits[:, :1], logits[:, :-1]], 1))


@pytest.mark.parametrize("name", sorted(META["threshold"]))
def test_threshold_decoding_gives_fast_dllm_tokens(name):
    """Fast-dLLM's threshold decoding on Dream (parallel decoding without a cache, steps=1: the
    best masked position and every one at or above the threshold, the generation one block),
    recorded from its code: the reference's strategy="threshold" gives its tokens."""
    setting = META["threshold"][name]
    ids = TENSORS["prompt"]
    out = reference.generate(official(), ids, strategy="threshold", tau=setting["tau"],
                             gen_length=setting["gen_length"], block_length=setting["gen_length"])
    assert out.sequences.tolist() == TENSORS[f"threshold_{name}"].tolist()


def dream_sampler(name: str) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """A recorded `diffusion_generate` setting: its prompts, their mask, the strategy's options."""
    setting = META["dream"][name]
    length = setting["gen_length"]
    options = dict(strategy="dream", dream_alg=setting["alg"], steps=setting["steps"],
                   dream_eps=setting["eps"], gen_length=length, block_length=length,
                   top_k=setting.get("top_k"), top_p=setting.get("top_p"))
    if setting.get("padded"):
        return TENSORS["input_ids"][:, :8], TENSORS["attention_mask"][:, :8], options
    return TENSORS["prompt"], None, options


@pytest.mark.parametrize("name", sorted(META["dream"]))
def test_the_dream_strategy_gives_the_official_samplers_tokens(name):
    """Dream's own `diffusion_generate` (greedy, the most confident committed; one block, its
    time schedule's counts), recorded from its code for each alg, another step count, a padded
    batch and the top_k / top_p filters (which change the confidences at temperature 0): the
    reference's strategy="dream" gives its tokens in `steps` forwards."""
    ids, mask, options = dream_sampler(name)
    out = reference.generate(official(), ids, mask, **options)
    assert out.sequences.tolist() == TENSORS[f"dream_{name}"].tolist()
    assert out.nfe == options["steps"]


def test_the_compiled_dream_strategy_equals_the_reference():
    """Inductor's code of Dream's sampler (the schedule's counts, the filters, the entropy, the
    ranking) on a padded batch, two blocks."""
    model = dream(layers=1)
    ids, mask = padded_pair(6, 2)
    config = decode(strategy="dream", steps=4, top_p=0.95)
    out = cc.optimize(model, **config).generate(ids, mask)
    expected = reference.generate(model, ids, mask, **config)
    assert out.stats["runner"] == "compiled"
    assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe == 4


@pytest.mark.cheap_compile
@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_optimized_dream_strategy_equals_the_reference(alg):
    """Each alg on a padded batch, one block and two; for entropy also prompt buckets, early
    stop and the filters: token for token and in NFE."""
    model = dream()
    fast = cc.optimize(model, **decode(strategy="dream", dream_alg=alg, steps=4))
    cases = [(*padded_pair(6, 2), {}), (*padded_pair(5, 1), {"block_length": 8, "steps": 3})]
    if alg == "entropy":
        cases += [(prompt(5, seed=3, batch=2), None, {"prompt_bucket": 4}),
                  (prompt(6, seed=4), None, {"early_stop": True, "eos_token_id": EOS}),
                  (prompt(6, seed=5), None, {"top_k": 4, "top_p": 0.9, "dream_eps": 0.1})]
    for ids, mask, extra in cases:
        out = fast.generate(ids, mask, **extra)
        expected = reference.generate(model, ids, mask, config=fast.decode_config, **extra)
        assert out.sequences.tolist() == expected.sequences.tolist(), (alg, extra)
        assert out.nfe == expected.nfe


@pytest.mark.cheap_compile
def test_optimized_dream_sampling_equals_the_reference_with_the_same_seed():
    """temperature with top_k / top_p, and alg_temp's draw of the commits: the same draws as
    the reference, step for step, on a padded batch; another seed draws other tokens."""
    model = dream()
    config = decode(strategy="dream", steps=4, temperature=0.8, top_k=20, top_p=0.9,
                    dream_alg_temp=0.5)
    fast = cc.optimize(model, **config)
    ids, mask = padded_pair(6, 2)
    outs = []
    for seed in (0, 1):
        out = fast.generate(ids, mask, seed=seed)
        expected = reference.generate(model, ids, mask, seed=seed, **config)
        assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe
        outs.append(out.generated.tolist())
    assert outs[0] != outs[1]


@pytest.mark.cheap_compile
@pytest.mark.parametrize("kv_cache", ["prompt", "dual"])
def test_optimized_cached_dream_strategy_equals_the_reference(kv_cache):
    """Fast-dLLM's approximate caches under Dream's sampler (fixed steps per block), a padded
    batch: token for token and in NFE."""
    model = dream()
    config = decode(strategy="dream", steps=4, kv_cache=kv_cache)
    ids, mask = padded_pair(6, 2)
    out = cc.optimize(model, **config).generate(ids, mask)
    expected = reference.generate(model, ids, mask, **config)
    assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe


@pytest.mark.cheap_compile
def test_the_optimized_dream_strategy_gives_the_official_samplers_tokens():
    ids, mask, options = dream_sampler("entropy_padded")
    out = cc.optimize(official(), **options).generate(ids, mask)
    assert out.sequences.tolist() == TENSORS["dream_entropy_padded"].tolist()


@pytest.mark.cheap_compile
def test_the_compiled_step_equals_the_reference():
    """The threshold step on a padded batch (Inductor's code for this graph is the Dream
    strategy's above with the op that the LLaDA tests compile)."""
    model = dream()
    ids, mask = padded_pair(6, 2)
    out = cc.optimize(model, **decode(strategy="threshold")).generate(ids, mask)
    expected = reference.generate(model, ids, mask, **decode(strategy="threshold"))
    assert out.stats["runner"] == "compiled"
    assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe


@pytest.mark.cheap_compile
def test_the_optimized_threshold_decoding_gives_fast_dllm_tokens():
    setting = META["threshold"]["tau09"]
    length = setting["gen_length"]
    fast = cc.optimize(official(), strategy="threshold", tau=setting["tau"], gen_length=length,
                       block_length=length)
    assert fast.generate(TENSORS["prompt"]).sequences.tolist() == TENSORS["threshold_tau09"].tolist()


@pytest.mark.cheap_compile
@pytest.mark.parametrize("strategy", ["credit", "threshold", "llada"])
def test_optimized_generate_equals_the_reference(strategy):
    """A padded batch for every strategy; for credit also prompt buckets (positions counted over
    real tokens) and early stop: token for token and in NFE."""
    model = dream()
    config = decode(strategy=strategy)
    fast = cc.optimize(model, **config)
    cases = [(*padded_pair(6, 2), {})]
    if strategy == "credit":
        cases += [(prompt(5, seed=3, batch=2), None, {"prompt_bucket": 4}),
                  (prompt(6, seed=4), None, {"early_stop": True})]
    for ids, mask, extra in cases:
        out = fast.generate(ids, mask, **extra)
        expected = reference.generate(model, ids, mask, **config, **extra)
        assert out.sequences.tolist() == expected.sequences.tolist(), (strategy, extra)
        assert out.nfe == expected.nfe


@pytest.mark.cheap_compile
def test_the_step_is_one_graph_whose_lm_head_runs_on_the_block():
    """No graph break (transformers' Qwen2, the mask built in the graph, the shift), and the LM
    head runs on the block's rows: BlockSlicedLMHead moves the shift's row gather, then the
    block's slice, before it (two rewrites)."""
    from torch._dynamo.utils import counters

    from credit_compile.passes import pass_count

    torch._dynamo.reset()
    counters.clear()
    ids, mask = padded_pair(6, 2)
    cc.optimize(dream(), **decode(strategy="threshold")).generate(ids, mask)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert pass_count("block_sliced_lm_head") == 2


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(2, 9), pad=st.integers(1, 5), strategy=st.sampled_from(["credit", "llada"]))
def test_a_padded_row_decodes_as_it_does_alone(length, pad, strategy):
    """Padding masked, positions counted over real tokens: each row of a padded batch gets the
    tokens it gets alone."""
    model = dream()
    ids, mask = padded_pair(length + pad, pad)
    both = reference.generate(model, ids, mask, **decode(strategy=strategy))
    for row in range(2):
        alone = reference.generate(model, ids[row:row + 1, mask[row].bool()], **decode(strategy=strategy))
        assert both.generated[row].tolist() == alone.generated[0].tolist()


def test_the_block_cache_is_refused_naming_the_fix():
    """kv_cache="block" is the exact cache of a block-causal model; Dream attends to the whole
    canvas."""
    match = "kv_cache='block' is the exact cache of a block-causal model"
    with pytest.raises(ValueError, match=match):
        cc.optimize(dream(), **decode(kv_cache="block"))
    with pytest.raises(ValueError, match=match):
        reference.generate(dream(), prompt(5), **decode(kv_cache="block"))


@pytest.mark.parametrize("span", ["dual", "prompt"])
@pytest.mark.parametrize("block", [0, 1])
@torch.no_grad()
def test_a_cached_step_reads_the_row_before_its_span(span, block):
    """On an unchanged canvas (nothing stale) a cached step's logits are the uncached step's,
    the span's first position included: it reads the output of the position before the span
    (the prompt's last token, or the previous block's last), which the cached step also runs.
    Without that row its first position would get its own output, which differs (the prompt
    span's run holds the row before any later block)."""
    from credit_compile.decoding.step import block_logits

    ids, mask = padded_pair(6, 2)
    setup = setup_generation(dream(), ids, mask, cc.DecodeConfig(**decode(kv_cache=span)))
    setup.step_functions()  # allocates the cache
    state = setup.state
    state.x[:, state.gen_start:] = prompt(8, seed=7, batch=2)  # some tokens, some masks
    state.x[:, state.gen_start + 1::3] = MASK
    positions = state.block_start + block * state.block_length + state.block_offsets
    plain = block_logits(setup.forward, state, positions, 0.0)
    block_logits(setup.forward, state, positions, 0.0, "refresh", span, shifted_logits=True)
    cached = block_logits(setup.forward, state, positions, 0.0, "cached", span,
                          shifted_logits=True)
    torch.testing.assert_close(cached, plain, atol=2e-5 * plain.abs().max().item(), rtol=0)
    if span == "dual" or block == 0:
        unshifted = block_logits(setup.forward, state, positions, 0.0, "cached", span)
        assert not torch.allclose(unshifted[:, 0], plain[:, 0], atol=1e-2)


@pytest.mark.parametrize("kv_cache", ["prompt", "dual"])
def test_refreshing_the_cache_every_step_decodes_as_without_it(kv_cache):
    """Every step a refresh: the shifted logits of the whole canvas, as without a cache."""
    ids, mask = padded_pair(6, 2)
    for strategy in ("credit", "threshold"):
        plain = reference.generate(dream(), ids, mask, **decode(strategy=strategy))
        cached = reference.generate(dream(), ids, mask, **decode(
            strategy=strategy, kv_cache=kv_cache, kv_cache_refresh=1))
        assert cached.sequences.tolist() == plain.sequences.tolist()


@pytest.mark.cheap_compile
@pytest.mark.parametrize("kv_cache", ["prompt", "dual"])
@pytest.mark.parametrize("strategy", ["credit", "threshold"])
def test_optimized_cached_generate_equals_the_reference(strategy, kv_cache):
    """Fast-dLLM's approximate caches on a padded batch, token for token and in NFE; for credit
    with the dual cache also prompt buckets and early stop."""
    model = dream()
    config = decode(strategy=strategy, kv_cache=kv_cache)
    fast = cc.optimize(model, **config)
    cases = [(*padded_pair(6, 2), {})]
    if strategy == "credit" and kv_cache == "dual":
        cases += [(prompt(5, seed=3, batch=2), None, {"prompt_bucket": 4}),
                  (prompt(6, seed=4), None, {"early_stop": True, "eos_token_id": EOS})]
    for ids, mask, extra in cases:
        out = fast.generate(ids, mask, **extra)
        expected = reference.generate(model, ids, mask, **config, **extra)
        assert out.sequences.tolist() == expected.sequences.tolist(), (strategy, kv_cache, extra)
        assert out.nfe == expected.nfe


@pytest.mark.slow
def test_the_compiled_cached_step_equals_the_reference():
    """Inductor's code of the dual cache's steps (the refresh, and the block with the position
    before it) on a padded batch."""
    model = dream(layers=1)
    ids, mask = padded_pair(6, 2)
    config = decode(strategy="credit", kv_cache="dual")
    out = cc.optimize(model, **config).generate(ids, mask)
    expected = reference.generate(model, ids, mask, **config)
    assert out.stats["runner"] == "compiled"
    assert out.sequences.tolist() == expected.sequences.tolist() and out.nfe == expected.nfe


def test_the_official_remote_code_model_is_refused_naming_the_native_one():
    """A model of Dream's remote code (model_type "Dream", not this package's class) would be
    decoded unshifted and without its padding mask: refused by name."""

    class DreamModel(torch.nn.Module):  # the remote module's name
        def __init__(self):
            super().__init__()
            self.config = DreamConfig(**META["config"])

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            raise AssertionError("never run")

    with pytest.raises(ValueError, match="DreamModel.from_pretrained"):
        cc.optimize(DreamModel(), **decode())


def test_the_docs_example_runs(capsys):
    import re

    doc = (Path(__file__).parents[1] / "docs" / "dream.md").read_text()
    loading, dream_sampler = re.findall(r"```python\n(.*?)```", doc, re.S)
    exec(compile(loading, "docs/dream.md", "exec"), {})
    assert capsys.readouterr().out == "torch.Size([1, 13])\n"
    exec(compile(dream_sampler, "docs/dream.md", "exec"), {})
    assert capsys.readouterr().out == "4\n"
