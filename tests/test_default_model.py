"""The shipped default model: loads offline, solves held-out items, its tokenizer round-trips."""

from __future__ import annotations

import pytest
import torch

from credit_compile.assets import DEFAULT_MODEL_DIR, has_default_model, load_default_model
from credit_compile.reference import generate
from credit_compile.tokenizer import CharTokenizer
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


def test_tokenizer_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer()
    for text in ["0123+0989=", "R4021=", "S9981=", "P4021=", "0"]:
        assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="'ehlo'"):  # refused, not read as '?'
        tok.encode("hello")
    batch = tok(["12+3=", "R1="])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 5)
    assert batch["input_ids"][1, :2].tolist() == [tok.eos_token_id] * 2  # left padded with EOS
    assert batch["attention_mask"][1].tolist() == [0, 0, 1, 1, 1]
    tok.save_pretrained(tmp_path)
    again = CharTokenizer.from_pretrained(tmp_path)
    assert again.to_dict() == tok.to_dict()
    ids = torch.tensor([1, 1, 1, 2, tok.eos_token_id, tok.eos_token_id])
    assert tok.answer(ids) == "1112" and tok.decode(ids) == "1112"
    assert tok.decode(1) == tok.decode(torch.tensor(1)) == tok.decode([1]) == "1"  # a lone id


def test_ascii_tokenizer_edges():
    from credit_compile.ascii_tokenizer import AsciiTokenizer

    tok = AsciiTokenizer()
    assert tok("hello")["input_ids"].shape == (1, 5)  # one string is one prompt, not five
    with pytest.raises(ValueError, match="no prompts"):
        tok([])
    assert tok.decode([-1, 33]) == "A" and tok.decode(33) == "A"


def test_held_out_set_is_disjoint_from_training():
    import random

    from credit_compile.training.tasks import sample_items

    held = {p for _, p, _ in held_out_set(200)}
    train = {p for _, p, _ in sample_items(5000, random.Random(0))}
    assert held and not held & train


def test_tasks_answers_and_their_checker():
    import random

    from credit_compile.training.tasks import GEN_LENGTH, MAX_PROMPT, TASKS, is_correct, make_item

    rng = random.Random(3)
    for task in TASKS:
        for _ in range(200):
            prompt, answer = make_item(task, rng)
            assert len(prompt) <= MAX_PROMPT and 1 <= len(answer) <= GEN_LENGTH
            assert is_correct(task, prompt, answer, answer)
            assert not is_correct(task, prompt, answer, answer[:-1])
    assert make_item("add", random.Random(0))[0][4] == "+"  # fixed width: 4 digits, '+', 4, '='
    # permute: any ordering of the prompt's digits, nothing else
    assert is_correct("permute", "P1123=", "1123", "3211")
    assert not is_correct("permute", "P1123=", "1123", "1223")
    assert not is_correct("sort", "S21=", "12", "21")
