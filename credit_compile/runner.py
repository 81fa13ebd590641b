"""Step runners: how the one denoising step is executed.

- `EagerStepRunner`: the step as Python calls the ops (the reference's execution).
- `CompiledStepRunner`: the step through torch.compile(fullgraph=True) with the credit_compile
  backend (passes, then Inductor). Static shapes; the state lives in static buffers, so one
  compiled graph serves every step and every block.
- `CudaGraphStepRunner`: on CUDA, the compiled step captured once as a CUDA graph (optionally
  `unroll` steps per graph) and replayed; the host reads the device-side `done` flag between
  replays only.

Every runner exposes `step()` (one call = `steps_per_call` denoising steps), `synced()` (after
each host check) and `reload(fresh)` which copies a prepared state's tensors into the static
buffers (new prompts, same shapes). With a KV cache a generation has two step functions, a
block's refresh and its cached steps, and the runner's `schedule` says which runs next.
"""

from __future__ import annotations

import logging
import time
import types

import torch

from .backend import dynamo_config_patches
from .decoding.schedule import make_schedule
from .decoding.state import DecodeState
from .generation_setup import GenerationSetup

log = logging.getLogger("credit_compile")


class CompileError(RuntimeError):
    """torch.compile could not capture the denoising step as one graph; the cause is chained.

    Raised instead of dynamo's own error so that the message names the way out (an eager step,
    or a forward without graph breaks) beside the model line dynamo reports."""


def compile_failure_message(error: Exception) -> str:
    summary = next(iter(str(error).strip().splitlines()), "")  # its first line
    if isinstance(error, torch._dynamo.exc.BackendCompilerFailed):
        # Traced whole, then the passes or Inductor failed: not the model's to fix.
        cause = ("The step traced as one graph, and the compiler behind it (this project's "
                 "passes, then Inductor) failed on it: a bug to report with the error this one "
                 "chains. ")
    else:
        cause = ("The model's forward must trace without graph breaks: no .item(), print() or "
                 "Python branch on a tensor's value; the line that broke is in the error this "
                 "one chains. ")
    return (
        f"credit_compile could not compile the denoising step as one graph "
        f"(torch.compile(fullgraph=True), which CUDA graph replay needs): "
        f"{type(error).__name__}: {summary}\n{cause}"
        f"To decode without compiling (the reference's tokens, without the speedup), pass "
        f"optimize(model, compile=False).")


def raised_while_tracing(error: BaseException) -> bool:
    """Whether dynamo failed on a Python exception the traced code raised (it would raise in
    eager too), rather than on code it cannot trace."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, torch._dynamo.exc.ObservedException):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def copy_state_(static: DecodeState, initial: dict[str, torch.Tensor]) -> None:
    """Load a prepared state's tensors (`DecodeState.tensors()`) into the static buffers."""
    for name, buffer in static.tensors().items():
        buffer.copy_(initial[name])


class EagerStepRunner:
    """The step function(s) as Python calls their ops; `schedule` picks the phase of each step
    (the one step, or with a KV cache a block's refresh and its cached steps)."""

    kind = "eager"
    steps_per_call = 1

    def __init__(self, setup: GenerationSetup):
        self.setup = setup
        self.state = setup.state
        self.schedule = make_schedule(setup.config, setup.state)
        self._steps = setup.step_functions()
        self.compile_seconds = 0.0

    def step(self) -> None:
        self.run_phase(self.schedule.next_phase())

    def run_phase(self, phase: str) -> None:
        self._steps[phase]()

    def synced(self) -> None:
        self.schedule.synced()

    def ensure_compiled(self) -> None:
        """Compile now rather than on the first step (the step's state is reloaded before use)."""

    def reload(self, initial: dict[str, torch.Tensor]) -> None:
        copy_state_(self.state, initial)
        self.schedule.reset()


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

    def __init__(self, setup: GenerationSetup, backend, on_compile_error: str = "raise"):
        super().__init__(setup)
        self.on_compile_error = on_compile_error
        self.fell_back = False  # on_compile_error="eager" after a failed compile: eager steps
        self.model_raised = False  # the eager step raised the model's own error as it compiled
        self._eager_steps = dict(self._steps)
        self._steps = {phase: self._compiled_step(step, backend)
                       for phase, step in self._steps.items()}
        self._backend = backend
        self._dynamo_patches = dynamo_config_patches()
        self._compiled: set[str] = set()

    @staticmethod
    def _compiled_step(step, backend):
        def denoise_step_compiled() -> None:
            step()

        return torch.compile(with_own_code(denoise_step_compiled), backend=backend,
                             fullgraph=True, dynamic=False)

    def run_phase(self, phase: str) -> None:
        if self.fell_back:
            self._eager_steps[phase]()
            return
        compiled_before = getattr(self._backend, "graphs_compiled", None)
        start = time.perf_counter()
        try:
            with torch._dynamo.config.patch(self._dynamo_patches):
                self._steps[phase]()
        except torch._dynamo.exc.TorchDynamoException as error:
            # Only compiling raises dynamo's exceptions: a compiled graph raises the ops' own.
            stepped = raised_while_tracing(error)
            if stepped:
                # The step's own code raised as it traced (a model's output failing its check):
                # the user's error, not the compiler's. The eager step raises it as it is (or,
                # raised under tracing only, takes this step).
                self.model_raised = True
                self._eager_steps[phase]()
                self.model_raised = False
            if self.on_compile_error != "eager":
                raise CompileError(compile_failure_message(error)) from error
            self._fall_back_to_eager(error)
            self.compile_seconds += time.perf_counter() - start
            if not stepped:
                self._eager_steps[phase]()
            return
        if phase not in self._compiled or \
                getattr(self._backend, "graphs_compiled", None) != compiled_before:
            # A compiling call's time is compile time, not decoding time: each phase's first
            # call's, and any later one whose guards failed (a changed global setting, a mutated
            # module).
            if phase in self._compiled:
                log.warning("credit_compile: the compiled step recompiled (a dynamo guard failed: "
                            "a global torch setting or a model attribute changed since the first "
                            "call); TORCH_LOGS=recompiles names the guard")
            self.compile_seconds += time.perf_counter() - start
            self._compiled.add(phase)

    def _fall_back_to_eager(self, error: Exception) -> None:
        summary = next(iter(str(error).strip().splitlines()), "")
        log.warning("credit_compile: could not compile the denoising step as one graph (%s: %s); "
                    "on_compile_error='eager': this shape's step runs eagerly (the reference's "
                    "tokens, without the speedup)", type(error).__name__, summary)
        self.fell_back = True
        self.kind = "eager"

    def ensure_compiled(self) -> None:
        for phase in self.schedule.phases:
            if phase not in self._compiled and not self.fell_back:
                self.run_phase(phase)


class CudaGraphStepRunner(EagerStepRunner):
    """Replays the compiled step as CUDA graphs of `unroll` steps: one per phase of the schedule,
    each that phase's step followed by the steps that follow it unchecked (with a KV cache: the
    refresh then `unroll - 1` cached steps, and `unroll` cached steps).

    Capture needs the step warmed up (compiled, autotuned, allocator pools settled); warm-up steps
    mutate the state, so the caller reloads the prompts afterwards (`reload`).
    """

    kind = "cuda_graph"

    def __init__(self, compiled: CompiledStepRunner, unroll: int = 1, warmup_steps: int = 2):
        super().__init__(compiled.setup)
        self.steps_per_call = unroll
        self.schedule = compiled.schedule
        compiled_before = compiled.compile_seconds  # when make_runner compiled it first
        start = time.perf_counter()  # else the first warm-up step compiles: this covers it
        self.graphs = {}
        # Streams and the capture belong to the model's GPU, which need not be the current one.
        with torch.cuda.device(self.state.device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup_steps):
                    for phase in self.schedule.phases:
                        compiled.run_phase(phase)
            torch.cuda.current_stream().wait_stream(stream)
            for phase in self.schedule.phases:
                graph = torch.cuda.CUDAGraph()
                # thread_local: a server's other threads may use CUDA (copy prompts in)
                # meanwhile. Its own stream: torch.cuda.graph's default capture stream belongs
                # to whichever device was current at the process's first capture.
                with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                    for captured in unrolled_phases(self.schedule, phase, unroll):
                        compiled.run_phase(captured)
                self.graphs[phase] = graph
            torch.cuda.synchronize()
        self.compile_seconds = compiled_before + time.perf_counter() - start

    def run_phase(self, phase: str) -> None:
        self.graphs[phase].replay()


def unrolled_phases(schedule, first: str, unroll: int) -> list[str]:
    """The phases of `unroll` steps run without a host check, the first of phase `first`."""
    phases = [first]
    while len(phases) < unroll:
        phases.append(schedule.following(phases[-1]))
    return phases


def make_runner(setup: GenerationSetup, *, backend=None, cuda_graphs: str = "off",
                unroll: int = 1, on_compile_error: str = "raise") -> EagerStepRunner:
    """The fastest runner the config allows: eager, compiled, or compiled + CUDA graph (with
    on_compile_error="eager", a compiled runner whose step did not compile runs it eagerly)."""
    if backend is None:
        return EagerStepRunner(setup)
    compiled = CompiledStepRunner(setup, backend, on_compile_error)
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
    return with_graphs(compiled, unroll=unroll, required=cuda_graphs == "on")


def with_graphs(compiled: CompiledStepRunner, *, unroll: int, required: bool,
                graph_runner=None) -> EagerStepRunner:
    """`compiled` replayed by `graph_runner` (default CudaGraphStepRunner) in graphs of `unroll`
    steps; or `compiled` itself where its step fell back to eager (on_compile_error="eager"),
    or capture failed and graphs are not `required`."""
    graph_runner = graph_runner or CudaGraphStepRunner
    if compiled.on_compile_error == "eager":
        # Compiled before capture, so that a step falling back to eager is not captured (the
        # caller reloads the state these steps change).
        compiled.ensure_compiled()
        if compiled.fell_back:
            return compiled
    try:
        graphed = graph_runner(compiled, unroll=unroll)
    except CompileError:
        raise  # the compiled step the fallback would run fails the same way
    except Exception as error:  # capture can fail on ops that sync or allocate dynamically
        if compiled.fell_back:
            return compiled  # a recompile in the warm-up failed: its eager step, uncaptured
        if required or compiled.model_raised:
            raise  # the model's own error, raised as the warm-up compiled: not the capture's
        log.warning("credit_compile: CUDA graph capture failed (%s); running the compiled step "
                    "without graphs", error)
        return compiled
    if compiled.fell_back:
        # A guard failed in the warm-up and its recompile failed (on_compile_error="eager"):
        # the graphs captured the eager step, whose Python does not run on replay.
        return compiled
    return graphed
