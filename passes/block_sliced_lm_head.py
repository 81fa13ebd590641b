"""BlockSlicedLMHead: slice the hidden states before the LM head, not the logits after it.

Pattern (the denoising step takes the current block's logits right after the model's forward):

    logits = linear(h, W[, b])                 # torch._C._nn.linear or F.linear, h [B, L, d]
    [logits = logits * s | logits / s | tanh(logits)            # elementwise, any number of them
              | .float() / .half() / .bfloat16() / .double() | .to(dtype)
              | credit_compile::gather_vocab(logits, ...)]   # tensor parallelism's vocabulary gather
    block  = logits.index_select(1, positions)  # [B, Lb, V]

where the head's output may also be scaled in place before the elementwise chain and the slice
(`logits.mul_(s)`, `.div_(s)`, `.tanh_()`: the official LLaDA code's `scale_logits`).

Replacement:

    block = linear(h.index_select(1, positions), W[, b])
            [* s | / s | tanh | .float() / .half() / .bfloat16() / .double() | .to(dtype)]

so the LM head (the largest matmul of a LLaDA forward: d x V = 4096 x 126464) runs on the block's
Lb positions instead of all L. Every op moved past the `index_select` acts on each position (row)
independently, so the result is the same rows.

Guard: h is 3-D, the selection is along dim 1 (the sequence), positions is a 1-D integer tensor,
and the full logits (and every elementwise intermediate) have exactly one user besides in-place
scalings of the head's output, which must come before that user and be used by nothing. When the
full logits are needed elsewhere, slicing would not save the full matmul: the pass does not fire.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Graph, GraphModule, Node

from .base import GraphPass, fake, is_call, is_method, is_number, storage_of, touched_between

_LINEAR = (torch._C._nn.linear, torch.nn.functional.linear)
_CASTS = ("float", "half", "bfloat16", "double")
# Tensor parallelism's gather of the vocabulary slices (credit_compile.distributed): each
# position's logits are gathered apart from the others'.
_GATHER_VOCAB = ("credit_compile.gather_vocab", "credit_compile.gather_vocab.default")


def _index_select(node):
    """`x.index_select(dim, index)` / `torch.index_select(x, dim, index)` -> (x, dim, index)."""
    if not (is_method(node, "index_select") or is_call(node, torch.index_select)):
        return None
    args = list(node.args) + [node.kwargs.get(k) for k in ("dim", "index")[len(node.args) - 1:]]
    if len(args) != 3 or set(node.kwargs) - {"dim", "index"}:
        return None
    return tuple(args)


def _rowwise_input(node):
    """The tensor input of a position-wise op between the LM head and the slice, else None.

    Accepted: multiplication/division by a Python number (LLaDA's `scale_logits`, and the two
    around Gemma's logit soft-capping `tanh(l / cap) * cap`), tanh, dtype casts, and the
    gather of a vocabulary-parallel head's slices (`credit_compile::gather_vocab`).
    """
    if not isinstance(node, Node) or node.kwargs:
        return None
    if node.op == "call_function" and str(node.target) in _GATHER_VOCAB and node.args:
        return node.args[0]
    if is_method(node, *_CASTS) and len(node.args) == 1:
        return node.args[0]
    if (is_call(node, torch.tanh) or is_method(node, "tanh")) and len(node.args) == 1:
        return node.args[0]
    if is_method(node, "to") and len(node.args) == 2 and isinstance(node.args[1], torch.dtype):
        return node.args[0]
    is_mul = is_call(node, operator.mul, torch.mul) or is_method(node, "mul", "__mul__", "__rmul__")
    if is_mul and len(node.args) == 2:
        a, b = node.args
        if isinstance(a, Node) and is_number(b):
            return a
        if isinstance(b, Node) and is_number(a):
            return b
    is_div = is_call(node, operator.truediv, torch.div) or is_method(node, "div", "__truediv__")
    if is_div and len(node.args) == 2:
        a, b = node.args
        if isinstance(a, Node) and is_number(b):
            return a
    return None


def _in_place_rowwise(node: Node, target: Node) -> bool:
    """`target.mul_(number)`, `.div_(number)` or `.tanh_()`, whose result nothing reads."""
    if node.op != "call_method" or node.kwargs or node.users or node.args[:1] != (target,):
        return False
    if node.target in ("mul_", "div_"):
        return len(node.args) == 2 and is_number(node.args[1])
    return node.target == "tanh_" and len(node.args) == 1


class BlockSlicedLMHead(GraphPass):
    """`index_select(linear(h, W, b), 1, pos)` -> `linear(index_select(h, 1, pos), W, b)`."""

    name = "block_sliced_lm_head"

    def rewrite(self, graph_module: GraphModule) -> int:
        graph = graph_module.graph
        count = 0
        for node in list(graph.nodes):
            if getattr(node, "_erased", False):
                continue
            match = self._match(node)
            if match is not None:
                self._replace(graph, node, *match)
                count += 1
        return count

    @staticmethod
    def _match(select: Node):
        selected = _index_select(select)
        if selected is None:
            return None
        source, dim, positions = selected
        chain: list[Node] = []  # position-wise ops, nearest to the slice first
        while isinstance(source, Node) and not is_call(source, *_LINEAR):
            inner = _rowwise_input(source)
            if inner is None:
                return None
            chain.append(source)
            source = inner
        linear = source
        if not isinstance(linear, Node):
            return None
        reader = chain[-1] if chain else select  # the one op that reads the head's output
        in_place = [u for u in linear.users if u is not reader]
        if in_place:
            order = {n: i for i, n in enumerate(select.graph.nodes)}
            if not all(_in_place_rowwise(u, linear) and order[linear] < order[u] < order[reader]
                       for u in in_place):
                return None
            in_place.sort(key=order.__getitem__)
        for node in chain:
            if len(node.users) != 1:  # the full logits (or a scaled copy) are used elsewhere
                return None
        if len(linear.args) < 2 or set(linear.kwargs) - {"bias"}:
            return None
        hidden = linear.args[0]
        f_hidden, f_pos, f_out = fake(hidden), fake(positions), fake(linear)
        if f_hidden is None or f_pos is None or f_out is None:
            return None
        if f_hidden.dim() != 3 or f_out.dim() != 3 or dim not in (1, -2):
            return None
        if f_pos.dim() != 1 or f_pos.dtype not in (torch.int64, torch.int32):
            return None
        # The new linear reads h, W and b at the slice: nothing may write them in place between.
        weights = [storage_of(n) for n in (hidden, *linear.args[1:], linear.kwargs.get("bias"))]
        if touched_between(select.graph, linear, select, weights, reads=False):
            return None
        return linear, in_place, chain, positions

    @staticmethod
    def _replace(graph: Graph, select: Node, linear: Node, in_place: list[Node], chain: list[Node],
                 positions: Node):
        hidden = linear.args[0]
        pairs = []  # (new node, the node it stands for on all positions)
        with graph.inserting_before(select):
            sliced = graph.call_method("index_select", (hidden, 1, positions))
            last = graph.call_function(linear.target, (sliced, *linear.args[1:]), dict(linear.kwargs))
            pairs.append((last, linear))
            for op in in_place:  # the block's logits are a new tensor: scale it out of place
                last = graph.call_method(op.target[:-1], (last, *op.args[1:]))
                pairs.append((last, op))
            for op in reversed(chain):  # re-apply the position-wise ops to the block's logits
                inner = _rowwise_input(op)
                args = tuple(last if a is inner else a for a in op.args)
                last = graph.create_node(op.op, op.target, args, dict(op.kwargs))
                pairs.append((last, op))
        _set_fakes(hidden, positions, sliced, pairs)
        select.replace_all_uses_with(last)
        graph.erase_node(select)
        for op in (*chain, *in_place):  # nearest to the slice first: no users left when erased
            graph.erase_node(op)
        graph.erase_node(linear)


def _set_fakes(hidden: Node, positions: Node, sliced: Node, pairs) -> None:
    """Metadata of the new nodes: the originals' (stack traces, ...), and fake tensors with the
    block's Lb positions in place of the sequence's L (later passes read them)."""
    f_hidden, f_pos = fake(hidden), fake(positions)
    for new, old in pairs:
        new.meta.update({k: v for k, v in old.meta.items() if k not in ("example_value", "val")})
    mode = getattr(f_hidden, "fake_mode", None)
    if mode is None or f_pos is None:
        return
    with mode:
        sliced.meta["example_value"] = f_hidden.index_select(1, f_pos)
        for new, old in pairs:
            f_old = fake(old)
            if f_old is not None:
                shape = list(f_old.shape)
                shape[1] = f_pos.shape[0]
                new.meta["example_value"] = f_old.new_empty(shape)
