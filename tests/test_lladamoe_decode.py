"""LLaDA-MoE decoded by `optimize()` and the eager reference: every strategy, padded batches, the
approximate KV caches, one layer compiled for all, Inductor's code and CUDA graphs."""

from __future__ import annotations

import functools

import pytest
import torch
from cuda_marks import needs_cuda

import credit_compile as cc
from credit_compile import reference
from credit_compile.adapters import describe_model
from credit_compile.models import build_model, get_config

MASK, EOS = 126, 125  # tiny-lladamoe's


@functools.cache
def lladamoe(device: str = "cpu", layers: int = 2) -> torch.nn.Module:
    """tiny-lladamoe with weights of std 0.5: confidences far apart, so compiled and eager
    kernels' rounding never flips a decision (docs/architecture.md, Exactness)."""
    config = get_config("tiny-lladamoe", initializer_range=0.5, num_hidden_layers=layers,
                        moe_layer_freq=[1] * layers)
    return build_model(config, seed=1, device=device)


def prompts(batch: int = 2, length: int = 6, padded: bool = True, device: str = "cpu"):
    ids = torch.randint(0, EOS, (batch, length), generator=torch.Generator().manual_seed(batch + length))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :length // 2] = 0
        ids[0, :length // 2] = EOS
    return ids.to(device), mask.to(device)


def decode(**overrides) -> dict:
    return {"gen_length": 8, "block_length": 4, **overrides}


def assert_same(out, expected):
    assert out.sequences.tolist() == expected.sequences.tolist()
    assert out.nfe == expected.nfe


def test_the_model_is_described_from_its_config():
    info = describe_model(lladamoe())
    assert (info.kind, info.mask_id, info.eos_ids, info.vocab_size) == ("lladamoe", MASK, (EOS,), 128)
    assert info.honours_attention_mask and info.takes_position_ids and info.own_bidirectional
    assert not info.block_causal and info.causal is False
    assert describe_model(build_model(get_config("tiny-lladamoe", mask_token_id=7))).mask_id == 7


def test_a_padded_row_decodes_as_it_does_alone():
    model = lladamoe()
    ids, mask = prompts()
    both = reference.generate(model, ids, mask, **decode(strategy="threshold"))
    alone = reference.generate(model, ids[:1, 3:], **decode(strategy="threshold"))
    assert both.generated[0].tolist() == alone.generated[0].tolist()


@pytest.mark.cheap_compile
@pytest.mark.parametrize("config", [
    dict(strategy="credit"),
    dict(strategy="threshold", kv_cache="dual"),
    dict(strategy="credit", kv_cache="prompt"),
    dict(strategy="credit", compile_layers_once=True),
], ids=["credit", "threshold-dual", "credit-prompt", "layers-once"])
def test_the_optimized_model_decodes_the_reference_tokens(config):
    """A padded batch (the strategies and the step around the model are LLaDA's, tested there)."""
    model, (ids, mask) = lladamoe(), prompts()
    out = cc.optimize(model, **decode(**config)).generate(ids, mask)
    assert out.stats["runner"] == "compiled"
    assert_same(out, reference.generate(model, ids, mask, **decode(**config)))


def test_the_inductor_step_equals_the_reference():
    """Inductor's generated code (the fused credit op and the passes, the MoE's kernels), on a
    padded batch; one layer, as Inductor's compile time grows with the layers."""
    model, (ids, mask) = lladamoe(layers=1), prompts()
    config = decode(strategy="credit")
    out = cc.optimize(model, **config).generate(ids, mask)
    assert out.stats["runner"] == "compiled"
    assert_same(out, reference.generate(model, ids, mask, **config))


@needs_cuda
@pytest.mark.parametrize("kv_cache", ["none", "dual"])
def test_cuda_graphs_decode_the_reference_tokens(kv_cache):
    model, (ids, mask) = lladamoe("cuda"), prompts(device="cuda")
    config = decode(strategy="credit", kv_cache=kv_cache)
    out = cc.optimize(model, cuda_graphs="on", **config).generate(ids, mask)
    assert out.stats["runner"] == "cuda_graph"
    assert_same(out, reference.generate(model, ids, mask, **config))


@pytest.mark.cheap_compile
def test_the_docs_example_runs(capsys):
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "llada_moe.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[1]
    exec(compile(code, "docs/llada_moe.md", "exec"), {})
    assert capsys.readouterr().out == "torch.Size([1, 13]) True\n"
