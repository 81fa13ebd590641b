"""Pluggable decoding strategies: what a denoising step proposes and which proposals it commits.

The generation loop (`loop.py`) and the denoising step (`step.py`) are shared by every strategy
and every execution mode (eager reference, compiled, CUDA graph). A strategy only says:
- `allocate(state, vocab_size)`: its static buffers;
- `propose(block_logits, masked, state)`: a token x0 and a confidence for each block position;
- `select(conf, masked, state)`: which masked positions to commit;
- `next_block(state, first_masked_block_from)`: where decoding goes after this step.

Everything here is sync-free (no `.item()`, `nonzero` or data-dependent Python branches), so a
step traces into one graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import DecodeConfig
from ..ops.credit_step_reference import credit_step_dense_eager, credit_step_sparse_eager, empty_sparse_state
from ..ops.logits import masked_vocab_logits, top1_and_prob
from .state import DecodeState

NEG_INF = float("-inf")
# Commit threshold slack of CreditDecoding / Fast-dLLM: the best position always passes.
BEST_SLACK = 1e-5

FirstMaskedFrom = Callable[[torch.Tensor], torch.Tensor]


class Strategy:
    name = "base"

    def __init__(self, config: DecodeConfig, mask_id: int):
        self.config = config
        self.mask_id = mask_id

    def allocate(self, state: DecodeState, vocab_size: int) -> None:
        """Create the strategy's static buffers in `state.buffers`."""

    def propose(self, block_logits: torch.Tensor, masked: torch.Tensor, state: DecodeState):
        raise NotImplementedError

    def select(self, conf: torch.Tensor, masked: torch.Tensor, state: DecodeState) -> torch.Tensor:
        raise NotImplementedError

    def next_block(self, state: DecodeState, first_masked_block_from: FirstMaskedFrom) -> torch.Tensor:
        """Stay on a block while it has masks (threshold-style strategies)."""
        return first_masked_block_from(state.block_index)

    def max_steps(self) -> int:
        """An upper bound on the steps a generation can take (the loop's guard against hangs)."""
        return self.config.gen_length


def threshold_commit_sync_free(conf: torch.Tensor, masked: torch.Tensor, tau: float) -> torch.Tensor:
    """Commit masked positions with `conf >= min(max(conf) - 1e-5, tau)`: at least the best one."""
    conf = torch.where(masked, conf, NEG_INF)
    best = conf.amax(-1, keepdim=True)
    threshold = torch.clamp(best - BEST_SLACK, max=tau)
    return masked & (conf >= threshold)


def check_logit_width(logit_columns: int, credit_columns: int) -> None:
    """The dense credit buffer, sized from the model's config, must match its logits. (Shapes are
    static when traced, so this costs a compiled step nothing; the optimized model checks before
    compiling, since an error raised while tracing reaches the user wrapped by dynamo.)"""
    if logit_columns != credit_columns:
        raise ValueError(
            f"the model returns {logit_columns} logit columns but its config gives a vocabulary "
            f"of {credit_columns} (`embedding_size` or `vocab_size`), which sizes the dense "
            f"credit: set the config's vocab_size to {logit_columns}, or use "
            f"credit_layout='sparse'"
        )


class ThresholdStrategy(Strategy):
    """Fast-dLLM parallel decoding: greedy proposals, confidence-threshold commits."""

    name = "threshold"

    def propose(self, block_logits, masked, state):
        top, prob = top1_and_prob(masked_vocab_logits(block_logits, self.mask_id))
        return top, prob

    def select(self, conf, masked, state):
        return threshold_commit_sync_free(conf, masked, self.config.tau)


class FactorStrategy(ThresholdStrategy):
    """Fast-dLLM's factor-based parallel decoding: greedy proposals, a commit count per step set
    by the sorted confidences (Wu et al. 2025, "Fast-dLLM", the factor rule of its parallel
    decoding; `get_transfer_index_dynamic` in its LLaDA code)."""

    name = "factor"

    def select(self, conf, masked, state):
        return factor_commit_sync_free(conf, masked, self.config.factor)


def factor_commit_sync_free(conf: torch.Tensor, masked: torch.Tensor, factor: float) -> torch.Tensor:
    """Commit the n most confident masked positions of each row: with their confidences sorted,
    c_1 >= c_2 >= ... >= c_N, n is the longest prefix with c_i >= 1 - factor / (i + 1) for each
    i >= 2 (the best always commits; ties ranked by position).

    Fast-dLLM's loop also commits all N when only the last one fails its bound; that is left out
    here, so n is the rule's: the tokens differ from Fast-dLLM's in that case alone.
    """
    conf = torch.where(masked, conf, NEG_INF)
    ranks = rank_descending_sync_free(conf)
    # Each position against the bound of its own rank: the bounds rise with the rank as the
    # confidences fall, so the positions that pass are always a prefix of the ranking.
    bound = torch.where(ranks == 0, NEG_INF, 1 - factor / (ranks + 2))
    return masked & (conf >= bound)


class LLaDA2Strategy(ThresholdStrategy):
    """LLaDA2's own sampler (the official `generate()`): greedy proposals at temperature 0, else
    sampled (`sample_top_k_top_p`); a step commits the masked positions whose confidence
    exceeds `tau` (strictly), or, when fewer than the step's count, that many of the most
    confident (ties by position). The counts spread the block over `steps` steps per block
    (`block_length // steps`, one more for the first `block_length % steps`), as the official
    `_get_num_transfer_tokens`; a block whose prompt tail leaves fewer masks finishes sooner.
    The baseline the speedups are quoted against.

    As every strategy here, the mask token is no candidate (confidences renormalised without
    it); the official sampler lets it compete. The same whenever p(mask) is negligible, as in a
    trained model (`models.llada2_generate` replays the official rules, either way)."""

    name = "llada2"

    def propose(self, block_logits, masked, state):
        cfg = self.config
        logits = masked_vocab_logits(block_logits, self.mask_id)
        if cfg.temperature == 0:
            return top1_and_prob(logits)
        return sample_top_k_top_p(logits, cfg.temperature, cfg.top_k, cfg.top_p)

    def select(self, conf, masked, state):
        return llada2_commit_sync_free(conf, masked, self.config.tau, state.block_length,
                                       self.config.llada2_steps,
                                       state.step_in_block)


def top_k_top_p_filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """LLaDA2's sampling filters (the official `_top_k_logits`, then `_top_p_logits`), -inf for
    the tokens left out: those below the k-th largest logit (ties with it kept); then, in order
    of probability, every token after the first whose cumulative probability exceeds `top_p`
    (the most probable always kept; ties ordered by index). None (and top_p 1) filters nothing."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        # Out when the probability before it already exceeds top_p (the official shifted mask).
        before = torch.cat([torch.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], -1)
        logits = logits.masked_fill(torch.zeros_like(before, dtype=torch.bool).scatter(
            -1, order, before > top_p), NEG_INF)
    return logits


def sample_top_k_top_p(logits: torch.Tensor, temperature: float, top_k: int | None,
                       top_p: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2's sampling (`_sample_with_temperature_topk_topp`): a token drawn from the softmax
    of `logits / temperature` after `top_k_top_p_filter`, and its probability there (the
    confidence the commit rule reads). Drawn by the Gumbel-max trick in float64
    (`add_gumbel_noise`): sync-free, where the official torch.multinomial is not; the same
    distribution, other draws for a seed."""
    logits = top_k_top_p_filter(logits / temperature, top_k, top_p)
    x0 = add_gumbel_noise(logits, 1.0).argmax(-1)
    return x0, torch.softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def llada2_commit_sync_free(conf: torch.Tensor, masked: torch.Tensor, tau: float,
                            block_length: int, steps: int, step: torch.Tensor) -> torch.Tensor:
    """LLaDA2's commit rule at `step` of a block: the masked positions with `conf > tau` when at
    least the schedule's count, else that many of the most confident (all, where fewer remain)."""
    count = block_length // steps + (step < block_length % steps).long()
    conf = torch.where(masked, conf, NEG_INF)
    above = masked & (conf > tau)
    enough = above.sum(-1, keepdim=True) >= count
    most_confident = masked & (rank_descending_sync_free(conf) < count)
    return torch.where(enough, above, most_confident)


class CreditStrategy(ThresholdStrategy):
    """CreditDecoding: the threshold commit on logits fused with trace credits.

    The one place that decides between the fused op and the eager chain: the reference runs the
    eager chain. On the fast path (`optimized`) the dense layout runs it too, and the
    credit-fusion FX pass rewrites it into the fused op when compiled; the sparse layout's slot
    bookkeeping has no eager pattern worth matching, so it calls the op directly. Which op
    (Triton or plain torch) is `ops.credit_step.dispatch_op`'s choice, by device.
    """

    name = "credit"

    def __init__(self, config: DecodeConfig, mask_id: int, optimized: bool = False):
        super().__init__(config, mask_id)
        self.use_op = optimized and config.credit_layout == "sparse"

    def allocate(self, state, vocab_size):
        batch, block = state.batch_size, state.block_length
        if self.config.credit_layout == "dense":
            state.buffers["credit"] = torch.zeros(
                batch, block, vocab_size, dtype=torch.float32, device=state.device
            )
        else:
            ids, credit = empty_sparse_state(batch, block, self.config.num_credit_slots, state.device)
            state.buffers["slot_ids"] = ids
            state.buffers["slot_credit"] = credit

    def propose(self, block_logits, masked, state):
        cfg = self.config
        first_step = state.step_in_block == 0
        args = (masked, first_step, cfg.alpha, cfg.beta, cfg.gamma, self.mask_id)
        if cfg.credit_layout == "dense":
            check_logit_width(block_logits.shape[-1], state.buffers["credit"].shape[-1])
            fn = _ops().credit_step_dense if self.use_op else credit_step_dense_eager
            return fn(block_logits, state.buffers["credit"], *args)
        fn = _ops().credit_step_sparse if self.use_op else credit_step_sparse_eager
        return fn(block_logits, state.buffers["slot_ids"], state.buffers["slot_credit"], *args)


class LLaDAStrategy(Strategy):
    """LLaDA's original sampler: a fixed number of tokens per step, low-confidence or random
    remasking, Gumbel noise in float64 when temperature > 0 (Nie et al., 2025, `generate.py`).

    Where it differs from the official code, deliberately: the mask token is out of the
    vocabulary, so confidences are p / (1 - p(mask)) and a position whose argmax is the mask
    takes its next-best token (the official code commits the mask, leaving it masked); the same
    as the official code whenever p(mask) is negligible, as in a trained model. Random draws
    (Gumbel noise, random remasking) cover the current block only, not the whole sequence, so a
    seed draws other numbers than the official code does, from the same distribution. The
    official options `logits_eos_inf` and `confidence_eos_eot_inf` are `suppress_tokens` (every
    strategy, applied by the step) and `commit_last_tokens` (here) with the ids given.
    """

    name = "llada"

    def allocate(self, state, vocab_size):
        state.buffers["block_mask_count"] = torch.zeros(
            state.batch_size, dtype=torch.long, device=state.device
        )

    def propose(self, block_logits, masked, state):
        cfg = self.config
        logits = masked_vocab_logits(block_logits, self.mask_id)
        x0 = add_gumbel_noise(logits, cfg.temperature).argmax(-1)
        if cfg.remasking == "low_confidence":
            if cfg.commit_last_tokens is not None:  # their proposals' confidence: 0
                logits = without_tokens_sync_free(logits, cfg.commit_last_tokens)
            conf = torch.softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        else:
            conf = torch.rand(x0.shape, device=x0.device)
        return x0, conf

    def select(self, conf, masked, state):
        first_step = state.step_in_block == 0
        counts = state.buffers["block_mask_count"]
        counts.copy_(torch.where(first_step, masked.sum(-1), counts))
        k = num_transfer_tokens_sync_free(counts, self.config.steps_per_block, state.step_in_block)
        conf = torch.where(masked, conf, NEG_INF)
        return masked & (rank_descending_sync_free(conf) < k.unsqueeze(-1))

    def next_block(self, state, first_masked_block_from):
        leave = state.step_in_block + 1 >= self.config.steps_per_block
        return torch.where(leave, first_masked_block_from(state.block_index + 1), state.block_index)

    def max_steps(self) -> int:
        return self.config.total_steps


class DreamStrategy(LLaDAStrategy):
    """Dream's own samplers (`diffusion_generate` with alg "maskgit_plus", "topk_margin" or
    "entropy"): LLaDA's fixed steps per block, but a step from time t to s of Dream's linear
    schedule commits int(n * (1 - s / t)) of a row's n masked positions (the last step all),
    the most confident by `dream_alg`, or with `dream_alg_temp` > 0 a draw weighted by their
    softmax. Proposals are greedy, or sampled after Dream's `top_p` then `top_k` filters.

    Dream decodes the whole generation as one block: block_length=gen_length gives its tokens
    (tested against its code). As every strategy here, the mask token is no candidate (Dream's
    lets it compete); random draws (temperature, alg_temp) are the official distributions, not
    its draws for a seed."""

    name = "dream"

    def allocate(self, state, vocab_size):
        cfg = self.config
        state.buffers["dream_fractions"] = dream_commit_fractions(
            cfg.steps_per_block, cfg.dream_eps).to(state.device)

    def propose(self, block_logits, masked, state):
        cfg = self.config
        logits = masked_vocab_logits(block_logits, self.mask_id)
        if cfg.temperature > 0:
            logits = logits / cfg.temperature
        logits = top_k_top_p_filter(top_k_top_p_filter(logits, None, cfg.top_p), cfg.top_k, None)
        probs = torch.softmax(logits, -1)
        if cfg.temperature > 0:
            x0 = add_gumbel_noise(logits, 1.0).argmax(-1)
            top1 = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        else:
            top1, x0 = probs.max(-1)
        return x0, dream_confidence(probs, top1, cfg.dream_alg)

    def select(self, conf, masked, state):
        cfg = self.config
        step = state.step_in_block.clamp(max=cfg.steps_per_block - 1)
        fraction = state.buffers["dream_fractions"].index_select(0, step.view(1))
        count = (masked.sum(-1, keepdim=True).float() * fraction).long()
        conf = torch.where(masked, conf, NEG_INF)
        if cfg.dream_alg_temp:  # Gumbel-top-k: the official multinomial draw without replacement
            conf = add_gumbel_noise(conf / cfg.dream_alg_temp, 1.0)
        return masked & (rank_descending_sync_free(conf) < count)


def dream_commit_fractions(steps: int, eps: float) -> torch.Tensor:
    """[steps] float32: the share of the masked positions Dream commits at each step of a block,
    1 - s / t over `linspace(1, eps, steps + 1)`, computed in float32 on the CPU as its code does
    (the count, int(n * share), must round as there); 1 at the last step."""
    times = torch.linspace(1, eps, steps + 1, dtype=torch.float32)
    fractions = 1 - times[1:] / times[:-1]
    fractions[-1] = 1.0
    return fractions


def dream_confidence(probs: torch.Tensor, top1: torch.Tensor, alg: str) -> torch.Tensor:
    """Dream's confidence of a proposal from its position's probabilities: "maskgit_plus" the
    proposal's probability `top1`, "topk_margin" the top-1 minus top-2 probability, "entropy"
    the negative entropy (with Dream's 1e-10 inside the logarithm)."""
    if alg == "maskgit_plus":
        return top1
    if alg == "topk_margin":
        best = probs.topk(2, dim=-1).values
        return best[..., 0] - best[..., 1]
    return (probs * torch.log(probs + 1e-10)).sum(-1)


def is_any_of_sync_free(values: torch.Tensor, token_ids: tuple[int, ...]) -> torch.Tensor:
    """values == any of `token_ids`, compared with Python ints: no host-to-device copy of the
    ids, which a CUDA graph could not capture."""
    hit = values == token_ids[0]
    for token_id in token_ids[1:]:
        hit = hit | (values == token_id)
    return hit


def without_tokens_sync_free(logits: torch.Tensor, token_ids: tuple[int, ...]) -> torch.Tensor:
    """`logits` with the columns of `token_ids` at -inf (as the mask token's column): a softmax
    leaves them out and an argmax never picks them."""
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    return logits.masked_fill(is_any_of_sync_free(vocab, token_ids), NEG_INF)


def add_gumbel_noise(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Gumbel-max sampling as LLaDA does it, in float64, taken in log space.

    LLaDA computes `exp(l) / (-log u) ** T`; its logarithm `l - T * log(-log u)` has the same
    argmax without overflow (exp of l > 709) or 0/0 (an excluded token's exp(-inf) = 0 divided by
    a noise term that underflows to 0, which made the mask token win). Low-precision Gumbel noise
    lowers the quality of masked diffusion models, hence float64.
    """
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    return logits - temperature * torch.log(-torch.log(noise))


def num_transfer_tokens_sync_free(mask_count: torch.Tensor, steps: int, step: torch.Tensor) -> torch.Tensor:
    """Tokens to commit at `step` of a block: LLaDA's `get_num_transfer_tokens`, one step at a
    time (`mask_count // steps`, plus one for the first `mask_count % steps` steps)."""
    return mask_count // steps + (step < mask_count % steps).long()


def rank_descending_sync_free(values: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last dim in descending order (0 = largest; ties by index)."""
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return ranks.scatter_(-1, order, positions)


def make_strategy(config: DecodeConfig, mask_id: int, optimized: bool = False) -> Strategy:
    if config.strategy == "credit":
        return CreditStrategy(config, mask_id, optimized=optimized)
    if config.strategy == "threshold":
        return ThresholdStrategy(config, mask_id)
    if config.strategy == "factor":
        return FactorStrategy(config, mask_id)
    if config.strategy == "llada2":
        return LLaDA2Strategy(config, mask_id)
    if config.strategy == "dream":
        return DreamStrategy(config, mask_id)
    return LLaDAStrategy(config, mask_id)


def _ops():
    from .. import ops

    return ops
