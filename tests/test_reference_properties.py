"""Hypothesis properties of the eager reference decoders on a model whose logits depend on the
whole canvas (`ContextMixModel`: vocabulary 40, mask token 39).

Each property draws seeds, prompt lengths, batch sizes, geometry and the decoding parameters.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from toy_models import ContextMixModel

import credit_compile as cc
from credit_compile import DecodeConfig
from credit_compile.decoding.loop import run_generation
from credit_compile.generation_setup import setup_generation
from credit_compile.ops.credit_step_reference import credit_step_dense_eager

MASK = 39
VOCAB = 40

STRATEGIES = ["credit", "threshold", "llada"]
GEOMETRIES = [(4, 4), (6, 3), (8, 2), (8, 4), (12, 4), (12, 6), (16, 8)]

seeds = st.integers(0, 100_000)
taus = st.floats(0.05, 1.0)
alphas = st.floats(0.0, 3.0)
betas = st.floats(0.0, 1.0)
gammas = st.floats(0.05, 3.0)


class RecordingModel(ContextMixModel):
    """ContextMixModel that keeps the canvas it was called with (the state before each step)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        return super().forward(input_ids, attention_mask)


def llada_steps(kw) -> int:
    return kw["gen_length"] if kw.get("steps") is None else kw["steps"]


def toy(seed: int, cls=ContextMixModel):
    return cls(seed=seed % 7, sharpness=0.5 + (seed % 5))


def prompts(seed: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, MASK, (batch, length), generator=torch.Generator().manual_seed(seed))


@st.composite
def decode_options(draw, strategy=None):
    """A strategy and the options it reads (llada: steps a multiple of the block count or None,
    greedy, with or without guidance)."""
    strategy = strategy or draw(st.sampled_from(STRATEGIES))
    gen_length, block_length = draw(st.sampled_from(GEOMETRIES))
    kw = dict(strategy=strategy, gen_length=gen_length, block_length=block_length)
    if strategy == "llada":
        blocks = gen_length // block_length
        # None: one token per step (gen_length steps).
        kw["steps"] = draw(st.one_of(st.none(), st.integers(1, 2 * block_length).map(
            lambda per_block: blocks * per_block)))
        kw["remasking"] = "low_confidence"
        kw["cfg_scale"] = draw(st.sampled_from([0.0, 0.0, 1.5]))
    else:
        kw["tau"] = draw(taus)
    if strategy == "credit":
        kw.update(alpha=draw(alphas), beta=draw(betas), gamma=draw(gammas),
                  credit_layout=draw(st.sampled_from(["dense", "sparse"])))
    return kw


# ------------------------------------------------------------------------------------------------
# Loop invariants
# ------------------------------------------------------------------------------------------------

@given(seed=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 6), kw=decode_options())
def test_loop_invariants(seed, batch, prompt_len, kw):
    model = toy(seed, RecordingModel)
    ids = prompts(seed, batch, prompt_len)
    out = cc.generate_reference(model, ids, trace=True, **kw)
    gen_length, block_length = kw["gen_length"], kw["block_length"]
    num_blocks = gen_length // block_length
    final = out.sequences

    # Shape, prompt untouched, no mask left.
    assert final.shape == (batch, prompt_len + gen_length)
    assert out.prompt_length == prompt_len
    assert torch.equal(final[:, :prompt_len], ids)
    assert not (out.generated == MASK).any()

    # NFE: one forward per counted step (a doubled batch with guidance), at least one step per
    # block.
    assert len(model.inputs) == out.nfe == len(out.trace)
    assert out.nfe >= num_blocks
    if kw.get("cfg_scale"):
        assert all(x.shape[0] == 2 * batch for x in model.inputs)
        for x in model.inputs:  # the unconditional half sees the prompt masked
            assert (x[batch:, :prompt_len] == MASK).all()
            assert torch.equal(x[batch:, prompt_len:], x[:batch, prompt_len:])
        model.inputs = [x[:batch] for x in model.inputs]
    if kw["strategy"] == "llada":
        assert out.nfe == llada_steps(kw)
    else:
        assert out.nfe <= gen_length

    # The canvas before each step is what the model saw; after the last step it is `final`.
    canvases = model.inputs + [final]
    for k, step in enumerate(out.trace):
        before, after = canvases[k], canvases[k + 1]
        assert torch.equal(before[:, :prompt_len], ids)
        lo = prompt_len + step.block * block_length
        for row in range(batch):
            positions = step.committed[row]
            assert all(lo <= p < lo + block_length for p in positions)
            for p in positions:
                assert before[row, p] == MASK and after[row, p] != MASK
                assert after[row, p] == final[row, p]  # committed tokens never change
            untouched = torch.ones(before.shape[1], dtype=torch.bool)
            untouched[positions] = False
            assert torch.equal(before[row, untouched], after[row, untouched])
            # Threshold-style strategies commit at least one token in a row that has masks in
            # the block; the best one when nothing reaches tau.
            if kw["strategy"] != "llada" and (before[row, lo:lo + block_length] == MASK).any():
                assert positions
            if kw["strategy"] != "llada" and positions:
                assert all(c >= min(kw["tau"], max(step.confidence[row])) - 1e-5
                           for c in step.confidence[row])
    # Every generated position is committed exactly once; blocks go left to right.
    for row in range(batch):
        every = sorted(p for t in out.trace for p in t.committed[row])
        assert every == list(range(prompt_len, prompt_len + gen_length))
    blocks = [t.block for t in out.trace]
    assert blocks == sorted(blocks) and set(blocks) == set(range(num_blocks))


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
    assert not (out.generated == MASK).any()


# ------------------------------------------------------------------------------------------------
# Equivalences between strategies and layouts
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# Credit: never negative, decays by exactly beta
# ------------------------------------------------------------------------------------------------

def _independent_increment(logits, masked, gamma, mask_id):
    """p(v*)^gamma on v* for masked positions, computed in float64 without the library."""
    l64 = logits.double().clone()
    l64[..., mask_id] = -math.inf
    top = l64.argmax(-1)
    p = torch.softmax(l64, -1).gather(-1, top[..., None]).squeeze(-1)
    inc = torch.zeros_like(l64)
    inc.scatter_(-1, top[..., None], (p ** gamma * masked.double())[..., None])
    return inc, top


@given(seed=seeds, beta=betas, gamma=gammas, alpha=alphas, steps=st.integers(2, 6),
       batch=st.integers(1, 3), block=st.integers(1, 6), vocab=st.integers(3, 12))
def test_credit_op_decays_by_beta_and_stays_non_negative(seed, beta, gamma, alpha, steps, batch,
                                                         block, vocab):
    g = torch.Generator().manual_seed(seed)
    mask_id = vocab - 1
    beta32 = torch.tensor(beta, dtype=torch.float32)
    # Leftover credit from an earlier block: the first step must discard it.
    credit = torch.rand(batch, block, vocab, generator=g) * 5
    masked = torch.ones(batch, block, dtype=torch.bool)
    for step in range(steps):
        logits = torch.randn(batch, block, vocab, generator=g) * 3
        before = credit.clone()
        x0, conf = credit_step_dense_eager(logits, credit, masked, torch.tensor(step == 0),
                                           alpha, beta, gamma, mask_id)
        inc, _ = _independent_increment(logits, masked, gamma, mask_id)
        assert (credit >= 0).all()
        decayed = torch.zeros_like(before) if step == 0 else before * beta32
        # Entries that got no increment are exactly the decayed credit.
        no_gain = inc == 0
        assert torch.equal(credit[no_gain], decayed[no_gain])
        assert torch.allclose(credit.double(), decayed.double() + inc, rtol=1e-5, atol=1e-6)
        assert (credit[..., mask_id] == 0).all()  # the mask token never earns credit
        # x0 and conf are those of the fused logits l + alpha*log1p(C), the mask token excluded.
        fused = logits.double() + alpha * torch.log1p(credit.double())
        fused[..., mask_id] = -math.inf
        probs = torch.softmax(fused, -1)
        assert (x0 != mask_id).all()
        assert torch.allclose(conf.double(), probs.gather(-1, x0[..., None]).squeeze(-1),
                              rtol=1e-4, atol=1e-5)
        assert torch.allclose(conf.double(), probs.amax(-1), rtol=1e-4, atol=1e-5)
        # Some positions get committed: they stop earning credit from now on.
        masked = masked & (torch.rand(batch, block, generator=g) < 0.7)


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
            was_masked = state.x[:, lo:lo + block_length] == MASK
            step()
            steps += 1
            after = _dense_credit(state, VOCAB)
            assert (after >= 0).all()
            assert (after[..., MASK] == 0).all()
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
# Batching, seeds, sync independence
# ------------------------------------------------------------------------------------------------

@given(seed=seeds, lengths=st.lists(st.integers(1, 5), min_size=1, max_size=2),
       kw=decode_options())
def test_left_padded_batch_equals_each_prompt_alone(seed, lengths, kw):
    model = toy(seed)
    g = torch.Generator().manual_seed(seed)
    lengths = lengths + [6]  # the longest row: every other row is padded
    width = max(lengths)
    rows, mask, alone = [], [], []
    for n in lengths:
        prompt = torch.randint(0, MASK, (1, n), generator=g)
        pad = torch.randint(0, VOCAB, (1, width - n), generator=g)  # pad ids must not matter
        rows.append(torch.cat([pad, prompt], 1))
        mask.append(torch.cat([torch.zeros(1, width - n), torch.ones(1, n)], 1).long())
        alone.append(cc.generate_reference(model, prompt, **kw))
    together = cc.generate_reference(model, torch.cat(rows), torch.cat(mask), **kw)
    assert torch.equal(together.sequences[:, :width], torch.cat(rows))
    for row, single in enumerate(alone):
        assert torch.equal(together.generated[row], single.generated[0]), row
    if kw["strategy"] == "llada":
        assert together.nfe == llada_steps(kw) == alone[0].nfe
    else:  # the batch waits for its slowest row in every block
        assert together.nfe >= max(a.nfe for a in alone)


@given(seed=seeds, other=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 5),
       geometry=st.sampled_from(GEOMETRIES), temperature=st.floats(0.1, 2.0),
       remasking=st.sampled_from(["random", "low_confidence"]), cfg_scale=st.sampled_from([0.0, 1.0]))
def test_same_seed_same_sample(seed, other, batch, prompt_len, geometry, temperature, remasking,
                               cfg_scale):
    model, ids = toy(seed), prompts(seed, batch, prompt_len)
    kw = dict(strategy="llada", gen_length=geometry[0], block_length=geometry[1],
              temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, seed=seed,
              trace=True)
    a = cc.generate_reference(model, ids, **kw)
    torch.manual_seed(other)  # the global RNG state before the call must not matter
    torch.rand(7)
    b = cc.generate_reference(model, ids, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert a.nfe == b.nfe
    assert [t.committed for t in a.trace] == [t.committed for t in b.trace]


def test_different_seeds_give_different_samples():
    model, ids = ContextMixModel(sharpness=0.3), prompts(0, 2, 3)
    kw = dict(strategy="llada", gen_length=16, block_length=8, temperature=1.0,
              remasking="random")
    outs = [cc.generate_reference(model, ids, seed=s, **kw).sequences for s in (1, 2, 3)]
    assert not torch.equal(outs[0], outs[1]) or not torch.equal(outs[0], outs[2])
    # Random remasking commits in a random order: the traces differ too.
    orders = [[t.committed for t in cc.generate_reference(model, ids, seed=s, trace=True, **kw).trace]
              for s in (1, 2)]
    assert orders[0] != orders[1]


@given(seed=seeds, batch=st.integers(1, 3), prompt_len=st.integers(1, 5), kw=decode_options(),
       sync_every=st.integers(2, 5), sample=st.booleans())
def test_sync_every_does_not_change_tokens_or_nfe(seed, batch, prompt_len, kw, sync_every, sample):
    model, ids = toy(seed), prompts(seed, batch, prompt_len)
    if kw["strategy"] == "llada" and sample:
        kw.update(temperature=0.8, remasking="random")
    results = []
    for every in (1, 3, sync_every):
        setup = setup_generation(model, ids, None, DecodeConfig(seed=seed, **kw))
        with torch.no_grad():
            results.append(run_generation(setup.step_function(), setup.state,
                                          max_steps=setup.strategy.max_steps(),
                                          sync_every=every, trace=True))
    first = results[0]
    assert first.steps_run == first.nfe
    for other, every in zip(results[1:], (3, sync_every), strict=True):
        assert torch.equal(first.sequences, other.sequences)
        assert other.nfe == first.nfe
        assert other.steps_run >= other.nfe and other.steps_run % every == 0
        assert other.steps_run < other.nfe + every
        assert [t.committed for t in other.trace] == [t.committed for t in first.trace]
    assert not (first.sequences[:, prompt_len:] == MASK).any()
