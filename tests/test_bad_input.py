"""Bad input beyond tests/test_validation.py: models that ignore the attention mask, and the
optimized path raising the same errors as the reference."""

from __future__ import annotations

import pytest
import torch
from toy_models import ContextMixModel

import credit_compile as cc


@pytest.fixture
def model():
    return ContextMixModel(vocab_size=40, mask_id=39, max_len=32)


def ids(*shape):
    return torch.randint(0, 30, shape)


def test_padded_batch_refused_for_a_model_that_ignores_the_mask():
    class LLaDAModelLM(torch.nn.Module):  # stands for the official remote code (issue 90)
        def __init__(self):
            super().__init__()
            self.inner = ContextMixModel()
            self.config = self.inner.config

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids)

    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="issue 90"):
        cc.generate_reference(LLaDAModelLM(), ids(2, 4), mask, gen_length=8, block_length=4)
    # Unpadded batches are fine for it.
    out = cc.generate_reference(LLaDAModelLM(), ids(2, 4), torch.ones(2, 4), gen_length=8, block_length=4)
    assert (out.generated != 39).all()


def test_optimized_path_raises_the_same_errors(model):
    fast = cc.optimize(model, gen_length=8, block_length=4)
    with pytest.raises(ValueError, match=r"use input_ids.long\(\)"):
        fast.generate(ids(1, 4).float())
    with pytest.raises(ValueError, match="choose a block_length"):
        fast.generate(ids(1, 4), block_length=3)
