"""Fast-dLLM's factor-based parallel decoding (`strategy="factor"`): the commit rule on known
confidences, and the optimized path against the eager reference. The rule against a from-scratch
decoder: tests/test_spec_oracle.py."""

from __future__ import annotations

import pytest
import torch
from toy_models import ContextMixModel

import credit_compile as cc
from credit_compile.decoding.strategies import factor_commit_sync_free

MASK_ID = 39  # ContextMixModel's


@pytest.mark.parametrize("factor, committed", [
    # Bounds 1 - factor/(i+1) for i = 2, 3, 4: factor 1 -> 0.667, 0.75, 0.8.
    (1.0, [True, True, False, False]),   # 0.7 passes 0.667, 0.5 fails 0.75
    (0.1, [True, False, False, False]),  # 0.967: only the best, which always commits
    (2.0, [True, True, True, False]),    # 0.333, 0.5, 0.6: 0.5 passes, 0.2 fails
    (4.0, [True, True, True, True]),     # every bound below 0.2
])
def test_the_longest_run_of_confidences_above_their_bounds_commits(factor, committed):
    conf = torch.tensor([[0.5, 0.99, 0.2, 0.7]])  # sorted: 0.99, 0.7, 0.5, 0.2
    masked = torch.ones_like(conf, dtype=torch.bool)
    expected = torch.tensor([[committed[2], committed[0], committed[3], committed[1]]])
    assert torch.equal(factor_commit_sync_free(conf, masked, factor), expected)


def test_unmasked_positions_neither_commit_nor_count():
    # The unmasked 0.99 would be the best; among the masked, 0.6 fails its bound (0.667). A row
    # with nothing masked commits nothing.
    conf = torch.tensor([[0.95, 0.6, 0.99, 0.3], [0.9, 0.9, 0.9, 0.9]])
    masked = torch.tensor([[True, True, False, True], [False, False, False, False]])
    commit = factor_commit_sync_free(conf, masked, 1.0)
    assert torch.equal(commit, torch.tensor([[True, False, False, False], [False] * 4]))


def test_ties_commit_by_position():
    conf = torch.full((1, 4), 0.7)
    commit = factor_commit_sync_free(conf, torch.ones(1, 4, dtype=torch.bool), 1.0)
    assert torch.equal(commit, torch.tensor([[True, True, False, False]]))  # 0.7 < 0.75 third


def test_the_optimized_model_equals_the_reference_and_factor_is_part_of_the_step():
    model = ContextMixModel(seed=3, sharpness=6.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (3, 5), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    fast = cc.optimize(model, strategy="factor", gen_length=16, block_length=8, sync_every=2)
    nfes = []
    for factor in (1.0, 3.0):
        ref = cc.generate_reference(model, ids, mask, strategy="factor", factor=factor,
                                    gen_length=16, block_length=8, trace=True)
        out = fast.generate(ids, mask, factor=factor, trace=True)
        assert fast.last_stats["runner"] == "compiled"
        assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
        assert [s.committed for s in out.trace] == [s.committed for s in ref.trace]
        nfes.append(out.nfe)
    assert nfes[1] < nfes[0]  # the larger factor commits more per step: the value was read
    assert fast.cached_steps == 2  # a factor is baked into its step
    # tau is not read by "factor", nor factor by "threshold": no step of their own.
    fast.generate(ids, mask, factor=3.0, tau=0.5)
    threshold = fast.generate(ids, mask, strategy="threshold")
    assert fast.generate(ids, mask, strategy="threshold", factor=2.0).stats["compile_seconds"] == 0
    assert fast.cached_steps == 3
    assert torch.equal(threshold.sequences, cc.generate_reference(
        model, ids, mask, strategy="threshold", gen_length=16, block_length=8).sequences)
