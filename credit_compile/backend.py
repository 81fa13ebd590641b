"""The torch.compile backend: Inductor with credit_compile's FX passes installed in it.

    config -> optimize -> this backend runs the passes -> Inductor -> step replayed by the runner

The passes go to Inductor as one `CustomGraphPass` (`credit_compile.passes.PassPipeline`, with a
`uuid()`) in `pre_grad_custom_pass`. Nothing is set at import time: that and every other Inductor
setting are handed to `compile_fx` as config patches for this compilation only.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

import torch


def _passes_module():
    """`credit_compile.passes`, or an error naming the fix when it cannot be found."""
    try:
        return importlib.import_module(f"{__package__}.passes")
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.passes":
            raise
        raise ModuleNotFoundError(
            f"credit_compile.passes is missing: credit_compile was imported from "
            f"{os.path.dirname(__file__)}, a source checkout, where passes/ sits at the "
            "repository root and only joins the package when installed. Install it "
            "(pip install -e .) and run from outside the checkout, or run `pytest` rather than "
            "`python -m pytest` (which puts the checkout first on sys.path).",
            name=error.name) from error


def default_passes(config=None):
    """The passes the backend runs, in order (see docs/passes.md)."""
    return _passes_module().default_passes(config)


def inductor_config_patches(deterministic_random: bool, pipeline=None) -> dict:
    from torch._inductor import config as inductor_config

    patches = {}
    # Inductor's own RNG differs from eager's; the sampler's Gumbel noise and random remasking
    # must draw the same numbers as the eager reference for token-for-token equality.
    if deterministic_random:
        patches["fallback_random"] = True
    if pipeline is not None:
        patches["pre_grad_custom_pass"] = pipeline
        # Run the passes on every compilation, before Inductor's cache lookup (whose key then
        # covers the rewritten graph), so the pass counters describe each compiled step. torch
        # 2.11 has no such setting and always runs pre-grad passes first.
        if hasattr(inductor_config, "pre_grad_pass_timing"):
            patches["pre_grad_pass_timing"] = "early"
    return patches


_LOGGER_METHODS = ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal",
                   "log", "warning_once", "info_once", "warning_advice")  # the last: transformers'


class _Ignored(str):
    """A Logger method in dynamo's ignore set: found there by equality (dynamo looks a method up
    with `in`), and a string to sort and write as JSON (torch 2.11 does both with that set when
    it logs a compile's metrics, and logged an error at every compile for plain functions)."""

    def __new__(cls, function):
        ignored = super().__new__(cls, f"{function.__module__}.{function.__qualname__}")
        ignored.function = function
        return ignored

    def __hash__(self):
        return hash(self.function)

    def __eq__(self, other):
        return other is self.function or (isinstance(other, _Ignored)
                                           and other.function is self.function)

    def __reduce__(self):
        return _Ignored, (self.function,)

    def __deepcopy__(self, memo):
        return self


def dynamo_config_patches() -> dict:
    """Dynamo settings for tracing the step, applied around each call of the compiled step, so
    that the logging calls of a model's forward (transformers' `logger.warning_once`
    deprecations among them) do not stop a `fullgraph=True` trace: Logger methods are skipped in
    the graph (the eager forward still logs them), logging's module functions run after it."""
    import logging

    from torch._dynamo import config as dynamo_config

    name = "ignore_logging_functions" if hasattr(dynamo_config, "ignore_logging_functions") \
        else "ignore_logger_methods"
    methods = {_Ignored(getattr(logging.Logger, m)) for m in _LOGGER_METHODS
               if hasattr(logging.Logger, m)}
    functions = {getattr(logging, m) for m in _LOGGER_METHODS if hasattr(logging, m)}
    return {name: set(getattr(dynamo_config, name)) | methods,
            "reorderable_logging_functions":
                set(dynamo_config.reorderable_logging_functions) | functions}


def cheap_backend_bindings() -> list[tuple[object, str, object]]:
    """(module, attribute, replacement) for each module that looks up `make_backend` when it
    compiles (the step cache, verify): setting them makes the optimized models of this process
    compile with dynamo and the passes but without Inductor's code generation. For the tests'
    `cheap_compile` and the benchmarks' --cheap-compile; never set by the package itself."""
    import functools
    import importlib

    cheap = functools.partial(make_backend, inductor=False)
    return [(importlib.import_module(f"credit_compile.{name}"), "make_backend", cheap)
            for name in ("step_cache", "verify")]  # `verify` the module, not the function


def make_backend(passes: Sequence | None = None, *, inductor: bool = True,
                 deterministic_random: bool = True, config=None):
    """A torch.compile backend running `passes` (default: `default_passes(config)`) then Inductor.

    `inductor=False` runs the rewritten graph eagerly (for testing the passes alone).
    """
    pipeline = _passes_module().PassPipeline(default_passes(config) if passes is None else passes)

    def credit_compile_backend(gm: torch.fx.GraphModule, example_inputs):
        # Runners compare this count around a step to tell a guard-triggered recompile (whose
        # time would otherwise pass for decoding) from a plain call.
        credit_compile_backend.graphs_compiled += 1
        if not inductor:
            pipeline(gm.graph)
            gm.recompile()
            return gm.forward
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, config_patches=inductor_config_patches(
            deterministic_random, pipeline if pipeline.passes else None))

    credit_compile_backend.graphs_compiled = 0
    credit_compile_backend.passes = list(pipeline.passes)
    credit_compile_backend.pipeline = pipeline
    return credit_compile_backend
