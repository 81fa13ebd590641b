"""passes/gumbel_fp64_elision.py: GumbelFP64Elision drops float64 Gumbel noise of temperature 0,
keeps the results, and declines every other sampler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pass_graphs import as_tuple, calls, compile_recording, methods

from credit_compile.passes import (
    GumbelFP64Elision,
    pass_count,
)


def foreign_add_gumbel_noise(logits, temperature):
    """LLaDA's original `add_gumbel_noise`, which upcasts whatever the temperature."""
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def greedy_sampler(logits):
    return torch.argmax(foreign_add_gumbel_noise(logits, 0), dim=-1)


def tempered_sampler(logits):
    return torch.argmax(foreign_add_gumbel_noise(logits, 0.5), dim=-1)


def greedy_with_random_remasking(logits):
    x0 = foreign_add_gumbel_noise(logits, 0.0).argmax(-1)
    return x0, torch.rand(x0.shape)  # a later draw: eliding the first would shift it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gumbel_fp64_elision_fires_and_matches_eager(dtype):
    fn, graphs = compile_recording(greedy_sampler, [GumbelFP64Elision()])
    for seed in range(3):
        logits = (torch.randn(2, 4, 50, generator=torch.Generator().manual_seed(seed)) * 4).to(dtype)
        assert torch.equal(fn(logits), greedy_sampler(logits))
    assert pass_count("gumbel_fp64_elision") == 1
    (gm,) = graphs
    assert calls(gm, torch.rand_like) == calls(gm, torch.log) == 0
    assert methods(gm, "to") == methods(gm, "exp") == 0  # no float64 tensor left
    (argmax,) = [n for n in gm.graph.nodes if n.target is torch.argmax]
    assert argmax.args[0].op == "placeholder"


def test_gumbel_fp64_elision_removes_float64_exp_overflow_ties():
    # exp overflows to inf in float64 above 709.78: eager ties every such logit and returns the
    # first; the rewrite returns the true argmax.
    logits = torch.tensor([[[710.0, 800.0, 3.0]]])
    fn, _ = compile_recording(greedy_sampler, [GumbelFP64Elision()])
    assert greedy_sampler(logits).item() == 0
    assert fn(logits).item() == 1


def greedy_without_upcast(logits):
    """The noise expression on float32 logits: exp overflows above 88.7, eager ties at inf."""
    noise = torch.rand_like(logits)
    return torch.argmax(logits.exp() / (-torch.log(noise)) ** 0, dim=-1)


def greedy_with_dropout(logits):
    x0 = foreign_add_gumbel_noise(logits, 0).argmax(-1)
    return x0, F.dropout1d(logits, 0.5, training=True)  # draws too: eliding shifts its numbers


def greedy_with_attention_dropout(logits):
    x0 = foreign_add_gumbel_noise(logits, 0).argmax(-1)
    q = logits[:, None]
    return x0, F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)


@pytest.mark.parametrize("fn", [tempered_sampler, greedy_with_random_remasking,
                                greedy_without_upcast, greedy_with_dropout,
                                greedy_with_attention_dropout])
def test_gumbel_fp64_elision_does_not_fire(fn):
    compiled, graphs = compile_recording(fn, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50)
    logits[0, 0, :2] = torch.tensor([90.0, 100.0])  # exp overflows in float32: eager ties at inf
    torch.manual_seed(7)
    ref = fn(logits)
    torch.manual_seed(7)
    out = compiled(logits)
    assert pass_count("gumbel_fp64_elision") == 0
    assert calls(graphs[0], torch.rand_like) == 1
    for a, b in zip(as_tuple(ref), as_tuple(out), strict=True):
        assert torch.equal(a, b)


def greedy_with_broadcast_noise(logits):
    """Noise with a leading dim of 2: the division (and the argmax) broadcast to [2, *x.shape]."""
    x = logits.to(torch.float64)
    noise = torch.rand((2, *x.shape), dtype=torch.float64)
    return (x.exp() / (-torch.log(noise)) ** 0).argmax(-1)


def test_gumbel_fp64_elision_declines_a_broadcasting_division():
    fn, _ = compile_recording(greedy_with_broadcast_noise, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50)
    torch.manual_seed(7)
    ref = greedy_with_broadcast_noise(logits)
    torch.manual_seed(7)
    out = fn(logits)
    assert pass_count("gumbel_fp64_elision") == 0
    assert out.shape == ref.shape == (2, 2, 4) and torch.equal(out, ref)


def greedy_returning_its_noise(logits):
    x = logits.to(torch.float64)
    noise = torch.rand_like(x, dtype=torch.float64)
    return (x.exp() / (-torch.log(noise)) ** 0).argmax(-1), noise  # the draw is used elsewhere


def greedy_keeping_the_upcast(logits):
    x = logits.to(torch.float64)
    noise = torch.rand_like(x, dtype=torch.float64)
    return (x.exp() / (-torch.log(noise)) ** 0).argmax(-1), x.sum()  # the cast has another user


def greedy_with_rand_and_double(logits):
    """The other spellings of the pattern: `.double()` and `torch.rand(shape, dtype=...)`."""
    x = logits.double()
    noise = torch.rand(x.shape, dtype=torch.float64)
    return torch.argmax(x.exp() / (-torch.log(noise)) ** 0, dim=-1)


def test_gumbel_fp64_elision_declines_a_noise_used_elsewhere():
    fn, graphs = compile_recording(greedy_returning_its_noise, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50)
    torch.manual_seed(3)
    ref = greedy_returning_its_noise(logits)
    torch.manual_seed(3)
    out = fn(logits)
    assert pass_count("gumbel_fp64_elision") == 0
    for a, b in zip(ref, out, strict=True):
        assert torch.equal(a, b)


def test_gumbel_fp64_elision_keeps_an_upcast_with_other_users():
    fn, graphs = compile_recording(greedy_keeping_the_upcast, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50, dtype=torch.float32)
    top, total = fn(logits)
    ref_top, ref_total = greedy_keeping_the_upcast(logits)
    assert pass_count("gumbel_fp64_elision") == 1
    assert torch.equal(top, ref_top) and total.dtype == torch.float64
    torch.testing.assert_close(total, ref_total)
    (gm,) = graphs
    assert calls(gm, torch.rand_like) == 0 and methods(gm, "to") == 1


def test_gumbel_fp64_elision_matches_double_and_rand():
    fn, graphs = compile_recording(greedy_with_rand_and_double, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50) * 4
    assert torch.equal(fn(logits), greedy_with_rand_and_double(logits))
    assert pass_count("gumbel_fp64_elision") == 1
    (gm,) = graphs
    assert calls(gm, torch.rand) == 0 and methods(gm, "double") == 0


def greedy_with_uniform_draw(logits):
    x0 = foreign_add_gumbel_noise(logits, 0).argmax(-1)
    return x0, torch.empty(x0.shape).uniform_()  # a random *method*: eliding shifts its numbers


def test_gumbel_fp64_elision_counts_a_random_method_as_a_draw():
    compiled, graphs = compile_recording(greedy_with_uniform_draw, [GumbelFP64Elision()])
    logits = torch.randn(2, 4, 50)
    torch.manual_seed(7)
    ref = greedy_with_uniform_draw(logits)
    torch.manual_seed(7)
    out = compiled(logits)
    assert pass_count("gumbel_fp64_elision") == 0
    assert calls(graphs[0], torch.rand_like) == 1
    for a, b in zip(ref, out, strict=True):
        assert torch.equal(a, b)


def two_greedy_samplers(a, b):
    return greedy_sampler(a), greedy_sampler(b)


def test_gumbel_fp64_elision_counts_every_rewrite():
    compiled, graphs = compile_recording(two_greedy_samplers, [GumbelFP64Elision()])
    a, b = torch.randn(2, 4, 50) * 4, torch.randn(3, 50) * 4
    out = compiled(a, b)
    ref = two_greedy_samplers(a, b)
    assert pass_count("gumbel_fp64_elision") == 2  # the counter adds one per rewrite
    assert calls(graphs[0], torch.rand_like) == 0
    assert all(torch.equal(x, y) for x, y in zip(out, ref, strict=True))
