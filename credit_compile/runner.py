"""Step runners: how the one denoising step is executed.

- `EagerStepRunner`: the step as Python calls the ops (the reference's execution).
- `CompiledStepRunner`: the step through torch.compile(fullgraph=True) with the credit_compile
  backend (passes, then Inductor). Static shapes; the state lives in static buffers, so one
  compiled graph serves every step and every block.
- `CudaGraphStepRunner`: on CUDA, the compiled step captured once as a CUDA graph (optionally
  `unroll` steps per graph) and replayed; the host reads the device-side `done` flag between
  replays only.

Every runner exposes `step()` (one call = `steps_per_call` denoising steps) and `reload(fresh)`
which copies a prepared state's tensors into the static buffers (new prompts, same shapes).
"""

from __future__ import annotations

import logging
import time
import types

import torch

from .decoding.state import DecodeState
from .engine import GenerationSetup

log = logging.getLogger("credit_compile")


def copy_state_(static: DecodeState, initial: dict[str, torch.Tensor]) -> None:
    """Load a prepared state's tensors (`DecodeState.tensors()`) into the static buffers."""
    for name, buffer in static.tensors().items():
        buffer.copy_(initial[name])


class EagerStepRunner:
    kind = "eager"
    steps_per_call = 1

    def __init__(self, setup: GenerationSetup):
        self.setup = setup
        self.state = setup.state
        self._step = setup.step_function()
        self.compile_seconds = 0.0

    def step(self) -> None:
        self._step()

    def ensure_compiled(self) -> None:
        """Compile now rather than on the first step (the step's state is reloaded before use)."""

    def reload(self, initial: dict[str, torch.Tensor]) -> None:
        copy_state_(self.state, initial)


def with_own_code(fn: types.FunctionType) -> types.FunctionType:
    """`fn` with a code object and a globals dict of its own.

    Dynamo keeps compiled graphs on the code object, at most `recompile_limit` (8) of them. Runners
    sharing one code object made the ninth prompt shape a live model compiled fail under
    fullgraph=True (FailOnRecompileLimitHit), and made every step call check the guards of every
    other shape's graph first. Dynamo also stores each compiled graph in the function's globals
    (`__compiled_fn_*`): in the module's own, a dropped step's compiled code stayed for the life
    of the process.
    """
    return types.FunctionType(fn.__code__.replace(), dict(fn.__globals__), fn.__name__,
                              fn.__defaults__, fn.__closure__)


class CompiledStepRunner(EagerStepRunner):
    kind = "compiled"

    def __init__(self, setup: GenerationSetup, backend):
        super().__init__(setup)
        step = setup.step_function()

        def denoise_step_compiled() -> None:
            step()

        self._step = torch.compile(with_own_code(denoise_step_compiled), backend=backend,
                                   fullgraph=True, dynamic=False)
        self._backend = backend
        self._compiled = False

    def step(self) -> None:
        compiled_before = getattr(self._backend, "graphs_compiled", None)
        start = time.perf_counter()
        self._step()
        if not self._compiled or getattr(self._backend, "graphs_compiled", None) != compiled_before:
            # A compiling call's time is compile time, not decoding time: the first call's, and
            # any later one whose guards failed (a changed global setting, a mutated module).
            if self._compiled:
                log.warning("credit_compile: the compiled step recompiled (a dynamo guard failed: "
                            "a global torch setting or a model attribute changed since the first "
                            "call); TORCH_LOGS=recompiles names the guard")
            self.compile_seconds += time.perf_counter() - start
            self._compiled = True

    def ensure_compiled(self) -> None:
        if not self._compiled:
            self.step()


class CudaGraphStepRunner(EagerStepRunner):
    """Replays the compiled step as a CUDA graph of `unroll` steps.

    Capture needs the step warmed up (compiled, autotuned, allocator pools settled); warm-up steps
    mutate the state, so the caller reloads the prompts afterwards (`reload`).
    """

    kind = "cuda_graph"

    def __init__(self, compiled: CompiledStepRunner, unroll: int = 1, warmup_steps: int = 2):
        super().__init__(compiled.setup)
        self.steps_per_call = unroll
        start = time.perf_counter()  # the first warm-up step compiles: this covers it
        # Streams and the capture belong to the model's GPU, which need not be the current one.
        with torch.cuda.device(self.state.device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup_steps):
                    compiled.step()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a server's other threads may use CUDA (copy prompts in) meanwhile.
            # Its own stream: torch.cuda.graph's default capture stream belongs to whichever
            # device was current at the process's first capture.
            with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
                for _ in range(unroll):
                    compiled.step()
            torch.cuda.synchronize()
        self.compile_seconds = time.perf_counter() - start

    def step(self) -> None:
        self.graph.replay()


def make_runner(setup: GenerationSetup, *, backend=None, cuda_graphs: str = "off",
                unroll: int = 1) -> EagerStepRunner:
    """The fastest runner the config allows: eager, compiled, or compiled + CUDA graph."""
    if backend is None:
        return EagerStepRunner(setup)
    compiled = CompiledStepRunner(setup, backend)
    on_cuda = setup.state.device.type == "cuda"
    if cuda_graphs == "off" or (cuda_graphs == "auto" and not on_cuda):
        if cuda_graphs == "auto":
            log.info("credit_compile: CUDA graphs off: the model runs on %s, not CUDA",
                     setup.state.device)
        return compiled
    if not on_cuda:
        raise ValueError(
            f"cuda_graphs='on' but the model runs on {setup.state.device}: move the model to CUDA "
            f"or use cuda_graphs='auto'/'off'"
        )
    try:
        return CudaGraphStepRunner(compiled, unroll=unroll)
    except Exception as error:  # capture can fail on ops that sync or allocate dynamically
        if cuda_graphs == "on":
            raise
        log.warning("credit_compile: CUDA graph capture failed (%s); running the compiled step "
                    "without graphs", error)
        return compiled
