"""adapters.py: what credit_compile reads from a model. Its logits checked to be [batch, length,
vocab], the models under wrappers decoded as themselves, and compile_layers_once where a model
has no layers marked for it."""

from __future__ import annotations

import pytest
import torch
from toy_models import ContextMixModel

import credit_compile as cc

# How logits are read, compiled too: the cheap backend (conftest.py).
pytestmark = pytest.mark.cheap_compile


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


@pytest.mark.cheap_compile
def test_nested_wrappers_are_all_unwrapped():
    # torch.compile(optimize(model)) is two wrappers deep; the model under both decides the
    # forward signature (attention mask honoured), so a padded batch decodes as on the model.
    model = ContextMixModel(seed=3)
    wrapped = torch.compile(cc.optimize(model, gen_length=8, block_length=4))
    ids = torch.tensor([[0, 5, 6], [4, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    expected = cc.generate_reference(model, ids, mask, gen_length=8, block_length=4)
    out = cc.generate_reference(wrapped, ids, mask, gen_length=8, block_length=4)
    assert torch.equal(out.sequences, expected.sequences)


@pytest.mark.cheap_compile
def test_a_model_without_marked_layers_warns_and_decodes_as_before():
    model = ContextMixModel(seed=2)
    ids = torch.randint(0, 30, (1, 4))
    fast = cc.optimize(model, gen_length=8, block_length=4, compile_layers_once=True)
    with pytest.warns(UserWarning, match=r"compile_layers_once=True has no effect on "
                                         r"ContextMixModel.*from_pretrained"):
        out = fast.generate(ids)
    assert torch.equal(out.sequences,
                       cc.generate_reference(model, ids, gen_length=8, block_length=4).sequences)


def test_no_warning_when_nothing_is_compiled(recwarn):
    cc.optimize(ContextMixModel(seed=2), gen_length=8, block_length=4, compile=False,
                compile_layers_once=True).generate(torch.randint(0, 30, (1, 4)))
    assert not [w for w in recwarn if "compile_layers_once" in str(w.message)]


@pytest.mark.parametrize("padded", [False, True])
def test_shifted_logits_are_read_from_the_row_before(padded):
    """`ModelInfo.shifted_logits` (Dream's): the one forward every decoder calls returns row i-1
    of the model's logits at row i, row 0 its own; without it, the model's rows as they are."""
    import dataclasses

    from credit_compile.adapters import describe_model, make_forward

    model = ContextMixModel()
    tokens = ids(2, 7)
    mask = torch.ones_like(tokens)
    if padded:
        mask[1, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    info = describe_model(model)
    assert not info.shifted_logits
    with torch.no_grad():
        plain = make_forward(model, info)(tokens, mask, positions)
        shifted = make_forward(model, dataclasses.replace(info, shifted_logits=True))(
            tokens, mask, positions)
        assert torch.equal(plain, model(tokens, mask, positions))
    assert torch.equal(shifted[:, 1:], plain[:, :-1]) and torch.equal(shifted[:, 0], plain[:, 0])
