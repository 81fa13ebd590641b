"""api.py: `optimize(model)` and the `OptimizedModel` it returns behave like the model they wrap
(forward, state_dict, to(), eval(), copies) and serve requests: one call at a time per model,
precompile(), per-call options and their refusals.

That the optimized path decodes the reference's tokens is tests/test_end_to_end.py; what it keeps
between calls, tests/test_step_cache.py."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers import assert_same_generation, small
from torch import nn
from toy_models import ContextMixModel, layered_model, make_prompts, token_prompts

import credit_compile as cc

MASK = 39


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_each_output_carries_its_own_stats():
    model = ContextMixModel(seed=1)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    out = fast.generate(make_prompts(1, 3, 0, padded=False)[0])
    assert out.stats == fast.last_stats and out.stats["runner"] == "eager"
    assert cc.generate_reference(model, make_prompts(1, 3, 0, padded=False)[0],
                                 gen_length=8, block_length=4).stats is None


@pytest.mark.cheap_compile
def test_generate_inside_generate_is_refused_not_a_deadlock():
    model = ContextMixModel(seed=1)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    ids = make_prompts(1, 3, 0, padded=False)[0]

    def nested(_steps):
        fast.generate(ids)

    raised = []

    def outer():
        try:
            fast.generate(ids, progress=nested)
        except RuntimeError as error:
            raised.append(str(error))

    caller = threading.Thread(target=outer, daemon=True)
    caller.start()
    caller.join(timeout=60)  # a deadlock fails the test rather than hanging the suite
    assert not caller.is_alive(), "generate() inside generate() deadlocked"
    assert raised and "called while this thread is inside generate()" in raised[0]
    assert_same_generation(cc.generate_reference(model, ids, gen_length=8, block_length=4),
                           fast.generate(ids))  # the lock was released


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_moving_the_model_inside_its_own_generate_is_refused():
    fast = cc.optimize(ContextMixModel(seed=1), gen_length=8, block_length=4, compile=False)
    ids = make_prompts(1, 3, 0, padded=False)[0]
    with pytest.raises(RuntimeError, match=r"model.to\(\)/cast called while this thread is "
                                           r"inside generate\(\)"):
        fast.generate(ids, progress=lambda _steps: fast.to(torch.float64))
    assert fast.model.token.dtype == torch.float32
    fast.to(torch.float64)  # the lock was released
    assert fast.model.token.dtype == torch.float64


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_optimize_rejects_a_model_without_mask_token():
    model = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="mask_id="):
        cc.optimize(model)


@pytest.mark.cheap_compile
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


class Pipeline(nn.Module):
    def __init__(self, seed, model=None):
        super().__init__()
        model = ContextMixModel(seed=seed) if model is None else model
        self.lm = cc.optimize(model, gen_length=8, block_length=4)
        self.head = nn.Linear(2, 2)


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_dtype_is_not_a_per_call_option():
    fast = cc.optimize(ContextMixModel(), gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 3, 0, padded=False)
    for call in (lambda: fast.generate(ids, dtype="bfloat16"),
                 lambda: fast.precompile(1, 3, dtype="bfloat16")):
        with pytest.raises(ValueError, match=r"dtype cannot change per call: optimize\(model, dtype"):
            call()


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_a_model_config_that_lost_its_mask_token_is_refused_naming_the_fix():
    model = ContextMixModel(seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    model.config.mask_token_id = None
    ids, _ = make_prompts(1, 4, 0, padded=False)
    for call in (lambda: fast.generate(ids), lambda: fast.precompile(1, 4)):
        with pytest.raises(ValueError, match=r"no mask token.*optimize\(model, mask_id="):
            call()


@pytest.mark.cheap_compile
def test_decode_seconds_leave_out_the_compile(tmp_path):
    import time

    fast = cc.optimize(ContextMixModel(seed=8), gen_length=8, block_length=4)
    ids = torch.randint(0, 30, (1, 5))
    start = time.perf_counter()
    stats = fast.generate(ids).stats
    wall = time.perf_counter() - start
    assert stats["compile_seconds"] > 0
    assert stats["compile_seconds"] + stats["decode_seconds"] <= wall


@pytest.mark.cheap_compile
def test_no_forward_after_completion_on_the_cpu():
    # A CPU host check is free and a step after completion costs a forward: none is run.
    model = ContextMixModel(seed=2)
    ids, _ = make_prompts(2, 4, 0, padded=False)
    out = cc.optimize(model, gen_length=8, block_length=4, sync_every=4).generate(ids)
    assert out.steps_run == out.nfe


@pytest.mark.cheap_compile
def test_moving_the_optimized_model_frees_its_cached_steps_now():
    # _apply promises to free the static buffers (and graphs) at once, not at the next call.
    fast = cc.optimize(ContextMixModel(seed=3), gen_length=8, block_length=4, compile=False)
    ids, _ = make_prompts(1, 4, 0, padded=False)
    fast.generate(ids)
    assert fast.cached_steps == 1
    fast.to(torch.float64)
    assert fast.cached_steps == 0


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
def test_an_uninitialised_optimized_model_has_no_attributes_rather_than_recursing():
    # What an unpickler or a custom copier meets before __setstate__.
    bare = cc.OptimizedModel.__new__(cc.OptimizedModel)
    assert not hasattr(bare, "generation_config")


@pytest.mark.cheap_compile
def test_optimize_puts_the_model_in_eval_mode():
    # Documented: the model is put in eval mode in place (a training model's dropout would
    # randomise every call's logits).
    model = ContextMixModel(seed=1).train()
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    assert not model.training and not fast.model.training


@pytest.mark.cheap_compile
def test_precompile_padded_prepares_the_step_of_a_padded_batch():
    # padded=True builds an attention mask with padding; one of ones would be dropped (a batch
    # without padding runs the unmasked forward) and prepare the other step.
    fast = cc.optimize(ContextMixModel(seed=2), gen_length=8, block_length=4, compile=False)
    fast.precompile(2, 4, padded=True)
    ids, mask = make_prompts(2, 4, seed=0, padded=True)
    assert not bool(mask.all())
    fast.generate(ids, mask)
    assert fast.cached_steps == 1


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


@pytest.mark.cheap_compile
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


def test_a_call_turning_the_cache_off_drops_its_refresh():
    model = layered_model(2, seed=2)
    ids, mask = token_prompts(2, 5, seed=1)
    fast = cc.optimize(model, gen_length=8, block_length=4, kv_cache="prompt",
                       kv_cache_refresh=2, compile=False)
    out = fast.generate(ids, mask, kv_cache="none")
    assert fast.resolved_config(kv_cache="none").kv_cache_refresh is None
    ref = cc.generate_reference(model, ids, mask, gen_length=8, block_length=4)
    assert torch.equal(out.sequences, ref.sequences)
    with pytest.raises(ValueError, match=r"kv_cache_refresh=2 with kv_cache='none'"):
        fast.generate(ids, mask, kv_cache="none", kv_cache_refresh=2)  # asked for: refused


@pytest.mark.cheap_compile
def test_a_callback_that_raises_ends_the_call_and_releases_the_model():
    # A server's client went away: the error reaches the caller, and the next call decodes as
    # if the first had never run, its timings its own (the first call's compile is not its).
    model = layered_model(1, seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4)
    ids, mask = token_prompts(2, 4, seed=4)

    def hang_up(block):
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError, match="client went away"):
        fast.generate(ids, mask, on_block=hang_up)  # compiles, then the callback raises
    ref = cc.generate_reference(model, ids, mask, gen_length=8, block_length=4)
    out = fast.generate(ids, mask)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats["compile_seconds"] == 0.0 and out.stats["decode_seconds"] > 0


def test_generate_from_on_block_is_refused_naming_the_callback():
    model = layered_model(1, seed=3)
    fast = cc.optimize(model, gen_length=8, block_length=4, compile=False)
    ids, mask = token_prompts(1, 4, seed=4)
    with pytest.raises(RuntimeError, match="on_block callback"):
        fast.generate(ids, mask, on_block=lambda block: fast.generate(ids, mask))


@pytest.mark.parametrize("bad", [True, 2.0, 0])
def test_precompile_arguments(bad):
    fast = cc.optimize(ContextMixModel(), compile=False, **small())
    with pytest.raises(ValueError, match=r"precompile\(batch_size=.*use a positive batch size"):
        fast.precompile(batch_size=bad, prompt_length=3)


# Found by the mutation round (tests/mutation_round.py): fails on its mutant.
@pytest.mark.cheap_compile
def test_the_compile_is_reported_by_the_call_that_compiled_only():
    fast = cc.optimize(layered_model(2), gen_length=8, block_length=4)
    ids = token_prompts(1, 5, padded=False)[0]
    assert fast.generate(ids).stats["compile_seconds"] > 0
    assert fast.generate(ids).stats["compile_seconds"] == 0.0
    assert fast.last_stats["compile_seconds"] == 0.0
