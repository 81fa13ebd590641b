"""End-to-end generation benchmark: every decoding mode side by side, in one process.

    python benchmarks/bench_generate.py --preset tiny                 # CPU, seconds
    python benchmarks/bench_generate.py --preset trained --batch 1 8  # CPU, the trained model
    python benchmarks/bench_generate.py --preset llada-8b --batch 1 8 --gen-length 256 1024
    python benchmarks/bench_generate.py --preset llada-moe-7b          # LLaDA-MoE shapes (tiny-lladamoe: CPU)
    python benchmarks/bench_generate.py --preset tiny-dream           # Dream (docs/dream.md)
    python benchmarks/bench_generate.py --preset tiny-llada2          # LLaDA2 (CPU), seconds
    python benchmarks/bench_generate.py --preset llada2-mini --batch 1 8  # LLaDA2.0-mini shapes (GPU)

Modes (each row's ratio is against the eager LLaDA baseline sampler measured in the same run):
  llada-eager            LLaDA's original sampler, one token per step (steps = gen_length)
  threshold-eager        Fast-dLLM threshold decoding, eager
  credit-eager           CreditDecoding, eager (dense credit)
  credit-compiled        CreditDecoding, optimize(): compiled step + fused op + passes
  credit-compiled-sparse the same with the sparse credit layout
  credit-compiled-layers-once  the same with compile_layers_once (one layer compiled for all)
  credit-graphs          optimize() + CUDA graphs, sparse credit (the default; CUDA only)
  credit-graphs-dense    the same with the dense credit layout
  credit-graphs-layers-once    credit-graphs with compile_layers_once
  credit-dual-cache-eager      CreditDecoding with kv_cache="dual" (Fast-dLLM's DualCache), eager
  credit-compiled-dual-cache   optimize() with kv_cache="dual", no graphs
  credit-graphs-dual-cache     optimize() with kv_cache="dual" + CUDA graphs (CUDA only)
  credit-prompt-cache-eager, credit-compiled-prompt-cache, credit-graphs-prompt-cache
                               the same three with kv_cache="prompt" (the generated region runs,
                               the prompt's keys and values are kept: worth it on long prompts,
                               --prompt-length)
The cache modes are approximate: their tokens are checked against the eager mode of their cache,
and `token_agreement_with_credit_eager` says how many agree with exact (uncached) decoding. Their
roofline averages a block's full step and its cached ones (weights, plus the cache read).
Also on CUDA: `forward-graphed`, the bare compiled + graphed forward of one step (hidden states,
block-sliced LM head), the floor the decoding logic is measured against.

Per row: NFE, tokens/s, ms per step, first_block_ms (latency to the first block a streaming
server could send, `generate(on_block=...)`), compile seconds, peak memory, and a roofline of one step
(weight bytes and FLOPs against the device's measured peak bandwidth and matmul rate). Rows are
appended to benchmarks/results/generate.jsonl with device, torch version, git commit and the
DecodeConfig each mode ran with. The selected modes run in the order above, whatever the order of
--modes, so the baseline and credit-eager come before the rows compared with them.
`backend` is "inductor", or "cheap" under the developer flag --cheap-compile (benchutil: dynamo
and the FX passes without Inductor's code generation, for dry runs; no measurement).

LLaDA2 presets (tiny-llada2, llada2-mini: block-causal MoE, docs/llada2.md) run modes of their own,
each row's ratio against LLaDA2's own generate() measured in the same run; rows go to
benchmarks/results/generate_llada2.jsonl (no roofline: the experts run densely):
  llada2-eager           the official generate() (`models.llada2_generate`): batch 1 (a batch is
                         its rows one after another), every step a forward of the window up to
                         the current block, no cache, threshold 0.95, one step per token of a block
  credit-block-eager     CreditDecoding on the exact block cache (kv_cache="block"), eager: the
                         reference whose tokens the compiled credit modes are checked against
  credit-compiled-block, credit-graphs-block         optimize() on the block cache (graphs: CUDA)
  threshold-compiled-block, threshold-graphs-block   the same, Fast-dLLM threshold decoding
  llada2-compiled-block, llada2-graphs-block         the same, LLaDA2's own sampler (strategy
                         "llada2", tau 0.95): the baseline's rules, `token_agreement_with_llada2_eager`
No end-of-text stops a mode: each decodes all of gen_length. `bare_block_forward_ms` is one cached
step's forward alone (a block against the cache, and the LM head), compiled, on CUDA graphed.

Random weights, so NFE reflects a random model, not a trained one; per-step figures do not
depend on the weights. At real shapes (llada-8b, bf16) a random model is never confident: about
one token per step. The tiny presets are drawn with init_std 0.5 (benchutil.TINY_INIT_STD), not
the presets' 0.02: at 0.02 every confidence is about 0.012, all tied within the commit rule's
slack, so threshold and credit decoding committed whole blocks (NFE 4 for 64 tokens) and the
ratios were artefacts; at 0.5 they commit about one token per step too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import types
from pathlib import Path

import torch
from benchutil import (
    add_cheap_compile_flag,
    add_check_flags_flag,
    backend_name,
    bench_dtype,
    bench_model,
    compile_fn,
    decode_config,
    init_std_of,
    is_llada2,
    is_tiny,
    positive_int,
    use_backend,
)
from provenance import git_commit

import credit_compile as cc
from credit_compile.models import DREAM_PRESETS, LLADA2_PRESETS, LLADAMOE_PRESETS, available_presets
from credit_compile.training.tasks import BLOCK_LENGTH, GEN_LENGTH

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ["llada-eager", "threshold-eager", "credit-eager", "credit-compiled",
         "credit-compiled-sparse", "credit-compiled-layers-once", "credit-graphs",
         "credit-graphs-dense", "credit-graphs-layers-once", "credit-dual-cache-eager",
         "credit-compiled-dual-cache", "credit-graphs-dual-cache", "credit-prompt-cache-eager",
         "credit-compiled-prompt-cache", "credit-graphs-prompt-cache"]
CACHED_EAGER = {"dual": "credit-dual-cache-eager", "prompt": "credit-prompt-cache-eager"}


def kv_cache_of(mode: str) -> str:
    """The `kv_cache` a mode decodes with: "dual", "prompt" or "none"."""
    return next((cache for cache in CACHED_EAGER if f"-{cache}-cache" in mode), "none")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_peaks(device) -> dict:
    """Device ceilings measured here: copy bandwidth (read + write) and bf16 matmul rate."""
    if device.type != "cuda":
        return {"peak_gbps": None, "peak_tflops": None}
    n = 1 << 28
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(20):
        dst.copy_(src)
    sync(device)
    gbps = 2 * src.nbytes * 20 / (time.perf_counter() - start) / 1e9
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    tflops = 2 * 8192**3 * 10 / (time.perf_counter() - start) / 1e12
    del src, dst, a, b
    torch.cuda.empty_cache()
    return {"peak_gbps": gbps, "peak_tflops": tflops}


def step_roofline(model, batch: int, seq: int, block: int, tokens: int | None = None) -> dict:
    """Bytes and FLOPs of one denoising step: every weight read once; matmuls over `tokens` of
    the `seq` (all of them by default; a cached step's block), their attention over all `seq`,
    and the LM head over the block only (block-sliced)."""
    cfg = model.config
    tokens = seq if tokens is None else tokens
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head = getattr(model, "lm_head_weight", None)  # this project's models; Dream: Qwen2's head
    head = (model.get_output_embeddings().weight if head is None else head).numel()
    body_params = sum(p.numel() for n, p in model.named_parameters()  # LLaDA's; the others' layers
                      if (".blocks." in n or ".layers." in n) and p.dim() == 2)
    flops = (2 * body_params * batch * tokens
             + 4 * batch * tokens * seq * cfg.hidden_size * cfg.num_hidden_layers
             + 2 * head * batch * block)
    return {"weight_bytes": weight_bytes, "step_flops": flops}


def cached_roofline(model, batch: int, seq: int, block: int, nfe: int, num_blocks: int,
                    cached_tokens: int) -> dict:
    """A cached generation's step, averaged: each block's first step is a full one, its others
    run `cached_tokens` (the block's with the dual cache, the generated region's with the prompt
    cache) and read every layer's cached keys and values."""
    full = step_roofline(model, batch, seq, block)
    cached = step_roofline(model, batch, seq, block, tokens=cached_tokens)
    keys = 2 * batch * seq * math.prod(model.kv_cache_shape(1, 1)) * \
        next(model.parameters()).element_size()
    cached_steps = max(nfe - num_blocks, 0)
    return {
        "weight_bytes": full["weight_bytes"] + keys * cached_steps / max(nfe, 1),
        "step_flops": (full["step_flops"] * min(num_blocks, nfe)
                       + cached["step_flops"] * cached_steps) / max(nfe, 1),
        "kv_cache_bytes": keys,
    }


TRAINED = "trained"


def make_prompts(batch: int, prompt_length: int, vocab: int, mask_id: int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(vocab, mask_id), (batch, prompt_length), generator=g).to(device)
    # Random rows may start or end with the pad id: the mask says they are all real tokens (an
    # all-ones mask is dropped before decoding, so the step is the unmasked one).
    return ids, torch.ones_like(ids)


def trained_model_and_prompts(batch: int, device):
    """The shipped default model (trained, 1M parameters) and `batch` of its held-out task
    prompts, left-padded: the one model here whose confidence, hence NFE, means something."""
    from credit_compile.assets import load_default_model
    from credit_compile.training.tasks import held_out_set

    model, tokenizer = load_default_model(device)
    encoded = tokenizer([prompt for _, prompt, _ in held_out_set(batch, seed=11)])
    return model, encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


def run_mode(mode, model, ids, mask, base: cc.DecodeConfig, repeats: int) -> dict:
    device = ids.device
    # The eager reference neither compiles nor replays graphs and checks completion every step:
    # its config says so, as the row records it.
    eager = base.replace(compile=False, cuda_graphs="off", sync_every=1)
    if mode == "llada-eager":
        cfg = eager.replace(strategy="llada", steps=base.gen_length)
        call = lambda **kw: cc.generate_reference(model, ids, mask, config=cfg, **kw)  # noqa: E731
    elif mode in ("threshold-eager", "credit-eager", *CACHED_EAGER.values()):
        strategy = mode.split("-")[0]  # dense credit is the eager reference's layout
        cfg = eager.replace(strategy=strategy, kv_cache=kv_cache_of(mode),
                            **({"credit_layout": "dense"} if strategy == "credit" else {}))
        call = lambda **kw: cc.generate_reference(model, ids, mask, config=cfg, **kw)  # noqa: E731
    else:
        cfg = base.replace(
            strategy="credit", compile=True,
            credit_layout="dense" if mode in ("credit-compiled", "credit-graphs-dense") else "sparse",
            cuda_graphs="on" if mode.startswith("credit-graphs") else "off",
            compile_layers_once=mode.endswith("-layers-once"),
            kv_cache=kv_cache_of(mode),
        )
        fast = cc.optimize(model, cfg)
        call = lambda **kw: fast.generate(ids, mask, **kw)  # noqa: E731
    timed = time_call(call, device, repeats,
                      compiled=mode.startswith(("credit-compiled", "credit-graphs")))
    out, seconds = timed.pop("out"), timed["seconds"]
    return {"mode": mode, "nfe": out.nfe, "seconds": seconds,
            "tokens_per_s": out.generated.numel() / seconds,
            "ms_per_step": 1e3 * seconds / max(out.nfe, 1), **timed,
            "config": dataclasses.asdict(cfg), "sequences": out.sequences}


def time_call(call, device, repeats: int, compiled: bool, streams: bool = True) -> dict:
    """The median of `repeats` timed calls, after an untimed first one when `compiled` (its time
    is `compile_seconds`), with the last call's output (`out`), the median latency to the first
    streamed block (`streams`: the call takes `on_block`) and the peak device memory."""
    compile_seconds = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if compiled:
        start = time.perf_counter()
        call()
        sync(device)
        compile_seconds = time.perf_counter() - start
    times, first_block_times, out = [], [], None
    for _ in range(repeats):
        # Latency to the first block a server could send (streaming): the host reads it at the
        # completion check that already waits for the device, so the timing is unchanged.
        arrivals = []
        sync(device)
        start = time.perf_counter()
        if streams:
            out = call(on_block=lambda block, into=arrivals: into.append(time.perf_counter()))
        else:
            out = call()
        sync(device)
        times.append(time.perf_counter() - start)
        if streams:
            first_block_times.append(arrivals[0] - start)
    return {
        "seconds": sorted(times)[len(times) // 2],
        "first_block_ms": 1e3 * sorted(first_block_times)[len(first_block_times) // 2]
        if streams else None,
        "compile_seconds": compile_seconds,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
        "out": out,
    }


def bare_forward_graphed_ms(model, ids, base: cc.DecodeConfig) -> float | None:
    """One step's forward alone (hidden states + block-sliced LM head), compiled and graphed."""
    if ids.device.type != "cuda" or not hasattr(model, "forward_hidden"):
        return None
    canvas = torch.cat([ids, torch.full((ids.shape[0], base.gen_length), model.config.mask_token_id,
                                        device=ids.device, dtype=ids.dtype)], 1)
    positions = ids.shape[1] + torch.arange(base.block_length, device=ids.device)

    def forward():
        hidden = model.forward_hidden(canvas, None, None)
        return model.lm_head(hidden.index_select(1, positions))

    return graphed_ms(compile_fn(forward, fullgraph=True))


def graphed_ms(compiled) -> float:
    """Milliseconds per replay of `compiled()` captured as a CUDA graph (warmed up first)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            compiled()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        compiled()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / 20


# ------------------------------------------------------------------------------------------------
# LLaDA2 presets (tiny-llada2, llada2-mini): LLaDA2's own generate() against the block cache
# ------------------------------------------------------------------------------------------------

LLADA2_MODES = ["llada2-eager", "credit-block-eager", "credit-compiled-block", "credit-graphs-block",
                "threshold-compiled-block", "threshold-graphs-block", "llada2-compiled-block",
                "llada2-graphs-block"]
LLADA2_BASELINE = "llada2-eager"
# The official generate()'s threshold: the baseline's, and the llada2 strategy's here.
LLADA2_TAU = 0.95


def llada2_mode_config(mode: str, base: cc.DecodeConfig) -> cc.DecodeConfig:
    """The DecodeConfig a LLaDA2 mode other than the baseline decodes with: its strategy (the
    mode's first word) on the exact block cache; eager (the reference), compiled, or compiled
    and replayed as CUDA graphs."""
    strategy = mode.split("-")[0]
    graphs = "-graphs-" in mode
    compiled = graphs or "-compiled-" in mode
    cfg = base.replace(strategy=strategy, kv_cache="block", compile=compiled,
                       cuda_graphs="on" if graphs else "off",
                       **({"tau": LLADA2_TAU} if strategy == "llada2" else {}))
    return cfg if compiled else cfg.replace(sync_every=1)


def official_llada2_call(model, ids, base: cc.DecodeConfig):
    """LLaDA2's own generate() (`models.llada2_generate`: batch 1, every step a forward of the
    window up to the current block, no cache) on each row in turn, the official threshold and
    one step per token of a block. No end-of-text stops it (every mode decodes all of
    gen_length). Returns the call and the settings it decodes with."""
    from credit_compile.models.llada2_generate import llada2_generate

    settings = {"gen_length": base.gen_length, "block_length": base.block_length,
                "steps": base.llada2_steps, "threshold": LLADA2_TAU, "eos_id": -1}

    def call():
        rows, nfe = [], 0
        for row in ids:
            tokens, forwards = llada2_generate(model, row[None], **settings)
            rows.append(tokens)
            nfe += forwards
        return types.SimpleNamespace(generated=torch.cat(rows), nfe=nfe)

    return call, settings


def run_llada2_mode(mode: str, model, ids, base: cc.DecodeConfig, repeats: int) -> dict:
    """One LLaDA2 mode's timings (as `run_mode`); `generated` holds its tokens."""
    if mode == LLADA2_BASELINE:
        call, config = official_llada2_call(model, ids, base)
        timed = time_call(call, ids.device, repeats, compiled=False, streams=False)
    else:
        cfg = llada2_mode_config(mode, base)
        if cfg.compile:
            fast = cc.optimize(model, cfg)
            call = lambda **kw: fast.generate(ids, **kw)  # noqa: E731
        else:
            call = lambda **kw: cc.generate_reference(model, ids, config=cfg, **kw)  # noqa: E731
        timed = time_call(call, ids.device, repeats, compiled=cfg.compile)
        config = dataclasses.asdict(cfg)
    out, seconds = timed.pop("out"), timed["seconds"]
    return {"mode": mode, "nfe": out.nfe, "seconds": seconds,
            "tokens_per_s": out.generated.numel() / seconds,
            "ms_per_step": 1e3 * seconds / max(out.nfe, 1), **timed, "config": config,
            "generated": out.generated}


def llada2_canvas(model, ids, base: cc.DecodeConfig) -> torch.Tensor:
    """The prompt and masks up to the end of the last block, blocks aligned from position 0."""
    block = base.block_length
    total = -(-(ids.shape[1] + base.gen_length) // block) * block
    canvas = torch.full((ids.shape[0], total), model.config.mask_token_id, device=ids.device,
                        dtype=ids.dtype)
    canvas[:, :ids.shape[1]] = ids
    return canvas


def bare_block_forward(model, ids, base: cc.DecodeConfig):
    """What a cached step runs, alone, as a function of no arguments: the first generated
    block's tokens against the exact cache of the whole canvas (filled here), and the LM head on
    them."""
    block = base.block_length
    canvas = llada2_canvas(model, ids, base)
    dtype = next(model.parameters()).dtype
    cache = tuple(torch.zeros(model.kv_cache_shape(*canvas.shape), dtype=dtype, device=ids.device)
                  for _ in range(2))
    positions = ids.shape[1] // block * block + torch.arange(block, device=ids.device)
    tokens = canvas.index_select(1, positions)
    with torch.no_grad():
        model(canvas, block_length=block, kv_cache=cache)

    def forward():
        hidden = model.forward_hidden(tokens, None, None, block, cache, positions)
        return model.lm_head_logits(hidden)

    return forward


def bare_block_forward_ms(model, ids, base: cc.DecodeConfig) -> tuple[float, bool]:
    """`bare_block_forward` compiled, and on CUDA replayed as a graph: (milliseconds per call,
    whether graphed). Elsewhere the median of 5 rounds of 20 calls: a CPU shared with other work
    slows some rounds several times over."""
    compiled = compile_fn(bare_block_forward(model, ids, base), fullgraph=True)
    if ids.device.type == "cuda":
        return graphed_ms(compiled), True
    rounds = []
    with torch.no_grad():
        for _ in range(3):
            compiled()
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(20):
                compiled()
            rounds.append(1e3 * (time.perf_counter() - start) / 20)
    return sorted(rounds)[2], False


def run_llada2(preset: str, device, batches, gen_lengths, block: int, prompt_length: int, modes,
               repeats: int, out: Path) -> int:
    """The LLaDA2 rows: each mode's ratios against the official generate() of the same run."""
    model = bench_model(preset, device, block_length=block)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "commit": git_commit(), "preset": preset,
        "dtype": str(bench_dtype(preset)).replace("torch.", ""), "weights": "random",
        "init_std": init_std_of(model.config), "backend": backend_name(), **measure_peaks(device),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in batches:
        for gen_length in gen_lengths:
            base = cc.DecodeConfig(gen_length=gen_length, block_length=block, sync_every=8)
            ids, _ = make_prompts(batch, prompt_length, model.config.vocab_size,
                                  model.config.mask_token_id, device)
            floor_ms, graphed = bare_block_forward_ms(model, ids, base)
            baseline, credit_eager = None, None
            for mode in modes:
                result = run_llada2_mode(mode, model, ids, base, repeats)
                generated = result.pop("generated")
                if mode == LLADA2_BASELINE:
                    baseline = {**result, "generated": generated}
                credit_eager = generated if mode == "credit-block-eager" else credit_eager
                row = {**meta, "batch": batch, "gen_length": gen_length, "block_length": block,
                       "prompt_length": prompt_length, **result,
                       "bare_block_forward_ms": floor_ms, "bare_forward_graphed": graphed,
                       "step_over_bare_forward": result["ms_per_step"] / floor_ms}
                if baseline:
                    row["speedup_vs_llada2_eager"] = result["tokens_per_s"] / baseline["tokens_per_s"]
                if mode.startswith("credit-") and mode != "credit-block-eager" and credit_eager is not None:
                    row["equals_credit_block_eager"] = bool(torch.equal(generated, credit_eager))
                if mode.startswith("llada2-") and mode != LLADA2_BASELINE and baseline:
                    # The official softmax holds the mask token, the strategy's does not: the
                    # same tokens wherever p(mask) is negligible (docs/llada2.md).
                    row["token_agreement_with_llada2_eager"] = (
                        generated == baseline["generated"]).float().mean().item()
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("mode", "batch", "gen_length", "nfe",
                                                      "tokens_per_s", "ms_per_step")}), flush=True)
    print_table(meta, rows, "speedup_vs_llada2_eager")
    return 0


class ModesAction(argparse.Action):
    """--modes: the last list given runs (gpu_session.sh's dry run appends its own after the
    stage's), and `modes_given` keeps every list's modes, so that a stage's list is checked
    against the preset's family too."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.modes = values
        namespace.modes_given = [*getattr(namespace, "modes_given", ()), *values]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny",
                        choices=[*available_presets(), *LLADAMOE_PRESETS, *DREAM_PRESETS, TRAINED,
                                 *sorted(LLADA2_PRESETS)],
                        help="a random model of a preset's shapes, or 'trained': the shipped "
                             "default model on its held-out task prompts (meaningful NFE)")
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[1])
    parser.add_argument("--gen-length", type=positive_int, nargs="+", default=None,
                        help="default: 64 on tiny presets, 256 otherwise")
    parser.add_argument("--block-length", type=positive_int, default=None,
                        help="default: 16 on tiny presets, 32 otherwise")
    parser.add_argument("--prompt-length", type=positive_int, default=32)
    parser.add_argument("--modes", nargs="+", default=None, choices=[*MODES, *LLADA2_MODES],
                        action=ModesAction,
                        help="run in the order of MODES whatever the order given; given twice, "
                             "the last list runs and both are checked")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed runs per mode (median); default: 3 on tiny presets, 1 otherwise")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None,
                        help="default: benchmarks/results/generate.jsonl (LLaDA2 presets: "
                             "generate_llada2.jsonl)")
    add_cheap_compile_flag(parser)
    add_check_flags_flag(parser)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    trained = args.preset == TRAINED
    tiny = trained or is_tiny(args.preset)
    gen_lengths = args.gen_length if args.gen_length is not None else (
        [GEN_LENGTH] if trained else [64] if tiny else [256])
    block = args.block_length if args.block_length is not None else (
        BLOCK_LENGTH if trained else 16 if tiny else 32)
    repeats = args.repeats if args.repeats is not None else (3 if tiny else 1)
    # MODES order, not the order given: the baseline and credit-eager must run before the rows
    # that are compared with them.
    family = LLADA2_MODES if is_llada2(args.preset) else MODES
    foreign = [m for m in getattr(args, "modes_given", ()) if m not in family]
    if foreign:
        parser.error(f"modes {foreign} are not run on preset {args.preset!r}: choose among {family}")
    modes = [m for m in family if m in (args.modes or family)]
    for gen_length in gen_lengths:  # a bad length is a usage error, caught before the model loads
        try:
            decode_config(args.preset, gen_length=gen_length, block_length=block)
        except ValueError as exc:
            parser.error(str(exc))
    if args.check_flags:
        print(f"flags ok: preset {args.preset}, modes {' '.join(modes)}")
        return 0
    if device.type != "cuda" and any("-graphs" in m for m in modes):
        print("skipping the graphs modes: CUDA graphs need a CUDA device", file=sys.stderr)
        modes = [m for m in modes if "-graphs" not in m]
    if args.preset in DREAM_PRESETS and any("layers-once" in m for m in modes):
        print("skipping the layers-once modes: only LLaDA marks its layers", file=sys.stderr)
        modes = [m for m in modes if "layers-once" not in m]
    use_backend(args.cheap_compile)
    out = Path(args.out or RESULTS / ("generate_llada2.jsonl" if is_llada2(args.preset)
                                      else "generate.jsonl"))
    if is_llada2(args.preset):
        return run_llada2(args.preset, device, args.batch, gen_lengths, block, args.prompt_length,
                          modes, repeats, out)

    if trained:
        model, dtype = trained_model_and_prompts(1, device)[0], torch.float32
    else:
        model, dtype = bench_model(args.preset, device), bench_dtype(args.preset)
    peaks = measure_peaks(device)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "commit": git_commit(), "preset": args.preset,
        "dtype": str(dtype).replace("torch.", ""),
        "weights": "trained" if trained else "random",
        "init_std": None if trained else init_std_of(model.config), "backend": backend_name(),
        **peaks,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in args.batch:
        for gen_length in gen_lengths:
            base = cc.DecodeConfig(gen_length=gen_length, block_length=block, sync_every=8)
            if trained:
                _, ids, mask = trained_model_and_prompts(batch, device)
            else:
                ids, mask = make_prompts(batch, args.prompt_length, model.config.vocab_size,
                                         model.config.mask_token_id, device)
            prompt_length = ids.shape[1]
            seq = prompt_length + gen_length
            roof = step_roofline(model, batch, seq, block)
            floor_ms = bare_forward_graphed_ms(model, ids, base)
            baseline = None
            eager_tokens = {}  # credit-eager's and each cache's eager mode's
            for mode in modes:
                result = run_mode(mode, model, ids, mask, base, repeats)
                sequences = result.pop("sequences")
                if mode in ("credit-eager", *CACHED_EAGER.values()):
                    eager_tokens[mode] = sequences
                baseline = baseline or (result if mode == "llada-eager" else None)
                cache = kv_cache_of(mode)
                step = roof if cache == "none" else cached_roofline(
                    model, batch, seq, block, result["nfe"], gen_length // block,
                    cached_tokens=block if cache == "dual" else gen_length)
                row = {**meta, "batch": batch, "gen_length": gen_length, "block_length": block,
                       "prompt_length": prompt_length, **step, **result,
                       "bare_forward_graphed_ms": floor_ms}
                # A fast path is checked against the eager reference decoding as it does.
                reference = CACHED_EAGER.get(cache, "credit-eager")
                if reference in eager_tokens and mode.startswith("credit-") and mode != reference:
                    row[f"equals_{reference.replace('-', '_')}"] = bool(
                        torch.equal(sequences, eager_tokens[reference]))
                if cache != "none" and "credit-eager" in eager_tokens:
                    prompt_end = ids.shape[1]
                    row["token_agreement_with_credit_eager"] = (
                        sequences[:, prompt_end:] == eager_tokens["credit-eager"][:, prompt_end:]
                    ).float().mean().item()
                if baseline:
                    row["speedup_vs_llada_eager"] = result["tokens_per_s"] / baseline["tokens_per_s"]
                step_s = result["ms_per_step"] / 1e3
                if peaks["peak_gbps"]:
                    row["achieved_gbps"] = step["weight_bytes"] / step_s / 1e9
                    row["fraction_of_peak_bw"] = row["achieved_gbps"] / peaks["peak_gbps"]
                    row["achieved_tflops"] = step["step_flops"] / step_s / 1e12
                    row["fraction_of_peak_flops"] = row["achieved_tflops"] / peaks["peak_tflops"]
                if floor_ms:
                    row["step_over_bare_forward"] = result["ms_per_step"] / floor_ms
                rows.append(row)
                # Appended as measured: a run stopped at a time limit keeps what it finished.
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("mode", "batch", "gen_length", "nfe",
                                                      "tokens_per_s", "ms_per_step")}), flush=True)

    print_table(meta, rows, "speedup_vs_llada_eager")
    return 0


def print_table(meta: dict, rows: list[dict], speedup: str) -> None:
    """The run's rows, one line each; `speedup` names the ratio to the run's baseline."""
    def num(value):
        return float("nan") if value is None else value

    print(f"\n{meta['device']}  torch {meta['torch']}  commit {meta['commit']}  preset {meta['preset']}")
    header = (f"{'mode':<28}{'B':>3}{'gen':>6}{'NFE':>6}{'tok/s':>10}{'ms/step':>10}"
              f"{'compile s':>10}{'vs base':>9}{'vs fwd':>8}{'peak GB':>9}{'1st blk ms':>11}")
    print(header)
    for r in rows:
        print(f"{r['mode']:<28}{r['batch']:>3}{r['gen_length']:>6}{r['nfe']:>6}"
              f"{r['tokens_per_s']:>10.1f}{r['ms_per_step']:>10.2f}{r['compile_seconds']:>10.1f}"
              f"{num(r.get(speedup)):>8.2f}x"
              f"{num(r.get('step_over_bare_forward')):>7.2f}x"
              f"{num(r['peak_memory_gb']):>9.1f}"
              f"{num(r.get('first_block_ms')):>11.1f}")


if __name__ == "__main__":
    sys.exit(main())
