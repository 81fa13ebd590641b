"""Shared by the pass tests: compiling and capturing Dynamo graphs, counting their nodes, and the
inputs of the patterns the passes match."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from credit_compile.backend import make_backend
from credit_compile.config import DecodeConfig
from credit_compile.generation_setup import setup_generation


def compile_recording(fn, passes):
    """torch.compile(fn) through make_backend(passes, inductor=False); the rewritten graphs are
    appended to the returned list."""
    inner = make_backend(passes, inductor=False)
    graphs = []

    def backend(gm, example_inputs):
        forward = inner(gm, example_inputs)
        graphs.append(forward.__self__)
        return forward

    return torch.compile(fn, backend=backend, fullgraph=True), graphs


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def calls(gm, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.target == target)


def methods(gm, name) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_method" and n.target == name)


class Head(nn.Module):
    def __init__(self, variant: str, d=8, vocab=24):
        super().__init__()
        self.variant = variant
        self.linear = nn.Linear(d, vocab, bias=variant != "functional_scaled")

    def forward(self, h, positions):
        if self.variant == "module":  # torch._C._nn.linear in the Dynamo graph
            logits = self.linear(h)
        elif self.variant == "functional_scaled":  # LLaDA's scale_logits
            logits = F.linear(h, self.linear.weight) * (1 / 8**0.5)
        elif self.variant == "softcapped":  # Gemma's final logit soft-capping
            logits = torch.tanh(self.linear(h) / 30.0) * 30.0
        elif self.variant == "scaled_in_place":  # the official LLaDA code's scale_logits
            logits = F.linear(h, self.linear.weight)
            logits.mul_(1 / 8**0.5)
        elif self.variant == "scaled_in_place_then_cast":
            logits = self.linear(h)
            logits.div_(3.0)
            logits.tanh_()
            logits = logits.double()
        else:  # "divided_cast": HF-style upcast of the logits
            logits = (F.linear(h, self.linear.weight, self.linear.bias) / 3.0).float()
        return logits.index_select(1, positions)


def head_inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 12, 8, generator=g).to(dtype), torch.tensor([4, 5, 6, 7])


def tiny_llada():
    from credit_compile.models.presets import build_model

    return build_model("tiny", seed=3)


def state_tensors(setup):
    tensors = {k: v for k, v in vars(setup.state).items() if isinstance(v, torch.Tensor)}
    return {**tensors, **{f"buffers.{k}": v for k, v in setup.state.buffers.items()}}


def run_steps(backend, strategy="credit", steps=6, device="cpu", **config):
    """States after `steps` eager steps and after as many compiled steps, from the same start
    (and the same RNG seed: the llada sampler draws noise)."""
    model = tiny_llada().to(device)
    cfg = DecodeConfig(strategy=strategy, gen_length=8, block_length=4, seed=0, **config)
    ids = torch.randint(0, 120, (2, 3), generator=torch.Generator().manual_seed(1)).to(device)
    states = []
    for compiled in (False, True):
        setup = setup_generation(model, ids, None, cfg)  # seeds the global RNG
        step = setup.step_function()
        if compiled:
            step = torch.compile(step, backend=backend, fullgraph=True)
        with torch.no_grad():
            for _ in range(steps):
                step()
        states.append(state_tensors(setup))
    return states


def assert_same_state(ref, out):
    assert ref.keys() == out.keys()
    for key, value in ref.items():
        if value.is_floating_point():  # confidences, credit: the LM head sees fewer rows
            torch.testing.assert_close(out[key], value, atol=1e-5, rtol=0, msg=key)
        else:  # tokens, block index, step counters: exact
            assert torch.equal(out[key], value), key
