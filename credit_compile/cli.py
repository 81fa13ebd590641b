"""The `credit-compile` command line.

    credit-compile generate --prompt "0002+0002="   # CreditDecoding through the optimized path
    credit-compile verify --prompt "0012+0034="   # eager reference vs optimized, a report
    credit-compile demo                           # both side by side: same output, the speedup
    credit-compile serve --precompile             # an OpenAI-compatible server (extra `serve`)

Without `--model`, the embedded default model is used: a small LLaDA-architecture diffusion LM
trained by `python -m credit_compile.training.train` on synthetic tasks (4-digit addition
"0012+0034=", reversal "R1234=", sorting "S4213=", and any permutation of the digits "P4213="),
shipped inside the package with its tokenizer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (LLaDA config.json + weights); "
                                   "default: the embedded trained model")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])


# DecodeConfig fields that are not decoding flags: --dtype is a model argument, compile is
# --no-compile. The CLI's own defaults where they differ from DecodeConfig's: gen_length and
# block_length depend on the model (_decode_config), and sampling is seeded.
_NOT_FLAGS = ("dtype", "compile")
_CLI_DEFAULTS = {"seed": 0, "gen_length": None, "block_length": None}
_CLI_HELP = {
    "gen_length": "tokens to generate (default: 16 on the embedded model, whose answers are "
                  "EOS-padded to 16 tokens, else 64, or less where the model's context leaves "
                  "less after the prompt)",
    "block_length": "block length (default: 8 on the embedded model, else 16)",
}


def _add_decode_args(p: argparse.ArgumentParser, prompts: bool = True,
                     defaults: dict | None = None) -> None:
    """--prompt, --chat (with `prompts`), --no-compile, and a flag for every DecodeConfig field,
    its type, choices, default and help read from the dataclass and its docstring (one source
    for both); `defaults` replace the CLI's where a command differs (the server's buckets)."""
    import dataclasses
    import typing

    from .config import DecodeConfig

    if prompts:
        p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
        p.add_argument("--chat", action="store_true",
                       help="wrap each prompt as a user turn in the tokenizer's chat template, "
                            "with the assistant's turn opened (instruction-tuned models, e.g. "
                            "LLaDA-8B-Instruct; a base model takes the text as it is)")
    p.add_argument("--no-compile", action="store_true", help="run the step eagerly")
    hints, docs = typing.get_type_hints(DecodeConfig), _field_docs(DecodeConfig)
    for field in dataclasses.fields(DecodeConfig):
        if field.name in _NOT_FLAGS:
            continue
        default = {**_CLI_DEFAULTS, **(defaults or {})}.get(field.name, field.default)
        help_text = _CLI_HELP.get(field.name) or docs[field.name]
        if default is not None and default is not False and field.name not in _CLI_HELP:
            help_text += " (default: %(default)s)"
        p.add_argument(f"--{field.name.replace('_', '-')}", default=default,
                       help=help_text.replace("%", "%%").replace("%%(default)s", "%(default)s"),
                       **_flag_kind(hints[field.name]))


def _flag_kind(hint) -> dict:
    """argparse keywords for a DecodeConfig field of type `hint`."""
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return {"choices": list(args)}
    if hint is bool:
        return {"action": "store_true"}
    if hint in (int, float):
        return {"type": hint}
    if any(typing.get_origin(a) is tuple for a in args):  # token ids: one or several
        return {"type": int, "nargs": "+", "metavar": "ID"}
    if len(args) == 1 and args[0] in (int, float):
        return {"type": args[0]}
    raise TypeError(f"no command-line form for a DecodeConfig field of type {hint}")


def _field_docs(cls) -> dict[str, str]:
    """Each field's entry in `cls`'s "Attributes:" docstring, up to the sentence that ends past
    80 characters."""
    import re

    docs, name = {}, None
    for line in cls.__doc__.split("Attributes:", 1)[1].splitlines():
        entry = re.match(r"^ {8}(\w+): (.*)$", line)
        if entry:
            name = entry[1]
            docs[name] = entry[2]
        elif name and line.startswith(" " * 12):
            docs[name] += " " + line.strip()
    short = {}
    for name, text in docs.items():
        kept = ""
        for sentence in re.split(r"(?<=\.)\s+(?=[A-Z`\"(])", text):
            kept = f"{kept} {sentence}".strip()
            if len(kept) > 80:
                break
        short[name] = kept
    return short


def _or(value, default):
    return default if value is None else value


def _decode_config(args):
    import dataclasses

    from .config import READ_BY, DecodeConfig

    if args.steps is not None and args.strategy not in READ_BY["steps"]:
        raise ValueError(f"--steps applies to --strategy {', '.join(READ_BY['steps'][:-1])} or "
                         f"{READ_BY['steps'][-1]} only; --strategy {args.strategy} takes as many "
                         f"steps as its threshold needs: drop --steps or use --strategy llada")
    embedded = args.model is None
    serving = not hasattr(args, "prompt")  # `serve`: prompts come with the requests
    if not serving and not args.prompt and not embedded:
        raise ValueError("no --prompt: give one (repeat --prompt for a batch); only the "
                         "embedded default model has a default prompt")
    if not serving and not args.chat and "" in (args.prompt or ()):
        raise ValueError("--prompt '' is empty: the model needs a prompt to answer (give it "
                         "text, or use --chat, whose template gives the turn's text)")
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(DecodeConfig)
              if f.name not in _NOT_FLAGS}
    fields.update(gen_length=_or(args.gen_length, 16 if embedded else 64),
                  block_length=_or(args.block_length, 8 if embedded else 16),
                  compile=not getattr(args, "no_compile", False), dtype=args.dtype)
    return DecodeConfig(**{name: value for name, value in fields.items() if value is not None})


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
    """The model and tokenizer of `--model` (models.loading), a note on stderr where a random
    model stands in."""
    from .models.loading import load_model_and_tokenizer as load

    return load(model_dir, device, dtype, on_note=lambda note: print(note, file=sys.stderr))


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


def _block_printer(bar, prompts, tokenizer):
    """An `on_block` that prints, per prompt, the text each finished block adds (through the
    bar, which would otherwise draw over the line); `TextStream` holds back a character cut
    across blocks until it is whole."""
    from .text_stream import TextStream

    stream = TextStream(tokenizer)

    def print_block(block) -> None:
        for prompt, added in zip(prompts, stream.add(block), strict=True):
            bar.write(f"block {block.index}: {prompt!r} -> {added!r}", file=sys.stdout)
        sys.stdout.flush()

    return print_block


def cmd_generate(args) -> int:
    if args.tensor_parallel is not None and os.environ.get("RANK", "0") != "0":
        # One rank prints; every rank decodes. Errors still reach stderr (main() prints them).
        import contextlib

        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                contextlib.redirect_stderr(null):
            return _generate(args)
    return _generate(args)


def _generate(args) -> int:
    from .api import optimize
    from .reference import generate as generate_reference

    config = _decode_config(args)  # a bad option fails before the model loads
    ranks = args.tensor_parallel
    if ranks is not None:
        from .distributed import init_from_torchrun, shard_model

        rank_device = init_from_torchrun(ranks, args.device)
        # Loaded on the CPU and sharded there: a rank's device holds its shard only.
        model, tokenizer, device = load_model_and_tokenizer(args.model, "cpu", args.dtype)
        model, device = shard_model(model, ranks).to(rank_device), rank_device
    else:
        model, tokenizer, device = load_model_and_tokenizer(args.model, args.device, args.dtype)
    prompts, ids, mask = _prompts(args, tokenizer, device)
    config = _fit_default_gen_length(args, config, model, ids)
    # Before the bar: optimize()'s refusals and warnings print on lines of their own.
    fast = None if args.eager else optimize(model, config, tensor_parallel=ranks)
    # A bar without a total where the step count is not known in advance (a bar to gen_length
    # would stop far short).
    bar, progress = _progress_bar(config.known_steps, compiling=config.compile and not args.eager)
    on_block = _block_printer(bar, prompts, tokenizer) if args.stream else None
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


def cmd_serve(args) -> int:
    try:
        from .serve.server import serve
    except ImportError as error:
        raise ValueError(f"the server needs the serve extra ({error}): pip install "
                         f"'credit_compile[serve]'") from error
    config = _decode_config(args)  # a bad option fails before the model loads
    return serve(args, config)


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    from .serve.options import add_serve_args

    add_serve_args(p)


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
            p.add_argument("--tensor-parallel", type=int, default=None, metavar="N",
                           help="shard the model (credit_compile's LLaDA, LLaDA-MoE, "
                                "LLaDA2 or Dream) across N ranks, one process each, started by "
                                "torchrun: torchrun "
                                "--nproc-per-node N -m credit_compile generate "
                                "--tensor-parallel N ... (docs/distributed.md)")
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs the serve extra)",
                       formatter_class=_DefaultsHelpFormatter,
                       description="Serve the model behind OpenAI's API: POST /v1/completions "
                                   "and /v1/chat/completions (stream: Server-Sent Events, a "
                                   "chunk per finished block), GET /v1/models, /health, "
                                   "/metrics. Concurrent requests with the same decoding "
                                   "settings are decoded together (docs/serving.md).")
    _add_model_args(p)
    # Buckets on by default: every request length and batch size would otherwise compile.
    _add_decode_args(p, prompts=False, defaults={"prompt_bucket": 16, "batch_bucket": 4})
    _add_serve_args(p)
    p.set_defaults(func=cmd_serve)
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
