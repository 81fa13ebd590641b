"""A compile-friendly LLaDA2.x (Bailing-MoE-v2) block-diffusion LM with the official checkpoint layout.

Written from scratch against the math of the checkpoints' `modeling_llada2_moe.py`. The parameter
names are the official ones:

    model.word_embeddings
    model.layers.{i}.input_layernorm, .attention.{query_key_value, query_layernorm, key_layernorm,
        dense}, .post_attention_layernorm,
        .mlp.{gate_proj, up_proj, down_proj}                 (dense layers: i < first_k_dense_replace)
        .mlp.{gate.weight, gate.expert_bias, experts.{e}.{gate_proj, up_proj, down_proj},
              shared_experts.{gate_proj, up_proj, down_proj}}  (MoE layers)
    model.norm, lm_head

and the numerics follow the official forward:

    x = word_embeddings(ids)
    per layer:  h = input_layernorm(x);  q, k, v = split(query_key_value(h)) per head
                q, k = query_layernorm(q), key_layernorm(k)          (RMSNorm over head_dim)
                q, k = rope on the first int(head_dim * partial_rotary_factor) dims of each head
                x = x + dense(SDPA(q, k, v, mask))
                h = post_attention_layernorm(x);  x = x + mlp(h)
    moe(h) = sum_k w_k expert_k(h) + shared_experts(h), the k routed experts and weights w from:
                s = sigmoid(h @ gate.weight^T) (float32);  choose on s + expert_bias: the topk_group
                groups (of n_group) with the highest sum of their two best, then the top-k experts
                in them;  w = s_k / sum(s_k) * routed_scaling_factor  (s without the bias)
    logits = lm_head(norm(x))

Attention masks. The official `generate()` runs the window of every block up to the current one
with a 4-D additive mask, ``log(tril(ones(blocks, blocks)))`` repeated ``block_length`` times on
both axes: a token sees its own block and every earlier block, never a later one, with blocks
aligned to absolute positions from 0. This model takes that mask as it is (``attention_mask``
4-D, additive float or boolean), or builds the same one from ``block_length`` inside the graph.
Differences from the official forward (none changes the official generate()'s logits):
- a 2-D ``attention_mask`` is a key-padding mask (left padding), combined with ``block_length``
  when given, and positions default to ``cumsum(mask) - 1``. The official forward hands a 2-D
  mask to transformers' causal-mask helper instead: token-causal attention when the mask has a
  zero, none at all when it is all ones (SDPA). No LLaDA2 sampler passes one;
- the MoE (`RoutedExperts`) sorts the tokens by expert and runs one grouped GEMM per projection
  on CUDA in bfloat16, and elsewhere runs every expert on every token weighed with the sparse
  routing weights; one graph either way, no data-dependent shapes, where the official inference
  path sorts tokens by expert with host syncs. The routing is the same computation; the sum over
  experts runs in another order (float32 rounding);
- an exact block KV cache (`forward_hidden`'s ``kv_cache``) instead of transformers' autoregressive
  cache; no dropout, no router logits output, no loss (inference model); the logits stay in
  the model's dtype (the official forward casts them to float32: the same values);
- nothing data-dependent in Python (no ``.item()``, no RoPE cache): ``torch.compile(fullgraph=True)``
  traces the whole forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as hf_init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada2 import LLaDA2Config
from .modeling_llada import LLaDARMSNorm, init_weights, positions_from_mask

__all__ = [
    "LLaDA2ModelLM",
    "LLaDA2Model",
    "LLaDA2DecoderLayer",
    "LLaDA2Attention",
    "LLaDA2MLP",
    "LLaDA2Gate",
    "LLaDA2SparseMoeBlock",
    "RoutedExperts",
    "fuse_experts",
    "moe_formulation",
    "block_causal_mask",
    "partial_rotary_cos_sin",
]


# --------------------------------------------------------------------------------------------
# Rotary embeddings (partial) and masks
# --------------------------------------------------------------------------------------------


def partial_rotary_cos_sin(position_ids: torch.Tensor, rotary_dim: int, theta: float,
                           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[B, 1, L, rotary_dim]`` for ``position_ids [B, L]``, computed in float32
    (``inv_freq = 1 / theta ** (arange(0, rotary_dim, 2) / rotary_dim)``, ``emb = cat(freqs,
    freqs)``) and cast to ``dtype`` (the hidden states' dtype, as the official code does)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=position_ids.device,
                                             dtype=torch.float32) / rotary_dim))
    freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_partial_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (NeoX half-split layout) on the first ``cos.shape[-1]`` dims of ``t [B, H, L, D]``; the
    others pass through. In ``t``'s dtype, as the official code."""
    rot = cos.shape[-1]
    t_rot, t_pass = t[..., :rot], t[..., rot:]
    return torch.cat((t_rot * cos + _rotate_half(t_rot) * sin, t_pass), dim=-1)


def block_causal_mask(position_ids: torch.Tensor, block_length: int,
                      key_padding: torch.Tensor | None = None,
                      query_index: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean attention mask ``[B, 1, Lq, L]`` (True: attend) over a sequence of ``L`` tokens
    with ``position_ids [B or 1, L]``: query i sees key j when ``position_ids[j] // block_length <=
    position_ids[i] // block_length`` (its own block and every earlier one) and key j is not
    padding (``key_padding [B, L]``, True for real tokens). The queries are every token
    (``Lq = L``) or the tokens at ``query_index`` (a cached forward's: ``[Lq]``, or ``[B, Lq]``
    per row).

    With ``position_ids = 0..L-1`` these are the official `generate()`'s blocks, aligned to
    absolute positions from 0. Every token also sees itself, so a padding row (whose keys are all
    padding) stays finite; its output is never read.
    """
    length = position_ids.shape[-1]
    block = torch.div(position_ids, block_length, rounding_mode="floor")
    if query_index is None:
        query_index = torch.arange(length, device=position_ids.device)
        query_block = block
    else:
        query_index = query_index if query_index.dim() == 2 else query_index.unsqueeze(0)
        rows = max(block.shape[0], query_index.shape[0])
        query_block = block.expand(rows, -1).gather(-1, query_index.expand(rows, -1))
    allowed = block.unsqueeze(-2) <= query_block.unsqueeze(-1)  # [B, Lq, L]
    if key_padding is not None:
        allowed = allowed & key_padding.bool().unsqueeze(-2)
    itself = query_index.unsqueeze(-1) == torch.arange(length, device=position_ids.device)
    return (allowed | itself).unsqueeze(1)


# --------------------------------------------------------------------------------------------
# MLPs and the mixture of experts
# --------------------------------------------------------------------------------------------


class LLaDA2MLP(nn.Module):
    """Gated MLP ``down_proj(act(gate_proj(x)) * up_proj(x))``, no biases (dense layers, experts
    and the shared experts)."""

    def __init__(self, config: LLaDA2Config, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2Gate(nn.Module):
    """The router: ``weight [num_experts, hidden_size]`` (drawn as the model's `_init_weights`
    draws it, so that a block built on its own is defined) and the ``expert_bias`` buffer (a
    checkpoint entry, persistent, as in the official module)."""

    def __init__(self, config: LLaDA2Config):
        super().__init__()
        self.top_k = int(config.num_experts_per_tok)
        self.num_experts = int(config.num_experts)
        self.n_group = int(config.n_group)
        self.topk_group = int(config.topk_group)
        self._scale = (float(config.routed_scaling_factor),)  # a literal under torch.compile
        self.weight = nn.Parameter(torch.empty(self.num_experts, config.hidden_size))
        nn.init.normal_(self.weight, mean=0.0, std=float(config.initializer_range))
        self.register_buffer("expert_bias", torch.zeros(self.num_experts))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [N, hidden_size]`` -> (expert indices ``[N, top_k]`` int64, their weights
        ``[N, top_k]`` float32)."""
        logits = F.linear(hidden.float(), self.weight.float())
        scores = torch.sigmoid(logits)
        biased = scores + self.expert_bias.float()
        n = biased.shape[0]
        grouped = biased.view(n, self.n_group, -1)
        group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [N, n_group]
        groups = group_score.topk(self.topk_group, dim=-1, sorted=False).indices
        group_keep = torch.zeros_like(group_score, dtype=torch.bool).scatter(1, groups, True)
        expert_keep = group_keep.unsqueeze(-1).expand_as(grouped).reshape(n, -1)
        experts = biased.masked_fill(~expert_keep, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return experts, weights * self._scale[0]


def moe_formulation(hidden: torch.Tensor, hidden_size: int, intermediate_size: int) -> str:
    """Which formulation of the routed experts runs on ``hidden``: the one place that decides.

    "grouped" (tokens sorted by expert, one `torch._grouped_mm` per projection: each expert's
    weights read once, for its own tokens) on CUDA in bfloat16, where the torch version has
    `torch._grouped_mm` (2.8 and later) and the widths are multiples of 8 (its 16-byte strides);
    "dense" (every expert on every token) elsewhere: on the CPU, in float32 (torch.compile
    traces `_grouped_mm` in bfloat16 only), and on older versions.
    """
    if (hidden.device.type == "cuda" and hidden.dtype == torch.bfloat16
            and hasattr(torch, "_grouped_mm") and hidden_size % 8 == 0
            and intermediate_size % 8 == 0):
        return "grouped"
    return "dense"


class RoutedExperts(nn.Module):
    """The routed experts' computation, shared by LLaDA2 and LLaDA-MoE: ``experts.{e}.{gate_proj,
    up_proj, down_proj}`` (the checkpoints' names) and ``act_fn``.

    `fuse_experts` makes the experts' weights views of three stacked tensors, so that a step
    reads them as one ``[num_experts, ...]`` operand without copying them (a per-step
    ``torch.stack`` would move every expert's weights); decoding with `optimize()` or the
    reference fuses them. Moving or casting the module (``to``) fuses again; the state dict
    keeps the per-expert names (copies, so that it saves as usual).
    """

    formulation = "auto"  # "auto" (`moe_formulation`), or "grouped" / "dense" to force one

    def __init__(self):
        super().__init__()
        self._stacks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._register_state_dict_hook(_unshared_expert_weights)

    def _projections(self):
        return [(e.gate_proj, e.up_proj, e.down_proj) for e in self.experts]

    def fused(self) -> bool:
        """Whether every expert's weights are views of the stacks, not replaced since fusing
        (loading with ``assign=True``, or one expert's weight set anew; a cast or a move fuses
        again). Checked on the host before each call: three pointers per expert."""
        if self._stacks is None:
            return False
        return all(linear.weight.data_ptr() == stack[i].data_ptr()
                   for i, linears in enumerate(self._projections())
                   for linear, stack in zip(linears, self._stacks, strict=True))

    @torch.no_grad()
    def fuse_experts(self) -> None:
        """Store the experts' weights in three stacked tensors (idempotent): the gate and up
        projections ``[num_experts, intermediate, hidden]``, the down ``[num_experts, hidden,
        intermediate]``; each expert's ``weight`` becomes a view of its slice."""
        if self.fused():
            return
        projections = self._projections()
        stacks = tuple(torch.stack([linears[j].weight for linears in projections])
                       for j in range(3))
        for i, linears in enumerate(projections):
            for linear, stack in zip(linears, stacks, strict=True):
                linear.weight = nn.Parameter(stack[i], requires_grad=linear.weight.requires_grad)
        self._stacks = stacks

    def _apply(self, fn, recurse=True):
        was_fused = self._stacks is not None
        self._stacks = None
        result = super()._apply(fn, recurse)
        if was_fused:
            self.fuse_experts()
        return result

    def expert_stacks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate ``[E, I, H]``, up ``[E, I, H]``, down ``[E, H, I]``): the fused stacks, or
        stacked now (a copy) when the experts are not fused, or with gradients (the stacks
        hold none). Traced, the stacks are taken as they are (decoding fuses, checked, before
        each call)."""
        training = torch.is_grad_enabled() and self.experts[0].gate_proj.weight.requires_grad
        if self._stacks is not None and not training and (torch.compiler.is_compiling()
                                                          or self.fused()):
            return self._stacks
        return tuple(torch.stack([linears[j].weight for linears in self._projections()])
                     for j in range(3))

    def routed(self, hidden: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k weights[:, k] * experts[experts[:, k]](hidden)`` for ``hidden [N, H]``, expert
        indices ``[N, k]`` and their weights ``[N, k]``, summed in float32 and cast to
        ``hidden``'s dtype (as the official code combines its top-k outputs); by the formulation
        `moe_formulation` picks."""
        w_gate, w_up, w_down = self.expert_stacks()
        formulation = self.formulation
        if formulation == "auto":
            formulation = moe_formulation(hidden, w_gate.shape[2], w_gate.shape[1])
        if formulation == "grouped":
            return self.routed_grouped(hidden, experts, weights, w_gate, w_up, w_down)
        routing = torch.zeros(hidden.shape[0], w_gate.shape[0], dtype=torch.float32,
                              device=hidden.device).scatter(1, experts, weights.float())
        return self.routed_dense(hidden, routing, w_gate, w_up, w_down)

    def routed_dense(self, hidden, routing, w_gate, w_up, w_down) -> torch.Tensor:
        """Every expert on every token (one batched matmul per projection), weighed by the dense
        ``routing [N, E]`` (float32, zero where a token is not routed). Exact for any routing,
        no data-dependent shapes; ``num_experts / top_k`` times the routed FLOPs, and every
        expert's weights read whatever the routing."""
        x = hidden.unsqueeze(0)  # [1, N, H], broadcast over the experts
        act = self.act_fn(torch.matmul(x, w_gate.transpose(1, 2))) * torch.matmul(x, w_up.transpose(1, 2))
        out = torch.matmul(act, w_down.transpose(1, 2))  # [E, N, H]
        combined = (out.float() * routing.t().unsqueeze(-1)).sum(dim=0)
        return combined.to(hidden.dtype)

    def routed_grouped(self, hidden, experts, weights, w_gate, w_up, w_down) -> torch.Tensor:
        """The N * k (token, expert) pairs sorted by expert, each projection one grouped GEMM
        over the experts' segments (`torch._grouped_mm`, segment ends from a cumulative count
        computed on the device: no host sync, static shapes), the outputs scattered back with
        their weights in float32. An expert with no token has an empty segment."""
        n, k = experts.shape
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(w_gate.shape[0], dtype=torch.int32, device=hidden.device)
        counts = counts.scatter_add(0, flat, torch.ones_like(flat, dtype=torch.int32))
        offsets = torch.cumsum(counts, 0, dtype=torch.int32)
        tokens = torch.div(order, k, rounding_mode="floor")
        x = hidden.index_select(0, tokens)  # [N * k, H], grouped by expert
        act = self.act_fn(torch._grouped_mm(x, w_gate.transpose(1, 2), offs=offsets)) \
            * torch._grouped_mm(x, w_up.transpose(1, 2), offs=offsets)
        out = torch._grouped_mm(act, w_down.transpose(1, 2), offs=offsets)  # [N * k, H]
        weighted = out.float() * weights.reshape(-1).float().index_select(0, order).unsqueeze(-1)
        combined = torch.zeros(n, hidden.shape[1], dtype=torch.float32, device=hidden.device)
        return combined.index_add(0, tokens, weighted).to(hidden.dtype)


def fuse_experts(model: nn.Module) -> None:
    """`RoutedExperts.fuse_experts` on every MoE block of `model` (none: nothing to do)."""
    for module in model.modules():
        if isinstance(module, RoutedExperts):
            module.fuse_experts()


def _unshared_expert_weights(module, state_dict, prefix, local_metadata):
    """A fused module's expert weights share their stacks' memory: copies in the state dict, so
    that it saves (safetensors refuses shared tensors) and loads as the checkpoints'."""
    if module._stacks is not None:
        for name in list(state_dict):
            if name.startswith(prefix + "experts."):
                state_dict[name] = state_dict[name].clone()
    return state_dict


class LLaDA2SparseMoeBlock(RoutedExperts):
    """Routed experts (``experts.{e}``), the router (``gate``) and the shared experts.

    The routed experts run as `RoutedExperts.routed` picks (`moe_formulation`): grouped by
    expert on CUDA in bfloat16, every expert on every token elsewhere; one graph either way.
    """

    def __init__(self, config: LLaDA2Config):
        super().__init__()
        self.experts = nn.ModuleList([LLaDA2MLP(config, config.moe_intermediate_size)
                                      for _ in range(config.num_experts)])
        self.gate = LLaDA2Gate(config)
        # As the official module: present whenever num_shared_experts is not None (0: width 0).
        self.shared_experts = (None if config.num_shared_experts is None else
                               LLaDA2MLP(config, config.moe_intermediate_size * config.num_shared_experts))
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        hidden = x.reshape(-1, shape[-1])
        y = self.routed(hidden, *self.gate(hidden)).view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y


# --------------------------------------------------------------------------------------------
# Attention and the decoder layer
# --------------------------------------------------------------------------------------------


class LLaDA2Attention(nn.Module):
    """Fused ``query_key_value``, optional per-head QK RMSNorm, partial RoPE, SDPA, ``dense``."""

    def __init__(self, config: LLaDA2Config):
        super().__init__()
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(config.head_dim)
        self.query_key_value = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim,
            bias=bool(config.use_qkv_bias))
        if config.use_qk_norm:
            self.query_layernorm = LLaDARMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = LLaDARMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.query_layernorm = None
            self.key_layernorm = None
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bool(config.use_bias))

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, cache_keys: torch.Tensor | None = None,
                cache_values: torch.Tensor | None = None,
                cache_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of ``hidden``'s tokens. With a cache (``[B, n_kv_heads, T, head_dim]`` keys and
        values, after RoPE): without ``cache_positions`` the tokens are the whole sequence and
        their keys and values are stored; with them (``[B, Lq]``) the tokens sit at those
        positions of their rows, their keys and values replace the stored ones there, and they
        attend to all ``T`` stored ones (under ``attn_mask``, which hides what they must not
        see)."""
        B, L, _ = hidden.shape
        qkv = self.query_key_value(hidden).view(B, L, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.query_layernorm is not None:
            q = self.query_layernorm(q)
            k = self.key_layernorm(k)
        q = apply_partial_rotary(q, cos, sin)
        k = apply_partial_rotary(k, cos, sin)
        if cache_keys is not None:
            if cache_positions is None:
                cache_keys.copy_(k)
                cache_values.copy_(v)
            else:
                index = cache_positions[:, None, :, None].expand(-1, self.num_kv_heads, -1, self.head_dim)
                cache_keys.scatter_(2, index, k.to(cache_keys.dtype))
                cache_values.scatter_(2, index, v.to(cache_values.dtype))
                k, v = cache_keys.to(q.dtype), cache_values.to(q.dtype)
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=False)
        return self.dense(out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim))


class LLaDA2DecoderLayer(nn.Module):
    def __init__(self, config: LLaDA2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention = LLaDA2Attention(config)
        self.mlp = (LLaDA2SparseMoeBlock(config) if config.is_moe_layer(layer_idx)
                    else LLaDA2MLP(config, config.intermediate_size))
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, cache_keys: torch.Tensor | None = None,
                cache_values: torch.Tensor | None = None,
                cache_positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), cos, sin, attn_mask, cache_keys, cache_values,
                               cache_positions)
        return x + self.feed_forward(self.post_attention_layernorm(x))

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """The MLP (or mixture of experts) of the normed hidden states ``h``: one method, so that
        a tensor-parallel layer sums its ranks' partial outputs here (`credit_compile.distributed`)."""
        return self.mlp(h)


class LLaDA2Model(nn.Module):
    """Holds ``word_embeddings``, ``layers`` and ``norm`` as the official `LLaDA2MoeModel` does."""

    def __init__(self, config: LLaDA2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LLaDA2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)


# --------------------------------------------------------------------------------------------
# The LM
# --------------------------------------------------------------------------------------------


class LLaDA2ModelLM(PreTrainedModel):
    """LLaDA2.x block-diffusion MoE LM, loadable from the official checkpoints.

    ``forward(input_ids, attention_mask=None, position_ids=None, block_length=None)`` returns an
    output whose ``.logits`` is ``[B, L, vocab_size]``. See `forward_hidden` for the masks.
    """

    config_class = LLaDA2Config
    config: LLaDA2Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["LLaDA2DecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def __init__(self, config: LLaDA2Config):
        super().__init__(config)
        self.model = LLaDA2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._rope_theta = (float(config.rope_theta),)  # a literal under torch.compile
        self.post_init()

    # --- transformers plumbing --------------------------------------------------------------

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = float(self.config.initializer_range)
        if isinstance(module, LLaDA2Gate):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            hf_init.zeros_(module.expert_bias)
        else:
            init_weights(module, std)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The ``[vocab_size, hidden_size]`` matrix of the LM head."""
        return self.lm_head.weight

    # --- forward ----------------------------------------------------------------------------

    def attention_mask_for(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           position_ids: torch.Tensor, block_length: int | None,
                           query_index: torch.Tensor | None = None) -> torch.Tensor | None:
        """The mask SDPA gets (see `forward_hidden`); ``position_ids`` are the whole sequence's
        and ``query_index`` the input tokens' positions in it (a cached forward)."""
        if attention_mask is not None and attention_mask.dim() == 4:
            if block_length is not None:
                raise ValueError("block_length with a 4-D attention_mask: the 4-D mask already says "
                                 "what each token sees; pass one or the other")
            return attention_mask
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask of {attention_mask.dim()} dimensions: give a [B, L] "
                             f"padding mask or a [B, 1, L, L] attention mask")
        if block_length is not None:
            if block_length < 1:
                raise ValueError(f"block_length={block_length}: it must be a positive number of tokens")
            return block_causal_mask(position_ids, int(block_length), attention_mask, query_index)
        if attention_mask is None:
            return None
        return attention_mask.bool()[:, None, None, :]

    def forward_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       position_ids: torch.Tensor | None = None, block_length: int | None = None,
                       kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                       cache_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states after ``norm``: ``[B, L, hidden_size]``.

        attention_mask: one of
          - None: every token sees every token (the official forward with SDPA and no mask);
          - ``[B, L]``, 1 (True) for real tokens: a key-padding mask;
          - ``[B or 1, 1, L, L]``: the attention mask itself, boolean (True: attend) or additive
            float (0 or -inf; the official `generate()`'s ``log(tril(...))`` mask, whatever its
            dtype), used as given.
        position_ids: ``[B, L]`` or ``[1, L]``; None gives ``cumsum(attention_mask) - 1`` clamped
            at 0 for a 2-D mask, else ``0..L-1`` (the official default).
        block_length: block-causal attention (`block_causal_mask`) over the positions, combined
            with a 2-D padding mask; with positions ``0..L-1`` it is the official generate()'s
            mask for blocks of that length. Not with a 4-D mask.
        kv_cache: (keys, values), each ``[num_hidden_layers, B, num_key_value_heads, T,
            head_dim]`` (`kv_cache_shape`), the exact block cache. Without ``cache_positions``
            the input is the whole sequence (``T`` tokens), computed as without a cache, and every
            layer's keys and values (after RoPE) are stored. With them the input is the tokens
            at those positions (a block): their keys and values replace the stored ones there and
            they attend to the ``T`` stored ones under the block-causal mask (``block_length``
            required), which hides every later block. With block-causal attention a finished
            block's keys and values depend on it and earlier blocks only, so once stored from its
            final tokens they are exact: the block's logits equal the uncached forward's, whatever
            the cache holds at later positions. ``attention_mask`` is then the whole sequence's
            ``[B, T]`` padding mask and ``position_ids`` (default: from it) the whole sequence's.
        cache_positions: int64 positions of the input tokens in the sequence, ``[Lq]`` (the same
            in every row) or ``[B, Lq]`` (per row: a left-padded row's blocks follow its own
            positions, so its current block sits elsewhere in the canvas than another row's).
        """
        if cache_positions is not None and kv_cache is None:
            raise ValueError("cache_positions without kv_cache: pass the (keys, values) cache that "
                             "a forward of the whole sequence filled")
        if kv_cache is not None:
            self._check_kv_cache(*kv_cache, input_ids, attention_mask, position_ids, block_length,
                                 cache_positions)
        length = input_ids.shape[-1] if cache_positions is None else kv_cache[0].shape[3]
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = positions_from_mask(attention_mask)
            else:
                position_ids = torch.arange(length, device=input_ids.device).unsqueeze(0)
        if cache_positions is not None and cache_positions.dim() == 1:
            cache_positions = cache_positions.unsqueeze(0).expand(input_ids.shape[0], -1)
        attn_mask = self.attention_mask_for(input_ids, attention_mask, position_ids, block_length,
                                            cache_positions)
        if cache_positions is not None:
            position_ids = position_ids.expand(input_ids.shape[0], -1).gather(-1, cache_positions)
        m = self.model
        x = F.embedding(input_ids, m.word_embeddings.weight)
        cos, sin = partial_rotary_cos_sin(position_ids, self.config.rotary_dim, self._rope_theta[0], x.dtype)
        if kv_cache is None:
            for layer in m.layers:
                x = layer(x, cos, sin, attn_mask)
        else:
            keys, values = kv_cache
            for i, layer in enumerate(m.layers):
                x = layer(x, cos, sin, attn_mask, keys[i], values[i], cache_positions)
        return m.norm(x)

    def kv_cache_shape(self, batch_size: int, seq_len: int) -> tuple[int, ...]:
        """Shape of each of the keys and values tensors of a `kv_cache` for ``[batch_size,
        seq_len]`` sequences."""
        cfg = self.config
        return (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, seq_len, cfg.head_dim)

    def _check_kv_cache(self, keys, values, input_ids, attention_mask, position_ids, block_length,
                        cache_positions) -> None:
        # Shapes, dtypes and devices are static under torch.compile: these checks cost the
        # compiled step nothing.
        batch, length = input_ids.shape
        seq_len = keys.shape[3] if keys.dim() == 5 else -1
        expected = self.kv_cache_shape(batch, length if cache_positions is None else seq_len)
        for name, cache in (("keys", keys), ("values", values)):
            if tuple(cache.shape) != expected:
                raise ValueError(f"kv_cache {name} of shape {tuple(cache.shape)} for input_ids of shape "
                                 f"{(batch, length)}: allocate it with model.kv_cache_shape(batch_size, "
                                 f"seq_len) = {expected}")
            if not cache.is_floating_point() or cache.device != input_ids.device:
                raise ValueError(f"kv_cache {name} of dtype {cache.dtype} on {cache.device} for input_ids "
                                 f"on {input_ids.device}: allocate keys and values as floating-point "
                                 f"tensors on the model's device")
        if keys.dtype != values.dtype:
            raise ValueError(f"kv_cache keys of dtype {keys.dtype} and values of dtype {values.dtype}: "
                             f"allocate both in one dtype")
        # Meta tensors (a dry run at real shapes) have no memory to share.
        if (not torch.compiler.is_compiling() and keys.device.type != "meta"
                and keys.data_ptr() == values.data_ptr()):
            raise ValueError("kv_cache keys and values share their memory: allocate two tensors")
        if cache_positions is None:
            return
        shape = tuple(cache_positions.shape)
        if not (shape == (length,) or shape == (batch, length)):  # (`in` on tuples trips dynamo)
            raise ValueError(f"cache_positions of shape {tuple(cache_positions.shape)} for input_ids of "
                             f"shape {(batch, length)}: give one sequence position per input token "
                             f"([{length}], or [{batch}, {length}] per row)")
        if block_length is None:
            raise ValueError("a cached forward (cache_positions) needs block_length: the block-causal "
                             "mask is what makes the cache exact (it hides the later blocks)")
        for name, tensor in (("attention_mask", attention_mask), ("position_ids", position_ids)):
            if tensor is not None and (tensor.dim() != 2 or tensor.shape[-1] != seq_len):
                raise ValueError(f"{name} of shape {tuple(tensor.shape)} in a cached forward of {seq_len} "
                                 f"stored positions: give the whole sequence's [B, {seq_len}]")

    def lm_head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., vocab_size]`` from final (normed) hidden states: one ``F.linear``."""
        return F.linear(hidden, self.lm_head.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        block_length: int | None = None,
        return_dict: bool | None = None,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple[torch.Tensor]:
        """Logits for every input position. `attention_mask`, `position_ids`, `block_length`,
        `kv_cache`, `cache_positions`: see `forward_hidden`.

        Extra keyword arguments of the official forward are accepted only when they ask for
        nothing this model does not do (``use_cache``/``output_*`` False or None, no
        ``past_key_values``/``inputs_embeds``/``labels``).
        """
        for name, value in kwargs.items():
            if value is not None and value is not False:
                raise TypeError(f"LLaDA2ModelLM.forward does not support {name}={value!r}")
        hidden = self.forward_hidden(input_ids, attention_mask, position_ids, block_length, kv_cache,
                                     cache_positions)
        logits = self.lm_head_logits(hidden)
        if return_dict is False:
            return (logits,)
        return CausalLMOutputWithPast(logits=logits)
