"""Synthetic tasks whose answer tokens depend on each other (so parallel decoding can go wrong).

- addition: ``"0123+0989="`` -> ``"01112"`` (operands of 0-9999 written with 4 digits, the sum
  with 5; carries couple the answer digits, up to a chain of 5)
- reverse:  ``"R40213="``  -> ``"31204"`` (2-12 digits)
- sort:     ``"S40213="``  -> ``"01234"`` (2-12 digits, ascending)
- permute:  ``"P40213="``  -> any ordering of the same digits, e.g. ``"13024"`` (2-12 digits;
  trained on uniformly random orderings, scored as correct when the answer is a permutation)

Every answer is at most `GEN_LENGTH` (16) characters and is padded with EOS to exactly that many
tokens (LLaDA's SFT format); decoded in blocks of `BLOCK_LENGTH` (8), answers longer than 8 cross
into the second block, so block-by-block decoding and credit carried over steps are exercised.
Addition is written at a fixed width because the answer digit at a position then always depends
on the operand digits at fixed offsets: what is left to learn is the carry, which is the
dependency between answer tokens that parallel decoding can get wrong.

The first three have one answer per prompt, and a well-trained model is sure of every answer
position from the first step, so committing them all at once is safe (the first model trained on
them alone solved the held-out set with one forward pass per block, leaving nothing for a decoder
to trade). `permute` has many answers: each position's marginal spreads over the prompt's digits,
and committing several uncertain positions in one step picks digits independently, which can
repeat one digit and drop another. Decoding them one at a time is always right; how many to commit
per step is exactly the speed-quality trade-off threshold and credit decoding make. A fixed
1-in-`HELD_OUT_MOD` slice of the prompts, chosen by a CRC of the prompt text, is held out:
`sample_batch` never trains on it, `held_out_set` draws only from it.
"""

from __future__ import annotations

import random
import zlib

import torch

from ..tokenizer import CharTokenizer

GEN_LENGTH = 16
BLOCK_LENGTH = 8
ADD_WIDTH = 4
MAX_DIGITS = 12
MAX_PROMPT = MAX_DIGITS + 2          # "R123456789012="
HELD_OUT_MOD = 10
TASKS = ("add", "reverse", "sort", "permute")
TASK_WEIGHTS = (0.3, 0.2, 0.2, 0.3)


def is_held_out(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % HELD_OUT_MOD == 0


def make_item(task: str, rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) pair of `task`."""
    if task == "add":
        top = 10 ** ADD_WIDTH - 1
        a, b = rng.randint(0, top), rng.randint(0, top)
        return f"{a:0{ADD_WIDTH}d}+{b:0{ADD_WIDTH}d}=", f"{a + b:0{ADD_WIDTH + 1}d}"
    s = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, MAX_DIGITS)))
    if task == "reverse":
        return f"R{s}=", s[::-1]
    if task == "sort":
        return f"S{s}=", "".join(sorted(s))
    if task == "permute":
        return f"P{s}=", "".join(rng.sample(s, len(s)))
    raise ValueError(f"unknown task {task!r}")


def is_correct(task: str, prompt: str, reference: str, answer: str) -> bool:
    """Whether `answer` solves `prompt`: exact match, except for `permute`, where any ordering of
    the prompt's digits is right."""
    if task == "permute":
        return sorted(answer) == sorted(prompt[1:-1])
    return answer == reference


def sample_items(n: int, rng: random.Random, held_out: bool = False,
                 tasks: tuple[str, ...] = TASKS, weights=None) -> list[tuple[str, str, str]]:
    """`n` (task, prompt, answer) triples from the training (or the held-out) slice."""
    if weights is None:
        weights = [TASK_WEIGHTS[TASKS.index(t)] for t in tasks]
    out = []
    while len(out) < n:
        task = rng.choices(tasks, weights)[0]
        prompt, answer = make_item(task, rng)
        if is_held_out(prompt) == held_out:
            out.append((task, prompt, answer))
    return out


def held_out_set(n: int = 200, seed: int = 1234, tasks: tuple[str, ...] = TASKS):
    """A fixed, duplicate-free held-out set of (task, prompt, answer) (disjoint from training)."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        for item in sample_items(1, rng, held_out=True, tasks=tasks):
            if item[1] not in seen:
                seen.add(item[1])
                out.append(item)
    return out


def encode_batch(items, tokenizer: CharTokenizer, gen_length: int = GEN_LENGTH):
    """(input_ids [B, P + gen_length], attention_mask, prompt_width P) with left-padded prompts
    and answers padded with EOS to `gen_length`."""
    batch = tokenizer([p for _, p, _ in items])
    answers = torch.full((len(items), gen_length), tokenizer.eos_token_id, dtype=torch.long)
    for i, (_, _, a) in enumerate(items):
        ids = tokenizer.encode(a)[:gen_length]
        answers[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    width = batch["input_ids"].shape[1]
    ids = torch.cat([batch["input_ids"], answers], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(answers)], dim=1)
    return ids, mask, width
