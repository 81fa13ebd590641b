"""Input checks shared by every entry point: a clear ValueError naming the fix, never a silent
wrong answer."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping

import torch

from .adapters import ModelInfo
from .config import DecodeConfig, readers_of, unread_options
from .decoding.step import ForwardFn
from .decoding.strategies import is_any_of_sync_free

# Frames skipped to reach the user's line: this package's, and torch's (no_grad decorators).
_LIBRARY_DIRS = tuple(os.path.dirname(os.path.abspath(f)) + os.sep
                      for f in (__file__, torch.__file__))


def warn_user(message: str) -> None:
    """A UserWarning attributed to the first caller outside credit_compile (the line to fix),
    whichever entry point (reference, optimized model, verify) led here."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is warn_user's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)


def warn_unread_options(base: DecodeConfig, overrides: dict, config: DecodeConfig) -> None:
    """One warning naming the options a call sets that its strategy does not read (`steps`
    outside "llada", the credit options outside "credit": `config.READ_BY`): those of its
    `overrides`, and those of a `base` config whose own strategy does not read them either. A
    base config's options for its own strategy serve the calls that pick another one silently."""
    base_unread = unread_options(base)
    named = [name for name in unread_options(config) if name in overrides or name in base_unread]
    if not named:
        return
    groups: dict[str, list[str]] = {}  # the options of each reader, as one clause
    for name in named:
        groups.setdefault(readers_of(name), []).append(name)
    readers = "; ".join(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} read by "
                        f"strategy {reader}" for reader, names in groups.items())
    they, them = ("it changes", "it") if len(named) == 1 else ("they change", "them")
    warn_user(
        f"strategy={config.strategy!r} does not read "
        f"{', '.join(f'{name}={getattr(config, name)!r}' for name in named)}, so {they} "
        f"nothing ({readers}): leave {them} out, or choose the strategy that reads {them}")


def resolve_mask_id(config: DecodeConfig, info: ModelInfo) -> int:
    mask_id = config.mask_id if config.mask_id is not None else info.mask_id
    if mask_id is None:
        raise ValueError(
            "the model has no mask token: its config has no `mask_token_id`; pass "
            "mask_id=<token id> (126336 for LLaDA-8B) to generate()/optimize() or DecodeConfig"
        )
    if info.vocab_size is not None and not 0 <= mask_id < info.vocab_size:
        raise ValueError(
            f"mask_id={mask_id} is outside the model's vocabulary of {info.vocab_size} tokens: "
            f"pass the mask token of this model (LLaDA-8B uses 126336)"
        )
    return mask_id


def _refuse_unmasked_padding(input_ids: torch.Tensor, info: ModelInfo) -> None:
    """A batch passed without its attention mask whose padding would be decoded as prompt: rows
    ending (or starting) with the pad token, some but not all, or every row starting with it (a
    single padded row, or a batch padded to a fixed width). A model whose config names no pad
    token is checked for rows starting with its end-of-text token, which tokenizers without one
    pad with (see `ModelInfo.eos_padding_ids`; some prompts end with it). Rows that all start
    with a begin-of-text token are prompts, whatever else that token is."""
    if info.pad_id is not None:
        checks = [(-1, "right", (info.pad_id,)), (0, "left", (info.pad_id,))]
    else:
        checks = [(0, "left", info.eos_padding_ids)] if info.eos_padding_ids else []
    for column, side, ids in checks:
        pads = is_any_of_sync_free(input_ids[:, column], ids)
        if not bool(pads.any()):
            continue
        every = bool(pads.all())
        if every and (side == "right" or set(ids) & set(info.bos_ids or ())):
            continue  # a prompt may end with the pad token, or begin with begin-of-text
        which = (f"the pad token {info.pad_id}" if info.pad_id is not None else
                 f"the end-of-text token {ids[0] if len(ids) == 1 else ids} (the model "
                 f"names no pad token; tokenizers without one pad with end-of-text)")
        rows = ("every row starts" if every else
                f"some rows {'end' if side == 'right' else 'start'}")
        raise ValueError(
            f"input_ids look {side}-padded ({rows} with {which}"
            f"{'' if every else ', others do not'}) but no attention_mask was given, so the "
            f"padding would be read as prompt: if those are real tokens, pass "
            f"attention_mask=torch.ones_like(input_ids); else pass the tokenizer's "
            f"attention_mask (padded on the left: tokenizer.padding_side = 'left')"
        )


def refuse_causal_attention(info: ModelInfo, forward: ForwardFn | None = None,
                            device: torch.device | None = None) -> None:
    """A causal LM reads each position from the tokens before it, so it cannot fill a canvas of
    masks from both sides: it would decode noise. Refused where its config says so, and, given
    its `forward`, where the config is silent and a probe finds a later token changing its own
    position's logits but no earlier one's. A model whose logits no token changes (a scripted
    one) is no causal LM, and a forward the probe cannot run is left to generate() to report."""
    if info.causal is False:
        return
    if info.causal:
        why = "its config says so: is_causal or is_decoder"
    elif forward is not None and _later_tokens_unseen(forward, info, device):
        why = "a token changed its own position's logits and no earlier position's"
    else:
        return
    raise ValueError(
        f"this model's attention is causal ({why}): a causal LM predicts each token from the "
        f"tokens before it, and diffusion decoding needs every position to see the whole "
        f"canvas, so it would decode noise. Use a diffusion LM (LLaDA: "
        f"credit_compile.models.LLaDAModelLM.from_pretrained, or the official checkpoint with "
        f"trust_remote_code=True) or a bidirectional masked LM; a causal LM decodes with its "
        f"own generate()"
    )


def _later_tokens_unseen(forward: ForwardFn, info: ModelInfo, device) -> bool:
    """One forward of two rows of 4 tokens (fewer where the model takes fewer) that differ at
    the last position only: True where only that position's logits change."""
    length = min(4, info.max_length or 4)
    if length < 2:
        return False
    rows = torch.zeros(2, length, dtype=torch.long, device=device)
    rows[1, -1] = 1  # every vocabulary holds ids 0 and 1: the mask token and one other at least
    try:
        with torch.no_grad():
            logits = forward(rows, None, None).float()
    except Exception:  # noqa: BLE001 - generate() reports a forward that fails, with its checks
        return False
    change = (logits[0] - logits[1]).abs().amax(-1)  # per position
    return bool(change[-1] > 0) and bool(change[:-1].max() <= 1e-5 * change[-1])


def check_model_dtype(model, config: DecodeConfig) -> None:
    """`config.dtype` is applied once, by optimize(); a config naming another dtype than the
    model's would otherwise be ignored."""
    if config.dtype is None:
        return
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and dtype != getattr(torch, config.dtype):
        raise ValueError(
            f"dtype={config.dtype!r} but the model's weights are {str(dtype).replace('torch.', '')}: "
            f"the dtype is applied once, by optimize(model, dtype=...), which casts the model; "
            f"cast it yourself (model.to(torch.{config.dtype})) for the reference or another "
            f"config, or leave dtype=None"
        )


def check_no_mask_in_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                            mask_id: int) -> None:
    """Only the generated canvas is decoded: a mask token among the prompt's real tokens stays
    masked, is returned as prompt, and changes every answer the model gives after it."""
    found = input_ids == mask_id
    if attention_mask is not None:
        found &= attention_mask.bool()  # padding may be any token
    if bool(found.any()):
        row, column = (int(i) for i in found.nonzero()[0])
        raise ValueError(
            f"input_ids holds the mask token {mask_id} inside a prompt (row {row}, position "
            f"{column}): the decoder fills only the generated tokens after the prompt, so it "
            f"would stay masked and change the answer; remove it from the prompt (check the "
            f"tokenizer did not turn the prompt's text into the mask token)"
        )


def check_token_range(input_ids: torch.Tensor, vocab_size: int) -> None:
    if bool(((input_ids < 0) | (input_ids >= vocab_size)).any()):
        raise ValueError(
            f"input_ids holds token ids outside [0, {vocab_size}): check the tokenizer matches "
            f"the model"
        )


def check_inputs(
    input_ids,
    attention_mask,
    config: DecodeConfig,
    info: ModelInfo,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate prompts; returns (input_ids, attention_mask) unchanged when fine."""
    if isinstance(attention_mask, DecodeConfig):
        raise ValueError(
            "a DecodeConfig was passed as attention_mask (the positional argument after "
            "input_ids): pass it by name, config=config"
        )
    if isinstance(input_ids, Mapping) and "input_ids" in input_ids:
        # A tokenizer's whole output (a dict, transformers' BatchEncoding) given as input_ids.
        keys = list(input_ids)
        call = ("generate(**enc)" if set(keys) <= {"input_ids", "attention_mask"} else
                "generate(input_ids=enc['input_ids'], attention_mask=enc['attention_mask'])")
        raise ValueError(
            f"input_ids is a tokenizer's whole output ({type(input_ids).__name__} with keys "
            f"{keys}), not a tensor of token ids: pass its entries by name, {call} (its "
            f"attention_mask goes with them)"
        )
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(
            f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}: "
            f"use torch.tensor([[...]]) or a tokenizer with return_tensors='pt'"
        )
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"input_ids has dtype {input_ids.dtype}; token ids must be integers: use "
            f"input_ids.long()"
        )
    if input_ids.dim() != 2:
        hint = "input_ids.unsqueeze(0)" if input_ids.dim() == 1 else "a [batch, length] tensor"
        raise ValueError(
            f"input_ids must have shape [batch, prompt_length], got {tuple(input_ids.shape)}: "
            f"use {hint}"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"empty prompt (input_ids shape {tuple(input_ids.shape)}): give at least one token "
            f"per row, for example a BOS token"
        )
    total = input_ids.shape[1] + config.gen_length
    if info.max_length is not None and input_ids.shape[1] >= info.max_length:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} leaves no room to generate in the model's "
            f"maximum sequence length {info.max_length}: shorten the prompt to at most "
            f"{max(info.max_length - config.gen_length, 1)} tokens for gen_length "
            f"{config.gen_length}"
        )
    if info.max_length is not None and total > info.max_length:
        room = info.max_length - input_ids.shape[1]
        fitting = room // config.block_length * config.block_length  # gen_length must divide
        lower = (f"lower gen_length to at most {fitting} (a multiple of block_length "
                 f"{config.block_length})" if fitting else
                 f"lower gen_length and block_length to at most {room}")
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + gen_length {config.gen_length} = {total} "
            f"exceeds the model's maximum sequence length {info.max_length}: shorten the prompt "
            f"or {lower}"
        )
    if info.vocab_size is not None:
        check_token_range(input_ids, info.vocab_size)
    if attention_mask is None:
        _refuse_unmasked_padding(input_ids, info)
        return input_ids.long(), None
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            f"attention_mask must be a torch.Tensor like input_ids, got "
            f"{type(attention_mask).__name__}: use torch.as_tensor(attention_mask), or a "
            f"tokenizer with return_tensors='pt'"
        )
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids shape "
            f"{tuple(input_ids.shape)}: pass the mask the tokenizer returned with these input_ids"
        )
    attention_mask = attention_mask.to(input_ids.device)
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    mask = attention_mask.long()
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("a row of attention_mask is all padding: every prompt needs a token")
    # Left padding: once a row has a real token, it has no padding after it.
    if bool((mask.cummax(-1).values != mask).any()):
        raise ValueError(
            "attention_mask is not left-padded: generation appends to the right of the prompt, so "
            "pad on the left (tokenizer.padding_side = 'left')"
        )
    if not info.honours_attention_mask and not bool(mask.all()):
        raise ValueError(
            "this model ignores attention_mask (the official LLaDA code does: ML-GSAI/LLaDA "
            "issue 90), so a padded batch would decode wrongly: load the checkpoint with "
            "credit_compile.models.LLaDAModelLM.from_pretrained(path), or pass prompts one at a time"
        )
    if not info.takes_position_ids and not bool(mask.all()):
        # RoPE models see only relative positions, so a shifted row decodes the same; a model
        # with absolute position embeddings does not, and nothing here can tell the two apart.
        warn_user(
            "this model's forward takes attention_mask but not position_ids, so a left-padded "
            "row's positions start at its first padding column: a model with absolute position "
            "embeddings decodes that row differently from the same prompt unpadded. Add a "
            "position_ids argument to forward (credit_compile passes positions counted over real "
            "tokens), or decode prompts of different lengths in separate calls")
    return input_ids.long(), mask
