"""CreditFusion: the eager dense CreditDecoding chain -> one call of the fused credit-step op.

Pattern (what Dynamo records for `credit_step_dense_eager` inlined into the denoising step):

    vocab  = torch.arange(V, device=...);  is_mask = vocab == mask_id
    raw    = torch.where(is_mask, -inf, logits.float())
    top    = raw.argmax(-1)
    prob   = torch.softmax(raw, -1).gather(-1, top.unsqueeze(-1)).squeeze(-1)
    credit.mul_(torch.where(first_step, 0.0, beta))
    incr   = prob.pow(gamma) * masked
    credit.scatter_add_(-1, top.unsqueeze(-1), incr.unsqueeze(-1))
    fused  = raw + alpha * torch.log1p(credit)
    x0     = fused.argmax(-1)
    conf   = torch.softmax(fused, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)

Replacement:

    out  = torch.ops.credit_compile.credit_step_dense[_triton](
               logits, credit, masked, first_step, alpha, beta, gamma, mask_id)
    x0   = out[0];  conf = out[1]

(`_triton` when the fake logits are on CUDA and the Triton op is registered.) The constants are
read from the graph. Guard: logits 3-D, credit float32 with the logits' shape and device, masked
and first_step are tensors, every intermediate value is used only inside the chain (x0 and conf
may have any users), the in-place results of `mul_`/`scatter_add_` are unused, and nothing else
reads or writes the credit between its decay and its `log1p`. The op is inserted where `log1p`
was, so every reader of the credit after that point sees the same state as before.
"""

from __future__ import annotations

import math
import operator

import torch
from torch.fx import Graph, GraphModule, Node

from .base import GraphPass, fake, is_call, is_method, is_number, storage_of, touched_between

_SOFTMAX = (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax)
# Dynamo records some operators as dunder methods (`vocab.__eq__(5)` in torch 2.11).
_MUL = ("mul", "__mul__", "__rmul__")


def _arg(node: Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _is_last_dim(dim, ndim: int) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim in (-1, ndim - 1)


def _unsqueeze_last(node, ndim: int):
    """`x.unsqueeze(-1)` -> x (ndim: the result's rank)."""
    if is_method(node, "unsqueeze") and _is_last_dim(_arg(node, 1, "dim"), ndim):
        return node.args[0]
    return None


def _argmax_last(node, ndim: int):
    """`x.argmax(-1)` / `torch.argmax(x, -1)` (keepdim False) -> x."""
    if not (is_method(node, "argmax") or is_call(node, torch.argmax)):
        return None
    if _arg(node, 2, "keepdim", False) or not _is_last_dim(_arg(node, 1, "dim"), ndim):
        return None
    return _arg(node, 0, "input")


def _top_prob(node, ndim: int):
    """`softmax(x, -1).gather(-1, top.unsqueeze(-1)).squeeze(-1)` -> (x, top, inner nodes)."""
    if not (is_method(node, "squeeze") and _is_last_dim(_arg(node, 1, "dim"), ndim)):
        return None
    gather = node.args[0]
    if not (is_method(gather, "gather") and _is_last_dim(_arg(gather, 1, "dim"), ndim)):
        return None
    soft, index = gather.args[0], _arg(gather, 2, "index")
    top = _unsqueeze_last(index, ndim)
    if top is None:
        return None
    if is_call(soft, *_SOFTMAX):
        dim, dtype = _arg(soft, 1, "dim"), _arg(soft, 2, "dtype")
    elif is_method(soft, "softmax"):
        dim, dtype = _arg(soft, 1, "dim"), _arg(soft, 2, "dtype")
    else:
        return None
    source = _arg(soft, 0, "input")
    if dtype is not None or not _is_last_dim(dim, ndim) or source is None:
        return None
    return source, top, [node, gather, soft, index]


def _scaled(node):
    """`c * x` / `x * c` with a Python number c -> (c, x)."""
    if not (is_call(node, operator.mul, torch.mul) or is_method(node, *_MUL)) or len(node.args) != 2:
        return None
    a, b = node.args
    if is_number(a) and isinstance(b, Node):
        return a, b
    if is_number(b) and isinstance(a, Node):
        return b, a
    return None


def _masked_vocab(raw):
    """`torch.where(arange(V) == mask_id, -inf, logits.float())`
    -> (logits, mask_id, V, replaced nodes, nodes to erase when unused)."""
    if not (is_call(raw, torch.where) and len(raw.args) == 3):
        return None
    cond, neg_inf, value = raw.args
    if not (is_number(neg_inf) and math.isinf(neg_inf) and neg_inf < 0):
        return None
    is_eq = is_call(cond, operator.eq, torch.eq) or is_method(cond, "eq", "__eq__")
    if not is_eq or len(cond.args) != 2:
        return None
    vocab, mask_id = cond.args
    if not (is_call(vocab, torch.arange) and isinstance(mask_id, int) and not isinstance(mask_id, bool)):
        return None
    if len(vocab.args) != 1 or not isinstance(vocab.args[0], int):
        return None  # arange(V) only: arange(start, end) / arange(0, V, step) are other vocabularies
    f_vocab = fake(vocab)
    if f_vocab is None or f_vocab.dtype != torch.int64 or set(vocab.kwargs) - {"device", "dtype"}:
        return None  # a float arange rounds large ids together: mask_id would match several
    nodes = [raw]
    if is_method(value, "float") and len(value.args) == 1 and not value.kwargs:
        nodes.append(value)
        logits = value.args[0]
    elif (is_method(value, "to") and len(value.args) == 2 and value.args[1] is torch.float32
          and not value.kwargs):
        nodes.append(value)
        logits = value.args[0]
    else:
        logits = value  # already float32 (checked by the guard)
    return logits, mask_id, vocab.args[0], nodes, [cond, vocab]


class CreditFusion(GraphPass):
    """Replace the eager dense credit chain with `credit_compile::credit_step_dense[_triton]`."""

    name = "credit_fusion"

    def rewrite(self, graph_module: GraphModule) -> int:
        graph = graph_module.graph
        count = 0
        for node in list(graph.nodes):
            if is_method(node, "scatter_add_") and not getattr(node, "_erased", False):
                order = {n: i for i, n in enumerate(graph.nodes)}
                match = self._match(node, order)
                if match is not None and self._replace(graph, match):
                    count += 1
        return count

    # --------------------------------------------------------------------------------------------

    def _match(self, scatter: Node, order: dict) -> dict | None:
        credit = scatter.args[0]
        fake_credit = fake(credit)
        if fake_credit is None or fake_credit.dim() != 3 or scatter.users:
            return None
        if len(scatter.args) != 4 or scatter.kwargs or not _is_last_dim(scatter.args[1], 3):
            return None
        top = _unsqueeze_last(scatter.args[2], 3)
        increment = _unsqueeze_last(scatter.args[3], 3)
        if top is None or increment is None:
            return None
        raw = _argmax_last(top, 3)
        if raw is None:
            return None
        vocab_match = _masked_vocab(raw)
        if vocab_match is None:
            return None
        logits, mask_id, vocab_size, raw_nodes, optional = vocab_match

        # increment = prob.pow(gamma) * masked, prob = softmax(raw)[top]
        if not (is_call(increment, operator.mul, torch.mul) or is_method(increment, *_MUL)):
            return None
        if len(increment.args) != 2 or increment.kwargs:
            return None
        for powered, masked in (increment.args, reversed(increment.args)):  # noqa: B007 (used after break)
            if is_call(powered, operator.pow, torch.pow) or is_method(powered, "pow", "__pow__"):
                break
        else:
            return None
        gamma = powered.args[1] if len(powered.args) == 2 else None
        if not is_number(gamma) or not isinstance(masked, Node):
            return None
        prob = _top_prob(powered.args[0], 3)
        if prob is None or prob[0] is not raw or prob[1] is not top:
            return None
        prob_nodes = prob[2]

        # the decay credit.mul_(where(first_step, 0.0, beta)): the credit's last use before
        # the scatter; the log1p: its first use after.
        credit_users = sorted(credit.users, key=order.__getitem__)
        at = credit_users.index(scatter)
        if at == 0 or at + 1 >= len(credit_users):
            return None
        decay, log1p = credit_users[at - 1], credit_users[at + 1]
        if not (is_method(decay, "mul_") and len(decay.args) == 2 and decay.args[0] is credit):
            return None
        if decay.users or decay.kwargs:
            return None
        factor = decay.args[1]
        if not (is_call(factor, torch.where) and len(factor.args) == 3 and not factor.kwargs):
            return None
        first_step, zero, beta = factor.args
        if not (isinstance(first_step, Node) and is_number(zero) and zero == 0 and is_number(beta)):
            return None
        if not (is_call(log1p, torch.log1p) or is_method(log1p, "log1p")):
            return None
        if len(log1p.args) != 1 or log1p.kwargs or log1p.args[0] is not credit:
            return None

        # fused = raw + alpha * log1p(credit); x0 = argmax(fused); conf = softmax(fused)[x0]
        if len(log1p.users) != 1:
            return None
        boost = next(iter(log1p.users))
        scaled = _scaled(boost)
        if scaled is None or scaled[1] is not log1p:
            return None
        alpha = scaled[0]
        if len(boost.users) != 1:
            return None
        fused = next(iter(boost.users))
        if not (is_call(fused, operator.add, torch.add) or is_method(fused, "add", "__add__", "__radd__")):
            return None
        if len(fused.args) != 2 or fused.kwargs or set(fused.args) != {raw, boost}:
            return None
        x0 = conf = None
        conf_nodes: list[Node] = []
        for user in fused.users:
            if _argmax_last(user, 3) is fused and x0 is None:
                x0 = user
        if x0 is None:
            return None
        for user in x0.users:
            if not is_method(user, "unsqueeze"):
                continue
            for gather in user.users:
                for squeeze in gather.users:
                    candidate = _top_prob(squeeze, 3)
                    if candidate and candidate[0] is fused and candidate[1] is x0:
                        conf, conf_nodes = squeeze, candidate[2][1:]
        if conf is None:
            return None

        internal = [*raw_nodes, top, *prob_nodes, powered, increment, scatter.args[2],
                    scatter.args[3], factor, decay, scatter, log1p, boost, fused, x0,
                    *conf_nodes, conf]
        internal = list(dict.fromkeys(internal))  # the same unsqueeze may serve twice
        if not self._guard(logits, credit, masked, first_step, raw, vocab_size, internal,
                           {x0, conf}, credit_users, decay, log1p, order):
            return None
        return dict(logits=logits, credit=credit, masked=masked, first_step=first_step,
                    alpha=float(alpha), beta=float(beta), gamma=float(gamma),
                    mask_id=int(mask_id), x0=x0, conf=conf, log1p=log1p,
                    internal=internal, optional=optional)

    @staticmethod
    def _guard(logits, credit, masked, first_step, raw, vocab_size, internal, outputs,
               credit_users, decay, log1p, order) -> bool:
        f_logits, f_credit, f_raw = fake(logits), fake(credit), fake(raw)
        f_masked, f_first = fake(masked), fake(first_step)
        if any(t is None for t in (f_logits, f_credit, f_raw, f_masked, f_first)):
            return False
        if f_logits.dim() != 3 or not f_logits.is_floating_point():
            return False
        if f_raw.dtype != torch.float32 or f_credit.dtype != torch.float32:
            return False
        if f_credit.shape != f_logits.shape or f_raw.shape != f_logits.shape:
            return False
        if f_logits.shape[-1] != vocab_size or f_credit.device != f_logits.device:
            return False
        if f_masked.shape != f_logits.shape[:2] or f_masked.dtype != torch.bool:
            return False
        if f_first.numel() != 1 or f_first.dtype != torch.bool:
            return False
        inside = set(internal)
        for node in internal:
            if node not in outputs and any(user not in inside for user in node.users):
                return False  # an intermediate value is needed elsewhere: keep the chain
        # Nothing else touches the credit while the chain updates it (between the decay and the
        # log1p the credit holds intermediate states the fused op never materialises).
        first, last = order[decay], order[log1p]
        if any(first < order[u] < last for u in credit_users if u not in inside):
            return False
        # The same through views of it; and the op, placed at the log1p, reads the logits, the
        # mask and the flag there: nothing may write them in place after the chain first read them.
        graph = log1p.graph
        start = min(internal, key=order.__getitem__)
        if touched_between(graph, decay, log1p, [storage_of(credit)], reads=True, skip=inside):
            return False
        inputs = [storage_of(n) for n in (logits, masked, first_step)]
        return not touched_between(graph, start, log1p, inputs, reads=False, skip=inside)

    @staticmethod
    def _op(fake_logits: torch.Tensor):
        """The op the runtime dispatcher would call for these logits (same device rule)."""
        try:
            from credit_compile.ops.credit_step import dispatch_op
        except ImportError:
            return None
        return dispatch_op("credit_step_dense", fake_logits).default

    def _replace(self, graph: Graph, m: dict) -> bool:
        op = self._op(fake(m["logits"]))
        if op is None:
            return False
        x0, conf = m["x0"], m["conf"]
        with graph.inserting_before(m["log1p"]):
            fused = graph.call_function(op, (m["logits"], m["credit"], m["masked"], m["first_step"],
                                             m["alpha"], m["beta"], m["gamma"], m["mask_id"]))
            new_x0 = graph.call_function(operator.getitem, (fused, 0))
            new_conf = graph.call_function(operator.getitem, (fused, 1))
        fused.meta["example_value"] = (fake(x0), fake(conf))
        for new, old in ((fused, x0), (new_x0, x0), (new_conf, conf)):
            if "stack_trace" in old.meta:
                new.meta["stack_trace"] = old.meta["stack_trace"]
        new_x0.meta["example_value"] = fake(x0)
        new_conf.meta["example_value"] = fake(conf)
        x0.replace_all_uses_with(new_x0)
        conf.replace_all_uses_with(new_conf)
        order = {n: i for i, n in enumerate(graph.nodes)}
        for node in sorted(m["internal"], key=order.__getitem__, reverse=True):
            graph.erase_node(node)
        for node in m["optional"]:  # arange / == mask_id, when nothing else uses them
            if not node.users:
                graph.erase_node(node)
        return True
