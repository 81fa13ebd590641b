"""models/remote.py: the official remote-code LLaDA (trust_remote_code) adopted into the project's
LLaDA on its own parameters, checked against logits and a Fast-dLLM decode recorded from the
official code (tests/fixtures/llada_remote_tiny.*)."""

from __future__ import annotations

import logging

import pytest
import torch
from llada_remote import LLaDAConfig, LLaDAModelLM, fixture_tensors, from_fixture
from torch import nn

import credit_compile as cc
from credit_compile.models import LLaDAModelLM as NativeLLaDA
from credit_compile.models.remote import adopt_remote_llada, is_remote_llada

FIXTURE = fixture_tensors()
# Recorded on another CPU: float32 matmuls sum in another order there (logits up to 15 differ
# by up to 1.5e-5 on an AMD EPYC); the in-process comparisons below stay at 1e-5.
RECORDED = dict(atol=1e-4, rtol=1e-5)
MASK = 126
DECODE = dict(gen_length=16, block_length=8)


def test_stand_in_reproduces_the_official_logits():
    """The stand-in computes what the official code computed (recorded in the fixture), and,
    like the official code on transformers 5, needs `use_cache` passed."""
    remote = from_fixture()
    with torch.no_grad():
        logits = remote(FIXTURE["input_ids"], use_cache=False).logits
    torch.testing.assert_close(logits, FIXTURE["logits"], **RECORDED)
    with pytest.raises(AttributeError, match="use_cache"):
        remote(FIXTURE["input_ids"])


def test_adopted_model_shares_the_parameters_and_gives_the_official_logits(caplog):
    remote = from_fixture()
    with caplog.at_level(logging.INFO, logger="credit_compile"):
        native = adopt_remote_llada(remote)
    assert isinstance(native, NativeLLaDA)
    assert sum("remote-code LLaDAModelLM" in r.message for r in caplog.records) == 1
    own = dict(remote.named_parameters())
    for name, parameter in native.named_parameters():
        assert parameter is own[name], name  # the same tensors: no copy, no extra memory
    assert not any(p.is_meta for p in native.parameters())
    with torch.no_grad():
        logits = native(FIXTURE["input_ids"]).logits
        torch.testing.assert_close(logits, FIXTURE["logits"], **RECORDED)
        # The user's module still works, and sees a change made through the adopted one.
        native.model.transformer.ln_f.weight.mul_(2)
        torch.testing.assert_close(remote(FIXTURE["input_ids"], use_cache=False).logits,
                                   native(FIXTURE["input_ids"]).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.cheap_compile
def test_optimized_remote_model_decodes_as_fastdllm_did_on_the_official_code():
    """The model card's model through optimize(), compiled as one graph: Fast-dLLM's own
    threshold decode of the official code (recorded), token for token and step for step.
    Adoption happens before the compile: Inductor's code for the native model's threshold step is
    proven in test_end_to_end."""
    remote = from_fixture()
    fast = cc.optimize(remote, strategy="threshold", tau=0.9, **DECODE)
    out = fast.generate(FIXTURE["prompt"])
    assert isinstance(fast.model, NativeLLaDA)
    assert torch.equal(out.generated, FIXTURE["fastdllm_threshold"])
    assert out.nfe == int(FIXTURE["fastdllm_nfe"])
    assert fast.last_stats["runner"] == "compiled"


@pytest.mark.parametrize("strategy", ["credit", "llada"])
def test_adopted_decode_equals_the_remote_models_own_reference(strategy):
    """Eagerly (compile=False: the compiled path is proven equal to the eager one elsewhere),
    where the remote code is correct: unpadded prompts."""
    remote = from_fixture()
    prompts = torch.randint(2, 120, (2, 8), generator=torch.Generator().manual_seed(1))
    ref = cc.generate_reference(remote, prompts, strategy=strategy, **DECODE)
    out = cc.optimize(remote, strategy=strategy, compile=False, **DECODE).generate(prompts)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe


def test_adopted_model_honours_padding_and_takes_the_kv_caches():
    """What the remote code lacks: a left-padded batch decodes each row as alone (the reference
    refuses it for the remote model, which ignores the mask), and both Fast-dLLM caches run,
    equal to the reference of the native model they run on."""
    remote = from_fixture()
    prompts = torch.randint(2, 120, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(prompts)
    mask[1, :3] = 0
    with pytest.raises(ValueError, match="issue 90"):
        cc.generate_reference(remote, prompts, mask, **DECODE)
    fast = cc.optimize(remote, compile=False, **DECODE)
    batch = fast.generate(prompts, mask)
    alone = fast.generate(prompts[1:, 3:])
    assert torch.equal(batch.generated[1:], alone.generated)
    for cache in ("prompt", "dual"):
        out = fast.generate(prompts, kv_cache=cache)
        ref = cc.generate_reference(fast.model, prompts, kv_cache=cache, **DECODE)
        assert torch.equal(out.sequences, ref.sequences), cache


def test_dtype_casts_the_shared_weights_in_place():
    remote = from_fixture()
    fast = cc.optimize(remote, dtype="bfloat16", compile=False, **DECODE)
    assert remote.model.transformer.wte.weight.dtype == torch.bfloat16
    assert fast.model.model.transformer.wte.weight is remote.model.transformer.wte.weight


def test_recognised_by_class_module_tree_and_model_type():
    assert is_remote_llada(from_fixture())
    assert not is_remote_llada(NativeLLaDA(NativeLLaDA.config_class(
        d_model=16, n_heads=2, n_layers=1, mlp_hidden_size=32, vocab_size=32, embedding_size=32,
        mask_token_id=31)))

    class LLaDAModelLM(nn.Module):  # the name alone: another model, decoded as a generic one
        pass

    assert not is_remote_llada(LLaDAModelLM())


def _unchanged(remote):
    return {name: p for name, p in remote.named_parameters()}


def test_variant_whose_config_does_not_map_is_refused():
    remote = from_fixture()
    remote.config.block_type = "sequential"
    before = _unchanged(remote)
    with pytest.raises(ValueError, match="config does not map.*block_type='sequential'"):
        cc.optimize(remote, **DECODE)
    assert _unchanged(remote) == before


def test_variant_whose_weights_do_not_map_is_refused_naming_them():
    remote = from_fixture()
    remote.model.transformer.update({"wpe": nn.Embedding(256, 64)})
    with pytest.raises(ValueError, match=r"not used by credit_compile's LLaDA: "
                                         r"model\.transformer\.wpe\.weight"):
        cc.optimize(remote, **DECODE)
    remote = from_fixture()
    remote.model.transformer.blocks[1].up_proj = nn.Linear(64, 80, bias=False)
    with pytest.raises(ValueError, match=r"of another shape: model\.transformer\.blocks\.1\."
                                         r"up_proj\.weight \(80, 64\) \(expected \(96, 64\)\)"):
        cc.optimize(remote, **DECODE)
    remote = from_fixture()
    del remote.model.transformer.blocks[0].q_proj
    with pytest.raises(ValueError, match=r"missing: model\.transformer\.blocks\.0\.q_proj"):
        cc.optimize(remote, **DECODE)


def test_tied_variant_is_adopted():
    """weight_tying: the official code ties `ff_out` to `wte` (one tensor under two names)."""
    config = LLaDAConfig(d_model=32, n_heads=2, n_layers=1, mlp_hidden_size=48, vocab_size=64,
                         embedding_size=64, mask_token_id=63, weight_tying=True)
    remote = LLaDAModelLM(config).eval()
    remote.model.transformer.ff_out = remote.model.transformer.wte
    native = adopt_remote_llada(remote)
    ids = torch.randint(0, 60, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, remote(ids, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.cheap_compile
def test_verify_of_the_remote_model():
    report = cc.verify(from_fixture(), FIXTURE["prompt"], strategy="threshold", **DECODE)
    assert report.ok and report.runner == "compiled"


def test_padded_batch_refused_for_a_model_that_ignores_the_mask():
    remote = from_fixture()
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="issue 90"):
        cc.generate_reference(remote, torch.randint(0, 30, (2, 4)), mask, gen_length=8, block_length=4)
    # Unpadded batches are fine for it.
    out = cc.generate_reference(remote, torch.randint(0, 30, (2, 4)), torch.ones(2, 4),
                                gen_length=8, block_length=4)
    assert (out.generated != remote.config.mask_token_id).all()
