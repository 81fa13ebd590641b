"""GumbelFP64Elision: drop LLaDA-style float64 Gumbel noise whose temperature is a constant 0.

Pattern (LLaDA's `add_gumbel_noise` as written in code that upcasts unconditionally, with the
temperature a constant 0, feeding an argmax):

    x     = logits.to(torch.float64)                         # or .double()
    noise = torch.rand_like(x, dtype=torch.float64)          # or torch.rand(shape, ...)
    y     = x.exp() / (-torch.log(noise)) ** 0
    top   = y.argmax(-1)                                     # or torch.argmax(y, dim=...)

Replacement:

    top   = logits.argmax(-1)                                # the float64 cast, too, goes

Exact: `u ** 0 == 1` for every u (inf and nan included), `exp(x) / 1 == exp(x)`, and exp is
increasing, so the argmax is unchanged, and the upcast is exact. The only differences are ties
that float64 `exp` itself creates, which the rewrite removes: exp overflows to inf for x > 709.78
(every such logit ties), underflows to 0 below -745, and maps distinct logits within ~1e-16 of 0
to 1.0; there the eager argmax returns the first of the tied indices, the rewrite the true max.

Guard: x is float64 (in a narrower dtype exp overflows within the logits' range); the exponent
is the Python number 0; every node of the noise expression has exactly one
user (the `.to(float64)` may have others: it stays then); the argmax does not broadcast (the
division's shape is x's); and the elided draw is the graph's only random op. The last point keeps
every other random number of the step (random remasking, ...) identical to eager under
`fallback_random`: removing a draw shifts the generator for the draws after it. (The global RNG
is then not advanced by this step, unlike eager; a caller that relies on the generator's position
after generation, rather than on the step's outputs, sees a different stream.)
"""

from __future__ import annotations

import operator
from numbers import Number

import torch
from torch.fx import GraphModule, Node

from .base import GraphPass, fake, is_call, is_method

_F = torch.nn.functional
_RANDOM_FUNCTIONS = {
    torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint, torch.randint_like,
    torch.randperm, torch.bernoulli, torch.multinomial, torch.normal, torch.poisson,
    torch.dropout, torch.native_dropout, torch.rrelu, torch.alpha_dropout,
    torch.feature_alpha_dropout, torch.feature_dropout,
    _F.dropout, _F.dropout1d, _F.dropout2d, _F.dropout3d, _F.alpha_dropout,
    _F.feature_alpha_dropout, _F.rrelu, _F.gumbel_softmax, _F.fractional_max_pool2d,
    _F.fractional_max_pool3d,
}
_RANDOM_METHODS = {
    "uniform_", "normal_", "bernoulli_", "bernoulli", "exponential_", "random_", "geometric_",
    "log_normal_", "cauchy_", "multinomial",
}


def _unary(node, functions, methods):
    """`function(x)` / `x.method()` -> x."""
    if (is_call(node, *functions) or is_method(node, *methods)) and len(node.args) == 1 and not node.kwargs:
        return node.args[0]
    return None


def _is_random(node: Node) -> bool:
    """Whether `node` may draw random numbers (when unsure: yes)."""
    if node.op == "call_module":
        return True  # a module call not inlined by dynamo: its body is not in this graph
    if node.op == "call_function":
        if node.target is _F.scaled_dot_product_attention:
            dropout = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
            return not (isinstance(dropout, Number) and dropout == 0)
        return node.target in _RANDOM_FUNCTIONS
    return node.op == "call_method" and node.target in _RANDOM_METHODS


def _argmax_input(node):
    if is_method(node, "argmax") or is_call(node, torch.argmax):
        return node.args[0] if node.args else node.kwargs.get("input")
    return None


def _upcast_source(node):
    """`t.to(torch.float64)` / `t.double()` of a floating tensor t -> t (argmax(t) is the same)."""
    if is_method(node, "double") and len(node.args) == 1 and not node.kwargs:
        source = node.args[0]
    elif (is_method(node, "to") and not node.kwargs and len(node.args) == 2
          and node.args[1] is torch.float64):
        source = node.args[0]
    elif is_method(node, "to") and len(node.args) == 1 and node.kwargs == {"dtype": torch.float64}:
        source = node.args[0]
    else:
        return None
    f_source = fake(source)
    return source if f_source is not None and f_source.is_floating_point() else None


class GumbelFP64Elision(GraphPass):
    """`argmax(exp(x) / (-log(rand)) ** 0)` -> `argmax(x)` (x before its float64 upcast)."""

    name = "gumbel_fp64_elision"

    def rewrite(self, graph_module: GraphModule) -> int:
        graph = graph_module.graph
        matches = [m for m in map(self._match, graph.nodes) if m is not None]
        randoms = [n for n in graph.nodes if _is_random(n)]
        if not matches or len(randoms) != len(matches):
            return 0  # another random op would draw different numbers once a draw is removed
        for argmax, x, chain in matches:
            upcast_source = _upcast_source(x)
            argmax.replace_input_with(argmax.args[0] if argmax.args else argmax.kwargs["input"],
                                      upcast_source if upcast_source is not None else x)
            for node in chain:  # division first: each is unused once its user is gone
                graph.erase_node(node)
            if upcast_source is not None and not x.users:
                graph.erase_node(x)
        return len(matches)

    @staticmethod
    def _match(argmax: Node):
        division = _argmax_input(argmax)
        if not (is_call(division, operator.truediv, torch.div, torch.true_divide)
                or is_method(division, "div", "true_divide", "__truediv__")):
            return None
        if len(division.args) != 2 or division.kwargs:
            return None
        exp, power = division.args
        x = _unary(exp, (torch.exp,), ("exp",))
        if x is None or not (is_call(power, operator.pow, torch.pow) or is_method(power, "pow", "__pow__")):
            return None
        if len(power.args) != 2 or power.kwargs:
            return None
        base, exponent = power.args
        if not isinstance(exponent, Number) or isinstance(exponent, bool) or exponent != 0:
            return None
        log = _unary(base, (operator.neg, torch.neg), ("neg", "__neg__"))
        noise = _unary(log, (torch.log,), ("log",)) if log is not None else None
        if noise is None or not is_call(noise, torch.rand_like, torch.rand):
            return None
        chain = [division, exp, power, base, log, noise]
        if any(len(node.users) != 1 for node in chain):
            return None
        f_x, f_division = fake(x), fake(division)
        if f_x is None or f_division is None or f_x.shape != f_division.shape:
            return None
        if f_x.dtype != torch.float64:
            # In a narrower dtype exp overflows early (above 88.7 in float32, 11.1 in float16):
            # eager's ties at inf would be replaced by the true maximum.
            return None
        return argmax, x, chain
