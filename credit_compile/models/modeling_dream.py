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
"""

from __future__ import annotations

import torch
from transformers import Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_dream import DreamConfig
from .modeling_llada import positions_from_mask

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
                position_ids: torch.LongTensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits ``[B, L, vocab]`` of every position (unshifted). ``attention_mask``: 2-D padding
        mask or a 4-D mask (boolean True = attend, or additive); ``position_ids`` default to the
        positions counted over real tokens."""
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            position_ids = positions_from_mask(attention_mask)
        if kwargs.get("use_cache"):
            raise ValueError("Dream decodes without transformers' autoregressive KV cache: "
                             "leave use_cache off")
        kwargs["use_cache"] = False
        # A mapping is taken by Qwen2Model as the prepared mask of each layer type.
        masks = {"full_attention": self._mask_for_attention(dream_attention_mask(attention_mask))}
        return super().forward(input_ids, attention_mask=masks, position_ids=position_ids, **kwargs)

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
