"""Triton kernels of one CreditDecoding step, sparse credit layout (K slots per position).

The math is `credit_step_sparse_eager`'s (`credit_step_reference.py`): the credit C is held in
K slots (id_k, c_k), C = 0 off them; in its notation, per position (row) with raw logits r,
m = r(v*), s = sum_v exp(r(v) - m) (so p* = 1 / s) and f = r + alpha * log1p(C).

Why only the top-1 raw logit and the K slots are needed (alpha >= 0, C >= 0):

* Candidates. Let S be the set of valid slot tokens after the update. For v outside S, C(v) = 0 so
  f(v) = r(v) <= r(v*) <= r(v*) + alpha * log1p(C(v*)) = f(v*). Hence max f is attained in
  {v*} u S. Tie-breaking: let x0 be the FIRST index with f(x0) = max f (torch.argmax). Suppose
  x0 is not in {v*} u S. Then f(x0) = r(x0) = max f >= f(v*) >= r(v*) >= r(x0), so all are equal:
  r(x0) = r(v*) and f(v*) = max f. As v* is the first index of max r and x0 != v*, v* < x0, so
  v* is an earlier index attaining max f: a contradiction. So x0 = the smallest token id among the
  candidates {v*} u S whose fused value equals the max (evaluated with the same float32 formula
  r + alpha * log1p(c) as the reference, so comparisons and ties are the reference's).
* Normaliser. sum_v exp(f(v)) = sum_v exp(r(v)) + sum_{k in S} exp(r(id_k)) ((1 + c_k)^alpha - 1),
  so relative to M = max f:  Z = s exp(m - M) + sum_k [exp(f_k - M) - exp(r_k - M)]  and
  conf = exp(f(x0) - M) / Z = 1 / Z. Every term is <= 1: no overflow for any alpha.

So one streaming pass over V per row (online max / first-argmax / sum-exp in float32, the bf16/fp16
logits read exactly once) and then O(K) work on the slots: K gathers of single logits, the slot
update, and the candidate argmax. In the pass, each thread keeps running statistics of its own
groups of LANE consecutive entries (one 16-byte load each), so the loop has no barrier; the groups
are combined once at the end with the same rule as V splits (below). The next tile's load is
issued before the current one is reduced (software prefetch).

For few rows (B * Lb small) one program per row cannot fill the GPU: the V axis is split over
`nsplit` programs per row that write partial (max, sum-exp, first-argmax) triples, and a tiny
second kernel per row combines them (max of maxima, rescaled sums, smallest index among the
splits attaining the max: chunks are ordered, so that is the global first index) before the slot
work. The split is chosen on the host from (B * Lb, V, number of SMs): static, no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

INT32_BIG = tl.constexpr(2147483647)
INT64_BIG = tl.constexpr(9223372036854775807)


# ----------------------------------------------------------------------------------------------
# shared device helpers (also used by the dense kernels)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _log1p(x):
    """log(1 + x), accurate for small x (Goldberg's trick; no libdevice, so it also runs in the
    interpreter): log1p(x) = x * log(u) / (u - 1) with u = 1 + x rounded, and x where u == 1."""
    u = 1.0 + x
    one = u == 1.0
    den = tl.where(one, 1.0, u - 1.0)
    return tl.where(one, x, tl.log(u) * (x / den))


@triton.jit
def _online_update(x, offs, m, s, idx):
    """Fold one tile x (float32, -inf where invalid) into the running (max, sum exp(. - max),
    first argmax). Strict '>' keeps the earlier index on ties across tiles."""
    tm = tl.max(x, 0)
    nm = tl.maximum(m, tm)
    safe = tl.where(nm == float("-inf"), 0.0, nm)
    s = s * tl.exp(m - safe) + tl.sum(tl.exp(x - safe), 0)
    if tm > m:
        idx = tl.min(tl.where(x == tm, offs, INT32_BIG), 0)
    return nm, s, idx


@triton.jit
def _combine_partials(m_j, s_j, i_j):
    """Combine per-split (max, sum-exp, first argmax) vectors; masked lanes carry (-inf, 0, BIG)."""
    m = tl.max(m_j, 0)
    safe = tl.where(m == float("-inf"), 0.0, m)
    s = tl.sum(s_j * tl.exp(m_j - safe), 0)
    idx = tl.min(tl.where(m_j == m, i_j, INT32_BIG), 0)
    return m, s, idx


@triton.jit
def _lane_update(x, offs, m, s, idx):
    """Fold a [G, LANE] tile into per-group running (max, sum exp(. - max), first argmax): each
    group's LANE entries sit in one thread, so this needs no communication between threads."""
    gmax = tl.max(x, 1)
    nm = tl.maximum(m, gmax)
    safe = tl.where(nm == float("-inf"), 0.0, nm)
    s = s * tl.exp(m - safe) + tl.sum(tl.exp(x - safe[:, None]), 1)
    gi = tl.min(tl.where(x == gmax[:, None], offs, INT32_BIG), 1)
    idx = tl.where(gmax > m, gi, idx)
    return nm, s, idx


@triton.jit
def _raw_stats(lrow, v_lo, v_hi, mask_id, BLOCK_V: tl.constexpr, LANE: tl.constexpr):
    """One pass over logits[v_lo:v_hi] of a row: (max, sum exp(r - max), first argmax).

    LANE > 0: the tile is [BLOCK_V // LANE, LANE] with per-group accumulators (one thread per
    group, no barrier in the loop), reduced over the groups once at the end (the same combine as
    for V splits). LANE == 0: block-wide reductions of every tile.
    The next tile's load is issued before the current tile is reduced (software prefetch: Triton
    does not pipeline loads that feed reductions), so two tiles per program are in flight.
    """
    if LANE > 0:
        base = tl.arange(0, BLOCK_V // LANE)[:, None] * LANE + tl.arange(0, LANE)[None, :]
        m = tl.full((BLOCK_V // LANE,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_V // LANE,), tl.float32)
        idx = tl.zeros((BLOCK_V // LANE,), tl.int32) + v_lo
    else:
        base = tl.arange(0, BLOCK_V)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        idx = tl.zeros((), tl.int32) + v_lo
    nxt = v_lo + base
    x_next = tl.load(lrow + nxt, mask=nxt < v_hi, other=float("-inf"))
    for start in range(v_lo, v_hi, BLOCK_V):
        offs = start + base
        x = x_next
        nxt = offs + BLOCK_V
        x_next = tl.load(lrow + nxt, mask=nxt < v_hi, other=float("-inf"))
        x = x.to(tl.float32)
        if (mask_id >= start) & (mask_id < start + BLOCK_V):
            x = tl.where(offs == mask_id, float("-inf"), x)
        if LANE > 0:
            m, s, idx = _lane_update(x, offs, m, s, idx)
        else:
            m, s, idx = _online_update(x, offs, m, s, idx)
    if LANE > 0:
        m, s, idx = _combine_partials(m, s, idx)
    return m, s, idx


@triton.jit
def _decay(first_ptr, beta):
    """float32 decay factor: 0 on the block's first step, else beta (rounded to float32 like the
    reference's `torch.where(first_step, 0.0, beta)`; Inductor passes Python floats as fp64)."""
    first = tl.load(first_ptr)
    return tl.where(first, 0.0, tl.cast(beta, tl.float32))


# ----------------------------------------------------------------------------------------------
# sparse kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _sparse_finalize(
    m, s, vstar, row, lrow, idrow, crrow, masked_ptr, x0_ptr, conf_ptr,
    K, s_ik, s_ck, d, alpha, gamma, mask_id,
    BLOCK_K: tl.constexpr,
):
    alpha = tl.cast(alpha, tl.float32)
    gamma = tl.cast(gamma, tl.float32)
    kk = tl.arange(0, BLOCK_K)
    kmask = kk < K
    ids = tl.load(idrow + kk * s_ik, mask=kmask, other=-1)
    c = tl.load(crrow + kk * s_ck, mask=kmask, other=0.0) * d
    msk = tl.load(masked_ptr + row) != 0
    inc = tl.exp2(-gamma * tl.log2(s))  # p* ** gamma with p* = 1 / s
    vstar64 = vstar.to(tl.int64)

    hit = (ids == vstar64) & kmask
    has_hit = tl.max(hit.to(tl.int32), 0) > 0
    hit_k = tl.min(tl.where(hit, kk, INT32_BIG), 0)
    cmin = tl.min(tl.where(kmask, c, float("inf")), 0)
    min_k = tl.min(tl.where(kmask & (c == cmin), kk, INT32_BIG), 0)
    tgt = tl.where(has_hit, hit_k, min_k)
    is_t = kk == tgt
    old_c = tl.sum(tl.where(is_t, c, 0.0), 0)
    new_c = tl.where(has_hit, old_c, 0.0) + inc
    upd = is_t & msk
    c = tl.where(upd, new_c, c)
    ids = tl.where(upd, vstar64, ids)
    tl.store(crrow + kk * s_ck, c, mask=kmask)
    tl.store(idrow + kk * s_ik, ids, mask=kmask)

    valid = kmask & (ids != -1)
    r_k = tl.load(lrow + ids, mask=valid & (ids != mask_id), other=float("-inf")).to(tl.float32)
    f_k = tl.where(valid, r_k + alpha * _log1p(c), float("-inf"))
    big_m = tl.maximum(m, tl.max(f_k, 0))
    x_slot = tl.min(tl.where(valid & (f_k == big_m), ids, INT64_BIG), 0)
    x0 = tl.minimum(x_slot, tl.where(m == big_m, vstar64, INT64_BIG))
    z = s * tl.exp(m - big_m) + tl.sum(
        tl.where(valid, tl.exp(f_k - big_m) - tl.exp(r_k - big_m), 0.0), 0
    )
    tl.store(x0_ptr + row, x0)
    tl.store(conf_ptr + row, 1.0 / z)


@triton.jit(do_not_specialize=["Lb", "K", "mask_id"])
def _sparse_fused_kernel(
    logits_ptr, ids_ptr, cred_ptr, masked_ptr, first_ptr, x0_ptr, conf_ptr,
    Lb, V, K,
    s_lb, s_ll, s_ib, s_il, s_ik, s_cb, s_cl, s_ck,
    alpha, beta, gamma, mask_id,
    BLOCK_V: tl.constexpr, LANE: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program per row: the pass over V, then the slot work (nsplit == 1)."""
    row = tl.program_id(0)
    b = (row // Lb).to(tl.int64)
    pos = (row % Lb).to(tl.int64)
    lrow = logits_ptr + b * s_lb + pos * s_ll
    m, s, vstar = _raw_stats(lrow, 0, V, mask_id, BLOCK_V, LANE)
    d = _decay(first_ptr, beta)
    _sparse_finalize(
        m, s, vstar, row, lrow, ids_ptr + b * s_ib + pos * s_il, cred_ptr + b * s_cb + pos * s_cl,
        masked_ptr, x0_ptr, conf_ptr, K, s_ik, s_ck, d, alpha, gamma, mask_id, BLOCK_K,
    )


@triton.jit(do_not_specialize=["Lb", "mask_id", "nsplit"])
def _stats_split_kernel(
    logits_ptr, wsf_ptr, wsi_ptr, Lb, V, chunk, s_lb, s_ll, mask_id, nsplit,
    BLOCK_V: tl.constexpr, LANE: tl.constexpr,
):
    """Grid (rows, nsplit): partial (max, sum-exp, first argmax) of one V chunk of one row."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    b = (row // Lb).to(tl.int64)
    pos = (row % Lb).to(tl.int64)
    lrow = logits_ptr + b * s_lb + pos * s_ll
    v_lo = split * chunk
    v_hi = tl.minimum(v_lo + chunk, V)
    m, s, idx = _raw_stats(lrow, v_lo, v_hi, mask_id, BLOCK_V, LANE)
    o = row * nsplit + split
    tl.store(wsf_ptr + 2 * o, m)
    tl.store(wsf_ptr + 2 * o + 1, s)
    tl.store(wsi_ptr + o, idx)


@triton.jit(do_not_specialize=["Lb", "K", "mask_id", "nsplit"])
def _sparse_combine_kernel(
    logits_ptr, ids_ptr, cred_ptr, masked_ptr, first_ptr, x0_ptr, conf_ptr, wsf_ptr, wsi_ptr,
    Lb, K,
    s_lb, s_ll, s_ib, s_il, s_ik, s_cb, s_cl, s_ck,
    alpha, beta, gamma, mask_id, nsplit,
    BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid (rows,): combine the nsplit partials of a row, then the slot work."""
    row = tl.program_id(0)
    b = (row // Lb).to(tl.int64)
    pos = (row % Lb).to(tl.int64)
    j = tl.arange(0, BLOCK_S)
    jm = j < nsplit
    o = row * nsplit + j
    m_j = tl.load(wsf_ptr + 2 * o, mask=jm, other=float("-inf"))
    s_j = tl.load(wsf_ptr + 2 * o + 1, mask=jm, other=0.0)
    i_j = tl.load(wsi_ptr + o, mask=jm, other=INT32_BIG)
    m, s, vstar = _combine_partials(m_j, s_j, i_j)
    d = _decay(first_ptr, beta)
    _sparse_finalize(
        m, s, vstar, row, logits_ptr + b * s_lb + pos * s_ll,
        ids_ptr + b * s_ib + pos * s_il, cred_ptr + b * s_cb + pos * s_cl,
        masked_ptr, x0_ptr, conf_ptr, K, s_ik, s_ck, d, alpha, gamma, mask_id, BLOCK_K,
    )


# ----------------------------------------------------------------------------------------------
# launch configuration (host side, static: depends only on shapes and the device)
# ----------------------------------------------------------------------------------------------

_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


# GPU launch defaults, chosen with `benchmarks/bench_credit_op.py --sweep` on an H100 (CUDA-graph
# timing; docs/credit_op.md has the numbers): (tile entries, warps) for the sparse kernel with
# 16-bit logits, with 32- or 64-bit logits, and for the dense kernel (any logits).
GPU_SPARSE_16BIT = (4096, 8)
GPU_SPARSE_32BIT = (2048, 8)
GPU_DENSE = (1024, 4)
# V split (few rows): split when rows < SPLIT_BELOW * SMs, into ceil(SPLIT_TARGET * SMs / rows)
# chunks, at most MAX_SPLIT, each of at least MIN_TILES_PER_CHUNK tiles. Measured: the sparse
# kernel prefers one program per row as soon as rows >= SMs (the partials round trip and second
# launch cost more than the idle SMs); the dense kernel (5x the bytes per entry) gains from
# splitting up to ~8 programs per SM.
SPARSE_SPLIT_BELOW, SPARSE_SPLIT_TARGET = 1, 2
DENSE_SPLIT_BELOW, DENSE_SPLIT_TARGET = 4, 8
MAX_SPLIT = 16
MIN_TILES_PER_CHUNK = 2


def launch_config(rows: int, vocab: int, device: torch.device, *, layout: str, elem_size: int,
                  block_v: int | None = None, nsplit: int | None = None,
                  num_warps: int | None = None) -> tuple[int, int, int, int]:
    """(block_v, nsplit, chunk, num_warps) for `rows` rows of `vocab` entries, from the shapes
    and the device alone (static under torch.compile, no host sync).

    `layout` is the kernel's credit layout ("sparse" or "dense": the dense kernel also reads and
    writes 8 bytes of credit per vocabulary entry), `elem_size` the logits' element size. On CPU
    (the interpreter): one tile of up to 4096 entries, no split. Keyword arguments override
    (tests, tuning sweeps).
    """
    if layout not in ("sparse", "dense"):
        raise ValueError(f"layout={layout!r}: 'sparse' or 'dense'")
    on_gpu = device.type == "cuda"
    if layout == "dense":
        gpu_block, gpu_warps = GPU_DENSE
        split_below, split_target = DENSE_SPLIT_BELOW, DENSE_SPLIT_TARGET
    else:
        gpu_block, gpu_warps = GPU_SPARSE_16BIT if elem_size <= 2 else GPU_SPARSE_32BIT
        split_below, split_target = SPARSE_SPLIT_BELOW, SPARSE_SPLIT_TARGET
    if block_v is None:
        block_v = gpu_block if on_gpu else 4096
    block_v = max(16, min(block_v, triton.next_power_of_2(max(vocab, 1))))
    if num_warps is None:
        num_warps = gpu_warps if on_gpu else 4
    if nsplit is None:
        nsplit = 1
        sms = sm_count(device) if on_gpu else 0
        if on_gpu and rows < split_below * sms:
            max_split = max(1, min(MAX_SPLIT, vocab // (MIN_TILES_PER_CHUNK * block_v)))
            nsplit = max(1, min(triton.cdiv(split_target * sms, max(rows, 1)), max_split))
    nsplit = max(1, min(nsplit, triton.cdiv(vocab, block_v)))
    chunk = triton.cdiv(triton.cdiv(vocab, nsplit), block_v) * block_v
    nsplit = triton.cdiv(vocab, chunk)
    return block_v, nsplit, chunk, num_warps


def default_lane(elem_size: int, block_v: int) -> int:
    """Entries per thread-local group: one 16-byte load's worth (8 bf16/fp16, 4 fp32)."""
    return max(1, min(16 // elem_size, block_v))


def _k(kernel, wrap: bool):
    return torch.library.wrap_triton(kernel) if wrap else kernel


def launch_inputs_and_outputs(logits, masked, first_step):
    """What both launchers hand the kernels: logits with a unit last stride, a contiguous bool
    mask, the first-step flag on the logits' device, and empty (x0, conf) of shape [B, Lb]."""
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    batch, block = int(logits.shape[0]), int(logits.shape[1])
    x0 = torch.empty((batch, block), dtype=torch.int64, device=logits.device)
    conf = torch.empty((batch, block), dtype=torch.float32, device=logits.device)
    return (logits, masked.to(torch.bool).contiguous(),
            first_step.to(device=logits.device, dtype=torch.bool), x0, conf)


def launch_credit_step_sparse_triton(
    logits: torch.Tensor,
    slot_ids: torch.Tensor,
    slot_credit: torch.Tensor,
    masked: torch.Tensor,
    first_step: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    mask_id: int,
    *,
    block_v: int | None = None,
    nsplit: int | None = None,
    num_warps: int | None = None,
    lane: int | None = None,
    wrap: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the sparse credit step with the Triton kernels; slot_ids / slot_credit updated in place.

    Plain launcher (wrap=False): callable eagerly, on CUDA tensors or, under TRITON_INTERPRET=1,
    on CPU tensors. The registered triton_op calls it with wrap=True (torch.library.wrap_triton),
    so that torch.compile / Inductor sees the kernels.
    """
    # Launch configuration needs concrete sizes (under symbolic tracing this specializes).
    batch, block, vocab = (int(n) for n in logits.shape)
    slots = int(slot_ids.shape[-1])
    logits, masked, first_step, x0, conf = launch_inputs_and_outputs(logits, masked, first_step)
    rows = batch * block
    if rows == 0:
        return x0, conf
    block_v, nsplit, chunk, num_warps = launch_config(
        rows, vocab, logits.device, layout="sparse", elem_size=logits.element_size(),
        block_v=block_v, nsplit=nsplit, num_warps=num_warps)
    block_k = triton.next_power_of_2(max(slots, 1))
    lane = default_lane(logits.element_size(), block_v) if lane is None else lane
    common_strides = (
        logits.stride(0), logits.stride(1),
        slot_ids.stride(0), slot_ids.stride(1), slot_ids.stride(2),
        slot_credit.stride(0), slot_credit.stride(1), slot_credit.stride(2),
    )
    scalars = (float(alpha), float(beta), float(gamma), int(mask_id))
    if nsplit == 1:
        _k(_sparse_fused_kernel, wrap)[(rows,)](
            logits, slot_ids, slot_credit, masked, first_step, x0, conf,
            block, vocab, slots, *common_strides, *scalars,
            BLOCK_V=block_v, LANE=lane, BLOCK_K=block_k, num_warps=num_warps,
        )
        return x0, conf
    wsf = torch.empty((rows, nsplit, 2), dtype=torch.float32, device=logits.device)
    wsi = torch.empty((rows, nsplit), dtype=torch.int32, device=logits.device)
    _k(_stats_split_kernel, wrap)[(rows, nsplit)](
        logits, wsf, wsi, block, vocab, chunk, logits.stride(0), logits.stride(1), int(mask_id),
        nsplit, BLOCK_V=block_v, LANE=lane, num_warps=num_warps,
    )
    _k(_sparse_combine_kernel, wrap)[(rows,)](
        logits, slot_ids, slot_credit, masked, first_step, x0, conf, wsf, wsi,
        block, slots, *common_strides, *scalars, nsplit,
        BLOCK_S=triton.next_power_of_2(nsplit), BLOCK_K=block_k, num_warps=1,
    )
    return x0, conf
