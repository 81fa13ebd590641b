"""validation.py: bad input raises a ValueError whose message names the fix, at every entry point
(`generate_reference(...)` with overrides, `optimize(...)`, `generate(...)`), before any
decoding happens; what cannot be refused is warned about at the caller's line."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from helpers import CONFIG_ERRORS, GEN_LENGTH_ERRORS, small
from toy_models import ContextMixModel, ScriptedModel

import credit_compile as cc
from credit_compile import DecodeConfig

# Checks of inputs and models, on the compiled path too: the cheap backend (conftest.py).
pytestmark = pytest.mark.cheap_compile

MASK = 39


class CountingModel(ContextMixModel):
    """ContextMixModel (vocab 40, mask 39, max length 32) that counts its forwards."""

    def __init__(self, **kw):
        super().__init__(**{"max_len": 32, **kw})
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls += 1
        return super().forward(input_ids, attention_mask, position_ids)


@pytest.fixture
def model():
    return CountingModel()


@pytest.fixture
def ids():
    return torch.tensor([[1, 2, 3], [4, 5, 6]])


def assert_rejected(model, ids, fix, attention_mask=None, **overrides):
    with pytest.raises(ValueError, match=fix):
        cc.generate_reference(model, ids, attention_mask, **overrides)
    assert model.calls == 0  # refused before any decoding


@pytest.mark.parametrize("fields, fix", CONFIG_ERRORS + GEN_LENGTH_ERRORS)
def test_config_errors_through_generate(model, ids, fields, fix):
    assert_rejected(model, ids, fix, **fields)


def test_steps_are_ignored_outside_llada_as_documented(model, ids):
    # A base config's steps (for "llada") must not break a call that picks another strategy.
    config = DecodeConfig(strategy="llada", steps=6, gen_length=12, block_length=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor be warned about: they are the base's, for llada
        out = cc.generate_reference(model, ids, config=config, strategy="credit")
    assert out.nfe > 0 and config.replace(strategy="threshold", steps=5).steps == 5
    model.calls = 0
    assert_rejected(model, ids, r"steps=5 is not divisible", config=config, steps=5)


def test_an_option_the_strategy_does_not_read_is_warned_about_once_per_call(model, ids):
    # optimize(model, steps=...) decoded credit as if steps were not given, without a word.
    says = (r"strategy='credit' does not read steps=4, so it changes nothing \(steps is read by "
            r"strategy 'llada', 'llada2' or 'dream'\): leave it out, or choose the strategy "
            r"that reads it")
    with pytest.warns(UserWarning, match=says) as record:
        fast = cc.optimize(model, compile=False, steps=4, **small())
    assert len(record) == 1 and record[0].filename == __file__
    for call in (lambda: fast.generate(ids), lambda: fast.precompile(2, 3),
                 lambda: cc.generate_reference(model, ids, steps=4, **small()),
                 lambda: cc.verify(fast, ids)):
        with pytest.warns(UserWarning, match=says) as record:
            call()
        assert len([w for w in record if "does not read" in str(w.message)]) == 1
    with pytest.warns(UserWarning, match=r"strategy='threshold' does not read steps=4, "
                                         r"alpha=0.5, credit_slots=2, so they change nothing "
                                         r"\(steps is read by strategy 'llada', 'llada2' or "
                                         r"'dream'; alpha is read by "
                                         r"strategy 'credit'; credit_slots is read by strategy "
                                         r"'credit' with credit_layout='sparse'\)"):
        fast.generate(ids, strategy="threshold", alpha=0.5, credit_slots=2)
    # Options a base config sets for its own strategy serve a call of another one silently.
    llada = cc.optimize(model, compile=False, strategy="llada", steps=4, **small())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llada.generate(ids, strategy="credit")
        cc.generate_reference(model, ids, config=llada.decode_config, strategy="threshold")
        fast.generate(ids, strategy="llada")  # the base's steps=4, read at last


@pytest.mark.parametrize("config", [{"gen_length": 8}, "credit"])
def test_a_config_that_is_not_a_decode_config(model, ids, config):
    assert_rejected(model, ids, r"config must be a DecodeConfig, got .*: pass "
                                r"config=DecodeConfig\(\*\*fields\)", config=config)
    fast = cc.optimize(ContextMixModel(), gen_length=8, block_length=4, compile=False)
    with pytest.raises(ValueError, match=r"config must be a DecodeConfig"):
        fast.generate(ids, config=config)


@pytest.mark.parametrize("bad", [dict(gen_lenght=64), dict(Alpha=0.5), dict(steps_per_block=4)])
def test_unknown_override_names_the_valid_options(model, ids, bad):
    name = next(iter(bad))
    fix = rf"unknown decoding option\(s\) \['{name}'\]; valid options are \[.*'gen_length'.*\]"
    with pytest.raises(ValueError, match=fix):
        DecodeConfig().replace(**bad)
    assert_rejected(model, ids, fix, **bad)
    with pytest.raises(ValueError, match=fix):
        cc.generate_reference(model, ids, config=DecodeConfig(**small()), **bad)


def test_transformers_names_point_to_ours(model, ids):
    with pytest.raises(ValueError, match=r"for 'max_new_tokens' use 'gen_length'"):
        cc.generate_reference(model, ids, max_new_tokens=8)
    with pytest.raises(ValueError, match=r"for 'guidance_scale' use 'cfg_scale'"):
        DecodeConfig().replace(guidance_scale=1.0)


@pytest.mark.parametrize("theirs, ours", [
    ("threshold", "tau"), ("block_size", "block_length"), ("use_cache", "kv_cache='prompt'"),
    ("dual_cache", "kv_cache='dual'")])
def test_fast_dllm_and_dinfer_names_point_to_ours(model, ids, theirs, ours):
    with pytest.raises(ValueError, match=rf"for '{theirs}' use .{re.escape(ours)}"):
        cc.generate_reference(model, ids, **{theirs: 0.9})


@pytest.mark.parametrize("theirs, ours", [
    ("alg", "dream_alg"), ("alg_temp", "dream_alg_temp"), ("eps", "dream_eps")])
def test_dreams_names_point_to_ours(model, ids, theirs, ours):
    with pytest.raises(ValueError, match=rf"for '{theirs}' use .{ours} \(with strategy='dream'\)"):
        cc.generate_reference(model, ids, **{theirs: 0.5})


def test_dream_options_for_another_strategy_are_warned_about(model, ids):
    with pytest.warns(UserWarning, match=r"strategy='llada' does not read dream_alg='maskgit_plus', "
                                         r"dream_alg_temp=0.5, so they change nothing \(dream_alg, "
                                         r"dream_alg_temp are read by strategy 'dream'\)"):
        cc.generate_reference(model, ids, strategy="llada", dream_alg="maskgit_plus",
                              dream_alg_temp=0.5, **small())


def test_unknown_override_lists_every_unknown_name(model, ids):
    with pytest.raises(ValueError, match=r"\['beta2', 'gen_lenght'\]"):
        cc.generate_reference(model, ids, gen_lenght=8, beta2=0.1)


@pytest.mark.parametrize("mask_id", [40, 41, 1000])
def test_mask_id_outside_the_vocabulary(model, ids, mask_id):
    assert_rejected(model, ids,
                    rf"mask_id={mask_id} is outside the model's vocabulary of 40 tokens: pass the "
                    rf"mask token of this model", mask_id=mask_id, **small())


def test_model_config_mask_id_outside_the_vocabulary(ids):
    model = CountingModel(mask_id=64)
    assert_rejected(model, ids, r"mask_id=64 is outside the model's vocabulary of 40 tokens",
                    **small())
    # Passing the right one fixes it.
    out = cc.generate_reference(model, ids, mask_id=MASK, **small())
    assert not (out.generated == MASK).any()


def test_mask_id_outside_a_probed_vocabulary():
    # A model whose config says nothing about its vocabulary: it is probed from the logits.
    class Bare(torch.nn.Module):
        def forward(self, input_ids):
            return torch.zeros(*input_ids.shape, 6)

    with pytest.raises(ValueError, match=r"mask_id=6 is outside the model's vocabulary of 6 tokens"):
        cc.generate_reference(Bare(), torch.tensor([[1, 2]]), mask_id=6, gen_length=4,
                              block_length=2)


class NoConfig(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None):
        return torch.zeros(*input_ids.shape, 40)


def _config_without_mask():
    model = CountingModel()
    model.config = type("Cfg", (), {"vocab_size": 40})()  # no mask_token_id
    return model


@pytest.mark.parametrize("make", [_config_without_mask, NoConfig], ids=["no-mask-in-config", "no-config"])
def test_model_without_a_mask_token(make, ids):
    model = make()
    fix = (r"the model has no mask token: its config has no `mask_token_id`; pass "
           r"mask_id=<token id> \(126336 for LLaDA-8B\)")
    with pytest.raises(ValueError, match=fix):
        cc.generate_reference(model, ids, **small())
    out = cc.generate_reference(model, ids, mask_id=MASK, **small())  # the fix works
    assert out.sequences.shape == (2, 3 + 8)


@pytest.mark.parametrize("prompt_len, gen_length, block_length, fix", [
    (25, 8, 4, r"lower gen_length to at most 4 \(a multiple of block_length 4\)"),
    (1, 40, 8, r"lower gen_length to at most 24 \(a multiple of block_length 8\)"),
    (30, 4, 4, r"lower gen_length and block_length to at most 2"),
])
def test_prompt_plus_gen_length_beyond_max_length(model, prompt_len, gen_length, block_length, fix):
    ids = torch.ones(1, prompt_len, dtype=torch.long)
    assert_rejected(model, ids,
                    rf"prompt length {prompt_len} \+ gen_length {gen_length} = "
                    rf"{prompt_len + gen_length} exceeds the model's maximum sequence length 32: "
                    rf"shorten the prompt or {fix}",
                    gen_length=gen_length, block_length=block_length)
    # The fix it names is accepted.
    fitting = int(re.search(r"at most (\d+)", fix.replace("\\", "")).group(1))
    if "block_length to" in fix:
        cc.generate_reference(model, ids, gen_length=fitting, block_length=fitting)
    else:
        cc.generate_reference(model, ids, gen_length=fitting, block_length=block_length)


@pytest.mark.parametrize("length", [40, 32], ids=["beyond", "at"])
def test_prompt_alone_at_or_beyond_max_length(model, length):
    ids = torch.ones(1, length, dtype=torch.long)
    assert_rejected(model, ids, rf"prompt length {length} leaves no room to generate in the "
                                r"model's maximum sequence length 32: shorten the prompt to at "
                                r"most 24 tokens for gen_length 8", **small())


def test_prompt_plus_gen_length_at_max_length_is_fine(model):
    out = cc.generate_reference(model, torch.ones(1, 24, dtype=torch.long), **small())
    assert out.sequences.shape == (1, 32)


@pytest.mark.parametrize("shape", [(1, 0), (0, 3), (0, 0)])
def test_empty_prompt(model, shape):
    assert_rejected(model, torch.zeros(shape, dtype=torch.long),
                    r"empty prompt .*: give at least one token per row, for example a BOS token",
                    **small())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bool])
def test_non_integer_input_ids(model, dtype):
    ids = torch.tensor([[1, 2, 3]]).to(dtype)
    assert_rejected(model, ids, rf"input_ids has dtype {dtype}; token ids must be integers: use "
                                r"input_ids.long\(\)", **small())


def test_int32_input_ids_are_fine(model):
    out = cc.generate_reference(model, torch.tensor([[1, 2, 3]], dtype=torch.int32), **small())
    assert out.sequences.dtype == torch.int64


def test_one_dimensional_input_ids(model):
    assert_rejected(model, torch.tensor([1, 2, 3]),
                    r"input_ids must have shape \[batch, prompt_length\], got \(3,\): use "
                    r"input_ids.unsqueeze\(0\)", **small())


@pytest.mark.parametrize("shape", [(1, 2, 3), (2, 1, 1, 3)])
def test_three_dimensional_input_ids(model, shape):
    assert_rejected(model, torch.ones(shape, dtype=torch.long),
                    re.escape(f"input_ids must have shape [batch, prompt_length], got {shape}: "
                              f"use a [batch, length] tensor"), **small())


def test_input_ids_not_a_tensor(model):
    assert_rejected(model, [[1, 2, 3]], r"input_ids must be a torch.Tensor of token ids, got list: "
                                       r"use torch.tensor\(\[\[...\]\]\)", **small())


def test_a_tokenizers_whole_output_as_input_ids_names_generate_with_its_entries(model, ids):
    from transformers import BatchEncoding

    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    for enc in ({"input_ids": ids, "attention_mask": mask},
                BatchEncoding({"input_ids": ids, "attention_mask": mask})):
        assert_rejected(model, enc, r"input_ids is a tokenizer's whole output \(\w+ with keys "
                                    r"\['input_ids', 'attention_mask'\]\), not a tensor of token "
                                    r"ids: pass its entries by name, generate\(\*\*enc\)",
                        **small())
        # The fix it names decodes, with the mask.
        expected = cc.generate_reference(model, ids, mask, **small())
        assert torch.equal(cc.generate_reference(model, **enc, **small()).sequences,
                           expected.sequences)
        fast = cc.optimize(model, compile=False, **small())
        assert torch.equal(fast.generate(**enc).sequences, expected.sequences)
        model.calls = 0
    # A BERT-style tokenizer adds token_type_ids, which generate() does not take.
    bert = BatchEncoding({"input_ids": ids, "token_type_ids": ids * 0, "attention_mask": mask})
    assert_rejected(model, bert, r"by name, generate\(input_ids=enc\['input_ids'\], "
                                 r"attention_mask=enc\['attention_mask'\]\)", **small())


@pytest.mark.parametrize("bad_id", [-1, 40, 500])
def test_token_ids_outside_the_vocabulary(model, bad_id):
    assert_rejected(model, torch.tensor([[1, bad_id, 3]]),
                    r"input_ids holds token ids outside \[0, 40\): check the tokenizer matches "
                    r"the model", **small())


@pytest.mark.parametrize("mask_shape", [(2, 2), (1, 3), (2, 4), (3,), (2, 3, 1)])
def test_attention_mask_shape_mismatch(model, ids, mask_shape):
    mask = torch.ones(mask_shape, dtype=torch.long)
    assert_rejected(model, ids,
                    re.escape(f"attention_mask shape {mask_shape} differs from input_ids shape "
                              f"(2, 3): pass the mask the tokenizer returned with these input_ids"),
                    attention_mask=mask, **small())


def test_config_passed_as_the_attention_mask(model, ids):
    with pytest.raises(ValueError, match=r"a DecodeConfig was passed as attention_mask .* config=config"):
        cc.generate_reference(model, ids, DecodeConfig(**small()))


@pytest.mark.parametrize("kind", ["list", "ndarray"])
def test_attention_mask_not_a_tensor(model, ids, kind):
    # A list is what a tokenizer returns without return_tensors; the shape message said "shape
    # None differs", and for a numpy mask "(2, 3) differs from (2, 3)".
    mask = [[1, 1, 1], [1, 1, 1]]
    if kind == "ndarray":
        mask = pytest.importorskip("numpy").array(mask)
    assert_rejected(model, ids, rf"attention_mask must be a torch.Tensor like input_ids, got "
                                rf"{kind}: use torch.as_tensor\(attention_mask\), or a tokenizer "
                                rf"with return_tensors='pt'",
                    attention_mask=mask, **small())


@pytest.mark.parametrize("mask", [
    [[1, 1, 0], [1, 1, 1]],   # right padding
    [[1, 0, 0], [1, 1, 1]],
    [[1, 0, 1], [1, 1, 1]],   # a hole in the middle
    [[0, 1, 0], [1, 1, 1]],
])
def test_right_padded_mask(model, ids, mask):
    assert_rejected(model, ids,
                    r"attention_mask is not left-padded: generation appends to the right of the "
                    r"prompt, so pad on the left \(tokenizer.padding_side = 'left'\)",
                    attention_mask=torch.tensor(mask), **small())


def test_all_padding_row(model, ids):
    assert_rejected(model, ids, r"every prompt needs a token",
                    attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]]), **small())


def test_attention_mask_values_other_than_zero_and_one(model, ids):
    assert_rejected(model, ids, r"attention_mask must hold only 0 \(padding\) and 1 \(token\)",
                    attention_mask=torch.tensor([[0, 2, 1], [1, 1, 1]]), **small())


def test_a_mask_token_inside_the_prompt_is_refused(model):
    ids = torch.tensor([[1, 2, 3], [4, MASK, 6]])
    assert_rejected(model, ids, r"input_ids holds the mask token 39 inside a prompt \(row 1, "
                                r"position 1\): .* remove it from the prompt", **small())
    padded = torch.tensor([[MASK, 2, 3], [4, 5, 6]])  # padding may be any token, the mask too
    out = cc.generate_reference(model, padded, torch.tensor([[0, 1, 1], [1, 1, 1]]), **small())
    assert not (out.generated == MASK).any()
    model.calls = 0
    assert_rejected(model, padded, r"mask token 39 inside a prompt \(row 0, position 0\)",
                    torch.tensor([[1, 1, 1], [1, 1, 1]]), **small())


def test_left_padded_mask_is_fine(model, ids):
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out = cc.generate_reference(model, ids, mask, **small())
    assert not (out.generated == MASK).any()
    mask_bool = mask.bool()  # a bool mask is read the same way
    again = cc.generate_reference(model, ids, mask_bool, **small())
    assert torch.equal(out.sequences, again.sequences)


def test_padded_batch_on_a_model_that_ignores_the_mask(ids):
    class NoMask(ContextMixModel):
        def forward(self, input_ids):
            return super().forward(input_ids)

    with pytest.raises(ValueError, match=r"this model ignores attention_mask .* or pass prompts "
                                         r"one at a time"):
        cc.generate_reference(NoMask(), ids, torch.tensor([[0, 1, 1], [1, 1, 1]]), **small())
    # An all-ones mask is no padding: fine.
    cc.generate_reference(NoMask(), ids, torch.ones(2, 3, dtype=torch.long), **small())
    # Bucketing pads even unpadded prompts, so it is refused for such a model.
    with pytest.raises(ValueError, match=r"prompt_bucket pads prompts on the left, and this model "
                                         r"ignores attention_mask .* use prompt_bucket=None"):
        cc.generate_reference(NoMask(), ids, prompt_bucket=4, **small())
    cc.generate_reference(NoMask(), ids, prompt_bucket=None, **small())


def test_prompt_bucket_needs_a_model_that_takes_position_ids(ids):
    class AbsolutePositions(ContextMixModel):
        # Masks the padding but counts positions from the first column, padding included:
        # left padding shifts them, so bucketing would change the tokens.
        def forward(self, input_ids, attention_mask=None):
            positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            return super().forward(input_ids, attention_mask, position_ids=positions)

    with pytest.raises(ValueError, match=r"this model's forward takes no `position_ids`.* use "
                                         r"prompt_bucket=None, or give its forward"):
        cc.generate_reference(AbsolutePositions(), ids, prompt_bucket=8, **small())


def test_padded_batch_on_a_model_without_position_ids_is_warned_about(ids):
    class AbsolutePositions(ContextMixModel):
        def forward(self, input_ids, attention_mask=None):
            positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            return super().forward(input_ids, attention_mask, position_ids=positions)

    padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.warns(UserWarning, match=r"forward takes attention_mask but not position_ids.* "
                                         r"Add a position_ids argument to forward"):
        cc.generate_reference(AbsolutePositions(), ids, padded, **small())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cc.generate_reference(AbsolutePositions(), ids, torch.ones_like(padded), **small())
        cc.generate_reference(ContextMixModel(), ids, padded, **small())  # given the positions


@pytest.mark.parametrize("ids_, side", [
    ([[5, 6, 0], [5, 6, 7]], "right"),
    ([[0, 5, 6], [5, 6, 7]], "left"),
])
def test_a_padded_batch_without_its_attention_mask_is_refused(ids_, side):
    model = CountingModel()
    model.config.pad_token_id = 0
    ids_ = torch.tensor(ids_)
    assert_rejected(model, ids_, rf"input_ids look {side}-padded .* if those are real tokens, pass "
                                 r"attention_mask=torch.ones_like\(input_ids\); else pass the "
                                 r"tokenizer's attention_mask",
                    **small())
    # Real tokens that happen to be the pad token: the all-ones mask says so.
    cc.generate_reference(model, ids_, torch.ones_like(ids_), **small())
    # Every row ending alike is a prompt's right (every row starting with padding is not: below).
    if side == "right":
        cc.generate_reference(model, ids_[:1], **small())
        cc.generate_reference(model, torch.cat([ids_[:1], ids_[:1]]), **small())


def test_a_batch_left_padded_with_end_of_text_is_refused_where_no_pad_token_is_named():
    model = CountingModel()
    model.config.pad_token_id, model.config.eos_token_id = None, 2
    padded = torch.tensor([[2, 2, 5, 6], [5, 6, 7, 8]])
    assert_rejected(model, padded, r"input_ids look left-padded \(some rows start with the "
                                   r"end-of-text token 2 \(the model names no pad token",
                    **small())
    cc.generate_reference(model, padded, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), **small())
    # Ending with end-of-text is a prompt's right.
    cc.generate_reference(model, torch.tensor([[5, 6, 2], [5, 6, 7]]), **small())
    model.config.eos_token_id = None  # nothing names a padding token: nothing is refused
    cc.generate_reference(model, padded, **small())
    # A call's end-of-text says where to stop, not how the prompt was padded.
    cc.generate_reference(model, padded, **small(eos_token_id=2))
    # GPT-2 style, begin-of-text is end-of-text: prompts may start with it, nothing is refused.
    model.config.eos_token_id, model.config.bos_token_id = 2, 2
    cc.generate_reference(model, padded, **small())
    model.config.bos_token_id, model.calls = 1, 0  # another begin-of-text: refused again
    assert_rejected(model, padded, r"input_ids look left-padded", **small())


def test_every_row_starting_with_padding_without_a_mask_is_refused():
    # The shipped model's single left-padded row decoded its padding as prompt ('344', not '1234').
    from credit_compile.assets import has_default_model, load_default_model

    if not has_default_model():
        pytest.skip("default model files missing")
    model, tokenizer = load_default_model()
    fast = cc.optimize(model, gen_length=16, block_length=8, compile=False)
    padded = torch.tensor([[30, 30, 13, 4, 2, 1, 3, 11]])  # "S4213=" after two pads
    fix = (r"input_ids look left-padded \(every row starts with the pad token 30\) but no "
           r"attention_mask was given.* pass the tokenizer's attention_mask")
    config = fast.resolved_config()
    for decode in (fast.generate, lambda ids: cc.generate_reference(model, ids, config=config)):
        with pytest.raises(ValueError, match=fix):
            decode(padded)
        with pytest.raises(ValueError, match=fix):
            decode(padded.repeat(2, 1))
    out = fast.generate(padded, torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]]))
    assert tokenizer.answer(out.generated[0]) == "1234"


def test_rows_all_starting_with_end_of_text_or_begin_of_text():
    model = CountingModel()
    model.config.pad_token_id, model.config.eos_token_id = None, 2
    assert_rejected(model, torch.tensor([[2, 5, 6], [2, 6, 7]]),
                    r"every row starts with the end-of-text token 2 \(the model names no pad "
                    r"token", **small())
    assert_rejected(model, torch.tensor([[2, 5, 6]]), r"input_ids look left-padded", **small())
    # A begin-of-text token leads every prompt: not padding, even where it is the pad token too.
    model.config.bos_token_id = 2
    cc.generate_reference(model, torch.tensor([[2, 5, 6], [2, 6, 7]]), **small())
    model.config.pad_token_id = 2
    cc.generate_reference(model, torch.tensor([[2, 5, 6]]), **small())


def test_active_dropout_is_warned_about_at_the_callers_line(ids):
    class WithDropout(ContextMixModel):
        def __init__(self):
            super().__init__()
            self.dropout = torch.nn.Dropout(0.3)

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return self.dropout(super().forward(input_ids, attention_mask, position_ids))

    model = WithDropout()
    fast = cc.optimize(model, compile=False, **small())  # sets eval mode, which train() undoes
    for decode in (lambda: cc.generate_reference(model, ids, **small()),
                   lambda: fast.generate(ids)):
        model.train()
        with pytest.warns(UserWarning, match=r"training mode with dropout active \(dropout, "
                                             r"p=0.3\).* call model.eval\(\)") as record:
            decode()
        assert record[0].filename == __file__
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cc.generate_reference(model, ids, **small())


def test_a_generic_model_taking_position_ids_decodes_a_bucket_unchanged(ids):
    class PositionsIfGiven(ContextMixModel):
        # Counts from the first column unless told: right only if it is given the positions.
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            return super().forward(input_ids, attention_mask, position_ids=position_ids)

    model = PositionsIfGiven(seed=5)
    plain = cc.generate_reference(model, ids, **small())
    for bucket in (4, 7):
        bucketed = cc.generate_reference(model, ids, prompt_bucket=bucket, **small())
        assert torch.equal(bucketed.sequences, plain.sequences)


@pytest.mark.parametrize("eos", [MASK, (5, MASK)])
def test_early_stop_on_the_mask_token_is_refused(model, ids, eos):
    assert_rejected(model, ids, r"eos_token_id 39 is the mask token, which is never committed, so "
                                r"early_stop would never fire on it", early_stop=True,
                    eos_token_id=eos, **small())


def test_early_stop_without_an_eos_token(model, ids):
    assert_rejected(model, ids, r"early_stop=True needs an end-of-text token: .* pass "
                                r"eos_token_id=<token id>", early_stop=True, **small())
    out = cc.generate_reference(model, ids, early_stop=True, eos_token_id=5, **small())
    assert not (out.generated == MASK).any()


class TupleOutput(ContextMixModel):  # transformers' return_dict=False
    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return (super().forward(input_ids, attention_mask, position_ids), "hidden states")


class DictOutput(ContextMixModel):
    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return {"logits": super().forward(input_ids, attention_mask, position_ids)}


@pytest.mark.parametrize("model_type", [TupleOutput, DictOutput])
@pytest.mark.parametrize("compile", [False, True])
def test_tuple_and_dict_outputs_are_read_as_logits(ids, model_type, compile):
    expected = cc.generate_reference(ContextMixModel(), ids, **small())
    out = cc.optimize(model_type(), compile=compile, **small()).generate(ids)
    assert torch.equal(out.sequences, expected.sequences)


def test_an_output_without_logits_is_a_clear_error(ids):
    class Hidden(ContextMixModel):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return {"hidden_states": super().forward(input_ids, attention_mask, position_ids)}

    with pytest.raises(ValueError, match=r"the model's forward returned dict, not logits"):
        cc.generate_reference(Hidden(), ids, **small())


@pytest.mark.parametrize("compile", [False, True])
def test_logits_wider_than_the_config_vocabulary_with_dense_credit(ids, compile):
    class PaddedHead(ContextMixModel):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            logits = super().forward(input_ids, attention_mask, position_ids)
            return torch.cat([logits, logits[..., :8] - 100], -1)

    model = PaddedHead()
    fast = cc.optimize(model, compile=compile, credit_layout="dense", **small())
    with pytest.raises(ValueError, match=r"the model returns 48 logit columns but its config "
                                         r"gives a vocabulary of 40 .* set the config's vocab_size "
                                         r"to 48, or use credit_layout='sparse'"):
        fast.generate(ids)
    model.config.vocab_size = 48  # the fix it names
    cc.optimize(model, compile=compile, credit_layout="dense", **small()).generate(ids)


def test_ids_beyond_a_probed_vocabulary(ids):
    class NoConfig(ContextMixModel):
        def __init__(self):
            super().__init__()
            del self.config

    with pytest.raises(ValueError, match=r"input_ids holds token ids outside \[0, 40\)"):
        cc.generate_reference(NoConfig(), torch.tensor([[1, 2, 300]]), mask_id=MASK, **small())


@pytest.mark.parametrize("wrap", ["optimized", "torch.compile"])
def test_a_wrapped_model_is_decoded_as_the_model_it_wraps(wrap):
    model = ContextMixModel(seed=3)
    wrapped = cc.optimize(model, **small()) if wrap == "optimized" else torch.compile(model)
    ids = torch.tensor([[0, 5, 6], [4, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # a padded batch: refused for mask-blind models
    expected = cc.generate_reference(model, ids, mask, **small())
    out = cc.generate_reference(wrapped, ids, mask, **small())
    assert torch.equal(out.sequences, expected.sequences)
    assert torch.equal(cc.optimize(wrapped, **small()).generate(ids, mask).sequences,
                       expected.sequences)


CAUSAL = r"this model's attention is causal \({}\): a causal LM predicts each token from the tokens"


PROBED = "a token changed its own position's logits and no earlier position's"


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=64))


def test_a_causal_lm_is_refused_by_optimize_even_given_a_mask_token(ids):
    # Its config is silent: one forward of two rows that differ in their last token shows that
    # no earlier position sees it. Refused before the mask token is asked for.
    for mask in ({}, {"mask_id": 63}):
        with pytest.raises(ValueError, match=CAUSAL.format(PROBED) + r".* Use a diffusion LM"):
            cc.optimize(tiny_gpt2(), gen_length=8, block_length=4, compile=False, **mask)


def test_a_bidirectional_masked_lm_is_accepted(ids):
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=64,
                                      max_position_embeddings=64))
    fast = cc.optimize(bert, mask_id=63, gen_length=8, block_length=4, compile=False)
    out = fast.generate(ids)
    assert out.generated.shape == (2, 8) and not (out.generated == 63).any()


class CausalMix(ContextMixModel):
    """ContextMixModel whose context is the mean over the tokens up to each position."""

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        length = input_ids.shape[1]
        seen = self.context[input_ids].cumsum(1) / torch.arange(1, length + 1)[:, None]
        return (self.token[input_ids] + self.position[torch.arange(length)] + seen) * self.sharpness


def test_a_causal_generic_model_is_refused_and_one_whose_logits_see_no_token_accepted(ids):
    with pytest.raises(ValueError, match=CAUSAL.format(PROBED)):
        cc.optimize(CausalMix(), **small())
    # Logits that no token changes say nothing of the attention: no refusal.
    script = [torch.randn(3 + 8, 40, generator=torch.Generator().manual_seed(0))]
    cc.optimize(ScriptedModel(script, mask_id=MASK), compile=False, **small()).generate(ids)
    # A bidirectional model changes earlier positions too.
    cc.optimize(ContextMixModel(), compile=False, **small())


def test_a_config_saying_its_attention_is_causal_is_refused_by_every_entry_point(model, ids):
    for flag in ("is_decoder", "is_causal"):
        setattr(model.config, flag, True)
        assert_rejected(model, ids, CAUSAL.format("its config says so: is_causal or is_decoder"),
                        **small())
        with pytest.raises(ValueError, match="attention is causal"):
            cc.optimize(model, **small())
        delattr(model.config, flag)
    # A config saying it is not causal is taken at its word (no probe).
    causal = CausalMix()
    causal.config.is_causal = False
    cc.optimize(causal, compile=False, **small())


def test_a_dtype_the_model_is_not_in_is_refused_not_ignored(ids):
    model = ContextMixModel()
    fix = (r"dtype='bfloat16' but the model's weights are float32: the dtype is applied once, by "
           r"optimize\(model, dtype=...\)")
    with pytest.raises(ValueError, match=fix):
        cc.generate_reference(model, ids, dtype="bfloat16", **small())
    fast = cc.optimize(model, compile=False, **small())
    with pytest.raises(ValueError, match=fix):
        fast.generate(ids, config=DecodeConfig(dtype="bfloat16", **small()))
    with pytest.raises(ValueError, match=fix):
        cc.verify(fast, ids, dtype="bfloat16")
    # The dtype the model is in is fine, and optimize() still casts.
    cc.generate_reference(model, ids, dtype="float32", **small())
    bf16 = cc.optimize(ContextMixModel(), dtype="bfloat16", compile=False, **small())
    assert bf16.generate(ids).sequences.shape == (2, 3 + 8)
    # Cast since: decoded as it is now (optimize()'s dtype was applied once).
    bf16.to(torch.float32)
    assert bf16.generate(ids).sequences.shape == (2, 3 + 8)


def test_a_training_model_whose_dropout_is_zero_is_not_warned_about():
    # Only dropout that randomises the logits (p > 0) is worth the warning.
    model = ContextMixModel(seed=3)
    model.dropout = torch.nn.Dropout(0.0)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cc.generate_reference(model, torch.tensor([[1, 2, 3]]), gen_length=8, block_length=4)


def test_optimized_path_raises_the_same_errors():
    fast = cc.optimize(ContextMixModel(vocab_size=40, mask_id=39, max_len=32), gen_length=8,
                       block_length=4)
    with pytest.raises(ValueError, match=r"use input_ids.long\(\)"):
        fast.generate(torch.randint(0, 30, (1, 4)).float())
    with pytest.raises(ValueError, match="choose a block_length"):
        fast.generate(torch.randint(0, 30, (1, 4)), block_length=3)
