"""`optimize(model)`: the product's face.

    model = credit_compile.optimize(model)           # or optimize(model, DecodeConfig(...))
    out = model.generate(input_ids, attention_mask)   # CreditDecoding through the fast path

The returned `OptimizedModel` behaves like the model it wraps (forward, state_dict, to(), eval(),
save_pretrained and any other attribute are the wrapped model's) and adds `generate()`. Generation
state is allocated once per (batch, prompt length, padding, config, global torch settings) and
reused: a second call with the same shapes recompiles nothing and replays the same CUDA graph.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import torch
from torch import nn

from .adapters import ModelWrapper, describe_model, make_forward, unwrap_model
from .config import DecodeConfig, _is_count
from .decoding.loop import GenerationOutput, run_generation
from .fingerprint import model_fingerprint
from .generation_setup import GenerationSetup, check_kv_cache_support, resolve_config, setup_generation
from .runner import CompiledStepRunner
from .step_cache import StepCache, checked_cache_size, rng_untouched
from .validation import refuse_causal_attention, warn_user

log = logging.getLogger("credit_compile")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class OptimizedModel(ModelWrapper):
    """A model whose `generate()` runs CreditDecoding (or a baseline) through the fast path.

    Attributes:
        model: the wrapped model (its parameters are this module's).
        decode_config: the default `DecodeConfig`; `generate(**overrides)` changes it per call.
            (`config` stays the wrapped model's own config.)
        last_stats: timings of the last `generate()` call (compile seconds, decode seconds, runner);
            with several threads, read each call's own from `GenerationOutput.stats`.
        max_cached_steps: compiled steps kept, one per (batch size, prompt length or bucket,
            padding, config, global torch settings such as autocast and TF32); beyond it the
            least recently used is dropped with its buffers and CUDA graph, and recompiled if
            its shapes come back.
    """

    def __init__(self, model: nn.Module, config: DecodeConfig, mask_id: int | None = None,
                 max_cached_steps: int = 8):
        super().__init__()
        self.model = model
        self.decode_config = config
        self._mask_id = mask_id
        self._steps = StepCache(max_cached_steps)
        # Calls share the static buffers of their shape: concurrent ones must run one at a time.
        self._lock = threading.Lock()
        self._lock_owner: int | None = None
        self.last_stats: dict = {}
        self.register_load_state_dict_post_hook(OptimizedModel._missing_keys_as_saved)

    def __getstate__(self):
        # A lock does not copy or pickle (nor do compiled steps: StepCache copies empty).
        state = dict(self.__dict__)
        del state["_lock"]
        state["_lock_owner"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    @property
    def max_cached_steps(self) -> int:
        return self._steps.max_size

    @max_cached_steps.setter
    def max_cached_steps(self, value: int) -> None:
        # A lower limit frees the steps beyond it now (a server reclaiming memory), under the
        # call lock: a running call keeps its step until it returns.
        value = checked_cache_size(value)
        with self._exclusive("setting max_cached_steps"):
            self._steps.max_size = value
            self._steps.drop_beyond_limit(lowered=True)

    @property
    def cached_steps(self) -> int:
        """How many compiled steps (shapes) are cached now."""
        return len(self._steps)

    # Behave like the wrapped model.
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Through __dict__: an instance not yet initialised (unpickling) has no _modules,
            # and reading it as an attribute would come back here.
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None:
                raise
            return getattr(model, name)

    def state_dict(self, *args, **kwargs):
        # The wrapped model's keys, so that a checkpoint loads into the plain model and back;
        # inside a parent's state_dict too (it passes the prefix).
        return self.model.state_dict(*args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # Reached when a module holding this one loads its state_dict: the keys were saved
        # without "model." (state_dict above), and the parent's loader descends into `model`.
        # A key is moved when it names one of the wrapped model's own entries (which may begin
        # with "model." themselves, as a Hugging Face model's do).
        own = set(self.model.state_dict(keep_vars=True))
        for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):] in own]:
            state_dict[prefix + "model." + key[len(prefix):]] = state_dict.pop(key)
        self._loading_prefix = prefix
        super()._load_from_state_dict(state_dict, prefix, *args)

    @staticmethod
    def _missing_keys_as_saved(module: OptimizedModel, incompatible_keys) -> None:
        # A load_state_dict post-hook: the wrapped model reports the keys it missed under
        # `prefix + "model."`; the caller saved and knows them without it (state_dict above).
        # Unexpected keys need nothing: only keys naming the model's own entries were moved.
        prefix = module.__dict__.pop("_loading_prefix", None)
        if prefix is None:
            return
        inner = prefix + "model."
        missing = incompatible_keys.missing_keys
        missing[:] = [prefix + k[len(inner):] if k.startswith(inner) else k for k in missing]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # A copy in place keeps the cached steps valid (graphs read the weights' storage);
        # assign=True replaces the storage, which the next call's weights check catches.
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, recurse=True):
        # Moving or casting the model invalidates every static buffer and compiled step; the
        # weights check would catch it at the next call, this frees their memory now. A move
        # that changes nothing (a server's defensive model.to(device)) keeps them.
        # Under the call lock: a move from another thread waits for the running generate(),
        # which would otherwise decode with weights moving under it and lose its runner.
        with self._exclusive("model.to()/cast"):
            before = model_fingerprint(self.model, attributes=False)
            result = super()._apply(fn, recurse)
            if model_fingerprint(self.model, attributes=False) != before:
                self._steps.clear()
        return result

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, *, config: DecodeConfig | None = None,
                 trace: bool = False, progress=None, on_block=None,
                 **overrides) -> GenerationOutput:
        """Decode with this model's config, or `config`; `overrides` are DecodeConfig fields for
        this call (`dtype` is not one: optimize() casts the model once). A `config` replaces
        the model's whole, defaults included: to change a few fields, pass them as overrides
        (or `config=model.decode_config.replace(...)`).

        `progress(steps)` is called at each host check; `on_block(FinishedBlock)` with each block
        of the output once no later step can change it, in order (streaming: on CUDA a block
        arrives at the first check after it, every `sync_every` steps).

        Prompts on another device (tokenized on the CPU) are moved to the model's. Thread-safe:
        concurrent calls run one at a time (batch the prompts into one call to decode them
        together).
        """
        _refuse_dtype(overrides)
        with self._exclusive():
            return self._generate(input_ids, attention_mask, config, trace, progress, on_block,
                                  overrides)

    def _generate(self, input_ids, attention_mask, config, trace, progress, on_block,
                  overrides) -> GenerationOutput:
        fresh = self._setup(input_ids, attention_mask, overrides, base=config)
        config = fresh.config
        runner = self._loaded_runner(fresh, trace)
        start = time.perf_counter()
        # Checking `done` on the host costs a CUDA device a stall of its queue, hence every
        # `sync_every` steps; a CPU device has no queue, and a step after completion costs a
        # whole forward: check every call there.
        every = 1 if trace or runner.state.device.type != "cuda" else max(
            1, config.host_sync_every // runner.steps_per_call)
        try:
            out = run_generation(
                runner.step, runner.state, max_steps=fresh.max_steps(),
                sync_every=every, trace=trace, progress=progress,
                steps_per_call=runner.steps_per_call, on_sync=runner.synced, on_block=on_block,
            )
        except BaseException:
            # A callback that raised (a streaming client gone) ends the call: the next one must
            # not report this one's compile time, nor see this forward's attribute updates as
            # the caller's.
            runner.compile_seconds = 0.0
            self._steps.refingerprint_after_the_call(self.model)
            raise
        if runner.state.device.type == "cuda":
            torch.cuda.synchronize(runner.state.device)
        elapsed = time.perf_counter() - start
        # A compiled step without graphs compiles inside the loop (a graph before it).
        compiled_inside = runner.compile_seconds if isinstance(runner, CompiledStepRunner) \
            else 0.0
        self.last_stats = {
            "runner": runner.kind,
            "compile_seconds": runner.compile_seconds,
            "decode_seconds": elapsed - compiled_inside,
        }
        runner.compile_seconds = 0.0  # reported once, by the call that compiled
        self._steps.refingerprint_after_the_call(self.model)
        out.stats = dict(self.last_stats)
        return out

    @torch.no_grad()
    def precompile(self, batch_size: int, prompt_length: int, *, padded: bool = False,
                   **overrides) -> float:
        """Compile (and on CUDA capture) the step for these shapes now; returns the seconds.

        A server calls this at start-up for the shapes it will see, so that no request pays the
        compile. `generate()` then reuses the step for a batch of `batch_size` prompts of
        `prompt_length` tokens; with `prompt_bucket` set, for every length of that bucket.
        `padded=True` prepares the step of a left-padded batch (an attention mask), which a
        batch without padding does not use; with a bucket both are the same step. Call it under
        the global torch settings the requests run under (`torch.autocast`, TF32): a step is
        compiled, and captured, for the settings of its call.
        """
        if not (_is_count(batch_size) and batch_size > 0
                and _is_count(prompt_length) and prompt_length > (1 if padded else 0)):
            raise ValueError(
                f"precompile(batch_size={batch_size!r}, prompt_length={prompt_length!r}): use a "
                f"positive batch size and prompt length (at least 2 with padded=True)"
            )
        _refuse_dtype(overrides)
        config = self._config(overrides)
        device = next(self.model.parameters()).device
        # Any in-vocabulary id but the mask and the padding tokens does (a row led by padding
        # needs a mask): the prompt's content does not change the compiled step.
        info = describe_model(self.model)
        taken = {config.mask_id, info.pad_id, *(info.eos_padding_ids or ())}
        filler = min(set(range(len(taken) + 1)) - taken)
        input_ids = torch.full((batch_size, prompt_length), filler, device=device)
        attention_mask = None
        if padded:
            attention_mask = torch.ones_like(input_ids)
            attention_mask[:, 0] = 0
        # Setting up seeds the global RNG (config.seed) and the compiling step draws from it:
        # neither may move the caller's generator.
        with self._exclusive(), rng_untouched(device):
            fresh = self._setup(input_ids, attention_mask, overrides)
            runner = self._loaded_runner(fresh, trace=False)
            runner.ensure_compiled()
            seconds, runner.compile_seconds = runner.compile_seconds, 0.0
            self._steps.refingerprint_after_the_call(self.model)
        return seconds

    @contextlib.contextmanager
    def _exclusive(self, what: str = "generate()/precompile()"):
        """The lock, refusing re-entry (a nested call would decode in this one's buffers), and
        the same autograd mode for every call."""
        if self._lock_owner == threading.get_ident():
            raise RuntimeError(
                f"{what} called while this thread is inside generate() (from a progress or "
                f"on_block callback?): the call decodes in this model's buffers and weights; make the "
                f"second call after the first"
            )
        # Static buffers outlive the call: made under a caller's inference_mode they would be
        # inference tensors, and the next call outside it could not update them in place.
        with self._lock, torch.inference_mode(False), torch.no_grad():
            self._lock_owner = threading.get_ident()
            try:
                yield
            finally:
                self._lock_owner = None

    def resolved_config(self, config: DecodeConfig | None = None, **overrides) -> DecodeConfig:
        """The config a generate() call with these arguments decodes with (mask token filled in)."""
        return self._config(overrides, base=config)

    def _config(self, overrides: dict, base: DecodeConfig | None = None,
                warn: bool = False) -> DecodeConfig:
        own = self.decode_config
        if base is None and own.dtype is not None:
            # optimize() applied it once; a model cast since (model.to) is decoded as it is.
            own = own.replace(dtype=None)
        config = resolve_config(own if base is None else base, overrides, warn=warn)
        if config.mask_id is None:
            # Read from the model's config at each call, as the reference does: a config edited
            # since optimize() decodes with its new mask token (the step cache keys on it).
            mask_id = self._mask_id if self._mask_id is not None else describe_model(
                self.model).mask_id
            if mask_id is None:
                raise ValueError(_NO_MASK_TOKEN)
            config = config.replace(mask_id=mask_id)
        return config

    def _setup(self, input_ids, attention_mask, overrides: dict,
               base: DecodeConfig | None = None) -> GenerationSetup:
        config = self._config(overrides, base, warn=True)  # once per call: here
        info = describe_model(self.model, config.mask_id, config.eos_token_id)
        layers_once = config.compile and config.compile_layers_once
        if layers_once and not info.own_bidirectional:
            warn_user(
                f"compile_layers_once=True has no effect on {type(self.model).__name__}: only "
                f"credit_compile's own LLaDA and LLaDA-MoE models mark their layers; each layer "
                f"is compiled as before (leave compile_layers_once off; an official LLaDA "
                f"checkpoint loads as credit_compile.models.LLaDAModelLM.from_pretrained(path))")
        elif layers_once and not unwrap_model(self.model).layers_alike():
            warn_user(
                "compile_layers_once=True has no effect: the model's layers differ in more than "
                "their weights (a hook on a layer, or an adapter on some layers), and one "
                "compiled layer would run the first layer's code for all; each layer is "
                "compiled as before (remove the hooks or adapters, or leave "
                "compile_layers_once off)")
        fresh = setup_generation(self.model, input_ids, attention_mask, config, info=info,
                                 optimized=True)
        if getattr(self.model, "tensor_parallel_group", None) is not None:
            from .distributed import check_same_request

            check_same_request(self.model, fresh.state.x, fresh.state.attention_mask, config)
        return fresh

    def _loaded_runner(self, fresh: GenerationSetup, trace: bool):
        """The cached runner for these shapes, loaded with `fresh`'s prompts."""
        runner, initial = self._steps.runner_for(self.model, fresh, trace)
        runner.reload(initial)
        runner.schedule.use_refresh_every(fresh.config.kv_cache_refresh)
        # Prompts of one bucket share the runner but not their bucket padding, nor where their
        # rows' tokens sit (aligned blocks).
        for name in ("output_start", "output_rows", "gen_columns", "prompt_ids"):
            setattr(runner.state, name, getattr(fresh.state, name))
        return runner



_NO_MASK_TOKEN = ("the model has no mask token: its config has no `mask_token_id`; pass "
                  "optimize(model, mask_id=<token id>) (126336 for LLaDA-8B)")


def optimize(model: nn.Module, config: DecodeConfig | None = None, *, mask_id: int | None = None,
             max_cached_steps: int = 8, tensor_parallel=None, **overrides) -> OptimizedModel:
    """Wrap `model` so that `generate()` runs through the compiled fast path.

    Args:
        model: the project's LLaDAModelLM, the official remote-code LLaDAModelLM, or any module
            whose forward(input_ids, attention_mask=None) returns logits, its attention
            bidirectional (a causal LM is refused: its config's flags, or one forward of two
            short rows, say which). It is put in eval mode, and with `dtype` cast, in place (as
            `model.to` does): the returned model shares its weights. The remote-code LLaDA is
            decoded by the project's LLaDA on its own parameters (`models.remote`): `.model` is
            then that native module.
        config: decoding defaults (DecodeConfig); `overrides` change its fields.
        mask_id: the mask token when the model's config has no `mask_token_id`.
        max_cached_steps: compiled steps (shapes) kept before the least recently used is
            dropped; each holds static buffers and, on CUDA, a graph's memory pool.
        tensor_parallel: a number of ranks (the default process group's size) or a 1-D
            DeviceMesh: every rank of an initialised process group (torchrun) calls optimize()
            and generate() alike, and the model, the project's LLaDA, LLaDA-MoE, LLaDA2 or
            Dream, is sharded across them in place (`credit_compile.distributed`,
            docs/distributed.md).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"optimize() takes a torch.nn.Module, got {type(model).__name__}")
    model = unwrap_model(model)
    checked_cache_size(max_cached_steps)
    config = resolve_config(config, overrides, warn=True)
    model.eval()  # before the probe of its attention: active dropout would blur it
    model = _adopted(model)
    if tensor_parallel is not None:
        from .distributed import prepare

        model = prepare(model, tensor_parallel)
    info = describe_model(model, mask_id if mask_id is not None else config.mask_id)
    parameter = next(model.parameters(), None)
    refuse_causal_attention(info, make_forward(model, info),
                            parameter.device if parameter is not None else None)
    if info.mask_id is None:
        raise ValueError(_NO_MASK_TOKEN)
    check_kv_cache_support(config, info)  # here, not at the first request
    if config.dtype is not None:
        model = model.to(_DTYPES[config.dtype])
    # A mask token the caller named (argument or config) holds for every call; otherwise each
    # call reads the model's config, as the reference does.
    named = mask_id if mask_id is not None else config.mask_id
    return OptimizedModel(model, config, mask_id=named, max_cached_steps=max_cached_steps)


def _adopted(model: nn.Module) -> nn.Module:
    """The official remote-code LLaDA as the project's model on its parameters (models.remote);
    any other model as it is (without importing transformers)."""
    if type(model).__name__ != "LLaDAModelLM":
        return model
    from .models.remote import adopt_remote_llada, is_remote_llada

    return adopt_remote_llada(model) if is_remote_llada(model) else model


def _refuse_dtype(overrides: dict) -> None:
    if "dtype" in overrides:
        raise ValueError(
            "dtype cannot change per call: optimize(model, dtype=...) casts the model once (or "
            "cast it with model.to(dtype) between calls)"
        )
