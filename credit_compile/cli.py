"""The `credit-compile` command line.

    credit-compile generate --prompt "0002+0002="   # CreditDecoding through the optimized path
    credit-compile verify --prompt "0012+0034="   # eager reference vs optimized, a report
    credit-compile demo                           # both side by side: same output, the speedup
    credit-compile bench generate --preset tiny   # benchmarks/bench_<suite>.py

Without `--model`, the embedded default model is used: a small LLaDA-architecture diffusion LM
trained by `python -m credit_compile.training.train` on synthetic tasks (4-digit addition
"0012+0034=", reversal "R1234=", sorting "S4213=", and any permutation of the digits "P4213="),
shipped inside the package with its tokenizer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

RANDOM_MODEL_NOTE = (
    "note: no --model given and the embedded default model's files are missing from this "
    "installation; using a randomly initialised tiny LLaDA with a character tokenizer, so the "
    "text is noise (the decoding is real)"
)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (LLaDA config.json + weights); "
                                   "default: the embedded trained model")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    p.add_argument("--chat", action="store_true",
                   help="wrap each prompt as a user turn in the tokenizer's chat template, with "
                        "the assistant's turn opened (instruction-tuned models, e.g. "
                        "LLaDA-8B-Instruct; a base model takes the text as it is)")
    p.add_argument("--strategy", default="credit", choices=["credit", "threshold", "factor", "llada"])
    p.add_argument("--gen-length", type=int, default=None,
                   help="tokens to generate (default: 16 on the embedded model, whose answers "
                        "are EOS-padded to 16 tokens, else 64, or less where the model's "
                        "context leaves less after the prompt)")
    p.add_argument("--block-length", type=int, default=None,
                   help="block length (default: 8 on the embedded model, else 16)")
    p.add_argument("--steps", type=int, default=None,
                   help="total denoising steps of --strategy llada (default: one per token); "
                        "credit and threshold stop a block once it is filled")
    p.add_argument("--alpha", type=float, default=0.7,
                   help="weight of the trace credit fused into the logits, l + alpha*log1p(C) "
                        "(0: plain threshold decoding)")
    p.add_argument("--beta", type=float, default=0.8,
                   help="decay of the credit at each step of a block")
    p.add_argument("--gamma", type=float, default=0.2,
                   help="exponent of the top-1 probability a step adds to the credit")
    p.add_argument("--tau", type=float, default=0.9,
                   help="confidence threshold of the parallel commits (credit, threshold)")
    p.add_argument("--factor", type=float, default=1.0,
                   help="--strategy factor: commit the n most confident tokens, n the longest "
                        "run of sorted confidences c_i >= 1 - factor/(i+1)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="--strategy llada: Gumbel-noise sampling temperature (0: greedy)")
    p.add_argument("--cfg-scale", type=float, default=0.0,
                   help="classifier-free guidance scale (--strategy llada)")
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"],
                   help="which tokens --strategy llada commits each step")
    p.add_argument("--early-stop", action="store_true",
                   help="stop a row once it has committed end-of-text with no mask before it")
    p.add_argument("--suppress-tokens", type=int, nargs="+", default=None, metavar="ID",
                   help="token ids never proposed (LLaDA's logits_eos_inf: 126081 on LLaDA-8B)")
    p.add_argument("--commit-last-tokens", type=int, nargs="+", default=None, metavar="ID",
                   help="--strategy llada: proposals of these ids commit last (LLaDA's "
                        "confidence_eos_eot_inf: 126081 126348 on LLaDA-8B-Instruct)")
    p.add_argument("--credit-layout", default="sparse", choices=["dense", "sparse"],
                   help="credit over the whole vocabulary (dense) or the tokens ever top-1 "
                        "(sparse, exact, less memory)")
    p.add_argument("--no-compile", action="store_true", help="run the step eagerly")
    p.add_argument("--on-compile-error", default="raise", choices=["raise", "eager"],
                   help="a step that does not compile as one graph: raise, or warn and run it "
                        "eagerly (the reference's tokens, without the speedup)")
    p.add_argument("--compile-layers-once", action="store_true",
                   help="compile one transformer layer for all of them (faster compile)")
    p.add_argument("--kv-cache", default="none", choices=["none", "prompt", "dual"],
                   help="approximate, credit_compile's LLaDA model only. prompt: a block's later "
                        "steps run the generated region against the prompt's keys and values "
                        "kept at its first step; dual: Fast-dLLM's DualCache, the block's "
                        "tokens only against the kept ones of the rest")
    p.add_argument("--kv-cache-refresh", type=int, default=None, metavar="K",
                   help="with --kv-cache, also refresh the cache every K steps of a block "
                        "(default: at a block's first step only)")
    p.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
                   help="replay the compiled step as a CUDA graph (auto: on CUDA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--mask-id", type=int, default=None,
                   help="the model's mask token (default: its config's mask_token_id)")
    p.add_argument("--eos-token-id", type=int, nargs="+", default=None, metavar="ID",
                   help="end-of-text token(s) of --early-stop (default: its config's "
                        "eos_token_id)")
    p.add_argument("--prompt-bucket", type=int, default=None,
                   help="left-pad prompts to a multiple of this many tokens, so nearby prompt "
                        "lengths share one compiled step (tokens unchanged up to float rounding)")
    p.add_argument("--batch-bucket", type=int, default=None,
                   help="pad the batch with copies of its last prompt to a multiple of this many "
                        "rows, so nearby batch sizes share one compiled step")


def _or(value, default):
    return default if value is None else value


def _decode_config(args):
    from .config import DecodeConfig

    if args.steps is not None and args.strategy != "llada":
        raise ValueError(f"--steps applies to --strategy llada only; --strategy {args.strategy} "
                         f"takes as many steps as its threshold needs: drop --steps or use "
                         f"--strategy llada")
    embedded = args.model is None
    if not args.prompt and not embedded:
        raise ValueError("no --prompt: give one (repeat --prompt for a batch); only the "
                         "embedded default model has a default prompt")
    if not args.chat and "" in (args.prompt or ()):
        raise ValueError("--prompt '' is empty: the model needs a prompt to answer (give it "
                         "text, or use --chat, whose template gives the turn's text)")
    return DecodeConfig(
        strategy=args.strategy, gen_length=_or(args.gen_length, 16 if embedded else 64),
        block_length=_or(args.block_length, 8 if embedded else 16),
        steps=args.steps, alpha=args.alpha, beta=args.beta, gamma=args.gamma, tau=args.tau,
        factor=args.factor,
        temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
        early_stop=args.early_stop, suppress_tokens=args.suppress_tokens,
        commit_last_tokens=args.commit_last_tokens, credit_layout=args.credit_layout,
        compile=not getattr(args, "no_compile", False), cuda_graphs=args.cuda_graphs,
        compile_layers_once=args.compile_layers_once, on_compile_error=args.on_compile_error,
        kv_cache=args.kv_cache,
        kv_cache_refresh=args.kv_cache_refresh, dtype=args.dtype, seed=args.seed,
        prompt_bucket=args.prompt_bucket, batch_bucket=args.batch_bucket, mask_id=args.mask_id,
        eos_token_id=args.eos_token_id,
    )


def _fit_default_gen_length(args, config, model, ids):
    """`config` with the default gen_length of a --model checkpoint lowered to what its context
    leaves after the prompt (a multiple of block_length), said on stderr; an explicit
    --gen-length, or one that fits, is kept (validation names the fix where nothing fits)."""
    import dataclasses

    from .adapters import describe_model

    if args.gen_length is not None or args.model is None:
        return config
    max_length = describe_model(model).max_length
    room = None if max_length is None else max_length - ids.shape[1]
    fitting = None if room is None else room // config.block_length * config.block_length
    if not fitting or fitting >= config.gen_length:
        return config
    print(f"--gen-length {fitting}: what the model's context of {max_length} tokens leaves after "
          f"a prompt of {ids.shape[1]} (default {config.gen_length}; give --gen-length to choose)",
          file=sys.stderr)
    return dataclasses.replace(config, gen_length=fitting)


def load_model_and_tokenizer(model_dir: str | None, device: str | None, dtype: str | None = None):
    """The model (on `device`, cast to `dtype` when given: the eager reference and optimize()
    then run the same weights) and its tokenizer."""
    model, tokenizer, device = _load(model_dir, device)
    if dtype is not None:
        import torch

        model = model.to(getattr(torch, dtype))
    return model, tokenizer, device


def _load(model_dir: str | None, device: str | None):
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise SystemExit(f"error: --device {device!r} is not a device ({error}); use cpu or cuda") \
            from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device!r} but CUDA is not available here; use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {device!r}: credit_compile runs on cpu or cuda")
    if model_dir is None:
        from .assets import has_default_model, load_default_model

        if has_default_model():
            model, tokenizer = load_default_model(device)
            return model, tokenizer, device
        from .models import build_model
        from .toy_tokenizer import CharTokenizer

        print(RANDOM_MODEL_NOTE, file=sys.stderr)
        return build_model("tiny", device=device, seed=0), CharTokenizer(), device
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise SystemExit(
            f"error: no checkpoint at {model_dir!r}: expected a directory with config.json and "
            f"weights (as saved by save_pretrained)"
        )
    from transformers import AutoTokenizer

    from .models import LLaDAModelLM
    from .tokenizer import TOKENIZER_FILE, CharTokenizer

    model = LLaDAModelLM.from_pretrained(path).to(device).eval()
    if (path / TOKENIZER_FILE).is_file():  # this project's tokenizer (the trainer writes it)
        return model, CharTokenizer.from_pretrained(path), device
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # a checkpoint without tokenizer files
        raise SystemExit(
            f"error: no tokenizer in {model_dir!r} ({error}); save one beside the weights with "
            f"tokenizer.save_pretrained (a transformers tokenizer, or credit_compile.tokenizer."
            f"CharTokenizer)") from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # LLaDA pads with end-of-text; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, device


def _prompts(args, tokenizer, device):
    prompts = args.prompt or ["0012+0034="]
    texts = [_chat_turn(tokenizer, prompt) for prompt in prompts] if args.chat else prompts
    # Prompts of different lengths are padded (transformers tokenizers pad only when asked).
    batch = tokenizer(texts, return_tensors="pt", padding=len(prompts) > 1)
    if hasattr(batch, "to"):
        batch = batch.to(device)
    ids = batch["input_ids"].to(device)
    mask = batch.get("attention_mask")
    return prompts, ids, None if mask is None else mask.to(device)


def _chat_turn(tokenizer, prompt: str) -> str:
    """`prompt` as a user turn of the tokenizer's chat template, the assistant's turn opened, as
    text (tokenized as a plain prompt after, as LLaDA's own generate.py does)."""
    if not callable(getattr(tokenizer, "apply_chat_template", None)) or not getattr(
            tokenizer, "chat_template", None):
        raise ValueError(f"--chat needs a tokenizer with a chat template, and this "
                         f"{type(tokenizer).__name__} has none: drop --chat (a base model "
                         f"takes the prompt as it is), or load an instruction-tuned "
                         f"checkpoint whose tokenizer_config.json has one")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)


COMPILING = "compiling the denoising step for this shape (first call only)"


def _progress_bar(total: int | None, compiling: bool = False):
    """A bar of `total` steps, or a count of steps when the number is not known in advance;
    with `compiling`, it says so until the first steps are reported (a compile takes seconds to
    a minute, before any step)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=COMPILING if compiling else "denoising", unit=" steps",
               file=sys.stderr, leave=False)

    def progress(steps: int) -> None:
        if bar.desc != "denoising":  # compiled: its rate starts now
            bar.set_description_str("denoising", refresh=False)
            bar.reset(total=total)
        # Steps run after completion are no-ops: the bar stops at its total.
        bar.update((steps if total is None else min(steps, total)) - bar.n)

    return bar, progress


def _block_printer(bar, prompts, tokenizer, num_blocks: int):
    """An `on_block` that prints, per prompt, the text each finished block adds (through the
    bar, which would otherwise draw over the line); `TextStream` holds back a character cut
    across blocks until it is whole."""
    from .text_stream import TextStream

    stream = TextStream(tokenizer, num_blocks=num_blocks)

    def print_block(block) -> None:
        for prompt, added in zip(prompts, stream.add(block), strict=True):
            bar.write(f"block {block.index}: {prompt!r} -> {added!r}", file=sys.stdout)
        sys.stdout.flush()

    return print_block


def cmd_generate(args) -> int:
    from .api import optimize
    from .reference import generate as generate_reference

    config = _decode_config(args)  # a bad option fails before the model loads
    model, tokenizer, device = load_model_and_tokenizer(args.model, args.device, args.dtype)
    prompts, ids, mask = _prompts(args, tokenizer, device)
    config = _fit_default_gen_length(args, config, model, ids)
    # Before the bar: optimize()'s refusals and warnings print on lines of their own.
    fast = None if args.eager else optimize(model, config)
    # LLaDA's sampler takes `total_steps`; the others stop when every token is committed, which
    # no count known in advance says (a bar to gen_length would stop far short of its end).
    bar, progress = _progress_bar(config.total_steps if config.strategy == "llada" else None,
                                  compiling=config.compile and not args.eager)
    on_block = _block_printer(bar, prompts, tokenizer, config.num_blocks) if args.stream else None
    start = time.perf_counter()
    try:
        if fast is None:
            out = generate_reference(model, ids, mask, config, progress=progress,
                                     on_block=on_block)
        else:
            out = fast.generate(ids, mask, progress=progress, on_block=on_block)
    finally:
        bar.close()  # before any error message, which would otherwise follow the bar's line
    seconds = time.perf_counter() - start
    for prompt, row in zip(prompts, out.generated, strict=True):
        print(f"{prompt!r} -> {tokenizer.decode(row, skip_special_tokens=True)!r}")
    tokens = out.generated.numel()
    # The optimized path times its decoding apart from the step's compilation (first call of a
    # shape only: a server pays it once).
    stats = out.stats or {"decode_seconds": seconds, "compile_seconds": 0.0}
    decode, compiled = stats["decode_seconds"], stats["compile_seconds"]
    took = f"{decode * 1e3:.1f} ms" if decode < 1 else f"{decode:.2f} s"
    print(f"NFE {out.nfe}  tokens {tokens}  {tokens / decode:.1f} tokens/s ({took} decoding"
          + (f"; compiling the step took {compiled:.1f} s, once per shape)" if compiled else ")"))
    return 0


def cmd_verify(args) -> int:
    from .verify import verify

    config = _decode_config(args)
    model, tokenizer, device = load_model_and_tokenizer(args.model, args.device, args.dtype)
    _, ids, mask = _prompts(args, tokenizer, device)
    config = _fit_default_gen_length(args, config, model, ids)
    report = verify(model, ids, mask, config)
    print(report)
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    import torch

    from .api import optimize
    from .reference import generate as generate_reference
    from .verify import time_calls, timing_note

    config = _decode_config(args)  # a bad option fails before the model loads
    model, tokenizer, device = load_model_and_tokenizer(args.model, args.device, args.dtype)
    prompts, ids, mask = _prompts(args, tokenizer, device)
    config = _fit_default_gen_length(args, config, model, ids)
    fast = optimize(model, config)
    eagers, eager_seconds = time_calls(lambda: generate_reference(model, ids, mask, config),
                                       torch.device(device))
    fasts, fast_seconds = time_calls(lambda: fast.generate(ids, mask), torch.device(device))
    eager, optimized = eagers[-1], fasts[-1]
    for name, out, sec in (("eager", eager, eager_seconds), ("optimized", optimized, fast_seconds)):
        text = tokenizer.decode(out.generated[0], skip_special_tokens=True)
        print(f"{name:>9}: NFE {out.nfe:3d}  {sec * 1e3:8.1f} ms  {text!r}")
    same = bool((eager.sequences == optimized.sequences).all())
    print(f"identical output: {same}   speedup: {eager_seconds / fast_seconds:.2f}x "
          f"({timing_note(len(eagers) - 1, len(fasts) - 1)}; runner: "
          f"{optimized.stats['runner']})")
    return 0 if same else 1


BENCHMARKS = ("generate", "quality", "credit_op", "prompt_buckets", "compile_time")


def cmd_bench(args) -> int:
    """Run benchmarks/bench_<suite>.py of the source checkout with the remaining arguments."""
    import runpy

    name = f"bench_{args.suite}.py"
    candidates = [Path(__file__).resolve().parents[1] / "benchmarks" / name,  # editable install
                  Path.cwd() / "benchmarks" / name]  # run from a clone
    script = next((c for c in candidates if c.is_file()), candidates[-1])
    if not script.is_file():
        raise SystemExit(
            f"error: {script} not found: the benchmarks ship with the source repository, not the "
            f"wheel; run this command from a clone's root (or after `pip install -e .` there)"
        )
    argv, path = sys.argv, list(sys.path)
    # As `python benchmarks/bench_x.py` would: the script's folder first on sys.path (the
    # scripts import their sibling modules).
    sys.argv = [str(script), *args.rest]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        if isinstance(done.code, str):  # sys.exit("message"): Python prints it and exits 1
            print(done.code, file=sys.stderr)
            return 1
        return int(done.code or 0)
    finally:
        sys.argv, sys.path[:] = argv, path
    return 0


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Says an option's default where it has one (not for flags, or a None its help explains)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credit-compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (
        ("generate", cmd_generate, "generate text"),
        ("verify", cmd_verify, "compare the optimized path with the eager reference"),
        ("demo", cmd_demo, "eager and optimized side by side"),
    ):
        p = sub.add_parser(name, help=help_text,
                           formatter_class=_DefaultsHelpFormatter)
        _add_model_args(p)
        _add_decode_args(p)
        p.set_defaults(func=fn)
        if name == "generate":
            p.add_argument("--eager", action="store_true", help="use the eager reference")
            p.add_argument("--stream", action="store_true",
                           help="print each block's text as soon as it is final")
    bench = sub.add_parser("bench", help="run a benchmark (arguments after the suite go to it)")
    bench.add_argument("suite", choices=BENCHMARKS)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .runner import CompileError  # after parsing: --help needs no torch

    try:
        return args.func(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CompileError as error:
        # The message names the API's way out; give this command's. The chained cause (the
        # model line that broke the graph) goes with it.
        print(f"error: {error.__cause__!r}\n{error}\nOn the command line: --no-compile, or "
              f"--on-compile-error eager (a warning, then the eager step).",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
