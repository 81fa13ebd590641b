"""The interface every credit_compile FX pass follows.

A pass is a pattern, a replacement, a guard that reads the fake tensors Dynamo records on each node
(`node.meta["example_value"]`) and a counter it increments once per rewrite, in
`torch._dynamo.utils.counters["credit_compile"][pass.name]` (tests assert the counter, never
stdout). Passes have the interface of `optimum.fx.optimization.Transformation` (GraphModule in,
GraphModule out) so they compose with optimum's own passes through `optimum...compose`, and a
`uuid()` so they can also be installed as Inductor custom graph passes (`CustomGraphPass`) whose
identity is part of Inductor's cache key.
"""

from __future__ import annotations

import hashlib
import inspect

import torch
from optimum.fx.optimization import Transformation
from torch._dynamo.utils import counters

COUNTER_GROUP = "credit_compile"


class GraphPass(Transformation):
    """Base class: subclasses set `name` and implement `rewrite(graph_module) -> int`."""

    name: str = "graph_pass"
    preserves_computation = True

    def rewrite(self, graph_module: torch.fx.GraphModule) -> int:
        """Rewrite every match in place; return the number of rewrites."""
        raise NotImplementedError

    def transform(self, graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
        count = self.rewrite(graph_module)
        if count:
            counters[COUNTER_GROUP][self.name] += count
        return graph_module

    def uuid(self) -> str:
        """Identity for Inductor's cache: the pass's source code."""
        return hashlib.sha256(inspect.getsource(type(self)).encode()).hexdigest()


def fake(node) -> torch.Tensor | None:
    """The fake tensor Dynamo recorded for `node`, if any."""
    if not isinstance(node, torch.fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def pass_count(name: str) -> int:
    return counters[COUNTER_GROUP][name]
