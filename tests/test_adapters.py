"""adapters.py: a model's logits read and checked to be [batch, length, vocab]."""

from __future__ import annotations

import pytest
import torch
from toy_models import ContextMixModel

import credit_compile as cc


def ids(*shape):
    return torch.randint(0, 30, shape)


class ReshapedLogits(torch.nn.Module):
    """A generic model whose forward returns its logits reshaped by `how`."""

    def __init__(self, how, with_config=True):
        super().__init__()
        self.inner = ContextMixModel(vocab_size=40, mask_id=39, max_len=32)
        self.how = how
        if with_config:  # else the vocabulary is probed with a forward of one token
            self.config = self.inner.config

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.how(self.inner(input_ids, attention_mask))}


@pytest.mark.parametrize("how", [
    pytest.param(lambda logits: logits[:, :-1], id="shifted-as-a-causal-lm"),
    pytest.param(lambda logits: torch.cat([logits, logits]), id="rows-doubled"),
    pytest.param(lambda logits: logits[..., 0], id="2-d"),
    pytest.param(lambda logits: logits.transpose(1, 2), id="vocab-before-length"),
])
@pytest.mark.parametrize("with_config", [True, False])
@pytest.mark.parametrize("compile", [False, True])
def test_logits_of_the_wrong_shape_are_refused_naming_it(how, with_config, compile):
    fast = cc.optimize(ReshapedLogits(how, with_config), gen_length=8, block_length=4,
                       mask_id=39, compile=compile)
    with pytest.raises(ValueError, match=r"the model's forward returned logits of shape .* for "
                                         r"input_ids of shape .*: credit_compile needs "
                                         r"\[batch, length, vocab\] logits"):
        fast.generate(ids(2, 4))
    if with_config:
        with pytest.raises(ValueError, match="returned logits of shape"):
            cc.generate_reference(ReshapedLogits(how), ids(2, 4), gen_length=8, block_length=4)


def test_logits_of_the_right_shape_pass_the_check():
    model = ReshapedLogits(lambda logits: logits)
    reference = cc.generate_reference(model.inner, ids(2, 4), gen_length=8, block_length=4)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    out = fast.generate(reference.sequences[:, :4])
    assert torch.equal(out.sequences, reference.sequences)
