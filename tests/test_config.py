"""config.py: `DecodeConfig` validates its fields (a ValueError naming the fix), normalises them
(NumPy scalars, id lists) and derives the host's check interval."""

from __future__ import annotations

import pytest
from helpers import CONFIG_ERRORS

import credit_compile as cc
from credit_compile import DecodeConfig


def test_random_draws_are_checked_after_every_step():
    gumbel = cc.DecodeConfig(strategy="llada", temperature=0.5, kv_cache="dual", sync_every=4)
    assert gumbel.host_sync_every == 1
    assert gumbel.replace(remasking="random", temperature=0.0).host_sync_every == 1
    assert gumbel.replace(temperature=0.0).host_sync_every == 4  # greedy: no draws
    assert gumbel.replace(kv_cache="none").host_sync_every == 4
    assert gumbel.replace(kv_cache_refresh=6).host_sync_every == 1  # draws: every step anyway
    # Every step a refresh: no cached step, so none idle and none for the host to place.
    assert gumbel.replace(kv_cache_refresh=1).host_sync_every == 4
    greedy = gumbel.replace(temperature=0.0)
    assert [greedy.replace(kv_cache_refresh=k).host_sync_every for k in (1, 2, 3, 4, 8, 6)] == \
        [4, 2, 1, 4, 4, 2]


def test_llada2_sampling_draws_random_numbers_and_is_checked_after_every_step():
    sampled = cc.DecodeConfig(strategy="llada2", temperature=0.8, kv_cache="block", sync_every=4)
    assert sampled.draws_random and sampled.host_sync_every == 1
    assert not sampled.replace(temperature=0.0).draws_random
    assert sampled.replace(temperature=0.0).host_sync_every == 4
    assert sampled.replace(kv_cache="none").host_sync_every == 4  # no idle steps to draw in
    assert not cc.DecodeConfig(strategy="threshold").draws_random


def test_top_k_and_top_p_are_read_by_the_llada2_sampler_when_it_samples():
    """At temperature 0 the official greedy path ignores them: a call is warned, and the
    compiled step's key leaves them out (config.without_unread_options)."""
    from credit_compile.config import unread_options, without_unread_options

    sampled = cc.DecodeConfig(strategy="llada2", temperature=0.7, top_k=5, top_p=0.9)
    assert unread_options(sampled) == ()
    greedy = sampled.replace(temperature=0.0)
    assert unread_options(greedy) == ("top_k", "top_p")
    assert without_unread_options(greedy) == greedy.replace(top_k=None, top_p=None)
    assert unread_options(cc.DecodeConfig(strategy="llada", temperature=1.0, top_k=5)) == ("top_k",)


def test_dream_sampling_and_alg_temp_draw_random_numbers():
    greedy = cc.DecodeConfig(strategy="dream", kv_cache="dual", sync_every=4)
    assert not greedy.draws_random and greedy.host_sync_every == 4
    assert not greedy.replace(dream_alg_temp=0.0).draws_random  # 0: the most confident
    for drawn in (greedy.replace(temperature=0.5), greedy.replace(dream_alg_temp=0.1)):
        assert drawn.draws_random and drawn.host_sync_every == 1


def test_the_dream_options_are_read_by_the_dream_sampler_alone():
    """Its top_k and top_p at any temperature too: Dream's filters renormalise the
    probabilities its confidences read."""
    from credit_compile.config import readers_of, unread_options

    dream = cc.DecodeConfig(strategy="dream", dream_alg="topk_margin", dream_eps=0.1,
                            dream_alg_temp=0.5, top_k=5, top_p=0.9, steps=8, gen_length=32)
    assert unread_options(dream) == ()
    assert unread_options(dream.replace(strategy="llada")) == (
        "dream_alg", "dream_eps", "dream_alg_temp", "top_k", "top_p")
    assert readers_of("dream_alg") == "'dream'"
    assert readers_of("top_k") == "'llada2' with temperature > 0, or 'dream'"


@pytest.mark.parametrize("given, stored", [
    ([3, 5], (3, 5)), (7, (7,)), ((2,), (2,)), (None, None)])
def test_ids_are_stored_as_a_tuple(given, stored):
    assert cc.DecodeConfig(suppress_tokens=given).suppress_tokens == stored
    assert cc.DecodeConfig(strategy="llada", commit_last_tokens=given).commit_last_tokens == stored


@pytest.mark.parametrize("options, says", [
    (dict(suppress_tokens=()), r"suppress_tokens=\(\): use a token id, a tuple or list"),
    (dict(suppress_tokens=(-1,)), r"suppress_tokens=\(-1,\): use a token id"),
    (dict(suppress_tokens=True), r"suppress_tokens=True: use a token id"),
    (dict(commit_last_tokens=3), r"commit_last_tokens with strategy='credit'.*use suppress_tokens"),
    (dict(strategy="llada", remasking="random", commit_last_tokens=3),
     r"remasking='random': it orders the commits of the 'llada' sampler's low-confidence"),
])
def test_bad_values_are_refused_naming_the_fix(options, says):
    with pytest.raises(ValueError, match=says):
        cc.DecodeConfig(**options)


@pytest.mark.parametrize("fields, fix", CONFIG_ERRORS)
def test_config_errors_name_the_fix(fields, fix):
    with pytest.raises(ValueError, match=fix):
        DecodeConfig(**fields)
    with pytest.raises(ValueError, match=fix):
        DecodeConfig().replace(**fields)


def test_valid_edges_are_accepted():
    # The boundaries of the documented ranges are valid.
    DecodeConfig(tau=1.0, alpha=0.0, beta=0.0, gamma=1e-6)
    DecodeConfig(beta=1.0, tau=1e-6)
    DecodeConfig(strategy="llada", gen_length=32, block_length=8, steps=4, temperature=2.0,
                 cfg_scale=3.0, remasking="random")
    DecodeConfig(gen_length=8, block_length=8, steps=None)
    DecodeConfig(strategy="llada2", temperature=1.0, top_k=1, top_p=1.0)
    DecodeConfig(strategy="llada2", temperature=1.0, top_p=1e-9)
    DecodeConfig(strategy="dream", dream_eps=0.0, dream_alg_temp=0.0, temperature=1.0)
    DecodeConfig(strategy="dream", dream_eps=0.999, top_k=1, top_p=1.0, gen_length=32, steps=4)


def test_numpy_scalars_are_read_as_python_numbers():
    np = pytest.importorskip("numpy")
    config = DecodeConfig(gen_length=np.int64(8), block_length=np.int32(4), alpha=np.float32(0.5),
                          seed=np.uint8(3), eos_token_id=[np.int64(5), 6])
    assert (config.gen_length, config.block_length, config.seed) == (8, 4, 3)
    assert type(config.gen_length) is int and type(config.alpha) is float
    assert config.eos_token_id == (5, 6) and type(config.eos_token_id[0]) is int
    with pytest.raises(ValueError, match=r"gen_length=.*use a positive integer"):
        DecodeConfig(gen_length=np.float64(8.0))  # a float is still not a count
    flags = DecodeConfig(compile=np.False_, early_stop=np.True_, eos_token_id=2)
    assert flags.compile is False and flags.early_stop is True


def test_zero_ids_and_eos_lists_are_accepted():
    # 0 is a valid token id and seed; a list of EOS ids (as configs write them) becomes a tuple,
    # hashable for the step cache; every id of a tuple is checked, not just one.
    config = DecodeConfig(mask_id=0, seed=0, eos_token_id=0)
    assert (config.mask_id, config.seed, config.eos_token_id) == (0, 0, 0)
    listed = DecodeConfig(eos_token_id=[2, 7])
    assert listed.eos_token_id == (2, 7) and hash(listed) == hash(DecodeConfig(eos_token_id=(2, 7)))
    assert DecodeConfig().replace(eos_token_id=[3]).eos_token_id == (3,)
    for bad in [(2, -1), (-1, 2), (2, True), (2, 7.0), ()]:
        with pytest.raises(ValueError, match="eos_token_id"):
            DecodeConfig(eos_token_id=bad)


@pytest.mark.parametrize("fields", [
    dict(alpha=float("inf")),
    dict(strategy="llada", temperature=float("inf")),
    dict(strategy="llada", cfg_scale=float("inf")),
])
def test_infinite_parameters_are_rejected(fields):
    with pytest.raises(ValueError):
        DecodeConfig(**fields)


@pytest.mark.parametrize("fields", [
    dict(gen_length=8, block_length=8, steps=True),
    dict(credit_slots=True),
    dict(mask_id=True),
    dict(eos_token_id=False),
    dict(seed=True),
])
def test_bool_is_not_a_count(fields):
    with pytest.raises(ValueError, match="integer"):
        DecodeConfig(**fields)
