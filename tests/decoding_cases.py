"""Shared by the decoding tests: scripted hand-computed cases (vocabulary of 4, token 3 the mask,
the prompt one token at canvas position 0, so generated positions are 1, 2, ...) and the
hypothesis draws of the properties on `ContextMixModel` (vocabulary 40, mask token 39)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from toy_models import ContextMixModel, ScriptedModel

import credit_compile as cc


def scripted(seed, calls, length, vocab=4, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(length, vocab, generator=g) * scale for _ in range(calls)]


MASK = 3


PROMPT = torch.zeros(1, 1, dtype=torch.long)


def rows(*logits, mask_logit=10.0):
    """[T, 4] logits: the prompt row, then one row per generated position; the mask column gets
    `mask_logit` (larger than every real logit: the mask token must still never be chosen)."""
    table = [[0.0, 0.0, 0.0]] + [list(r) for r in logits]
    return torch.tensor([r + [mask_logit] for r in table], dtype=torch.float32)


def committed(out) -> list[list[int]]:
    return [t.committed[0] for t in out.trace]


# One script, three strategies: which positions commit at each step, which tokens result.
#
#            pos1        pos2        pos3          pos4
#   call 0:  [3,0,0]     [2,0,0]     [0,1.9,0]     [0,0,1]      (pos4 prefers token 2)
#   call 1+: [3,0,0]     [2,0,0]     [0,1.9,0]     [0,1,0]      (pos4 switches to token 1)
S0 = rows([3, 0, 0], [2, 0, 0], [0, 1.9, 0], [0, 0, 1])


S1 = rows([3, 0, 0], [2, 0, 0], [0, 1.9, 0], [0, 1, 0])


def run(strategy, script=(S0, S1), **kw):
    model = ScriptedModel(list(script), mask_id=MASK)
    out = cc.generate_reference(model, PROMPT, strategy=strategy, trace=True, **kw)
    return out, model


MIX_MASK = 39


STRATEGIES = ["credit", "threshold", "llada"]


GEOMETRIES = [(4, 4), (6, 3), (8, 2), (8, 4), (12, 4), (12, 6), (16, 8)]


seeds = st.integers(0, 100_000)


taus = st.floats(0.05, 1.0)


alphas = st.floats(0.0, 3.0)


betas = st.floats(0.0, 1.0)


gammas = st.floats(0.05, 3.0)


def llada_steps(kw) -> int:
    return kw["gen_length"] if kw.get("steps") is None else kw["steps"]


def toy(seed: int, cls=ContextMixModel):
    return cls(seed=seed % 7, sharpness=0.5 + (seed % 5))


def prompts(seed: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, MIX_MASK, (batch, length), generator=torch.Generator().manual_seed(seed))


@st.composite
def decode_options(draw, strategy=None):
    """A strategy and the options it reads (llada: steps a multiple of the block count or None,
    greedy, with or without guidance)."""
    strategy = strategy or draw(st.sampled_from(STRATEGIES))
    gen_length, block_length = draw(st.sampled_from(GEOMETRIES))
    kw = dict(strategy=strategy, gen_length=gen_length, block_length=block_length)
    if strategy == "llada":
        blocks = gen_length // block_length
        # None: one token per step (gen_length steps).
        kw["steps"] = draw(st.one_of(st.none(), st.integers(1, 2 * block_length).map(
            lambda per_block: blocks * per_block)))
        kw["remasking"] = "low_confidence"
        kw["cfg_scale"] = draw(st.sampled_from([0.0, 0.0, 1.5]))
    else:
        kw["tau"] = draw(taus)
    if strategy == "credit":
        kw.update(alpha=draw(alphas), beta=draw(betas), gamma=draw(gammas),
                  credit_layout=draw(st.sampled_from(["dense", "sparse"])))
    return kw
