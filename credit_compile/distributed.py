"""Tensor parallelism for the project's LLaDA, LLaDA-MoE, LLaDA2 and Dream on torch.distributed
(`optimize(model, tensor_parallel=N)`, docs/distributed.md).

Each rank of an initialised process group keeps its shard of every layer's weights, as Megatron
splits them: the query, key and value projections and the MLP's gate and up projections by
output features (a rank holds `n_heads / N` heads and `hidden / N` MLP features), the attention
output and the MLP's down projection by input features, each followed by one all-reduce
(`torch.distributed._functional_collectives`, which dynamo traces into the step's graph), and
the LM head by vocabulary rows. The LM head's slice of the vocabulary is gathered by one op,
`gather_vocab`, that works on each position apart, so the block-sliced LM head pass moves the
block's slice before the head and the gather: a step moves the block's logits, not the
canvas's. The embedding stays whole on every rank. The step's decisions read the gathered
logits, identical on every rank, so every rank commits the same tokens and draws the same
random numbers.

The mixtures of experts (LLaDA-MoE, LLaDA2) split each expert as an MLP: every rank holds
`width / N` of every expert's features (its gate and up rows, its down columns), and of the
shared experts' and the dense layers' MLPs; the router stays whole, so every rank routes every
token alike. A layer's routed and shared partial outputs are summed before its one all-reduce
(the layer's `feed_forward`). LLaDA2's fused `query_key_value` is split by heads: each rank keeps
its query heads' rows and its key and value heads' rows. Dream (Qwen2's layers) is split as
LLaDA-MoE's attention and a dense MLP: its query, key and value projections by heads with their
biases, its output and MLP down projections by input features, its LM head by vocabulary rows
(`VocabParallelHead`, the module Qwen2's forward calls).

Key and value heads (`kv_heads`): where N divides their number, a rank holds `n_kv / N` of them;
where N is a multiple of it (N > n_kv, as vLLM and SGLang do), the key and value heads are
replicated: each rank holds the one its query heads read, kv head `rank // (N / n_kv)`, shared
by the `N / n_kv` ranks next to each other. A rank's KV cache holds the heads it holds.

The weights are plain tensors (local shards), not DTensors: the LM head is a matrix product the
step calls directly, the gather must come after the block's slice, and the rest of the package
(weight fingerprints, dtype checks, the KV cache's shape) reads ordinary parameters.
"""

from __future__ import annotations

import functools
import math
import os
import zlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VocabParallelHead", "allowed_world_sizes", "any_rank", "check_same_request", "gather_vocab",
    "init_from_torchrun", "kv_heads", "prepare", "shard_model", "tensor_parallel_class", "world_of",
]

_COLWISE = ("q_proj", "ff_proj", "up_proj")  # the key and value heads: `kv_heads`
_ROWWISE = ("attn_out", "ff_out")


@torch.library.custom_op("credit_compile::gather_vocab", mutates_args=())
def gather_vocab(x: torch.Tensor, group_name: str, world_size: int) -> torch.Tensor:
    """Concatenate every rank's ``[..., V / N]`` slice along the last dim, in rank order.

    One op (a collective inside) so that graph passes see it as what it is: position-wise."""
    functional = torch.ops._c10d_functional
    out = functional.all_gather_into_tensor(x.contiguous(), world_size, group_name)
    out = functional.wait_tensor(out).view(world_size, *x.shape).movedim(0, -2)
    return out.reshape(*x.shape[:-1], world_size * x.shape[-1])


@gather_vocab.register_fake
def _(x, group_name, world_size):
    return x.new_empty((*x.shape[:-1], world_size * x.shape[-1]))


class RowwiseLinear(nn.Module):
    """A linear layer holding a slice of the input features: the partial products of every
    rank are summed (one all-reduce), then the bias is added once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group_name: str):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.group_name = group_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed import _functional_collectives as funcol

        y = funcol.all_reduce(F.linear(x, self.weight), "sum", self.group_name)
        return y if self.bias is None else y + self.bias


def world_of(tensor_parallel) -> tuple[object, int, int]:
    """(process group, its size, this rank) for `tensor_parallel`: a rank count that must equal
    the default group's size, or a one-dimensional `DeviceMesh`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"tensor_parallel={tensor_parallel!r} needs an initialised process group: launch "
            f"one process per rank with torchrun (`torchrun --nproc-per-node N your_script.py`) "
            f"and call torch.distributed.init_process_group() before optimize()")
    from torch.distributed.device_mesh import DeviceMesh

    if isinstance(tensor_parallel, DeviceMesh):
        if tensor_parallel.ndim != 1:
            raise ValueError(
                f"tensor_parallel takes a one-dimensional DeviceMesh, got {tensor_parallel.ndim} "
                f"dimensions: pass the tensor-parallel dimension (mesh['tp'])")
        group = tensor_parallel.get_group()
    elif isinstance(tensor_parallel, int) and not isinstance(tensor_parallel, bool) \
            and tensor_parallel >= 1:
        group = dist.group.WORLD
        if dist.get_world_size(group) != tensor_parallel:
            raise ValueError(
                f"tensor_parallel={tensor_parallel} but the process group has "
                f"{dist.get_world_size(group)} ranks: start as many processes as ranks "
                f"(torchrun --nproc-per-node {tensor_parallel}), or pass a DeviceMesh")
    else:
        raise ValueError(f"tensor_parallel={tensor_parallel!r}: pass a number of ranks (an int "
                         f">= 1) or a one-dimensional torch DeviceMesh")
    return group, dist.get_world_size(group), dist.get_rank(group)


def kv_heads(n_kv_heads: int, size: int) -> list[range]:
    """The key and value heads each of `size` ranks holds (index: the rank), of `n_kv_heads`:
    where `size` divides them, rank r holds the `n_kv_heads / size` heads from
    `r * n_kv_heads / size`; where `size` is a multiple of them, every rank holds one, the head
    its query heads read (rank r: head `r // (size / n_kv_heads)`, replicated on the
    `size / n_kv_heads` ranks that share it). Every family's sharding and KV cache read it."""
    if n_kv_heads % size == 0:
        per_rank = n_kv_heads // size
        return [range(r * per_rank, (r + 1) * per_rank) for r in range(size)]
    if size % n_kv_heads == 0:
        sharing = size // n_kv_heads
        return [range(r // sharing, r // sharing + 1) for r in range(size)]
    raise ValueError(f"{size} ranks neither divide {n_kv_heads} key and value heads nor are a "
                     f"multiple of them")


def _kv_dimension(model: nn.Module) -> tuple[str, int]:
    """(name, number) of `model`'s key and value heads."""
    from .models.modeling_llada import LLaDAModelLM

    config = model.config
    if isinstance(model, LLaDAModelLM):
        return "n_kv_heads", config.effective_n_kv_heads
    return "num_key_value_heads", config.num_key_value_heads


def _dimensions(model: nn.Module) -> list[tuple[str, int]]:
    """(name, size) of every dimension a rank count must divide, for `model`'s family (the key
    and value heads apart: `_kv_dimension`, which a rank count may also be a multiple of)."""
    from .models.modeling_dream import DreamModel
    from .models.modeling_llada import LLaDAModelLM
    from .models.modeling_llada2 import LLaDA2ModelLM

    config = model.config
    if isinstance(model, LLaDAModelLM):
        return [("n_heads", config.n_heads),
                ("the MLP width (mlp_hidden_size)", config.intermediate_size),
                ("the vocabulary (embedding_size)", config.padded_vocab_size)]
    if isinstance(model, DreamModel):
        return [("num_attention_heads", config.num_attention_heads),
                ("the MLP width (intermediate_size)", config.intermediate_size),
                ("the vocabulary (vocab_size)", config.vocab_size)]
    moe = [config.is_moe_layer(i) for i in range(config.num_hidden_layers)]
    dims = [("num_attention_heads", config.num_attention_heads)]
    if isinstance(model, LLaDA2ModelLM):
        if not all(moe):
            dims.append(("the dense layers' MLP width (intermediate_size)",
                         config.intermediate_size))
        if any(moe):  # the shared experts' width is a multiple of it
            dims.append(("each expert's width (moe_intermediate_size)",
                         config.moe_intermediate_size))
    else:  # LLaDA-MoE
        if not all(moe):
            dims.append(("the dense layers' MLP width (dense_intermediate_size)",
                         config.dense_intermediate_size))
        if any(moe):
            dims.append(("each expert's width (expert_intermediate_size)",
                         config.expert_intermediate_size))
            if config.shared_expert_intermediate_size is not None:
                dims.append(("the shared expert's width (shared_expert_intermediate_size)",
                             config.shared_expert_intermediate_size))
    dims.append(("the vocabulary (vocab_size)", config.vocab_size))
    return dims


def allowed_world_sizes(model: nn.Module) -> list[int]:
    """The numbers of ranks `model` can be sharded across: those that divide every dimension it
    splits and divide its key and value heads or are a multiple of them."""
    _, n_kv = _kv_dimension(model)
    common = math.gcd(*(value for _, value in _dimensions(model)))
    return [n for n in range(1, common + 1)
            if common % n == 0 and (n_kv % n == 0 or n % n_kv == 0)]


def _check_divisible(model: nn.Module, size: int) -> None:
    for name, value in _dimensions(model):
        if value % size:
            raise ValueError(
                f"tensor_parallel={size} does not divide {name} = {value}: choose a number of "
                f"ranks that divides {value} ({_sizes(model)})")
    name, n_kv = _kv_dimension(model)
    if n_kv % size and size % n_kv:
        raise ValueError(
            f"tensor_parallel={size} does not divide {name} = {n_kv} and is not a multiple of "
            f"it: choose a number of ranks that divides {n_kv} or a multiple of {n_kv}, which "
            f"replicates the key and value heads ({_sizes(model)})")
    if getattr(model.config, "attention_layer_norm", False):
        raise ValueError(
            "tensor_parallel does not support attention_layer_norm=True yet: its query and key "
            "norms span all heads, which no rank holds; decode this model on one device")


def _sizes(model: nn.Module) -> str:
    return "world sizes this model allows: " + ", ".join(map(str, allowed_world_sizes(model)))


def _rows(t: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    return _part(t, 0, rank, size)


def _part(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """Rank `rank`'s 1/`size` of `t` along `dim`, a copy (the whole tensor can then be freed)."""
    n = t.shape[dim] // size
    return t.narrow(dim, rank * n, n).clone()


def _parameter(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _colwise(linear: nn.Linear, rank: int, size: int) -> None:
    """`linear` keeps its rank's output features (rows, and their biases), in place."""
    linear.weight = _parameter(_rows(linear.weight.data, rank, size))
    if linear.bias is not None:
        linear.bias = _parameter(_rows(linear.bias.data, rank, size))
    linear.out_features //= size


def _head_rows(t: torch.Tensor, heads: range, head_dim: int) -> torch.Tensor:
    """The rows (or biases) of `heads` in a projection's output, a copy."""
    return t.narrow(0, heads.start * head_dim, len(heads) * head_dim).clone()


def _kv_colwise(linear: nn.Linear, heads: range, head_dim: int) -> None:
    """A key or value projection keeps the rows of `heads` (and their biases), in place."""
    linear.weight = _parameter(_head_rows(linear.weight.data, heads, head_dim))
    if linear.bias is not None:
        linear.bias = _parameter(_head_rows(linear.bias.data, heads, head_dim))
    linear.out_features = len(heads) * head_dim


def _rowwise(linear: nn.Linear, rank: int, size: int, group_name: str) -> RowwiseLinear:
    """`linear` holding its rank's input features, its output all-reduced (bias added once)."""
    return RowwiseLinear(_part(linear.weight.data, 1, rank, size), linear.bias, group_name)


def _partial(linear: nn.Linear, rank: int, size: int) -> None:
    """`linear` (without bias) keeps its rank's input features, in place: its output is this
    rank's partial sum, reduced by whoever sums it with others (a layer's `feed_forward`)."""
    if linear.bias is not None:
        raise ValueError("tensor_parallel cannot split an MLP's down projection that has a bias "
                         "(it would be added on every rank): decode this model on one device")
    linear.weight = _parameter(_part(linear.weight.data, 1, rank, size))
    linear.in_features //= size


def _shard_feed_forward(module: nn.Module, rank: int, size: int) -> None:
    """A gated MLP (gate, up: output features; down: input features, unreduced) or a mixture of
    experts (each expert, and the shared experts, split so; the router kept whole)."""
    from .models.modeling_llada2 import RoutedExperts

    mlps = [module]
    if isinstance(module, RoutedExperts):
        mlps = list(module.experts)
        shared = getattr(module, "shared_experts", None)  # LLaDA2's; LLaDA-MoE's is the layer's
        if shared is not None:
            mlps.append(shared)
        module._stacks = None  # the whole experts' stacks: fused again from the shards
    for mlp in mlps:
        _colwise(mlp.gate_proj, rank, size)
        _colwise(mlp.up_proj, rank, size)
        _partial(mlp.down_proj, rank, size)


@functools.cache
def _tensor_parallel_layer(cls: type) -> type:
    """`cls` (a decoder layer with a `feed_forward` method) whose feed-forward output, the sum
    of this rank's partial products (routed and shared experts together), is all-reduced once."""

    class TensorParallelLayer(cls):
        def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
            from torch.distributed import _functional_collectives as funcol

            return funcol.all_reduce(super().feed_forward(h), "sum", self.group_name)

    TensorParallelLayer.__name__ = TensorParallelLayer.__qualname__ = f"TensorParallel{cls.__name__}"
    return TensorParallelLayer


def _shard_layer_feed_forward(layer: nn.Module, rank: int, size: int, group_name: str) -> None:
    _shard_feed_forward(layer.mlp, rank, size)
    shared = getattr(layer, "shared_expert", None)  # LLaDA-MoE's, beside its experts
    if shared is not None:
        _shard_feed_forward(shared, rank, size)
    layer.__class__ = _tensor_parallel_layer(type(layer))
    layer.group_name = group_name


def _by_heads(t: torch.Tensor, widths: list[int], rank: int, size: int, heads: range,
              head_dim: int) -> torch.Tensor:
    """A fused query-key-value projection's rows (or biases) for this rank's heads: its query
    heads' rows, then its key heads' (`heads`), then its value heads' (`heads` too)."""
    q, k, v = t.split(widths, 0)
    return torch.cat([_rows(q, rank, size), _head_rows(k, heads, head_dim),
                      _head_rows(v, heads, head_dim)], 0)


def _shard_llada2(model: nn.Module, rank: int, size: int, group_name: str) -> None:
    for layer in model.model.layers:
        attention = layer.attention
        qkv, dim = attention.query_key_value, attention.head_dim
        heads = kv_heads(attention.num_kv_heads, size)[rank]
        widths = [attention.num_heads * dim, attention.num_kv_heads * dim,
                  attention.num_kv_heads * dim]
        qkv.weight = _parameter(_by_heads(qkv.weight.data, widths, rank, size, heads, dim))
        if qkv.bias is not None:
            qkv.bias = _parameter(_by_heads(qkv.bias.data, widths, rank, size, heads, dim))
        attention.num_heads //= size
        attention.num_kv_heads = len(heads)
        qkv.out_features = (attention.num_heads + 2 * attention.num_kv_heads) * dim
        attention.dense = _rowwise(attention.dense, rank, size, group_name)
        _shard_layer_feed_forward(layer, rank, size, group_name)


def _shard_attention(attention: nn.Module, n_kv_heads: int, head_dim: int, rank: int, size: int,
                     group_name: str) -> range:
    """An attention of separate `q_proj`, `k_proj`, `v_proj` and `o_proj`, in place: the query
    heads' rows (and biases) of this rank, its key and value heads' (`kv_heads`), the output
    projection by input features (`_rowwise`). Returns the key and value heads it holds."""
    heads = kv_heads(n_kv_heads, size)[rank]
    _colwise(attention.q_proj, rank, size)
    for linear in (attention.k_proj, attention.v_proj):
        _kv_colwise(linear, heads, head_dim)
    attention.o_proj = _rowwise(attention.o_proj, rank, size, group_name)
    return heads


def _shard_lladamoe(model: nn.Module, rank: int, size: int, group_name: str) -> None:
    for layer in model.model.layers:
        attention = layer.self_attn
        heads = _shard_attention(attention, attention.num_kv_heads, attention.head_dim, rank,
                                 size, group_name)
        attention.num_heads //= size
        attention.num_kv_heads = len(heads)
        _shard_layer_feed_forward(layer, rank, size, group_name)


def _shard_dream(model: nn.Module, rank: int, size: int, group_name: str) -> None:
    """Qwen2's layers: the attention as LLaDA-MoE's (its query heads per key/value head set for
    this rank's heads), the MLP's gate and up by output features and its down projection by input
    features, all-reduced; the head gathers its vocabulary rows (`VocabParallelHead`)."""
    config = model.config
    for layer in model.model.layers:
        attention = layer.self_attn
        heads = _shard_attention(attention, config.num_key_value_heads, attention.head_dim, rank,
                                 size, group_name)
        attention.num_key_value_groups = config.num_attention_heads // size // len(heads)
        mlp = layer.mlp
        _colwise(mlp.gate_proj, rank, size)
        _colwise(mlp.up_proj, rank, size)
        mlp.down_proj = _rowwise(mlp.down_proj, rank, size, group_name)
        mlp.intermediate_size //= size
    model.lm_head = VocabParallelHead(model.lm_head.weight, model.tensor_parallel_tied_head, rank,
                                      size, group_name)


def _families() -> dict[type, object]:
    from .models.modeling_dream import DreamModel
    from .models.modeling_llada import LLaDAModelLM
    from .models.modeling_llada2 import LLaDA2ModelLM
    from .models.modeling_lladamoe import LLaDAMoEModelLM

    return {LLaDAModelLM: _shard_llada, LLaDA2ModelLM: _shard_llada2,
            LLaDAMoEModelLM: _shard_lladamoe, DreamModel: _shard_dream}


def shard_model(model: nn.Module, tensor_parallel):
    """Shard `model` (the project's `LLaDAModelLM`, `LLaDAMoEModelLM`, `LLaDA2ModelLM` or
    `DreamModel`) in
    place across the ranks of `tensor_parallel` (see the module docstring) and return it. A
    model already sharded across the same ranks is returned as it is."""
    group, size, rank = world_of(tensor_parallel)
    group_name = group.group_name
    if getattr(model, "tensor_parallel_group", None) is not None:
        if model.tensor_parallel_group != group_name:
            raise ValueError("this model is already sharded across another process group: "
                             "load it again to shard it across this one")
        return model
    from .models.modeling_llada import LLaDAModelLM

    shard = _families().get(type(model))
    if shard is None:
        raise ValueError(
            f"tensor_parallel supports credit_compile's own LLaDA, LLaDA-MoE, LLaDA2 and Dream "
            f"models (LLaDAModelLM, LLaDAMoEModelLM, LLaDA2ModelLM, DreamModel) only, not "
            f"{type(model).__name__}: "
            f"load the checkpoint with credit_compile.models.<that class>.from_pretrained(path)")
    _check_divisible(model, size)
    if size == 1:
        return model
    base = type(model)
    tied = False
    if base is not LLaDAModelLM:  # LLaDA-MoE, LLaDA2, Dream: their heads by vocabulary rows
        head = model.lm_head
        tied = head.weight is model.get_input_embeddings().weight
        if not tied:  # a tied head is the embedding's rows, which stays whole
            _colwise(head, rank, size)
    model.tensor_parallel_tied_head = tied
    shard(model, rank, size, group_name)
    model.__class__ = tensor_parallel_class(base)
    model.tensor_parallel_group = group_name
    model.tensor_parallel_size = size
    model.tensor_parallel_rank = rank
    return model


def _shard_llada(model: nn.Module, rank: int, size: int, group_name: str) -> None:
    t = model.model.transformer
    for block in t.blocks:
        heads = kv_heads(block.n_kv_heads, size)[rank]
        for name in _COLWISE:
            _colwise(getattr(block, name), rank, size)
        for linear in (block.k_proj, block.v_proj):
            _kv_colwise(linear, heads, block.head_dim)
        for name in _ROWWISE:
            setattr(block, name, _rowwise(getattr(block, name), rank, size, group_name))
        block.n_heads //= size
        block.n_kv_heads = len(heads)
    if not model.config.weight_tying:
        _colwise(t.ff_out, rank, size)


def _vocab_parallel_logits(hidden: torch.Tensor, weight: torch.Tensor, tied: bool, rank: int,
                           size: int, group_name: str) -> torch.Tensor:
    """The whole vocabulary's logits from this rank's rows of the LM head (`weight`; tied: the
    embedding, whole on every rank, whose rows of this rank it reads), gathered."""
    if tied:
        rows = weight.shape[0] // size
        weight = weight.narrow(0, rank * rows, rows)
    return gather_vocab(F.linear(hidden, weight), group_name, size)


class VocabParallelHead(nn.Module):
    """An LM head by vocabulary rows for a model that calls its head as a module (Dream: Qwen2's
    forward calls `lm_head`): the whole vocabulary's logits on every rank."""

    def __init__(self, weight: nn.Parameter, tied: bool, rank: int, size: int, group_name: str):
        super().__init__()
        self.weight = weight
        self.tied, self.rank, self.size, self.group_name = tied, rank, size, group_name

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _vocab_parallel_logits(hidden, self.weight, self.tied, self.rank, self.size,
                                      self.group_name)


class _OneRanksShard:
    """A shard is one rank's part of the model, tied to its process group: not picklable."""

    def __reduce_ex__(self, protocol):
        raise TypeError(
            "a tensor-parallel model holds one rank's shard and its process group, which do not "
            "pickle or copy: save or copy the whole model before sharding it (or each rank's "
            "state_dict(), loaded into a model sharded the same way)")


def _local_kv_cache_shape(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The whole model's KV cache `shape` (`[layers, B, kv heads, T, head_dim]`) for the key and
    value heads of this rank."""
    heads = kv_heads(shape[2], model.tensor_parallel_size)[model.tensor_parallel_rank]
    return (shape[0], shape[1], len(heads), *shape[3:])


@functools.cache
def tensor_parallel_class(base: type | None = None) -> type:
    """The tensor-parallel subclass of `base` (None: the dense `LLaDAModelLM`), made on first
    use (it imports the model, and transformers): its forward returns the whole vocabulary's
    logits on every rank, and its KV cache holds this rank's key and value heads."""
    from .models.modeling_llada import LLaDAModelLM

    if base is None or base is LLaDAModelLM:
        return _tensor_parallel_llada()

    class TensorParallelModel(_OneRanksShard, base):
        """A LLaDA-MoE, LLaDA2 or Dream model whose layers hold one rank's shard."""

        def lm_head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
            """LLaDA-MoE's and LLaDA2's head (Dream's is its `VocabParallelHead` module)."""
            return _vocab_parallel_logits(hidden, self.lm_head.weight,
                                          self.tensor_parallel_tied_head,
                                          self.tensor_parallel_rank, self.tensor_parallel_size,
                                          self.tensor_parallel_group)

        def kv_cache_shape(self, batch_size: int, seq_len: int) -> tuple[int, ...]:
            """This rank's key and value heads (`kv_heads`)."""
            return _local_kv_cache_shape(self, super().kv_cache_shape(batch_size, seq_len))

    TensorParallelModel.__name__ = TensorParallelModel.__qualname__ = \
        f"TensorParallel{base.__name__}"
    return TensorParallelModel


@functools.cache
def _tensor_parallel_llada() -> type:
    from .models.modeling_llada import LLaDAModelLM

    class TensorParallelLLaDA(_OneRanksShard, LLaDAModelLM):
        """`LLaDAModelLM` whose layers hold one rank's shard: its forward returns the whole
        vocabulary's logits on every rank."""

        def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
            size, rank = self.tensor_parallel_size, self.tensor_parallel_rank
            if self.config.weight_tying:  # the embedding stays whole: its rows are the head's
                rows = self.config.padded_vocab_size // size
                weight = self.model.transformer.wte.weight.narrow(0, rank * rows, rows)
                logits = F.linear(hidden, weight, None)
                if self.config.scale_logits:
                    logits = logits * (1 / self.config.d_model ** 0.5)
            else:
                logits = super().lm_head(hidden)
            return gather_vocab(logits, self.tensor_parallel_group, size)

        def kv_cache_shape(self, batch_size: int, seq_len: int) -> tuple[int, ...]:
            """This rank's key and value heads (`kv_heads`)."""
            return _local_kv_cache_shape(self, super().kv_cache_shape(batch_size, seq_len))

    return TensorParallelLLaDA


def init_from_torchrun(tensor_parallel: int, device: str | None = None) -> str:
    """Initialise the default process group from torchrun's environment (NCCL on CUDA, gloo on
    the CPU) and return this rank's device: ``cuda:LOCAL_RANK`` where CUDA is used, else cpu.
    What `credit-compile generate --tensor-parallel N` calls; a process group already
    initialised is kept."""
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError(
            f"--tensor-parallel {tensor_parallel} runs one process per rank under torchrun: "
            f"torchrun --nproc-per-node {tensor_parallel} -m credit_compile generate "
            f"--tensor-parallel {tensor_parallel} ...")
    if int(os.environ["WORLD_SIZE"]) != tensor_parallel:
        raise ValueError(
            f"--tensor-parallel {tensor_parallel} under torchrun with {os.environ['WORLD_SIZE']} "
            f"processes: give torchrun --nproc-per-node {tensor_parallel} (times --nnodes)")
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def check_same_request(model: nn.Module, canvas: torch.Tensor, attention_mask, config) -> None:
    """Refuse, on every rank alike, a call whose prompts, padding or options differ between the
    ranks of a sharded model: each rank's shard would compute on other inputs, and the sums of
    their partial products would be wrong without an error (or, with other shapes, the
    collectives would wait on each other). One small all-reduce per call."""
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _resolve_process_group

    group_name = getattr(model, "tensor_parallel_group", None)
    if group_name is None:
        return
    mask = b"" if attention_mask is None else attention_mask.cpu().numpy().tobytes()
    summary = [*canvas.shape, zlib.crc32(canvas.cpu().numpy().tobytes()), zlib.crc32(mask),
               zlib.crc32(repr(config).encode())]
    extremes = torch.tensor([summary, [-v for v in summary]], dtype=torch.int64,
                            device=canvas.device)
    dist.all_reduce(extremes, dist.ReduceOp.MAX, group=_resolve_process_group(group_name))
    if not torch.equal(extremes[0], -extremes[1]):
        raise ValueError(
            "the ranks of this tensor-parallel model were given different prompts, padding or "
            "options: every rank must call generate() (and precompile()) with the same "
            "arguments; decode different prompts in one batch, or with another model")


def any_rank(flag: bool, group_name: str | None = None, device=None) -> bool:
    """Whether `flag` holds on any rank of the process group `group_name` (None: the default
    one), by one small all-reduce on `device` (default: the rank's GPU under NCCL, else the CPU):
    a decision every rank takes alike, such as how many more calls `verify` times, or whether a
    served call ends at a host check (serve/ranks.py), while each call runs collectives that all
    the ranks must run."""
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _resolve_process_group

    group = None if group_name is None else _resolve_process_group(group_name)
    if device is None:
        nccl = dist.get_backend(group) == "nccl"
        device = f"cuda:{torch.cuda.current_device()}" if nccl else "cpu"
    votes = torch.tensor([int(bool(flag))], dtype=torch.int64, device=device)
    dist.all_reduce(votes, dist.ReduceOp.MAX, group=group)
    return bool(votes.item())


def prepare(model: nn.Module, tensor_parallel) -> nn.Module:
    """What `optimize(model, tensor_parallel=...)` runs: `shard_model`, then a check that the
    shards sit where the group's backend can run collectives on them (NCCL: on a GPU)."""
    import torch.distributed as dist

    model = shard_model(model, tensor_parallel)
    group, _, rank = world_of(tensor_parallel)
    parameter = next(model.parameters())
    if "nccl" in str(dist.get_backend(group)) and parameter.device.type != "cuda":
        raise ValueError(
            f"the model's shards are on {parameter.device} but the process group runs NCCL, "
            f"which reduces GPU tensors only: move the model to this rank's GPU first "
            f"(model.to('cuda:{rank}') after credit_compile.distributed.shard_model(model, ...), "
            f"which keeps the GPU from ever holding the whole model)")
    return model
