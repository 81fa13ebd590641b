"""Helpers shared by several test modules: generation comparison, prompts of the tiny preset, the
step graphs a backend is given, a streaming recorder, the DecodeConfig errors, whether the
grouped MoE runs here, ranks spawned on a free loopback port, a character tokenizer for a tiny
model's vocabulary."""

from __future__ import annotations

import socket
import time

import torch

import credit_compile as cc


def assert_same_generation(ref, out):
    assert torch.equal(ref.sequences, out.sequences), (ref.sequences, out.sequences)
    assert ref.nfe == out.nfe


def prompts(batch, length, device, padded=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, : length // 2] = 0
    return ids.to(device), (mask.to(device) if padded else None)


def char_tokenizer_for(config):
    """A CharTokenizer for a tiny model's vocabulary (`config`: its size, end-of-text and mask ids,
    the end of text first): a character for each id before the end of text (the default model's,
    then letters from U+0100), so that every answer token prints."""
    from credit_compile.tokenizer import DEFAULT_CHARS, CharTokenizer

    letters = "".join(chr(0x100 + i) for i in range(config.eos_token_id - len(DEFAULT_CHARS)))
    return CharTokenizer(DEFAULT_CHARS + letters, eos_token_id=config.eos_token_id,
                         mask_token_id=config.mask_token_id, vocab_size=config.vocab_size)


def grouped_mm_runs_here() -> bool:
    """Whether this torch runs `torch._grouped_mm` on the CPU in float32 (2.13 does): the grouped
    MoE formulation's tests run where it does."""
    try:
        torch._grouped_mm(torch.ones(2, 4), torch.ones(2, 4, 4), offs=torch.tensor([1, 2], dtype=torch.int32))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def use_cheap_backend(monkeypatch) -> None:
    """Optimized models (and verify) compile without Inductor's code generation: the
    `cheap_compile` fixture, and module-scoped fixtures through `pytest.MonkeyPatch.context()`."""
    from credit_compile.backend import cheap_backend_bindings

    for module, name, value in cheap_backend_bindings():
        monkeypatch.setattr(module, name, value)


def record_graphs(monkeypatch, module) -> list:
    """The FX graphs dynamo hands the backends `module` makes, in order (wrapping the backend
    `module` makes now: Inductor, or the cheap one under `cheap_compile`)."""
    graphs = []
    inner = module.make_backend

    def recording(**kwargs):
        backend = inner(**kwargs)

        def record(gm, example_inputs):
            graphs.append(gm)
            return backend(gm, example_inputs)
        return record

    monkeypatch.setattr(module, "make_backend", recording)
    return graphs


def layer_calls(gm) -> list[str]:
    """The subgraph each invoke_subgraph node of the step's graph calls."""
    return [node.args[0].target for node in gm.graph.nodes
            if node.target is torch.ops.higher_order.invoke_subgraph]


MASK_ID = 126  # the tiny preset's mask token


class StreamRecorder:
    """Records each streamed block with the step count of the check that delivered it."""

    def __init__(self):
        self.steps = 0
        self.blocks: list[tuple[int, cc.FinishedBlock]] = []

    def progress(self, steps: int) -> None:
        self.steps = steps

    def on_block(self, block: cc.FinishedBlock) -> None:
        self.blocks.append((self.steps, block))


def assert_streamed(recorder: StreamRecorder, out: cc.GenerationOutput, gen_length: int,
                    block_length: int) -> None:
    """Every block once, in order, equal to its columns of the output, with no mask left; the
    first before decoding ended (not all of them at the end)."""
    blocks = [block for _, block in recorder.blocks]
    assert [b.index for b in blocks] == list(range(gen_length // block_length))
    assert [b.last for b in blocks] == [b is blocks[-1] for b in blocks]
    for block in blocks:
        assert block.start == out.prompt_length + block.index * block_length
        assert torch.equal(block.tokens, out.sequences[:, block.start:block.start + block_length])
        assert not (block.tokens == MASK_ID).any()
    first_at, last_at = recorder.blocks[0][0], recorder.blocks[-1][0]
    assert first_at < last_at == out.steps_run


def small(**kw):
    return {"gen_length": 8, "block_length": 4, **kw}


# gen_length not a multiple of block_length, refused for a bidirectional model (a block-causal one
# takes any) when it is decoded: suggests the nearest divisor.
GEN_LENGTH_ERRORS = [
    (dict(gen_length=30, block_length=8),
     r"gen_length=30 is not a multiple of block_length=8: choose a block_length that divides "
     r"gen_length \(for example 6\)"),
    (dict(gen_length=8, block_length=16), r"choose a block_length that divides gen_length \(for example 8\)"),
    (dict(gen_length=12, block_length=5), r"choose a block_length that divides gen_length \(for example 4\)"),
]

CONFIG_ERRORS = [
    # steps not divisible by the number of blocks.
    (dict(gen_length=32, block_length=8, steps=10, strategy="llada"),
     r"steps=10 is not divisible by the number of blocks \(4 = gen_length/block_length\): "
     r"use a multiple of 4"),
    (dict(gen_length=24, block_length=8, steps=7, strategy="llada"), r"use a multiple of 3, for example 6"),
    (dict(steps=0), r"steps=0: use a positive integer or None"),
    # tau outside (0, 1].
    (dict(tau=0.0), r"tau=0.0: use a threshold in \(0, 1\]"),
    (dict(tau=-0.5), r"use a threshold in \(0, 1\]"),
    (dict(tau=1.0001), r"use a threshold in \(0, 1\]"),
    (dict(tau=float("nan")), r"use a threshold in \(0, 1\]"),
    # alpha < 0.
    (dict(alpha=-0.1), r"alpha=-0.1: use alpha >= 0 \(0 is plain threshold decoding\)"),
    (dict(alpha=float("nan")), r"use alpha >= 0"),
    # beta outside [0, 1].
    (dict(beta=-0.01), r"beta=-0.01: use a decay in \[0, 1\]"),
    (dict(beta=1.5), r"beta=1.5: use a decay in \[0, 1\]"),
    # gamma <= 0.
    (dict(gamma=0.0), r"gamma=0.0: use gamma > 0"),
    (dict(gamma=-1.0), r"use gamma > 0"),
    # Finite in Python but not in float32, where alpha * log1p(C) and the Gumbel noise run.
    (dict(alpha=1e39), r"alpha=1e\+39 overflows float32, in which the logits are computed: use a "
     r"value below 3.4e38"),
    (dict(gamma=4e38), r"gamma=4e\+38 overflows float32"),
    (dict(strategy="llada", temperature=1e308), r"temperature=1e\+308 overflows float32"),
    # Sampling is for LLaDA's and LLaDA2's samplers only, guidance for LLaDA's.
    (dict(strategy="credit", temperature=0.5),
     r"temperature=0.5 with strategy='credit': the credit, threshold and factor strategies are "
     r"greedy; use temperature=0 or strategy='llada' \(or 'llada2' for a LLaDA2 model, "
     r"'dream' for Dream's samplers\)"),
    (dict(strategy="llada2", temperature=1.0, top_k=0),
     r"top_k=0: use a positive number of tokens or None \(no top-k filter\)"),
    (dict(top_k=2.5), r"top_k=2.5: use a positive number of tokens"),
    (dict(top_k=True), r"top_k=True: use a positive number of tokens"),
    (dict(strategy="llada2", temperature=1.0, top_p=0.0),
     r"top_p=0.0: use a probability in \(0, 1\] or None \(no nucleus filter\)"),
    (dict(top_p=1.5), r"top_p=1.5: use a probability in \(0, 1\]"),
    (dict(top_p=float("nan")), r"top_p=nan: use a probability"),
    (dict(strategy="factor", temperature=0.5), r"use temperature=0 or strategy='llada'"),
    (dict(factor=0.0), r"factor=0.0: use factor > 0 \(Fast-dLLM's scripts use 1\)"),
    (dict(factor=-1.0), r"use factor > 0"),
    (dict(factor=float("nan")), r"use factor > 0"),
    (dict(strategy="threshold", temperature=1.0), r"use temperature=0 or strategy='llada'"),
    (dict(strategy="credit", cfg_scale=1.0), r"use cfg_scale=0"),
    (dict(strategy="factor", remasking="random"),
     r"remasking='random' with strategy='factor': random remasking is implemented for "
     r"strategy='llada' only; use remasking='low_confidence' or strategy='llada'"),
    (dict(strategy="threshold", remasking="random"), r"use remasking='low_confidence'"),
    (dict(strategy="llada", temperature=-1.0), r"use temperature >= 0"),
    (dict(strategy="llada", cfg_scale=-1.0), r"use cfg_scale >= 0"),
    # Dream's samplers.
    (dict(strategy="dream", dream_alg="origin"),
     r"dream_alg='origin': use one of \('maskgit_plus', 'topk_margin', 'entropy'\) \(Dream's "
     r"'origin', each mask committed by its own random draw, is not supported; 'maskgit_plus' "
     r"is the closest\)"),
    (dict(dream_alg="margin"), r"dream_alg='margin': use one of \('maskgit_plus', 'topk_margin'"),
    (dict(dream_eps=1.0), r"dream_eps=1.0: use eps in \[0, 1\) \(Dream's default is 1e-3\)"),
    (dict(dream_eps=-0.1), r"dream_eps=-0.1: use eps in \[0, 1\)"),
    (dict(dream_alg_temp=-1.0), r"dream_alg_temp=-1.0: use alg_temp >= 0, or None"),
    (dict(gen_length=32, block_length=8, steps=10, strategy="dream"),
     r"steps=10 is not divisible by the number of blocks \(4 = gen_length/block_length\)"),
    (dict(strategy="dream", remasking="random"), r"use remasking='low_confidence'"),
    (dict(strategy="dream", cfg_scale=1.0), r"use cfg_scale=0"),
    # Names and enumerations.
    (dict(strategy="beam"),
     r"strategy='beam': use one of \('credit', 'threshold', 'factor', 'llada', 'llada2', "
     r"'dream'\)"),
    (dict(remasking="topk"), r"use one of \('low_confidence', 'random'\)"),
    (dict(credit_layout="csr"), r"use one of \('dense', 'sparse'\)"),
    (dict(cuda_graphs="yes"), r"use one of \('auto', 'on', 'off'\)"),
    (dict(kv_cache="prefix"), r"kv_cache='prefix': use one of \('none', 'prompt', 'dual', 'block'\) "
                              r"\(Fast-dLLM's PrefixCache is 'prompt' here"),
    (dict(kv_cache="full"), r"kv_cache='full': use one of \('none', 'prompt', 'dual', 'block'\)$"),
    (dict(kv_cache="dual", kv_cache_refresh=0), r"kv_cache_refresh=0: use a positive number of "
                                                r"steps or None"),
    (dict(kv_cache="dual", kv_cache_refresh=2.5), r"kv_cache_refresh=2.5: use a positive"),
    (dict(kv_cache_refresh=2), r"kv_cache_refresh=2 with kv_cache='none': there is no cache to "
                               r"refresh; set kv_cache='prompt' or 'dual', or leave it None"),
    # Graphs replay the compiled step: without it "on" would silently run eagerly.
    (dict(cuda_graphs="on", compile=False), r"cuda_graphs='on' with compile=False: .*set "
     r"compile=True, or cuda_graphs='auto'"),
    (dict(compile="yes"), r"compile='yes': use True or False"),
    (dict(compile_layers_once=1), r"compile_layers_once=1: use True or False"),
    # A string from a config file: "false" is truthy, and would have turned early stop on.
    (dict(early_stop="false"), r"early_stop='false': use True or False"),
    (dict(early_stop=[]), r"early_stop=\[\]: use True or False"),
    (dict(dtype="float64"), r"dtype='float64': use one of"),
    # Counts.
    (dict(gen_length=0), r"gen_length=0: use a positive integer"),
    (dict(block_length=-4), r"block_length=-4: use a positive integer"),
    (dict(gen_length=8.0), r"gen_length=8.0: use a positive integer"),
    (dict(block_length=True), r"block_length=True: use a positive integer"),
    (dict(sync_every=0), r"sync_every=0: use a positive integer"),
    (dict(credit_slots=0), r"use a positive integer or None \(exact\)"),
    (dict(mask_id=-3), r"mask_id=-3: use a non-negative integer or None"),
    (dict(seed=-1), r"seed=-1: use a non-negative integer or None"),
    (dict(seed=2**64), r"seed=18446744073709551616 does not fit torch's 64-bit seed: use a seed "
                       r"below 2\*\*64"),
    (dict(prompt_bucket=0), r"prompt_bucket=0: use a positive number of tokens .* or None"),
    (dict(prompt_bucket=-8), r"prompt_bucket=-8: use a positive number of tokens"),
    (dict(prompt_bucket=16.0), r"prompt_bucket=16.0: use a positive number of tokens"),
    (dict(prompt_bucket=True), r"prompt_bucket=True: use a positive number of tokens"),
    (dict(batch_bucket=0), r"batch_bucket=0: use a positive number of rows .* or None"),
    (dict(batch_bucket=2.0), r"batch_bucket=2.0: use a positive number of rows"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn, *args, world: int = 2, timeout: float = 600.0) -> None:
    """Run `fn(rank, world, port, *args)` in `world` spawned processes and wait, at most
    `timeout` seconds: a rank that raises ends the others and its error is raised here
    (`torch.multiprocessing.ProcessRaisedException`); past the deadline every rank is killed
    and TimeoutError raised."""
    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=(world, free_port(), *args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.0, min(5.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world} ranks did not finish within {timeout} s")
