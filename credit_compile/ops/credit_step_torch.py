"""Plain-torch implementations of the fused credit step (CPU, and any device without Triton).

The math is the one of `credit_step_reference.py`. Every row (position) is independent, so these
implementations run the eager reference itself on groups of rows (views of the caller's tensors,
so the credit state is updated in place). The results are the reference's bit for bit, and the
float32 temporaries the reference creates (raw logits, softmax, fused logits, ...) are bounded by
`ROW_CHUNK_ELEMS` entries per group instead of several [B, Lb, V] float32 tensors at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .credit_step_reference import credit_step_dense_eager, credit_step_sparse_eager

# float32 entries per group of rows (64 MiB per temporary).
ROW_CHUNK_ELEMS = 1 << 24


def _row_groups(batch: int, block: int, vocab: int) -> Iterator[tuple[slice, slice]]:
    """(batch slice, block slice) groups of at most ROW_CHUNK_ELEMS logits (at least one row)."""
    per_b = block * vocab
    if per_b <= ROW_CHUNK_ELEMS:
        nb = max(1, ROW_CHUNK_ELEMS // max(per_b, 1))
        for b0 in range(0, batch, nb):
            yield slice(b0, min(batch, b0 + nb)), slice(0, block)
        return
    nl = max(1, ROW_CHUNK_ELEMS // max(vocab, 1))
    for b in range(batch):
        for l0 in range(0, block, nl):
            yield slice(b, b + 1), slice(l0, min(block, l0 + nl))


def _by_row_groups(eager_step, logits, state, masked, first_step, *scalars):
    """Run `eager_step` on row groups (bounded float32 temporaries); `state` views are updated
    in place, x0 and conf gathered into fresh outputs."""
    batch, block, vocab = logits.shape
    x0 = torch.empty((batch, block), dtype=torch.int64, device=logits.device)
    conf = torch.empty((batch, block), dtype=torch.float32, device=logits.device)
    first_step = first_step.to(device=logits.device, dtype=torch.bool)
    for bs, ls in _row_groups(batch, block, vocab):
        out_x, out_c = eager_step(logits[bs, ls], *(t[bs, ls] for t in state), masked[bs, ls],
                                  first_step, *scalars)
        x0[bs, ls] = out_x
        conf[bs, ls] = out_c
    return x0, conf


def credit_step_dense_torch(
    logits: torch.Tensor,
    credit: torch.Tensor,
    masked: torch.Tensor,
    first_step: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`credit_step_dense_eager`, row group by row group; `credit` updated in place."""
    return _by_row_groups(credit_step_dense_eager, logits, (credit,), masked, first_step,
                          alpha, beta, gamma, mask_id)


def credit_step_sparse_torch(
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
    """`credit_step_sparse_eager`, row group by row group; slots updated in place."""
    return _by_row_groups(credit_step_sparse_eager, logits, (slot_ids, slot_credit), masked,
                          first_step, alpha, beta, gamma, mask_id)
