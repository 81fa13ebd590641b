"""credit_compile.assets: the shipped default model loads offline and solves held-out items."""

from __future__ import annotations

import pytest

from credit_compile.assets import DEFAULT_MODEL_DIR, has_default_model, load_default_model
from credit_compile.reference import generate
from credit_compile.training.tasks import (
    BLOCK_LENGTH,
    GEN_LENGTH,
    held_out_set,
    is_correct,
    is_held_out,
)

pytestmark = pytest.mark.skipif(not has_default_model(), reason="default model files missing")


@pytest.fixture(scope="module")
def default():
    return load_default_model("cpu")


def _solve(model, tokenizer, items, **decode):
    batch = tokenizer([p for _, p, _ in items])
    out = generate(model, batch["input_ids"], batch["attention_mask"], gen_length=GEN_LENGTH,
                   block_length=BLOCK_LENGTH, compile=False, cuda_graphs="off", **decode)
    return [tokenizer.answer(row) for row in out.generated]


def test_loads_offline_with_matching_special_ids(default, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model, tokenizer = load_default_model("cpu")
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.padded_vocab_size == tokenizer.vocab_size
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 8 * 2**20


def test_baseline_sampler_solves_held_out_additions(default):
    model, tokenizer = default
    items = held_out_set(5, seed=7, tasks=("add",))
    assert all(is_held_out(p) for _, p, _ in items)
    answers = _solve(model, tokenizer, items, strategy="llada", steps=8)
    assert _solved(items, answers) >= 4, list(zip(items, answers, strict=True))


def _solved(items, answers) -> int:
    pairs = zip(answers, items, strict=True)
    return sum(is_correct(task, prompt, ref, a) for a, (task, prompt, ref) in pairs)


@pytest.mark.parametrize("task,floor", [("reverse", 3), ("sort", 4), ("permute", 4)])
def test_credit_decoding_solves_held_out_items(default, task, floor):
    model, tokenizer = default
    items = held_out_set(5, seed=7, tasks=(task,))
    answers = _solve(model, tokenizer, items, strategy="credit", tau=0.9)
    assert _solved(items, answers) >= floor, list(zip(items, answers, strict=True))


def test_permute_breaks_when_a_whole_block_is_committed_at_once(default):
    # The task the quality benchmark is about: one token per step solves it, committing every
    # position of a block in one step picks digits independently and repeats some.
    model, tokenizer = default
    items = held_out_set(6, seed=7, tasks=("permute",))
    items = [item for item in items if len(item[2]) >= 4]  # short ones can survive by luck
    slow = _solve(model, tokenizer, items, strategy="llada", steps=GEN_LENGTH)
    rushed = _solve(model, tokenizer, items, strategy="llada", steps=GEN_LENGTH // BLOCK_LENGTH)
    assert _solved(items, slow) >= len(items) - 1, list(zip(items, slow, strict=True))
    assert _solved(items, rushed) <= len(items) // 2, list(zip(items, rushed, strict=True))
