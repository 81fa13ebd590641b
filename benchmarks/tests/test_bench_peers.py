"""bench_peers.py against stand-ins for the peers' checkouts, written here to tmp_path with the
files, names and signatures the benchmark imports (CI has neither the peers' code nor a network):
the import from a path, the rows' fields, the agreement reported, the usage errors.

The Fast-dLLM stand-in wraps the official remote-code stand-in (tests/llada_remote.py) and decodes
by Fast-dLLM's threshold rule without a cache (all three of its functions); the dInfer stand-in's
package fails to import as dInfer's does without vLLM, and its decoder applies CreditDecoding's
rule. Ours compiles with the cheap backend (cheap_compile)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from test_bench_scripts import load, read_rows

import credit_compile as cc

GEN, BLOCK, PROMPT = 8, 4, 4

FASTDLLM_GENERATE = '''
import torch
import torch.nn.functional as F
from model.modeling_llada import LLaDAModelLM  # noqa: F401  (as Fast-dLLM's generate.py)


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
             remasking='low_confidence', mask_id=126336, threshold=None):
    """Threshold decoding: each step the masked tokens at least `threshold` sure, and the best."""
    assert prompt.shape[0] == 1, "one prompt at a time"
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt
    nfe = 0
    for start in range(prompt.shape[1], x.shape[1], block_length):
        block = slice(start, start + block_length)
        while (x[:, block] == mask_id).any():
            probs = F.softmax(model(x).logits[:, block].double(), -1)
            sure, tokens = probs.max(-1)
            masked = x[:, block] == mask_id
            sure = torch.where(masked, sure, -1.0)
            commit = masked & ((sure >= threshold) | (sure == sure.max()))
            x[:, block] = torch.where(commit, tokens, x[:, block])
            nfe += 1
    return x, nfe


generate_with_dual_cache = generate_with_prefix_cache = generate
'''

FASTDLLM_MODELING = '''
import copy

from llada_remote import LLaDAModel, LLaDAModelLM  # noqa: F401


def create_model_config_from_pretrained_config(config):
    return copy.copy(config)
'''

DINFER_STRATEGY = '''
import torch
import torch.nn.functional as F

from .utils import credit_update


class CreditThresholdParallelDecoder:
    def __init__(self, credit_alpha=0.7, boost_gamma=0.2, decay_beta=0.8, *, temperature,
                 threshold, remasking='low_confidence', mask_id=126336, eos_id=126081):
        self.alpha, self.gamma, self.beta = credit_alpha, boost_gamma, decay_beta
        self.threshold, self.mask_id = threshold, mask_id

    def block_init(self, block_x, block_id):
        self.credit = None

    def decode(self, logits, block_start, block_end, x):
        masked = x[:, block_start:block_end] == self.mask_id
        self.credit = credit_update(self.credit, logits, masked, self.beta, self.gamma)
        probs = F.softmax(logits.float() + self.alpha * torch.log1p(self.credit), -1)
        sure, tokens = probs.max(-1)
        sure = torch.where(masked, sure, -torch.inf)
        bar = (sure.max(1, keepdim=True).values - 1e-5).clamp(max=self.threshold)
        commit = masked & (sure >= bar)
        x[:, block_start:block_end] = torch.where(commit, tokens, x[:, block_start:block_end])
'''

DINFER_UTILS = '''
import torch
import torch.nn.functional as F


def credit_update(credit, logits, masked, beta, gamma):
    """Decay the block's credit after its first step; add top-1 p**gamma on masked tokens."""
    credit = torch.zeros(logits.shape) if credit is None else credit * beta
    top, index = F.softmax(logits.float(), -1).max(-1)
    return credit.scatter_add(2, index[..., None], (top.pow(gamma) * masked)[..., None])
'''


def write(root, files: dict) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))


@pytest.fixture
def peers(tmp_path, monkeypatch):
    """The two stand-in checkouts (Fast-dLLM's a git repository of one commit, dInfer's none);
    the modules the benchmark imports from them are dropped afterwards."""
    fastdllm, dinfer = tmp_path / "Fast-dLLM", tmp_path / "dInfer"
    write(fastdllm, {"llada/generate.py": FASTDLLM_GENERATE,
                     "llada/model/__init__.py": "",
                     "llada/model/modeling_llada.py": FASTDLLM_MODELING,
                     "llada/model/configuration_llada.py": "from llada_remote import LLaDAConfig  "
                                                           "# noqa: F401\n"})
    write(dinfer, {"python/dinfer/__init__.py": "import vllm  # noqa: F401  (its engine)\n",
                   "python/dinfer/decoding/__init__.py": "",
                   "python/dinfer/decoding/parallel_strategy.py": DINFER_STRATEGY,
                   "python/dinfer/decoding/utils.py": DINFER_UTILS})
    git = ["git", "-C", str(fastdllm), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(fastdllm)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "stand-in"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    for name in ("generate", "model", "dinfer"):
        for loaded in [m for m in sys.modules if m.split(".")[0] == name]:
            monkeypatch.delitem(sys.modules, loaded)
    yield {"fastdllm": fastdllm, "dinfer": dinfer, "fastdllm_commit": head}
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("generate", "model", "dinfer")]:
        del sys.modules[loaded]


@pytest.fixture
def bench(monkeypatch):
    return load("bench_peers", monkeypatch)


def run(bench, out, *args) -> list[dict]:
    assert bench.main(["--device", "cpu", "--gen-length", str(GEN), "--block-length", str(BLOCK),
                       "--prompt-length", str(PROMPT), "--repeats", "1", "--out", str(out),
                       *args]) == 0
    return read_rows(out)


def test_each_pair_runs_the_peers_code_from_its_checkout_beside_ours(bench, peers, tmp_path,
                                                                    monkeypatch, capsys):
    # Ours eager here: the harness is under test (the compiled path: the next test).
    monkeypatch.setattr(bench.cc, "optimize", functools.partial(cc.optimize, compile=False))
    rows = run(bench, tmp_path / "rows.jsonl", "--batch", "2", "--fastdllm",
               str(peers["fastdllm"]), "--dinfer", str(peers["dinfer"]))
    assert [r["pair"] for r in rows] == list(bench.PAIRS)
    for row in rows:
        assert row["device"] == "cpu" and row["torch"] == torch.__version__ and row["commit"]
        assert (row["batch"], row["gen_length"], row["block_length"]) == (2, GEN, BLOCK)
        assert row["init_std"] == bench.TINY_CONFIDENT_STD and row["threshold"] == 0.9
        assert row["threads"] == torch.get_num_threads()
        assert row["peer_model"].startswith("the official remote-code LLaDA")
        for side in ("peer", "ours"):
            assert row[f"{side}_nfe"] >= 2 * GEN // BLOCK  # at least a step per block
            assert row[f"{side}_tokens_per_s"] == pytest.approx(2 * GEN / row[f"{side}_seconds"])
            assert row[f"{side}_ms_per_step"] == pytest.approx(
                1e3 * row[f"{side}_seconds"] / row[f"{side}_nfe"])
            assert row[f"{side}_peak_memory_gb"] > 0  # the process's resident set on Linux
        assert row["speedup_vs_peer"] == pytest.approx(
            row["ours_tokens_per_s"] / row["peer_tokens_per_s"])
        assert row["tokens_equal"] == (row["first_difference"] is None)
        assert row["tokens_equal"] == (row["token_agreement"] == 1.0)
        assert row["ours_runner"] == "eager"
        assert row["ours_config"]["kv_cache"] == bench.PAIRS[row["pair"]].kv_cache
    by_pair = {r["pair"]: r for r in rows}
    threshold, credit = by_pair["fastdllm-threshold"], by_pair["dinfer-credit"]
    # The same rules on the same weights: the same tokens, and the same steps (Fast-dLLM's rows
    # decoded one after another, their NFE summed: at least ours, which steps them together).
    assert threshold["tokens_equal"] and credit["tokens_equal"]
    assert threshold["peer_nfe"] >= threshold["ours_nfe"] and credit["peer_nfe"] == credit["ours_nfe"]
    assert threshold["peer_commit"] == peers["fastdllm_commit"]
    assert threshold["peer_runner"].startswith("Fast-dLLM's function, one row at a time")
    assert threshold["peer_engine_note"] is None
    assert credit["peer_commit"] == "unknown (not a git checkout)"
    assert credit["peer_runner"].startswith("dInfer's decoder in a plain block loop")
    assert credit["peer_engine_note"].startswith("dInfer's engine is not run")
    assert by_pair["fastdllm-prefix-cache"]["note"].startswith("different caches")
    printed = capsys.readouterr().out
    assert "fastdllm-dual-cache" in printed and "dInfer's engine is not run" in printed


def test_dinfer_alone_runs_on_our_eager_model(bench, peers, tmp_path, cheap_compile):
    (row,) = run(bench, tmp_path / "rows.jsonl", "--dinfer", str(peers["dinfer"]))
    assert row["pair"] == "dinfer-credit" and row["batch"] == 1
    assert row["peer_model"].startswith("credit_compile's LLaDA, eager")
    assert row["tokens_equal"] and row["peer_nfe"] == row["ours_nfe"]
    assert row["ours_runner"] == "compiled" and row["ours_config"]["compile"]


@pytest.mark.parametrize("peer, flag, repo", [("fastdllm", "--fastdllm", "NVlabs/Fast-dLLM"),
                                              ("dinfer", "--dinfer", "inclusionAI/dInfer")])
def test_a_folder_that_is_not_the_peers_checkout_is_a_usage_error(bench, peers, tmp_path, capsys,
                                                                  peer, flag, repo):
    other = peers["dinfer" if peer == "fastdllm" else "fastdllm"]
    with pytest.raises(SystemExit) as stop:
        bench.main([flag, str(other), "--out", str(tmp_path / "rows.jsonl")])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert f"{other} is not a checkout of" in error and repo in error and "clone" in error
    assert not (tmp_path / "rows.jsonl").exists()


@pytest.mark.parametrize("args, says", [
    ([], "give --fastdllm DIR and/or --dinfer DIR"),
    (["--pairs", "dinfer-credit"], "need --dinfer DIR"),
    (["--gen-length", "10", "--block-length", "4"], "gen_length"),
])
def test_usage_errors_name_the_fix(bench, peers, tmp_path, capsys, args, says):
    given = [] if not args else ["--fastdllm", str(peers["fastdllm"])]
    with pytest.raises(SystemExit) as stop:
        bench.main([*given, *args, "--out", str(tmp_path / "rows.jsonl")])
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_a_peer_whose_code_does_not_import_is_a_usage_error(bench, peers, tmp_path, capsys):
    generate = peers["fastdllm"] / "llada" / "generate.py"
    generate.write_text("import a_requirement_not_installed  # noqa: F401\n" + generate.read_text())
    with pytest.raises(SystemExit) as stop:
        bench.main(["--fastdllm", str(peers["fastdllm"]), "--out", str(tmp_path / "rows.jsonl")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "a_requirement_not_installed" in error
    assert "install its requirements" in error


def test_agreement_reports_the_first_difference(bench):
    peer = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert bench.agreement(peer.clone(), peer) == {
        "tokens_equal": True, "token_agreement": 1.0, "first_difference": None}
    ours = peer.clone()
    ours[1, 2], ours[1, 3] = 0, 0
    assert bench.agreement(ours, peer) == {
        "tokens_equal": False, "token_agreement": 0.75,
        "first_difference": {"row": 1, "position": 2}}


def test_the_plot_draws_each_pair_of_a_run(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")  # the bench extra; the min-versions stack has none
    plot = load("plot_peers", monkeypatch)
    rows = tmp_path / "peers.jsonl"
    row = {"device": "cpu", "preset": "tiny", "dtype": "float32", "batch": 1, "prompt_length": 4,
           "gen_length": 8, "block_length": 4, "commit": "abc", "peer": "Fast-dLLM",
           "peer_tokens_per_s": 10.0, "ours_tokens_per_s": 25.0, "tokens_equal": True}
    rows.write_text("\n".join(json.dumps({**row, "pair": pair})
                              for pair in ("fastdllm-threshold", "dinfer-credit")) + "\n")
    png = tmp_path / "peers.png"
    assert plot.main(["--input", str(rows), "--output", str(png)]) == 0
    assert png.stat().st_size > 0
    with pytest.raises(SystemExit, match="no rows of preset 'llada-8b'"):
        plot.main(["--input", str(rows), "--output", str(png), "--preset", "llada-8b"])
