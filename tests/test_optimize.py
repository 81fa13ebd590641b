"""optimize(): the compiled fast path equals the eager reference token for token."""

from __future__ import annotations

import contextlib
import logging
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch._dynamo.utils import counters
from toy_models import ContextMixModel, make_prompts

import credit_compile as cc
from credit_compile.passes import pass_count

# What surrounds the compiled step (the step cache, threads, state, warnings) compiles cheaply;
# the tests proving Inductor's code equal to the reference are marked `inductor`.
pytestmark = pytest.mark.cheap_compile

MASK = 39




def assert_same_generation(ref, out):
    assert torch.equal(ref.sequences, out.sequences), (ref.sequences, out.sequences)
    assert ref.nfe == out.nfe


CONFIGS = st.sampled_from([
    dict(strategy="credit"),
    dict(strategy="credit", credit_layout="dense"),
    dict(strategy="credit", credit_layout="sparse"),
    dict(strategy="credit", alpha=1.5, beta=0.5, gamma=0.5, tau=0.7),
    dict(strategy="credit", credit_layout="sparse", credit_slots=2, tau=0.95),
    dict(strategy="threshold", tau=0.8),
    dict(strategy="factor", factor=2.0),
    dict(strategy="llada"),
    dict(strategy="llada", remasking="random", seed=3),
    dict(strategy="llada", temperature=0.7, seed=5, steps=8),
    dict(strategy="llada", cfg_scale=1.0),
    dict(strategy="credit", early_stop=True, eos_token_id=7),
])


@settings(max_examples=8)
@given(
    config=CONFIGS,
    batch=st.integers(1, 3),
    prompt_length=st.integers(1, 6),
    blocks=st.sampled_from([(8, 4), (8, 8), (16, 4)]),
    seed=st.integers(0, 2**16),
    padded=st.booleans(),
    sync_every=st.integers(1, 3),
    prompt_bucket=st.sampled_from([None, None, 4, 8]),
    batch_bucket=st.sampled_from([None, None, 2]),
)
@pytest.mark.inductor
def test_optimized_equals_reference(config, batch, prompt_length, blocks, seed, padded, sync_every,
                                    prompt_bucket, batch_bucket):
    gen_length, block_length = blocks
    model = ContextMixModel(seed=seed % 7)
    ids, mask = make_prompts(batch, prompt_length, seed, padded)
    kwargs = dict(config, gen_length=gen_length, block_length=block_length,
                  prompt_bucket=prompt_bucket, batch_bucket=batch_bucket)
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    fast = cc.optimize(model, sync_every=sync_every, **kwargs).generate(ids, mask)
    assert_same_generation(ref, fast)


@pytest.mark.inductor
def test_no_graph_breaks_one_compile_and_none_on_second_call():
    torch._dynamo.reset()
    counters.clear()
    model = ContextMixModel()
    ids, mask = make_prompts(2, 5, seed=1, padded=True)
    fast = cc.optimize(model, gen_length=16, block_length=4, credit_layout="dense")
    first = fast.generate(ids, mask)
    assert first.nfe >= 4
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1  # one graph serves every step and block
    frames = counters["frames"]["ok"]
    second = fast.generate(ids.flip(0), mask.flip(0))
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["frames"]["ok"] == frames  # no recompilation for the same shapes
    assert not torch.equal(first.sequences, second.sequences)
    assert pass_count("credit_fusion") == 1


@pytest.mark.inductor
def test_second_call_reuses_state_and_matches_reference():
    model = ContextMixModel(seed=2)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    for seed in range(3):
        ids, mask = make_prompts(2, 4, seed, padded=True)
        assert_same_generation(cc.generate_reference(model, ids, mask, gen_length=8, block_length=4),
                               fast.generate(ids, mask))


def test_concurrent_calls_do_not_share_buffers_mid_decode():
    # Every call of one shape decodes in the same static buffers: without the lock, threads
    # overwrote each other's canvas and returned wrong tokens silently.
    import threading

    model = ContextMixModel(seed=1)
    fast = cc.optimize(model, gen_length=16, block_length=4, compile=False)
    prompts = [make_prompts(1, 4, seed, padded=False)[0] for seed in range(6)]
    results = [None] * len(prompts)

    def decode(i):
        results[i] = fast.generate(prompts[i]).sequences

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for prompt, result in zip(prompts, results, strict=True):
        ref = cc.generate_reference(model, prompt, gen_length=16, block_length=4)
        assert torch.equal(result, ref.sequences)


def test_each_output_carries_its_own_stats():
    model = ContextMixModel(seed=1)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    out = fast.generate(make_prompts(1, 3, 0, padded=False)[0])
    assert out.stats == fast.last_stats and out.stats["runner"] == "eager"
    assert cc.generate_reference(model, make_prompts(1, 3, 0, padded=False)[0],
                                 gen_length=8, block_length=4).stats is None


def test_generate_inside_generate_is_refused_not_a_deadlock():
    model = ContextMixModel(seed=1)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    ids = make_prompts(1, 3, 0, padded=False)[0]

    def nested(_steps):
        fast.generate(ids)

    with pytest.raises(RuntimeError, match=r"called while this thread is inside generate\(\)"):
        fast.generate(ids, progress=nested)
    assert_same_generation(cc.generate_reference(model, ids, gen_length=8, block_length=4),
                           fast.generate(ids))  # the lock was released


def test_moving_the_model_waits_for_a_running_generate():
    import threading

    model = ContextMixModel(seed=1)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    ids = make_prompts(1, 3, 0, padded=False)[0]
    inside, release, moved = threading.Event(), threading.Event(), threading.Event()

    def hold(_steps):
        inside.set()
        assert release.wait(10)

    def move():
        fast.to(torch.float64)
        moved.set()

    decoding = threading.Thread(target=lambda: fast.generate(ids, progress=hold))
    decoding.start()
    assert inside.wait(10)
    mover = threading.Thread(target=move)
    mover.start()
    assert not moved.wait(0.3)  # blocked on the call lock, the weights untouched
    assert fast.model.token.dtype == torch.float32
    release.set()
    decoding.join(10)
    mover.join(10)
    assert moved.is_set() and fast.model.token.dtype == torch.float64


def test_moving_the_model_inside_its_own_generate_is_refused():
    fast = cc.optimize(ContextMixModel(seed=1), gen_length=8, block_length=4, compile=False)
    ids = make_prompts(1, 3, 0, padded=False)[0]
    with pytest.raises(RuntimeError, match=r"model.to\(\)/cast called while this thread is "
                                           r"inside generate\(\)"):
        fast.generate(ids, progress=lambda _steps: fast.to(torch.float64))
    assert fast.model.token.dtype == torch.float32
    fast.to(torch.float64)  # the lock was released
    assert fast.model.token.dtype == torch.float64


def test_inference_mode_before_or_after_a_normal_call():
    # A server that warms up under torch.inference_mode() and serves without it (or the other
    # way round): buffers made under inference mode could not be updated in place afterwards.
    model = ContextMixModel(seed=6)
    ids, mask = make_prompts(2, 4, 1, padded=True)
    ref = cc.generate_reference(model, ids, mask, gen_length=8, block_length=4)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        assert_same_generation(ref, fast.generate(ids, mask))
    assert_same_generation(ref, fast.generate(ids, mask))
    with torch.inference_mode():
        assert_same_generation(ref, fast.generate(ids, mask))
    assert counters["stats"]["unique_graphs"] - graphs == 1  # one mode for every call


def test_a_copy_compiles_its_own_steps():
    import copy

    model = ContextMixModel(seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 3, 0, padded=False)
    first = fast.generate(ids)
    twin = copy.deepcopy(fast)
    assert twin.cached_steps == 0 and fast.cached_steps == 1
    assert twin.model is not fast.model
    assert_same_generation(first, twin.generate(ids))


@pytest.mark.inductor
def test_trace_matches_reference():
    model = ContextMixModel(seed=4)
    ids, _ = make_prompts(1, 3, 0, padded=False)
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4, trace=True)
    fast = cc.optimize(model, gen_length=8, block_length=4).generate(ids, trace=True)
    assert [t.committed for t in ref.trace] == [t.committed for t in fast.trace]
    assert len(fast.trace) == fast.nfe


def test_optimized_model_behaves_like_the_model():
    model = ContextMixModel()
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids = torch.randint(0, 30, (1, 5))
    assert torch.equal(fast(ids), model(ids))
    assert fast.state_dict().keys() == model.state_dict().keys()
    assert fast.config is model.config  # the wrapped model's own config
    assert fast.decode_config.gen_length == 8
    assert fast.eval() is fast and not fast.model.training
    assert fast.to(torch.float64).token.dtype == torch.float64


def test_optimize_rejects_a_model_without_mask_token():
    model = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="mask_id="):
        cc.optimize(model)


def test_optimize_accepts_mask_id_argument_for_generic_modules():
    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = ContextMixModel()

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids, attention_mask)

    model = Bare()
    ids = torch.randint(0, 30, (1, 4))
    fast = cc.optimize(model, mask_id=MASK, gen_length=8, block_length=4)
    assert_same_generation(
        cc.generate_reference(model, ids, gen_length=8, block_length=4, mask_id=MASK),
        fast.generate(ids),
    )










@pytest.mark.filterwarnings("ignore:strategy=.* does not read:UserWarning")  # set on purpose
def test_options_the_step_does_not_read_reuse_the_compiled_step():
    model = ContextMixModel(seed=2)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4)
    assert_same_generation(ref, fast.generate(ids))
    graphs = counters["stats"]["unique_graphs"]
    for overrides in [dict(sync_every=8), dict(seed=5), dict(steps=4), dict(cuda_graphs="off"),
                      dict(credit_layout="sparse", credit_slots=None)]:
        out = fast.generate(ids, **overrides)
        assert_same_generation(ref, out)
        assert out.stats["compile_seconds"] == 0.0, overrides
    assert fast.generate(ids, trace=True).stats["compile_seconds"] == 0.0
    assert counters["stats"]["unique_graphs"] == graphs and fast.cached_steps == 1
    # Options the step does read compile a step of their own.
    fast.generate(ids, tau=0.5)
    assert fast.cached_steps == 2
    # Credit fields outside "credit", and tau in "llada", are not read either.
    for strategy, unread in [("threshold", dict(alpha=0.1, beta=0.2, gamma=2.0,
                                                credit_layout="dense")),
                             ("llada", dict(alpha=0.1, tau=0.5, credit_layout="dense"))]:
        first = fast.generate(ids, strategy=strategy)
        out = fast.generate(ids, strategy=strategy, **unread)
        assert out.stats["compile_seconds"] == 0.0 and torch.equal(first.sequences, out.sequences)
        assert_same_generation(cc.generate_reference(model, ids, gen_length=8, block_length=4,
                                                     strategy=strategy, **unread), out)
    assert fast.cached_steps == 4
    # A bucket keeps an attention mask (a step of its own); buckets padding to the same length
    # share it.
    assert_same_generation(ref, fast.generate(ids, prompt_bucket=4))
    assert_same_generation(ref, fast.generate(ids, prompt_bucket=2))
    assert fast.cached_steps == 5


class Pipeline(nn.Module):
    def __init__(self, seed, model=None):
        super().__init__()
        model = ContextMixModel(seed=seed) if model is None else model
        self.lm = cc.optimize(model, gen_length=8, block_length=4)
        self.head = nn.Linear(2, 2)


@pytest.mark.parametrize("strict", [True, False])
def test_a_module_holding_an_optimized_llada_model_loads_its_state(strict):
    # The project's model keeps its network under `model.`, as Hugging Face models do: a saved
    # key such as lm.model.transformer... must not be mistaken for one already under `model`.
    from credit_compile.models import build_model

    saved = Pipeline(0, build_model("tiny", seed=1))
    loaded = Pipeline(0, build_model("tiny", seed=2))
    state = saved.state_dict()
    assert "lm.model.transformer.wte.weight" in state
    result = loaded.load_state_dict(state, strict=strict)
    assert not result.missing_keys and not result.unexpected_keys
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("llada", [False, True])
def test_keys_missing_from_a_parents_state_are_named_as_saved(llada):
    # The wrapped model reports what it missed under `lm.model.`; the caller's checkpoint names
    # those keys `lm.` (and an LLaDA model's own keys begin with `model.`).
    from credit_compile.models import build_model

    loaded = Pipeline(0, build_model("tiny", seed=2) if llada else None)
    state = Pipeline(0, build_model("tiny", seed=1) if llada else None).state_dict()
    gone = "lm.model.transformer.wte.weight" if llada else "lm.token"
    del state[gone]
    state["lm.model.nothing" if llada else "lm.nothing"] = torch.zeros(1)
    result = loaded.load_state_dict(state, strict=False)
    assert result.missing_keys == [gone]
    assert result.unexpected_keys == ["lm.model.nothing" if llada else "lm.nothing"]
    with pytest.raises(RuntimeError) as error:
        loaded.load_state_dict(state)
    assert f'Missing key(s) in state_dict: "{gone}"' in str(error.value)
    # A load of the wrapped model's own layout, at the top, is named as it was.
    assert cc.optimize(ContextMixModel(), gen_length=8, block_length=4).load_state_dict(
        {}, strict=False).missing_keys == ["token", "context", "position"]


@pytest.mark.parametrize("assign", [False, True])
def test_a_module_holding_an_optimized_model_saves_and_loads_its_state(assign):
    saved, loaded = Pipeline(seed=3), Pipeline(seed=9)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    loaded.lm.generate(ids)  # a cached step, which the load must not leave stale
    state = saved.state_dict()
    assert set(state) == {"lm.token", "lm.context", "lm.position", "head.weight", "head.bias"}
    result = loaded.load_state_dict(state, assign=assign)  # strict: raises on a key mismatch
    assert not result.missing_keys and not result.unexpected_keys
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    plain = ContextMixModel(seed=1)
    plain.load_state_dict({k.removeprefix("lm."): v for k, v in state.items() if "lm." in k})
    assert_same_generation(cc.generate_reference(plain, ids, gen_length=8, block_length=4),
                           loaded.lm.generate(ids))


def test_dtype_is_not_a_per_call_option():
    fast = cc.optimize(ContextMixModel(), gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 3, 0, padded=False)
    for call in (lambda: fast.generate(ids, dtype="bfloat16"),
                 lambda: fast.precompile(1, 3, dtype="bfloat16")):
        with pytest.raises(ValueError, match=r"dtype cannot change per call: optimize\(model, dtype"):
            call()


def test_weights_changed_through_the_wrapped_model_drop_the_cached_steps():
    # model.model.to(...) bypasses OptimizedModel._apply; a captured CUDA graph would replay on
    # the old, freed weights, so the change is detected at the next call.
    model = ContextMixModel(seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    fast.generate(ids)
    fast.model.to(torch.float64)
    out = fast.generate(ids)
    assert out.stats["compile_seconds"] > 0 and fast.cached_steps == 1
    assert_same_generation(cc.generate_reference(model, ids, gen_length=8, block_length=4), out)


def _scale_logits_hook(module, args, output):
    return output * 0.4


MODEL_CHANGES = {
    # Each changes what the forward computes; a captured CUDA graph would replay the old one.
    "attribute": lambda model: setattr(model, "sharpness", 0.4),
    "config field": lambda model: setattr(model.config, "scale", 0.4),
    "dict in the config": lambda model: model.config.rope_scaling.update(factor=0.4),
    "forward hook": lambda model: model.register_forward_hook(_scale_logits_hook),
}


class ConfigScaledModel(ContextMixModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.config.scale = 3.0  # an instance field, as in a Hugging Face config
        self.config.rope_scaling = {"type": "linear", "factor": 1.0}

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        scale = self.config.scale * self.config.rope_scaling["factor"]
        return super().forward(input_ids, attention_mask, position_ids) * scale


@pytest.fixture
def graphs_possible(monkeypatch):
    """The whole-model fingerprint CUDA models get (graphs check no guards), on the CPU."""
    from credit_compile import step_cache

    monkeypatch.setattr(step_cache, "graphs_possible", lambda model: True)


@pytest.mark.parametrize("change", sorted(MODEL_CHANGES))
def test_a_model_changed_between_calls_drops_the_cached_steps(change, caplog, graphs_possible):
    # The cache, not dynamo's guards, must see it: CUDA graphs check no guards.
    model = ConfigScaledModel(seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    before = fast.generate(ids)
    MODEL_CHANGES[change](model)
    with caplog.at_level("WARNING", logger="credit_compile"):
        out = fast.generate(ids)
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4)
    assert_same_generation(ref, out)
    assert ref.nfe != before.nfe  # the change matters to decoding
    assert out.stats["compile_seconds"] > 0 and fast.cached_steps == 1
    assert "recompiled" not in caplog.text  # a new step, not a guard failure inside the old one


@contextlib.contextmanager
def _deterministic_algorithms():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@contextlib.contextmanager
def _default_dtype(dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@contextlib.contextmanager
def _tf32_matmuls():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


TORCH_SETTINGS = {
    # Each chooses kernels a captured CUDA graph would keep replaying after it changed.
    "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    "attention backend": lambda: torch.nn.attention.sdpa_kernel(
        torch.nn.attention.SDPBackend.MATH),
    "deterministic algorithms": _deterministic_algorithms,
    "default dtype": lambda: _default_dtype(torch.float64),
    "tf32 matmuls": _tf32_matmuls,
}


def _runners_checking_their_settings(monkeypatch) -> list:
    """make_runner replaced by one whose steps assert they run under the global torch settings
    the runner was built under, as a captured graph silently assumes; returns the built list."""
    from credit_compile import step_cache
    from credit_compile.torch_settings import torch_settings_key

    make_runner, built = step_cache.make_runner, []

    def checking_make_runner(*args, **kwargs):
        runner, settings = make_runner(*args, **kwargs), torch_settings_key()
        step = runner.step

        def step_under_its_settings():
            assert torch_settings_key() == settings, "a step ran under settings it was not built for"
            step()

        runner.step = step_under_its_settings
        built.append(runner)
        return runner

    monkeypatch.setattr(step_cache, "make_runner", checking_make_runner)
    return built


@pytest.mark.inductor
@pytest.mark.parametrize("setting", sorted(TORCH_SETTINGS))
def test_each_step_runs_under_the_torch_settings_it_was_built_under(setting, monkeypatch):
    built = _runners_checking_their_settings(monkeypatch)
    model = ContextMixModel(seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    before = fast.generate(ids)
    with TORCH_SETTINGS[setting]():
        out = fast.generate(ids)
        ref = cc.generate_reference(model, ids, gen_length=8, block_length=4)
    assert_same_generation(ref, out)
    assert len(built) == 2
    assert_same_generation(before, fast.generate(ids))  # the first settings' step, found again
    assert len(built) == 2 and fast.cached_steps == 2


@pytest.mark.inductor
def test_precompile_serves_calls_under_the_settings_it_ran_under(monkeypatch):
    built = _runners_checking_their_settings(monkeypatch)
    fast = cc.optimize(ContextMixModel(seed=3), gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast.precompile(1, 4)
        fast.generate(ids)
    assert len(built) == 1
    fast.generate(ids)
    assert len(built) == 2


class MatmulMixModel(ContextMixModel):
    """ContextMixModel's logits through a matmul, which autocast runs in bfloat16."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        g = torch.Generator().manual_seed(7)
        self.mix = nn.Parameter(torch.eye(40) + 0.3 * torch.randn(40, 40, generator=g))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return super().forward(input_ids, attention_mask, position_ids) @ self.mix


@pytest.mark.inductor
def test_a_compiled_step_under_autocast_is_a_step_of_its_own(caplog):
    # Not a guard failure inside the float32 step: on CUDA that step is a graph that would replay
    # float32 kernels under autocast.
    model = MatmulMixModel(seed=3)
    kwargs = dict(gen_length=8, block_length=4)
    fast = cc.optimize(model, **kwargs)
    ids, _ = make_prompts(2, 4, 1, padded=False)
    fast.generate(ids)
    with caplog.at_level("WARNING", logger="credit_compile"), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast.generate(ids)
        ref = cc.generate_reference(model, ids, trace=True, **kwargs)
    assert_same_generation(ref, out)
    assert out.stats["compile_seconds"] > 0 and fast.cached_steps == 2
    assert "recompiled" not in caplog.text
    float32 = cc.generate_reference(model, ids, trace=True, **kwargs)
    assert any(a.confidence != b.confidence  # autocast changes what is computed
               for a, b in zip(ref.trace, float32.trace, strict=False))


def _force_token_7(module, args, logits):
    return logits + 100.0 * torch.nn.functional.one_hot(torch.tensor(7), logits.shape[-1])


HOOK_CHANGES = {
    "forward hook added": lambda model: model.register_forward_hook(_force_token_7),
    "global forward hook added": lambda model: nn.modules.module.register_module_forward_hook(
        _force_token_7),
    "forward hook removed": None,
}


@pytest.mark.parametrize("change", sorted(HOOK_CHANGES))
def test_hooks_changed_between_calls_are_seen_without_graphs(change):
    # Dynamo does not guard hooks (skip_nnmodule_hook_guards), so the compiled step itself,
    # not only a CUDA graph, would keep the hooks it was traced with.
    model = ContextMixModel(seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    handles = []
    if change == "forward hook removed":
        handles.append(model.register_forward_hook(_force_token_7))
    before = fast.generate(ids)
    try:
        if change == "forward hook removed":
            handles.pop().remove()
        else:
            handles.append(HOOK_CHANGES[change](model))
        out = fast.generate(ids)
        ref = cc.generate_reference(model, ids, gen_length=8, block_length=4)
    finally:
        for handle in handles:
            handle.remove()
    assert_same_generation(ref, out)
    assert not torch.equal(ref.sequences, before.sequences)  # the hook matters to decoding


CONFIG_TOKEN_CHANGES = {
    # Read from the model's config at each call by the reference; a cached step must follow.
    "eos token": (dict(early_stop=True), lambda config: setattr(config, "eos_token_id", 11)),
    "eos tokens as a list": (dict(early_stop=True),
                             lambda config: setattr(config, "eos_token_id", [11, 35])),
    "mask token": ({}, lambda config: setattr(config, "mask_token_id", 38)),
}


@pytest.mark.parametrize("change", sorted(CONFIG_TOKEN_CHANGES))
def test_token_ids_changed_in_the_model_config_are_decoded_with(change):
    options, edit = CONFIG_TOKEN_CHANGES[change]
    model = ContextMixModel(seed=3, eos_id=13)
    kwargs = dict(gen_length=8, block_length=4, **options)
    fast = cc.optimize(model, **kwargs)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    before = fast.generate(ids)
    edit(model.config)
    out = fast.generate(ids)
    ref = cc.generate_reference(model, ids, **kwargs)
    assert_same_generation(ref, out)
    assert not torch.equal(ref.sequences, before.sequences)  # the change matters to decoding


def test_a_mask_token_named_in_the_optimize_config_holds_for_calls_with_their_own_config():
    model = ContextMixModel(seed=3)
    model.config.mask_token_id = None
    fast = cc.optimize(model, cc.DecodeConfig(mask_id=MASK, gen_length=8, block_length=4),
                       compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    out = fast.generate(ids, config=cc.DecodeConfig(gen_length=8, block_length=4, compile=False))
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4, mask_id=MASK)
    assert_same_generation(ref, out)
    assert fast.resolved_config(cc.DecodeConfig()).mask_id == MASK


def test_a_model_config_that_lost_its_mask_token_is_refused_naming_the_fix():
    model = ContextMixModel(seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    model.config.mask_token_id = None
    ids, _ = make_prompts(1, 4, 0, padded=False)
    for call in (lambda: fast.generate(ids), lambda: fast.precompile(1, 4)):
        with pytest.raises(ValueError, match=r"no mask token.*optimize\(model, mask_id="):
            call()


def test_a_forward_that_updates_its_own_attributes_keeps_its_cached_step(monkeypatch,
                                                                         graphs_possible):
    from credit_compile import step_cache

    class CountingModel(ContextMixModel):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            self.calls = getattr(self, "calls", 0) + 1
            return super().forward(input_ids, attention_mask, position_ids)

    built = []
    monkeypatch.setattr(step_cache, "make_runner",
                        lambda *a, **k: built.append(1) or make_runner(*a, **k))
    make_runner = cc.runner.make_runner
    fast = cc.optimize(CountingModel(seed=3), gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    for _ in range(3):
        fast.generate(ids)
    assert len(built) == 1


@pytest.mark.parametrize("assign", [False, True])
def test_loaded_weights_are_decoded_with(assign):
    model = ContextMixModel(seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    fast.generate(ids)
    other = ContextMixModel(seed=9)
    fast.load_state_dict(other.state_dict(), assign=assign)
    out = fast.generate(ids)
    assert_same_generation(cc.generate_reference(other, ids, gen_length=8, block_length=4), out)
    # In place the compiled step stays valid; new storage is caught and recompiled.
    assert (out.stats["compile_seconds"] > 0) == assign


def test_non_finite_logits_are_named_when_nothing_commits():
    class NaNLogits(ContextMixModel):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return super().forward(input_ids, attention_mask, position_ids) * float("nan")

    with pytest.raises(RuntimeError, match=r"no token was committed. Non-finite logits"):
        cc.generate_reference(NaNLogits(), make_prompts(1, 3, 0, padded=False)[0],
                              gen_length=8, block_length=4)








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




def test_decode_seconds_leave_out_the_compile(tmp_path):
    import time

    fast = cc.optimize(ContextMixModel(seed=8), gen_length=8, block_length=4)
    ids = torch.randint(0, 30, (1, 5))
    start = time.perf_counter()
    stats = fast.generate(ids).stats
    wall = time.perf_counter() - start
    assert stats["compile_seconds"] > 0
    assert stats["compile_seconds"] + stats["decode_seconds"] <= wall




def test_no_forward_after_completion_on_the_cpu():
    # A CPU host check is free and a step after completion costs a forward: none is run.
    model = ContextMixModel(seed=2)
    ids, _ = make_prompts(2, 4, 0, padded=False)
    out = cc.optimize(model, gen_length=8, block_length=4, sync_every=4).generate(ids)
    assert out.steps_run == out.nfe


@pytest.mark.inductor
def test_a_restarted_server_compiles_the_step_from_inductors_cache(tmp_path, monkeypatch):
    # A fresh compile of the same step in a new process (here: dynamo reset, new wrapper) is
    # served from Inductor's on-disk caches: nothing in the backend's config patches or the pass
    # pipeline may make the step uncacheable. (The passes run before the cache lookup, so the key
    # covers the rewritten graph; on torch 2.11 the pipeline's uuid() names them in it.)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # empty: the first compile misses
    model = ContextMixModel(seed=5)
    ids, mask = make_prompts(2, 5, seed=1, padded=True)
    kwargs = dict(gen_length=8, block_length=4, credit_layout="dense")
    hits = ("fxgraph_cache_hit", "autograd_cache_hit")
    outputs = []
    for _ in range(2):
        torch._dynamo.reset()
        counters.clear()
        outputs.append(cc.optimize(model, **kwargs).generate(ids, mask))
        assert pass_count("credit_fusion") == 1  # the rewrite is in the cached code too
        found = {k: counters[g][k] for g in ("inductor", "aot_autograd") for k in hits
                 if counters[g][k]}
        assert bool(found) == (len(outputs) == 2), found
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    for out in outputs:
        assert_same_generation(ref, out)


def test_credit_slots_is_part_of_the_compiled_step_key():
    # The sparse layout's slot count sizes static buffers: a call with another credit_slots must
    # not decode (silently) in the first call's buffers.
    model = ContextMixModel(seed=2)
    fast = cc.optimize(model, gen_length=8, block_length=4, tau=0.99)
    ids, _ = make_prompts(2, 4, 0, padded=False)
    for slots in (None, 1, 2):
        out = fast.generate(ids, credit_slots=slots)
        ref = cc.generate_reference(model, ids, gen_length=8, block_length=4, tau=0.99,
                                    credit_slots=slots)
        assert_same_generation(ref, out)
    assert fast.cached_steps == 3


@pytest.mark.parametrize("seed", [None, 3])
def test_precompile_leaves_the_callers_rng_alone(seed):
    # Its setup seeds the global RNG (config.seed) and its compiling step draws random
    # remasking; a server precompiling at start-up must not reseed or advance the caller's draws.
    fast = cc.optimize(ContextMixModel(seed=1), strategy="llada", remasking="random",
                       gen_length=8, block_length=4, seed=seed)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fast.precompile(1, 4)
    assert torch.equal(torch.rand(3), expected)


def test_moving_the_optimized_model_frees_its_cached_steps_now():
    # _apply promises to free the static buffers (and graphs) at once, not at the next call.
    fast = cc.optimize(ContextMixModel(seed=3), gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    fast.generate(ids)
    assert fast.cached_steps == 1
    fast.to(torch.float64)
    assert fast.cached_steps == 0


@pytest.mark.parametrize("no_op", [lambda m: m.to("cpu"), lambda m: m.float(),
                                   lambda m: m.to(torch.float32)])
def test_a_move_that_changes_nothing_keeps_the_cached_steps(no_op):
    # A server's defensive model.to(device) must not make the next request compile again.
    fast = cc.optimize(ContextMixModel(seed=3), gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    fast.precompile(1, 4)
    no_op(fast)
    assert fast.cached_steps == 1
    assert fast.generate(ids).stats["compile_seconds"] == 0


def test_an_uninitialised_optimized_model_has_no_attributes_rather_than_recursing():
    # What an unpickler or a custom copier meets before __setstate__.
    bare = cc.OptimizedModel.__new__(cc.OptimizedModel)
    assert not hasattr(bare, "generation_config")


def test_precompile_then_a_forward_updating_its_attributes_keeps_the_step(monkeypatch,
                                                                          graphs_possible):
    # precompile runs the step (the forward updates its own attribute); the fingerprint must
    # be taken after it, or the first generate() drops the precompiled step and compiles again.
    from credit_compile import step_cache

    class MarkingModel(ContextMixModel):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            self.has_run = True  # written, never read: no dynamo guard, but the fingerprint sees it
            return super().forward(input_ids, attention_mask, position_ids)

    make_runner = cc.runner.make_runner
    built = []
    monkeypatch.setattr(step_cache, "make_runner",
                        lambda *a, **k: built.append(1) or make_runner(*a, **k))
    fast = cc.optimize(MarkingModel(seed=3), gen_length=8, block_length=4)
    fast.precompile(1, 4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    out = fast.generate(ids)
    assert len(built) == 1
    assert out.stats["compile_seconds"] == 0.0


def test_optimize_puts_the_model_in_eval_mode():
    # Documented: the model is put in eval mode in place (a training model's dropout would
    # randomise every call's logits).
    model = ContextMixModel(seed=1).train()
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    assert not model.training and not fast.model.training


def test_precompile_padded_prepares_the_step_of_a_padded_batch():
    # padded=True builds an attention mask with padding; one of ones would be dropped (a batch
    # without padding runs the unmasked forward) and prepare the other step.
    fast = cc.optimize(ContextMixModel(seed=2), gen_length=8, block_length=4, compile=False)
    fast.precompile(2, 4, padded=True)
    ids, mask = make_prompts(2, 4, seed=0, padded=True)
    assert not bool(mask.all())
    fast.generate(ids, mask)
    assert fast.cached_steps == 1


def test_precompile_prompts_start_with_no_padding_token():
    # A row led by the pad (or end-of-text) token needs a mask: precompile's prompt of one
    # repeated id avoids them, and the mask token.
    model = ContextMixModel(seed=2, eos_id=1)
    model.config.pad_token_id = 0
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    fast.precompile(2, 4)
    model.config.pad_token_id = None  # end-of-text 1 pads where no pad token is named
    fast.precompile(1, 4, mask_id=0)
    assert fast.cached_steps == 2


def test_a_callback_that_raises_keeps_the_step_of_a_forward_updating_its_attributes(
        monkeypatch, graphs_possible):
    # The fingerprint is taken again after an interrupted call too: the forward's own attribute
    # updates are not the caller's change, and must not drop the step (a recompile and, on
    # CUDA, a recapture at the next call).
    from credit_compile import step_cache

    class CountingModel(ContextMixModel):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            self.calls = getattr(self, "calls", 0) + 1
            return super().forward(input_ids, attention_mask, position_ids)

    make_runner, built = cc.runner.make_runner, []
    monkeypatch.setattr(step_cache, "make_runner",
                        lambda *a, **k: built.append(1) or make_runner(*a, **k))
    fast = cc.optimize(CountingModel(seed=3), gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)

    def hang_up(block):
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        fast.generate(ids, on_block=hang_up)
    fast.generate(ids)
    assert len(built) == 1


def _fake_cuda_setup():
    state = types.SimpleNamespace(device=torch.device("cuda"))
    return types.SimpleNamespace(state=state, config=cc.DecodeConfig(),
                                 step_functions=lambda: {"step": lambda: None})


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


def test_on_compile_error_is_validated_and_in_the_step_key():
    with pytest.raises(ValueError, match=r"on_compile_error='ignore': use one of \('raise', "
                                         r"'eager'\)"):
        cc.DecodeConfig(on_compile_error="ignore")
    fast = cc.optimize(ContextMixModel(seed=2), gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 5, 0, padded=False)
    fast.generate(ids)
    fast.generate(ids, on_compile_error="eager")
    assert fast.cached_steps == 2  # a raising step must not serve an 'eager' call, or back
    eager = cc.optimize(ContextMixModel(seed=2), gen_length=8, block_length=4, compile=False)
    eager.generate(ids)
    eager.generate(ids, on_compile_error="eager")
    assert eager.cached_steps == 1  # without compile it changes nothing


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










def test_a_copy_made_during_a_call_can_generate(tmp_path):
    # A copy taken inside the call (from a progress callback: a checkpointing server) must
    # not inherit the lock owner, or its own generate() is refused as re-entry.
    import copy

    fast = cc.optimize(ContextMixModel(seed=3), gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    copies = []
    fast.generate(ids, progress=lambda steps: copies.append(copy.deepcopy(fast)) if not copies
                  else None)
    out = copies[0].generate(ids)
    assert torch.equal(out.sequences, fast.generate(ids).sequences)


def test_llada_steps_is_part_of_the_compiled_step_key():
    # `steps` sets the llada transfer schedule the compiled step reads.
    model = ContextMixModel(seed=2)
    fast = cc.optimize(model, strategy="llada", gen_length=8, block_length=4)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    for steps in (None, 4, 2):
        out = fast.generate(ids, steps=steps)
        ref = cc.generate_reference(model, ids, strategy="llada", gen_length=8, block_length=4,
                                    steps=steps)
        assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe, steps
    assert fast.cached_steps == 3


def test_precompile_pays_the_compile_and_generate_reports_none():
    # precompile() returns the compile seconds and resets them; the generate() it
    # prepared compiles nothing and reports 0.
    model = ContextMixModel(seed=2)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    assert fast.precompile(1, 4) > 0
    ids, _ = make_prompts(1, 4, 0, padded=False)
    out = fast.generate(ids)
    assert out.stats["compile_seconds"] == 0.0 and fast.cached_steps == 1
    assert torch.equal(out.sequences, cc.generate_reference(model, ids, gen_length=8,
                                                            block_length=4).sequences)


def test_nested_wrappers_are_all_unwrapped():
    # torch.compile(optimize(model)) is two wrappers deep; the model under both decides the
    # forward signature (attention mask honoured), so a padded batch decodes as on the model.
    model = ContextMixModel(seed=3)
    wrapped = torch.compile(cc.optimize(model, gen_length=8, block_length=4))
    ids = torch.tensor([[0, 5, 6], [4, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    expected = cc.generate_reference(model, ids, mask, gen_length=8, block_length=4)
    out = cc.generate_reference(wrapped, ids, mask, gen_length=8, block_length=4)
    assert torch.equal(out.sequences, expected.sequences)
