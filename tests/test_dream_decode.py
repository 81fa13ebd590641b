"""Dream decoded by `optimize()` and the eager reference: logits shifted by one (the adapter's
`ModelInfo.shifted_logits`), Fast-dLLM's threshold decoding's recorded tokens, padded batches,
and the caches that do not apply refused."""

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
def dream() -> DreamModel:
    """tiny-dream with weights of std 0.5: confidences far apart, so compiled and eager kernels'
    rounding never flips a decision (docs/architecture.md, Exactness)."""
    return build_model(get_config("tiny-dream", initializer_range=0.5), seed=1)


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


def test_the_compiled_step_equals_the_reference():
    """Inductor's code on a padded batch."""
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


@pytest.mark.parametrize("kv_cache", ["prompt", "dual", "block"])
def test_kv_caches_are_refused_naming_the_fix(kv_cache):
    """A cached step runs part of the canvas, without the row each shifted position reads."""
    match = "shifted logits.*use kv_cache='none'"
    with pytest.raises(ValueError, match=match):
        cc.optimize(dream(), **decode(kv_cache=kv_cache))
    with pytest.raises(ValueError, match=match):
        reference.generate(dream(), prompt(5), **decode(kv_cache=kv_cache))


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
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    exec(compile(code, "docs/dream.md", "exec"), {})
    assert capsys.readouterr().out == "torch.Size([1, 13])\n"
