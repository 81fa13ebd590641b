"""ops/credit_step_reference.py: the eager reference op itself. Credit decays by exactly beta and
never goes negative."""

from __future__ import annotations

import math

import torch
from decoding_cases import alphas, betas, gammas, seeds
from hypothesis import given
from hypothesis import strategies as st

from credit_compile.ops.credit_step_reference import credit_step_dense_eager


def _independent_increment(logits, masked, gamma, mask_id):
    """p(v*)^gamma on v* for masked positions, computed in float64 without the library."""
    l64 = logits.double().clone()
    l64[..., mask_id] = -math.inf
    top = l64.argmax(-1)
    p = torch.softmax(l64, -1).gather(-1, top[..., None]).squeeze(-1)
    inc = torch.zeros_like(l64)
    inc.scatter_(-1, top[..., None], (p ** gamma * masked.double())[..., None])
    return inc, top


@given(seed=seeds, beta=betas, gamma=gammas, alpha=alphas, steps=st.integers(2, 6),
       batch=st.integers(1, 3), block=st.integers(1, 6), vocab=st.integers(3, 12))
def test_credit_op_decays_by_beta_and_stays_non_negative(seed, beta, gamma, alpha, steps, batch,
                                                         block, vocab):
    g = torch.Generator().manual_seed(seed)
    mask_id = vocab - 1
    beta32 = torch.tensor(beta, dtype=torch.float32)
    # Leftover credit from an earlier block: the first step must discard it.
    credit = torch.rand(batch, block, vocab, generator=g) * 5
    masked = torch.ones(batch, block, dtype=torch.bool)
    for step in range(steps):
        logits = torch.randn(batch, block, vocab, generator=g) * 3
        before = credit.clone()
        x0, conf = credit_step_dense_eager(logits, credit, masked, torch.tensor(step == 0),
                                           alpha, beta, gamma, mask_id)
        inc, _ = _independent_increment(logits, masked, gamma, mask_id)
        assert (credit >= 0).all()
        decayed = torch.zeros_like(before) if step == 0 else before * beta32
        # Entries that got no increment are exactly the decayed credit.
        no_gain = inc == 0
        assert torch.equal(credit[no_gain], decayed[no_gain])
        assert torch.allclose(credit.double(), decayed.double() + inc, rtol=1e-5, atol=1e-6)
        assert (credit[..., mask_id] == 0).all()  # the mask token never earns credit
        # x0 and conf are those of the fused logits l + alpha*log1p(C), the mask token excluded.
        fused = logits.double() + alpha * torch.log1p(credit.double())
        fused[..., mask_id] = -math.inf
        probs = torch.softmax(fused, -1)
        assert (x0 != mask_id).all()
        assert torch.allclose(conf.double(), probs.gather(-1, x0[..., None]).squeeze(-1),
                              rtol=1e-4, atol=1e-5)
        assert torch.allclose(conf.double(), probs.amax(-1), rtol=1e-4, atol=1e-5)
        # Some positions get committed: they stop earning credit from now on.
        masked = masked & (torch.rand(batch, block, generator=g) < 0.7)
