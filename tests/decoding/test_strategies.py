"""decoding/strategies.py: what each strategy proposes and commits. Hand-computed cases on scripted
logits (vocabulary of 4, token 3 the mask; every expected value worked out by hand), properties
on a model whose logits depend on the whole canvas, the factor rule and the token options.

Softmax values used by the hand-computed cases (the mask column excluded, three tokens remain):
    [3, 0, 0]   -> p = e^3   / (e^3   + 2) = 0.909443
    [2, 0, 0]   -> p = e^2   / (e^2   + 2) = 0.786986
    [1.9, 0, 0] -> p = e^1.9 / (e^1.9 + 2) = 0.769742
    [1, 0, 0]   -> p = e     / (e     + 2) = 0.576117
(the same for any permutation of the three columns)."""

from __future__ import annotations

import math

import pytest
import torch
from decoding_cases import (
    GEOMETRIES,
    PROMPT,
    S0,
    S1,
    alphas,
    betas,
    committed,
    gammas,
    prompts,
    rows,
    run,
    scripted,
    seeds,
    taus,
    toy,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_models import ContextMixModel, ScriptedModel, layered_model, token_prompts

import credit_compile as cc
from credit_compile import DecodeConfig
from credit_compile.decoding.strategies import (
    factor_commit_sync_free,
    make_strategy,
    num_transfer_tokens_sync_free,
    rank_descending_sync_free,
    threshold_commit_sync_free,
)
from credit_compile.generation_setup import setup_generation


@pytest.mark.parametrize("layout, optimized, fused_op", [
    ("sparse", True, True),    # the fast path calls the op: no eager pattern to fuse
    ("dense", True, False),    # the eager chain, which the credit-fusion pass fuses when compiled
    ("sparse", False, False),  # the reference: always the eager chain
    ("dense", False, False),
])
def test_the_credit_strategy_decides_the_fused_op_or_the_eager_chain(layout, optimized, fused_op):
    strategy = make_strategy(DecodeConfig(credit_layout=layout), mask_id=39, optimized=optimized)
    assert strategy.use_op is fused_op


@pytest.mark.parametrize("factor, committed", [
    # Bounds 1 - factor/(i+1) for i = 2, 3, 4: factor 1 -> 0.667, 0.75, 0.8.
    (1.0, [True, True, False, False]),   # 0.7 passes 0.667, 0.5 fails 0.75
    (0.1, [True, False, False, False]),  # 0.967: only the best, which always commits
    (2.0, [True, True, True, False]),    # 0.333, 0.5, 0.6: 0.5 passes, 0.2 fails
    (4.0, [True, True, True, True]),     # every bound below 0.2
])
def test_the_longest_run_of_confidences_above_their_bounds_commits(factor, committed):
    conf = torch.tensor([[0.5, 0.99, 0.2, 0.7]])  # sorted: 0.99, 0.7, 0.5, 0.2
    masked = torch.ones_like(conf, dtype=torch.bool)
    expected = torch.tensor([[committed[2], committed[0], committed[3], committed[1]]])
    assert torch.equal(factor_commit_sync_free(conf, masked, factor), expected)


def test_unmasked_positions_neither_commit_nor_count():
    # The unmasked 0.99 would be the best; among the masked, 0.6 fails its bound (0.667). A row
    # with nothing masked commits nothing.
    conf = torch.tensor([[0.95, 0.6, 0.99, 0.3], [0.9, 0.9, 0.9, 0.9]])
    masked = torch.tensor([[True, True, False, True], [False, False, False, False]])
    commit = factor_commit_sync_free(conf, masked, 1.0)
    assert torch.equal(commit, torch.tensor([[True, False, False, False], [False] * 4]))


def test_ties_commit_by_position():
    conf = torch.full((1, 4), 0.7)
    commit = factor_commit_sync_free(conf, torch.ones(1, 4, dtype=torch.bool), 1.0)
    assert torch.equal(commit, torch.tensor([[True, True, False, False]]))  # 0.7 < 0.75 third


@pytest.mark.parametrize("strategy", ["credit", "threshold", "factor", "llada", "dream"])
def test_suppressed_tokens_never_appear(strategy):
    # The tokens the unsuppressed decode chose: suppressed, none of them appears, so the
    # decode changed.
    model = layered_model(1, seed=2)
    ids, mask = token_prompts(2, 5, seed=1)
    decode = dict(gen_length=8, block_length=4, strategy=strategy)
    plain = cc.generate_reference(model, ids, mask, **decode).generated
    chosen = tuple(sorted(set(plain.flatten().tolist())))
    out = cc.generate_reference(model, ids, mask, suppress_tokens=chosen, **decode).generated
    assert not set(out.flatten().tolist()) & set(chosen)


def test_commit_last_proposals_score_zero():
    # A commit of a commit-last id scores 0 (its step committed it as the count's last
    # resort); the others score above 0. Which positions commit when: the spec oracle.
    model = layered_model(1, seed=2)
    ids, mask = token_prompts(2, 5, seed=1)
    decode = dict(gen_length=8, block_length=4, strategy="llada")
    plain = cc.generate_reference(model, ids, mask, **decode).generated
    late = int(plain[0, 0])  # a token the plain decode commits
    out = cc.generate_reference(model, ids, mask, commit_last_tokens=late, trace=True, **decode)
    assert not torch.equal(out.generated, plain)
    scores = [(int(out.sequences[row, p]) == late, c) for step in out.trace
              for row in range(2) for p, c in zip(step.committed[row], step.confidence[row],
                                                  strict=True)]
    assert any(is_late for is_late, _ in scores)
    assert all((c == 0.0) == is_late for is_late, c in scores)


MASK = 3  # ScriptedModel cases: vocabulary of 4, token 3 is the mask


def test_hand_computed_threshold_and_credit():
    # Position logits (token 3 = mask has the largest logit everywhere and is never committed):
    #   A: [3, 0, 0, 9]   p(0) = e^3/(e^3+2)     = 0.9094
    #   B: [2.2, 0, 0, 9] p(0) = e^2.2/(e^2.2+2) = 0.8186
    #   C: [0, 1, 0, 9]   p(1) = e/(e+2)         = 0.5761
    row = torch.tensor([[0.0, 0, 0, 0], [3, 0, 0, 9], [2.2, 0, 0, 9], [0, 1, 0, 9]])
    model = ScriptedModel([row], mask_id=MASK)
    ids = torch.zeros(1, 1, dtype=torch.long)
    common = dict(gen_length=3, block_length=3, tau=0.9, trace=True)

    out = cc.generate_reference(model, ids, strategy="threshold", **common)
    # Step 1: A passes tau. Step 2: B is the best left (0.8186 < tau but the best always
    # commits), C is below. Step 3: C.
    assert [t.committed[0] for t in out.trace] == [[1], [2], [3]]
    assert out.generated[0].tolist() == [0, 0, 1]
    assert abs(out.trace[0].confidence[0][0] - math.exp(3) / (math.exp(3) + 2)) < 1e-6

    model.calls = 0
    setup = setup_generation(model, ids, None, DecodeConfig(
        strategy="credit", alpha=1.0, beta=0.5, gamma=1.0, tau=0.9, gen_length=3, block_length=3,
        credit_layout="dense"))
    step = setup.step_function()
    credit = setup.state.buffers["credit"]
    with torch.no_grad():
        step()
    p_a, p_b, p_c = (math.exp(3) / (math.exp(3) + 2), math.exp(2.2) / (math.exp(2.2) + 2),
                     math.e / (math.e + 2))
    assert torch.allclose(credit[0, :, :].amax(-1), torch.tensor([p_a, p_b, p_c]), atol=1e-6)
    # Fused confidences: A 3+ln(1+0.9094) -> 0.9504 commits; B 2.2+ln(1.8186) -> 0.8914 does not.
    assert setup.state.last_commit[0].tolist() == [True, False, False]
    assert abs(float(setup.state.last_conf[0, 1]) - 0.8914) < 1e-3
    with torch.no_grad():
        step()
    # Credit decays by beta and grows by p^gamma on still-masked positions only.
    assert abs(float(credit[0, 1, 0]) - (0.5 * p_b + p_b)) < 1e-6
    assert abs(float(credit[0, 0, 0]) - 0.5 * p_a) < 1e-6  # A is committed: decay only
    # B: 2.2 + ln(1 + 1.5 p_b) -> conf 0.9095 >= tau now; C stays below.
    assert setup.state.last_commit[0].tolist() == [False, True, False]


def test_mask_token_as_top1_never_commits_and_terminates():
    row = torch.zeros(3, 4)
    row[:, MASK] = 50.0  # the model is sure every position is the mask token
    model = ScriptedModel([row], mask_id=MASK)
    for strategy in ("credit", "threshold", "llada"):
        model.calls = 0
        out = cc.generate_reference(model, torch.zeros(1, 1, dtype=torch.long), strategy=strategy,
                                    gen_length=2, block_length=2)
        assert (out.generated != MASK).all()
        assert out.nfe <= 2


def test_llada_transfer_schedule_matches_get_num_transfer_tokens():
    # 10 masked positions over 4 steps: 10 // 4 = 2, remainder 2 -> [3, 3, 2, 2].
    script = scripted(0, calls=4, length=11)
    model = ScriptedModel(script, mask_id=MASK)
    out = cc.generate_reference(model, torch.zeros(1, 1, dtype=torch.long), strategy="llada",
                                gen_length=10, block_length=10, steps=4, trace=True)
    assert [len(t.committed[0]) for t in out.trace] == [3, 3, 2, 2]
    assert out.nfe == 4


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), tau=st.floats(0.3, 1.0))
def test_alpha_zero_is_threshold_decoding_on_one_prompt(seed, tau):
    model = ContextMixModel(seed=seed % 5)
    ids = torch.randint(0, 30, (2, 3), generator=torch.Generator().manual_seed(seed))
    kw = dict(gen_length=8, block_length=4, tau=tau)
    credit = cc.generate_reference(model, ids, strategy="credit", alpha=0.0, **kw)
    threshold = cc.generate_reference(model, ids, strategy="threshold", **kw)
    assert torch.equal(credit.sequences, threshold.sequences) and credit.nfe == threshold.nfe


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.0, 1.0))
def test_credit_never_negative_and_decays_by_beta(seed, beta):
    model = ContextMixModel(seed=seed % 5)
    ids = torch.randint(0, 30, (2, 3), generator=torch.Generator().manual_seed(seed))
    setup = setup_generation(model, ids, None, DecodeConfig(
        gen_length=8, block_length=8, beta=beta, tau=1.0, credit_layout="dense"))
    step, state = setup.step_function(), setup.state
    credit = state.buffers["credit"]
    with torch.no_grad():
        for _ in range(4):
            before = credit.clone()
            was_masked = state.x[:, state.gen_start:] == 39
            first = int(state.step_in_block) == 0
            step()
            assert (credit >= 0).all()
            if not first:
                # Unmasked positions only decay; masked ones decay then gain at one token.
                unmasked = ~was_masked
                assert torch.equal(credit[unmasked], (before * beta)[unmasked])
                gained = credit - before * beta
                assert ((gained > 0).sum(-1) <= 1).all()


def p_top(top: float, others=(0.0, 0.0)) -> float:
    """Softmax probability of the top logit among three non-mask columns (by hand)."""
    return math.exp(top) / (math.exp(top) + sum(math.exp(o) for o in others))


def fused_conf(logits3, credit3, alpha=1.0) -> tuple[int, float]:
    """argmax and its softmax of l + alpha*log1p(C) over three non-mask columns (by hand)."""
    fused = [x + alpha * math.log1p(c) for x, c in zip(logits3, credit3, strict=True)]
    top = max(range(3), key=lambda v: (fused[v], -v))
    return top, math.exp(fused[top]) / sum(math.exp(f) for f in fused)


CREDIT = dict(alpha=1.0, beta=0.5, gamma=1.0)


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


@pytest.mark.parametrize("strategy", ["credit", "threshold", "llada", "dream"])
@pytest.mark.parametrize("mask_logit", [50.0, float("inf")])
def test_mask_token_top1_is_never_committed_and_terminates(strategy, mask_logit):
    # The model is surest of the mask token everywhere. Without it: pos1 [1,0,0] 0.576,
    # pos2 [0,2,0] 0.787 -> pos2 (token 1) first, then pos1 (token 0), for every strategy
    # (credit: 0.868 vs 0.682 at step 1, neither reaches tau = 0.9, the best commits).
    script = [rows([1, 0, 0], [0, 2, 0], mask_logit=mask_logit)]
    model = ScriptedModel(script, mask_id=MASK)
    kw = dict(steps=2) if strategy == "llada" else dict(tau=0.9)
    if strategy == "dream":  # eps 0: one commit per step (int(2 * 0.5))
        kw = dict(steps=2, dream_eps=0.0, dream_alg="maskgit_plus")
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


MIX_MASK = 39


VOCAB = 40


@given(seed=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 5),
       geometry=st.sampled_from(GEOMETRIES), data=st.data())
def test_llada_commits_the_scheduled_number_per_step(seed, batch, prompt_len, geometry, data):
    gen_length, block_length = geometry
    blocks = gen_length // block_length
    per_block = data.draw(st.integers(1, 2 * block_length))
    remasking = data.draw(st.sampled_from(["low_confidence", "random"]))
    temperature = data.draw(st.sampled_from([0.0, 0.7]))
    out = cc.generate_reference(toy(seed), prompts(seed, batch, prompt_len), strategy="llada",
                                gen_length=gen_length, block_length=block_length,
                                steps=blocks * per_block, remasking=remasking,
                                temperature=temperature, seed=seed, trace=True)
    assert out.nfe == blocks * per_block
    # LLaDA's get_num_transfer_tokens: count // steps, +1 on the first count % steps steps.
    base, extra = divmod(block_length, per_block)
    schedule = [base + (s < extra) for s in range(per_block)] * blocks
    for row in range(batch):
        assert [len(t.committed[row]) for t in out.trace] == schedule
    assert not (out.generated == MIX_MASK).any()


@given(seed=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 5),
       geometry=st.sampled_from(GEOMETRIES), tau=taus, beta=betas, gamma=gammas,
       layout=st.sampled_from(["dense", "sparse"]))
def test_alpha_zero_is_threshold_decoding(seed, batch, prompt_len, geometry, tau, beta, gamma,
                                          layout):
    model, ids = toy(seed), prompts(seed, batch, prompt_len)
    kw = dict(gen_length=geometry[0], block_length=geometry[1], tau=tau, trace=True)
    credit = cc.generate_reference(model, ids, strategy="credit", alpha=0.0, beta=beta,
                                   gamma=gamma, credit_layout=layout, **kw)
    threshold = cc.generate_reference(model, ids, strategy="threshold", **kw)
    assert torch.equal(credit.sequences, threshold.sequences)
    assert credit.nfe == threshold.nfe
    assert [t.committed for t in credit.trace] == [t.committed for t in threshold.trace]


@given(seed=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 5),
       geometry=st.sampled_from(GEOMETRIES), tau=taus, alpha=alphas, beta=betas, gamma=gammas)
def test_dense_and_sparse_credit_agree(seed, batch, prompt_len, geometry, tau, alpha, beta, gamma):
    model, ids = toy(seed), prompts(seed, batch, prompt_len)
    kw = dict(strategy="credit", gen_length=geometry[0], block_length=geometry[1], tau=tau,
              alpha=alpha, beta=beta, gamma=gamma, trace=True)
    dense = cc.generate_reference(model, ids, credit_layout="dense", **kw)
    sparse = cc.generate_reference(model, ids, credit_layout="sparse", credit_slots=None, **kw)
    assert torch.equal(dense.sequences, sparse.sequences)
    assert dense.nfe == sparse.nfe
    assert [t.committed for t in dense.trace] == [t.committed for t in sparse.trace]
    for a, b in zip(dense.trace, sparse.trace, strict=True):
        for ra, rb in zip(a.confidence, b.confidence, strict=True):
            assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) for x, y in zip(ra, rb, strict=True))


def _dense_credit(state, vocab):
    """The dense credit of either layout (the sparse slots summed by hand)."""
    if "credit" in state.buffers:
        return state.buffers["credit"].clone()
    ids, credit = state.buffers["slot_ids"], state.buffers["slot_credit"]
    dense = torch.zeros(*ids.shape[:-1], vocab)
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            for v, c in zip(ids[b, i].tolist(), credit[b, i].tolist(), strict=True):
                if v >= 0:
                    dense[b, i, v] += c
    return dense


@given(seed=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 5),
       geometry=st.sampled_from([(8, 4), (8, 8), (6, 3), (12, 6)]), beta=betas, gamma=gammas,
       tau=st.floats(0.8, 1.0), layout=st.sampled_from(["dense", "sparse"]))
def test_engine_credit_buffer_decays_by_beta(seed, batch, prompt_len, geometry, beta, gamma, tau,
                                             layout):
    model, ids = toy(seed), prompts(seed, batch, prompt_len)
    setup = setup_generation(model, ids, None, DecodeConfig(
        strategy="credit", gen_length=geometry[0], block_length=geometry[1], beta=beta,
        gamma=gamma, tau=tau, credit_layout=layout))
    state, step = setup.state, setup.step_function()
    block_length = geometry[1]
    beta32 = torch.tensor(beta, dtype=torch.float32)
    steps = 0
    with torch.no_grad():
        while not bool(state.done):
            assert steps <= geometry[0]
            before = _dense_credit(state, VOCAB)
            first = int(state.step_in_block) == 0
            lo = state.gen_start + int(state.block_index) * block_length
            was_masked = state.x[:, lo:lo + block_length] == MIX_MASK
            step()
            steps += 1
            after = _dense_credit(state, VOCAB)
            assert (after >= 0).all()
            assert (after[..., MIX_MASK] == 0).all()
            gained = after - (torch.zeros_like(before) if first else before * beta32)
            # Committed positions only decay (fresh credit: zero); masked positions gain at
            # exactly one token, a positive amount <= 1 (p^gamma with p <= 1).
            assert torch.equal(gained[~was_masked], torch.zeros_like(gained[~was_masked]))
            touched = gained[was_masked].abs() > 1e-7
            assert (touched.sum(-1) == 1).all()
            amounts = gained[was_masked][touched]
            assert ((amounts > 0) & (amounts <= 1 + 1e-6)).all()
            if layout == "dense" and not first:
                untouched = gained == 0
                assert torch.equal(after[untouched], (before * beta32)[untouched])
    assert int(state.nfe) == steps


# ------------------------------------------------------------------------------------------------
# LLaDA2's sampling: temperature, top-k, top-p (the official _sample_with_temperature_topk_topp)
# ------------------------------------------------------------------------------------------------


def kept_by_hand(logits: list[float], top_k, top_p) -> set[int]:
    """The official filters, token by token: the k best logits (ties with the k-th kept), then,
    in order of probability (ties by index), tokens while the probability before them is at most
    top_p."""
    kept = set(range(len(logits)))
    if top_k is not None:
        kth = sorted(logits, reverse=True)[min(top_k, len(logits)) - 1]
        kept = {v for v in kept if logits[v] >= kth}
    if top_p is not None:
        total = sum(math.exp(logits[v]) for v in kept)
        before, nucleus = 0.0, set()
        for v in sorted(kept, key=lambda v: (-logits[v], v)):
            if before > top_p:
                break
            nucleus.add(v)
            before += math.exp(logits[v]) / total
        kept = nucleus
    return kept


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), vocab=st.integers(2, 9), top_k=st.none() | st.integers(1, 10),
       top_p=st.none() | st.floats(0.05, 1.0), ties=st.booleans())
def test_llada2_filters_keep_the_official_tokens(seed, vocab, top_k, top_p, ties):
    from credit_compile.decoding.strategies import top_k_top_p_filter

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, vocab, generator=g, dtype=torch.float64) * 2
    if ties:
        logits = logits.round()  # whole numbers: ties at the k-th logit and in the order
    filtered = top_k_top_p_filter(logits, top_k, top_p)
    for row, out in zip(logits.tolist(), filtered, strict=True):
        kept = kept_by_hand(row, top_k, top_p)
        assert set(out.isfinite().nonzero().flatten().tolist()) == kept
        assert out[sorted(kept)].tolist() == [row[v] for v in sorted(kept)]  # unchanged there


def llada2_strategy(**options):
    from credit_compile.decoding.strategies import LLaDA2Strategy

    config = DecodeConfig(strategy="llada2", gen_length=8, block_length=8, **options)
    return LLaDA2Strategy(config, mask_id=MASK)


def test_llada2_at_temperature_zero_is_greedy_whatever_the_filters():
    """The official greedy path ignores top_k and top_p (and draws nothing)."""
    from credit_compile.ops.logits import masked_vocab_logits, top1_and_prob

    logits = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    x0, conf = llada2_strategy(top_k=1, top_p=0.1).propose(logits, None, None)
    assert torch.equal(torch.get_rng_state(), state)
    top, prob = top1_and_prob(masked_vocab_logits(logits, MASK))
    assert torch.equal(x0, top) and torch.equal(conf, prob)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), temperature=st.floats(0.05, 50.0), top_p=st.none() | st.floats(0.1, 1.0))
def test_llada2_top_k_1_proposes_the_greedy_token_with_confidence_1(seed, temperature, top_p):
    """One token left to draw: the greedy one, certain (so a step commits every masked position,
    as the official sampler does with top_k=1)."""
    logits = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(seed)) * 3
    torch.manual_seed(seed)
    x0, conf = llada2_strategy(temperature=temperature, top_k=1, top_p=top_p).propose(logits, None, None)
    greedy = torch.where(torch.arange(4) == MASK, -math.inf, logits).argmax(-1)
    assert torch.equal(x0, greedy) and torch.equal(conf, torch.ones_like(conf))


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.5, 2, None),
                                                       (2.0, None, 0.6), (1.5, 3, 0.8)])
def test_llada2_samples_follow_the_filtered_tempered_softmax(temperature, top_k, top_p):
    """20000 draws of one position's token: their frequencies are the probabilities of the
    official distribution (softmax of logits / temperature after the filters; the mask token
    never), and each draw's confidence is its probability there."""
    from credit_compile.decoding.strategies import sample_top_k_top_p

    logits = torch.tensor([1.0, 0.2, -0.5, 7.0, 0.6, -2.0])  # token 3 the mask: out
    masked = logits.masked_fill(torch.arange(6) == MASK, -math.inf)
    kept = kept_by_hand((masked / temperature).tolist(), top_k, top_p) - {MASK}
    expected = torch.zeros(6)
    expected[sorted(kept)] = torch.softmax(masked[sorted(kept)] / temperature, -1)
    torch.manual_seed(0)
    x0, conf = sample_top_k_top_p(masked.expand(20000, 6), temperature, top_k, top_p)
    frequency = torch.bincount(x0, minlength=6) / 20000
    assert set(x0.unique().tolist()) == kept
    torch.testing.assert_close(frequency, expected, atol=0.015, rtol=0)  # 3.5 std at p = 0.5
    torch.testing.assert_close(conf, expected[x0])


# ----------------------------------------------------------------------------------------------
# Dream's samplers (strategy="dream")
# ----------------------------------------------------------------------------------------------


def official_dream_counts(n: int, steps: int, eps: float) -> list[int]:
    """Dream's `_sample`, one row whose every commit is a token: at step i of
    linspace(1, eps, steps + 1), int(n * (1 - s / t)) of the n masks left (float32 tensors as
    its code computes them), all of them at the last step."""
    times = torch.linspace(1, eps, steps + 1)
    counts = []
    for i in range(steps):
        masks = torch.tensor(n) / 1  # mask_index.sum() / batch: float32
        count = int(masks * (1 - times[i + 1] / times[i])) if i < steps - 1 else int(masks)
        counts.append(count)
        n -= count
    return counts


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 600), steps=st.integers(1, 80), eps=st.sampled_from([1e-3, 0.0, 0.1, 0.5]))
def test_dream_commit_counts_replay_the_official_schedule(n, steps, eps):
    from credit_compile.decoding.strategies import dream_commit_fractions

    fractions, left, counts = dream_commit_fractions(steps, eps), n, []
    for step in range(steps):
        counts.append(int((torch.tensor([left]).float() * fractions[step]).long()))
        left -= counts[-1]
    assert counts == official_dream_counts(n, steps, eps) and left == 0


def test_dream_commit_counts_by_hand():
    # 8 masks, 4 steps, eps 1e-3: t = 1, 0.75025, 0.5005, 0.25075, 0.001.
    # 8 * 0.24975 -> 1; 7 * 0.33289 -> 2; 5 * 0.49900 -> 2; the last step the 3 left.
    out, _ = run("dream", scripted(0, calls=4, length=9), gen_length=8, block_length=8, steps=4)
    assert [len(t.committed[0]) for t in out.trace] == [1, 2, 2, 3] and out.nfe == 4
    # One token per step (steps = gen_length) commits none at the first step: int(4 * 0.24975).
    out, _ = run("dream", scripted(0, calls=4, length=5), gen_length=4, block_length=4)
    assert [len(t.committed[0]) for t in out.trace] == [0, 1, 1, 2] and out.nfe == 4


# pos1 [3, 2.9, -10]: p1 0.5250, margin 0.0500, entropy -0.6919 (two near-even tokens).
# pos2 [0.5, 0, 0]:   p1 0.4519, margin 0.1780, entropy -1.0651 (three tokens).
# One commit per step (eps 0: t = 1, 0.5, 0; int(2 * 0.5) = 1): maskgit_plus and entropy take
# pos1 first, topk_margin pos2.
DREAM_SCRIPT = [rows([3, 2.9, -10], [0.5, 0, 0])]


@pytest.mark.parametrize("alg, order, first_confidence", [
    ("maskgit_plus", [[1], [2]], math.exp(3) / (math.exp(3) + math.exp(2.9) + math.exp(-10))),
    ("topk_margin", [[2], [1]], (math.exp(0.5) - 1) / (math.exp(0.5) + 2)),
    ("entropy", [[1], [2]], sum(p * math.log(p) for p in torch.softmax(
        torch.tensor([3, 2.9, -10], dtype=torch.float64), 0).tolist())),
])
def test_dream_algs_rank_by_their_confidence_by_hand(alg, order, first_confidence):
    out, _ = run("dream", DREAM_SCRIPT, gen_length=2, block_length=2, steps=2, dream_eps=0.0,
                 dream_alg=alg)
    assert committed(out) == order
    assert out.trace[0].confidence[0][0] == pytest.approx(first_confidence, abs=1e-5)
    assert out.generated[0].tolist() == [0, 0]


def test_dream_alg_temp_draws_the_commits_from_the_softmax_of_the_confidences():
    """alg_temp > 0: which masked position a step commits is drawn with probability
    softmax(confidence / alg_temp) (the official torch.multinomial's first draw); the
    unmasked one never."""
    from types import SimpleNamespace

    from credit_compile.decoding.strategies import DreamStrategy

    config = DecodeConfig(strategy="dream", gen_length=4, block_length=4, steps=1,
                          dream_alg_temp=0.5)
    # One commit of the 3 masked positions: 3 * 0.34 -> 1.
    state = SimpleNamespace(step_in_block=torch.tensor(0),
                            buffers={"dream_fractions": torch.tensor([0.34])})
    conf = torch.tensor([0.0, 0.5, 1.0, 9.0]).expand(20000, 4)
    masked = torch.tensor([True, True, True, False]).expand(20000, 4)
    torch.manual_seed(0)
    commit = DreamStrategy(config, mask_id=MASK).select(conf, masked, state)
    assert commit.sum(-1).eq(1).all() and not commit[:, 3].any()
    expected = torch.softmax(torch.tensor([0.0, 0.5, 1.0]) / 0.5, 0)
    torch.testing.assert_close(commit[:, :3].float().mean(0), expected, atol=0.015, rtol=0)
