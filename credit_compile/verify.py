"""Correctness verification against eager mode, on the user's own model and inputs.

Run this before putting an optimized model into production:

    report = credit_compile.verify(model, input_ids)
    assert report.tokens_equal, report

It decodes with the eager reference and with the optimized path, and compares tokens, NFE, the
first step's logits (eager forward vs the forward compiled by Inductor through the credit_compile
backend, without its passes, so the block-sliced LM head's rounding is not in this figure) and
time: the median of several calls of each path after an untimed one (`time_calls`).
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .api import OptimizedModel, optimize
from .backend import dynamo_config_patches, make_backend
from .config import DecodeConfig, without_unread_options
from .generation_setup import setup_generation
from .reference import generate as generate_reference
from .runner import with_own_code
from .step_cache import rng_untouched
from .validation import warn_unread_options


@dataclass
class VerifyReport:
    """What `verify()` found.

    Attributes:
        tokens_equal: the optimized tokens equal the eager reference's, every row and position.
        first_difference: (row, position) of the first differing token, or None.
        nfe_reference, nfe_optimized: forward evaluations of each path.
        max_logit_difference: max |eager - compiled| over the first step's logits (the forward
            compiled without the FX passes).
        max_logit_magnitude: max |eager| over the same logits: the scale the difference is read
            against (0.35 in bf16 is rounding next to logits of 30, a bug next to logits of 1).
        reference_seconds, optimized_seconds: the median decode time of each path's timed
            calls, `reference_calls` and `optimized_calls` of them, after an untimed one (the
            optimized path's compiles; every call's tokens are compared).
        compile_seconds: compilation time of the optimized path's first call.
        runner: how the optimized step ran ("compiled", "cuda_graph", ...).
    """

    tokens_equal: bool
    first_difference: tuple[int, int] | None
    nfe_reference: int
    nfe_optimized: int
    max_logit_difference: float
    reference_seconds: float
    optimized_seconds: float
    compile_seconds: float
    runner: str
    max_logit_magnitude: float = 0.0
    reference_calls: int = 0
    optimized_calls: int = 0

    @property
    def ok(self) -> bool:
        return self.tokens_equal and self.nfe_reference == self.nfe_optimized

    def __str__(self) -> str:
        lines = [f"credit_compile verify: {'OK' if self.ok else 'MISMATCH'}"]
        lines += [f"  {k}: {v}" for k, v in asdict(self).items()]
        if self.max_logit_magnitude > 0:
            lines.append(f"  relative logit difference: "
                         f"{self.max_logit_difference / self.max_logit_magnitude:.2e}")
        if self.optimized_seconds > 0:
            lines.append(f"  speedup: {self.reference_seconds / self.optimized_seconds:.2f}x "
                         f"({timing_note(self.reference_calls, self.optimized_calls)})")
        return "\n".join(lines)


def timing_note(reference_calls: int, optimized_calls: int) -> str:
    """How verify's and the CLI demo's times were taken, said beside each speedup."""
    return (f"medians of {reference_calls} eager and {optimized_calls} optimized calls, each "
            f"path's first call untimed")


def time_calls(generate, device: torch.device, min_calls: int = 3, budget_seconds: float = 0.5,
               max_calls: int = 50, agree=None) -> tuple[list, float]:
    """(the outputs of every call, the median seconds of the timed ones). One untimed call first
    (it compiles, or warms the allocator and caches), then at least `min_calls` timed ones, and
    more while they have taken less than `budget_seconds` in all (up to `max_calls`): a call of
    milliseconds is timed many times, so that one slowed by a busy machine makes no figure, and
    a call of seconds (an 8B eager decode) `min_calls` times. `agree` (a bool to a bool), where
    given, turns this process's wish for one more call into the decision of every process that
    must make the same calls (the ranks of a sharded model: `distributed.any_rank`)."""
    outputs, seconds = [generate()], []
    while True:
        more = len(seconds) < max_calls and (len(seconds) < min_calls
                                             or sum(seconds) < budget_seconds)
        if agree is not None:
            more = agree(more)
        if not more:
            break
        start = time.perf_counter()
        outputs.append(generate())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return outputs, statistics.median(seconds)


@torch.no_grad()
def verify(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
           config: DecodeConfig | None = None, *, timed_calls: int = 3,
           **overrides) -> VerifyReport:
    """Compare the optimized path with the eager reference on `model` and these inputs.

    Both decode with `config` and `overrides` (for an OptimizedModel, on top of its own config).
    A `dtype` casts `model` in place, as optimize() does. A sampling config
    (`DecodeConfig.draws_random`) without a seed is compared with seed=0: unseeded,
    the two paths would draw different numbers and differ for that reason alone. Each path is
    timed over at least `timed_calls` calls after an untimed one (more while they take under
    half a second in all): lower it where an eager call takes long. A tensor-parallel model
    (`optimize(..., tensor_parallel=N)`) is verified by every rank calling verify() with the same
    arguments, as generate(): the ranks agree on how many calls each path is timed.
    """
    if not (isinstance(timed_calls, int) and not isinstance(timed_calls, bool) and timed_calls > 0):
        raise ValueError(f"timed_calls={timed_calls!r}: use a positive number of calls (default 3)")
    if isinstance(model, OptimizedModel):
        optimized = model
        resolved = optimized.resolved_config(config, **overrides)
        warn_unread_options(optimized.decode_config if config is None else config, overrides,
                            resolved)
        config = resolved
    else:
        optimized = optimize(model, config, **overrides)  # warns of options it does not read
        config = optimized.resolved_config()
    config = without_unread_options(config)  # said once, above: not again at each decode
    if config.draws_random and config.seed is None:
        config = config.replace(seed=0)
    parameter = next(optimized.model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with rng_untouched(device):
        return _compare(optimized, input_ids, attention_mask, config, device,
                        timed_calls)  # seeds set stay here


def _compare(optimized: OptimizedModel, input_ids, attention_mask, config: DecodeConfig,
             device: torch.device, timed_calls: int) -> VerifyReport:
    eager_model = optimized.model
    agree = None
    if getattr(eager_model, "tensor_parallel_group", None) is not None:
        # Every call runs the shards' collectives: the ranks, whose clocks differ, make as many.
        from .distributed import any_rank

        agree = functools.partial(any_rank, group_name=eager_model.tensor_parallel_group,
                                  device=next(eager_model.parameters()).device)

    references, reference_seconds = time_calls(
        lambda: generate_reference(eager_model, input_ids, attention_mask, config), device,
        min_calls=timed_calls, agree=agree)
    outputs, optimized_seconds = time_calls(
        lambda: optimized.generate(input_ids, attention_mask, config=config), device,
        min_calls=timed_calls, agree=agree)
    reference, fast = references[0], outputs[-1]
    # The first optimized call that differs (the compiling one included), at its first token.
    differing = next((out for out in outputs
                      if not torch.equal(out.sequences, reference.sequences)), None)
    first_difference = None if differing is None else tuple(
        int(v) for v in (differing.sequences != reference.sequences).nonzero()[0])
    logit_difference, logit_magnitude = _first_step_logit_difference(
        eager_model, input_ids, attention_mask, config)
    return VerifyReport(
        tokens_equal=differing is None,
        first_difference=first_difference,
        nfe_reference=reference.nfe,
        nfe_optimized=fast.nfe,
        max_logit_difference=logit_difference,
        reference_seconds=reference_seconds,
        optimized_seconds=optimized_seconds,
        compile_seconds=outputs[0].stats["compile_seconds"],
        runner=fast.stats["runner"],
        max_logit_magnitude=logit_magnitude,
        reference_calls=len(references) - 1,
        optimized_calls=len(outputs) - 1,
    )


def _first_step_logit_difference(model, input_ids, attention_mask,
                                 config) -> tuple[float, float]:
    """(max |eager - compiled|, max |eager|) over the first step's logits."""
    setup = setup_generation(model, input_ids, attention_mask, config)
    state = setup.state
    args = (state.x, state.attention_mask, state.position_ids)
    eager = setup.forward(*args)
    # A code object of its own: dynamo's per-code-object graph limit would otherwise count every
    # verify() of every shape on this model.
    with torch._dynamo.config.patch(dynamo_config_patches()):
        compiled = torch.compile(with_own_code(setup.forward), backend=make_backend(passes=[]),
                                 fullgraph=True)(*args)
    eager = eager.float()
    return float((eager - compiled.float()).abs().max()), float(eager.abs().max())
