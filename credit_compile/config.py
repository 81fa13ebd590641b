"""Decoding configuration: one validated dataclass, every field documented.

Every path (eager reference, compiled step, CUDA-graph runner) reads the same `DecodeConfig`, so a
value that is wrong is rejected once, here, with a message that names the fix.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["credit", "threshold", "factor", "llada", "llada2", "dream"]
DreamAlg = Literal["maskgit_plus", "topk_margin", "entropy"]
Remasking = Literal["low_confidence", "random"]
CreditLayout = Literal["dense", "sparse"]
CudaGraphs = Literal["auto", "on", "off"]
OnCompileError = Literal["raise", "eager"]
KVCache = Literal["none", "prompt", "dual", "block"]

STRATEGIES = ("credit", "threshold", "factor", "llada", "llada2", "dream")
# Strategies that take `total_steps` forwards, whatever the confidences.
FIXED_STEPS = ("llada", "dream")
DREAM_ALGS = ("maskgit_plus", "topk_margin", "entropy")
REMASKINGS = ("low_confidence", "random")
CREDIT_LAYOUTS = ("dense", "sparse")
CUDA_GRAPH_MODES = ("auto", "on", "off")
ON_COMPILE_ERROR = ("raise", "eager")
KV_CACHES = ("none", "prompt", "dual", "block")
DTYPES = (None, "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DecodeConfig:
    """How `generate()` decodes a canvas of `gen_length` mask tokens.

    Attributes:
        strategy: "credit" (CreditDecoding: trace credits fused into the logits, threshold commits),
            "threshold" (Fast-dLLM parallel decoding: commit every masked token whose confidence is
            at least `tau`, at least the best one each step), "factor" (Fast-dLLM's factor-based
            parallel decoding: commit the n most confident masked tokens, n set by `factor`),
            "llada" (LLaDA's original sampler: a fixed number of tokens per step, low-confidence
            or random remasking), "llada2" (LLaDA2's own sampler, its `generate()`: commit the
            masked tokens whose confidence exceeds `tau`, at least a count per step that spreads
            the block over `steps` steps; greedy, or sampled with `temperature`, `top_k` and
            `top_p`; the LLaDA2 baseline) or "dream" (Dream's own `diffusion_generate` samplers:
            `steps` steps per block, each committing the masked tokens its time schedule counts,
            the most confident by `dream_alg`; docs/dream.md).
        gen_length: number of tokens to generate (the canvas after the prompt).
        block_length: the canvas is decoded left to right in blocks of this many positions;
            must divide `gen_length`, except for a block-causal model (LLaDA2), whose blocks
            follow positions from 0 and whose last block runs past `gen_length`.
        steps: total denoising steps of the "llada" and "dream" strategies; there it must be a
            multiple of the number of blocks (each block takes its share). None means
            `gen_length` (LLaDA: one token per step). "llada2" reads it as the steps per block
            of LLaDA2's `generate()` (None: `block_length`, at least one token a step; the
            official `minimal_topk` caps it at gen_length // minimal_topk: pass it capped).
            The others stop a block as soon as it is filled: a call setting it for them is
            warned, as for every option a strategy does not read (`READ_BY`), unless a base
            config set it for "llada".
        alpha: credit fusion strength, fused logits are `l + alpha * log1p(C)`; >= 0. alpha = 0
            is plain threshold decoding.
        beta: credit decay per step after the block's first, in [0, 1].
        gamma: exponent on the top-1 probability added as credit, > 0.
        tau: confidence threshold of "credit"/"threshold"/"llada2", in (0, 1] (LLaDA2's
            `generate()` uses 0.95).
        factor: the "factor" strategy's parallelism, > 0: with the block's masked confidences
            sorted, c_1 >= c_2 >= ..., a step commits the n most confident, n the longest prefix
            with c_i >= 1 - factor / (i + 1) for each i >= 2 (the best always commits; Fast-dLLM,
            Wu et al. 2025). Larger commits more per step; Fast-dLLM's scripts use 1.
        dream_alg: the "dream" strategy's confidence, Dream's `alg`: "maskgit_plus" (the top-1
            probability), "topk_margin" (top-1 minus top-2 probability) or "entropy" (the
            negative entropy of the token distribution; Dream's README uses it). A step commits
            the most confident of the count its schedule gives.
        dream_eps: the "dream" strategy's `eps`: the time schedule runs from 1 to eps over a
            block's steps (`linspace(1, eps, steps + 1)`), and a step from t to s commits
            int(n * (1 - s / t)) of the n masked tokens, the last step all of them. In [0, 1).
        dream_alg_temp: the "dream" strategy's `alg_temp`: None or 0 commits the most confident;
            > 0 draws which to commit, without replacement, from the softmax of the confidences
            divided by it (drawn sync-free by the Gumbel-top-k trick; the official code calls
            torch.multinomial, so a seed draws others, from the same distribution).
        temperature: sampling temperature of the "llada", "llada2" and "dream" samplers; 0 is
            greedy.
            "llada" adds Gumbel noise in float64, as the original. "llada2" samples as LLaDA2's
            `generate()` does: from the softmax of logits / temperature after the `top_k` and
            `top_p` filters, a proposal's confidence being its probability there (drawn
            sync-free by the Gumbel-max trick in float64; the official code calls
            torch.multinomial, so a seed draws other tokens, from the same distribution).
            "dream" samples as Dream's `diffusion_generate` (`top_p`, then `top_k`), the same way.
            "credit", "threshold" and "factor" are greedy only.
        top_k: "llada2" with temperature > 0, and "dream": sample among the k most probable
            tokens (those tied with the k-th too); None keeps all. A positive integer. "llada2"
            at temperature 0 does not read it (the official greedy path ignores it); "dream"
            reads it at any temperature: as in Dream's code, the filter renormalises the
            probabilities its confidences read.
        top_p: "llada2" with temperature > 0, and "dream": nucleus sampling, among the most
            probable tokens up to the first whose cumulative probability exceeds top_p, the
            most probable always; None or 1 keeps all. In (0, 1]. "llada2" applies it after
            `top_k` and not at temperature 0; "dream" before `top_k` and at any temperature, as
            Dream does.
        cfg_scale: classifier-free guidance scale of the "llada" sampler (the unconditional branch
            sees the prompt masked); 0 disables it.
        remasking: "low_confidence" or "random" ("llada" only; the other strategies commit by
            confidence and refuse "random").
        mask_id: the mask token; None takes it from the model's config (`mask_token_id`).
        eos_token_id: end-of-text token for `early_stop`, or several (a tuple: end-of-text and
            end-of-turn, say; the first fills the rest of a finished row); None takes them from
            the model's config, which may list several.
        early_stop: once a row has committed an end-of-text token with no mask before it, fill the
            rest of its canvas with end-of-text and stop decoding it.
        suppress_tokens: token ids never proposed, in every strategy: their logits are -inf at
            every step, as the mask token's (transformers' name). LLaDA's official
            `logits_eos_inf=True` (Appendix B.4 of the paper: an instruction-tuned model
            otherwise ends its answers too early) is suppress_tokens=(126081,) on LLaDA-8B.
            A row cannot end on a suppressed end-of-text token, so `early_stop` with every
            end-of-text id suppressed is refused.
        commit_last_tokens: "llada" with low-confidence remasking only: a proposal of one of
            these ids has confidence 0 (the confidence softmax leaves them out, as it leaves out
            the mask token), so a step commits it only when its count leaves no other choice.
            LLaDA's official `confidence_eos_eot_inf=True` aims at end-of-text 126081 and
            end-of-turn 126348 on LLaDA-8B-Instruct (its code, as written, takes out 126348
            only).
        credit_layout: "sparse" (default) keeps `credit_slots` (token id, credit) pairs per
            position, exact when `credit_slots >= block_length`; "dense" keeps a float32 credit of
            shape [batch, block, vocab] (as dInfer). Sparse is the default by measurement: on an
            H100 its fused op runs 2.6-5.4x faster than the dense one (docs/credit_op.md).
        credit_slots: slots per position of the sparse layout; None means `block_length` (exact).
            Fewer slots evict the smallest credit and are approximate.
        dtype: dtype the optimized model runs in ("float32", "bfloat16", "float16"); None keeps
            the model's.
        compile: run the denoising step through torch.compile with the credit_compile backend.
        compile_layers_once: compile the model's transformer layer once and reuse it for every
            layer (`torch.compiler.nested_compile_region`) instead of tracing and compiling each
            layer of the step: on a 2-core CPU a 32-layer step compiled 2.3x faster on torch 2.13
            and 1.9x on torch 2.11, with the same tokens (docs/performance.md). Inductor no longer
            fuses across layer boundaries (on torch 2.11 the CPU step ran 11% slower); off by
            default until measured on a GPU.
            Applies to this project's LLaDA model when its layers differ in their weights alone
            (no hooks on a layer, no adapter on some); otherwise, and for other models, each
            layer is compiled as before, with a warning.
        on_compile_error: what a step that torch.compile cannot capture as one graph (a model
            whose forward breaks the graph, or a compiler failure) does. "raise" (default):
            `CompileError`, naming the cause and the way out. "eager": one warning naming the
            cause, then that shape's step runs eagerly, with the reference's tokens and without
            the speedup, so a server keeps serving. An exception the model's own code raises
            (bad input) is raised either way.
        kv_cache: "none" runs the model on the whole canvas at every step (exact). The caches
            are approximations: a block's first step runs the whole canvas and keeps every
            layer's keys and values; its later steps run the model on part of the canvas,
            attending to the kept keys and values of the rest (stale by the tokens committed
            since) and to their own, recomputed. "prompt" recomputes the generated region and
            keeps the prompt's: Fast-dLLM's PrefixCache with static shapes (that one recomputes
            from the block's start, a length that changes every block; here the committed
            blocks are recomputed too, so nothing is staler than there). It saves the prompt's
            share of a step, so it pays on long prompts. "dual" is Fast-dLLM's DualCache: the
            block's positions only, against the kept prefix and suffix; the cheapest step, and
            the most kept. Tokens can differ from
            "none" (docs/quality.md measures how much); the eager reference decodes the same
            way, so optimized and reference stay equal. Needs this project's LLaDA, LLaDA-MoE
            or Dream model (others are refused; docs/dream.md: Dream's shifted logits).
            Memory: keys and values of every layer and position, kept per compiled step
            (LLaDA-8B, batch 8, 1056 positions: 4.4 GB in bfloat16).
            "block" is the exact cache of a block-causal model (LLaDA2), whose finished blocks
            never see a later one: the call's first step runs the whole canvas (the prompt's
            prefill), every other step the current block alone against the cache, and a
            block's first step also the previous block, writing its final keys and values. The
            tokens are those of "none" (float rounding apart); only for LLaDA2 models, which
            refuse "prompt" and "dual".
            With random draws (`draws_random`: "llada" with temperature > 0 or random
            remasking, "llada2" with temperature > 0) completion is checked after every step
            whatever `sync_every` says:
            a block may end inside a window of unchecked steps, and the idle steps after it
            would draw numbers the reference does not.
        kv_cache_refresh: with a KV cache, also refresh it (a full step that stores it anew)
            every this many steps of a block: at the block's steps 0, k, 2k, ... None refreshes
            at a block's first step only (Fast-dLLM's schedule). A smaller k is staler by fewer
            commits and costs more full steps; 1 makes every step a full one (the tokens of
            kv_cache="none"). The host places the refreshes, so on CUDA completion is checked
            every gcd(sync_every, k) steps (`host_sync_every`, also the steps per CUDA graph):
            choose k a multiple or a divisor of `sync_every`, or every step is checked (with
            CUDA graphs, a warning says so). k=1 leaves the host nothing to place and keeps
            `sync_every`. Calls differing only in k (other than 1) share one compiled step;
            with CUDA graphs, those whose `host_sync_every` is the same (one graph length). A
            call overriding kv_cache="none" drops the refresh with the cache.
        cuda_graphs: "auto" replays the compiled step as a CUDA graph when on CUDA, "on" requires
            it (an error when impossible, and with compile=False), "off" never uses it.
            `generate(trace=True)`, which reads every step on the host, runs without graphs.
        sync_every: on CUDA the fast path checks completion on the host once every this many
            steps (with CUDA graphs, the steps captured per replay); steps run after completion
            change nothing and are not counted as NFE, but each still costs a forward. On the
            CPU, where a host check costs nothing, completion is checked after every step.
        seed: seeds the global RNG at the start of `generate()` (random remasking, Gumbel noise);
            None leaves the RNG alone.
        prompt_bucket: left-pad every prompt to a multiple of this many tokens (never past the
            model's context), so prompts of nearby lengths share one compiled step and CUDA graph
            instead of compiling one per length. The padding is masked out of attention and
            positions count real tokens only, so the generated tokens are those of the unpadded
            prompt up to float rounding (attention sums over more, masked, columns; tested equal
            in float32 on the trained model); `sequences` omits it. The eager reference pads the
            same way, so optimized and reference stay equal token for token. Needs a model that
            honours `attention_mask` and takes `position_ids` (ours, or a forward with a
            `position_ids` argument); others are refused. None pads nothing.
        batch_bucket: pad the batch with copies of its last prompt to a multiple of this many
            rows, so batches of nearby sizes share one compiled step and CUDA graph; the copies
            are dropped from the output. Rows decode independently, so the tokens are those of
            the unpadded batch up to float rounding, except a sampler's random draws
            (`draws_random`), which depend on the batch size (the reference pads the same way,
            so optimized and reference stay equal). None pads nothing.
    """

    strategy: Strategy = "credit"
    gen_length: int = 128
    block_length: int = 32
    steps: int | None = None
    alpha: float = 0.7
    beta: float = 0.8
    gamma: float = 0.2
    tau: float = 0.9
    factor: float = 1.0
    dream_alg: DreamAlg = "entropy"
    dream_eps: float = 1e-3
    dream_alg_temp: float | None = None
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 0.0
    remasking: Remasking = "low_confidence"
    mask_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    early_stop: bool = False
    suppress_tokens: tuple[int, ...] | None = None
    commit_last_tokens: tuple[int, ...] | None = None
    credit_layout: CreditLayout = "sparse"
    credit_slots: int | None = None
    dtype: str | None = None
    compile: bool = True
    compile_layers_once: bool = False
    on_compile_error: OnCompileError = "raise"
    kv_cache: KVCache = "none"
    kv_cache_refresh: int | None = None
    cuda_graphs: CudaGraphs = "auto"
    sync_every: int = 4
    seed: int | None = None
    prompt_bucket: int | None = None
    batch_bucket: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, list):  # hashable, as the step cache keys need
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        for name in _TOKEN_SET_FIELDS:  # a tuple, hashable; one id as a tuple of one
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, name, (value,))
        # numpy scalars (a sweep's np.arange, np.float32 from a config file) as Python numbers:
        # they would otherwise fail the int checks with a message that reads as nonsense.
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, tuple):
                object.__setattr__(self, name, tuple(_as_python_int(v) for v in value))
            else:
                object.__setattr__(self, name, _as_python_int(value))
        for name in _REAL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
                object.__setattr__(self, name, float(value))
        for name in ("early_stop", "compile", "compile_layers_once"):
            object.__setattr__(self, name, _as_python_bool(getattr(self, name)))
        self.validate()

    def replace(self, **overrides) -> DecodeConfig:
        """A copy with `overrides` applied and validated; unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            hints = "".join(f"; for {name!r} use {_HF_NAMES[name]!r}" for name in unknown
                            if name in _HF_NAMES)
            raise ValueError(
                f"unknown decoding option(s) {unknown}{hints}; valid options are {sorted(known)}"
            )
        return dataclasses.replace(self, **overrides)

    @property
    def num_blocks(self) -> int:
        """Blocks covering gen_length (a last partial one counted: a block-causal model takes
        any gen_length; the others need a multiple of block_length)."""
        return -(-self.gen_length // self.block_length)

    @property
    def total_steps(self) -> int:
        """Denoising steps of the "llada" and "dream" samplers."""
        return self.gen_length if self.steps is None else self.steps

    @property
    def known_steps(self) -> int | None:
        """The forwards a call takes, where known before it runs: `total_steps` for the samplers
        of fixed steps ("llada", "dream"); None for the others, which stop when every token is
        committed (early stop aside)."""
        return self.total_steps if self.strategy in FIXED_STEPS else None

    @property
    def steps_per_block(self) -> int:
        return self.total_steps // self.num_blocks

    @property
    def draws_random(self) -> bool:
        """Whether decoding draws random numbers: the "llada" sampler with temperature > 0 or
        random remasking, the "llada2" sampler with temperature > 0, the "dream" sampler with
        temperature > 0 or dream_alg_temp > 0."""
        if self.strategy == "llada":
            return self.temperature != 0 or self.remasking == "random"
        if self.strategy == "dream":
            return self.temperature != 0 or bool(self.dream_alg_temp)
        return self.strategy == "llada2" and self.temperature != 0

    @property
    def host_sync_every(self) -> int:
        """`sync_every` as the fast path applies it: 1 where idle steps inside a block would
        draw random numbers (a KV cache with a sampler's random draws, `draws_random`), and
        gcd(sync_every, kv_cache_refresh) where the host places refreshes."""
        # A refresh at every step leaves no cached step: none idle, none for the host to place.
        if self.kv_cache == "none" or self.kv_cache_refresh == 1:
            return self.sync_every
        if self.draws_random:
            return 1
        if self.kv_cache_refresh is not None:
            # Windows start at multiples of this within a block, so a refresh always opens one.
            return math.gcd(self.sync_every, self.kv_cache_refresh)
        return self.sync_every

    @property
    def llada2_steps(self) -> int:
        """Steps per block of the "llada2" sampler."""
        return self.block_length if self.steps is None else self.steps

    @property
    def num_credit_slots(self) -> int:
        return self.block_length if self.credit_slots is None else self.credit_slots

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.strategy in STRATEGIES, f"strategy={self.strategy!r}: use one of {STRATEGIES}")
        for name in ("gen_length", "block_length", "sync_every"):
            v = getattr(self, name)
            need(_is_count(v) and v > 0, f"{name}={v!r}: use a positive integer")
        if self.steps is not None:
            need(_is_count(self.steps) and self.steps > 0,
                 f"steps={self.steps!r}: use a positive integer or None")
            # Only "llada" and "dream" read it so: a base config's steps must not break a
            # per-call strategy.
            need(self.strategy not in FIXED_STEPS or self.steps % self.num_blocks == 0,
                 f"steps={self.steps} is not divisible by the number of blocks "
                 f"({self.num_blocks} = gen_length/block_length): use a multiple of "
                 f"{self.num_blocks}, for example "
                 f"{max(1, round(self.steps / self.num_blocks)) * self.num_blocks}")
        for name in _REAL_FIELDS:
            v = getattr(self, name)
            need(not _is_real(v) or abs(v) <= _FLOAT32_MAX,
                 f"{name}={v!r} overflows float32, in which the logits are computed: use a "
                 f"value below 3.4e38")
        need(_is_real(self.alpha) and self.alpha >= 0,
             f"alpha={self.alpha!r}: use alpha >= 0 (0 is plain threshold decoding)")
        need(_is_real(self.beta) and 0.0 <= self.beta <= 1.0,
             f"beta={self.beta!r}: use a decay in [0, 1]")
        need(_is_real(self.gamma) and self.gamma > 0,
             f"gamma={self.gamma!r}: use gamma > 0")
        need(_is_real(self.tau) and 0.0 < self.tau <= 1.0,
             f"tau={self.tau!r}: use a threshold in (0, 1]")
        need(_is_real(self.factor) and self.factor > 0,
             f"factor={self.factor!r}: use factor > 0 (Fast-dLLM's scripts use 1)")
        need(self.dream_alg in DREAM_ALGS,
             f"dream_alg={self.dream_alg!r}: use one of {DREAM_ALGS}"
             + (" (Dream's 'origin', each mask committed by its own random draw, is not "
                "supported; 'maskgit_plus' is the closest)" if self.dream_alg == "origin" else ""))
        need(_is_real(self.dream_eps) and 0 <= self.dream_eps < 1,
             f"dream_eps={self.dream_eps!r}: use eps in [0, 1) (Dream's default is 1e-3)")
        need(self.dream_alg_temp is None or (_is_real(self.dream_alg_temp)
                                              and self.dream_alg_temp >= 0),
             f"dream_alg_temp={self.dream_alg_temp!r}: use alg_temp >= 0, or None (0 and None "
             f"commit the most confident)")
        need(_is_real(self.temperature) and self.temperature >= 0,
             f"temperature={self.temperature!r}: use temperature >= 0")
        need(self.top_k is None or (_is_count(self.top_k) and self.top_k > 0),
             f"top_k={self.top_k!r}: use a positive number of tokens or None (no top-k filter)")
        need(self.top_p is None or (_is_real(self.top_p) and 0 < self.top_p <= 1),
             f"top_p={self.top_p!r}: use a probability in (0, 1] or None (no nucleus filter)")
        need(_is_real(self.cfg_scale) and self.cfg_scale >= 0,
             f"cfg_scale={self.cfg_scale!r}: use cfg_scale >= 0")
        need(self.remasking in REMASKINGS,
             f"remasking={self.remasking!r}: use one of {REMASKINGS}")
        if self.strategy not in ("llada", "llada2", "dream"):
            need(self.temperature == 0,
                 f"temperature={self.temperature} with strategy={self.strategy!r}: the credit, "
                 f"threshold and factor strategies are greedy; use temperature=0 or "
                 f"strategy='llada' (or 'llada2' for a LLaDA2 model, 'dream' for Dream's "
                 f"samplers)")
        if self.strategy != "llada":
            # The others commit by confidence: a random order would be silently ignored.
            need(self.remasking == "low_confidence",
                 f"remasking={self.remasking!r} with strategy={self.strategy!r}: random "
                 f"remasking is implemented for strategy='llada' only; use "
                 f"remasking='low_confidence' or strategy='llada'")
            need(self.cfg_scale == 0,
                 f"cfg_scale={self.cfg_scale} with strategy={self.strategy!r}: classifier-free "
                 f"guidance is implemented for strategy='llada' only; use cfg_scale=0")
        need(self.credit_layout in CREDIT_LAYOUTS,
             f"credit_layout={self.credit_layout!r}: use one of {CREDIT_LAYOUTS}")
        if self.credit_slots is not None:
            need(_is_count(self.credit_slots) and self.credit_slots > 0,
                 f"credit_slots={self.credit_slots!r}: use a positive integer or None (exact)")
        need(self.dtype in DTYPES, f"dtype={self.dtype!r}: use one of {DTYPES}")
        need(self.kv_cache in KV_CACHES,
             f"kv_cache={self.kv_cache!r}: use one of {KV_CACHES}"
             + (" (Fast-dLLM's PrefixCache is 'prompt' here: the same idea with static shapes)"
                if self.kv_cache == "prefix" else ""))
        if self.kv_cache_refresh is not None:
            need(_is_count(self.kv_cache_refresh) and self.kv_cache_refresh > 0,
                 f"kv_cache_refresh={self.kv_cache_refresh!r}: use a positive number of steps "
                 f"or None (refresh at a block's first step only)")
            need(self.kv_cache != "none",
                 f"kv_cache_refresh={self.kv_cache_refresh} with kv_cache='none': there is no "
                 f"cache to refresh; set kv_cache='prompt' or 'dual', or leave it None")
            need(self.kv_cache != "block",
                 f"kv_cache_refresh={self.kv_cache_refresh} with kv_cache='block': the block "
                 f"cache is exact, nothing in it goes stale; leave kv_cache_refresh None")
        need(self.on_compile_error in ON_COMPILE_ERROR,
             f"on_compile_error={self.on_compile_error!r}: use one of {ON_COMPILE_ERROR}")
        need(self.cuda_graphs in CUDA_GRAPH_MODES,
             f"cuda_graphs={self.cuda_graphs!r}: use one of {CUDA_GRAPH_MODES}")
        for name in ("early_stop", "compile", "compile_layers_once"):
            need(isinstance(getattr(self, name), bool),
                 f"{name}={getattr(self, name)!r}: use True or False")
        need(self.compile or self.cuda_graphs != "on",
             "cuda_graphs='on' with compile=False: a CUDA graph replays the compiled step; set "
             "compile=True, or cuda_graphs='auto' (graphs when compiled on CUDA) or 'off'")
        if self.prompt_bucket is not None:
            need(_is_count(self.prompt_bucket) and self.prompt_bucket > 0,
                 f"prompt_bucket={self.prompt_bucket!r}: use a positive number of tokens (for "
                 f"example 64) or None (no padding)")
        if self.batch_bucket is not None:
            need(_is_count(self.batch_bucket) and self.batch_bucket > 0,
                 f"batch_bucket={self.batch_bucket!r}: use a positive number of rows (for "
                 f"example 8) or None (no padding)")
        for name in ("mask_id", "seed"):
            v = getattr(self, name)
            need(v is None or (_is_count(v) and v >= 0),
                 f"{name}={v!r}: use a non-negative integer or None")
        # torch.manual_seed takes 64 bits and would fail with "Overflow when unpacking long long".
        need(not _is_count(self.seed) or self.seed < 2**64,
             f"seed={self.seed!r} does not fit torch's 64-bit seed: use a seed below 2**64 "
             f"(for example seed % 2**64)")
        eos = self.eos_token_id
        eos_ids = eos if isinstance(eos, tuple) and eos else (eos,)
        need(eos is None or all(_is_count(v) and v >= 0 for v in eos_ids),
             f"eos_token_id={eos!r}: use a non-negative integer, a tuple of them, or None")
        for name in _TOKEN_SET_FIELDS:
            ids = getattr(self, name)
            need(ids is None or (isinstance(ids, tuple) and ids and all(
                _is_count(v) and v >= 0 for v in ids)),
                f"{name}={ids!r}: use a token id, a tuple or list of them (non-negative "
                f"integers), or None")
        if self.commit_last_tokens is not None:
            need(self.strategy == "llada" and self.remasking == "low_confidence",
                 f"commit_last_tokens with strategy={self.strategy!r}, remasking="
                 f"{self.remasking!r}: it orders the commits of the 'llada' sampler's "
                 f"low-confidence remasking; elsewhere use suppress_tokens (never proposed), "
                 f"or leave it None")


# Options only some strategies read, and those strategies (`credit_slots` with the sparse credit
# layout only). Set for another strategy, an option changes nothing: a call is warned
# (validation.warn_unread_options), and the compiled step leaves it out of its key.
READ_BY = {
    "steps": ("llada", "llada2", "dream"),
    "alpha": ("credit",),
    "beta": ("credit",),
    "gamma": ("credit",),
    "credit_layout": ("credit",),
    "credit_slots": ("credit",),
    "tau": ("credit", "threshold", "llada2"),
    "factor": ("factor",),
    "dream_alg": ("dream",),
    "dream_eps": ("dream",),
    "dream_alg_temp": ("dream",),
    "top_k": ("llada2", "dream"),
    "top_p": ("llada2", "dream"),
}


def strategy_reads(config: DecodeConfig, name: str) -> bool:
    """Whether decoding with `config` reads option `name` (those outside READ_BY, always)."""
    if name == "credit_slots" and config.credit_layout != "sparse":
        return False
    if name in ("top_k", "top_p") and config.temperature == 0 and config.strategy == "llada2":
        return False  # its greedy path applies no filter (Dream's still renormalises with it)
    return config.strategy in READ_BY.get(name, STRATEGIES)


def readers_of(name: str) -> str:
    """Who reads option `name`, as messages say it: "'credit', 'factor' or 'threshold'", with the
    condition `strategy_reads` adds ("'llada2' with temperature > 0")."""
    if name in ("top_k", "top_p"):
        return "'llada2' with temperature > 0, or 'dream'"
    names = [repr(s) for s in READ_BY[name]]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return listed + (" with credit_layout='sparse'" if name == "credit_slots" else "")


def unread_options(config: DecodeConfig) -> tuple[str, ...]:
    """The options `config` sets away from their defaults that its strategy does not read."""
    return tuple(name for name in READ_BY if not strategy_reads(config, name)
                 and getattr(config, name) != getattr(_DEFAULTS, name))


def without_unread_options(config: DecodeConfig) -> DecodeConfig:
    """`config` with the options its strategy does not read at their defaults (it decodes the
    same)."""
    return dataclasses.replace(config, **{name: getattr(_DEFAULTS, name) for name in READ_BY
                                          if not strategy_reads(config, name)})


# Names users bring along from transformers' generate() and from Fast-dLLM's and dInfer's
# generate functions and flags, and ours for the same thing.
_HF_NAMES = {
    "max_new_tokens": "gen_length",
    "max_length": "gen_length",
    "do_sample": "temperature (with strategy='llada', 'llada2' or 'dream')",
    "alg": "dream_alg (with strategy='dream')",
    "alg_temp": "dream_alg_temp (with strategy='dream')",
    "eps": "dream_eps (with strategy='dream')",
    "pad_token_id": "eos_token_id (padding is given by attention_mask)",
    "guidance_scale": "cfg_scale",
    "threshold": "tau (with strategy='threshold', or 'credit')",
    "block_size": "block_length",
    "use_cache": "kv_cache='prompt' (Fast-dLLM's prefix cache)",
    "dual_cache": "kv_cache='dual'",
    "cache": "kv_cache ('prompt' or 'dual')",
}


_TOKEN_SET_FIELDS = ("suppress_tokens", "commit_last_tokens")
_INT_FIELDS = ("gen_length", "block_length", "steps", "sync_every", "credit_slots", "mask_id",
               "seed", "prompt_bucket", "batch_bucket", "eos_token_id", "kv_cache_refresh", "top_k",
               *_TOKEN_SET_FIELDS)
_REAL_FIELDS = ("alpha", "beta", "gamma", "tau", "factor", "dream_eps", "dream_alg_temp",
                "temperature", "top_p", "cfg_scale")
_FLOAT32_MAX = 3.4028234663852886e38


def _as_python_int(value):
    """A numpy (or other) integer scalar as an int; anything else unchanged for validate()."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        return int(value)
    return value


def _as_python_bool(value):
    """A numpy bool as a bool (it is no numbers.Integral, and `is True` checks fail on it)."""
    kind = type(value)
    return bool(value) if kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_") \
        else value


def _is_real(v) -> bool:
    """A finite number (not a bool, NaN or infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v) -> bool:
    """An int that is not a bool (True would silently mean 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def divisor_near(n: int, near: int) -> int:
    """The divisor of `n` nearest `near` (the smaller on a tie): a block_length suggestion."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), d))


_DEFAULTS = DecodeConfig()  # after the helpers its validation calls
