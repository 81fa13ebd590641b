"""A compile-friendly LLaDA masked-diffusion LM with the official checkpoint layout.

Written from scratch against the math of GSAI-ML's `modeling_llada.py` (LLaDA-8B-Base/-Instruct):
the parameter names (``model.transformer.{wte, blocks.{i}.{attn_norm, q_proj, k_proj, v_proj,
attn_out, ff_norm, ff_proj, up_proj, ff_out}, ln_f, ff_out}``) and the numerics follow the official
llama block:

    x = wte(ids) [* sqrt(d_model) if input_emb_norm]
    per block:  h = attn_norm(x);  q, k, v = q_proj(h), k_proj(h), v_proj(h)
                q, k = rope(q), rope(k)        (float32 when rope_full_precision, NeoX rotate_half)
                x = x + attn_out(SDPA(q, k, v, non-causal))
                h = ff_norm(x);  x = x + ff_out(act(ff_proj(h)) * up_proj(h))
    logits = ff_out(ln_f(x))   (or wte when weight_tying) [/ sqrt(d_model) if scale_logits]

RMSNorm normalises in float32, casts back to the input dtype, then multiplies by the affine weight;
logits have ``embedding_size`` columns, as in the official code.

Deliberate differences from the official code (none changes a single-sequence result):
- the attention mask is honoured: a boolean key-padding mask ``[B, 1, 1, L]`` goes to
  ``F.scaled_dot_product_attention``, and positions default to ``cumsum(attention_mask) - 1``
  (clamped at 0), so a left-padded batch gives each row the logits it gets alone. The official
  forward drops the mask (ML-GSAI/LLaDA issue 90) and always uses positions ``0..L-1``; with an
  all-ones mask or none, both agree;
- no autoregressive KV cache (an optional DualCache of Fast-dLLM's for block decoding instead),
  no dropout, no activation checkpointing, no FSDP hooks (inference model);
- no data-dependent Python control flow, no ``.item()``, no RoPE cache dictionary: the cos/sin
  tables are computed from ``position_ids`` inside the graph, so ``torch.compile(fullgraph=True)``
  traces the whole forward;
- the final two ops are ``ln_f`` then one ``F.linear`` (see `LLaDAModelLM.lm_head`), so graph passes
  can slice the hidden states before the LM head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as hf_init
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig

__all__ = [
    "LLaDAModelLM",
    "LLaDAModel",
    "LLaDABlock",
    "LLaDARMSNorm",
    "LLaDALayerNorm",
    "rotary_cos_sin",
    "apply_rotary",
    "positions_from_mask",
]


# --------------------------------------------------------------------------------------------
# Norms
# --------------------------------------------------------------------------------------------
#
# _static_float: float constants (norm eps, rope theta) are kept in 1-tuples. Under
# `torch.compile(dynamic=True)` Dynamo turns a plain float attribute into a graph input (a 0-d
# tensor read back with `.item()`); a tuple of literals is guarded as a constant, so the graph
# keeps them as literals in every dynamic mode.


class LLaDARMSNorm(nn.Module):
    """Official `RMSLayerNorm` (and `GemmaRMSLayerNorm` with ``gemma=True``).

    Normalises in float32, casts back to the input dtype, then applies ``weight * x (+ bias)``
    (Gemma: ``x * (1 + weight) (+ bias)``) in that dtype.
    """

    def __init__(self, size: int, eps: float, affine: bool = True, bias: bool = False, gemma: bool = False):
        super().__init__()
        self._eps = (float(eps),)  # see _static_float
        self.gemma = gemma
        self.weight = nn.Parameter(torch.ones(size)) if affine else None
        self.bias = nn.Parameter(torch.zeros(size)) if (affine and bias) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self._eps[0])
        h = h.to(dtype)
        if self.weight is not None:
            h = h * (1 + self.weight) if self.gemma else self.weight * h
            if self.bias is not None:
                h = h + self.bias
        return h

    @property
    def eps(self) -> float:
        return self._eps[0]


class LLaDALayerNorm(nn.Module):
    """Official `LayerNorm` ("default" / "low_precision" outside autocast): eps fixed at 1e-5."""

    def __init__(self, size: int, affine: bool = True, bias: bool = False, eps: float = 1e-5):
        super().__init__()
        self._eps = (float(eps),)  # see _static_float
        self.normalized_shape = (size,)
        self.weight = nn.Parameter(torch.ones(size)) if affine else None
        self.bias = nn.Parameter(torch.zeros(size)) if (affine and bias) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self._eps[0])

    @property
    def eps(self) -> float:
        return self._eps[0]


def _build_norm(config: LLaDAConfig, size: int | None = None, affine: bool | None = None) -> nn.Module:
    """`LayerNormBase.build`: affine from ``layer_norm_with_affine`` unless given; the bias follows
    ``bias_for_layer_norm``, or ``include_bias`` when that is None."""
    size = size or config.d_model
    affine = config.layer_norm_with_affine if affine is None else affine
    bias = config.bias_for_layer_norm if config.bias_for_layer_norm is not None else config.include_bias
    kind = str(config.layer_norm_type)
    if kind in ("rms", "gemma_rms"):
        return LLaDARMSNorm(size, config.rms_norm_eps, affine, bool(bias), gemma=kind == "gemma_rms")
    return LLaDALayerNorm(size, affine, bool(bias))


# --------------------------------------------------------------------------------------------
# Positions and rotary embeddings
# --------------------------------------------------------------------------------------------


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counted over attended tokens: ``cumsum(mask) - 1``, clamped at 0.

    A left-padded row gets positions ``0, 0, ..., 0, 1, 2, ...``: its real tokens sit at the
    positions they would have without padding.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[B, 1, L, head_dim]`` for ``position_ids [B, L]`` (B may be 1).

    Same float32 arithmetic as the official `RotaryEmbedding.get_rotary_embedding`:
    ``inv_freq = 1 / theta ** (arange(0, d, 2) / d)``, ``freqs = pos * inv_freq``,
    ``emb = cat(freqs, freqs)`` (the half-split / rotate_half layout).
    """
    device = position_ids.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``t * cos + rotate_half(t) * sin`` on ``[B, H, L, D]`` queries/keys; float32 when
    ``full_precision`` (official ``rope_full_precision``), cast back to the input dtype."""
    q_, k_ = (q.float(), k.float()) if full_precision else (q, k)
    cos, sin = cos.to(q_.dtype), sin.to(q_.dtype)
    q_ = q_ * cos + _rotate_half(q_) * sin
    k_ = k_ * cos + _rotate_half(k_) * sin
    return q_.to(q.dtype), k_.to(k.dtype)


# --------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------

_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
}


def cache_and_repeat(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cache_keys: torch.Tensor | None, cache_values: torch.Tensor | None,
                     cache_positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values the queries ``q`` attend to (``[B, n_heads, T, head_dim]``), through
    Fast-dLLM's cache where one is given: without ``cache_positions`` the tokens are the whole
    sequence and are stored; with them they are written at those positions, and every stored
    one is read back (in the queries' dtype). Grouped key/value heads are repeated to the
    queries' heads."""
    if cache_keys is not None:
        if cache_positions is None:
            cache_keys.copy_(k)
            cache_values.copy_(v)
        else:
            cache_keys.index_copy_(2, cache_positions, k.to(cache_keys.dtype))
            cache_values.index_copy_(2, cache_positions, v.to(cache_values.dtype))
            k, v = cache_keys.to(q.dtype), cache_values.to(q.dtype)
    groups = q.shape[1] // k.shape[1]
    if groups != 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return k, v


class LLaDABlock(nn.Module):
    """The official `LLaDALlamaBlock` (pre-norm attention + gated MLP), without cache or dropout."""

    def __init__(self, config: LLaDAConfig, layer_id: int = 0):
        super().__init__()
        self.layer_id = layer_id
        d = config.d_model
        self.n_heads = config.n_heads
        self.n_kv_heads = config.effective_n_kv_heads
        self.head_dim = d // config.n_heads
        self.rope_full_precision = bool(config.rope_full_precision)
        self.act = _ACTIVATIONS[str(config.activation_type)]
        hidden = config.intermediate_size
        bias = bool(config.include_bias)
        qkv_bias = bool(config.include_bias or config.include_qkv_bias)

        self.attn_norm = _build_norm(config)
        self.ff_norm = _build_norm(config)
        if config.attention_layer_norm:
            affine = bool(config.attention_layer_norm_with_affine)
            self.q_norm = _build_norm(config, size=d, affine=affine)
            self.k_norm = _build_norm(config, size=self.n_kv_heads * self.head_dim, affine=affine)
        else:
            self.q_norm = None
            self.k_norm = None
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        self.ff_proj = nn.Linear(d, hidden, bias=bias)
        self.up_proj = nn.Linear(d, hidden, bias=bias)
        self.ff_out = nn.Linear(hidden, d, bias=bias)

    def attention(
        self,
        x_normed: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache_keys: torch.Tensor | None = None,
        cache_values: torch.Tensor | None = None,
        cache_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of ``x_normed``'s tokens over the keys and values of the whole sequence.

        With a cache (``cache_keys``/``cache_values`` ``[B, n_kv_heads, T, head_dim]``): without
        ``cache_positions`` the tokens are the whole sequence and their keys and values are
        stored; with them the tokens sit at those canvas positions, their keys and values replace
        the stored ones there, and they attend to all ``T`` stored ones (Fast-dLLM's DualCache).
        """
        B, L, D = x_normed.shape
        q = self.q_proj(x_normed)
        k = self.k_proj(x_normed)
        v = self.v_proj(x_normed)
        if self.q_norm is not None:
            q = self.q_norm(q).to(k.dtype)
            k = self.k_norm(k).to(k.dtype)
        q = q.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin, self.rope_full_precision)
        k, v = cache_and_repeat(q, k, v, cache_keys, cache_values, cache_positions)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=False)
        att = att.transpose(1, 2).reshape(B, L, -1)
        return self.attn_out(att)

    def mlp(self, x_normed: torch.Tensor) -> torch.Tensor:
        return self.ff_out(self.act(self.ff_proj(x_normed)) * self.up_proj(x_normed))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache_keys: torch.Tensor | None = None,
        cache_values: torch.Tensor | None = None,
        cache_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x), cos, sin, attn_mask, cache_keys, cache_values,
                               cache_positions)
        return x + self.mlp(self.ff_norm(x))


def _run_block(block: LLaDABlock, x, cos, sin, attn_mask, cache_keys=None, cache_values=None,
               cache_positions=None):
    return block(x, cos, sin, attn_mask, cache_keys, cache_values, cache_positions)


# `_run_block` as a nested compile region: torch.compile traces and compiles the first layer's
# call and reuses it for every other layer (they differ only in their weights, which become the
# region's inputs); in eager mode a plain call. Marking it touches no global state and does not
# import dynamo.
_run_block_compiled_once = torch.compiler.nested_compile_region(_run_block)


def _layers_alike(blocks: nn.ModuleList) -> bool:
    """Whether the layers differ in their weights alone: the same submodule tree, parameter
    shapes and dtypes, and no hooks (a nested compile region reuses the first layer's trace
    without comparing them)."""
    def signature(block):
        return ([(name, type(m)) for name, m in block.named_modules()],
                [(name, p.shape, p.dtype) for name, p in block.named_parameters()])

    if any(m._forward_hooks or m._forward_pre_hooks for b in blocks for m in b.modules()):
        return False
    first = signature(blocks[0]) if len(blocks) else None
    return all(signature(b) == first for b in blocks)


class LLaDAModel(nn.Module):
    """Holds ``transformer`` = ModuleDict(wte, blocks, ln_f[, ff_out]) as in the official code."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.config = config
        n_embed = config.padded_vocab_size
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(n_embed, config.d_model),
            "blocks": nn.ModuleList([LLaDABlock(config, i) for i in range(config.n_layers)]),
            "ln_f": _build_norm(config),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, n_embed, bias=bool(config.include_bias))
        self.transformer = nn.ModuleDict(modules)


def init_weights(module: nn.Module, std: float) -> None:
    """transformers' `_init_weights` for the layers LLaDA and LLaDA2 share: linear and embedding
    weights ~ N(0, std), their biases 0; norm weights 1, biases 0 (the official reset_parameters,
    Gemma variant too). Other modules are left alone."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        hf_init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            hf_init.zeros_(module.bias)
    elif isinstance(module, (LLaDARMSNorm, LLaDALayerNorm)):
        if module.weight is not None:
            hf_init.ones_(module.weight)
        if module.bias is not None:
            hf_init.zeros_(module.bias)


class LLaDAModelLM(PreTrainedModel):
    """LLaDA masked-diffusion LM (bidirectional), loadable from official LLaDA checkpoints.

    ``forward(input_ids, attention_mask=None, position_ids=None)`` returns an output whose
    ``.logits`` is ``[B, L, embedding_size]``.
    """

    config_class = LLaDAConfig
    config: LLaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["LLaDABlock"]
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self._rope_theta = (float(config.rope_theta),)  # see _static_float
        self.post_init()

    # --- transformers plumbing --------------------------------------------------------------

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module, float(self.config.init_std))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Module:
        if self.config.weight_tying:
            return self.model.transformer.wte
        return self.model.transformer.ff_out

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The ``[embedding_size, d_model]`` matrix of the LM head (``wte`` when tied)."""
        t = self.model.transformer
        return t.wte.weight if self.config.weight_tying else t.ff_out.weight

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
        """Final hidden states after ``ln_f``: ``[B, L, d_model]``.

        attention_mask: ``[B, L]`` with 1 (or True) for tokens to attend to; None attends to all.
        position_ids: ``[B, L]`` or ``[1, L]``; None gives ``cumsum(attention_mask) - 1`` clamped
        at 0 (or ``0..L-1`` without a mask).
        compile_layers_once: under torch.compile, compile one layer and reuse it for all (a
            nested compile region); no effect in eager mode.
        kv_cache: (keys, values), each ``[n_layers, B, n_kv_heads, T, head_dim]``, for
            Fast-dLLM's DualCache (see `kv_cache_shape`). Without ``cache_positions`` the input is
            the whole sequence (``T`` tokens) and every layer's keys and values are stored in it
            (the hidden states are those of the plain forward). With them the input is the
            ``[B, len(cache_positions)]`` tokens at those positions of the sequence: their keys and
            values replace the stored ones there and they attend to all ``T`` stored ones, so
            the rest of the sequence is seen as it was when stored (an approximation once it
            changed). ``attention_mask`` is then the whole sequence's ``[B, T]``, and
            ``position_ids`` (default: from the mask or ``cache_positions``) the input tokens'.
        cache_positions: ``[Lq]`` int64 canvas positions of the input tokens (cached mode).
        """
        cfg = self.config
        t = self.model.transformer
        x = F.embedding(input_ids, t.wte.weight)
        if cfg.input_emb_norm:
            x = x * (cfg.d_model**0.5)
        if cache_positions is not None and kv_cache is None:
            raise ValueError("cache_positions without kv_cache: pass the (keys, values) cache "
                             "that a forward of the whole sequence filled")
        if kv_cache is not None:  # before the positions, which read the mask
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
        cos, sin = rotary_cos_sin(position_ids, cfg.d_model // cfg.n_heads, self._rope_theta[0])
        # One subgraph serves every layer only when they differ in their weights alone: dynamo
        # reuses the first layer's trace without comparing hooks (one on a later layer was
        # dropped, silently) or submodules (an adapter on one layer failed the trace). Checked
        # while tracing only: the eager forward ignores the flag anyway.
        if compile_layers_once and torch.compiler.is_compiling() and not self.layers_alike():
            compile_layers_once = False
        run_block = _run_block_compiled_once if compile_layers_once else _run_block
        if kv_cache is None:
            for block in t.blocks:
                x = run_block(block, x, cos, sin, attn_mask)
        else:
            keys, values = kv_cache
            for i, block in enumerate(t.blocks):
                x = run_block(block, x, cos, sin, attn_mask, keys[i], values[i], cache_positions)
        return t.ln_f(x)

    def layers_alike(self) -> bool:
        """Whether `compile_layers_once` can compile one layer for all: the layers differ in
        their weights alone (no hooks on them, no adapter on one layer); otherwise each layer is
        compiled as without it."""
        return _layers_alike(self.model.transformer.blocks)

    def kv_cache_shape(self, batch_size: int, seq_len: int) -> tuple[int, ...]:
        """Shape of each of the keys and values tensors of a `kv_cache` for ``[batch_size,
        seq_len]`` sequences."""
        cfg = self.config
        return (cfg.n_layers, batch_size, cfg.effective_n_kv_heads, seq_len,
                cfg.d_model // cfg.n_heads)

    def _check_kv_cache(self, keys, values, input_ids, attention_mask, cache_positions) -> None:
        # Shapes, dtypes and devices are static under torch.compile: these checks cost the
        # compiled step nothing. (Repeated cache_positions are not looked for: that needs their
        # values, a device sync per step.)
        batch, length = input_ids.shape
        seq_len = keys.shape[3] if keys.dim() == 5 else -1
        expected = self.kv_cache_shape(batch, length if cache_positions is None else seq_len)
        for name, cache in (("keys", keys), ("values", values)):
            if tuple(cache.shape) != expected:
                raise ValueError(
                    f"kv_cache {name} of shape {tuple(cache.shape)} for input_ids of shape "
                    f"{(batch, length)}: allocate it with model.kv_cache_shape(batch_size, "
                    f"seq_len) = {expected}")
            # An integer cache would truncate the keys and values it stores, silently.
            if not cache.is_floating_point() or cache.device != input_ids.device:
                raise ValueError(
                    f"kv_cache {name} of dtype {cache.dtype} on {cache.device} for input_ids on "
                    f"{input_ids.device}: allocate keys and values as floating-point tensors "
                    f"on the model's device (the dtype its layers compute in)")
        if keys.dtype != values.dtype:
            raise ValueError(f"kv_cache keys of dtype {keys.dtype} and values of dtype "
                             f"{values.dtype}: allocate both in one dtype")
        # One tensor given as both would store the values over the keys. Eager only: a traced
        # tensor has no address, and the compiled step's cache is the runner's own pair.
        if not torch.compiler.is_compiling() and keys.data_ptr() == values.data_ptr():
            raise ValueError("kv_cache keys and values share their memory: allocate two tensors "
                             "(the values would overwrite the keys)")
        if cache_positions is not None and cache_positions.shape != (length,):
            raise ValueError(
                f"cache_positions of shape {tuple(cache_positions.shape)} for {length} input "
                f"tokens: give one canvas position per input token")
        if cache_positions is not None and attention_mask is not None and \
                tuple(attention_mask.shape) != (batch, seq_len):
            raise ValueError(
                f"attention_mask of shape {tuple(attention_mask.shape)} in a cached forward of "
                f"{seq_len} stored positions: give the whole sequence's [B, T] = "
                f"{(batch, seq_len)} mask, the one the cache was filled with")

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., embedding_size]`` from final (normed) hidden states: one ``F.linear``."""
        t = self.model.transformer
        if self.config.weight_tying:
            logits = F.linear(hidden, t.wte.weight, None)
        else:
            logits = F.linear(hidden, t.ff_out.weight, t.ff_out.bias)
        if self.config.scale_logits:
            logits = logits * (1 / math.sqrt(self.config.d_model))
        return logits

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
        """Logits for every input position (non-causal). `compile_layers_once`, `kv_cache` and
        `cache_positions`: see `forward_hidden`.

        Extra keyword arguments of the official forward are accepted only when they ask for
        nothing this model does not do (``use_cache``/``output_*`` False or None, no
        ``past_key_values``/``inputs_embeds``/``labels``/``attention_bias``).
        """
        for name, value in kwargs.items():
            if value is not None and value is not False:
                raise TypeError(f"LLaDAModelLM.forward does not support {name}={value!r}")
        logits = self.lm_head(self.forward_hidden(input_ids, attention_mask, position_ids,
                                                  compile_layers_once, kv_cache, cache_positions))
        if return_dict is False:
            return (logits,)
        return CausalLMOutputWithPast(logits=logits)
