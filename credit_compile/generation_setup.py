"""Setting up one generation: validated inputs, static state, strategy and forward.

Shared by the eager reference (`reference.generate`) and the optimized model, so both decode the
same problem the same way and differ only in how the step is executed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import (
    ModelInfo,
    describe_model,
    make_forward,
    probe_vocab_size,
    token_ids,
    unwrap_model,
)
from .config import DecodeConfig, divisor_near
from .decoding.state import DecodeState, prepare_state
from .decoding.step import ForwardFn, denoise_step
from .decoding.strategies import Strategy, make_strategy
from .prompt_buckets import pad_batch_to_bucket, pad_prompts_to_bucket
from .validation import (
    check_inputs,
    check_model_dtype,
    check_no_mask_in_prompt,
    check_token_range,
    refuse_causal_attention,
    resolve_mask_id,
    warn_unread_options,
    warn_user,
)


@dataclass
class GenerationSetup:
    config: DecodeConfig
    info: ModelInfo
    forward: ForwardFn
    strategy: Strategy
    state: DecodeState
    eos_ids: tuple[int, ...] | None
    # (shape, dtype) of each of the KV cache's keys and values; None without a cache.
    kv_cache_layout: tuple[tuple[int, ...], torch.dtype] | None = None

    def step_function(self) -> Callable[[], None]:
        """The denoising step bound to this generation's forward, strategy and state (without a
        KV cache; see `step_functions`)."""
        if self.kv_cache_layout is not None:
            raise ValueError("with a KV cache a generation has two step functions: use "
                             "step_functions() and the schedule of make_schedule()")
        return self.step_functions()["step"]

    def step_functions(self) -> dict[str, Callable[[], None]]:
        """The denoising step(s) by phase: {"step": ...}, or with a KV cache {"refresh": ...,
        "cached": ...}. Allocates the KV cache, on the first call only: a runner reusing this
        state's buffers for later calls makes none."""
        step = functools.partial(
            denoise_step, self.forward, self.strategy, self.state,
            cfg_scale=self.config.cfg_scale, eos_ids=self.eos_ids,
            suppress_ids=self.config.suppress_tokens,
        )
        if self.kv_cache_layout is None:
            return {"step": step}
        if self.state.kv_cache is None:
            shape, dtype = self.kv_cache_layout
            # Uninitialised: every block's first step (with the block cache, the call's first
            # step) writes it whole before it is read.
            self.state.kv_cache = tuple(
                torch.empty(shape, dtype=dtype, device=self.state.device) for _ in range(2))
        phases = ("refresh", "enter", "cached") if self.config.kv_cache == "block" else \
            ("refresh", "cached")
        return {phase: functools.partial(step, cache_phase=phase,
                                         cached_span=self.config.kv_cache,
                                         shifted_logits=self.info.shifted_logits)
                for phase in phases}

    def max_steps(self) -> int:
        """The loop's bound on the steps of this generation: the strategy's, plus the masks
        beyond gen_length (blocks aligned to positions from 0: a prompt's tail in block 0 moves
        the row's last block past gen_length)."""
        state = self.state
        return self.strategy.max_steps() + (state.x.shape[1] - state.block_start
                                            - (state.gen_end - state.gen_start))


def resolve_config(config: DecodeConfig | None, overrides: dict, *,
                   warn: bool = False) -> DecodeConfig:
    """`config` (or the defaults) with `overrides`; `warn` once about the options set that the
    strategy does not read (a call's entry point asks for it)."""
    if config is not None and not isinstance(config, DecodeConfig):
        raise ValueError(
            f"config must be a DecodeConfig, got {type(config).__name__}: pass "
            f"config=DecodeConfig(**fields), or the fields as keyword arguments"
        )
    config = config if config is not None else DecodeConfig()
    if overrides.get("kv_cache") == "none" and "kv_cache_refresh" not in overrides:
        # A call turning a refreshed cache off means no cache, not an invalid refresh.
        overrides = {**overrides, "kv_cache_refresh": None}
    resolved = config.replace(**overrides) if overrides else config
    if warn:
        warn_unread_options(config, overrides, resolved)
    return resolved


def setup_generation(
    model: nn.Module,
    input_ids,
    attention_mask,
    config: DecodeConfig,
    *,
    info: ModelInfo | None = None,
    forward: ForwardFn | None = None,
    optimized: bool = False,
) -> GenerationSetup:
    """Validated inputs, the static state, the strategy and the forward of one generation.
    `optimized`: for the fast path (the strategy may call the fused op), not the reference."""
    model = unwrap_model(model)
    check_model_dtype(model, config)
    _warn_if_dropout_is_active(model)
    info = info if info is not None else describe_model(model, config.mask_id, config.eos_token_id)
    refuse_causal_attention(info)  # as its config says; optimize() also probes the model
    check_kv_cache_support(config, info)
    check_block_length(config, info)
    check_gen_length(config, info)
    if forward is None:
        # A switch for the compiler: the eager reference's forward runs the same either way.
        forward = make_forward(model, info, compile_layers_once=config.compile
                               and config.compile_layers_once, block_length=config.block_length)
    input_ids, attention_mask = _on_model_device(model, input_ids, attention_mask)
    input_ids, attention_mask = check_inputs(input_ids, attention_mask, config, info)
    if info.vocab_size is None:
        info = ModelInfo(**{**info.__dict__, "vocab_size": probe_vocab_size(forward, input_ids)})
        check_token_range(input_ids, info.vocab_size)
    mask_id = resolve_mask_id(config, info)
    check_no_mask_in_prompt(input_ids, attention_mask, mask_id)
    # The mask token is an id the vocabulary is known to hold; bucket padding is masked out anyway.
    input_ids, attention_mask, bucket_padding = pad_prompts_to_bucket(
        input_ids, attention_mask, config, info, pad_id=mask_id)
    input_ids, attention_mask, real_rows = pad_batch_to_bucket(input_ids, attention_mask, config)
    for name in ("suppress_tokens", "commit_last_tokens"):
        outside = [t for t in getattr(config, name) or () if t >= info.vocab_size]
        if outside:
            raise ValueError(
                f"{name} holds {outside[0]}, outside the model's vocabulary of "
                f"{info.vocab_size} tokens: pass this model's token ids")
    if len(set(config.suppress_tokens or ()) | {mask_id}) >= info.vocab_size:
        raise ValueError(
            f"suppress_tokens leaves no token to propose: with the mask token {mask_id} (never "
            f"proposed either) it covers all {info.vocab_size} tokens of the vocabulary; "
            f"suppress fewer tokens")
    eos_ids = None
    if config.early_stop:
        eos_ids = token_ids(config.eos_token_id) if config.eos_token_id is not None \
            else info.eos_ids
        if eos_ids is None:
            raise ValueError(
                "early_stop=True needs an end-of-text token: the model's config has no "
                "`eos_token_id`; pass eos_token_id=<token id>"
            )
        if mask_id in eos_ids:
            raise ValueError(
                f"eos_token_id {mask_id} is the mask token, which is never committed, so "
                f"early_stop would never fire on it: pass this model's end-of-text token"
            )
        outside = [e for e in eos_ids if not 0 <= e < info.vocab_size]
        if outside:
            raise ValueError(
                f"eos_token_id {outside[0]} is outside the model's vocabulary of "
                f"{info.vocab_size} tokens, so early_stop would never fire: pass this model's "
                f"end-of-text token"
            )
        if set(eos_ids) <= set(config.suppress_tokens or ()):
            raise ValueError(
                f"early_stop=True ends a row on end-of-text {eos_ids}, which suppress_tokens "
                f"never lets be proposed, so it would never fire: drop early_stop, or take "
                f"the end-of-text token out of suppress_tokens")
    state = prepare_state(
        input_ids, attention_mask,
        gen_length=config.gen_length, block_length=config.block_length, mask_id=mask_id,
        keep_attention_mask=config.prompt_bucket is not None, output_start=bucket_padding,
        output_rows=real_rows, aligned_blocks=info.block_causal,
    )
    strategy = make_strategy(config, mask_id, optimized=optimized)
    strategy.allocate(state, info.vocab_size)
    kv_cache_layout = None
    if config.kv_cache != "none":
        rows = state.batch_size * (2 if config.cfg_scale > 0 else 1)  # guidance doubles the batch
        kv_cache_layout = (model.kv_cache_shape(rows, state.x.shape[1]),
                           _floating_dtype(model))
    if config.seed is not None:
        torch.manual_seed(config.seed)
    return GenerationSetup(config, info, forward, strategy, state, eos_ids, kv_cache_layout)


def check_kv_cache_support(config: DecodeConfig, info: ModelInfo) -> None:
    if info.block_causal and config.kv_cache in ("prompt", "dual"):
        raise ValueError(
            f"kv_cache={config.kv_cache!r} is an approximate cache for bidirectional models; "
            f"this model attends block-causally (LLaDA2), whose exact cache is kv_cache='block' "
            f"(or use kv_cache='none')")
    if config.kv_cache == "block" and not info.block_causal:
        raise ValueError(
            f"kv_cache='block' is the exact cache of a block-causal model (credit_compile."
            f"models.LLaDA2ModelLM); this model ({info.kind}) attends to the whole canvas, so "
            f"use kv_cache='prompt' or 'dual' (approximate) or 'none'")
    if config.kv_cache != "none" and not (info.approximate_kv_cache or info.block_causal):
        raise ValueError(
            f"kv_cache={config.kv_cache!r} needs credit_compile's own LLaDA model (or its "
            f"LLaDA-MoE or Dream), whose forward reads and writes the cache; this model is a "
            f"{info.kind} one. Load the checkpoint "
            f"with credit_compile.models.LLaDAModelLM.from_pretrained(path) (the official LLaDA "
            f"layout loads as is), or use kv_cache='none'")


def check_block_length(config: DecodeConfig, info: ModelInfo) -> None:
    """A block-causal model attends in the blocks it was trained with; other blocks decode
    another model's problem, so a differing block_length is warned about (it still decodes:
    a user may mean it)."""
    trained = info.trained_block_length
    if trained is not None and config.block_length != trained:
        warn_user(
            f"block_length={config.block_length} differs from the block size this model was "
            f"trained with ({trained}, its config's block_length): its block-causal attention "
            f"follows the decode's blocks, so it attends in blocks it never saw in training; "
            f"use block_length={trained} unless you mean it")


def check_gen_length(config: DecodeConfig, info: ModelInfo) -> None:
    """Blocks of a bidirectional model tile the generated region, so gen_length must be a
    multiple of block_length; a block-causal model's blocks follow positions from 0 and its
    last block runs past gen_length (decoded, not returned), as LLaDA2's own generate() does."""
    if config.gen_length % config.block_length and not info.block_causal:
        raise ValueError(
            f"gen_length={config.gen_length} is not a multiple of block_length="
            f"{config.block_length}: choose a block_length that divides gen_length (for "
            f"example {divisor_near(config.gen_length, config.block_length)}); only a "
            f"block-causal model (LLaDA2) takes any gen_length")


def _floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's weights, which its keys and values come out in (without
    autocast; under autocast the cache holds them exactly and casts back on reading)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.get_default_dtype()


def _warn_if_dropout_is_active(model: nn.Module) -> None:
    active = [name for name, module in model.named_modules()
              if isinstance(module, nn.modules.dropout._DropoutNd) and module.training
              and module.p > 0]
    if active:
        warn_user(
            f"the model is in training mode with dropout active ({active[0]}, p="
            f"{model.get_submodule(active[0]).p}), so its logits are random and decoding is not "
            f"reproducible: call model.eval() before generating")


def _on_model_device(model: nn.Module, *tensors):
    """Inputs moved to the model's device (prompts tokenized on the CPU for a CUDA model)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return tensors
    return tuple(t.to(parameter.device) if isinstance(t, torch.Tensor) else t for t in tensors)
