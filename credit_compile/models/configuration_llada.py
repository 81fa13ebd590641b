"""LLaDA configuration, field-for-field compatible with GSAI-ML's `configuration_llada.py`.

Every key of a released LLaDA `config.json` (LLaDA-8B-Base / -Instruct, also the `auto_map`,
`architectures`, `precision`, `init_*` bookkeeping keys) is a field here with the same name and
meaning, so a downloaded checkpoint directory loads with `LLaDAModelLM.from_pretrained(path)` and,
after `credit_compile.models.register_auto_classes()`, with `AutoConfig` / `AutoModel` /
`AutoModelForMaskedLM` / `AutoModelForCausalLM` without `trust_remote_code`.

Defaults: the official `ModelConfig` defaults are OLMo/GPT-2 leftovers (vocab 50257, sequential
block, LayerNorm, no RoPE) that the official LLaDA forward cannot even run. Following the
transformers convention (the default config is the flagship model), the defaults here are the
values of LLaDA-8B-Instruct's `config.json`; a released config.json sets every key explicitly, so
loading checkpoints does not depend on them.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

__all__ = ["LLaDAConfig", "LLADA_MASK_TOKEN_ID"]

#: The `[MASK]` token of the LLaDA-8B tokenizer.
LLADA_MASK_TOKEN_ID = 126336


class LLaDAConfig(PretrainedConfig):
    r"""Configuration of a LLaDA masked-diffusion language model (bidirectional Llama-style encoder).

    Field names follow the official LLaDA / OLMo `ModelConfig`. The fields the model uses:

    - ``d_model``, ``n_heads``, ``n_kv_heads`` (None: = n_heads; < n_heads: grouped-query attention),
      ``n_layers``;
    - ``mlp_hidden_size`` (None: ``mlp_ratio * d_model``), ``activation_type`` ("silu", "gelu",
      "relu"; the official "swiglu" activation halves the width and cannot be combined with the
      llama block's ``up_proj``), ``block_type`` ("llama" only: the block LLaDA checkpoints use);
    - ``layer_norm_type`` ("rms", "gemma_rms", "default", "low_precision"), ``layer_norm_with_affine``,
      ``bias_for_layer_norm`` (None: follows ``include_bias``), ``rms_norm_eps``;
    - ``rope`` (must be True, as in the official MDM forward), ``rope_theta``, ``rope_full_precision``;
    - ``attention_layer_norm`` / ``attention_layer_norm_with_affine`` (QK norm; off for LLaDA);
    - ``include_bias``, ``include_qkv_bias``, ``input_emb_norm``, ``scale_logits``;
    - ``vocab_size``, ``embedding_size`` (rows of ``wte`` and columns of the logits; None: vocab_size),
      ``weight_tying`` (True: the LM head is ``wte``; there is then no ``transformer.ff_out``);
    - ``mask_token_id``, ``eos_token_id``, ``pad_token_id``; ``init_std`` (random init).

    Kept for compatibility, not used by the model: ``alibi`` / ``alibi_bias_max`` (must stay off),
    ``flash_attention`` (attention always goes through ``F.scaled_dot_product_attention``),
    ``block_group_size`` (must be 1: other values change the state-dict names),
    ``multi_query_attention``, the dropout rates (this is an inference model: no dropout),
    ``init_device``, ``init_fn``, ``init_cutoff_factor``, ``precision``, ``use_cache``.
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    # Generic names some tools look for (transformers resolves them on get and set).
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_sequence_length",
    }

    # Architecture.
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: n_heads (LLaDA-8B: 32 = n_heads)
    n_layers: int = 32
    mlp_ratio: int | float = 4
    mlp_hidden_size: int | None = 12288
    activation_type: str = "silu"
    block_type: str = "llama"
    block_group_size: int = 1
    alibi: bool = False
    alibi_bias_max: float | int = 8.0
    rope: bool = True
    rope_full_precision: bool = True
    rope_theta: float | int = 500000.0
    flash_attention: bool = False
    multi_query_attention: bool | None = None
    attention_layer_norm: bool = False
    attention_layer_norm_with_affine: bool = True
    input_emb_norm: bool = False
    layer_norm_type: str = "rms"
    layer_norm_with_affine: bool = True
    rms_norm_eps: float | int = 1e-05
    bias_for_layer_norm: bool | None = False
    include_bias: bool = False
    include_qkv_bias: bool | None = False
    scale_logits: bool = False
    max_sequence_length: int = 4096

    # Dropout (training only; ignored by this inference implementation).
    attention_dropout: float | int = 0.0
    residual_dropout: float | int = 0.0
    embedding_dropout: float | int = 0.0

    # Vocabulary and special tokens.
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    weight_tying: bool = False
    mask_token_id: int | None = LLADA_MASK_TOKEN_ID
    eos_token_id: int | list[int] | None = 126081
    pad_token_id: int | None = 126081

    # Initialisation / training bookkeeping.
    init_device: str | None = None
    init_fn: str = "mitchell"
    init_std: float | int = 0.02
    init_cutoff_factor: float | int | None = None
    precision: str | None = None
    use_cache: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        # `tie_word_embeddings` is transformers' name for `weight_tying`; accept it from configs
        # written by other tools, but keep one source of truth.
        tie = kwargs.pop("tie_word_embeddings", None)
        if tie is not None:
            self.weight_tying = bool(tie)
        if "expert_intermediate_size" in kwargs or "moe_layer_freq" in kwargs:
            # LLaDA-MoE's released config.json says model_type "llada": its keys would otherwise
            # build a dense LLaDA of other shapes, whose weights all fail to load.
            raise ValueError("this is a LLaDA-MoE config (expert_intermediate_size, moe_layer_freq), "
                             "not a LLaDA one: load it with credit_compile.models.LLaDAMoEModelLM."
                             "from_pretrained(path), or set \"model_type\": \"lladamoe\" in its "
                             "config.json for the Auto classes")
        super().__post_init__(**kwargs)
        self.validate_llada()

    # --- derived values -------------------------------------------------------------------

    @property
    def effective_n_kv_heads(self) -> int:
        """Key/value heads, resolved exactly as the official `ModelConfig.effective_n_kv_heads`."""
        if self.n_kv_heads is None:
            return 1 if self.multi_query_attention is True else self.n_heads
        if self.multi_query_attention is None:
            return self.n_kv_heads
        expected = 1 if self.multi_query_attention else self.n_heads
        if self.n_kv_heads != expected:
            raise ValueError("You can't set `multi_query_attention` and `n_kv_heads` at the same time.")
        return expected

    @property
    def num_key_value_heads(self) -> int:
        return self.effective_n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def intermediate_size(self) -> int:
        """Width of the SwiGLU-style MLP (``ff_proj`` / ``up_proj`` outputs)."""
        if self.mlp_hidden_size is not None:
            return int(self.mlp_hidden_size)
        return int(self.mlp_ratio * self.d_model)

    @property
    def padded_vocab_size(self) -> int:
        """Rows of ``wte`` and columns of the logits (``embedding_size or vocab_size``)."""
        return int(self.embedding_size or self.vocab_size)

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.weight_tying)

    @tie_word_embeddings.setter
    def tie_word_embeddings(self, value: bool) -> None:
        self.weight_tying = bool(value)

    # --- checks ---------------------------------------------------------------------------

    def validate_llada(self) -> None:
        """Reject settings this implementation does not reproduce (instead of computing wrongly)."""
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.effective_n_kv_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.effective_n_kv_heads})"
            )
        if (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError("the head dimension must be even for rotary embeddings")
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise ValueError("embedding size should be at least as big as vocab size")
        if str(self.block_type) != "llama":
            raise ValueError(
                f"block_type={self.block_type!r} is not supported (LLaDA checkpoints use 'llama')")
        if str(self.activation_type) not in ("silu", "gelu", "relu"):
            raise ValueError(
                f"activation_type={self.activation_type!r} is not supported with the llama block "
                "(use 'silu', 'gelu' or 'relu')"
            )
        if str(self.layer_norm_type) not in ("rms", "gemma_rms", "default", "low_precision"):
            raise ValueError(f"unknown layer_norm_type {self.layer_norm_type!r}")
        if not self.rope or self.alibi:
            raise ValueError("LLaDA's masked-diffusion forward requires rope=True and alibi=False")
        if self.block_group_size != 1:
            raise ValueError("block_group_size != 1 is not supported (it renames the state-dict keys)")
