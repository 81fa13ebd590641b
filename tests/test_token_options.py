"""`suppress_tokens` and `commit_last_tokens`: LLaDA's `logits_eos_inf` and
`confidence_eos_eot_inf`, for any ids. The decisions themselves are checked against the spec
oracle (tests/test_spec_oracle.py); here: validation, their effect, and every fast path."""

from __future__ import annotations

import pytest
import torch
from toy_models import ContextMixModel, layered_model, token_prompts

import credit_compile as cc
from credit_compile.passes.base import pass_count


@pytest.mark.parametrize("given, stored", [
    ([3, 5], (3, 5)), (7, (7,)), ((2,), (2,)), (None, None)])
def test_ids_are_stored_as_a_tuple(given, stored):
    assert cc.DecodeConfig(suppress_tokens=given).suppress_tokens == stored
    assert cc.DecodeConfig(strategy="llada", commit_last_tokens=given).commit_last_tokens == stored


@pytest.mark.parametrize("options, says", [
    (dict(suppress_tokens=()), r"suppress_tokens=\(\): use a token id, a tuple or list"),
    (dict(suppress_tokens=(-1,)), r"suppress_tokens=\(-1,\): use a token id"),
    (dict(suppress_tokens=True), r"suppress_tokens=True: use a token id"),
    (dict(commit_last_tokens=3), r"commit_last_tokens with strategy='credit'.*use suppress_tokens"),
    (dict(strategy="llada", remasking="random", commit_last_tokens=3),
     r"remasking='random': it orders the commits of the 'llada' sampler's low-confidence"),
])
def test_bad_values_are_refused_naming_the_fix(options, says):
    with pytest.raises(ValueError, match=says):
        cc.DecodeConfig(**options)


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


@pytest.mark.parametrize("strategy", ["credit", "threshold", "factor", "llada"])
def test_suppressed_tokens_never_appear(strategy):
    # The tokens the unsuppressed decode chose: suppressed, none of them appears, so the
    # decode changed.
    model = layered_model(1, seed=2)
    ids, mask = token_prompts(2, 5, seed=1)
    decode = dict(gen_length=8, block_length=4, strategy=strategy)
    plain = cc.generate_reference(model, ids, mask, **decode).generated
    chosen = tuple(sorted(set(plain.flatten().tolist())))
    out = cc.generate_reference(model, ids, mask, suppress_tokens=chosen, **decode).generated
    assert not set(out.flatten().tolist()) & set(chosen)


def test_commit_last_proposals_score_zero():
    # A commit of a commit-last id scores 0 (its step committed it as the count's last
    # resort); the others score above 0. Which positions commit when: the spec oracle.
    model = layered_model(1, seed=2)
    ids, mask = token_prompts(2, 5, seed=1)
    decode = dict(gen_length=8, block_length=4, strategy="llada")
    plain = cc.generate_reference(model, ids, mask, **decode).generated
    late = int(plain[0, 0])  # a token the plain decode commits
    out = cc.generate_reference(model, ids, mask, commit_last_tokens=late, trace=True, **decode)
    assert not torch.equal(out.generated, plain)
    scores = [(int(out.sequences[row, p]) == late, c) for step in out.trace
              for row in range(2) for p, c in zip(step.committed[row], step.confidence[row],
                                                  strict=True)]
    assert any(is_late for is_late, _ in scores)
    assert all((c == 0.0) == is_late for is_late, c in scores)


@pytest.mark.parametrize("config, commit_last", [
    (dict(strategy="credit", credit_layout="dense"), False),  # through the credit-fusion pass
    pytest.param(dict(strategy="credit", kv_cache="prompt"), False,  # the sparse op, cached
                 marks=pytest.mark.slow),  # the min-versions stack leaves it out (CI time)
    (dict(strategy="llada", cfg_scale=1.5), True),
])
def test_the_optimized_model_equals_the_reference(config, commit_last):
    model = layered_model(1, seed=1)
    ids, mask = token_prompts(3, 6, seed=2)
    decode = dict(config, gen_length=8, block_length=4)
    plain = cc.generate_reference(model, ids, mask, **decode).generated
    # Tokens the plain decode chose: options on them change the decode.
    chosen = sorted(set(plain[:, :2].flatten().tolist()))
    if commit_last:  # the first chosen token that, committed last, changes the decode
        late = next(token for token in chosen if not torch.equal(cc.generate_reference(
            model, ids, mask, commit_last_tokens=token, **decode).generated, plain))
        decode["commit_last_tokens"] = late
        chosen.remove(late)
    suppress = tuple(chosen)
    fusions = pass_count("credit_fusion")
    ref = cc.generate_reference(model, ids, mask, suppress_tokens=suppress, **decode)
    out = cc.optimize(model, suppress_tokens=suppress, **decode).generate(ids, mask)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    assert not torch.equal(ref.generated, plain)
    if config.get("credit_layout") == "dense":
        assert pass_count("credit_fusion") == fusions + 1  # the suppression does not hide it
