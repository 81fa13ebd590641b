"""FX graph passes run by credit_compile's torch.compile backend before Inductor.

Installed as `credit_compile.passes` (the repository keeps them in a top-level passes/ folder).
"""

from .base import COUNTER_GROUP, GraphPass, pass_count

__all__ = ["COUNTER_GROUP", "GraphPass", "default_passes", "pass_count"]


def default_passes(config=None) -> list[GraphPass]:
    """The passes in the order the backend runs them."""
    return []
