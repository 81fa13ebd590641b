"""The compiled steps of one optimized model: one runner (static state, compiled step, CUDA
graphs) per key, the least recently used dropped beyond a limit, all dropped when the model
changes under them.

The key is the canvas shape, the padding, the device, the config less the fields the step does
not read (`step_config`), the end-of-text ids and the global torch settings a step bakes in
(torch_settings.py). The model's fingerprint (fingerprint.py) is checked on each call: a
change drops every step, since a captured CUDA graph would replay the old storage and forward.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict

import torch
from torch import nn

from .adapters import probe_vocab_size
from .backend import make_backend
from .config import DecodeConfig, without_unread_options
from .decoding.strategies import check_logit_width
from .fingerprint import model_fingerprint
from .generation_setup import GenerationSetup
from .runner import CompiledStepRunner, make_runner
from .torch_settings import torch_settings_key
from .validation import warn_user

log = logging.getLogger("credit_compile")


class StepCache:
    """Runners by key, least recently used first (see the module docstring)."""

    def __init__(self, max_size: int = 8):
        self.max_size = checked_cache_size(max_size)
        self._runners: OrderedDict = OrderedDict()
        # The model as the cached steps last saw it: a change drops them.
        self._fingerprint: tuple = ()

    def __len__(self) -> int:
        return len(self._runners)

    def __getstate__(self):
        # Compiled steps belong to this process: a copy starts with none and compiles its own.
        return {"max_size": self.max_size, "_runners": OrderedDict(), "_fingerprint": ()}

    def keys(self) -> list:
        """The keys, least recently used first (the canvas shape leads each)."""
        return list(self._runners)

    def runners(self) -> list:
        return list(self._runners.values())

    def clear(self) -> None:
        self._runners.clear()

    def runner_for(self, model: nn.Module, fresh: GenerationSetup, trace: bool):
        """The cached runner for these shapes and the initial state to load into it."""
        config, state = fresh.config, fresh.state
        fingerprint = _model_fingerprint(model)
        if fingerprint != self._fingerprint:
            # Weights moved, cast or re-assigned (also through the wrapped model, which bypasses
            # the wrapper's _apply), or a module's mode, hooks or attributes changed since the
            # last call: a captured CUDA graph would replay the old storage and the old forward.
            self._runners.clear()
            self._fingerprint = fingerprint
        graphs = not trace and config.compile and (
            config.cuda_graphs == "on" or (config.cuda_graphs == "auto" and state.device.type == "cuda"))
        # Global settings in the key: a captured graph replays the kernels they chose.
        # The end-of-text ids as resolved (from the model's config when the call gives none).
        key = (tuple(state.x.shape), state.gen_start, state.block_start, state.attention_mask is not None,
               state.device, step_config(config, graphs), fresh.eos_ids, torch_settings_key())
        if (graphs or state.device.type == "cuda") and refresh_checks_every_step(config):
            # Per call: a step built for another interval (not in the key) may serve this one.
            warn_user(
                f"kv_cache_refresh={config.kv_cache_refresh} and sync_every="
                f"{config.sync_every} share no factor, so completion is checked after every "
                f"step, a host sync each (each refresh must open a window of unchecked "
                f"steps; with CUDA graphs, one step per replay): choose kv_cache_refresh a "
                f"multiple or a divisor of sync_every")
        runner = self._runners.get(key)
        initial = state.tensors()
        if runner is not None:
            self._runners.move_to_end(key)
        else:
            # The runner keeps `fresh` as its static state (later calls copy into it); warm-up
            # steps before CUDA-graph capture mutate it, so keep the initial values apart.
            initial = {name: t.clone() for name, t in initial.items()}
            if "credit" in state.buffers and config.compile:
                check_logit_width(probe_vocab_size(fresh.forward, state.x),
                                  state.buffers["credit"].shape[-1])
            backend = make_backend(config=config) if config.compile else None
            cuda_graphs = "off" if trace else config.cuda_graphs
            unroll = config.host_sync_every if cuda_graphs != "off" else 1
            with rng_untouched(state.device):  # warm-up steps before capture draw numbers
                runner = make_runner(fresh, backend=backend, cuda_graphs=cuda_graphs,
                                     unroll=unroll, on_compile_error=config.on_compile_error)
            self._runners[key] = runner
            self.drop_beyond_limit()
        return runner, initial

    def refingerprint_after_the_call(self, model: nn.Module) -> None:
        # A forward may update its own attributes; a change the next call sees must be the
        # caller's. Without attributes (no graphs possible) there is nothing to refresh.
        if graphs_possible(model):
            self._fingerprint = _model_fingerprint(model)

    def drop_beyond_limit(self, lowered: bool = False) -> None:
        while len(self._runners) > self.max_size:
            dropped, runner = self._runners.popitem(last=False)
            what = "eager step" if runner.kind == "eager" else "compiled step"
            if lowered:  # asked for: no advice to raise the limit just lowered
                log.info("credit_compile: freed the %s of canvas shape %s (max_cached_steps "
                         "lowered to %d)", what, dropped[0], self.max_size)
                continue
            if not isinstance(runner, CompiledStepRunner):  # buffers only: nothing compiles
                log.debug("credit_compile: freed the eager step of canvas shape %s "
                          "(max_cached_steps=%d)", dropped[0], self.max_size)
                continue
            log.warning(
                "credit_compile: dropped the compiled step of canvas shape %s "
                "(max_cached_steps=%d); it compiles again if that shape returns: raise "
                "max_cached_steps, or set prompt_bucket to need fewer shapes",
                dropped[0], self.max_size)


def _model_fingerprint(model: nn.Module) -> tuple:
    """The model as a cached step depends on it (fingerprint.py). A CUDA graph checks no guards,
    so on CUDA that is the whole model: weights, modes, hooks and attributes. Elsewhere there are
    no graphs, and dynamo's guards see all but the weights (whose device and storage the static
    buffers follow) and the hooks: those alone, at a third of the cost."""
    return model_fingerprint(model, attributes=graphs_possible(model))


def checked_cache_size(value) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"max_cached_steps={value!r}: use a positive integer (default 8)")
    return value


def refresh_checks_every_step(config: DecodeConfig) -> bool:
    """Whether `kv_cache_refresh` alone brings the host's checks (and a CUDA graph's steps) down
    to one step: an interval sharing no factor with `sync_every`."""
    return (config.kv_cache_refresh is not None and config.host_sync_every == 1
            and config.replace(kv_cache_refresh=None).host_sync_every > 1)


def step_config(config: DecodeConfig, graphs: bool) -> DecodeConfig:
    """`config` without the fields the compiled step does not read, so that calls differing only
    in those share one step: the seed and dtype (read before the step), the buckets (their
    shapes are in the key), the options a strategy does not read (`config.READ_BY`: `steps`
    outside "llada", the credit fields outside "credit", ...), `compile_layers_once` and
    `on_compile_error` without compile, and `kv_cache_refresh` but for 1 (the host places the
    refreshes, through the runner's schedule, set per call; 1 compiles no cached step).
    Without CUDA graphs, also `sync_every` and `cuda_graphs` (with graphs, `host_sync_every` is
    the number of steps captured per replay, and stays)."""
    config = without_unread_options(config)
    drop = {"seed": None, "dtype": None, "prompt_bucket": None, "batch_bucket": None}
    if not graphs:
        drop.update(sync_every=1, cuda_graphs="off")
    else:
        drop["sync_every"] = config.host_sync_every
    if not config.compile:
        drop.update(compile_layers_once=False, on_compile_error="raise")
    if config.kv_cache_refresh != 1:
        drop["kv_cache_refresh"] = None
    return dataclasses.replace(config, **drop)


def rng_untouched(device: torch.device):
    """The global RNG (CPU, and `device` on CUDA) as it was, after steps run only to compile or
    capture: the draws of Gumbel noise and random remasking then start where the caller's seed
    put them, as in the reference, instead of where the warm-up left them."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def graphs_possible(model: nn.Module) -> bool:
    parameter = next(model.parameters(), None)
    return parameter is not None and parameter.device.type == "cuda"
