"""LLaDA-MoE configuration (model_type "lladamoe"), key-for-key compatible with the config.json of
inclusionAI's LLaDA-MoE-7B-A1B-Base / -Instruct (an OLMoE-style mixture of experts with
bidirectional attention).

Every key of the official `LLaDAMoEConfig` is a field here with the same name and meaning, so a
checkpoint directory loads with `LLaDAMoEModelLM.from_pretrained(path)` and, once
`credit_compile.models` is imported and its config.json says "model_type": "lladamoe", with
`AutoConfig` / `AutoModel` / `AutoModelForMaskedLM` without `trust_remote_code` (the official
remote code does not build on transformers 5).

Defaults are LLaDA-MoE-7B-A1B's values (7B total, about 1.4B active parameters), following the
transformers convention that the default config is the flagship model; a released config.json
sets every architecture key. The mask token is not in the released config.json (its samplers take
`mask_id=156895`): it is a field here, read by the decoder, with the tokenizer's value as default.

Keys the official forward does not read are kept and ignored as it ignores them:
``norm_topk_prob`` and ``moe_router_score_function`` (its router always takes a softmax and never
renormalises the top-k weights), ``routed_scaling_factor``, ``router_num_group`` /
``router_topk_group``, ``dense_intermediate_size`` when no layer is dense, ``router_aux_loss_coef``,
``output_router_logits``, ``attention_dropout`` (inference), ``use_cache``. A variant the official
code builds and this implementation does not is refused with a ValueError naming the key: RoPE
scaling (``rope_scaling``).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

__all__ = ["LLaDAMoEConfig", "LLADAMOE_MASK_TOKEN_ID", "LLADAMOE_EOS_TOKEN_ID"]

#: `<|mask|>` of the LLaDA-MoE tokenizer (its samplers' `mask_id`).
LLADAMOE_MASK_TOKEN_ID = 156895
#: `<|endoftext|>` of the LLaDA-MoE tokenizer (its samplers' `eos_id`).
LLADAMOE_EOS_TOKEN_ID = 156892
_LAYERS = 16


class LLaDAMoEConfig(PretrainedConfig):
    r"""Configuration of a LLaDA-MoE masked-diffusion language model.

    Field names follow the official `LLaDAMoEConfig`. The fields the model uses:

    - ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``
      (None: = num_attention_heads); a head is ``hidden_size // num_attention_heads`` wide;
    - attention: ``attention_bias`` (biases of the four projections), ``qk_layernorm`` (RMSNorm of
      each head's queries and keys, weights of ``head_dim``), ``clip_qkv`` (queries, keys and
      values clamped to +-clip_qkv), ``partial_rotary_factor`` (RoPE on the first
      ``int(head_dim * factor)`` dimensions of each head), ``rope_theta``,
      ``max_position_embeddings``;
    - MLPs: ``moe_layer_freq`` (one entry per layer: 0 a dense MLP of ``dense_intermediate_size``,
      otherwise a mixture of experts), ``hidden_act``;
    - MoE: ``num_experts`` experts of ``expert_intermediate_size``, ``num_experts_per_tok``
      routed per token by a softmax router (``moe_router_enable_expert_bias``: a per-expert
      ``expert_bias`` buffer added to the probabilities before the top-k, and kept in the
      weights, as the official block does); ``shared_expert_intermediate_size`` (None: no shared
      expert) for an MLP every token of a MoE layer goes through;
    - ``rms_norm_eps``, ``vocab_size``, ``tie_word_embeddings``;
    - ``mask_token_id``, ``eos_token_id``, ``pad_token_id``; ``initializer_range`` (random init).
    """

    model_type = "lladamoe"
    keys_to_ignore_at_inference = ["past_key_values"]

    # Architecture (LLaDA-MoE-7B-A1B).
    vocab_size: int = 157184
    hidden_size: int = 2048
    dense_intermediate_size: int | None = 8192
    expert_intermediate_size: int = 1024
    shared_expert_intermediate_size: int | None = None
    num_hidden_layers: int = _LAYERS
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 16
    hidden_act: str = "silu"
    max_position_embeddings: int = 8192
    rms_norm_eps: float | int = 1e-05
    tie_word_embeddings: bool = False
    rope_theta: float | int = 50000.0
    partial_rotary_factor: float | int = 1.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    attention_dropout: float | int = 0.0
    clip_qkv: float | int | None = None
    qk_layernorm: bool | None = True

    # Mixture of experts.
    num_experts: int = 64
    num_experts_per_tok: int = 8
    moe_layer_freq: list[int] | None = None  # None: every layer a MoE
    moe_router_enable_expert_bias: bool | None = False
    moe_router_score_function: str | None = "softmax"
    norm_topk_prob: bool | None = False
    routed_scaling_factor: float | int = 1
    router_num_group: int | None = None
    router_topk_group: int | None = None
    router_aux_loss_coef: float | int = 0.01
    output_router_logits: bool = False

    # Vocabulary and special tokens.
    mask_token_id: int | None = LLADAMOE_MASK_TOKEN_ID
    eos_token_id: int | list[int] | None = LLADAMOE_EOS_TOKEN_ID
    pad_token_id: int | None = LLADAMOE_EOS_TOKEN_ID
    bos_token_id: int | None = None

    initializer_range: float | int = 0.02
    use_cache: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.moe_layer_freq is None:
            self.moe_layer_freq = [1] * self.num_hidden_layers
        self.validate_lladamoe()

    # --- derived values -------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        """The width of a head: ``hidden_size // num_attention_heads`` (the official code's)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that RoPE rotates (the first ones): ``int(head_dim * factor)``."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` is a mixture of experts (else a dense MLP)."""
        return self.moe_layer_freq[layer_idx] != 0

    # --- checks ---------------------------------------------------------------------------

    def validate_lladamoe(self) -> None:
        """Reject what this implementation does not reproduce, naming the key."""
        scaling = self.rope_scaling
        if scaling is not None and (scaling.get("rope_type", scaling.get("type")) or "default") != "default":
            raise ValueError(f"LLaDA-MoE config rope_scaling={scaling!r} is not supported by "
                             f"credit_compile's LLaDA-MoE: only the default RoPE is built")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"LLaDA-MoE config hidden_act={self.hidden_act!r} is not an activation "
                             f"transformers knows")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple "
                             f"of num_key_value_heads ({self.num_key_value_heads})")
        if self.rotary_dim % 2 != 0 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"partial_rotary_factor={self.partial_rotary_factor} gives "
                             f"{self.rotary_dim} rotary dimensions of head_dim {self.head_dim}: "
                             f"it must be a positive even number, at most head_dim")
        if len(self.moe_layer_freq) != self.num_hidden_layers:
            raise ValueError(f"moe_layer_freq has {len(self.moe_layer_freq)} entries for "
                             f"num_hidden_layers={self.num_hidden_layers}: give one per layer "
                             f"(0: dense MLP, 1: mixture of experts)")
        if 0 in self.moe_layer_freq and not self.dense_intermediate_size:
            raise ValueError("dense_intermediate_size must be set: moe_layer_freq has dense layers (0)")
        if any(self.moe_layer_freq):
            if not self.expert_intermediate_size or self.expert_intermediate_size < 1:
                raise ValueError("expert_intermediate_size must be set for the MoE layers")
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(f"num_experts_per_tok ({self.num_experts_per_tok}) must be between 1 "
                                 f"and num_experts ({self.num_experts})")
