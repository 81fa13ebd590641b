"""Dream (Dream-v0-Base-7B / -Instruct-7B) on transformers' in-tree Qwen2, with bidirectional
attention.

Dream's network is Qwen2.5's, parameter for parameter (``model.embed_tokens``,
``model.layers.{i}.self_attn.{q,k,v,o}_proj`` with biases on q/k/v,
``model.layers.{i}.mlp.{gate,up,down}_proj``, the two RMSNorms per layer, ``model.norm``,
``lm_head``), so `DreamModel` is `Qwen2ForCausalLM` with two changes and loads the official
state dict unchanged:

- attention is bidirectional: every layer's ``is_causal`` is off, and the mask handed to
  Qwen2's layers is built here (none without padding, so SDPA attends to the whole sequence);
- a 2-D ``attention_mask`` (1 = real token, left padding) masks the padding keys, and positions
  default to ``cumsum(mask) - 1``, as the official `diffusion_generate` passes them (its
  ``tok_idx``). Real tokens get the official logits; a padding query attends to the real tokens
  and itself (the official mask leaves it no key at all), so its own, never read, output stays
  finite.

transformers' `generate()` (autoregressive, inherited from Qwen2) is refused, naming
`credit_compile.optimize`.

The logits are the official forward's, unshifted: the token at position i is read from position
i-1's row (Dream's generation code shifts them). The decoders read Dream through
`credit_compile.adapters`, whose `ModelInfo.shifted_logits` applies that shift once.

With ``kv_cache`` the forward runs Qwen2's layers itself (the same modules and weights) to read
and write Fast-dLLM's approximate KV cache, laid out as LLaDA's (`kv_cache_shape`,
`LLaDAModelLM.forward_hidden`); without it, Qwen2's own forward runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from .configuration_dream import DreamConfig
from .modeling_llada import LLaDAModelLM, cache_and_repeat, positions_from_mask

__all__ = ["DreamModel", "dream_attention_mask"]


def dream_attention_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean ``[B, 1, L, L]`` (True: attend) from a 2-D padding mask: every query sees the real
    keys, and itself. None (no padding) stays None; a 4-D mask is taken as given."""
    if attention_mask is None or attention_mask.dim() == 4:
        return attention_mask
    if attention_mask.dim() != 2:
        raise ValueError(f"Dream's attention_mask must be [batch, length] (1 = real token) or a "
                         f"4-D [batch, 1, length, length] mask, got shape "
                         f"{tuple(attention_mask.shape)}")
    keys = attention_mask.bool()[:, None, None, :]
    length = attention_mask.shape[-1]
    itself = torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    return keys | itself


class DreamModel(Qwen2ForCausalLM):
    """A Dream checkpoint on transformers' Qwen2 with bidirectional attention (module docstring).

        model = DreamModel.from_pretrained("Dream-org/Dream-v0-Instruct-7B", dtype=torch.bfloat16)
        logits = model(input_ids, attention_mask=mask).logits   # unshifted, as the official forward
    """

    config_class = DreamConfig
    config: DreamConfig

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        for layer in self.model.layers:
            layer.self_attn.is_causal = False

    def forward(self, input_ids: torch.LongTensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None,
                kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache_positions: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits ``[B, L, vocab]`` of every position (unshifted). ``attention_mask``: 2-D padding
        mask or a 4-D mask (boolean True = attend, or additive); ``position_ids`` default to the
        positions counted over real tokens. ``kv_cache`` and ``cache_positions``: Fast-dLLM's
        approximate cache, as `LLaDAModelLM.forward_hidden` takes it (`forward_cached`)."""
        if kv_cache is not None or cache_positions is not None:
            if kwargs:
                raise TypeError(f"Dream's cached forward takes no {sorted(kwargs)}")
            return CausalLMOutputWithPast(logits=self.forward_cached(
                input_ids, attention_mask, position_ids, kv_cache, cache_positions))
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            position_ids = positions_from_mask(attention_mask)
        if kwargs.get("use_cache"):
            raise ValueError("Dream decodes without transformers' autoregressive KV cache: "
                             "leave use_cache off")
        kwargs["use_cache"] = False
        # A mapping is taken by Qwen2Model as the prepared mask of each layer type.
        masks = {"full_attention": self._mask_for_attention(dream_attention_mask(attention_mask))}
        return super().forward(input_ids, attention_mask=masks, position_ids=position_ids, **kwargs)

    def forward_cached(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       position_ids: torch.Tensor | None,
                       kv_cache: tuple[torch.Tensor, torch.Tensor] | None,
                       cache_positions: torch.Tensor | None) -> torch.Tensor:
        """Logits with Fast-dLLM's approximate KV cache: keys and values ``[num_hidden_layers, B,
        num_key_value_heads, T, head_dim]`` (`kv_cache_shape`, after RoPE). Without
        ``cache_positions`` the input is the whole sequence, whose keys and values are stored
        (the logits are the plain forward's); with them the input is the ``[B, Lq]`` tokens at
        those canvas positions, whose keys and values replace the stored ones there, attending
        to all ``T`` stored ones. ``attention_mask`` is the whole sequence's ``[B, T]`` padding
        mask, positions default to those counted over its real tokens."""
        if kv_cache is None:
            raise ValueError("cache_positions without kv_cache: pass the (keys, values) cache "
                             "that a forward of the whole sequence filled")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"Dream's cached forward takes a 2-D [batch, length] padding mask, "
                             f"got shape {tuple(attention_mask.shape)}")
        self._check_kv_cache(*kv_cache, input_ids, attention_mask, cache_positions)
        keys, values = kv_cache
        length = keys.shape[3]
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask) if attention_mask is not None \
                else torch.arange(length, device=input_ids.device).unsqueeze(0)
            if cache_positions is not None:
                position_ids = position_ids.index_select(1, cache_positions)
        mask = None
        if attention_mask is not None:  # real keys, and each query's own position
            queries = torch.arange(length, device=input_ids.device) if cache_positions is None \
                else cache_positions
            itself = queries[:, None] == torch.arange(length, device=input_ids.device)
            mask = attention_mask.bool()[:, None, None, :] | itself  # SDPA's boolean mask
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(x, position_ids)
        for i, layer in enumerate(self.model.layers):
            x = x + self._cached_attention(layer.self_attn, layer.input_layernorm(x), cos, sin,
                                           mask, keys[i], values[i], cache_positions)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.model.norm(x))

    def _cached_attention(self, attention, x, cos, sin, mask, cache_keys, cache_values,
                          cache_positions) -> torch.Tensor:
        """Qwen2's attention (its projections, RoPE and scale, bidirectional), storing the keys
        and values of ``x``'s tokens in the cache and, given ``cache_positions``, attending to
        all the stored ones."""
        B, L, _ = x.shape
        head_dim = attention.head_dim
        q = attention.q_proj(x).view(B, L, -1, head_dim).transpose(1, 2)
        k = attention.k_proj(x).view(B, L, -1, head_dim).transpose(1, 2)
        v = attention.v_proj(x).view(B, L, -1, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = cache_and_repeat(q, k, v, cache_keys, cache_values, cache_positions)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attention.scaling)
        return attention.o_proj(out.transpose(1, 2).reshape(B, L, -1))

    def kv_cache_shape(self, batch_size: int, seq_len: int) -> tuple[int, ...]:
        """Shape of each of the keys and values tensors of a `kv_cache` for ``[batch_size,
        seq_len]`` sequences."""
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, seq_len, head_dim)

    # LLaDA's checks of a cache: the same layout and meaning (shapes from `kv_cache_shape`).
    _check_kv_cache = LLaDAModelLM._check_kv_cache

    def _mask_for_attention(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The mask as the configured attention reads it: boolean for SDPA (the default),
        additive for "eager"; other implementations take no 4-D mask."""
        if mask is None or mask.dtype != torch.bool:
            return mask
        implementation = self.config._attn_implementation
        if implementation == "eager":
            dtype = self.model.embed_tokens.weight.dtype
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min)
        if implementation not in (None, "sdpa"):
            raise ValueError(f"Dream's padding mask needs attn_implementation 'sdpa' (the default) "
                             f"or 'eager', not {implementation!r}: load the model with "
                             f"attn_implementation='sdpa', or pass no attention_mask")
        return mask

    def generate(self, *args, **kwargs):
        """Refused: transformers' `generate()` decodes left to right, one token at a time, which
        a diffusion LM is not trained for."""
        raise ValueError("DreamModel.generate() is transformers' autoregressive decoding, not "
                         "Dream's: decode with credit_compile.optimize(model).generate(input_ids) "
                         "(or credit_compile.generate_reference for the eager decoder)")
