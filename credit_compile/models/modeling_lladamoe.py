"""A compile-friendly LLaDA-MoE (inclusionAI's LLaDA-MoE-7B-A1B) masked-diffusion LM with the official
checkpoint layout.

Written from scratch against the math of the official `modeling_lladamoe.py` (an OLMoE-style
mixture of experts with bidirectional attention). The parameter names are the official ones:

    model.embed_tokens
    model.layers.{i}.input_layernorm, .self_attn.{q_proj, k_proj, v_proj, o_proj, q_norm, k_norm},
        .post_attention_layernorm,
        .mlp.{gate_proj, up_proj, down_proj}                        (dense layers: moe_layer_freq 0)
        .mlp.{gate, experts.{e}.{gate_proj, up_proj, down_proj}[, expert_bias]},
        .shared_expert.{gate_proj, up_proj, down_proj}               (MoE layers)
    model.norm, lm_head

and the numerics follow the official forward:

    x = embed_tokens(ids)
    per layer:  h = input_layernorm(x);  q, k, v = q_proj(h), k_proj(h), v_proj(h)
                q, k = q_norm(q), k_norm(k)           (RMSNorm over each head's head_dim dims)
                q, k, v clamped to +-clip_qkv (when set)
                q, k = rope on the first int(head_dim * partial_rotary_factor) dims of each head
                x = x + o_proj(SDPA(q, k, v, key-padding mask, non-causal))
                h = post_attention_layernorm(x);  x = x + mlp(h) [+ shared_expert(h)]
    moe(h) = sum_k w_k expert_k(h), the experts and weights from
                p = softmax(gate(h)) (float32) [+ expert_bias];  the top-k of p, w = their p
                (not renormalised), cast to h's dtype
    logits = lm_head(norm(x))

The official code as transformers 5 sees it: the in-tree OLMoE does not fit (its q_norm / k_norm
span all heads, where LLaDA-MoE normalises each head; it has no shared expert, dense layers,
expert bias or partial RoPE; transformers 5 fuses its experts into 3-D parameters at load time),
so this module is LLaDA2's pieces (partial RoPE, the routed experts) on LLaDA's forward.

Differences from the official forward (none changes a single sequence's logits beyond float
rounding):
- positions default to ``cumsum(attention_mask) - 1`` (clamped at 0), where the official forward
  uses ``0..L-1`` whatever the padding. Both honour the mask (a key-padding mask over the keys);
  RoPE scores depend on position differences only, so a left-padded row's logits agree either way
  up to rounding, and equal the row's alone here;
- the MoE runs as LLaDA2's (`RoutedExperts`): on CUDA in bfloat16 the tokens sorted by expert
  and one grouped GEMM per projection, elsewhere every expert on every token weighed with the
  sparse routing weights; one graph either way, no data-dependent shapes, where the official
  block gathers each expert's tokens (host syncs). The same routing; the sum over experts runs
  in float32 in another order;
- Fast-dLLM's approximate KV caches (`forward_hidden`'s ``kv_cache``) and `compile_layers_once`,
  as in this project's LLaDA; no autoregressive cache, dropout, router logits or loss;
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

from .configuration_lladamoe import LLaDAMoEConfig
from .modeling_llada import (
    LLaDAModelLM,
    LLaDARMSNorm,
    _layers_alike,
    _run_block,
    _run_block_compiled_once,
    cache_and_repeat,
    positions_from_mask,
)
from .modeling_llada2 import RoutedExperts, apply_partial_rotary, partial_rotary_cos_sin

__all__ = [
    "LLaDAMoEModelLM",
    "LLaDAMoEModel",
    "LLaDAMoEDecoderLayer",
    "LLaDAMoEAttention",
    "LLaDAMoEMLP",
    "LLaDAMoESparseMoeBlock",
]


class LLaDAMoEMLP(nn.Module):
    """Gated MLP ``down_proj(act(gate_proj(x)) * up_proj(x))``, no biases (dense layers, experts,
    the shared expert)."""

    def __init__(self, config: LLaDAMoEConfig, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LLaDAMoESparseMoeBlock(RoutedExperts):
    """The router ``gate`` (a linear layer), the experts and the optional ``expert_bias`` buffer.

    The routed experts run as LLaDA2's do (`RoutedExperts.routed`, `moe_formulation`): grouped
    by expert on CUDA in bfloat16, every expert on every token elsewhere, the outputs summed
    with the routing weights in float32; one graph either way.
    """

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.num_experts = int(config.num_experts)
        self.top_k = int(config.num_experts_per_tok)
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList([LLaDAMoEMLP(config, config.expert_intermediate_size)
                                      for _ in range(self.num_experts)])
        self.act_fn = ACT2FN[config.hidden_act]
        if config.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(self.num_experts))
        else:
            self.expert_bias = None

    def routing(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden [N, hidden_size]`` -> (expert indices ``[N, top_k]``, their weights ``[N,
        top_k]`` in ``hidden``'s dtype): the top-k of the softmax (plus the expert bias, which the
        weights keep, as the official block does)."""
        probs = F.softmax(self.gate(hidden), dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:
            probs = probs + self.expert_bias
        weights, experts = probs.topk(self.top_k, dim=-1)
        return experts, weights.to(hidden.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x.reshape(-1, x.shape[-1])
        return self.routed(hidden, *self.routing(hidden)).view(x.shape)


class LLaDAMoEAttention(nn.Module):
    """q/k/v/o projections, per-head QK RMSNorm, optional clamping, partial RoPE, SDPA."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(config.head_dim)
        hidden, bias = config.hidden_size, bool(config.attention_bias)
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        if config.qk_layernorm:
            self.q_norm = LLaDARMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = LLaDARMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self._clip = (None if config.clip_qkv is None else float(config.clip_qkv),)  # a literal

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, cache_keys: torch.Tensor | None = None,
                cache_values: torch.Tensor | None = None,
                cache_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of ``hidden``'s tokens. With a cache (``[B, n_kv_heads, T, head_dim]``, after
        RoPE): without ``cache_positions`` the tokens are the whole sequence and their keys and
        values are stored; with them (``[Lq]``) the tokens sit at those positions, their keys and
        values replace the stored ones there, and they attend to all ``T`` stored ones."""
        B, L, _ = hidden.shape
        q = self.q_proj(hidden).view(B, L, self.num_heads, self.head_dim)
        k = self.k_proj(hidden).view(B, L, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden).view(B, L, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        clip = self._clip[0]
        if clip is not None:
            q, k, v = q.clamp(-clip, clip), k.clamp(-clip, clip), v.clamp(-clip, clip)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_partial_rotary(q, cos, sin), apply_partial_rotary(k, cos, sin)
        k, v = cache_and_repeat(q, k, v, cache_keys, cache_values, cache_positions)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim))


class LLaDAMoEDecoderLayer(nn.Module):
    def __init__(self, config: LLaDAMoEConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = LLaDAMoEAttention(config)
        moe = config.is_moe_layer(layer_idx)
        self.mlp = (LLaDAMoESparseMoeBlock(config) if moe
                    else LLaDAMoEMLP(config, config.dense_intermediate_size))
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        # As the official layer: a shared expert on the MoE layers whenever its size is set.
        self.shared_expert = (LLaDAMoEMLP(config, config.shared_expert_intermediate_size)
                              if moe and config.shared_expert_intermediate_size is not None else None)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None, cache_keys: torch.Tensor | None = None,
                cache_values: torch.Tensor | None = None,
                cache_positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache_keys, cache_values,
                               cache_positions)
        return x + self.feed_forward(self.post_attention_layernorm(x))

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """The MLP (or the experts, plus the shared expert) of the normed hidden states ``h``:
        one method, so that a tensor-parallel layer sums its ranks' partial outputs, routed and
        shared together, here (`credit_compile.distributed`)."""
        y = self.mlp(h)
        if self.shared_expert is not None:
            y = y + self.shared_expert(h)
        return y


class LLaDAMoEModel(nn.Module):
    """Holds ``embed_tokens``, ``layers`` and ``norm`` as the official `LLaDAMoEModel` does."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LLaDAMoEDecoderLayer(config, i)
                                     for i in range(config.num_hidden_layers)])
        self.norm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)


class LLaDAMoEModelLM(PreTrainedModel):
    """LLaDA-MoE masked-diffusion LM (bidirectional), loadable from the official checkpoints.

    ``forward(input_ids, attention_mask=None, position_ids=None)`` returns an output whose
    ``.logits`` is ``[B, L, vocab_size]``; it takes the same keyword arguments as this project's
    `LLaDAModelLM` (`compile_layers_once`, `kv_cache`, `cache_positions`).
    """

    config_class = LLaDAMoEConfig
    config: LLaDAMoEConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["LLaDAMoEDecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__(config)
        self.model = LLaDAMoEModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._rope_theta = (float(config.rope_theta),)  # a literal under torch.compile
        self.post_init()

    # --- transformers plumbing --------------------------------------------------------------

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = float(self.config.initializer_range)
        if isinstance(module, nn.Linear):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            hf_init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LLaDARMSNorm):
            hf_init.ones_(module.weight)
        elif isinstance(module, LLaDAMoESparseMoeBlock) and module.expert_bias is not None:
            hf_init.zeros_(module.expert_bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The ``[vocab_size, hidden_size]`` matrix of the LM head."""
        return self.lm_head.weight

    # --- forward ----------------------------------------------------------------------------

    def forward_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        compile_layers_once: bool = False,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states after ``norm``: ``[B, L, hidden_size]``. The arguments mean what
        they mean for `LLaDAModelLM.forward_hidden`: a ``[B, L]`` key-padding mask (positions
        then default to ``cumsum(mask) - 1``), one compiled layer for all, and Fast-dLLM's
        approximate KV cache (keys and values ``[num_hidden_layers, B, num_key_value_heads, T,
        head_dim]``, `kv_cache_shape`) with the input tokens' canvas positions ``[Lq]``."""
        if cache_positions is not None and kv_cache is None:
            raise ValueError("cache_positions without kv_cache: pass the (keys, values) cache "
                             "that a forward of the whole sequence filled")
        if kv_cache is not None:
            self._check_kv_cache(*kv_cache, input_ids, attention_mask, cache_positions)
        if position_ids is None:
            if cache_positions is not None:
                position_ids = cache_positions.unsqueeze(0) if attention_mask is None else \
                    positions_from_mask(attention_mask).index_select(1, cache_positions)
            elif attention_mask is None:
                position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device).unsqueeze(0)
            else:
                position_ids = positions_from_mask(attention_mask)
        attn_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        m = self.model
        x = F.embedding(input_ids, m.embed_tokens.weight)
        cos, sin = partial_rotary_cos_sin(position_ids, self.config.rotary_dim, self._rope_theta[0], x.dtype)
        if compile_layers_once and torch.compiler.is_compiling() and not self.layers_alike():
            compile_layers_once = False
        run_layer = _run_block_compiled_once if compile_layers_once else _run_block
        if kv_cache is None:
            for layer in m.layers:
                x = run_layer(layer, x, cos, sin, attn_mask)
        else:
            keys, values = kv_cache
            for i, layer in enumerate(m.layers):
                x = run_layer(layer, x, cos, sin, attn_mask, keys[i], values[i], cache_positions)
        return m.norm(x)

    def layers_alike(self) -> bool:
        """Whether `compile_layers_once` can compile one layer for all: no hooks and the same
        submodules (a checkpoint mixing dense and MoE layers has not)."""
        return _layers_alike(self.model.layers)

    def kv_cache_shape(self, batch_size: int, seq_len: int) -> tuple[int, ...]:
        """Shape of each of the keys and values tensors of a `kv_cache` for ``[batch_size,
        seq_len]`` sequences."""
        cfg = self.config
        return (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, seq_len, cfg.head_dim)

    # LLaDA's checks of a cache: the same layout and meaning (shapes from `kv_cache_shape`).
    _check_kv_cache = LLaDAModelLM._check_kv_cache

    def lm_head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., vocab_size]`` from final (normed) hidden states: one ``F.linear``."""
        return F.linear(hidden, self.lm_head.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        compile_layers_once: bool = False,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple[torch.Tensor]:
        """Logits for every input position (non-causal). See `forward_hidden`.

        Extra keyword arguments of the official forward are accepted only when they ask for
        nothing this model does not do (``use_cache``/``output_*`` False or None, no
        ``past_key_values``/``inputs_embeds``/``labels``).
        """
        for name, value in kwargs.items():
            if value is not None and value is not False:
                raise TypeError(f"LLaDAMoEModelLM.forward does not support {name}={value!r}")
        hidden = self.forward_hidden(input_ids, attention_mask, position_ids, compile_layers_once,
                                     kv_cache, cache_positions)
        logits = self.lm_head_logits(hidden)
        if return_dict is False:
            return (logits,)
        return CausalLMOutputWithPast(logits=logits)
