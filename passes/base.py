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
from numbers import Number

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
        """Identity for Inductor's cache: the source of the pass's module (its class and the
        helpers it matches with) and of this one (the shared guards)."""
        digest = hashlib.sha256()
        for module in (inspect.getmodule(type(self)), inspect.getmodule(GraphPass)):
            digest.update(inspect.getsource(module).encode())
        digest.update(type(self).__qualname__.encode())
        return digest.hexdigest()


def is_call(node, *targets) -> bool:
    """Whether `node` calls one of the functions `targets`."""
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in targets


def is_method(node, *names) -> bool:
    """Whether `node` calls a tensor method named one of `names`."""
    return isinstance(node, torch.fx.Node) and node.op == "call_method" and node.target in names


def is_number(value) -> bool:
    """A Python number constant of the graph (not a bool)."""
    return isinstance(value, Number) and not isinstance(value, bool)


def fake(node) -> torch.Tensor | None:
    """The fake tensor Dynamo recorded for `node`, if any."""
    if not isinstance(node, torch.fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def storage_of(node):
    """An identity of the storage behind `node`'s fake tensor (views share it), or None."""
    value = fake(node)
    if value is None:
        return None
    try:
        return value.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


def _writes_in_place(node: torch.fx.Node) -> bool:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if node.op not in ("call_method", "call_function") or not isinstance(name, str):
        return False
    return ((name.endswith("_") and not name.endswith("__")) or name == "setitem"
            or "out" in node.kwargs)


def touched_between(graph: torch.fx.Graph, start: torch.fx.Node, end: torch.fx.Node, storages,
                    *, reads: bool, skip=()) -> bool:
    """Whether a node strictly between `start` and `end`, outside `skip`, writes in place (or,
    with `reads`, reads at all) a tensor sharing storage with one of `storages`.

    A rewrite that moves a read or a write across such a node would change what it sees."""
    watched = {s for s in storages if s is not None}
    inside, skip = False, set(skip)
    for node in graph.nodes:
        if node is end:
            return False
        if inside and node not in skip and (reads or _writes_in_place(node)):
            if any(storage_of(a) in watched for a in node.all_input_nodes):
                return True
        inside = inside or node is start
    return False


def pass_count(name: str) -> int:
    return counters[COUNTER_GROUP][name]
