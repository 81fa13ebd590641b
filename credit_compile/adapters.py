"""What credit_compile needs to know about a model, and one forward signature for all of them.

Accepted models:
- the project's `credit_compile.models.LLaDAModelLM` (honours attention masks and positions);
- the official remote-code `LLaDAModelLM` (trust_remote_code): it ignores the attention mask
  (ML-GSAI/LLaDA issue 90), so the reference refuses padded batches rather than decoding them
  wrongly (`optimize()` adopts it into the project's model instead: `models.remote`);
- the project's `credit_compile.models.LLaDAMoEModelLM` (LLaDA-MoE): bidirectional, as LLaDA
  (masks, positions, the approximate KV caches, one layer compiled for all);
- the project's `credit_compile.models.LLaDA2ModelLM` (LLaDA2.x): block-causal attention over
  blocks aligned to positions from 0, which the decode's blocks follow, and an exact block KV
  cache;
- the project's `credit_compile.models.DreamModel` (Dream-v0-7B on transformers' Qwen2):
  bidirectional, honours attention masks and positions, and its logits are shifted by one
  (`ModelInfo.shifted_logits`); the official remote-code Dream is refused, naming the native one;
- any module whose `forward(input_ids, attention_mask=None)` returns logits (or an output with
  `.logits`); its mask token comes from its config or the `mask_id` argument.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .decoding.step import ForwardFn


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model.

    Attributes:
        kind: "credit_compile" (this project's LLaDA), "lladamoe" (this project's LLaDA-MoE),
            "llada2" (this project's LLaDA2), "dream" (this project's Dream), "llada_remote" or
            "generic".
        mask_id: the mask token, or None when neither the model nor the caller names one.
        eos_ids: the end-of-text tokens (a config may list several, e.g. end-of-text and
            end-of-turn), or None.
        vocab_size: number of logit columns, or None until probed.
        max_length: the longest sequence the model accepts, or None when unknown.
        honours_attention_mask: whether left padding is masked out by the model.
        takes_position_ids: whether the model is given positions counted over real tokens
            (its forward takes `position_ids`); without them a padded prompt may shift its
            positions, which is why prompt buckets need them.
        pad_id: the padding token of the model's config, or None; used only to recognise a
            padded batch passed without its attention mask.
        eos_padding_ids: where the config names no pad token, its end-of-text tokens (a
            tokenizer without a pad token pads with them), used like `pad_id`. Not a call's
            `eos_token_id` (that says where to stop, not how the prompt was padded), and None
            where the begin-of-text token is one of them (GPT-2 style: every prompt may start
            with it, so it cannot tell padding from prompt).
        bos_ids: the begin-of-text tokens of the config, or None: every prompt may start with
            them, so a batch whose rows all do is not taken for padding.
        causal: whether the model's attention is causal as its config says (transformers'
            `is_causal`, or `is_decoder` set), False for the LLaDA models, None where the
            config is silent (`optimize()` then probes the model). LLaDA2's block-causal
            attention is not causal: a block sees itself whole.
        trained_block_length: the block size a block-causal model was trained with (its
            attention's blocks are the decode's), or None for a model without blocks.
        shifted_logits: whether the model reads the token at position i from position i-1's
            output (Dream, adapted from an autoregressive LM): `make_forward` shifts its logits
            by one, so every decoder sees position i's prediction at row i.
    """

    kind: str
    mask_id: int | None
    eos_ids: tuple[int, ...] | None
    vocab_size: int | None
    max_length: int | None
    honours_attention_mask: bool
    takes_position_ids: bool = False
    pad_id: int | None = None
    eos_padding_ids: tuple[int, ...] | None = None
    bos_ids: tuple[int, ...] | None = None
    causal: bool | None = None
    trained_block_length: int | None = None
    shifted_logits: bool = False

    @property
    def block_causal(self) -> bool:
        """Whether the model attends block-causally, its blocks aligned to positions from 0
        (LLaDA2): the decode's blocks follow them, and its KV cache is exact."""
        return self.kind == "llada2"

    @property
    def own_bidirectional(self) -> bool:
        """One of this project's bidirectional models (LLaDA, LLaDA-MoE): its forward takes the
        approximate KV caches (`kv_cache`, `cache_positions`) and `compile_layers_once`."""
        return self.kind in ("credit_compile", "lladamoe")

    @property
    def approximate_kv_cache(self) -> bool:
        """Whether the model's forward reads and writes Fast-dLLM's approximate KV caches
        (`kv_cache`, `cache_positions`): this project's bidirectional models (LLaDA, LLaDA-MoE,
        Dream)."""
        return self.own_bidirectional or self.kind == "dream"


def _is_project_model(model: nn.Module) -> bool:
    from .models import LLaDAModelLM

    return isinstance(model, LLaDAModelLM)


def _of_class_named(model: nn.Module, name: str) -> bool:
    """Whether `model`'s class or one of its bases (a tensor-parallel subclass,
    `credit_compile.distributed`) is named `name`: no import of transformers for other models."""
    return any(cls.__name__ == name for cls in type(model).__mro__)


def _is_project_llada2(model: nn.Module) -> bool:
    # Only a model of that class can be one: no import of transformers for other models.
    if not _of_class_named(model, "LLaDA2ModelLM"):
        return False
    from .models import LLaDA2ModelLM

    return isinstance(model, LLaDA2ModelLM)


def _is_project_lladamoe(model: nn.Module) -> bool:
    if not _of_class_named(model, "LLaDAMoEModelLM"):
        return False
    from .models import LLaDAMoEModelLM

    return isinstance(model, LLaDAMoEModelLM)


def _is_project_dream(model: nn.Module) -> bool:
    if not _of_class_named(model, "DreamModel"):
        return False
    from .models import DreamModel

    return isinstance(model, DreamModel)


def _refuse_remote_dream(model: nn.Module) -> None:
    """The official remote-code Dream takes no 2-D padding mask (its generation code builds a
    4-D one) and returns unshifted logits: decoded as a generic model it would be silently
    wrong."""
    if getattr(getattr(model, "config", None), "model_type", None) == "Dream":
        raise ValueError(
            f"{type(model).__name__} is Dream's remote code (trust_remote_code=True), which "
            f"credit_compile does not decode: load the checkpoint with credit_compile.models."
            f"DreamModel.from_pretrained(path), or AutoModel.from_pretrained(path) without "
            f"trust_remote_code once credit_compile.models is imported (same weights)")


def describe_model(model: nn.Module, mask_id: int | None = None,
                   eos_id: int | tuple[int, ...] | None = None) -> ModelInfo:
    config = getattr(model, "config", None)

    def from_config(*names):
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], int):
                return value[0]
        return None

    trained_block_length = None
    if _is_project_model(model):
        kind, honours, positions = "credit_compile", True, True
    elif _is_project_lladamoe(model):
        kind, honours, positions = "lladamoe", True, True
    elif _is_project_llada2(model):
        kind, honours, positions = "llada2", True, True
        trained_block_length = int(model.config.block_length)
    elif _is_project_dream(model):
        kind, honours, positions = "dream", True, True
    elif type(model).__name__ == "LLaDAModelLM":
        kind, honours, positions = "llada_remote", False, False
    else:
        _refuse_remote_dream(model)
        kind = "generic"
        parameters = inspect.signature(model.forward).parameters
        honours = "attention_mask" in parameters
        positions = honours and "position_ids" in parameters
    return ModelInfo(
        kind=kind,
        mask_id=mask_id if mask_id is not None else from_config("mask_token_id", "mask_id"),
        eos_ids=token_ids(eos_id) if eos_id is not None else token_ids(
            getattr(config, "eos_token_id", None)),
        vocab_size=from_config("embedding_size", "vocab_size"),
        max_length=from_config("max_sequence_length", "max_position_embeddings"),
        honours_attention_mask=honours,
        takes_position_ids=positions,
        pad_id=from_config("pad_token_id"),
        eos_padding_ids=_eos_padding_ids(config),
        bos_ids=token_ids(getattr(config, "bos_token_id", None)),
        causal=False if kind != "generic" else _causal_flag(config),
        trained_block_length=trained_block_length,
        shifted_logits=kind == "dream",
    )


def _causal_flag(config) -> bool | None:
    """What a config says of its attention: `is_causal` where it is a bool, True where
    `is_decoder` is set (a BERT-style model used as a decoder), else None. Model types and
    architecture names do not say: LLaDA loads through AutoModelForCausalLM and is bidirectional."""
    is_causal = getattr(config, "is_causal", None)
    if isinstance(is_causal, bool):
        return is_causal
    return True if getattr(config, "is_decoder", None) is True else None


def _eos_padding_ids(config) -> tuple[int, ...] | None:
    if token_ids(getattr(config, "pad_token_id", None)) is not None:
        return None
    eos_ids = token_ids(getattr(config, "eos_token_id", None))
    bos_ids = token_ids(getattr(config, "bos_token_id", None)) or ()
    if eos_ids is None or set(bos_ids) & set(eos_ids):
        return None
    return eos_ids


def token_ids(value) -> tuple[int, ...] | None:
    """One token id or a list of them (as configs give `eos_token_id`) as a tuple, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    return None


def _logits_of(output, input_ids: torch.Tensor) -> torch.Tensor:
    """The logits of a forward's output: a tensor, an output with `.logits` (transformers), a
    mapping with "logits", or a tuple led by them (return_dict=False), checked to hold a row of
    logits per input token (shapes are static under torch.compile: the check costs the compiled
    step nothing)."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            f"the model's forward returned {type(output).__name__}, not logits: credit_compile "
            f"needs forward(input_ids, attention_mask=None) to return a [batch, length, vocab] "
            f"tensor, an output with `.logits`, or a tuple whose first element is the logits"
        )
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"the model's forward returned logits of shape {tuple(logits.shape)} for input_ids "
            f"of shape {tuple(input_ids.shape)}: credit_compile needs [batch, length, vocab] "
            f"logits, one row per input token at its own position (a diffusion LM's mask "
            f"predictions; a causal LM's logits, shifted to predict the next token, do not fit)"
        )
    return logits


class ModelWrapper(nn.Module):
    """A module that decodes another one, held as `.model` (`api.OptimizedModel`): what a model
    is, is read from the wrapped one."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model under a ModelWrapper or a torch.compile wrapper (whose forward signature and
    config hide the model's own)."""
    # A torch.compile wrapper exists only once dynamo is imported (importing it costs seconds).
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    compiled = (eval_frame.OptimizedModule,) if eval_frame is not None else ()
    while isinstance(model, (ModelWrapper, *compiled)):
        model = model.model if isinstance(model, ModelWrapper) else model._orig_mod
    return model


def make_forward(model: nn.Module, info: ModelInfo, *,
                 compile_layers_once: bool = False, block_length: int | None = None) -> ForwardFn:
    """forward(input_ids, attention_mask, position_ids) -> logits [B, T, V].

    `compile_layers_once` asks this project's model to compile one layer for all (other models
    have no such switch: the caller warns). This project's models also take the KV cache's
    `kv_cache=` and `cache_positions=`, as does Dream's (others are refused a cache before this
    is called).
    `block_length`: LLaDA2's attention blocks (the decode's; None: the trained size). An MoE
    model's experts are fused first (`models.modeling_llada2.fuse_experts`), so that a step
    reads their stacked weights without copying them."""
    if info.kind == "llada2" or info.own_bidirectional:
        from .models.modeling_llada2 import fuse_experts

        fuse_experts(model)
    if info.kind == "llada2":
        blocks = block_length if block_length is not None else info.trained_block_length

        def forward(input_ids, attention_mask, position_ids, **kv_cache):
            if "cache_positions" in kv_cache:
                # A cached forward takes the whole sequence's positions, which the model
                # derives from the whole sequence's padding mask as the state does.
                position_ids = None
            return model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         block_length=blocks, **kv_cache).logits
    elif info.own_bidirectional:
        def forward(input_ids, attention_mask, position_ids, **kv_cache):
            return model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         compile_layers_once=compile_layers_once, **kv_cache).logits
    elif info.kind == "dream":
        def forward(input_ids, attention_mask, position_ids, **kv_cache):
            return model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         **kv_cache).logits
    elif info.takes_position_ids:
        def forward(input_ids, attention_mask, position_ids):
            if attention_mask is None:
                return _logits_of(model(input_ids), input_ids)
            return _logits_of(model(input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids), input_ids)
    elif info.honours_attention_mask:
        def forward(input_ids, attention_mask, position_ids):
            if attention_mask is None:
                return _logits_of(model(input_ids), input_ids)
            return _logits_of(model(input_ids, attention_mask=attention_mask), input_ids)
    elif info.kind == "llada_remote":
        # transformers 5 drops the official config's `use_cache`, which its forward reads when
        # not given one.
        def forward(input_ids, attention_mask, position_ids):
            return _logits_of(model(input_ids, use_cache=False), input_ids)
    else:
        def forward(input_ids, attention_mask, position_ids):
            return _logits_of(model(input_ids), input_ids)
    return _shifted(forward) if info.shifted_logits else forward


def _shifted(forward: ForwardFn) -> ForwardFn:
    """Row i of the logits from row i-1 (row 0 keeps its own: it is a prompt token's, never
    decoded), as Dream's generation code does: `cat([logits[:, :1], logits[:, :-1]], 1)`.
    A cached step runs part of the canvas: it also runs the position before it, whose row it
    then drops (`decoding.step.block_logits`)."""
    def shifted(input_ids, attention_mask, position_ids, **kv_cache):
        logits = forward(input_ids, attention_mask, position_ids, **kv_cache)
        rows = (torch.arange(logits.shape[1], device=logits.device) - 1).clamp_min(0)
        return logits.index_select(1, rows)
    return shifted


def probe_vocab_size(forward: ForwardFn, input_ids: torch.Tensor) -> int:
    """Logit columns of a model whose config does not say (one tiny forward)."""
    with torch.no_grad():
        return forward(input_ids[:1, :1], None, None).shape[-1]
