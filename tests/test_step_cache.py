"""step_cache.py: the compiled steps of one optimized model. Which options make a step of their own
(the step key), which calls share one, the least recently used dropped beyond max_cached_steps,
and every step dropped when the model, its hooks, weights or the global torch settings change
under it, so a later call never decodes with a stale step."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from helpers import assert_same_generation, prompts
from torch import nn
from torch._dynamo.utils import counters
from toy_models import ContextMixModel, layered_model, make_prompts, token_prompts

import credit_compile as cc
from credit_compile import step_cache
from credit_compile.models import build_model


@pytest.mark.cheap_compile
@pytest.mark.inductor
def test_second_call_reuses_state_and_matches_reference():
    model = ContextMixModel(seed=2)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    for seed in range(3):
        ids, mask = make_prompts(2, 4, seed, padded=True)
        assert_same_generation(cc.generate_reference(model, ids, mask, gen_length=8, block_length=4),
                               fast.generate(ids, mask))


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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

    monkeypatch.setattr(step_cache, "graphs_possible", lambda model: True)


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_a_forward_that_updates_its_own_attributes_keeps_its_cached_step(monkeypatch,
                                                                         graphs_possible):

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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_precompile_then_a_forward_updating_its_attributes_keeps_the_step(monkeypatch,
                                                                          graphs_possible):
    # precompile runs the step (the forward updates its own attribute); the fingerprint must
    # be taken after it, or the first generate() drops the precompiled step and compiles again.

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


@pytest.mark.cheap_compile
def test_a_callback_that_raises_keeps_the_step_of_a_forward_updating_its_attributes(
        monkeypatch, graphs_possible):
    # The fingerprint is taken again after an interrupted call too: the forward's own attribute
    # updates are not the caller's change, and must not drop the step (a recompile and, on
    # CUDA, a recapture at the next call).

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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_least_recently_used_step_is_dropped_beyond_max_cached_steps():
    model = build_model("tiny")
    fast = cc.optimize(model, gen_length=4, block_length=4, compile=False, max_cached_steps=2)
    for length in (3, 4, 3, 5):
        fast.generate(prompts(1, length, "cpu")[0])
    assert fast.cached_steps == 2
    assert sorted(key[0] for key in fast._steps.keys()) == [(1, 3 + 4), (1, 5 + 4)]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"max_cached_steps=.*: use a positive integer"):
            cc.optimize(model, max_cached_steps=bad)
        with pytest.raises(ValueError, match=r"max_cached_steps=.*: use a positive integer"):
            fast.max_cached_steps = bad


@pytest.mark.cheap_compile
def test_lowering_max_cached_steps_drops_the_least_recently_used_now(caplog):
    # A server lowering the limit to free memory must not wait for a new shape to arrive.
    fast = cc.optimize(build_model("tiny"), gen_length=4, block_length=4, compile=False)
    for length in (3, 4, 5, 6, 4):
        fast.generate(prompts(1, length, "cpu")[0])
    with caplog.at_level(logging.INFO, logger="credit_compile"):
        fast.max_cached_steps = 2
    assert sorted(key[0] for key in fast._steps.keys()) == [(1, 4 + 4), (1, 6 + 4)]
    # Asked for, so said at INFO, and without the overflow warning's advice to raise the limit.
    assert sum("freed the eager step" in r.message and "lowered to 2" in r.message
               and r.levelno == logging.INFO for r in caplog.records) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    fast.max_cached_steps = 8  # raising it drops nothing
    assert fast.cached_steps == 2


@pytest.mark.cheap_compile
def test_max_cached_steps_is_not_changed_from_inside_a_call():
    fast = cc.optimize(build_model("tiny"), gen_length=4, block_length=4, compile=False)

    def lower(_steps):
        fast.max_cached_steps = 1

    with pytest.raises(RuntimeError, match=r"setting max_cached_steps called while this thread "
                                           r"is inside generate\(\)"):
        fast.generate(prompts(1, 3, "cpu")[0], progress=lower)
    assert fast.max_cached_steps == 8


@pytest.mark.cheap_compile  # what holds a dropped step is dynamo's and ours, whatever the backend
def test_a_dropped_compiled_step_is_freed():
    import gc
    import weakref

    from credit_compile import runner as runner_module

    fast = cc.optimize(build_model("tiny"), gen_length=4, block_length=4, max_cached_steps=1)
    fast.generate(prompts(1, 3, "cpu")[0])
    dropped = weakref.ref(fast._steps.runners()[0])
    fast.generate(prompts(1, 4, "cpu")[0])
    gc.collect()
    assert dropped() is None
    # Dynamo stores compiled graphs in the compiled function's globals: the runner's own, not
    # the module's, which would keep every dropped step's code alive.
    assert not [name for name in vars(runner_module) if name.startswith("__compiled_fn")]


@pytest.mark.cheap_compile
@pytest.mark.parametrize("compile", [True, False])
def test_dropping_a_step_says_so_when_it_compiles_again(caplog, compile):
    fast = cc.optimize(build_model("tiny"), gen_length=4, block_length=4, compile=compile,
                       max_cached_steps=1)
    with caplog.at_level(logging.WARNING, logger="credit_compile"):
        fast.generate(prompts(1, 3, "cpu")[0])
        assert not caplog.records
        fast.generate(prompts(1, 4, "cpu")[0])
    assert fast.cached_steps == 1
    said = [r.message for r in caplog.records if "dropped the compiled step" in r.message]
    if compile:
        assert any("canvas shape (1, 7)" in m and "max_cached_steps=1" in m for m in said)
    else:  # an eager step's buffers are freed quietly: nothing compiles again
        assert not said


@pytest.mark.cheap_compile
def test_compile_layers_once_is_part_of_the_step_key():
    fast = cc.optimize(layered_model(2), gen_length=8, block_length=4)
    ids = torch.randint(0, 120, (1, 5))
    fast.generate(ids)
    fast.generate(ids, compile_layers_once=True)
    assert fast.cached_steps == 2
    fast.generate(ids, compile_layers_once=True)
    assert fast.cached_steps == 2


def test_without_compile_it_shares_the_eager_step():
    fast = cc.optimize(layered_model(2), gen_length=8, block_length=4, compile=False)
    ids = torch.randint(0, 120, (1, 5))
    fast.generate(ids)
    fast.generate(ids, compile_layers_once=True)
    assert fast.cached_steps == 1


@pytest.mark.cheap_compile
def test_kv_cache_is_part_of_the_step_key():
    fast = cc.optimize(layered_model(2), gen_length=8, block_length=4)
    ids = token_prompts(1, 5)[0]
    fast.generate(ids)
    fast.generate(ids, kv_cache="dual")
    fast.generate(ids, kv_cache="prompt")
    assert fast.cached_steps == 3


@pytest.mark.cheap_compile
def test_calls_differing_only_in_the_refresh_interval_share_a_step():
    # The host places the refreshes; only an interval of 1 (no cached step) compiles anew.
    model = layered_model(2, seed=1)
    decode = dict(gen_length=16, block_length=8, kv_cache="dual", strategy="llada", steps=16)
    fast = cc.optimize(model, **decode)
    ids, mask = token_prompts(3, 6, seed=2)
    outputs = {}
    for refresh, cached_steps in ((2, 1), (3, 1), (None, 1), (1, 2), (3, 2)):
        out = fast.generate(ids, mask, kv_cache_refresh=refresh)
        assert fast.cached_steps == cached_steps
        ref = cc.generate_reference(model, ids, mask, kv_cache_refresh=refresh, **decode)
        assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe
        outputs[refresh] = out.sequences
    # The intervals decode differently here, so a schedule left at the first call's would fail.
    assert not torch.equal(outputs[2], outputs[3]) and not torch.equal(outputs[3], outputs[None])


@pytest.mark.cheap_compile
def test_precompile_compiles_both_steps():
    model = layered_model(2)
    fast = cc.optimize(model, gen_length=8, block_length=4, kv_cache="dual")
    assert fast.precompile(2, 5) > 0
    ids = token_prompts(2, 5, seed=4)[0]
    out = fast.generate(ids)
    assert fast.last_stats["compile_seconds"] == 0.0  # neither step compiled in the call
    ref = cc.generate_reference(model, ids, gen_length=8, block_length=4, kv_cache="dual")
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe


# Found by the mutation round (tests/mutation_round.py): each fails on its mutant.
@pytest.mark.cheap_compile
def test_a_padded_batch_and_an_unpadded_one_of_one_shape_get_steps_of_their_own():
    model = layered_model(2, seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    plain = token_prompts(2, 6, seed=1, padded=False)[0]
    ids, mask = token_prompts(2, 6, seed=2)
    assert plain.shape == ids.shape and not bool(mask.all())
    fast.generate(plain)
    out = fast.generate(ids, mask)
    assert fast.cached_steps == 2
    reference = cc.generate_reference(model, ids, mask, gen_length=8, block_length=4)
    assert torch.equal(out.sequences, reference.sequences)
