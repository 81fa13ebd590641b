"""Hand-computed tiny cases for the eager reference decoders (`credit_compile.generate_reference`).

Every expected value here is worked out by hand from explicit small logits (the arithmetic is in
the comments and, where a number matters, spelled out with `math.exp` in the test), never by
calling the library's own helpers. Vocabulary of 4 tokens, token 3 is the mask token; the prompt
is one token at canvas position 0, so generated positions are 1, 2, ...

Softmax values used throughout (the mask column excluded, so three tokens remain):
    [3, 0, 0]   -> p = e^3   / (e^3   + 2) = 0.909443
    [2, 0, 0]   -> p = e^2   / (e^2   + 2) = 0.786986
    [1.9, 0, 0] -> p = e^1.9 / (e^1.9 + 2) = 0.769742
    [1, 0, 0]   -> p = e     / (e     + 2) = 0.576117
(the same for any permutation of the three columns).
"""

from __future__ import annotations

import math

import pytest
import torch
from toy_models import ScriptedModel

import credit_compile as cc
from credit_compile import DecodeConfig
from credit_compile.decoding.strategies import (
    num_transfer_tokens_sync_free,
    rank_descending_sync_free,
    threshold_commit_sync_free,
)
from credit_compile.generation_setup import setup_generation

MASK = 3
PROMPT = torch.zeros(1, 1, dtype=torch.long)


def p_top(top: float, others=(0.0, 0.0)) -> float:
    """Softmax probability of the top logit among three non-mask columns (by hand)."""
    return math.exp(top) / (math.exp(top) + sum(math.exp(o) for o in others))


def fused_conf(logits3, credit3, alpha=1.0) -> tuple[int, float]:
    """argmax and its softmax of l + alpha*log1p(C) over three non-mask columns (by hand)."""
    fused = [x + alpha * math.log1p(c) for x, c in zip(logits3, credit3, strict=True)]
    top = max(range(3), key=lambda v: (fused[v], -v))
    return top, math.exp(fused[top]) / sum(math.exp(f) for f in fused)


def rows(*logits, mask_logit=10.0):
    """[T, 4] logits: the prompt row, then one row per generated position; the mask column gets
    `mask_logit` (larger than every real logit: the mask token must still never be chosen)."""
    table = [[0.0, 0.0, 0.0]] + [list(r) for r in logits]
    return torch.tensor([r + [mask_logit] for r in table], dtype=torch.float32)


def committed(out) -> list[list[int]]:
    return [t.committed[0] for t in out.trace]


# ------------------------------------------------------------------------------------------------
# One script, three strategies: which positions commit at each step, which tokens result.
#
#            pos1        pos2        pos3          pos4
#   call 0:  [3,0,0]     [2,0,0]     [0,1.9,0]     [0,0,1]      (pos4 prefers token 2)
#   call 1+: [3,0,0]     [2,0,0]     [0,1.9,0]     [0,1,0]      (pos4 switches to token 1)
# ------------------------------------------------------------------------------------------------

S0 = rows([3, 0, 0], [2, 0, 0], [0, 1.9, 0], [0, 0, 1])
S1 = rows([3, 0, 0], [2, 0, 0], [0, 1.9, 0], [0, 1, 0])
CREDIT = dict(alpha=1.0, beta=0.5, gamma=1.0)


def run(strategy, script=(S0, S1), **kw):
    model = ScriptedModel(list(script), mask_id=MASK)
    out = cc.generate_reference(model, PROMPT, strategy=strategy, trace=True, **kw)
    return out, model


def test_hand_probabilities():
    # Guard on the arithmetic the comments rely on.
    assert p_top(3) == pytest.approx(0.909443, abs=1e-6)
    assert p_top(2) == pytest.approx(0.786986, abs=1e-6)
    assert p_top(1.9) == pytest.approx(0.769742, abs=1e-6)
    assert p_top(1) == pytest.approx(0.576117, abs=1e-6)


def test_threshold_commits_by_hand():
    # tau = 0.875. Step 1: pos1 0.909 >= tau commits; pos2 0.787, pos3 0.770, pos4 0.576 do not.
    # Step 2: none passes tau, so only the best (pos2, 0.787) commits. Step 3: pos3 (0.770 > 0.576).
    # Step 4: pos4, token 1 (call 1+ logits).
    out, model = run("threshold", gen_length=4, block_length=4, tau=0.875)
    assert committed(out) == [[1], [2], [3], [4]]
    assert out.generated[0].tolist() == [0, 0, 1, 1]
    assert out.nfe == 4 and model.calls == 4
    confs = [t.confidence[0][0] for t in out.trace]
    assert confs == pytest.approx([p_top(3), p_top(2), p_top(1.9), p_top(1)], abs=1e-6)
    assert confs == pytest.approx([0.909443, 0.786986, 0.769742, 0.576117], abs=1e-6)


def test_threshold_commits_every_position_above_tau_at_once():
    # tau = 0.75: step 1 commits pos1 (0.909), pos2 (0.787), pos3 (0.770); pos4 (0.576) waits.
    out, _ = run("threshold", gen_length=4, block_length=4, tau=0.75)
    assert committed(out) == [[1, 2, 3], [4]]
    assert out.generated[0].tolist() == [0, 0, 1, 1]
    assert out.nfe == 2


def test_threshold_tie_with_the_best_commits_both():
    # pos1 and pos2 both [2,0,0] (p = 0.787 < tau = 0.9): both are within 1e-5 of the best.
    script = [rows([2, 0, 0], [0, 2, 0], [0, 0, 1])]
    out, _ = run("threshold", script, gen_length=3, block_length=3, tau=0.9)
    assert committed(out) == [[1, 2], [3]]
    assert out.generated[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_credit_commits_by_hand(layout):
    # alpha = 1, beta = 0.5, gamma = 1, tau = 0.875.
    # Step 1 (fresh credit C = p):          pos1 conf 0.950 commits; pos2 0.868, pos3 0.855,
    #                                       pos4 0.682 do not.
    # Step 2 (C = 0.5 C + p on masked):     pos2 C = 1.5*0.787 -> conf 0.8896 >= tau,
    #                                       pos3 C = 1.5*0.770 -> conf 0.8781 >= tau, both commit;
    #                                       pos4 {2: 0.288, 1: 0.576} -> token 1, conf 0.652.
    # Step 3: pos4 alone, token 1.  Threshold decoding needs 4 steps on this script, credit 3.
    out, _ = run("credit", gen_length=4, block_length=4, tau=0.875, credit_layout=layout, **CREDIT)
    assert committed(out) == [[1], [2, 3], [4]]
    assert out.generated[0].tolist() == [0, 0, 1, 1]
    assert out.nfe == 3

    c1 = fused_conf([3, 0, 0], [p_top(3), 0, 0])
    c2 = fused_conf([2, 0, 0], [1.5 * p_top(2), 0, 0])
    c3 = fused_conf([0, 1.9, 0], [0, 1.5 * p_top(1.9), 0])
    c4 = fused_conf([0, 1, 0], [0, 1.5 * p_top(1), 0.25 * p_top(1)])
    assert (c1[1], c2[1], c3[1], c4[1]) == pytest.approx((0.950436, 0.889574, 0.878090, 0.702688),
                                                         abs=1e-6)
    assert [t.confidence[0] for t in out.trace] == [
        pytest.approx([c1[1]], abs=1e-5), pytest.approx([c2[1], c3[1]], abs=1e-5),
        pytest.approx([c4[1]], abs=1e-5)]


def _credit_of(setup) -> list[dict[int, float]]:
    """The credit of each block position of row 0 as {token: credit} (nonzero entries only)."""
    buffers = setup.state.buffers
    out = []
    if "credit" in buffers:
        for row in buffers["credit"][0]:
            out.append({v: float(c) for v, c in enumerate(row.tolist()) if c != 0})
    else:
        slots = zip(buffers["slot_ids"][0].tolist(), buffers["slot_credit"][0].tolist(), strict=True)
        for ids, credit in slots:
            entry = {}
            for v, c in zip(ids, credit, strict=True):
                if v >= 0 and c != 0:
                    entry[v] = entry.get(v, 0.0) + c
            out.append(entry)
    return out


def _assert_credit(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert sorted(a) == sorted(e), (actual, expected)
        for v in e:
            assert a[v] == pytest.approx(e[v], abs=1e-6), (actual, expected)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_credit_values_after_two_steps(layout):
    model = ScriptedModel([S0, S1], mask_id=MASK)
    setup = setup_generation(model, PROMPT, None, DecodeConfig(
        strategy="credit", gen_length=4, block_length=4, tau=0.875, credit_layout=layout, **CREDIT))
    step = setup.step_function()
    with torch.no_grad():
        step()
    p3, p2, p19, p1 = p_top(3), p_top(2), p_top(1.9), p_top(1)
    # Fresh credit: each masked position gets p(top)^1 on its top token.
    _assert_credit(_credit_of(setup), [{0: p3}, {0: p2}, {1: p19}, {2: p1}])
    assert setup.state.last_commit[0].tolist() == [True, False, False, False]
    with torch.no_grad():
        step()
    # pos1 is committed: decay only (0.5 * 0.909 = 0.4547). pos2/pos3: 0.5 C + p. pos4 changed its
    # top token: the old one decays (0.5 * 0.576 = 0.288), the new one gets 0.576.
    expected = [{0: 0.5 * p3}, {0: 1.5 * p2}, {1: 1.5 * p19}, {2: 0.5 * p1, 1: p1}]
    _assert_credit(_credit_of(setup), expected)
    _assert_credit(_credit_of(setup), [{0: 0.454721}, {0: 1.180479}, {1: 1.154612},
                                       {2: 0.288058, 1: 0.576117}])
    assert setup.state.last_commit[0].tolist() == [False, True, True, False]
    assert int(setup.state.nfe) == 2


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_credit_is_fresh_on_a_new_block(layout):
    # gen 4 in blocks of 2. Block 0: step 1 commits pos1 (0.950), step 2 pos2 (C = 1.5 p(2)).
    # Block 1's first step: pos3 [0,2,0] and pos4 [0,0,1] start from zero credit, whatever block 0
    # left in the buffer (the same buffer rows are reused).
    script = [rows([3, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1])]
    model = ScriptedModel(script, mask_id=MASK)
    setup = setup_generation(model, PROMPT, None, DecodeConfig(
        strategy="credit", gen_length=4, block_length=2, tau=0.875, credit_layout=layout, **CREDIT))
    step = setup.step_function()
    with torch.no_grad():
        step()
        step()
    assert int(setup.state.block_index) == 1
    _assert_credit(_credit_of(setup), [{0: 0.5 * p_top(3)}, {0: 1.5 * p_top(2)}])
    with torch.no_grad():
        step()
    _assert_credit(_credit_of(setup), [{1: p_top(2)}, {2: p_top(1)}])
    # pos3: 2 + ln(1 + 0.787) -> conf 0.868 < tau but the best: commits alone.
    assert setup.state.last_commit[0].tolist() == [True, False]


def test_llada_low_confidence_by_hand():
    # steps = 4 for 4 positions: one token per step, the most probable masked one.
    # Step 1 (call 0): pos1 0.909. Step 2: pos2 0.787. Step 3: pos3 0.770. Step 4: pos4, token 1.
    out, _ = run("llada", gen_length=4, block_length=4, steps=4)
    assert committed(out) == [[1], [2], [3], [4]]
    assert out.generated[0].tolist() == [0, 0, 1, 1]
    assert out.nfe == 4
    # steps = 2: two per step. Step 1 (call 0): pos1, pos2. Step 2 (call 1): pos3, pos4 (token 1).
    out, _ = run("llada", gen_length=4, block_length=4, steps=2)
    assert committed(out) == [[1, 2], [3, 4]]
    assert out.generated[0].tolist() == [0, 0, 1, 1]
    assert out.nfe == 2
    # Two blocks of 2, one step each: block 0 at call 0 (pos1, pos2), block 1 at call 1.
    out, _ = run("llada", gen_length=4, block_length=2, steps=2)
    assert committed(out) == [[1, 2], [3, 4]]
    assert [t.block for t in out.trace] == [0, 1]


def test_llada_commits_by_confidence_not_position():
    # pos1 [1,0,0] 0.576, pos2 [0,0,3] 0.909, pos3 [0,2,0] 0.787; one token per step.
    script = [rows([1, 0, 0], [0, 0, 3], [0, 2, 0])]
    out, _ = run("llada", script, gen_length=3, block_length=3, steps=3)
    assert committed(out) == [[2], [3], [1]]
    assert out.generated[0].tolist() == [0, 2, 1]
    assert [t.confidence[0][0] for t in out.trace] == pytest.approx(
        [0.909443, 0.786986, 0.576117], abs=1e-6)


def test_llada_sampling_follows_the_softmax_with_huge_logits():
    # Logits [100, 99, 0]: exp(100) overflows float32 (inf), so Gumbel-max computed as LLaDA
    # writes it in float32 would always pick token 0 (argmax of [inf, inf, ...] is the first).
    # A correct sampler draws token 1 with probability e^99 / (e^100 + e^99) = 1 / (1 + e) = 0.269.
    # One step commits all 8 positions, so every draw is kept (with several steps low-confidence
    # remasking would favour token 0).
    script = [rows(*[[100, 99, 0]] * 8, mask_logit=0.0)]
    model = ScriptedModel(script, mask_id=MASK)
    out = cc.generate_reference(model, torch.zeros(32, 1, dtype=torch.long), strategy="llada",
                                gen_length=8, block_length=8, steps=1, temperature=1.0, seed=0)
    gen = out.generated
    assert set(gen.unique().tolist()) <= {0, 1}
    share = float((gen == 1).float().mean())
    assert 0.15 < share < 0.40, share  # 256 draws of p = 0.269 (std 0.028)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_llada_gumbel_noise_replays_the_original_formula_in_float64(temperature):
    # LLaDA's add_gumbel_noise: u ~ U[0, 1) in float64, x0 = argmax exp(l) / (-log u) ** T.
    # Replay it by hand with the same seed: one step commits every position, so the generated
    # tokens are exactly the argmax of the first step's noisy logits (mask token excluded).
    # float32 noise, or any other draw, would give different tokens.
    batch, gen_length, seed = 4, 6, 123
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(1 + gen_length, 4, generator=g) * 2
    model = ScriptedModel([logits], mask_id=MASK)
    out = cc.generate_reference(model, torch.zeros(batch, 1, dtype=torch.long), strategy="llada",
                                gen_length=gen_length, block_length=gen_length, steps=1,
                                temperature=temperature, seed=seed)
    torch.manual_seed(seed)
    u = torch.rand(batch, gen_length, 4, dtype=torch.float64)  # the block's noise, one draw
    expected = []
    for b in range(batch):
        row = []
        for i in range(gen_length):
            scores = [math.exp(float(logits[1 + i, v])) / (-math.log(float(u[b, i, v]))) ** temperature
                      if v != MASK else -math.inf for v in range(4)]
            row.append(max(range(4), key=lambda v: scores[v]))
        expected.append(row)
    assert out.generated.tolist() == expected
    assert len({tuple(r) for r in expected}) > 1  # the rows really were sampled


def test_llada_low_confidence_ranks_by_the_clean_softmax_when_sampling():
    # LLaDA samples x0 from the Gumbel-noised logits but ranks positions by the noise-free
    # softmax probability of the sampled token (`p = softmax(logits)` in its generate.py).
    # Replay the first step by hand with the same seed: the committed position and its
    # confidence come from the clean softmax; ranking by the noisy softmax picks others.
    batch, gen_length, seed, temperature = 8, 4, 11, 1.0
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1 + gen_length, 4, generator=g) * 1.5
    model = ScriptedModel([logits], mask_id=MASK)
    out = cc.generate_reference(model, torch.zeros(batch, 1, dtype=torch.long), strategy="llada",
                                gen_length=gen_length, block_length=gen_length, steps=gen_length,
                                temperature=temperature, seed=seed, trace=True)
    torch.manual_seed(seed)
    u = torch.rand(batch, gen_length, 4, dtype=torch.float64)  # the first step's noise
    clean = [[math.exp(float(logits[1 + i, v])) / sum(math.exp(float(logits[1 + i, w]))
                                                       for w in range(3))
              for v in range(3)] for i in range(gen_length)]
    for b in range(batch):
        sampled = [max(range(3), key=lambda v, i=i: float(logits[1 + i, v])
                       - temperature * math.log(-math.log(float(u[b, i, v]))))
                   for i in range(gen_length)]
        conf = [clean[i][sampled[i]] for i in range(gen_length)]
        best = max(range(gen_length), key=lambda i: (conf[i], -i))
        assert out.trace[0].committed[b] == [1 + best], b
        assert out.trace[0].confidence[b] == pytest.approx([conf[best]], abs=1e-6)


def test_llada_sampling_never_commits_the_mask_token_at_high_temperature():
    # Uniform logits over the three real tokens: any of 0, 1, 2 is a valid sample, the mask never.
    model = ScriptedModel([torch.zeros(9, 4)], mask_id=MASK)
    out = cc.generate_reference(model, torch.zeros(16, 1, dtype=torch.long), strategy="llada",
                                gen_length=8, block_length=8, steps=1, temperature=300.0, seed=0)
    assert not (out.generated == MASK).any()


@pytest.mark.parametrize("strategy", ["credit", "threshold", "llada"])
@pytest.mark.parametrize("mask_logit", [50.0, float("inf")])
def test_mask_token_top1_is_never_committed_and_terminates(strategy, mask_logit):
    # The model is surest of the mask token everywhere. Without it: pos1 [1,0,0] 0.576,
    # pos2 [0,2,0] 0.787 -> pos2 (token 1) first, then pos1 (token 0), for every strategy
    # (credit: 0.868 vs 0.682 at step 1, neither reaches tau = 0.9, the best commits).
    script = [rows([1, 0, 0], [0, 2, 0], mask_logit=mask_logit)]
    model = ScriptedModel(script, mask_id=MASK)
    kw = dict(steps=2) if strategy == "llada" else dict(tau=0.9)
    if strategy == "credit":
        kw.update(CREDIT)
    out = cc.generate_reference(model, PROMPT, strategy=strategy, gen_length=2, block_length=2,
                                trace=True, **kw)
    assert out.generated[0].tolist() == [0, 1]
    assert committed(out) == [[2], [1]]
    assert out.nfe == 2 and model.calls == 2


def test_mask_token_top1_every_position_ties_and_all_commit():
    # Every non-mask logit equal: p = 1/3 everywhere, token 0 (first on ties), all tie with the
    # best so all commit in one step.
    script = [rows([0, 0, 0], [0, 0, 0], [0, 0, 0], mask_logit=30.0)]
    out, _ = run("threshold", script, gen_length=3, block_length=3, tau=0.9)
    assert committed(out) == [[1, 2, 3]]
    assert out.generated[0].tolist() == [0, 0, 0]
    assert out.trace[0].confidence[0] == pytest.approx([1 / 3] * 3, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# get_num_transfer_tokens
# ------------------------------------------------------------------------------------------------

def llada_get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's original `get_num_transfer_tokens` (ML-GSAI/LLaDA generate.py), verbatim logic."""
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, :remainder[i]] += 1
    return num_transfer_tokens


@pytest.mark.parametrize("gen_length, block_length, steps, expected", [
    (10, 10, 4, [3, 3, 2, 2]),          # 10 = 4*2 + 2
    (7, 7, 3, [3, 2, 2]),               # 7 = 3*2 + 1
    (12, 6, 4, [3, 3, 3, 3]),           # two blocks, 2 steps each, 6 = 2*3
    (10, 5, 4, [3, 2, 3, 2]),           # two blocks, 2 steps each, 5 = 2*2 + 1
    (4, 4, 8, [1, 1, 1, 1, 0, 0, 0, 0]),  # more steps than tokens: empty steps still count
    (6, 6, 1, [6]),
])
def test_llada_transfer_schedule(gen_length, block_length, steps, expected):
    script = [rows(*[[1.0 + 0.1 * i, 0, 0] for i in range(gen_length)])]
    model = ScriptedModel(script, mask_id=MASK)
    out = cc.generate_reference(model, PROMPT, strategy="llada", gen_length=gen_length,
                                block_length=block_length, steps=steps, trace=True)
    assert [len(t.committed[0]) for t in out.trace] == expected
    assert out.nfe == steps == model.calls
    blocks = gen_length // block_length
    per_block = steps // blocks
    original = llada_get_num_transfer_tokens(torch.ones(1, block_length, dtype=torch.bool), per_block)
    assert original[0].tolist() * blocks == expected
    # Within a block the later positions are more confident ([1 + 0.1 i, 0, 0]): right to left.
    first = out.trace[0].committed[0]
    assert first == list(range(block_length + 1 - len(first), block_length + 1))


def test_transfer_count_per_step_equals_the_original_split():
    for steps in range(1, 11):
        for count in range(0, 25):
            original = llada_get_num_transfer_tokens(
                (torch.arange(30) < count).unsqueeze(0), steps)[0].tolist()
            ours = [int(num_transfer_tokens_sync_free(torch.tensor([count]), steps,
                                                      torch.tensor(s))[0]) for s in range(steps)]
            assert ours == original, (count, steps)
            assert sum(ours) == count


def test_threshold_commit_includes_confidences_equal_to_tau():
    # conf >= min(max - 1e-5, tau): 0.5 is exactly tau (and exactly representable) and commits.
    conf = torch.tensor([[1.0, 0.5, 0.49, 0.7]])
    masked = torch.tensor([[True, True, True, False]])
    assert threshold_commit_sync_free(conf, masked, 0.5).tolist() == [[True, True, False, False]]


def test_threshold_commit_slack_lets_near_best_positions_through():
    # Below tau the threshold is max - 1e-5: a position 5e-6 under the best commits with it, one
    # 2e-5 under does not; the unmasked 0.9 neither commits nor sets the maximum.
    conf = torch.tensor([[0.3, 0.3 - 5e-6, 0.3 - 2e-5, 0.9]], dtype=torch.float64)
    masked = torch.tensor([[True, True, True, False]])
    assert threshold_commit_sync_free(conf, masked, 0.95).tolist() == [[True, True, False, False]]


def test_rank_breaks_ties_by_position():
    # LLaDA's sampler commits the k most confident positions; among equal confidences the
    # earliest position goes first (more ties than a small sort keeps in order by accident).
    values = torch.tensor([[0.5] * 40 + [0.9] + [0.5] * 40])
    ranks = rank_descending_sync_free(values)[0].tolist()
    assert ranks[40] == 0
    assert ranks[:40] == list(range(1, 41)) and ranks[41:] == list(range(41, 81))


# ------------------------------------------------------------------------------------------------
# Early stop on end-of-text
# ------------------------------------------------------------------------------------------------

EOS = 2


@pytest.mark.parametrize("strategy", ["threshold", "credit"])
def test_early_stop_waits_for_the_eos_to_settle(strategy):
    # tau = 0.9 (credit with alpha = 0 is threshold decoding).
    #   call 0: pos1 [2,0,0] 0.787, pos2 EOS [0,0,5] 0.987, pos3 [0,1.5,0] 0.691, pos4 [0,1.4,0] 0.670
    #   call 1: pos1 [5,0,0] 0.987, pos2 (committed),    pos3 [0,5,0] 0.987,   pos4 [0,1.4,0] 0.670
    # Step 1 commits the EOS at pos2 but pos1 is still masked: the EOS is not settled, nothing is
    # filled. Step 2 commits pos1 (token 0) and pos3 (token 1); now the EOS is settled and pos4,
    # still masked, is filled with EOS.
    script = [rows([2, 0, 0], [0, 0, 5], [0, 1.5, 0], [0, 1.4, 0]),
              rows([5, 0, 0], [0, 0, 5], [0, 5, 0], [0, 1.4, 0])]
    kw = dict(gen_length=4, block_length=4, tau=0.9, eos_token_id=EOS)
    if strategy == "credit":
        kw["alpha"] = 0.0
    out, model = run(strategy, script, early_stop=True, **kw)
    assert committed(out) == [[2], [1, 3]]
    assert out.generated[0].tolist() == [0, EOS, 1, EOS]
    assert out.nfe == 2 and model.calls == 2
    # Without early stop pos4 is decoded as token 1 in a third step.
    out, _ = run(strategy, script, early_stop=False, **kw)
    assert committed(out) == [[2], [1, 3], [4]]
    assert out.generated[0].tolist() == [0, EOS, 1, 1]
    assert out.nfe == 3


@pytest.mark.parametrize("strategy", ["threshold", "credit"])
def test_early_stop_fills_later_blocks(strategy):
    # Three blocks of 2. Block 0 commits token 0 and EOS in one step (both 0.99975 >= tau);
    # later blocks (which would be token 1) are filled with EOS and never decoded.
    script = [rows([9, 0, 0], [0, 0, 9], *[[0, 9, 0]] * 4)]
    out, model = run(strategy, script, gen_length=6, block_length=2, tau=0.9, eos_token_id=EOS,
                     early_stop=True)
    assert out.generated[0].tolist() == [0, EOS, EOS, EOS, EOS, EOS]
    assert out.nfe == 1 and model.calls == 1
    out, _ = run(strategy, script, gen_length=6, block_length=2, tau=0.9)
    assert out.generated[0].tolist() == [0, EOS, 1, 1, 1, 1]
    assert out.nfe == 3


@pytest.mark.parametrize("listed_in", ["config", "model_config"])
def test_early_stop_on_any_of_several_end_of_text_ids(listed_in):
    # Configs list several (end-of-text, end-of-turn): the model ends with EOS (2) while the
    # list starts with token 1, which fills the rest. Only the list's first id used to count.
    script = [rows([9, 0, 0], [0, 0, 9], *[[0, 9, 0]] * 4)]
    model = ScriptedModel(list(script), mask_id=MASK)
    kw = dict(strategy="threshold", gen_length=6, block_length=2, tau=0.9, early_stop=True)
    if listed_in == "config":
        out = cc.generate_reference(model, PROMPT, eos_token_id=[1, EOS], **kw)
    else:
        model.config.eos_token_id = [1, EOS]
        out = cc.generate_reference(model, PROMPT, **kw)
    assert out.generated[0].tolist() == [0, EOS, 1, 1, 1, 1]
    assert out.nfe == 1 and model.calls == 1


@pytest.mark.parametrize("outside", [7, 4], ids=["beyond", "at the vocabulary size"])
def test_an_end_of_text_id_outside_the_vocabulary_is_refused(outside):
    with pytest.raises(ValueError, match=rf"eos_token_id {outside} is outside the model's "
                                         r"vocabulary of 4 tokens, so early_stop would never fire"):
        run("threshold", gen_length=4, block_length=2, early_stop=True, eos_token_id=(2, outside))


def test_a_negative_end_of_text_id_in_the_model_config_is_refused():
    # DecodeConfig refuses a negative eos_token_id, the model's config is not checked there: its
    # -1 can never be committed, so early_stop is refused rather than silently never firing.
    model = ScriptedModel([rows([9, 0, 0], [0, 9, 0])], mask_id=MASK)
    model.config.eos_token_id = -1
    with pytest.raises(ValueError, match=r"eos_token_id -1 is outside the model's vocabulary of "
                                         r"4 tokens, so early_stop would never fire"):
        cc.generate_reference(model, PROMPT, strategy="threshold", gen_length=2, block_length=2,
                              early_stop=True)


def test_early_stop_llada():
    # Blocks of 2, 2 steps each (one token per step). pos1 [8,0,0] 0.99933 < pos2 EOS [0,0,9]
    # 0.99975: step 1 commits the EOS (not settled), step 2 pos1 -> settled, the rest filled.
    script = [rows([8, 0, 0], [0, 0, 9], *[[0, 9, 0]] * 4)]
    out, model = run("llada", script, gen_length=6, block_length=2, steps=6, eos_token_id=EOS,
                     early_stop=True)
    assert committed(out) == [[2], [1]]
    assert out.generated[0].tolist() == [0, EOS, EOS, EOS, EOS, EOS]
    assert out.nfe == 2 and model.calls == 2


def test_early_stop_llada_stops_once_the_canvas_is_complete():
    # pos1 EOS [0,0,9] 0.99975 beats pos2 [8,0,0]: step 1 commits a settled EOS at pos1 and
    # everything after it is filled; nothing is left to decode.
    script = [rows([0, 0, 9], [8, 0, 0], *[[0, 9, 0]] * 2)]
    out, model = run("llada", script, gen_length=4, block_length=2, steps=4, eos_token_id=EOS,
                     early_stop=True)
    assert out.generated[0].tolist() == [EOS, EOS, EOS, EOS]
    assert out.nfe == 1 and model.calls == 1


# ------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ------------------------------------------------------------------------------------------------

class GuidedModel(torch.nn.Module):
    """Conditional logits `cond` when a row sees its prompt, `uncond` when its prompt is masked."""

    def __init__(self, cond: torch.Tensor, uncond: torch.Tensor, prompt_len: int):
        super().__init__()
        self.cond, self.uncond, self.prompt_len = cond, uncond, prompt_len
        self.inputs = []
        self.config = type("Cfg", (), {"mask_token_id": MASK, "vocab_size": 4})()

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        prompt_masked = (input_ids[:, :self.prompt_len] == MASK).all(-1)
        return torch.where(prompt_masked[:, None, None], self.uncond, self.cond)


def _guided():
    # cond:   pos1 [1, 0, 0],  pos2 [0.6, 1, 0]      (alone: tokens 0, 1)
    # uncond: pos1 [0, 0.5, 0], pos2 [0, 1.5, 0]
    cond = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 5], [0.6, 1, 0, 5]])
    uncond = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0.5, 0, 0], [0, 1.5, 0, 0]])
    return GuidedModel(cond, uncond, prompt_len=2)


@pytest.mark.parametrize("cfg_scale, tokens, first_conf", [
    # uncond + 2 (cond - uncond) = 2 cond - uncond: pos1 [2, -0.5, 0] (p0 = 0.8214),
    # pos2 [1.2, 0.5, 0] (p0 = 0.5562): pos1 first, and guidance flips pos2 to token 0.
    (1.0, [0, 0], math.exp(2) / (math.exp(2) + math.exp(-0.5) + 1)),
    # 3 cond - 2 uncond: pos1 [3, -1, 0] (p0 = 0.9362), pos2 [1.8, 0, 0] (p0 = 0.7515).
    (2.0, [0, 0], math.exp(3) / (math.exp(3) + math.exp(-1) + 1)),
    # No guidance: cond alone, pos1 [1,0,0] p0 = 0.5761 > pos2 [0.6,1,0] p1 = 0.4906.
    (0.0, [0, 1], math.exp(1) / (math.exp(1) + 2)),
])
def test_cfg_combination_by_hand(cfg_scale, tokens, first_conf):
    model = _guided()
    ids = torch.tensor([[0, 1]])
    out = cc.generate_reference(model, ids, strategy="llada", gen_length=2, block_length=2, steps=2,
                                cfg_scale=cfg_scale, trace=True)
    assert out.generated[0].tolist() == tokens
    assert committed(out) == [[2], [3]]
    assert out.trace[0].confidence[0] == pytest.approx([first_conf], abs=1e-5)
    assert len(model.inputs) == 2
    first = model.inputs[0]
    if cfg_scale == 0:
        assert first.shape == (1, 4)
        return
    assert first.shape == (2, 4)
    assert first[0].tolist() == [0, 1, MASK, MASK]      # conditional: the prompt
    assert first[1].tolist() == [MASK, MASK, MASK, MASK]  # unconditional: the prompt masked
    second = model.inputs[1]
    assert second[0].tolist() == [0, 1, 0, MASK]
    assert second[1].tolist() == [MASK, MASK, 0, MASK]  # the generated part is shared
