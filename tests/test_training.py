"""credit_compile.training: the synthetic tasks' answers, the held-out slice the shipped model was
trained without, the batch encoding, the masked-diffusion loss and the learning-rate schedule.

The 45-minute training run itself is not repeated; its pieces are checked against their
definitions (tasks.py / train.py docstrings), each in well under a second."""

from __future__ import annotations

import math
import random

import pytest
import torch

from credit_compile.assets import has_default_model
from credit_compile.tokenizer import CharTokenizer
from credit_compile.training.tasks import (
    GEN_LENGTH,
    TASKS,
    encode_batch,
    held_out_set,
    is_correct,
    is_held_out,
    make_item,
    sample_items,
)
from credit_compile.training.train import diffusion_loss, lr_at


def test_task_answers_solve_their_prompts():
    # Independent of is_correct (which compares with the reference answer make_item returns).
    rng = random.Random(5)
    for _ in range(300):
        prompt, answer = make_item("add", rng)
        a, b = prompt[:-1].split("+")
        assert len(a) == len(b) == 4 and len(answer) == 5 and int(answer) == int(a) + int(b)
        prompt, answer = make_item("reverse", rng)
        digits = prompt[1:-1]
        assert prompt[0] == "R" and answer == "".join(reversed(digits))
        prompt, answer = make_item("sort", rng)
        digits = prompt[1:-1]
        assert prompt[0] == "S" and list(answer) == sorted(digits)
        prompt, answer = make_item("permute", rng)
        assert prompt[0] == "P" and sorted(answer) == sorted(prompt[1:-1])
    assert make_item("add", random.Random(0)) != make_item("add", random.Random(1))
    with pytest.raises(ValueError):
        make_item("multiply", rng)


def test_the_held_out_slice_is_the_one_the_shipped_model_was_trained_without():
    # A fixed slice: about one prompt in ten, by a CRC of the prompt text. Pinned, since the
    # shipped model's held-out accuracy means something only on the slice it never trained on.
    assert [is_held_out(p) for p in ("S78081=", "P4706=", "0787+2704=", "R975342262039=")] == [True] * 4
    assert not any(is_held_out(p) for p in ("0012+0034=", "S4213=", "P4213=", "R1234=", "S21="))
    prompts = {p for _, p, _ in sample_items(3000, random.Random(1), held_out=False)}
    assert not any(is_held_out(p) for p in prompts)
    held = held_out_set(300)
    assert all(is_held_out(p) for _, p, _ in held)
    assert len({p for _, p, _ in held}) == len(held) == 300  # no duplicates
    rng = random.Random(2)
    fraction = sum(is_held_out(make_item(rng.choice(TASKS), rng)[0]) for _ in range(4000)) / 4000
    assert 0.08 < fraction < 0.12


def test_encode_batch_lays_out_prompt_and_answer():
    tok = CharTokenizer()
    items = [("add", "0012+0034=", "00046"), ("reverse", "R12=", "21")]
    ids, mask, width = encode_batch(items, tok)
    assert width == 10 and ids.shape == mask.shape == (2, 10 + GEN_LENGTH)
    eos = tok.eos_token_id
    # Prompts left-padded (masked out), answers left-aligned then EOS, all attended.
    assert tok.decode(ids[1, :width]) == "R12=" and mask[1, :width].tolist() == [0] * 6 + [1] * 4
    assert ids[0, width:].tolist() == tok.encode("00046") + [eos] * (GEN_LENGTH - 5)
    assert ids[1, width:].tolist() == tok.encode("21") + [eos] * (GEN_LENGTH - 2)
    assert mask[:, width:].eq(1).all()


class _UniformModel(torch.nn.Module):
    """Zero logits over `vocab` ids, recording what it was given."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.seen = vocab, []

    def forward(self, ids, attention_mask=None):
        self.seen.append(ids.clone())
        return type("Out", (), {"logits": torch.zeros(*ids.shape, self.vocab, requires_grad=True)})()


def test_diffusion_loss_masks_answers_only_and_weights_by_one_over_t():
    # LLaDA SFT: t ~ U(eps, 1) per row; each answer token masked with probability t, the prompt
    # never; cross-entropy on masked positions weighted 1/t, summed, over the answer token count.
    b, width, length, mask_id, vocab, eps = 6, 5, 21, 31, 32, 1e-3
    ids = torch.randint(0, 30, (b, length), generator=torch.Generator().manual_seed(0))
    model = _UniformModel(vocab)
    loss = diffusion_loss(model, ids, torch.ones_like(ids), width, mask_id,
                          torch.Generator().manual_seed(7), eps=eps)
    (noisy,) = model.seen
    assert torch.equal(noisy[:, :width], ids[:, :width])  # the prompt is never masked
    masked = noisy == mask_id
    assert masked[:, width:].any() and torch.equal(noisy[~masked], ids[~masked])
    # The same draws, in the same order, from the same seed.
    g = torch.Generator().manual_seed(7)
    t = eps + (1 - eps) * torch.rand(b, 1, generator=g)
    expected_masked = torch.rand(b, length, generator=g) < t
    expected_masked[:, :width] = False
    assert torch.equal(masked, expected_masked)
    expected = math.log(vocab) * (masked.sum(1) / t[:, 0]).sum() / (b * (length - width))
    torch.testing.assert_close(loss.detach(), expected.float(), rtol=1e-5, atol=0)


def test_learning_rate_warm_up_then_cosine_to_a_tenth():
    peak, warmup = 2.0, 10
    assert lr_at(0, 0.0, peak, warmup) == pytest.approx(peak / warmup)  # never 0 at the first step
    assert lr_at(4, 0.0, peak, warmup) == pytest.approx(peak / 2)
    assert lr_at(9, 0.0, peak, warmup) == pytest.approx(peak)
    assert lr_at(10, 0.0, peak, warmup) == pytest.approx(peak)
    assert lr_at(50, 0.5, peak, warmup) == pytest.approx(peak * 0.55)
    assert lr_at(99, 1.0, peak, warmup) == pytest.approx(peak / 10)
    assert lr_at(99, 1.7, peak, warmup) == pytest.approx(peak / 10)  # progress is clamped
    assert lr_at(99, -1.0, peak, warmup) == pytest.approx(peak)


@pytest.mark.skipif(not has_default_model(), reason="default model files missing")
def test_held_out_set_is_disjoint_from_training():
    import random

    from credit_compile.training.tasks import sample_items

    held = {p for _, p, _ in held_out_set(200)}
    train = {p for _, p, _ in sample_items(5000, random.Random(0))}
    assert held and not held & train


@pytest.mark.skipif(not has_default_model(), reason="default model files missing")
def test_tasks_answers_and_their_checker():
    import random

    from credit_compile.training.tasks import GEN_LENGTH, MAX_PROMPT, TASKS, make_item

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
