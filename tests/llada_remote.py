"""A stand-in for the official LLaDA remote code (GSAI-ML's `modeling_llada.py`, as loaded with
`trust_remote_code=True`; Fast-dLLM vendors the same file), written for these tests.

It reproduces what matters to credit_compile, as that code behaves on transformers 5:
- the class names `LLaDAModelLM` / `LLaDAConfig` (model_type "llada") and the module tree
  `model.transformer.{wte, emb_drop, blocks.{i}.{attn_norm, q_proj, k_proj, v_proj, attn_out,
  ff_norm, ff_proj, up_proj, ff_out, act, dropout, rotary_emb}, ln_f, ff_out}`;
- `LLaDAModelLM(config, model=None, init_params=False)`;
- a forward taking `inputs_embeds`, `attention_mask`, `attention_bias`, `past_key_values`,
  `labels`, `use_cache`, `output_attentions`, `output_hidden_states`, `return_dict` and
  Fast-dLLM's `replace_position`, returning an output with `.logits`;
- `use_cache=None` reads `config.use_cache`, which transformers 5 drops from the config (an
  AttributeError unless the caller passes it), and `return_dict=None` reads
  `config.use_return_dict`, which logs a deprecation through `logger.warning_once`;
- the official numerics: RMSNorm in float32, RoPE over positions 0..L-1 in float32 (the
  rotate_half layout), SDPA without a mask (the official forward drops the attention mask,
  ML-GSAI/LLaDA issue 90), a gated SiLU MLP.

tests/fixtures/llada_remote_tiny.* holds weights and logits recorded from the official code
itself: `test_official_remote.py` checks this stand-in against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

logger = logging.get_logger(__name__)


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, use_cache: bool = False, **kwargs):
        # The official defaults (ModelConfig) are OLMo leftovers; a config.json sets every key.
        for name, value in dict(d_model=4096, n_heads=32, n_kv_heads=None, n_layers=32,
                                mlp_hidden_size=None, mlp_ratio=4, rms_norm_eps=1e-5,
                                rope_theta=10000.0, vocab_size=50257, embedding_size=None,
                                weight_tying=False, block_type="llama", block_group_size=1,
                                layer_norm_type="rms", activation_type="silu",
                                include_bias=False, include_qkv_bias=False).items():
            kwargs.setdefault(name, value)
        super().__init__(**kwargs)  # transformers 5 keeps no `use_cache` here

    @property
    def use_return_dict(self):
        logger.warning_once("`use_return_dict` is deprecated! Use `return_dict` instead!")
        return self.return_dict

    @property
    def effective_n_kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class _RotaryEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dim = config.d_model // config.n_heads
        self.theta = config.rope_theta

    @staticmethod
    def _rotate_half(x):
        B, nh, T, hs = x.size()
        x1, x2 = x.view(B, nh, T, 2, hs // 2).unbind(dim=-2)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, q, k):
        q_, k_ = q.float(), k.float()
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float,
                                                      device=q.device) / self.dim))
        freqs = torch.outer(torch.arange(k.shape[-2], dtype=torch.float, device=q.device),
                            inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)[None, None]
        sin, cos = angles.sin(), angles.cos()
        q_ = q_ * cos + self._rotate_half(q_) * sin
        k_ = k_ * cos + self._rotate_half(k_) * sin
        return q_.type_as(q), k_.type_as(k)


class _LlamaBlock(nn.Module):
    def __init__(self, layer_id: int, config):
        super().__init__()
        d, hidden = config.d_model, config.mlp_hidden_size or config.mlp_ratio * config.d_model
        kv = config.effective_n_kv_heads * (d // config.n_heads)
        self.config = config
        self.dropout = nn.Dropout(0.0)
        self.act = nn.SiLU()
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_out = nn.Linear(hidden, d, bias=False)
        self.rotary_emb = _RotaryEmbedding(config)
        self.attn_norm = _RMSNorm(d, config.rms_norm_eps)
        self.ff_norm = _RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.ff_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)

    def forward(self, x, attention_bias=None, layer_past=None, use_cache=False,
                replace_position=None):
        if layer_past is not None or replace_position is not None:
            raise NotImplementedError("the stand-in has no KV cache")
        cfg, (B, T, C) = self.config, x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, cfg.n_heads, -1).transpose(1, 2)
        k = self.k_proj(h).view(B, T, cfg.effective_n_kv_heads, -1).transpose(1, 2)
        v = self.v_proj(h).view(B, T, cfg.effective_n_kv_heads, -1).transpose(1, 2)
        q, k = self.rotary_emb(q, k)
        groups = cfg.n_heads // cfg.effective_n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False)
        x = x + self.dropout(self.attn_out(att.transpose(1, 2).contiguous().view(B, T, C)))
        h = self.ff_norm(x)
        x = x + self.dropout(self.ff_out(self.act(self.ff_proj(h)) * self.up_proj(h)))
        return x, ((k, v) if use_cache else None)


class LLaDAModel(nn.Module):
    def __init__(self, config, init_params: bool = True):
        super().__init__()
        self.config = config
        n_embed = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(n_embed, config.d_model),
            emb_drop=nn.Dropout(0.0),
            ln_f=_RMSNorm(config.d_model, config.rms_norm_eps),
            blocks=nn.ModuleList(_LlamaBlock(i, config) for i in range(config.n_layers)),
        ))
        if not config.weight_tying:
            self.transformer.update({"ff_out": nn.Linear(config.d_model, n_embed, bias=False)})

    def forward(self, input_ids, input_embeddings=None, attention_mask=None,
                attention_bias=None, past_key_values=None, use_cache=False,
                output_hidden_states=None, replace_position=None):
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings
        x = self.transformer.emb_drop(x)
        for block in self.transformer.blocks:  # the attention mask goes nowhere (issue 90)
            x, _ = block(x, attention_bias, None, use_cache, replace_position)
        x = self.transformer.ln_f(x)
        if self.config.weight_tying:
            return F.linear(x, self.transformer.wte.weight)
        return self.transformer.ff_out(x)


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config: LLaDAConfig, model: LLaDAModel | None = None,
                 init_params: bool = False):
        super().__init__(config)
        self.model = model or LLaDAModel(config, init_params=init_params)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None,
                attention_bias=None, past_key_values=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None,
                replace_position=None):
        if use_cache is None:
            use_cache = self.config.use_cache
        if output_attentions:
            raise ValueError("output_attentions is not yet supported in LLaDA")
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        logits = self.model(input_ids, inputs_embeds, attention_mask, attention_bias,
                            past_key_values, use_cache, output_hidden_states, replace_position)
        if not return_dict:
            return (logits,)
        return CausalLMOutputWithPast(logits=logits)

    def get_input_embeddings(self):
        return self.model.transformer.wte


def from_fixture(**config_overrides) -> LLaDAModelLM:
    """The stand-in with the weights recorded from the official code (tests/fixtures)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    here = Path(__file__).parent / "fixtures"
    config = json.loads((here / "llada_remote_tiny.json").read_text())["config"]
    config.update(config_overrides)
    model = LLaDAModelLM(LLaDAConfig(**config)).eval()
    tensors = load_file(here / "llada_remote_tiny.safetensors")
    model.load_state_dict({k: v for k, v in tensors.items() if k.startswith("model.")})
    return model


def fixture_tensors() -> dict[str, torch.Tensor]:
    """The fixture's recorded inputs and outputs (input_ids, logits, prompt, fastdllm_*)."""
    from pathlib import Path

    from safetensors.torch import load_file

    tensors = load_file(Path(__file__).parent / "fixtures" / "llada_remote_tiny.safetensors")
    return {k: v for k, v in tensors.items() if not k.startswith("model.")}
