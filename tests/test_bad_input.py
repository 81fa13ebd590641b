"""Bad input: a ValueError that names the fix, never a wrong answer."""

from __future__ import annotations

import pytest
import torch
from toy_models import ContextMixModel

import credit_compile as cc
from credit_compile import DecodeConfig


@pytest.mark.parametrize("fields, fix", [
    (dict(gen_length=30, block_length=8), "choose a block_length that divides gen_length"),
    (dict(gen_length=32, block_length=8, steps=10), "use a multiple of 4"),
    (dict(tau=0.0), r"threshold in \(0, 1\]"),
    (dict(tau=1.5), r"threshold in \(0, 1\]"),
    (dict(alpha=-0.1), "use alpha >= 0"),
    (dict(beta=1.2), r"decay in \[0, 1\]"),
    (dict(beta=-0.1), r"decay in \[0, 1\]"),
    (dict(gamma=0.0), "use gamma > 0"),
    (dict(temperature=0.5), "use temperature=0 or strategy='llada'"),
    (dict(strategy="beam"), "use one of"),
    (dict(credit_layout="csr"), "use one of"),
    (dict(block_length=0), "positive integer"),
    (dict(mask_id=-3), "non-negative integer"),
])
def test_config_errors_name_the_fix(fields, fix):
    with pytest.raises(ValueError, match=fix):
        DecodeConfig(**fields)


def test_unknown_override_names_the_valid_options():
    with pytest.raises(ValueError, match="valid options are"):
        DecodeConfig().replace(gen_lenght=64)


@pytest.fixture
def model():
    return ContextMixModel(vocab_size=40, mask_id=39, max_len=32)


def ids(*shape):
    return torch.randint(0, 30, shape)


@pytest.mark.parametrize("make_input, fix", [
    (lambda: ids(1, 4).float(), r"use input_ids.long\(\)"),
    (lambda: ids(4), r"use input_ids.unsqueeze\(0\)"),
    (lambda: ids(1, 2, 4), r"a \[batch, length\] tensor"),
    (lambda: ids(1, 0), "give at least one token"),
    (lambda: [[1, 2, 3]], "use torch.tensor"),
    (lambda: torch.tensor([[1, 2, 99]]), "check the tokenizer matches the model"),
])
def test_bad_input_ids(model, make_input, fix):
    with pytest.raises(ValueError, match=fix):
        cc.generate_reference(model, make_input(), gen_length=8, block_length=4)


def test_prompt_longer_than_the_context(model):
    with pytest.raises(ValueError, match="lower gen_length to at most 12"):
        cc.generate_reference(model, ids(1, 20), gen_length=16, block_length=4)


def test_mask_id_outside_vocabulary(model):
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        cc.generate_reference(model, ids(1, 4), gen_length=8, block_length=4, mask_id=500)


def test_model_without_mask_token():
    class NoMask(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return torch.zeros(*input_ids.shape, 10)

    with pytest.raises(ValueError, match="pass mask_id="):
        cc.generate_reference(NoMask(), ids(1, 4), gen_length=8, block_length=4)


@pytest.mark.parametrize("mask, fix", [
    (torch.ones(1, 3, dtype=torch.long), "pass the mask the tokenizer returned"),
    (torch.tensor([[1, 1, 0, 0]]), "pad on the left"),
    (torch.tensor([[0, 0, 0, 0]]), "every prompt needs a token"),
    (torch.tensor([[0, 2, 1, 1]]), "only 0"),
])
def test_bad_attention_mask(model, mask, fix):
    with pytest.raises(ValueError, match=fix):
        cc.generate_reference(model, ids(1, 4), mask, gen_length=8, block_length=4)


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


def test_early_stop_without_an_eos_token(model):
    with pytest.raises(ValueError, match="pass eos_token_id="):
        cc.generate_reference(model, ids(1, 4), gen_length=8, block_length=4, early_stop=True)


def test_optimized_path_raises_the_same_errors(model):
    fast = cc.optimize(model, gen_length=8, block_length=4)
    with pytest.raises(ValueError, match=r"use input_ids.long\(\)"):
        fast.generate(ids(1, 4).float())
    with pytest.raises(ValueError, match="choose a block_length"):
        fast.generate(ids(1, 4), block_length=3)
