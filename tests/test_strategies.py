"""decoding/strategies.py: what each strategy decides on its own."""

from __future__ import annotations

import pytest

from credit_compile import DecodeConfig
from credit_compile.decoding.strategies import make_strategy


@pytest.mark.parametrize("layout, optimized, fused_op", [
    ("sparse", True, True),    # the fast path calls the op: no eager pattern to fuse
    ("dense", True, False),    # the eager chain, which the credit-fusion pass fuses when compiled
    ("sparse", False, False),  # the reference: always the eager chain
    ("dense", False, False),
])
def test_the_credit_strategy_decides_the_fused_op_or_the_eager_chain(layout, optimized, fused_op):
    strategy = make_strategy(DecodeConfig(credit_layout=layout), mask_id=39, optimized=optimized)
    assert strategy.use_op is fused_op
