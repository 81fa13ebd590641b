"""Warm start: an ahead-of-time compiled denoising step against the server's compile artifacts.

    python benchmarks/bench_aot_step.py                   # the shipped model, the serve shape
    python benchmarks/bench_aot_step.py --preset tiny --cheap-compile    # a dry run

Two ways for a restarted server to answer without compiling again, each measured cold (nothing
kept) and warm (a new process given what the cold one kept), every measurement in a Python
process of its own:

- `aot`: the step (one forward, the strategy, the in-place commits) as a module taking the
  state's tensors, `torch.export.export`-ed and built by AOTInductor into a package
  (`torch._inductor.aoti_compile_and_package`, a .pt2). Cold: export + compile + package. Warm:
  `torch._inductor.aoti_load_package` and the first step. The warm process also runs the eager
  step on the same state and compares every state tensor after one step and after a whole
  generation's steps.
- `artifacts`: what `credit-compile serve --precompile --cache-dir DIR` does
  (`credit_compile.serve.warmstart`): Inductor's kernel cache kept under DIR, torch's compile
  artifacts loaded, `precompile` of the shape (dynamo's trace, the FX passes, Inductor), the
  artifacts saved. Cold: an empty DIR. Warm: the DIR the cold process left.

`seconds` is the cold or warm cost itself; `ready_seconds`, from the process's launch to its
first step done (interpreter, imports and the model's load included), is what a restarted
server's start-up would be. Tokens and every integer state tensor are compared exactly; the
float ones (confidences, credits) may differ by an Inductor kernel's rounding, reported as
`*_float_max_diff`. `ms_per_step` (the median of a generation's steps after the first, the
loaded or compiled step alone) is a side figure: on a few shared cores it swings between tens
and hundreds of ms with the other work (a descheduled OpenMP thread stalls every kernel).

Both at the serve shape (the default serve config's buckets: 4 prompts x 16 prompt tokens, left
padded) on the shipped default model unless `--preset` names a random one. Rows (device, torch,
commit, load average) are appended to benchmarks/results/aot_step.jsonl. Under the developer
flag --cheap-compile (dry runs, tests) no Inductor code is generated: `aot` saves and loads the
exported program itself (`torch.export.save`/`load`) and `artifacts` compiles with the cheap
backend; rows say `backend` "cheap" and their timings are no measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODEL = "default"  # --preset: the shipped model, as `credit-compile serve` loads it
MODES = ("aot-cold", "aot-warm", "artifacts-cold", "artifacts-warm")


# ------------------------------------------------------------------------------------------------
# The child's side: one measurement in this process
# ------------------------------------------------------------------------------------------------


def build(spec: dict):
    """(model, optimized model, generation setup) of the measured shape, the prompts as the
    server's scheduler pads them (left padding: an attention mask)."""
    from benchutil import bench_model

    import credit_compile as cc

    if spec["preset"] == DEFAULT_MODEL:
        from credit_compile.assets import load_default_model

        model, _ = load_default_model("cpu")
    else:
        model = bench_model(spec["preset"], "cpu")
    config = cc.DecodeConfig(gen_length=spec["gen_length"], block_length=spec["block_length"],
                             seed=0, prompt_bucket=spec["prompt_length"],
                             batch_bucket=spec["batch"])
    fast = cc.optimize(model, config)
    setup = fast._setup(*prompts(spec, fast._config({}).mask_id), {})
    return model, fast, setup


def prompts(spec: dict, mask_id: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, mask_id, (spec["batch"], spec["prompt_length"]), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 0] = 0  # left padding, as the scheduler's batches (precompile(padded=True))
    return ids, mask


def step_module(model, setup):
    """The denoising step as a module: its inputs are the state's tensors (in `tensors()`'s
    order), which it updates in place, as the compiled step updates the static buffers."""
    import dataclasses

    import torch

    from credit_compile.decoding.step import denoise_step

    names = list(setup.state.tensors())

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # its weights: the exported program's parameters

        def forward(self, *tensors):
            by_name = dict(zip(names, tensors, strict=True))
            buffers = {n.split(".", 1)[1]: t for n, t in by_name.items() if n.startswith("buffers.")}
            plain = {n: t for n, t in by_name.items() if not n.startswith("buffers.")}
            state = dataclasses.replace(setup.state, **plain, buffers=buffers)
            denoise_step(setup.forward, setup.strategy, state, cfg_scale=setup.config.cfg_scale,
                         eos_ids=setup.eos_ids, suppress_ids=setup.config.suppress_tokens)

    return Step()


def state_copy(setup) -> tuple:
    return tuple(t.clone() for t in setup.state.tensors().values())


def compare(names: list[str], state: tuple, reference: tuple) -> dict:
    """Whether the tokens and every integer or boolean state tensor are equal (`equal`), the
    largest difference of the float ones (confidences, credits: an Inductor kernel's
    reductions may round otherwise than eager's), and the names of the tensors that differ."""
    import torch

    differing, float_max_diff, equal = [], 0.0, True
    for name, a, b in zip(names, state, reference, strict=True):
        if torch.equal(a, b):
            continue
        differing.append(name)
        if a.is_floating_point():
            float_max_diff = max(float_max_diff, float((a - b).abs().max()))
        else:
            equal = False
    return {"equal": equal, "float_max_diff": float_max_diff, "differing": differing}


def pass_rewrites() -> int:
    """Rewrites the project's FX passes made in this process."""
    from torch._dynamo.utils import counters

    return int(sum(counters["credit_compile"].values()))


def measure_aot_cold(spec: dict) -> dict:
    import torch

    from credit_compile.backend import default_passes, inductor_config_patches
    from credit_compile.passes import PassPipeline

    model, fast, setup = build(spec)
    if setup.kv_cache_layout is not None:
        raise SystemExit("bench_aot_step measures the step without a KV cache")
    start = time.perf_counter()
    exported = torch.export.export(step_module(model, setup), state_copy(setup), strict=False)
    export_seconds = time.perf_counter() - start
    if spec["backend"] == "cheap":
        torch.export.save(exported, spec["package"])
    else:
        # The backend's Inductor settings: eager's RNG, and the passes as its pre-grad pass
        # (which an exported, already ATen-level graph no longer offers them: see pass_rewrites).
        patches = inductor_config_patches(True, PassPipeline(default_passes(setup.config)))
        torch._inductor.aoti_compile_and_package(exported, package_path=spec["package"],
                                                 inductor_configs=patches)
    seconds = time.perf_counter() - start
    return {"export_seconds": export_seconds, "compile_seconds": seconds - export_seconds,
            "seconds": seconds, "package_bytes": os.path.getsize(spec["package"]),
            "pass_rewrites": pass_rewrites()}


def run_steps(step, state: tuple, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step(*state)
        times.append(time.perf_counter() - start)
    return times


def measure_aot_warm(spec: dict) -> dict:
    import torch

    model, _, setup = build(spec)
    start = time.perf_counter()
    if spec["backend"] == "cheap":
        loaded = torch.export.load(spec["package"]).module()
    else:
        loaded = torch._inductor.aoti_load_package(spec["package"])
    load_seconds = time.perf_counter() - start
    state = state_copy(setup)
    first = run_steps(loaded, state, 1)[0]
    ready = time.time() - spec["launched"]
    eager = step_module(model, setup)
    reference = state_copy(setup)
    with torch.no_grad():
        eager(*reference)
    names = list(setup.state.tensors())
    one_step = compare(names, state, reference)
    # A whole generation's steps (steps after completion change nothing), each way.
    steps = setup.max_steps()
    times = run_steps(loaded, state, steps - 1)
    with torch.no_grad():
        run_steps(eager, reference, steps - 1)
    generation = compare(names, state, reference)
    return {"load_seconds": load_seconds, "first_step_seconds": first, "ready_seconds": ready,
            "seconds": load_seconds + first, "ms_per_step": 1e3 * sorted(times)[len(times) // 2],
            "one_step_equal": one_step["equal"], "generation_equal": generation["equal"],
            "one_step_float_max_diff": one_step["float_max_diff"],
            "generation_float_max_diff": generation["float_max_diff"],
            "differing": generation["differing"],
            "steps_compared": steps}


def measure_artifacts(spec: dict) -> dict:
    import torch
    from benchutil import use_backend

    import credit_compile as cc
    from credit_compile.serve import warmstart

    # Inductor's cache is DIR/inductor: the parent set it in the environment, as the server's
    # keep_kernels_in does before its imports (importing Inductor fixes the folder).
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == kernels_dir(spec)
    use_backend(spec["backend"] == "cheap")
    start = time.perf_counter()
    loaded = warmstart.load_artifacts(spec["cache_dir"])
    load_seconds = time.perf_counter() - start
    model, fast, setup = build(spec)
    ids, mask = prompts(spec, setup.config.mask_id)
    precompile_seconds = warmstart.precompile(fast, [(spec["batch"], spec["prompt_length"])])
    ready = time.time() - spec["launched"]
    compiled, cached = warmstart.inductor_cache_counts()
    saved = warmstart.save_artifacts(spec["cache_dir"])
    out = fast.generate(ids, mask)
    reference = cc.generate_reference(model, ids, mask, config=setup.config.replace(compile=False))
    # The compiled step alone, as many times as the AOT step is timed (a step after completion
    # runs the same kernels and changes nothing).
    (runner,) = fast._steps.runners()
    with torch.no_grad():  # as generate() runs it (grad mode is one of its guards)
        times = run_steps(runner.step, (), setup.max_steps() - 1)
    assert runner.compile_seconds == 0.0, "the timed steps compiled again"
    return {"load_seconds": load_seconds, "precompile_seconds": precompile_seconds,
            "seconds": load_seconds + precompile_seconds, "ready_seconds": ready,
            "artifacts_loaded": loaded,
            "artifacts_bytes": saved, "inductor_compiled": compiled, "inductor_cached": cached,
            "ms_per_step": 1e3 * sorted(times)[len(times) // 2],
            "generation_equal": bool(torch.equal(out.sequences, reference.sequences)),
            "pass_rewrites": pass_rewrites()}


def kernels_dir(spec: dict) -> str:
    return str((Path(spec["cache_dir"]) / "inductor").resolve())


def measure(spec: dict) -> dict:
    import torch

    load_average = os.getloadavg()[0]
    result = (measure_artifacts(spec) if spec["mode"].startswith("artifacts") else
              measure_aot_cold(spec) if spec["mode"] == "aot-cold" else measure_aot_warm(spec))
    return {"load_average": load_average, "torch": torch.__version__, **result}


# ------------------------------------------------------------------------------------------------
# The parent's side: the processes and the rows
# ------------------------------------------------------------------------------------------------


def child_env(spec: dict, work: Path) -> dict:
    env = dict(os.environ)
    if spec["mode"].startswith("artifacts"):
        env["TORCHINDUCTOR_CACHE_DIR"] = kernels_dir(spec)  # the server's: DIR/inductor
    else:  # the AOT package needs no Inductor cache: an empty one each time
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-", dir=work)
    return env


def run_child(spec: dict, work: Path) -> dict:
    from benchutil import run_child_process

    start = time.perf_counter()
    spec = {**spec, "launched": time.time()}
    result = run_child_process(__file__, spec, child_env(spec, work))
    result["process_seconds"] = time.perf_counter() - start
    return result


def main(argv=None) -> int:
    from benchutil import CHEAP, INDUCTOR, add_cheap_compile_flag, decode_config, positive_int
    from provenance import git_commit

    from credit_compile.models import available_presets

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default=DEFAULT_MODEL,
                        choices=[DEFAULT_MODEL, *available_presets()],
                        help="the shipped model (default) or a random model of a preset")
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--prompt-length", type=positive_int, default=16)
    parser.add_argument("--gen-length", type=positive_int, default=16)
    parser.add_argument("--block-length", type=positive_int, default=8)
    parser.add_argument("--rounds", type=positive_int, default=2,
                        help="cold then warm of each way, this many times")
    parser.add_argument("--out", default=str(RESULTS / "aot_step.jsonl"))
    add_cheap_compile_flag(parser)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    if args.prompt_length < 2:
        parser.error("--prompt-length must be at least 2 (a left-padded prompt)")
    try:
        decode_config(args.preset if args.preset != DEFAULT_MODEL else "tiny",
                      gen_length=args.gen_length, block_length=args.block_length)
    except ValueError as exc:
        parser.error(str(exc))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    shape = {"preset": args.preset, "batch": args.batch, "prompt_length": args.prompt_length,
             "gen_length": args.gen_length, "block_length": args.block_length,
             "backend": CHEAP if args.cheap_compile else INDUCTOR}
    print(f"{'round':>5} {'mode':>15} {'seconds':>8} {'ready s':>8} {'process s':>9} "
          f"{'ms/step':>8} {'equal':>6} {'load avg':>8}")
    for round_ in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="credit_compile_aot_") as tmp:
            work = Path(tmp)
            for mode in MODES:
                spec = {**shape, "mode": mode, "package": str(work / "step.pt2"),
                        "cache_dir": str(work / "cache")}
                result = run_child(spec, work)
                row = {"device": "cpu", "torch": result.pop("torch"), "commit": commit,
                       "round": round_, **{k: v for k, v in spec.items()
                                           if k not in ("package", "cache_dir")}, **result}
                row.pop("launched", None)
                with out.open("a") as f:  # appended as measured
                    f.write(json.dumps(row) + "\n")
                ms = row.get("ms_per_step")
                ready = row.get("ready_seconds")
                print(f"{round_:>5} {mode:>15} {row['seconds']:>8.2f} "
                      f"{'' if ready is None else f'{ready:.2f}':>8} "
                      f"{row['process_seconds']:>9.2f} "
                      f"{'' if ms is None else f'{ms:.2f}':>8} "
                      f"{str(row.get('generation_equal', '')):>6} {row['load_average']:>8.2f}",
                      flush=True)
    print(f"\ncpu  torch {row['torch']}  commit {commit}  preset {args.preset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
