"""Eager reference of one CreditDecoding step: the oracle for the fused op and its kernels.

CreditDecoding (trace credits fused into the logits), per position i of the current block and
vocabulary token v, with `p = softmax(l)` over every token but the mask token and `v* = argmax p`:

    C[i, v] <- d * C[i, v] + p[i, v*] ** gamma * [v == v*] * [i still masked]
               (d = 0 on the block's first step, fresh credit; d = beta afterwards)
    l^      =  l + alpha * log1p(C)
    x0      =  argmax l^,   conf = softmax(l^)[x0]

The mask token is never a candidate: its logit is treated as -inf before anything else, so the
decoder can never commit it (a model whose top-1 is the mask token would otherwise stall).

Two credit layouts:
- dense: a float32 tensor [B, Lb, V] (what dInfer keeps);
- sparse: K slots per position, (token id, credit). Only tokens that were once top-1 carry credit,
  so with K >= the number of steps a position can stay masked (<= Lb) the sparse form is exact:
  `p^(v) = p(v) g(v) / (1 + sum_u p(u) (g(u) - 1))` with `g = (1 + C) ** alpha`. With fewer slots
  a new token evicts the slot of smallest credit (approximate).

Source: "CreditDecoding: Accelerating Parallel Decoding in Diffusion Large Language Models with
Trace Credits" (Wang et al., 2025), Eq. for the credit update and the fused logits.
"""

from __future__ import annotations

import torch

from .logits import masked_vocab_logits, top1_and_prob

EMPTY_SLOT = -1


def credit_step_dense_eager(
    logits: torch.Tensor,
    credit: torch.Tensor,
    masked: torch.Tensor,
    first_step: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One credit step with a dense credit [B, Lb, V] float32, updated in place.

    Args:
        logits: [B, Lb, V] raw logits of the current block (any float dtype).
        credit: [B, Lb, V] float32 credit, mutated.
        masked: [B, Lb] bool, positions still masked.
        first_step: 0-dim bool tensor, True on the block's first step (credit starts at zero).
    Returns:
        x0 [B, Lb] int64 and conf [B, Lb] float32 of the fused distribution.
    """
    raw = masked_vocab_logits(logits, mask_id)
    top, top_prob = top1_and_prob(raw)
    credit.mul_(torch.where(first_step, 0.0, beta))
    increment = top_prob.pow(gamma) * masked
    credit.scatter_add_(-1, top.unsqueeze(-1), increment.unsqueeze(-1))
    fused = raw + alpha * torch.log1p(credit)
    x0 = fused.argmax(-1)
    conf = torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return x0, conf


def credit_step_sparse_eager(
    logits: torch.Tensor,
    slot_ids: torch.Tensor,
    slot_credit: torch.Tensor,
    masked: torch.Tensor,
    first_step: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One credit step with a sparse credit of K slots per position, updated in place.

    Args:
        slot_ids: [B, Lb, K] int64 token ids (EMPTY_SLOT where unused), mutated.
        slot_credit: [B, Lb, K] float32 credits, mutated.
        Other arguments as `credit_step_dense_eager`.
    """
    raw = masked_vocab_logits(logits, mask_id)
    top, top_prob = top1_and_prob(raw)
    slot_credit.mul_(torch.where(first_step, 0.0, beta))
    increment = top_prob.pow(gamma) * masked

    hit = slot_ids == top.unsqueeze(-1)
    has_hit = hit.any(-1)
    # On a miss the new token takes the slot of smallest credit (an empty or fully decayed slot
    # while K >= the steps a position can stay masked, so nothing with credit is lost).
    target = torch.where(has_hit, hit.int().argmax(-1), slot_credit.argmin(-1)).unsqueeze(-1)
    old_credit = slot_credit.gather(-1, target).squeeze(-1)
    old_id = slot_ids.gather(-1, target).squeeze(-1)
    new_credit = torch.where(has_hit, old_credit, 0.0) + increment
    # Unmasked positions leave their slots as they are (after the decay).
    slot_credit.scatter_(-1, target, torch.where(masked, new_credit, old_credit).unsqueeze(-1))
    slot_ids.scatter_(-1, target, torch.where(masked, top, old_id).unsqueeze(-1))

    fused = sparse_fused_logits(raw, slot_ids, slot_credit, alpha)
    x0 = fused.argmax(-1)
    conf = torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return x0, conf


def sparse_fused_logits(
    raw: torch.Tensor, slot_ids: torch.Tensor, slot_credit: torch.Tensor, alpha: float
) -> torch.Tensor:
    """`raw + alpha * log1p(C)` where C lives in slots (ids are distinct per position)."""
    valid = slot_ids != EMPTY_SLOT
    boost = torch.where(valid, alpha * torch.log1p(slot_credit), 0.0)
    return raw.scatter_add(-1, slot_ids.clamp_min(0), boost)


def dense_from_sparse(slot_ids: torch.Tensor, slot_credit: torch.Tensor, vocab: int) -> torch.Tensor:
    """The dense credit [B, Lb, V] a sparse state stands for (for tests and debugging)."""
    valid = slot_ids != EMPTY_SLOT
    dense = torch.zeros(*slot_ids.shape[:-1], vocab, dtype=torch.float32, device=slot_ids.device)
    return dense.scatter_add(-1, slot_ids.clamp_min(0), torch.where(valid, slot_credit, 0.0))


def empty_sparse_state(batch: int, block: int, slots: int, device=None):
    """Fresh sparse credit state: (slot_ids, slot_credit)."""
    ids = torch.full((batch, block, slots), EMPTY_SLOT, dtype=torch.int64, device=device)
    credit = torch.zeros((batch, block, slots), dtype=torch.float32, device=device)
    return ids, credit
