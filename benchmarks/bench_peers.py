"""Side by side with the peers' own decoding code: Fast-dLLM and dInfer, same weights, one process.

    python benchmarks/bench_peers.py --preset tiny --fastdllm ~/src/Fast-dLLM --dinfer ~/src/dInfer
        # CPU; on a CPU shared with other work, OMP_NUM_THREADS=1 steadies the figures
    python benchmarks/bench_peers.py --preset llada-8b --batch 1 8 --gen-length 256 \\
        --fastdllm ~/src/Fast-dLLM --dinfer ~/src/dInfer              # GPU, random bf16 weights

The peers' code is imported at run time from the checkouts given (nothing of it is copied into
this project) and each row records the checkout's git commit. Fast-dLLM needs its own
requirements (einops). Pairs, each run in one process on the same weights and prompts:

  fastdllm-threshold     Fast-dLLM `generate(threshold=)`                 vs optimize(strategy="threshold")
  fastdllm-dual-cache    Fast-dLLM `generate_with_dual_cache(threshold=)` vs the same with kv_cache="dual"
  fastdllm-prefix-cache  Fast-dLLM `generate_with_prefix_cache(threshold=)` vs kv_cache="prompt":
                         different caches (Fast-dLLM keeps everything before the current block
                         and runs the block and all after it; ours keeps the prompt and runs the
                         whole generated region), so the tokens may differ
  dinfer-credit          dInfer's CreditThresholdParallelDecoder vs optimize(strategy="credit")

Fast-dLLM's functions take one prompt at a time: a batch is its rows one after another (their NFE
summed). dInfer's serving engine needs vLLM or SGLang and is not run: its decoder runs in a plain
loop here (one forward of the whole sequence per step, the block's logits to `decoder.decode`,
until the block has no mask), batched; each row says how (`peer_runner`, and `peer_engine_note`
with the reason dInfer's package did not import). The peer runs the official remote-code LLaDA
(Fast-dLLM's `llada/model/modeling_llada.py`) holding this project's random weights; without
--fastdllm, dInfer's decoder runs on this project's eager LLaDA. Ours is `credit_compile.optimize`
of that same official model (adopted on its own parameters, no copy), default settings
(compiled, CUDA graphs on a GPU).

Per pair and side (timed in turn, round after round: a machine whose load drifts slows both
alike): tokens/s (generated tokens only, not the prompt), NFE, ms per step, the first
call's seconds (compiles: ours, and dInfer's torch.compile'd threshold rule), peak memory (CUDA:
allocated; CPU: the process's resident set, weights included); and whether the tokens are equal,
the fraction that agree and the first difference (row, position in the generated region). No
end-of-text stops either side. Rows are appended to benchmarks/results/peers.jsonl; `backend`
says what ours compiled with: "inductor", or "cheap" under the developer flag --cheap-compile
(dry runs: dynamo and the FX passes without Inductor; no measurement).

The tiny preset's random model is drawn confident (--init-std, default 2.0) so that threshold
decoding commits several tokens per step, as a trained model does; at real shapes random weights
are never confident (about one token per step) and only the per-step figures mean something.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import NamedTuple

import torch
from benchutil import (
    add_cheap_compile_flag,
    bench_dtype,
    bench_model,
    decode_config,
    init_std_of,
    positive_int,
    use_backend,
)
from provenance import git_commit

import credit_compile as cc

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("tiny", "llada-8b")
# A random tiny model at this init_std commits several tokens per step at threshold 0.9 (about
# 2.8 at gen 64, block 16; 3.4 with credit): parallel decoding is what both sides are built for.
TINY_CONFIDENT_STD = 2.0


class Pair(NamedTuple):
    peer: str  # "fastdllm" or "dinfer"
    function: str  # what of the peer's runs
    strategy: str  # ours
    kv_cache: str = "none"
    note: str | None = None


PAIRS = {
    "fastdllm-threshold": Pair("fastdllm", "llada/generate.py:generate", "threshold"),
    "fastdllm-dual-cache": Pair("fastdllm", "llada/generate.py:generate_with_dual_cache",
                                "threshold", "dual"),
    "fastdllm-prefix-cache": Pair(
        "fastdllm", "llada/generate.py:generate_with_prefix_cache", "threshold", "prompt",
        "different caches: Fast-dLLM keeps everything before the current block and runs the rest; "
        "ours keeps the prompt and runs the generated region"),
    "dinfer-credit": Pair("dinfer", "python/dinfer/decoding/parallel_strategy.py:"
                          "CreditThresholdParallelDecoder", "credit"),
}
PEER_NAMES = {"fastdllm": "Fast-dLLM", "dinfer": "dInfer"}
# A file each checkout must have: what the benchmark imports from it.
PEER_FILES = {"fastdllm": ("llada/generate.py", "llada/model/modeling_llada.py",
                           "llada/model/configuration_llada.py"),
              "dinfer": ("python/dinfer/decoding/parallel_strategy.py",)}
PEER_REPOS = {"fastdllm": "https://github.com/NVlabs/Fast-dLLM",
              "dinfer": "https://github.com/inclusionAI/dInfer"}
# Official config keys that are bookkeeping, not architecture (as models/remote.py).
_NOT_ARCHITECTURE = {"architectures", "auto_map", "transformers_version", "model_type", "dtype",
                     "torch_dtype", "_name_or_path", "use_cache", "return_dict"}


# ------------------------------------------------------------------------------------------------
# The peers' code, imported from their checkouts
# ------------------------------------------------------------------------------------------------

def checkout_error(peer: str, root: Path) -> str | None:
    """Why `root` is not a checkout of `peer` (the files the benchmark imports), or None."""
    missing = [f for f in PEER_FILES[peer] if not (root / f).is_file()]
    if not missing:
        return None
    return (f"{root} is not a checkout of {PEER_NAMES[peer]}: it has no {', '.join(missing)}; "
            f"clone {PEER_REPOS[peer]} and pass the clone's root")


def peer_commit(root: Path) -> str:
    """The checkout's git HEAD, with `-dirty` when its tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head}-dirty" if dirty else head


def import_fresh(root: Path, names: list[str]) -> list[types.ModuleType]:
    """Import `names` from `root`, put first on sys.path for the import only, dropping earlier
    modules of the same top-level names (Fast-dLLM's are the generic `generate` and `model`)."""
    tops = {name.split(".")[0] for name in names}
    for loaded in [m for m in sys.modules if m.split(".")[0] in tops]:
        del sys.modules[loaded]
    sys.path.insert(0, str(root))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(root))


def load_fastdllm(root: Path) -> types.SimpleNamespace:
    """Fast-dLLM's `llada/generate.py` and the official remote-code model it imports."""
    generate, modeling, configuration = import_fresh(
        root / "llada", ["generate", "model.modeling_llada", "model.configuration_llada"])
    return types.SimpleNamespace(generate=generate, modeling=modeling, configuration=configuration)


def load_dinfer(root: Path) -> tuple[type, str]:
    """dInfer's CreditThresholdParallelDecoder, and why its package (the engine) did not import.

    dInfer's `__init__` imports its serving engine, which needs vLLM; the decoder's own module
    needs only torch. When the package does not import, its folders are registered as bare
    packages so that `dinfer.decoding.parallel_strategy` imports alone."""
    python = root / "python"
    note = "dInfer's engine is not run (its package imported)"
    try:
        (module,) = import_fresh(python, ["dinfer.decoding.parallel_strategy"])
    except ImportError as error:
        note = f"dInfer's engine is not run: its package does not import ({error})"
        for loaded in [m for m in sys.modules if m.split(".")[0] == "dinfer"]:
            del sys.modules[loaded]
        for name in ("dinfer", "dinfer.decoding"):
            package = types.ModuleType(name)
            package.__path__ = [str(python.joinpath(*name.split(".")))]
            sys.modules[name] = package
        sys.path.insert(0, str(python))
        try:
            module = importlib.import_module("dinfer.decoding.parallel_strategy")
        finally:
            sys.path.remove(str(python))
    return module.CreditThresholdParallelDecoder, note


def official_model(fastdllm: types.SimpleNamespace, native: torch.nn.Module) -> torch.nn.Module:
    """The official remote-code LLaDAModelLM holding `native`'s parameter tensors (no copy).

    Built on the meta device (the official constructor allocates on the CPU and initialises
    every weight otherwise: minutes at 8B), then given the tensors."""
    fields = {k: v for k, v in native.config.to_dict().items() if k not in _NOT_ARCHITECTURE}
    config = fastdllm.configuration.LLaDAConfig(**fields)
    model_config = fastdllm.modeling.create_model_config_from_pretrained_config(config)
    model_config.init_device = "meta"
    with torch.device("meta"):
        body = fastdllm.modeling.LLaDAModel(model_config, init_params=False)
    remote = fastdllm.modeling.LLaDAModelLM(config, model=body)
    own = native.state_dict()
    remote.load_state_dict({name: own[name] for name in remote.state_dict()}, assign=True)
    # transformers 5 drops the config's `use_cache`; the official forward reads it when the
    # caller (Fast-dLLM's generate) does not pass it.
    remote.config.use_cache = False
    return remote.eval()


# ------------------------------------------------------------------------------------------------
# The calls measured
# ------------------------------------------------------------------------------------------------

def fastdllm_call(fastdllm, pair: Pair, model, ids, base: cc.DecodeConfig, mask_id: int):
    """Fast-dLLM's function on each row in turn (it decodes one prompt), greedy."""
    function = getattr(fastdllm.generate, pair.function.rpartition(":")[2])

    def call():
        rows, nfe = [], 0
        for row in ids:
            tokens, forwards = function(model, row[None], steps=base.gen_length,
                                        gen_length=base.gen_length, block_length=base.block_length,
                                        temperature=0.0, remasking="low_confidence",
                                        mask_id=mask_id, threshold=base.tau)
            rows.append(tokens[:, ids.shape[1]:])
            nfe += int(forwards)
        return types.SimpleNamespace(generated=torch.cat(rows), nfe=nfe)

    return call


def dinfer_call(decoder_class, model, ids, base: cc.DecodeConfig, mask_id: int):
    """dInfer's credit decoder, its defaults but our threshold, in a plain block loop: a forward
    of the whole sequence per step and the block's logits to `decode`, until the block has no
    mask. eos_id -1: no end-of-text (ours decodes all of gen_length too)."""
    prompt_length = ids.shape[1]

    def call():
        decoder = decoder_class(temperature=0.0, threshold=base.tau, mask_id=mask_id, eos_id=-1)
        x = torch.cat([ids, torch.full((ids.shape[0], base.gen_length), mask_id,
                                       dtype=ids.dtype, device=ids.device)], 1)
        nfe = 0
        with torch.no_grad():
            for start in range(prompt_length, x.shape[1], base.block_length):
                end = start + base.block_length
                decoder.block_init(x[:, start:end], (start - prompt_length) // base.block_length)
                while (x[:, start:end] == mask_id).any():
                    logits = model(x).logits[:, start:end]
                    decoder.decode(logits, start, end, x)
                    nfe += 1
        return types.SimpleNamespace(generated=x[:, prompt_length:], nfe=nfe)

    return call


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: "5" resets the process's peak resident set (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_gb(device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if kb is None else int(kb) * 1024 / 1e9


def timed(call, device) -> tuple[float, float | None, object]:
    """One call: its seconds, the peak memory during it, its output."""
    reset_peak_memory(device)
    sync(device)
    start = time.perf_counter()
    out = call()
    sync(device)
    return time.perf_counter() - start, peak_memory_gb(device), out


def measure(calls: dict, device, repeats: int) -> dict:
    """Each call once untimed (`first_call_seconds`, compiles included), then `repeats` rounds
    timing each call in turn: interleaved, so that a machine whose load drifts slows every side
    alike. Per call: the median, the peak memory over its calls and the last output's figures."""
    first = {name: timed(call, device) for name, call in calls.items()}
    runs = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            runs[name].append(timed(call, device))
    result = {}
    for name, done in runs.items():
        seconds = sorted(t for t, _, _ in done)[len(done) // 2]
        peaks = [p for _, p, _ in [first[name], *done] if p is not None]
        out = done[-1][2]
        result[name] = {"nfe": out.nfe, "seconds": seconds,
                        "tokens_per_s": out.generated.numel() / seconds,
                        "ms_per_step": 1e3 * seconds / max(out.nfe, 1),
                        "first_call_seconds": first[name][0],
                        "peak_memory_gb": max(peaks) if peaks else None,
                        "generated": out.generated}
    return result


def agreement(ours: torch.Tensor, peer: torch.Tensor) -> dict:
    """Whether two [B, gen] token tensors are equal, the fraction that agree, and the first
    difference (row, then position in the generated region) or None."""
    differ = ours != peer
    first = None
    if differ.any():
        row = int(differ.any(1).nonzero()[0])
        first = {"row": row, "position": int(differ[row].nonzero()[0])}
    return {"tokens_equal": not bool(differ.any()),
            "token_agreement": 1.0 - differ.float().mean().item(), "first_difference": first}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def make_prompts(batch: int, prompt_length: int, vocab: int, mask_id: int, device):
    """Random prompts (seed 0) of ordinary ids below the mask id."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, min(vocab, mask_id), (batch, prompt_length), generator=g).to(device)


def run_pair(name: str, peers: dict, models: dict, ids, base: cc.DecodeConfig, mask_id: int,
             repeats: int) -> dict:
    """One pair's row fields: the peer's figures, ours, the ratio and the agreement."""
    pair = PAIRS[name]
    cfg = base.replace(strategy=pair.strategy, kv_cache=pair.kv_cache)
    if pair.peer == "fastdllm":
        call = fastdllm_call(peers["fastdllm"]["code"], pair, models["peer"], ids, base, mask_id)
    else:
        call = dinfer_call(peers["dinfer"]["code"], models["peer"], ids, base, mask_id)
    fast = cc.optimize(models["ours"], cfg)
    sides = measure({"peer": call, "ours": lambda: fast.generate(ids)}, ids.device, repeats)
    peer, ours = sides["peer"], sides["ours"]
    peer_tokens, our_tokens = peer.pop("generated"), ours.pop("generated")
    return {
        "pair": name, "peer": PEER_NAMES[pair.peer], "peer_commit": peers[pair.peer]["commit"],
        "peer_function": pair.function,
        "peer_runner": ("Fast-dLLM's function, one row at a time" if pair.peer == "fastdllm"
                        else "dInfer's decoder in a plain block loop, batched"),
        "peer_engine_note": peers[pair.peer].get("note"), "peer_model": models["peer_name"],
        "note": pair.note,
        **{f"peer_{k}": v for k, v in peer.items()}, **{f"ours_{k}": v for k, v in ours.items()},
        "speedup_vs_peer": ours["tokens_per_s"] / peer["tokens_per_s"],
        **agreement(our_tokens, peer_tokens),
        "ours_runner": fast.last_stats.get("runner"), "ours_config": dataclasses.asdict(cfg),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fastdllm", type=Path, default=None,
                        help="a checkout of Fast-dLLM (github.com/NVlabs/Fast-dLLM)")
    parser.add_argument("--dinfer", type=Path, default=None,
                        help="a checkout of dInfer (github.com/inclusionAI/dInfer)")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=None,
                        help="default: every pair whose peer's checkout is given")
    parser.add_argument("--preset", choices=PRESETS, default="tiny",
                        help="random weights of these shapes: tiny (CPU, float32), llada-8b "
                             "(LLaDA-8B's shapes, bf16: a GPU)")
    parser.add_argument("--batch", type=positive_int, nargs="+", default=[1])
    parser.add_argument("--gen-length", type=positive_int, default=None,
                        help="default: 64 on tiny, 256 on llada-8b")
    parser.add_argument("--block-length", type=positive_int, default=None,
                        help="default: 16 on tiny, 32 on llada-8b")
    parser.add_argument("--prompt-length", type=positive_int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="the confidence threshold of both sides (Fast-dLLM's `threshold`, "
                             "dInfer's and ours `tau`)")
    parser.add_argument("--init-std", type=float, default=None,
                        help=f"std of the random weights; default: {TINY_CONFIDENT_STD} on tiny "
                             "(a confident model), the preset's otherwise")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed calls per side (median); default: 3 on tiny, 1 otherwise")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.jsonl")
    add_cheap_compile_flag(parser)
    args = parser.parse_args(argv)

    roots = {peer: root for peer, root in (("fastdllm", args.fastdllm), ("dinfer", args.dinfer))
             if root is not None}
    if not roots:
        parser.error("give --fastdllm DIR and/or --dinfer DIR: checkouts of "
                     f"{PEER_REPOS['fastdllm']} and {PEER_REPOS['dinfer']}")
    for peer, root in roots.items():
        error = checkout_error(peer, root)
        if error:
            parser.error(error)
    pairs = args.pairs or [name for name, pair in PAIRS.items() if pair.peer in roots]
    unmet = [name for name in pairs if PAIRS[name].peer not in roots]
    if unmet:
        parser.error(f"pairs {unmet} need --{PAIRS[unmet[0]].peer} DIR (a checkout of "
                     f"{PEER_NAMES[PAIRS[unmet[0]].peer]})")
    tiny = args.preset == "tiny"
    gen_length = args.gen_length or (64 if tiny else 256)
    block = args.block_length or (16 if tiny else 32)
    repeats = args.repeats or (3 if tiny else 1)
    try:  # a bad length or threshold is a usage error, caught before the model is built
        base = decode_config(args.preset, gen_length=gen_length, block_length=block,
                             tau=args.threshold)
    except ValueError as error:
        parser.error(str(error))

    peers = {peer: {"commit": peer_commit(root)} for peer, root in roots.items()}
    try:
        if "fastdllm" in roots:
            peers["fastdllm"]["code"] = load_fastdllm(roots["fastdllm"])
        if "dinfer" in roots:
            peers["dinfer"]["code"], peers["dinfer"]["note"] = load_dinfer(roots["dinfer"])
    except ImportError as error:
        parser.error(f"the peer's code does not import ({error}): install its requirements "
                     f"(Fast-dLLM's model needs einops)")
    device = torch.device(args.device)
    init_std = args.init_std if args.init_std is not None else TINY_CONFIDENT_STD if tiny else None
    native = bench_model(args.preset, device, **({"init_std": init_std} if init_std else {}))
    mask_id = native.config.mask_token_id
    if "fastdllm" in roots:
        model = official_model(peers["fastdllm"]["code"], native)
        models = {"peer": model, "ours": model,
                  "peer_name": "the official remote-code LLaDA (Fast-dLLM's llada/model)"}
    else:
        models = {"peer": native, "ours": native,
                  "peer_name": "credit_compile's LLaDA, eager (no official model without "
                               "--fastdllm)"}
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "commit": git_commit(), "preset": args.preset,
        "dtype": str(bench_dtype(args.preset)).replace("torch.", ""), "weights": "random",
        "init_std": init_std_of(native.config), "threshold": args.threshold,
        "threads": torch.get_num_threads(), "backend": use_backend(args.cheap_compile),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in args.batch:
        ids = make_prompts(batch, args.prompt_length, native.config.vocab_size, mask_id, device)
        for name in pairs:
            row = {**meta, "batch": batch, "gen_length": gen_length, "block_length": block,
                   "prompt_length": args.prompt_length,
                   **run_pair(name, peers, models, ids, base, mask_id, repeats)}
            rows.append(row)
            with args.out.open("a") as f:  # appended as measured: a cut run keeps what it did
                f.write(json.dumps(row) + "\n")
    print_table(meta, rows)
    return 0


def print_table(meta: dict, rows: list[dict]) -> None:
    print(f"\n{meta['device']}  torch {meta['torch']}  commit {meta['commit']}  "
          f"preset {meta['preset']} ({meta['dtype']}, init_std {meta['init_std']})")
    print(f"{'pair':<23}{'B':>3}{'peer NFE':>9}{'ours NFE':>9}{'peer tok/s':>11}"
          f"{'ours tok/s':>11}{'ours/peer':>10}{'peer ms':>9}{'ours ms':>9}  tokens")
    for r in rows:
        same = "equal" if r["tokens_equal"] else (
            f"{r['token_agreement']:.0%} agree, first differ row {r['first_difference']['row']} "
            f"pos {r['first_difference']['position']}")
        print(f"{r['pair']:<23}{r['batch']:>3}{r['peer_nfe']:>9}{r['ours_nfe']:>9}"
              f"{r['peer_tokens_per_s']:>11.1f}{r['ours_tokens_per_s']:>11.1f}"
              f"{r['speedup_vs_peer']:>9.2f}x{r['peer_ms_per_step']:>9.2f}"
              f"{r['ours_ms_per_step']:>9.2f}  {same}")
    for note in sorted({r["peer_engine_note"] for r in rows if r["peer_engine_note"]}):
        print(note)


if __name__ == "__main__":
    sys.exit(main())
