"""LLaDA configs shared by the model tests: the official config dict and checkpoint keys."""

from __future__ import annotations

PAD, MASK = 125, 126


def expected_keys(n_layers: int, weight_tying: bool) -> set[str]:
    keys = {"model.transformer.wte.weight", "model.transformer.ln_f.weight"}
    if not weight_tying:
        keys.add("model.transformer.ff_out.weight")
    for i in range(n_layers):
        for name in ("attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj",
                     "up_proj", "ff_out"):
            keys.add(f"model.transformer.blocks.{i}.{name}.weight")
    return keys


def official_config_dict(**over):
    """A LLaDA-8B-Instruct config.json, key for key, with the sizes shrunk."""
    d = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": 32, "embedding_dropout": 0.0, "embedding_size": 128, "eos_token_id": PAD,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
        "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
        "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "mask_token_id": MASK, "max_sequence_length": 4096, "mlp_hidden_size": 48, "mlp_ratio": 4,
        "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4,
        "n_layers": 2, "pad_token_id": PAD, "precision": "amp_bf16", "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
        "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
        "vocab_size": 128, "weight_tying": False,
    }
    d.update(over)
    return d
