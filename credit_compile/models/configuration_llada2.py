"""LLaDA2.x configuration (model_type "llada2_moe"), key-for-key compatible with the config.json
of inclusionAI's LLaDA2.0 / LLaDA2.1 checkpoints (Bailing-MoE-v2 block-diffusion models).

Every key of a released LLaDA2 `config.json` is a field here with the same name and meaning, so a
downloaded checkpoint directory loads with `LLaDA2ModelLM.from_pretrained(path)` and, once
`credit_compile.models` is imported, with `AutoConfig` / `AutoModel` / `AutoModelForCausalLM`
without `trust_remote_code` (the checkpoints' remote code does not import on transformers 5).

Defaults are LLaDA2.0-mini's values (16B total, about 1.4B active parameters), following the
transformers convention that the default config is the flagship model; a released config.json
sets every architecture key, so loading checkpoints does not depend on them. The mask token is
not in the released config.json (the official `generate()` takes it as `mask_id`, default
156895): it is a field here, read by the decoder, with the tokenizer's value as its default.

Variants the official code describes but this implementation does not build are refused with a
ValueError naming the key (rather than computing something else): a multi-token-prediction head
(``num_nextn_predict_layers``), sliding-window attention (``use_sliding_window``), RoPE scaling
(``rope_scaling``), another router score function (``score_function``), unnormalised top-k
weights (``norm_topk_prob``), a normalised LM head (``norm_head``), a router dtype other than
float32 (``router_dtype``).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

__all__ = ["LLaDA2Config", "LLADA2_MASK_TOKEN_ID", "LLADA2_EOS_TOKEN_ID", "LLADA2_BLOCK_LENGTH"]

#: `<|mask|>` of the LLaDA2 tokenizer (the official `generate()`'s default `mask_id`).
LLADA2_MASK_TOKEN_ID = 156895
#: `<|endoftext|>` of the LLaDA2 tokenizer (the official `generate()`'s default `eos_id`, and the
#: checkpoints' `pad_token_id`).
LLADA2_EOS_TOKEN_ID = 156892
#: The block size of the official `generate()` (its default `block_length`).
LLADA2_BLOCK_LENGTH = 32


class LLaDA2Config(PretrainedConfig):
    r"""Configuration of a LLaDA2.x block-diffusion MoE language model (Bailing-MoE-v2 decoder).

    Field names follow the official `LLaDA2MoeConfig`. The fields the model uses:

    - ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``
      (0 or None: = num_attention_heads), ``head_dim`` (None: hidden_size // num_attention_heads);
    - attention: ``use_qkv_bias`` (bias of the fused ``query_key_value``), ``use_bias`` (bias of
      the output projection ``dense``), ``use_qk_norm`` (per-head RMSNorm of queries and keys),
      ``partial_rotary_factor`` (RoPE on the first ``int(head_dim * factor)`` dimensions of each
      head), ``rope_theta``, ``max_position_embeddings``;
    - MLPs: ``hidden_act``, ``intermediate_size`` (the dense layers' width),
      ``first_k_dense_replace`` (layers below it are dense, the others MoE; all dense when
      ``num_experts`` is None);
    - MoE: ``num_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``,
      ``num_shared_experts`` (None: no shared expert; otherwise one MLP of width
      ``moe_intermediate_size * num_shared_experts``), grouped routing ``n_group`` /
      ``topk_group``, ``routed_scaling_factor``; sigmoid scores, a per-expert routing bias
      (the ``expert_bias`` buffer), top-k weights normalised to sum to 1 (when top-k > 1), then
      scaled;
    - ``rms_norm_eps``, ``vocab_size``, ``tie_word_embeddings``;
    - ``mask_token_id``, ``eos_token_id``, ``pad_token_id``; ``block_length``, the block size the
      checkpoint was trained with (not in the released config.json: 32), which the decoder's
      blocks follow; ``initializer_range`` (random init).

    Kept for compatibility, not used by the model: the dropout rates (an inference model),
    ``sliding_window`` / ``max_window_layers`` (only read with ``use_sliding_window``, refused),
    ``output_router_logits``, ``moe_router_enable_expert_bias`` (the bias buffer exists either
    way; zero means no bias), ``use_cache``.
    """

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    # Architecture (LLaDA2.0-mini).
    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int | None = 5120
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 4
    head_dim: int | None = 128
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_qk_norm: bool = True
    use_bias: bool = False
    rms_norm_eps: float | int = 1e-06
    norm_head: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    rope_theta: float | int = 600000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float | int = 0.5

    # Mixture of experts.
    num_experts: int | None = 256
    num_shared_experts: int | None = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float | int = 2.5
    moe_intermediate_size: int | None = 512
    first_k_dense_replace: int = 1
    score_function: str = "sigmoid"
    norm_topk_prob: bool = True
    moe_router_enable_expert_bias: bool = True
    router_dtype: str | None = "fp32"
    output_router_logits: bool = False
    num_nextn_predict_layers: int | None = 0

    # Sliding windows (refused when switched on) and dropout (ignored: inference only).
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int | None = 28
    embedding_dropout: float | int = 0.0
    attention_dropout: float | int = 0.0
    output_dropout: float | int = 0.0

    # Vocabulary and special tokens.
    mask_token_id: int | None = LLADA2_MASK_TOKEN_ID
    #: The block size the checkpoint was trained with, which the decode's blocks (and its
    #: block-causal attention) follow; not in the released config.json, whose models use 32.
    block_length: int = LLADA2_BLOCK_LENGTH
    eos_token_id: int | list[int] | None = LLADA2_EOS_TOKEN_ID
    pad_token_id: int | None = LLADA2_EOS_TOKEN_ID

    initializer_range: float | int = 0.02
    use_cache: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if not self.num_key_value_heads:  # the LLaDA2.1 config maps 0 to the query heads
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate_llada2()

    # --- derived values -------------------------------------------------------------------

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that RoPE rotates (the first ones): ``int(head_dim * factor)``."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` is a mixture of experts (else a dense MLP)."""
        return self.num_experts is not None and layer_idx >= self.first_k_dense_replace

    # --- checks ---------------------------------------------------------------------------

    def validate_llada2(self) -> None:
        """Reject variants this implementation does not reproduce, naming the key."""
        refused = [
            ("num_nextn_predict_layers", bool(self.num_nextn_predict_layers),
             "a multi-token-prediction (MTP) head is not built"),
            ("use_sliding_window", bool(self.use_sliding_window),
             "sliding-window attention is not built"),
            ("rope_scaling", self.rope_scaling is not None and
             (self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) or "default") != "default",
             "only the default RoPE is built"),
            ("score_function", str(self.score_function) != "sigmoid",
             "only the sigmoid router of LLaDA2 is built"),
            ("norm_topk_prob", not self.norm_topk_prob,
             "the official code always normalises the top-k weights"),
            ("norm_head", bool(self.norm_head), "a normalised LM head is not built"),
            ("router_dtype", self.router_dtype not in (None, "fp32", "float32"),
             "the official router computes in float32"),
        ]
        for key, bad, why in refused:
            if bad:
                raise ValueError(f"LLaDA2 config {key}={getattr(self, key)!r} is not supported by "
                                 f"credit_compile's LLaDA2: {why}")
        if not (isinstance(self.block_length, int) and not isinstance(self.block_length, bool)
                and self.block_length > 0):
            raise ValueError(f"LLaDA2 config block_length={self.block_length!r}: the trained block "
                             f"size is a positive number of tokens ({LLADA2_BLOCK_LENGTH} for the "
                             f"released checkpoints)")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"LLaDA2 config hidden_act={self.hidden_act!r} is not an activation "
                             f"transformers knows")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple "
                             f"of num_key_value_heads ({self.num_key_value_heads})")
        if self.rotary_dim % 2 != 0 or not 0 <= self.rotary_dim <= self.head_dim:
            raise ValueError(f"partial_rotary_factor={self.partial_rotary_factor} gives "
                             f"{self.rotary_dim} rotary dimensions of head_dim {self.head_dim}: "
                             f"it must be an even number, at most head_dim")
        if self.first_k_dense_replace > 0 or self.num_experts is None:
            if not self.intermediate_size:
                raise ValueError("intermediate_size must be set: the config has dense layers "
                                 "(first_k_dense_replace > 0 or num_experts None)")
        if self.num_experts is not None and self.first_k_dense_replace < self.num_hidden_layers:
            self._validate_moe()

    def _validate_moe(self) -> None:
        if not self.moe_intermediate_size:
            raise ValueError("moe_intermediate_size must be set for the MoE layers")
        if self.n_group < 1 or self.num_experts % self.n_group != 0:
            raise ValueError(f"n_group ({self.n_group}) must divide num_experts ({self.num_experts})")
        if self.num_experts // self.n_group < 2:
            raise ValueError(f"n_group ({self.n_group}) leaves fewer than 2 experts per group: a "
                             f"group's score is the sum of its best two experts' scores")
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"topk_group ({self.topk_group}) must be between 1 and n_group "
                             f"({self.n_group})")
        reachable = self.topk_group * (self.num_experts // self.n_group)
        if not 1 <= self.num_experts_per_tok <= reachable:
            raise ValueError(f"num_experts_per_tok ({self.num_experts_per_tok}) must be between 1 "
                             f"and the {reachable} experts of the topk_group chosen groups")
