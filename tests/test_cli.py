"""The credit-compile command line, end to end on CPU (the embedded default model)."""

from __future__ import annotations

import ast
import re
import sys

import pytest

from credit_compile.cli import _decode_config, build_parser, main

pytestmark = pytest.mark.cheap_compile  # the CLI around the step, not the step's code

SMALL = ["--gen-length", "8", "--block-length", "4", "--cuda-graphs", "off"]


@pytest.mark.slow  # the min-versions stack leaves it out (CI time); the main stack runs it
def test_generate_prints_text_nfe_and_speed(capsys):
    assert main(["generate", "--prompt", "R12=", "--prompt", "S4213=", *SMALL]) == 0
    out = capsys.readouterr()
    assert "'R12=' -> " in out.out and "'S4213=' -> " in out.out
    assert "NFE" in out.out and "tokens/s" in out.out
    assert re.search(r"decoding; compiling the step took \d+\.\d s, once per shape\)", out.out)
    assert "randomly initialised" not in out.err  # the shipped default model, not a random one


def test_generate_with_the_factor_rule_and_without_compiling(capsys):
    assert main(["generate", "--prompt", "0012+0034=", "--strategy", "factor", "--factor", "2",
                 "--no-compile", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "'0012+0034=' -> " in out and "tokens/s" in out
    assert "compiling" not in out  # nothing was compiled
    assert _decode_config(build_parser().parse_args(
        ["generate", "--strategy", "factor", "--factor", "2"])).factor == 2.0


def test_generate_streams_each_block_as_it_is_final(capsys):
    assert main(["generate", "--prompt", "0012+0034=", "--stream", "--eager", *SMALL]) == 0
    lines = capsys.readouterr().out.splitlines()
    streamed = [line for line in lines if line.startswith("block ")]
    assert [line.split(":")[0] for line in streamed] == ["block 0", "block 1"]
    # The blocks' texts, joined, are the text printed at the end.
    final = next(line for line in lines if line.startswith("'0012+0034=' -> "))
    texts = [line.split(" -> ", 1)[1] for line in streamed]
    assert "".join(map(ast.literal_eval, texts)) == ast.literal_eval(final.split(" -> ", 1)[1])


def test_a_character_split_across_blocks_is_printed_whole(capsys):
    # A byte-level tokenizer: "café ok" is 8 bytes, and blocks of 4 split the two of "é".
    import types

    import torch

    from credit_compile.cli import _block_printer
    from credit_compile.decoding.loop import FinishedBlock

    class ByteTokenizer:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    data = torch.tensor([list("café ok".encode())])
    bar = types.SimpleNamespace(write=lambda line, file: print(line, file=file))
    send = _block_printer(bar, ["p"], ByteTokenizer())
    for index in (0, 1):
        send(FinishedBlock(index, 4 * index, data[:, 4 * index:4 * index + 4], last=index == 1))
    assert capsys.readouterr().out.splitlines() == ["block 0: 'p' -> 'caf'",
                                                    "block 1: 'p' -> 'é ok'"]


@pytest.mark.slow  # the min-versions stack leaves it out (CI time); the main stack runs it
def test_verify_and_demo_report_identical_output(capsys):
    assert main(["verify", "--prompt", "0012+0034=", *SMALL]) == 0
    assert "tokens_equal: True" in capsys.readouterr().out
    assert main(["demo", "--prompt", "0012+0034=", *SMALL]) == 0
    assert "identical output: True" in capsys.readouterr().out


def test_bad_option_is_a_clear_error(capsys):
    assert main(["generate", "--prompt", "R12=", "--gen-length", "10", "--block-length", "4"]) == 2
    assert "choose a block_length that divides gen_length" in capsys.readouterr().err
    assert main(["generate", "--prompt", "R12=", "--prompt-bucket", "0", *SMALL]) == 2
    assert "prompt_bucket=0: use a positive number of tokens" in capsys.readouterr().err


def test_tensor_parallel_outside_torchrun_names_it(capsys, monkeypatch):
    # (Under torchrun: tests/test_distributed.py, in its spawned ranks.)
    monkeypatch.delenv("RANK", raising=False)
    assert main(["generate", "--prompt", "R12=", "--tensor-parallel", "2", *SMALL]) == 2
    assert "torchrun --nproc-per-node 2 -m credit_compile generate" in capsys.readouterr().err


@pytest.mark.slow  # the min-versions stack leaves it out (CI time); the main stack runs it
def test_verify_with_a_prompt_bucket(capsys):
    prompts = ["--prompt", "0012+0034=", "--prompt", "R12="]
    assert main(["verify", *prompts, "--prompt-bucket", "16", *SMALL]) == 0
    assert "tokens_equal: True" in capsys.readouterr().out


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "R12=", *SMALL]) == 2
    assert "error: no checkpoint" in capsys.readouterr().err


def test_checkpoint_directory_round_trip(tmp_path, capsys):
    from credit_compile.models import build_model

    build_model("tiny").save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt", "R12=", *SMALL]) == 2
    assert "error: no tokenizer" in capsys.readouterr().err


def test_a_checkpoint_with_this_projects_tokenizer_loads(tmp_path, capsys):
    # What credit_compile.training.train writes: save_pretrained of the model and CharTokenizer.
    from credit_compile.assets import load_default_model

    model, tokenizer = load_default_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt", "0012+0034=", "--eager",
                 *SMALL]) == 0
    assert "'0012+0034=' -> '00046" in capsys.readouterr().out


@pytest.mark.parametrize("device, says", [
    ("bogus", r"error: device 'bogus' is not a device"),
    ("mps", r"credit_compile runs on cpu or cuda"),
    pytest.param("cuda", r"error: device .cuda. but CUDA is not available here; use cpu",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(),
                                          reason="CUDA is available")),
])
def test_unusable_device_is_a_clear_error(device, says, capsys):
    assert main(["generate", "--device", device, *SMALL]) == 2
    assert re.search(says, capsys.readouterr().err)


def test_bench_is_no_command_of_the_package():
    # The benchmarks ship with the repository: python benchmarks/bench_<suite>.py from a clone.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "generate"])


def test_an_error_starts_its_own_line_after_the_progress_bar(capsys):
    assert main(["generate", "--prompt", "1" * 58]) == 2  # with gen_length, beyond the context
    err = capsys.readouterr().err
    # The bar is cleared first (tqdm ends its line with a carriage return), not glued to the error.
    last_line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last_line.startswith("error: prompt length 58 + gen_length 16 = 74 exceeds"), err


def test_a_prompt_with_characters_the_model_does_not_know_is_refused(capsys):
    # They were read as '?': "hello world" printed a made-up answer and exited 0.
    assert main(["generate", "--prompt", "hello world", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "error: the prompt 'hello world' holds characters this tokenizer does not know: " \
           "'dehlorw'; write it with the characters it knows, '0123456789+=RS ?P'" in err


def test_an_empty_prompt_and_a_model_without_one_are_refused(capsys, tmp_path):
    assert main(["generate", "--prompt", "", *SMALL]) == 2
    assert "error: --prompt '' is empty" in capsys.readouterr().err
    # The embedded model has a default prompt; a checkpoint of the user's does not.
    assert main(["generate", "--model", str(tmp_path), *SMALL]) == 2
    assert "error: no --prompt: give one" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["credit", "threshold", "llada", "dream"])
def test_the_progress_bar_ends_where_decoding_ends(monkeypatch, strategy):
    from credit_compile import cli

    bars = []

    def recorded(total, compiling=False):
        bar, progress = real(total, compiling)
        bars.append(bar)
        return bar, progress

    real = cli._progress_bar
    monkeypatch.setattr(cli, "_progress_bar", recorded)
    assert main(["generate", "--prompt", "0012+0034=", "--strategy", strategy, "--eager",
                 *SMALL]) == 0
    (bar,) = bars
    # llada and dream run their total_steps; credit and threshold stop when the canvas is
    # committed, which no total said in advance: a count of the steps run.
    assert bar.total == (bar.n if strategy in ("llada", "dream") else None) and bar.n > 0


def test_the_optimized_path_streams_and_reports_progress_as_eager_does(monkeypatch, capsys):
    # Without --eager the callbacks go to optimize(...).generate: the bar counts its steps, and
    # each block is printed through a TextStream, which the last block (it says so) flushes.
    from credit_compile import cli

    bars, printers = [], []
    real_bar, real_printer = cli._progress_bar, cli._block_printer
    monkeypatch.setattr(cli, "_progress_bar", lambda total, compiling=False: (
        bars.append(real_bar(total, compiling)) or bars[-1]))
    monkeypatch.setattr(cli, "_block_printer", lambda bar, prompts, tokenizer: (
        printers.append(prompts) or real_printer(bar, prompts, tokenizer)))
    assert main(["generate", "--prompt", "0012+0034=", "--stream", "--no-compile", *SMALL]) == 0
    streamed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("block ")]
    assert [line.split(":")[0] for line in streamed] == ["block 0", "block 1"]
    assert printers == [["0012+0034="]]
    (bar, _), = bars
    assert bar.n > 0


def test_the_first_call_says_it_compiles_and_reports_decoding_and_compile_time_apart(
        monkeypatch, capsys):
    # The bar read "denoising: 0 steps" through a ~45 s compile, then "0.7 tokens/s" with the
    # compile in. Here the step runs eagerly and the call reports a compile of 12.5 s.
    import credit_compile.api as api
    from credit_compile import cli

    bars, seen = [], []
    real_bar, real_generate = cli._progress_bar, api.OptimizedModel.generate
    monkeypatch.setattr(cli, "_progress_bar", lambda total, compiling=False: (
        bars.append(real_bar(total, compiling)) or bars[-1]))

    def generate(self, ids, mask, progress=None, on_block=None):
        seen.append(bars[0][0].desc)  # while the step compiles: before any step
        out = real_generate(self, ids, mask, progress=progress, compile=False)
        seen.append(bars[0][0].desc)
        out.stats = {"runner": "compiled", "compile_seconds": 12.5, "decode_seconds": 0.5}
        return out

    monkeypatch.setattr(api.OptimizedModel, "generate", generate)
    assert main(["generate", "--prompt", "0012+0034=", *SMALL]) == 0
    assert seen == [cli.COMPILING, "denoising"]
    assert cli.COMPILING == "compiling the denoising step for this shape (first call only)"
    assert "NFE 2  tokens 8  16.0 tokens/s (500.0 ms decoding; compiling the step took 12.5 s, " \
           "once per shape)" in capsys.readouterr().out
    # Nothing to compile: the bar says so from the start.
    assert main(["generate", "--prompt", "0012+0034=", "--eager", *SMALL]) == 0
    assert bars[-1][0].desc == "denoising"


def test_an_option_the_strategy_does_not_read_is_warned_about_before_the_bar(monkeypatch):
    # On a line of its own, not glued to the progress bar's.
    from credit_compile import cli

    warned_before_the_bar = []
    real_bar = cli._progress_bar
    monkeypatch.setattr(cli, "_progress_bar", lambda total, compiling=False: (
        warned_before_the_bar.append(len(record)) or real_bar(total, compiling)))
    with pytest.warns(UserWarning, match=r"strategy='threshold' does not read alpha=0.5") as record:
        assert main(["generate", "--prompt", "0012+0034=", "--strategy", "threshold", "--alpha",
                     "0.5", "--no-compile", *SMALL]) == 0
    assert warned_before_the_bar == [1]


def test_the_progress_bar_stops_at_its_total():
    # Steps run after completion (a CUDA graph's replay of several) do not overfill the bar.
    from credit_compile.cli import _progress_bar

    bar, progress = _progress_bar(4)
    progress(3)
    progress(6)
    assert bar.n == 4
    bar.close()


def test_steps_without_the_llada_strategy_is_refused(capsys):
    assert main(["generate", "--prompt", "R12=", "--steps", "4", *SMALL]) == 2
    assert "--steps applies to --strategy llada, llada2 or dream only" in capsys.readouterr().err
    assert main(["generate", "--prompt", "R12=", "--strategy", "llada", "--steps", "4", *SMALL]) == 0


def test_the_llada2_sampling_flags_reach_the_config():
    config = _config("--strategy", "llada2", "--steps", "2", "--temperature", "0.7", "--top-k", "5",
                     "--top-p", "0.9")
    assert (config.steps, config.temperature, config.top_k, config.top_p) == (2, 0.7, 5, 0.9)


def test_the_dream_sampler_flags_reach_the_config():
    config = _config("--strategy", "dream", "--steps", "4", "--dream-alg", "topk_margin",
                     "--dream-eps", "0.01", "--dream-alg-temp", "0.5")
    assert (config.strategy, config.steps, config.dream_alg, config.dream_eps,
            config.dream_alg_temp) == ("dream", 4, "topk_margin", 0.01, 0.5)


def test_compile_layers_once_reaches_the_config():
    from credit_compile.cli import _decode_config, build_parser

    parse = build_parser().parse_args
    assert _decode_config(parse(["generate", "--compile-layers-once"])).compile_layers_once
    assert not _decode_config(parse(["generate"])).compile_layers_once


def test_kv_cache_reaches_the_config_and_decodes(capsys):
    from credit_compile.cli import _decode_config, build_parser

    parse = build_parser().parse_args
    assert _decode_config(parse(["generate", "--kv-cache", "dual"])).kv_cache == "dual"
    assert _decode_config(parse(["generate", "--kv-cache", "prompt"])).kv_cache == "prompt"
    assert _decode_config(parse(["generate", "--kv-cache", "dual", "--kv-cache-refresh",
                                 "3"])).kv_cache_refresh == 3
    assert _decode_config(parse(["generate"])).kv_cache == "none"
    # The embedded model is this project's LLaDA model: the cache applies to it.
    assert main(["generate", "--prompt", "R12=", "--kv-cache", "dual", "--no-compile",
                 *SMALL]) == 0


def test_llada_sampler_options_reach_the_config():
    from credit_compile.cli import _decode_config, build_parser

    args = build_parser().parse_args(["generate", "--strategy", "llada", "--cfg-scale", "1.5",
                                      "--remasking", "random", "--early-stop"])
    config = _decode_config(args)
    assert (config.cfg_scale, config.remasking, config.early_stop) == (1.5, "random", True)


def _digit_tokenizer():
    """A transformers tokenizer over the default model's characters, with a chat template that
    wraps a user turn in R...= and opens the assistant's turn with P."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate("0123456789+=RSP?")}
    vocab.update({"<eos>": 30, "<mask>": 31})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>",
                                        pad_token="<eos>", mask_token="<mask>", unk_token="?")
    tokenizer.chat_template = ("{% for m in messages %}R{{ m['content'] }}={% endfor %}"
                               "{% if add_generation_prompt %}P{% endif %}")
    return tokenizer


def test_a_checkpoint_with_a_transformers_tokenizer_pads_prompts_of_different_lengths(tmp_path,
                                                                                       capsys):
    from credit_compile.assets import load_default_model

    model, _ = load_default_model()
    tokenizer = _digit_tokenizer()  # right-padding, as transformers' default: the CLI sets left
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts = ["--prompt", "0012+0034=", "--prompt", "S42="]
    assert main(["generate", "--model", str(tmp_path), *prompts, *SMALL]) == 0
    out = capsys.readouterr().out
    assert "'0012+0034=' -> " in out and "'S42=' -> " in out
    # A tokenizer without a pad token (transformers refuses to pad then): LLaDA pads with EOS.
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), *prompts, *SMALL]) == 0
    assert main(["generate", "--model", str(tmp_path), "--prompt", "R12=", *SMALL]) == 0
    capsys.readouterr()
    # --eager with --dtype runs the reference on the cast model (it ran float32 before).
    assert main(["generate", "--model", str(tmp_path), *prompts, "--eager", "--dtype",
                 "bfloat16", *SMALL]) == 0
    assert "compiling" not in capsys.readouterr().out


def test_chat_wraps_each_prompt_in_the_tokenizers_template(tmp_path, capsys):
    import types

    from credit_compile.assets import load_default_model
    from credit_compile.cli import _prompts

    tokenizer = _digit_tokenizer()
    tokenizer.padding_side = "left"  # as the CLI's loader sets it
    args = types.SimpleNamespace(prompt=["12", "345"], chat=True)
    prompts, ids, mask = _prompts(args, tokenizer, "cpu")
    assert prompts == ["12", "345"]  # printed as given
    # R=12 1 2 '='=11 P=14, left-padded with <eos>=30
    assert ids.tolist() == [[30, 12, 1, 2, 11, 14], [12, 3, 4, 5, 11, 14]]
    assert mask.tolist() == [[0, 1, 1, 1, 1, 1], [1] * 6]
    args.chat = False
    assert _prompts(args, tokenizer, "cpu")[1].tolist() == [[30, 1, 2], [3, 4, 5]]
    model, _ = load_default_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--chat", "--prompt", "12", *SMALL]) == 0
    assert "'12' -> " in capsys.readouterr().out


def test_chat_without_a_template_is_a_clear_error(capsys):
    # The embedded model's tokenizer has none.
    assert main(["generate", "--chat", "--prompt", "12", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "--chat needs a tokenizer with a chat template" in err and "drop --chat" in err


def _config(*argv):
    return _decode_config(build_parser().parse_args(["generate", *argv]))


def test_every_decode_flag_reaches_the_config():
    # --no-compile, --prompt-bucket, --batch-bucket (and the others) must not be
    # dropped on the way to DecodeConfig.
    config = _config("--strategy", "credit", "--gen-length", "32", "--block-length", "8",
                     "--alpha", "0.5", "--beta", "0.6", "--gamma", "0.3", "--tau", "0.85",
                     "--credit-layout", "dense", "--no-compile", "--cuda-graphs", "off",
                     "--seed", "7", "--prompt-bucket", "16", "--batch-bucket", "4",
                     "--dtype", "bfloat16", "--early-stop", "--suppress-tokens", "3", "5",
                     "--mask-id", "31", "--eos-token-id", "2", "4")
    got = {k: getattr(config, k) for k in (
        "gen_length", "block_length", "alpha", "beta", "gamma", "tau", "credit_layout", "compile",
        "cuda_graphs", "seed", "prompt_bucket", "batch_bucket", "dtype", "early_stop",
        "suppress_tokens", "mask_id", "eos_token_id")}
    assert got == dict(gen_length=32, block_length=8, alpha=0.5, beta=0.6, gamma=0.3, tau=0.85,
                       credit_layout="dense", compile=False, cuda_graphs="off", seed=7,
                       prompt_bucket=16, batch_bucket=4, dtype="bfloat16", early_stop=True,
                       suppress_tokens=(3, 5), mask_id=31, eos_token_id=(2, 4))
    assert _config("--eos-token-id", "2").eos_token_id in (2, (2,))
    assert _config().compile is True
    assert _config("--strategy", "llada", "--commit-last-tokens", "9").commit_last_tokens == (9,)


def test_every_decode_config_field_is_a_flag_made_from_the_dataclass():
    import dataclasses

    from credit_compile import DecodeConfig

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    generate = {a.dest: a for a in sub.choices["generate"]._actions}
    fields = {f.name for f in dataclasses.fields(DecodeConfig)} - {"compile"}
    assert fields <= set(generate), fields - set(generate)
    assert generate["strategy"].choices == ["credit", "threshold", "factor", "llada", "llada2",
                                            "dream"]
    assert generate["dream_alg"].choices == ["maskgit_plus", "topk_margin", "entropy"]
    assert generate["tau"].default == DecodeConfig().tau and generate["tau"].type is float
    # Fields the hand-written flags had left out.
    config = _config("--credit-slots", "3", "--sync-every", "2")
    assert (config.credit_slots, config.sync_every) == (3, 2)


def test_the_llada_and_compile_error_flags_reach_the_config():
    # Flags the test above leaves out: each must reach DecodeConfig, not its default.
    config = _config("--strategy", "llada", "--steps", "4", "--temperature", "0.5",
                     "--on-compile-error", "eager")
    assert (config.steps, config.temperature, config.on_compile_error) == (4, 0.5, "eager")


def test_gen_and_block_length_defaults_depend_on_the_model():
    # The embedded model answers in 16 tokens; a checkpoint given by --model gets 64 / 16.
    embedded = _config()
    assert (embedded.gen_length, embedded.block_length) == (16, 8)
    other = _config("--model", "/some/checkpoint", "--prompt", "hi")
    assert (other.gen_length, other.block_length) == (64, 16)


def test_a_checkpoints_default_gen_length_fits_its_context(tmp_path, capsys):
    # The default model's context is 64: the default 64 tokens after a prompt do not fit.
    from credit_compile.assets import load_default_model

    model, tokenizer = load_default_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    args = ["generate", "--model", str(tmp_path), "--prompt", "0012+0034=", "--eager"]
    assert main([*args, "--block-length", "8"]) == 0
    out = capsys.readouterr()
    assert "--gen-length 48: what the model's context of 64 tokens leaves after a prompt of 10" \
        in out.err and "NFE" in out.out
    assert main([*args, "--gen-length", "64", "--block-length", "8"]) == 2  # asked for: kept
    assert "exceeds the model's maximum sequence length 64" in capsys.readouterr().err


def test_generate_eager_does_not_touch_the_optimized_path(monkeypatch, capsys):
    # --eager runs the reference; the optimized path is not used at all.
    import credit_compile.api as api
    def no_optimize(*args, **kwargs):
        raise AssertionError("--eager must not optimize the model")

    monkeypatch.setattr(api, "optimize", no_optimize)
    assert main(["generate", "--eager", "--prompt", "R12=", *SMALL]) == 0
    assert "compiling" not in capsys.readouterr().out


def test_verify_exits_1_on_a_mismatch(monkeypatch, capsys):
    # The exit status is the report's verdict (a CI gate reads it).
    import importlib
    import types

    # The submodule: the package's `verify` attribute is the function.
    verify_module = importlib.import_module("credit_compile.verify")

    monkeypatch.setattr(verify_module, "verify", lambda *a, **k: types.SimpleNamespace(ok=False))
    assert main(["verify", "--prompt", "R12=", *SMALL]) == 1


def test_demo_exits_1_when_the_outputs_differ(monkeypatch, capsys):
    # Demo's exit status says whether eager and optimized agree.
    import credit_compile.reference as reference

    original = reference.generate

    def corrupted(*args, **kwargs):
        out = original(*args, **kwargs)
        out.sequences[0, -1] += 1
        return out

    monkeypatch.setattr(reference, "generate", corrupted)
    assert main(["demo", "--prompt", "R12=", *SMALL]) == 1
    assert "identical output: False" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    import subprocess

    done = subprocess.run([sys.executable, "-m", "credit_compile", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "generate" in done.stdout


def test_a_step_that_does_not_compile_is_a_clear_error(monkeypatch, capsys):
    import credit_compile.api as api
    from credit_compile.runner import CompileError

    def not_compiling(*args, **kwargs):
        try:
            raise RuntimeError("dynamo: graph break on .item() at model.py:12")
        except RuntimeError as cause:
            raise CompileError("could not compile; optimize(model, compile=False)") from cause

    monkeypatch.setattr(api.OptimizedModel, "generate", not_compiling)
    assert main(["generate", "--prompt", "R12=", *SMALL]) == 1
    err = capsys.readouterr().err
    assert "model.py:12" in err and "--no-compile" in err


def test_help_gives_each_option_with_a_default_its_value():
    from credit_compile.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = " ".join(sub.choices["generate"].format_help().split())
    for says in ("(default: 0.9)", "(default: 0.7)", "(default: sparse)", "(default: auto)",
                 "leaves the RNG alone. (default: 0)", "run the step eagerly"):
        assert says in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_verify_and_demo_report_medians_of_several_calls(capsys):
    # One timed call each made a 0.57x speedup right after a 4.12x one.
    assert main(["verify", "--prompt", "0012+0034=", "--no-compile", *SMALL]) == 0
    out = capsys.readouterr().out
    assert re.search(r"speedup: \d+\.\d+x \(medians of (\d+) eager and (\d+) optimized calls, "
                     r"each path's first call untimed\)", out), out
    assert main(["demo", "--prompt", "0012+0034=", "--no-compile", *SMALL]) == 0
    found = re.search(r"speedup: \d+\.\d+x \(medians of (\d+) eager and (\d+) optimized "
                      r"calls, each path's first call untimed; runner: eager\)",
                      capsys.readouterr().out)
    assert found and min(int(found[1]), int(found[2])) >= 3
