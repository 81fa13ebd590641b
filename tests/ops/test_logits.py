"""ops/logits.py: the mask token is never a candidate; top-1 and its probability."""

from __future__ import annotations

import torch

from credit_compile.ops.logits import masked_vocab_logits, top1_and_prob


def test_the_mask_column_is_minus_infinity_in_a_fresh_float32_tensor():
    logits = torch.tensor([[0.0, 5.0, 1.0]], dtype=torch.bfloat16)
    out = masked_vocab_logits(logits, mask_id=1)
    assert out.dtype == torch.float32 and out[0, 1] == float("-inf")
    assert out[0, 0] == 0 and out[0, 2] == 1
    assert logits[0, 1] == 5  # the input is untouched


def test_top1_takes_the_first_index_on_ties_and_its_softmax_probability():
    top, prob = top1_and_prob(torch.tensor([[1.0, 3.0, 3.0, float("-inf")]]))
    assert top.tolist() == [1]
    torch.testing.assert_close(prob, torch.tensor([torch.e ** 3 / (torch.e + 2 * torch.e ** 3)]))
