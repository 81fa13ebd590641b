"""reference.py: the eager reference decoders (`generate_reference`) against two oracles that share
no code with the package.

The reference shares `decoding/step.py` and `decoding/strategies.py` with every fast path, so a
mistake there would be replicated everywhere and no optimized-vs-reference test would see it.
The first oracle is plain Python (lists and math) on scripted logits. The second is a set of
dense float64 decoders, a plain Python loop over blocks and steps, written from the spec:

- CreditDecoding: C = beta*C (every step after the block's first) + p(v*)**gamma on still-masked
  positions; fused logits l + alpha*log1p(C); commit masked positions whose softmax confidence
  is >= min(max conf - 1e-5, tau); the mask token is never a candidate. alpha=0 is threshold.
- Fast-dLLM's factor rule: commit the n most confident masked positions (ties by position), n
  the longest run of the sorted confidences with c_i >= 1 - factor/(i+1) for i >= 2; the most
  confident always commits.
- LLaDA (temperature 0): per block, `steps_per_block` steps; each commits the k most confident
  masked positions of the block (ties by position), k = the block's masks at its start split
  evenly over the steps, the first (masks % steps) steps taking one more; CFG combines
  un + (s+1)*(cond - un) with the prompt masked in the unconditional branch.
- Token options: `suppress_tokens` are never proposed (their logits -inf, as the mask token's);
  `commit_last_tokens` (LLaDA) leave the confidence softmax, so their proposals score 0.

A batch decodes its blocks together: a row that has filled the current block waits for the others."""

from __future__ import annotations

import math

import pytest
import torch
from decoding_cases import scripted
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_models import ContextMixModel, ScriptedModel

import credit_compile as cc

MASK = 3  # ScriptedModel cases: vocabulary of 4, token 3 is the mask


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) if v != -math.inf else 0.0 for v in row]
    s = sum(e)
    return [v / s for v in e]


def _argmax(row):
    best = 0
    for i, v in enumerate(row):
        if v > row[best]:
            best = i
    return best


def oracle_decode(script, prompt_len, gen_length, block_length, strategy, alpha=0.7, beta=0.8,
                  gamma=0.2, tau=0.9, steps=None):
    """Commits per step for a model whose logits depend only on the call count.

    Returns (canvas, [(step's committed positions, credit snapshot)]).
    """
    canvas = [None] * prompt_len + [MASK] * gen_length
    history, call = [], 0
    blocks = gen_length // block_length
    steps_per_block = (steps or gen_length) // blocks
    for b in range(blocks):
        positions = [prompt_len + b * block_length + i for i in range(block_length)]
        credit = [dict() for _ in positions]
        count = sum(canvas[p] == MASK for p in positions)
        step = 0
        while (strategy == "llada" and step < steps_per_block) or (
                strategy != "llada" and any(canvas[p] == MASK for p in positions)):
            logits = script[min(call, len(script) - 1)]
            call += 1
            proposals = []
            for i, p in enumerate(positions):
                raw = [(-math.inf if v == MASK else float(x)) for v, x in enumerate(logits[p])]
                probs = _softmax(raw)
                top = _argmax(raw)
                masked = canvas[p] == MASK
                if strategy == "credit":
                    if step > 0:
                        credit[i] = {v: beta * c for v, c in credit[i].items()}
                    if masked:
                        credit[i][top] = credit[i].get(top, 0.0) + probs[top] ** gamma
                    fused = [x + alpha * math.log1p(credit[i].get(v, 0.0)) for v, x in enumerate(raw)]
                    x0 = _argmax(fused)
                    conf = _softmax(fused)[x0]
                else:
                    x0, conf = top, probs[top]
                proposals.append((p, masked, x0, conf))
            candidates = [(c, p, x0) for p, masked, x0, c in proposals if masked]
            if strategy == "llada":
                k = count // steps_per_block + (1 if step < count % steps_per_block else 0)
                ranked = sorted(candidates, key=lambda t: -t[0])  # stable: ties by position
                chosen = ranked[:k]
            else:
                best = max(c for c, _, _ in candidates)
                chosen = [t for t in candidates if t[0] >= min(best - 1e-5, tau)]
            for _, p, x0 in chosen:
                canvas[p] = x0
            history.append((sorted(p for _, p, _ in chosen), [dict(c) for c in credit]))
            step += 1
    return canvas, history


@pytest.mark.filterwarnings("ignore:strategy=.* does not read:UserWarning")  # drawn for all
@settings(max_examples=40)
@given(
    seed=st.integers(0, 10_000),
    strategy=st.sampled_from(["credit", "threshold", "llada"]),
    blocks=st.sampled_from([(4, 2), (4, 4), (6, 3)]),
    alpha=st.floats(0.0, 2.0), beta=st.floats(0.0, 1.0), gamma=st.floats(0.05, 2.0),
    tau=st.floats(0.3, 1.0),
    layout=st.sampled_from(["dense", "sparse"]),
)
def test_reference_equals_plain_python_oracle(seed, strategy, blocks, alpha, beta, gamma, tau, layout):
    gen_length, block_length = blocks
    prompt_len = 2
    script = scripted(seed, calls=gen_length + 2, length=prompt_len + gen_length)
    model = ScriptedModel(script, mask_id=MASK)
    ids = torch.zeros(1, prompt_len, dtype=torch.long)
    out = cc.generate_reference(model, ids, strategy=strategy, gen_length=gen_length,
                                block_length=block_length, alpha=alpha, beta=beta, gamma=gamma,
                                tau=tau, credit_layout=layout, trace=True)
    canvas, history = oracle_decode(script, prompt_len, gen_length, block_length, strategy,
                                    alpha, beta, gamma, tau)
    assert out.generated[0].tolist() == canvas[prompt_len:]
    assert [t.committed[0] for t in out.trace] == [h[0] for h in history]
    assert out.nfe == len(history)


MIX_MASK = 39


class SpecDecoder:
    def __init__(self, model, input_ids, attention_mask, gen_length, block_length,
                 suppress=()):
        batch, prompt_length = input_ids.shape
        self.suppress = list(suppress)
        self.model, self.block_length = model, block_length
        self.prompt_length, self.blocks = prompt_length, gen_length // block_length
        self.x = torch.full((batch, prompt_length + gen_length), MIX_MASK, dtype=torch.long)
        self.x[:, :prompt_length] = input_ids
        self.mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            self.mask = torch.ones_like(self.x)
            self.mask[:, :prompt_length] = attention_mask
        self.steps: list[list[list[int]]] = []  # per step, per row, committed positions

    def logits(self, cfg_scale=0.0):
        def run(x):
            positions = None if self.mask is None else (self.mask.cumsum(-1) - 1).clamp_min(0)
            with torch.no_grad():
                return self.model(x, self.mask, positions).double()

        cond = run(self.x)
        if cfg_scale > 0:
            unconditional = self.x.clone()
            unconditional[:, :self.prompt_length] = MIX_MASK
            un = run(unconditional)
            cond = un + (cfg_scale + 1) * (cond - un)
        cond[..., [MIX_MASK, *self.suppress]] = float("-inf")
        return cond

    def span(self, block):
        start = self.prompt_length + block * self.block_length
        return start, start + self.block_length

    def commit(self, block, chosen, tokens):
        start, _ = self.span(block)
        rows = []
        for row in range(self.x.shape[0]):
            picked = [i for i in range(self.block_length) if chosen[row][i]]
            for i in picked:
                self.x[row, start + i] = tokens[row][i]
            rows.append([start + i for i in picked])
        self.steps.append(rows)

    def credit(self, alpha, beta, gamma, tau):
        for block in range(self.blocks):
            start, end = self.span(block)
            credit, first = None, True
            while bool((self.x[:, start:end] == MIX_MASK).any()):
                logits = self.logits()[:, start:end]
                masked = self.x[:, start:end] == MIX_MASK
                p = torch.softmax(logits, -1)
                p_top, v_top = p.max(-1)
                credit = torch.zeros_like(p) if credit is None else credit
                if not first:
                    credit = beta * credit
                added = torch.zeros_like(credit).scatter_(-1, v_top[..., None],
                                                          (p_top ** gamma)[..., None])
                credit = credit + added * masked[..., None]
                fused = torch.softmax(logits + alpha * torch.log1p(credit), -1)
                confidence, tokens = fused.max(-1)
                chosen = []
                for row in range(self.x.shape[0]):
                    candidates = confidence[row][masked[row]]
                    bar = min(float(candidates.max()) - 1e-5, tau) if len(candidates) else 2.0
                    chosen.append(masked[row] & (confidence[row] >= bar))
                self.commit(block, chosen, tokens)
                first = False
        return self

    def factor(self, factor):
        for block in range(self.blocks):
            start, end = self.span(block)
            while bool((self.x[:, start:end] == MIX_MASK).any()):
                logits = self.logits()[:, start:end]
                masked = self.x[:, start:end] == MIX_MASK
                confidence, tokens = torch.softmax(logits, -1).max(-1)
                chosen = []
                for row in range(self.x.shape[0]):
                    # sorted() is stable: equal confidences keep their position order.
                    order = sorted((i for i in range(self.block_length) if masked[row][i]),
                                   key=lambda i, row=row: -float(confidence[row][i]))
                    n = min(1, len(order))
                    while n < len(order) and float(confidence[row][order[n]]) >= 1 - factor / (n + 2):
                        n += 1
                    picked = torch.zeros(self.block_length, dtype=torch.bool)
                    picked[order[:n]] = True
                    chosen.append(picked)
                self.commit(block, chosen, tokens)
        return self

    def llada(self, steps, cfg_scale, commit_last=()):
        per_block = steps // self.blocks
        for block in range(self.blocks):
            start, end = self.span(block)
            counts = (self.x[:, start:end] == MIX_MASK).sum(-1)
            for step in range(per_block):
                logits = self.logits(cfg_scale)[:, start:end]
                masked = self.x[:, start:end] == MIX_MASK
                tokens = logits.argmax(-1)
                scored = logits.clone()
                scored[..., list(commit_last)] = float("-inf")
                confidence = torch.softmax(scored, -1).gather(-1, tokens[..., None])[..., 0]
                confidence = torch.where(masked, confidence, float("-inf"))
                chosen = []
                for row in range(self.x.shape[0]):
                    base, extra = divmod(int(counts[row]), per_block)
                    k = base + (1 if step < extra else 0)
                    picked = torch.zeros(self.block_length, dtype=torch.bool)
                    # Ties (commit-last proposals all score 0) by position.
                    order = sorted(range(self.block_length),
                                   key=lambda i, row=row: -float(confidence[row][i]))
                    picked[order[:k]] = True
                    chosen.append(picked)
                self.commit(block, chosen, tokens)
        return self


# No option, or ids of this model's tokens (its vocabulary: 0..39, 39 the mask).
SUPPRESS = st.sampled_from([(), (), (0, 5, 17), tuple(range(0, 39, 2))])


def prompts(batch, length, seed, padded):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30, (batch, length), generator=g)
    mask = None
    if padded and length > 1:
        mask = torch.ones_like(ids)
        for row in range(batch):
            mask[row, :int(torch.randint(0, length, (1,), generator=g))] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def reference_steps(out):
    return [step.committed for step in out.trace]


@settings(max_examples=25, derandomize=True, deadline=None)
@given(
    batch=st.integers(1, 3), length=st.integers(1, 5), seed=st.integers(0, 2**16),
    padded=st.booleans(), blocks=st.sampled_from([(8, 4), (12, 4), (8, 8), (6, 3)]),
    alpha=st.sampled_from([0.0, 0.7, 2.0]), beta=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
    gamma=st.sampled_from([0.2, 1.0]), tau=st.sampled_from([0.5, 0.9, 1.0]),
    layout=st.sampled_from(["dense", "sparse"]), sharpness=st.sampled_from([0.5, 1.5, 3.0]),
    suppress=SUPPRESS,
)
def test_credit_and_threshold_follow_the_spec(batch, length, seed, padded, blocks, alpha, beta,
                                              gamma, tau, layout, sharpness, suppress):
    gen_length, block_length = blocks
    model = ContextMixModel(seed=seed % 5, sharpness=sharpness)
    ids, mask = prompts(batch, length, seed, padded)
    spec = SpecDecoder(model, ids, mask, gen_length, block_length, suppress).credit(
        alpha, beta, gamma, tau)
    out = cc.generate_reference(model, ids, mask, gen_length=gen_length, block_length=block_length,
                                alpha=alpha, beta=beta, gamma=gamma, tau=tau,
                                credit_layout=layout, suppress_tokens=suppress or None,
                                trace=True)
    assert torch.equal(out.sequences, spec.x)
    assert reference_steps(out) == spec.steps  # the same positions at every step
    assert out.nfe == len(spec.steps)


@settings(max_examples=25, derandomize=True, deadline=None)
@given(
    batch=st.integers(1, 3), length=st.integers(1, 5), seed=st.integers(0, 2**16),
    padded=st.booleans(), blocks=st.sampled_from([(8, 4), (12, 4), (8, 8), (6, 3)]),
    factor=st.sampled_from([0.1, 0.5, 1.0, 2.0, 4.0]), sharpness=st.sampled_from([1.5, 3.0, 6.0]),
    suppress=SUPPRESS,
)
def test_factor_decoding_follows_the_spec(batch, length, seed, padded, blocks, factor, sharpness,
                                          suppress):
    gen_length, block_length = blocks
    model = ContextMixModel(seed=seed % 5, sharpness=sharpness)
    ids, mask = prompts(batch, length, seed, padded)
    spec = SpecDecoder(model, ids, mask, gen_length, block_length, suppress).factor(factor)
    out = cc.generate_reference(model, ids, mask, strategy="factor", factor=factor,
                                gen_length=gen_length, block_length=block_length,
                                suppress_tokens=suppress or None, trace=True)
    assert torch.equal(out.sequences, spec.x)
    assert reference_steps(out) == spec.steps
    assert out.nfe == len(spec.steps)


@settings(max_examples=15, derandomize=True, deadline=None)
@given(
    batch=st.integers(1, 3), length=st.integers(1, 5), seed=st.integers(0, 2**16),
    padded=st.booleans(), blocks=st.sampled_from([(8, 4), (12, 4), (8, 8)]),
    steps_per_block=st.sampled_from([1, 3, 4]), cfg_scale=st.sampled_from([0.0, 1.5]),
    suppress=SUPPRESS, commit_last=SUPPRESS,
)
def test_llada_greedy_sampler_follows_the_spec(batch, length, seed, padded, blocks,
                                              steps_per_block, cfg_scale, suppress, commit_last):
    gen_length, block_length = blocks
    steps = steps_per_block * (gen_length // block_length)
    model = ContextMixModel(seed=seed % 5)
    ids, mask = prompts(batch, length, seed, padded)
    spec = SpecDecoder(model, ids, mask, gen_length, block_length, suppress).llada(
        steps, cfg_scale, commit_last)
    out = cc.generate_reference(model, ids, mask, strategy="llada", gen_length=gen_length,
                                block_length=block_length, steps=steps, cfg_scale=cfg_scale,
                                suppress_tokens=suppress or None,
                                commit_last_tokens=commit_last or None, trace=True)
    assert torch.equal(out.sequences, spec.x)
    assert reference_steps(out) == spec.steps
    assert out.nfe == steps


def test_the_comparison_catches_a_wrong_commit_rule(monkeypatch):
    # The comparison can fail: a slack of 0.3 instead of 1e-5 in the commit rule is caught.
    model = ContextMixModel(seed=1, sharpness=1.5)
    ids, _ = prompts(2, 4, 3, padded=False)
    spec = SpecDecoder(model, ids, None, 12, 4).credit(0.7, 0.8, 0.2, 0.9)

    def decode():
        return reference_steps(cc.generate_reference(model, ids, gen_length=12, block_length=4,
                                                     trace=True))

    assert decode() == spec.steps
    monkeypatch.setattr("credit_compile.decoding.strategies.BEST_SLACK", 0.3)
    assert decode() != spec.steps
