"""generation_setup.py: refusals made while a generation is set up (the KV cache's model, token
options and end-of-text ids against the vocabulary) and the seeding of sampling strategies."""

from __future__ import annotations

import pytest
import torch
from decoding_cases import GEOMETRIES, PROMPT, prompts, rows, run, seeds, toy
from hypothesis import given
from hypothesis import strategies as st
from toy_models import ContextMixModel, ScriptedModel

import credit_compile as cc


def test_other_models_are_refused_naming_the_fix():
    model = ContextMixModel(seed=1)
    ids = torch.randint(0, 30, (1, 4))
    match = r"kv_cache='dual' needs credit_compile's own LLaDA model.*from_pretrained"
    with pytest.raises(ValueError, match=match):
        cc.generate_reference(model, ids, gen_length=8, block_length=4, kv_cache="dual")
    with pytest.raises(ValueError, match=match):  # at optimize(), not at the first request
        cc.optimize(model, gen_length=8, block_length=4, kv_cache="dual")
    with pytest.raises(ValueError, match=match):  # and as a call's override
        cc.optimize(model, gen_length=8, block_length=4).generate(ids, kv_cache="dual")


def test_ids_outside_the_vocabulary_are_refused():
    model = ContextMixModel(vocab_size=40, mask_id=39)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="suppress_tokens holds 40, outside the model's "
                                         "vocabulary of 40 tokens"):
        cc.generate_reference(model, ids, gen_length=4, block_length=4, suppress_tokens=(1, 40))
    with pytest.raises(ValueError, match="commit_last_tokens holds 99"):
        cc.optimize(model, strategy="llada", gen_length=4, block_length=4,
                    commit_last_tokens=99, compile=False).generate(ids)


def test_suppressing_every_token_but_the_mask_is_refused():
    model = ContextMixModel(vocab_size=40, mask_id=39)
    ids = torch.tensor([[1, 2, 3]])
    decode = dict(gen_length=4, block_length=4)
    with pytest.raises(ValueError, match=r"suppress_tokens leaves no token to propose: with the "
                                         r"mask token 39 .* covers all 40 tokens"):
        cc.generate_reference(model, ids, suppress_tokens=tuple(range(39)), **decode)
    # One token left: every position takes it.
    out = cc.generate_reference(model, ids, suppress_tokens=tuple(range(38)), **decode)
    assert (out.generated == 38).all()


def test_early_stop_on_suppressed_end_of_text_alone_is_refused():
    model = ContextMixModel(vocab_size=40, mask_id=39)
    ids = torch.tensor([[1, 2, 3]])
    decode = dict(gen_length=4, block_length=4, early_stop=True)
    with pytest.raises(ValueError, match=r"early_stop=True ends a row on end-of-text \(7,\), "
                                         r"which suppress_tokens never lets be proposed"):
        cc.generate_reference(model, ids, eos_token_id=7, suppress_tokens=(5, 7), **decode)
    # One end-of-text id of two left: a row can still end.
    cc.generate_reference(model, ids, eos_token_id=(7, 8), suppress_tokens=7, **decode)


def test_early_stop_on_end_of_text_suppressed_exactly_is_refused():
    # suppress_tokens equal to the end-of-text ids (not only a superset of them) leaves a row no
    # way to end either: refused the same way.
    model = ContextMixModel(vocab_size=40, mask_id=39)
    ids = torch.tensor([[1, 2, 3]])
    decode = dict(gen_length=4, block_length=4, early_stop=True)
    for eos in (7, (7, 8)):
        with pytest.raises(ValueError, match=r"which suppress_tokens never lets be proposed"):
            cc.generate_reference(model, ids, eos_token_id=eos, suppress_tokens=eos, **decode)


def test_same_seed_same_output_for_sampling():
    model = ContextMixModel(sharpness=0.5)
    ids = torch.randint(0, 30, (2, 3))
    kw = dict(strategy="llada", gen_length=8, block_length=4, temperature=1.0, remasking="random")
    a = cc.generate_reference(model, ids, seed=7, **kw)
    b = cc.generate_reference(model, ids, seed=7, **kw)
    c = cc.generate_reference(model, ids, seed=8, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)


MASK = 3


@pytest.mark.parametrize("outside", [7, 4], ids=["beyond", "at the vocabulary size"])
def test_an_end_of_text_id_outside_the_vocabulary_is_refused(outside):
    with pytest.raises(ValueError, match=rf"eos_token_id {outside} is outside the model's "
                                         r"vocabulary of 4 tokens, so early_stop would never fire"):
        run("threshold", gen_length=4, block_length=2, early_stop=True, eos_token_id=(2, outside))


def test_a_negative_end_of_text_id_in_the_model_config_is_refused():
    # DecodeConfig refuses a negative eos_token_id, the model's config is not checked there: its
    # -1 can never be committed, so early_stop is refused rather than silently never firing.
    model = ScriptedModel([rows([9, 0, 0], [0, 9, 0])], mask_id=MASK)
    model.config.eos_token_id = -1
    with pytest.raises(ValueError, match=r"eos_token_id -1 is outside the model's vocabulary of "
                                         r"4 tokens, so early_stop would never fire"):
        cc.generate_reference(model, PROMPT, strategy="threshold", gen_length=2, block_length=2,
                              early_stop=True)


MIX_MASK = 39


@given(seed=seeds, other=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 5),
       geometry=st.sampled_from(GEOMETRIES), temperature=st.floats(0.1, 2.0),
       remasking=st.sampled_from(["random", "low_confidence"]), cfg_scale=st.sampled_from([0.0, 1.0]))
def test_same_seed_same_sample(seed, other, batch, prompt_len, geometry, temperature, remasking,
                               cfg_scale):
    model, ids = toy(seed), prompts(seed, batch, prompt_len)
    kw = dict(strategy="llada", gen_length=geometry[0], block_length=geometry[1],
              temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, seed=seed,
              trace=True)
    a = cc.generate_reference(model, ids, **kw)
    torch.manual_seed(other)  # the global RNG state before the call must not matter
    torch.rand(7)
    b = cc.generate_reference(model, ids, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert a.nfe == b.nfe
    assert [t.committed for t in a.trace] == [t.committed for t in b.trace]


def test_different_seeds_give_different_samples():
    model, ids = ContextMixModel(sharpness=0.3), prompts(0, 2, 3)
    kw = dict(strategy="llada", gen_length=16, block_length=8, temperature=1.0,
              remasking="random")
    outs = [cc.generate_reference(model, ids, seed=s, **kw).sequences for s in (1, 2, 3)]
    assert not torch.equal(outs[0], outs[1]) or not torch.equal(outs[0], outs[2])
    # Random remasking commits in a random order: the traces differ too.
    orders = [[t.committed for t in cc.generate_reference(model, ids, seed=s, trace=True, **kw).trace]
              for s in (1, 2)]
    assert orders[0] != orders[1]
