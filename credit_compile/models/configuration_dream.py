"""Dream configuration (model_type "Dream"), key-for-key compatible with the config.json of
Dream-org's Dream-v0-Base-7B / Dream-v0-Instruct-7B.

Dream is a Qwen2.5 decoder trained as a masked diffusion LM: bidirectional attention, and logits
shifted by one (the token at position i is read from position i-1's output, as in the
autoregressive model it was adapted from). Its config is Qwen2's with the mask token added, so
`DreamConfig` is transformers' in-tree `Qwen2Config` under model_type "Dream", with the official
`DreamConfig`'s defaults: `mask_token_id` 151666, `pad_token_id` 151643, `use_cache` False.
Once `credit_compile.models` is imported, `AutoConfig` / `AutoModel` load a Dream checkpoint
directory without `trust_remote_code` (its remote code does not build on transformers 5).

Variants the official SDPA forward does not compute are refused with a ValueError naming the key:
sliding-window attention (``use_sliding_window``; the official code warns and attends fully) and
RoPE scaling (``rope_scaling`` / ``rope_parameters`` of a type other than "default"; none of the
released checkpoints has one).
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2Config

__all__ = ["DreamConfig", "DREAM_MASK_TOKEN_ID", "DREAM_EOS_TOKEN_ID"]

#: `<|mask|>` of the Dream tokenizer (the official config's `mask_token_id`).
DREAM_MASK_TOKEN_ID = 151666
#: `<|endoftext|>` of the Qwen2.5 tokenizer: Dream's end of text, padding and begin of text.
DREAM_EOS_TOKEN_ID = 151643


class DreamConfig(Qwen2Config):
    """Configuration of a Dream diffusion LM: `Qwen2Config`'s fields (the official config.json's
    keys: hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
    intermediate_size, vocab_size, rope_theta, rms_norm_eps, max_position_embeddings,
    tie_word_embeddings, ...) plus ``mask_token_id``, which the decoder reads."""

    model_type = "Dream"

    use_cache: bool = False
    mask_token_id: int | None = DREAM_MASK_TOKEN_ID
    pad_token_id: int | None = DREAM_EOS_TOKEN_ID

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.validate_dream()

    def validate_dream(self) -> None:
        """Refuse what the official forward does not compute, naming the key."""
        if self.use_sliding_window:
            raise ValueError("Dream config use_sliding_window=True is not supported by "
                             "credit_compile's Dream: the official forward attends to the whole "
                             "sequence (set use_sliding_window=False)")
        rope = self.rope_parameters or {}
        if (rope.get("rope_type") or "default") != "default":
            raise ValueError(f"Dream config rope_scaling (rope_type={rope.get('rope_type')!r}) is "
                             f"not supported by credit_compile's Dream: only the default RoPE of "
                             f"the released checkpoints is built")
