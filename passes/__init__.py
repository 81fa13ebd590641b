"""FX graph passes Inductor runs for credit_compile's backend (as one `CustomGraphPass`).

Installed as `credit_compile.passes` (the repository keeps them in a top-level passes/ folder).
See docs/passes.md for each pass's pattern, guard and payoff.
"""

from .base import COUNTER_GROUP, GraphPass, pass_count
from .block_sliced_lm_head import BlockSlicedLMHead
from .credit_fusion import CreditFusion
from .gumbel_fp64_elision import GumbelFP64Elision
from .pipeline import PassPipeline

__all__ = [
    "COUNTER_GROUP",
    "BlockSlicedLMHead",
    "CreditFusion",
    "GraphPass",
    "GumbelFP64Elision",
    "PassPipeline",
    "default_passes",
    "pass_count",
]


def default_passes(config=None) -> list[GraphPass]:
    """The passes in the order the backend runs them.

    `config` (a DecodeConfig or None) is accepted for passes that depend on it; the current ones
    guard on the graph alone: credit fusion only matches the dense credit layout and leaves other
    graphs alone, the Gumbel elision only matches a constant zero temperature.
    """
    return [BlockSlicedLMHead(), CreditFusion(), GumbelFP64Elision()]
