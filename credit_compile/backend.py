"""The torch.compile backend: credit_compile's FX passes, then Inductor.

    config -> optimize -> this backend runs the passes -> Inductor -> step replayed by the runner

Nothing is set at import time: Inductor settings are handed to `compile_fx` as config patches for
this compilation only.
"""

from __future__ import annotations

from typing import Sequence

import torch


def default_passes(config=None):
    """The passes the backend runs, in order (see docs/passes.md)."""
    from .passes import default_passes as passes

    return passes(config)


def inductor_config_patches(deterministic_random: bool) -> dict:
    # Inductor's own RNG differs from eager's; the sampler's Gumbel noise and random remasking
    # must draw the same numbers as the eager reference for token-for-token equality.
    return {"fallback_random": True} if deterministic_random else {}


def make_backend(passes: Sequence | None = None, *, inductor: bool = True,
                 deterministic_random: bool = True, config=None):
    """A torch.compile backend running `passes` (default: `default_passes(config)`) then Inductor.

    `inductor=False` runs the rewritten graph eagerly (for testing the passes alone).
    """
    chosen = list(default_passes(config) if passes is None else passes)

    def credit_compile_backend(gm: torch.fx.GraphModule, example_inputs):
        for graph_pass in chosen:
            gm = graph_pass(gm, lint_and_recompile=False)
        # No generic dead-code elimination: FX treats in-place tensor methods (credit.mul_,
        # x.index_copy_) as pure, and would drop the state updates. Passes erase what they replace.
        gm.graph.lint()
        gm.recompile()
        if not inductor:
            return gm.forward
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs,
                          config_patches=inductor_config_patches(deterministic_random))

    credit_compile_backend.passes = chosen
    return credit_compile_backend
