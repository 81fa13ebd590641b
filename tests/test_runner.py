"""runner.py: how the one denoising step is executed. CUDA-graph replay equals the eager reference;
CPU falls back with a reason; a step that does not compile, or a capture that fails, is reported
as what it is (on_compile_error="eager" decodes eagerly instead)."""

from __future__ import annotations

import logging
import types
import warnings

import pytest
import torch
from cuda_marks import needs_cuda
from helpers import assert_same_generation, prompts
from torch._dynamo.utils import counters
from toy_models import ContextMixModel, make_prompts

import credit_compile as cc
from credit_compile.generation_setup import setup_generation
from credit_compile.models import build_model, get_config
from credit_compile.runner import CompiledStepRunner, EagerStepRunner, unrolled_phases


def describe_first_divergence(model, ids, mask, kwargs) -> str:
    """For a failed GPU equality: where the compiled (non-graphed) step first leaves the eager
    reference, with the confidences of both commits there. Tells a capture bug (compiled equals
    reference, graphs do not) from kernel rounding at a near-tie (confidences within ulps)."""
    ref = cc.generate_reference(model, ids, mask, trace=True, **kwargs)
    fast = cc.optimize(model, cuda_graphs="off", **kwargs).generate(ids, mask, trace=True)
    for n, (a, b) in enumerate(zip(ref.trace, fast.trace, strict=False)):
        if a.committed != b.committed:
            return (f"compiled leaves the reference at step {n} (block {a.block}): reference "
                    f"committed {a.committed} with confidence {a.confidence}; compiled "
                    f"{b.committed} with {b.confidence}")
    diff = (ref.sequences != fast.sequences).nonzero().tolist()
    if diff:
        return f"same commit positions, different tokens at {diff[:8]}"
    return "compiled equals the reference: the difference comes from graph replay"


def assert_same_as_reference(out, ref, model, ids, mask, kwargs):
    same = torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    assert same, describe_first_divergence(model, ids, mask, kwargs)


@pytest.mark.cheap_compile
def test_cpu_auto_falls_back_to_compiled_with_a_log_line(caplog):
    model = build_model("tiny")
    ids, _ = prompts(1, 4, "cpu")
    fast = cc.optimize(model, gen_length=8, block_length=4)
    with caplog.at_level(logging.INFO, logger="credit_compile"):
        out = fast.generate(ids)
    assert fast.last_stats["runner"] == "compiled"
    assert any("CUDA graphs off" in r.message for r in caplog.records)
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4)
    assert torch.equal(out.sequences, ref.sequences)


def test_cuda_graphs_on_without_cuda_is_an_error():
    model = build_model("tiny")
    ids, _ = prompts(1, 4, "cpu")
    with pytest.raises(ValueError, match="move the model to CUDA"):
        cc.optimize(model, gen_length=8, block_length=4, cuda_graphs="on").generate(ids)


def test_more_live_shapes_than_dynamos_recompile_limit():
    # Dynamo allows `recompile_limit` graphs per code object; every runner compiling the same
    # function made the ninth live shape fail under fullgraph=True. The backend is dynamo's own
    # "eager" (no Inductor) to keep the test cheap: the limit is dynamo's, whatever the backend.
    model = build_model("tiny")
    config = cc.DecodeConfig(gen_length=4, block_length=4)
    limit = torch._dynamo.config.recompile_limit
    runners = []
    for length in range(1, limit + 3):
        ids, _ = prompts(1, length, "cpu")
        setup = setup_generation(model, ids, None, config)
        runners.append(CompiledStepRunner(setup, backend="eager"))
        runners[-1].step()  # compiles; without a code object per runner the ninth raised
        assert int(setup.state.nfe) == 1


def test_eager_runner_when_compile_is_off():
    model = build_model("tiny")
    ids, _ = prompts(2, 5, "cpu", padded=True)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    out = fast.generate(ids, _)
    assert fast.last_stats["runner"] == "eager"
    ref = cc.generate_reference(model, ids, _, gen_length=8, block_length=4)
    assert torch.equal(out.sequences, ref.sequences)


class ReplayOnCPU(EagerStepRunner):
    """CudaGraphStepRunner's protocol without CUDA: the same warm-up steps before "capture", the
    same reload of the prompts afterwards, and `unroll` steps per call, with the graph replay
    replaced by calling the compiled step. Checks on CPU what the API does around graphs (unrolled
    steps past completion, the host's sync schedule, a second call with new prompts)."""

    kind = "cuda_graph"

    def __init__(self, compiled, unroll=1, warmup_steps=2):
        super().__init__(compiled.setup)
        self.steps_per_call = unroll
        self.compiled = compiled
        self.schedule = compiled.schedule
        for _ in range(warmup_steps):
            for phase in self.schedule.phases:
                compiled.run_phase(phase)

    def run_phase(self, phase):
        for captured in unrolled_phases(self.schedule, phase, self.steps_per_call):
            self.compiled.run_phase(captured)


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    from credit_compile import runner, step_cache

    def make_runner(setup, *, backend=None, cuda_graphs="off", unroll=1, on_compile_error="raise"):
        compiled = runner.CompiledStepRunner(setup, backend, on_compile_error)
        if cuda_graphs == "off":
            return compiled
        return runner.with_graphs(compiled, unroll=unroll, required=cuda_graphs == "on",
                                  graph_runner=ReplayOnCPU)

    monkeypatch.setattr(step_cache, "make_runner", make_runner)


class GraphBreaking(torch.nn.Module):
    """The tiny LLaDA behind a forward that reads a tensor's value (a graph break)."""

    def __init__(self):
        super().__init__()
        self.inner = build_model("tiny")
        self.config = self.inner.config

    def forward(self, input_ids, attention_mask=None):
        if input_ids.sum().item() < 0:
            input_ids = input_ids.abs()
        return self.inner(input_ids, attention_mask=attention_mask)


@pytest.mark.cheap_compile
def test_a_step_falling_back_to_eager_is_not_captured(graphs_on_cpu, caplog):
    model = GraphBreaking()
    ids, mask = prompts(2, 5, "cpu", padded=True)
    fast = cc.optimize(model, gen_length=8, block_length=4, cuda_graphs="on",
                       on_compile_error="eager")
    with caplog.at_level(logging.WARNING, logger="credit_compile"):
        out = fast.generate(ids, mask)
    assert out.stats["runner"] == "eager" and "could not compile" in caplog.text
    ref = cc.generate_reference(model, ids, mask, config=fast.resolved_config())
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    with pytest.raises(cc.CompileError):  # and raised without the option, graphs or not
        cc.optimize(model, gen_length=8, block_length=4, cuda_graphs="on").generate(ids, mask)


@pytest.mark.cheap_compile
@pytest.mark.parametrize("capture_then_fails", [False, True])
def test_a_recompile_failing_in_the_graph_warm_up_is_not_captured(capture_then_fails, caplog):
    """on_compile_error="eager" compiles before capture; a guard failing in the warm-up after
    that recompiles, and where that fails the step runs eagerly: the graphs must not replay it,
    and capturing the eager step failing is no capture failure (graphs "on" raised it)."""
    from credit_compile import runner

    captured = []

    class RecompileFailingInWarmUp(ReplayOnCPU):
        def __init__(self, compiled, unroll=1):
            def recompile_fails():
                raise torch._dynamo.exc.TorchDynamoException("a recompile failed")

            compiled._steps = {phase: recompile_fails for phase in compiled._steps}
            super().__init__(compiled, unroll)
            captured.append(self)
            if capture_then_fails:
                raise RuntimeError("operation not permitted when stream is capturing")

    model = build_model("tiny")
    ids, mask = prompts(2, 5, "cpu", padded=True)
    config = cc.DecodeConfig(gen_length=8, block_length=4, on_compile_error="eager")
    compiled = CompiledStepRunner(setup_generation(model, ids, mask, config), backend="eager",
                                  on_compile_error="eager")
    with caplog.at_level(logging.WARNING, logger="credit_compile"):
        chosen = runner.with_graphs(compiled, unroll=2, required=True,
                                    graph_runner=RecompileFailingInWarmUp)
    assert captured and chosen is compiled and compiled.kind == "eager"
    assert "a recompile failed" in caplog.text


@pytest.mark.cheap_compile
def test_capture_failing_falls_back_to_the_compiled_step_unless_graphs_are_required(caplog):
    from credit_compile import runner

    def failing_capture(compiled, unroll):
        raise RuntimeError("operation not permitted when stream is capturing")

    ids, mask = prompts(1, 5, "cpu", padded=False)
    setup = setup_generation(build_model("tiny"), ids, mask, cc.DecodeConfig(gen_length=8,
                                                                             block_length=4))
    compiled = CompiledStepRunner(setup, backend="eager")
    with caplog.at_level(logging.WARNING, logger="credit_compile"):
        assert runner.with_graphs(compiled, unroll=2, required=False,
                                  graph_runner=failing_capture) is compiled
    assert "CUDA graph capture failed (operation not permitted" in caplog.text
    with pytest.raises(RuntimeError, match="not permitted"):
        runner.with_graphs(compiled, unroll=2, required=True, graph_runner=failing_capture)


# The replay protocol (unrolled replays, static buffers reloaded, draws from the seed, blocks
# streamed between replays) is host-side: the cheap backend. Inductor's code for these steps is
# proven equal in test_end_to_end.py.
@pytest.mark.cheap_compile
@pytest.mark.parametrize("config", [
    dict(strategy="credit", credit_layout="dense"),
    dict(strategy="credit", credit_layout="sparse", sync_every=3),
    dict(strategy="threshold", sync_every=5),
    dict(strategy="llada"),
    dict(strategy="llada", sync_every=3, steps=12),
    # Warm-up steps before capture draw random numbers; the first call's draws must still start
    # at the seed (a first call differed from the reference before).
    dict(strategy="llada", temperature=0.7, seed=5),
    dict(strategy="llada", remasking="random", seed=6, sync_every=2),
    dict(strategy="llada", temperature=0.7),  # the caller seeds the global RNG
    dict(strategy="credit", compile_layers_once=True, sync_every=2),
    # A KV cache: a refresh graph and a cached one; blocks end inside replays of 3 steps.
    dict(strategy="credit", kv_cache="dual", sync_every=3),
    dict(strategy="llada", kv_cache="dual", steps=8, sync_every=3),
    # Random draws with a cache: completion is checked after every step, whatever sync_every.
    dict(strategy="llada", kv_cache="dual", temperature=0.7, seed=5),
    dict(strategy="factor", factor=2.0, kv_cache="dual", sync_every=3),
    pytest.param(dict(strategy="credit", kv_cache="prompt", sync_every=3),
                 marks=pytest.mark.slow),  # the dual cache's protocol: main stack only
    # Refreshes every 2 steps: replays of 2 (gcd(4, 2)), each refresh opening one.
    pytest.param(dict(strategy="llada", steps=8, kv_cache="dual", kv_cache_refresh=2,
                      sync_every=4), marks=pytest.mark.slow),
    # A refresh at every step: no cached step, so replays of sync_every steps, draws included.
    pytest.param(dict(strategy="llada", kv_cache="dual", kv_cache_refresh=1, temperature=0.7,
                      seed=5, sync_every=4), marks=pytest.mark.slow),
], ids=["credit-dense", "credit-sparse-sync3", "threshold-sync5", "llada", "llada-sync3",
        "llada-gumbel-seeded", "llada-random-remasking-seeded", "llada-gumbel-global-seed",
        "credit-layers-once-sync2", "credit-dual-cache-sync3", "llada-dual-cache-sync3",
        "llada-dual-cache-gumbel", "factor-dual-cache-sync3", "credit-prompt-cache-sync3",
        "llada-dual-cache-refresh2", "llada-gumbel-refresh1-sync4"])
def test_unrolled_replay_protocol_equals_reference_on_cpu(config, graphs_on_cpu):
    model = build_model(get_config("tiny", init_std=0.5), seed=1)
    kwargs = dict(config, gen_length=16, block_length=8)
    fast = cc.optimize(model, cuda_graphs="on", **kwargs)
    for seed in (2, 3):  # the second call reloads new prompts into the same static buffers
        ids, mask = prompts(3, 6, "cpu", padded=True, seed=seed)
        reported, streamed = [], []
        torch.manual_seed(100 + seed)
        out = fast.generate(ids, mask, progress=reported.append,
                            on_block=lambda block, at=reported, to=streamed: to.append(
                                (at[-1], block)))
        assert fast.last_stats["runner"] == "cuda_graph"
        torch.manual_seed(100 + seed)
        ref = cc.generate_reference(model, ids, mask, **kwargs)
        assert_same_as_reference(out, ref, model, ids, mask, kwargs)
        # Progress counts denoising steps, not replays of several.
        unroll = cc.DecodeConfig(**kwargs).host_sync_every
        assert reported[-1] == out.steps_run >= out.nfe
        assert all(n % unroll == 0 for n in reported)
        # Blocks stream at the checks between replays, each once, as the output has them.
        assert [block.index for _, block in streamed] == [0, 1]
        assert all(torch.equal(block.tokens, out.sequences[:, block.start:block.start + 8])
                   for _, block in streamed)
        assert streamed[0][0] < streamed[-1][0] == out.steps_run


@pytest.mark.cheap_compile
def test_a_refresh_sharing_no_factor_with_sync_every_is_named():
    from credit_compile.step_cache import refresh_checks_every_step

    cached = cc.DecodeConfig(kv_cache="dual", sync_every=4)
    assert [refresh_checks_every_step(cached.replace(kv_cache_refresh=k))
            for k in (None, 1, 2, 3, 5, 8)] == [False, False, False, True, True, False]
    assert not refresh_checks_every_step(cached.replace(kv_cache_refresh=3, sync_every=1))
    # Random draws check every step anyway: the refresh is not the cause.
    assert not refresh_checks_every_step(cached.replace(kv_cache_refresh=3, strategy="llada",
                                                        temperature=0.5))


@pytest.mark.cheap_compile
@pytest.mark.slow  # compiles a cached model's two steps; main stack only
def test_graphs_with_a_refresh_sharing_no_factor_warn_and_decode_right(graphs_on_cpu):
    model = build_model(get_config("tiny", init_std=0.5), seed=1)
    kwargs = dict(gen_length=16, block_length=8, kv_cache="dual", kv_cache_refresh=3,
                  sync_every=4)
    fast = cc.optimize(model, cuda_graphs="on", **kwargs)
    ids, mask = prompts(2, 6, "cpu", padded=True, seed=2)
    with pytest.warns(UserWarning, match=r"kv_cache_refresh=3 and sync_every=4 share no factor"
                                         r".*one step per replay.*a multiple or a divisor of "
                                         r"sync_every"):
        out = fast.generate(ids, mask)
    assert fast.last_stats["runner"] == "cuda_graph"
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    # Per call: a model whose graphs of one step were built for sync_every=1 (the interval is
    # no part of the step key) still warns when a call brings the coprime pair.
    fresh = cc.optimize(model, cuda_graphs="on", **{**kwargs, "sync_every": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.generate(ids, mask)
    with pytest.warns(UserWarning, match=r"kv_cache_refresh=3 and sync_every=4 share no factor"):
        fresh.generate(ids, mask, sync_every=4)
    assert fresh.cached_steps == 1


@pytest.mark.cheap_compile
@pytest.mark.slow  # compiles three cached models' steps; main stack only
def test_calls_differing_in_kv_cache_refresh_share_graphs_of_one_replay_length(graphs_on_cpu):
    # Refreshing every 2 or every 6 steps of a block, with sync_every=4, replays 2 steps a time
    # (gcd): the same graphs, the host placing the refreshes. Every 4 (None) or every step (1)
    # needs graphs of their own.
    model = build_model(get_config("tiny", init_std=0.5), seed=1)
    kwargs = dict(strategy="llada", steps=16, gen_length=16, block_length=8, kv_cache="dual",
                  sync_every=4)
    fast = cc.optimize(model, cuda_graphs="on", **kwargs)
    ids, mask = prompts(3, 6, "cpu", padded=True, seed=2)
    outputs = {}
    for refresh, cached_steps in ((2, 1), (6, 1), (2, 1), (None, 2), (1, 3)):
        out = fast.generate(ids, mask, kv_cache_refresh=refresh)
        assert fast.last_stats["runner"] == "cuda_graph" and fast.cached_steps == cached_steps
        ref = cc.generate_reference(model, ids, mask, kv_cache_refresh=refresh, **kwargs)
        assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
        outputs[refresh] = out.sequences
    # The intervals decode differently here, so a schedule left at the first call's would fail.
    assert not torch.equal(outputs[2], outputs[6])


@pytest.mark.cheap_compile
@needs_cuda
@pytest.mark.parametrize("compile_step", [False, True])
def test_a_refresh_sharing_no_factor_warns_on_cuda_without_graphs(compile_step):
    # Without graphs the host still syncs at every check, so every step.
    model = build_model(get_config("tiny", init_std=0.5), device="cuda", seed=1)
    kwargs = dict(gen_length=16, block_length=8, kv_cache="dual", kv_cache_refresh=3,
                  sync_every=4)
    fast = cc.optimize(model, cuda_graphs="off", compile=compile_step, **kwargs)
    ids, mask = prompts(2, 6, "cuda", padded=True, seed=2)
    with pytest.warns(UserWarning, match=r"kv_cache_refresh=3 and sync_every=4 share no factor"):
        out = fast.generate(ids, mask)
    assert torch.equal(out.sequences, cc.generate_reference(model, ids, mask, **kwargs).sequences)


@needs_cuda
@pytest.mark.parametrize("config", [
    dict(strategy="credit", credit_layout="dense"),
    dict(strategy="credit", credit_layout="sparse"),
    dict(strategy="threshold"),
    dict(strategy="factor", factor=2.0, sync_every=3),
    dict(strategy="llada"),
    dict(strategy="credit", sync_every=3),
    # Captured random draws: the graph-safe generator gives each replay fresh numbers, and the
    # warm-up before capture must not move the seeded stream.
    dict(strategy="llada", temperature=0.7, seed=3),
    dict(strategy="llada", remasking="random", seed=4, sync_every=2),
])
@pytest.mark.parametrize("padded", [False, True])
def test_cuda_graph_replay_equals_reference(config, padded):
    # Larger init than the preset's 0.02: a near-uniform random model makes the confidence ranking
    # of LLaDA's sampler a near-tie between positions, which any kernel change may flip.
    model = build_model(get_config("tiny", init_std=0.5), device="cuda", seed=1)
    ids, mask = prompts(3, 6, "cuda", padded=padded, seed=2)
    kwargs = dict(config, gen_length=32, block_length=8)
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    fast = cc.optimize(model, cuda_graphs="on", **kwargs)
    first = fast.generate(ids, mask)
    assert fast.last_stats["runner"] == "cuda_graph"
    assert_same_as_reference(first, ref, model, ids, mask, kwargs)
    # A second call replays the same graph with new prompts.
    ids2, mask2 = prompts(3, 6, "cuda", padded=padded, seed=3)
    again = fast.generate(ids2, mask2)
    ref2 = cc.generate_reference(model, ids2, mask2, **kwargs)
    assert_same_as_reference(again, ref2, model, ids2, mask2, kwargs)


@needs_cuda
@pytest.mark.parametrize("config", [dict(strategy="credit"), dict(strategy="credit", sync_every=3),
                                    dict(strategy="llada", temperature=0.7, seed=3)])
def test_cuda_graph_with_compile_layers_once_equals_reference(config):
    model = build_model(get_config("tiny", init_std=0.5, n_layers=3), device="cuda", seed=1)
    ids, mask = prompts(3, 6, "cuda", padded=True, seed=2)
    kwargs = dict(config, gen_length=32, block_length=8)
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    fast = cc.optimize(model, cuda_graphs="on", compile_layers_once=True, **kwargs)
    out = fast.generate(ids, mask)
    assert fast.last_stats["runner"] == "cuda_graph"
    assert_same_as_reference(out, ref, model, ids, mask, kwargs)


@needs_cuda
@pytest.mark.parametrize("config", [
    dict(strategy="credit"),
    dict(strategy="credit", sync_every=3, credit_layout="dense"),
    dict(strategy="threshold", sync_every=5),
    dict(strategy="llada", steps=16, sync_every=2),
    dict(strategy="llada", temperature=0.7, seed=3),  # checks after every step
    dict(strategy="llada", cfg_scale=1.5, sync_every=3),  # a cache of twice the batch
    dict(strategy="credit", compile_layers_once=True, sync_every=3),
    dict(strategy="credit", sync_every=3, kv_cache="prompt"),
    dict(strategy="llada", cfg_scale=1.5, sync_every=3, kv_cache="prompt"),
    dict(strategy="llada", steps=16, sync_every=4, kv_cache_refresh=2),
])
def test_cuda_graph_with_kv_cache_equals_reference(config):
    model = build_model(get_config("tiny", init_std=0.5, n_layers=3), device="cuda", seed=1)
    kwargs = {"kv_cache": "dual", **config, "gen_length": 32, "block_length": 8}
    fast = cc.optimize(model, cuda_graphs="on", **kwargs)
    for seed in (2, 3):  # the second call replays both graphs with new prompts
        ids, mask = prompts(3, 6, "cuda", padded=True, seed=seed)
        ref = cc.generate_reference(model, ids, mask, **kwargs)
        out = fast.generate(ids, mask)
        assert fast.last_stats["runner"] == "cuda_graph"
        assert_same_as_reference(out, ref, model, ids, mask, kwargs)


@needs_cuda
@pytest.mark.parametrize("strategy", ["credit", "threshold", "llada"])
def test_cuda_graph_replay_equals_the_compiled_step_bit_for_bit(strategy):
    # Same kernels, replayed: any difference is a capture bug, not rounding.
    model = build_model("tiny", device="cuda", seed=1)
    ids, mask = prompts(3, 6, "cuda", padded=True, seed=4)
    kwargs = dict(strategy=strategy, gen_length=32, block_length=8)
    compiled = cc.optimize(model, cuda_graphs="off", **kwargs).generate(ids, mask)
    graphed = cc.optimize(model, cuda_graphs="on", **kwargs)
    out = graphed.generate(ids, mask)
    assert graphed.last_stats["runner"] == "cuda_graph"
    assert torch.equal(out.sequences, compiled.sequences) and out.nfe == compiled.nfe


@needs_cuda
@pytest.mark.parametrize("strategy", ["credit", "llada"])
def test_cuda_graph_replay_equals_reference_in_float64(strategy):
    # A float64 model: the forward's kernels leave no room for near-ties (the credit and
    # confidence math still runs in float32 on both paths).
    model = build_model("tiny", device="cuda", seed=1, dtype=torch.float64)
    ids, mask = prompts(3, 6, "cuda", padded=True, seed=5)
    kwargs = dict(strategy=strategy, gen_length=32, block_length=8, credit_layout="sparse")
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    out = cc.optimize(model, cuda_graphs="on", **kwargs).generate(ids, mask)
    assert_same_as_reference(out, ref, model, ids, mask, kwargs)


@needs_cuda
@pytest.mark.parametrize("config", [
    dict(strategy="credit"),
    dict(strategy="credit", credit_layout="dense", sync_every=3),
    dict(strategy="threshold"),
    dict(strategy="llada", steps=16),
])
def test_cuda_graph_replay_equals_reference_on_the_trained_model(config):
    # The shipped model on real held-out prompts of different lengths (a padded batch): trained
    # confidences leave wide margins, so this checks replay on the decisions a user sees.
    from credit_compile.assets import has_default_model, load_default_model
    from credit_compile.training.tasks import BLOCK_LENGTH, GEN_LENGTH, held_out_set

    if not has_default_model():
        pytest.skip("default model files missing")
    model, tokenizer = load_default_model("cuda")
    items = held_out_set(8, seed=11)
    batch = tokenizer([prompt for _, prompt, _ in items])
    ids, mask = batch["input_ids"].cuda(), batch["attention_mask"].cuda()
    assert not bool(mask.all()), "the batch must mix prompt lengths"
    kwargs = dict(config, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH)
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    fast = cc.optimize(model, cuda_graphs="on", **kwargs)
    out = fast.generate(ids, mask)
    assert fast.last_stats["runner"] == "cuda_graph"
    assert_same_as_reference(out, ref, model, ids, mask, kwargs)


@needs_cuda
def test_one_cuda_graph_serves_every_shape_of_a_bucket():
    # Captured once by precompile(), then replayed for prompts of every length in the bucket.
    from credit_compile.assets import has_default_model, load_default_model
    from credit_compile.training.tasks import BLOCK_LENGTH, GEN_LENGTH, held_out_set

    if not has_default_model():
        pytest.skip("default model files missing")
    model, tokenizer = load_default_model("cuda")
    kwargs = dict(gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH)
    fast = cc.optimize(model, cuda_graphs="on", prompt_bucket=16, batch_bucket=2, **kwargs)
    assert fast.precompile(batch_size=2, prompt_length=16) > 0  # single prompts pad to 2 rows
    lengths = set()
    for _, prompt, _ in held_out_set(8, seed=11):
        ids = tokenizer([prompt])["input_ids"].cuda()
        lengths.add(ids.shape[1])
        out = fast.generate(ids)
        assert fast.last_stats["runner"] == "cuda_graph"
        assert fast.last_stats["compile_seconds"] == 0.0
        # The contract: the reference padded alike (masked columns round differently on a GPU).
        bucketed = dict(kwargs, prompt_bucket=16, batch_bucket=2)
        assert_same_as_reference(out, cc.generate_reference(model, ids, **bucketed), model, ids,
                                 None, bucketed)
    assert len(lengths) >= 3 and fast.cached_steps == 1


@needs_cuda
def test_prompts_on_the_cpu_for_a_cuda_model_are_moved():
    model = build_model("tiny", device="cuda")
    ids, mask = prompts(2, 5, "cpu", padded=True)
    kwargs = dict(gen_length=8, block_length=4)
    out = cc.optimize(model, **kwargs).generate(ids, mask)
    assert out.sequences.device.type == "cuda"
    ref = cc.generate_reference(model, ids.cuda(), mask.cuda(), **kwargs)
    assert torch.equal(out.sequences, ref.sequences)


def _sharpen_logits(module, args, output):
    return output * 4.0  # on the final norm: the logits scale up, confidences rise


@needs_cuda
def test_cuda_graph_is_recaptured_after_the_model_changed():
    # A graph replays what it captured and checks no guards: a hook added (or a mode or an
    # attribute changed) after capture must drop it, not be ignored.
    model = build_model(get_config("tiny", init_std=0.5), device="cuda", seed=1)
    ids, mask = prompts(2, 6, "cuda", padded=True, seed=2)
    kwargs = dict(gen_length=32, block_length=8)
    fast = cc.optimize(model, cuda_graphs="on", **kwargs)
    before = fast.generate(ids, mask)
    model.model.transformer.ln_f.register_forward_hook(_sharpen_logits)
    out = fast.generate(ids, mask)
    assert fast.last_stats["runner"] == "cuda_graph" and fast.last_stats["compile_seconds"] > 0
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    assert ref.nfe != before.nfe  # the hook changes decoding (NFE 32 -> 13 on the CPU)
    assert_same_as_reference(out, ref, model, ids, mask, kwargs)


@needs_cuda
def test_cuda_graph_under_autocast_is_a_graph_of_its_own():
    # A graph replays the kernels chosen at capture: a float32 graph replayed under autocast
    # would silently decode in float32. The step under autocast is compared with the same
    # compiled step without graphs (the kernels a graph replays), not with eager bfloat16 cuBLAS.
    model = build_model(get_config("tiny", init_std=0.5), device="cuda", seed=1)
    ids, mask = prompts(2, 6, "cuda", padded=True, seed=2)
    kwargs = dict(gen_length=32, block_length=8)
    fast = cc.optimize(model, cuda_graphs="on", **kwargs)
    float32 = fast.generate(ids, mask)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fast.generate(ids, mask)
        compiled = cc.optimize(model, cuda_graphs="off", **kwargs).generate(ids, mask)
    assert out.stats["runner"] == "cuda_graph" and out.stats["compile_seconds"] > 0
    assert fast.cached_steps == 2
    assert torch.equal(out.sequences, compiled.sequences) and out.nfe == compiled.nfe
    assert torch.equal(fast.generate(ids, mask).sequences, float32.sequences)
    assert fast.cached_steps == 2  # the float32 graph, found again


@pytest.mark.cheap_compile
def test_a_call_that_recompiles_counts_as_compile_time_and_says_so(caplog):
    # Found by mutation testing: a recompiling call counted as decoding time, or not marked.
    import time

    from credit_compile.backend import make_backend

    model = build_model(get_config("tiny"), seed=1)
    ids = torch.randint(0, 100, (1, 4), generator=torch.Generator().manual_seed(0))
    setup = setup_generation(model, ids, None, cc.DecodeConfig(gen_length=8, block_length=4))
    backend = make_backend(inductor=False)
    runner = CompiledStepRunner(setup, backend)
    calls = []

    def step(recompile):  # stands in for the compiled step: a guard failure compiles anew
        calls.append(recompile)
        if recompile:
            backend.graphs_compiled += 1
            time.sleep(0.05)

    runner._steps["step"] = lambda: step(recompile=len(calls) in (0, 2))
    runner.run_phase("step")  # the first call: compile time, no warning
    first = runner.compile_seconds
    assert first >= 0.05 and "recompiled" not in caplog.text
    runner.run_phase("step")  # a plain call: decoding time
    assert runner.compile_seconds == first
    with caplog.at_level(logging.WARNING, logger="credit_compile"):
        runner.run_phase("step")  # the guards failed: compiled again
    assert runner.compile_seconds >= first + 0.05
    assert "the compiled step recompiled" in caplog.text


def test_the_models_own_error_in_the_warm_up_is_not_taken_for_a_failed_capture(caplog):
    # Found by review: under cuda_graphs="auto" the warm-up compiles the step; a model raising
    # there was logged as a failed capture and its step cached without graphs.
    from credit_compile import runner

    def refusing_forward(input_ids, attention_mask, position_ids, **kv_cache):
        raise ValueError("this model refuses the canvas")

    def warm_up_then_capture(compiled, unroll):
        for phase in compiled.schedule.phases:
            compiled.run_phase(phase)

    ids, _ = prompts(1, 5, "cpu", padded=False)
    setup = setup_generation(build_model("tiny"), ids, None,
                             cc.DecodeConfig(gen_length=8, block_length=4),
                             forward=refusing_forward)
    compiled = CompiledStepRunner(setup, backend="eager")
    with caplog.at_level(logging.WARNING, logger="credit_compile"), \
            pytest.raises(ValueError, match="refuses the canvas"):
        runner.with_graphs(compiled, unroll=1, required=False, graph_runner=warm_up_then_capture)
    assert "capture failed" not in caplog.text


class LoggingForward(torch.nn.Module):
    """A model whose forward logs as transformers' models do (a config deprecation through
    `logger.warning_once`, a module-level `logging.warning`, a plain `logger.info`)."""

    def __init__(self):
        super().__init__()
        from toy_models import ContextMixModel
        from transformers.utils import logging as hf_logging

        self.inner = ContextMixModel(vocab_size=40, mask_id=39, max_len=32)
        self.config = self.inner.config
        self.hf_logger = hf_logging.get_logger("tests.logging_forward")
        self.logger = logging.getLogger("tests.logging_forward")

    def forward(self, input_ids, attention_mask=None):
        self.hf_logger.warning_once("`use_return_dict` is deprecated! Use `return_dict` instead!")
        self.logger.info("forward of %s", tuple(input_ids.shape))
        logging.warning("a module-level logging call")
        return self.inner(input_ids, attention_mask)


@pytest.mark.cheap_compile
def test_logging_in_the_forward_compiles_as_one_graph(caplog):
    from torch._dynamo import config as dynamo_config

    ignored_before = set(dynamo_config.ignore_logger_methods)
    model = LoggingForward()
    ids = torch.randint(0, 30, (2, 4), generator=torch.Generator().manual_seed(0))
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4)
    counters.clear()
    fast = cc.optimize(model, gen_length=8, block_length=4)
    out = fast.generate(ids)
    assert fast.last_stats["runner"] == "compiled"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
    # torch 2.11 logged an error at each compile when it wrote the ignored functions as JSON.
    assert not [r for r in caplog.records if r.name.startswith("torch") and r.levelno >= 40]
    # Applied for the step's calls only: no global setting changed.
    assert set(dynamo_config.ignore_logger_methods) == ignored_before
    report = cc.verify(model, ids, gen_length=8, block_length=4)  # compiles the forward alone
    assert report.ok and report.max_logit_difference < 1e-5


@pytest.mark.cheap_compile
def test_a_recompile_after_a_guarded_change_is_compile_time(caplog):
    class ListScaledModel(ContextMixModel):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return super().forward(input_ids, attention_mask, position_ids) * self.scales[0]

    model = ListScaledModel(seed=4)
    model.scales = [1.0]
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    assert fast.generate(ids).stats["compile_seconds"] > 0
    assert fast.generate(ids).stats["compile_seconds"] == 0.0
    # Inside a list, out of the model fingerprint's sight: dynamo baked the old value in, guarded
    # by its own check, and recompiles the cached step.
    model.scales[0] = 5.0
    with caplog.at_level("WARNING", logger="credit_compile"):
        out = fast.generate(ids)
    assert out.stats["compile_seconds"] > 0
    assert "the compiled step recompiled" in caplog.text
    assert_same_generation(cc.generate_reference(model, ids, gen_length=8, block_length=4), out)
    assert fast.generate(ids).stats["compile_seconds"] == 0.0


def _fake_cuda_setup():
    state = types.SimpleNamespace(device=torch.device("cuda"))
    return types.SimpleNamespace(state=state, config=cc.DecodeConfig(),
                                 step_functions=lambda: {"step": lambda: None})


@pytest.mark.cheap_compile
def test_a_failed_capture_falls_back_to_the_compiled_step_under_auto(monkeypatch, caplog):
    # cuda_graphs="auto" promises the compiled step when capture fails; "on" raises.
    from credit_compile import runner

    def failing_capture(*args, **kwargs):
        raise RuntimeError("capture failed: an op synchronised")

    monkeypatch.setattr(runner, "CudaGraphStepRunner", failing_capture)
    with caplog.at_level(logging.WARNING, logger="credit_compile"):
        out = runner.make_runner(_fake_cuda_setup(), backend="eager", cuda_graphs="auto")
    assert isinstance(out, runner.CompiledStepRunner)
    assert "CUDA graph capture failed" in caplog.text
    with pytest.raises(RuntimeError, match="capture failed"):
        runner.make_runner(_fake_cuda_setup(), backend="eager", cuda_graphs="on")


@pytest.mark.cheap_compile
def test_a_compile_error_is_not_taken_for_a_failed_capture(monkeypatch, caplog):
    # Under "auto" a failed capture falls back to the compiled step; a step that does not
    # compile would fail there again, behind a warning blaming the capture.
    from credit_compile import runner

    def failing_compile(*args, **kwargs):
        raise runner.CompileError("could not compile")

    monkeypatch.setattr(runner, "CudaGraphStepRunner", failing_compile)
    with caplog.at_level(logging.WARNING, logger="credit_compile"), \
            pytest.raises(cc.CompileError, match="could not compile"):
        runner.make_runner(_fake_cuda_setup(), backend="eager", cuda_graphs="auto")
    assert "CUDA graph capture failed" not in caplog.text


class GraphBreakingModel(ContextMixModel):
    """A forward that branches on a tensor's value: a graph break, which fullgraph refuses."""

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        if (input_ids == self.config.mask_token_id).sum().item() > 3:
            input_ids = input_ids.clone()
        return super().forward(input_ids, attention_mask, position_ids)


@pytest.mark.cheap_compile
def test_a_model_that_does_not_compile_gets_an_error_naming_the_eager_way():
    ids, _ = make_prompts(1, 5, 0, padded=False)
    fast = cc.optimize(GraphBreakingModel(seed=2), gen_length=8, block_length=4)
    with pytest.raises(cc.CompileError, match=r"compile=False") as raised:
        fast.generate(ids)
    assert isinstance(raised.value.__cause__, torch._dynamo.exc.TorchDynamoException)
    assert "item" in str(raised.value.__cause__)  # dynamo's own account, with the model line
    assert "graph breaks" in str(raised.value)
    with pytest.raises(cc.CompileError):
        fast.precompile(1, 5)
    # The way out it names works, and decodes the reference's tokens.
    eager = cc.optimize(GraphBreakingModel(seed=2), gen_length=8, block_length=4, compile=False)
    reference = cc.generate_reference(GraphBreakingModel(seed=2), ids,
                                      config=eager.resolved_config())
    assert torch.equal(eager.generate(ids).sequences, reference.sequences)


class RaisingModel(ContextMixModel):
    """A forward that raises a Python exception of its own: in eager, or only as it traces."""

    def __init__(self, only_when_traced: bool):
        super().__init__(seed=2)
        self.only_when_traced = only_when_traced

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        if not self.only_when_traced or torch.compiler.is_compiling():
            raise ValueError(f"this model takes at most 4 tokens, not {input_ids.shape[1]}")
        return super().forward(input_ids, attention_mask, position_ids)


@pytest.mark.cheap_compile
def test_a_model_raising_its_own_error_as_it_traces_gets_that_error_not_a_compile_error():
    ids, _ = make_prompts(1, 5, 0, padded=False)
    fast = cc.optimize(RaisingModel(only_when_traced=False), gen_length=8, block_length=4)
    with pytest.raises(ValueError, match="at most 4 tokens, not 13") as raised:
        fast.generate(ids)
    assert not isinstance(raised.value, cc.CompileError)
    # Raised under tracing only, the eager step runs: then it is the compiler's failure.
    fast = cc.optimize(RaisingModel(only_when_traced=True), gen_length=8, block_length=4)
    with pytest.raises(cc.CompileError, match="compile=False"):
        fast.generate(ids)


@pytest.mark.cheap_compile
def test_on_compile_error_eager_warns_once_and_decodes_the_reference_tokens(caplog):
    ids, mask = make_prompts(2, 5, 0, padded=True)
    fast = cc.optimize(GraphBreakingModel(seed=2), gen_length=8, block_length=4,
                       on_compile_error="eager")
    reference = cc.generate_reference(GraphBreakingModel(seed=2), ids, mask,
                                      config=fast.resolved_config())
    with caplog.at_level(logging.WARNING, logger="credit_compile"):
        first = fast.generate(ids, mask)
        second = fast.generate(ids, mask)
    said = [r.message for r in caplog.records if "could not compile" in r.message]
    assert len(said) == 1 and "data-dependent" in said[0] and "runs eagerly" in said[0]
    for out in (first, second):
        assert torch.equal(out.sequences, reference.sequences) and out.nfe == reference.nfe
        assert out.stats["runner"] == "eager"
    # A step that compiles is compiled as before: the option changes only the failure.
    fine = cc.optimize(ContextMixModel(seed=2), gen_length=8, block_length=4,
                       on_compile_error="eager")
    assert fine.generate(ids, mask).stats["runner"] == "compiled"
    # precompile() of a shape that does not compile warns instead of raising.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="credit_compile"):
        fast.precompile(1, 6)
    assert "could not compile" in caplog.text
    # The model's own exception is raised with it too (it is not the compiler's).
    raising = cc.optimize(RaisingModel(only_when_traced=False), gen_length=8, block_length=4,
                          on_compile_error="eager")
    with pytest.raises(ValueError, match="at most 4 tokens"):
        raising.generate(ids, mask)


@pytest.mark.cheap_compile
def test_on_compile_error_eager_after_an_exception_under_tracing_steps_once():
    # The model raises only as dynamo traces it: the eager step run to tell has taken the step,
    # which must not be taken twice (NFE and tokens as the reference's).
    ids, _ = make_prompts(1, 5, 0, padded=False)
    fast = cc.optimize(RaisingModel(only_when_traced=True), gen_length=8, block_length=4,
                       on_compile_error="eager")
    reference = cc.generate_reference(RaisingModel(only_when_traced=True), ids,
                                      config=fast.resolved_config())
    out = fast.generate(ids)
    assert torch.equal(out.sequences, reference.sequences) and out.nfe == reference.nfe
    assert out.stats["runner"] == "eager"


@pytest.mark.cheap_compile
@pytest.mark.inductor
def test_a_failing_compiler_backend_is_not_blamed_on_the_model():
    from credit_compile import runner

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("lowering failed")

    ids, _ = make_prompts(1, 5, 0, padded=False)
    setup = cc.generation_setup.setup_generation(ContextMixModel(seed=2), ids, None,
                                       cc.DecodeConfig(gen_length=8, block_length=4))
    compiled = runner.CompiledStepRunner(setup, backend=failing_backend)
    with pytest.raises(cc.CompileError, match="compile=False") as raised:
        compiled.step()
    assert "a bug to report" in str(raised.value) and "graph breaks" not in str(raised.value)
    assert "lowering failed" in str(raised.value.__cause__)
