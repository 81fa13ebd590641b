"""Triton kernels of one CreditDecoding step, dense credit layout (float32 [B, Lb, V]).

The math is `credit_step_dense_eager`'s (`credit_step_reference.py`); in its notation, per
position (row) with raw logits r, m = r(v*), s = sum_v exp(r(v) - m) (so p* = 1 / s), C' the
updated credit and f = r + alpha * log1p(C') the fused logits.

A single pass over V. The credit update changes one entry (v*) besides the decay, and v* is only
known at the end of the pass over the logits. Instead of a first pass for v* and a second pass
reading the logits again, the kernel streams (logits, credit) once and:

* writes D = d * C (the decayed credit: exactly the reference's `credit.mul_(d)`),
* keeps the online raw statistics (m, s, v*) and the decayed credit D(v*) at the running argmax,
* keeps the online statistics of f' = r + alpha * log1p(D) (max M', sum exp(f' - M') = S',
  first argmax x'), i.e. the fused logits without the increment.

Then a fix-up per row (O(1)): when the position is masked, C'(v*) = D(v*) + p* ** gamma is stored
(the reference's `scatter_add_`, same float32 operations, so credits match bit for bit up to the
value of p*), and since f differs from f' only at v*, where it can only grow
(f(v*) = m + alpha * log1p(C'(v*)) >= f'(v*)):

    M  = max(M', f(v*))
    x0 = v*            if f(v*) > M'
         min(v*, x')   if f(v*) == M'      (first index on ties)
         x'            otherwise           (x' != v* here, since f(v*) >= f'(v*))
    Z  = S' exp(M' - M) - exp(f'(v*) - M) + exp(f(v*) - M),   conf = 1 / Z

Bytes moved: logits read once, credit read once and written once (the minimum for this layout);
the two-pass scheme would read the logits twice. As in the sparse kernel, the online statistics
are kept per thread-local group of LANE entries (no barrier in the loop) and combined at the end;
the decayed credit at each group's running argmax travels with it.

For few rows the V axis is split over `nsplit` programs per row (partials of both online
statistics plus D at the running argmax) and a tiny per-row kernel combines them and applies the
fix-up. The split is chosen on the host from (B * Lb, V, number of SMs): static, no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .credit_step_sparse_triton import (
    INT32_BIG,
    _combine_partials,
    _decay,
    _k,
    _lane_update,
    _log1p,
    launch_config,
    launch_inputs_and_outputs,
)

# Entries per thread-local group (4: one 16-byte load of float32 credit, 8 bytes of bf16 logits);
# 0 selects block-wide reductions of every tile (7% slower on an H100: docs/credit_op.md).
DENSE_LANE = 4
NFLOAT = tl.constexpr(5)  # per split partials: m, s, M', S', D(v*)
NINT = tl.constexpr(2)  # per split partials: v*, x'


@triton.jit
def _dense_pass_lanes(lrow, crow, v_lo, v_hi, d, alpha, mask_id, BLOCK_V: tl.constexpr,
                      LANE: tl.constexpr):
    """Stream logits[v_lo:v_hi] and credit[v_lo:v_hi] once; write the decayed credit.

    Tiles of [BLOCK_V // LANE, LANE]: each thread keeps running statistics of its own groups
    (no barrier in the loop); the groups are combined once at the end."""
    base = tl.arange(0, BLOCK_V // LANE)[:, None] * LANE + tl.arange(0, LANE)[None, :]
    m = tl.full((BLOCK_V // LANE,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_V // LANE,), tl.float32)
    idx = tl.zeros((BLOCK_V // LANE,), tl.int32) + v_lo
    dstar = tl.zeros((BLOCK_V // LANE,), tl.float32)
    fm = tl.full((BLOCK_V // LANE,), float("-inf"), tl.float32)
    fs = tl.zeros((BLOCK_V // LANE,), tl.float32)
    fidx = tl.zeros((BLOCK_V // LANE,), tl.int32) + v_lo
    nxt = v_lo + base
    x_next = tl.load(lrow + nxt, mask=nxt < v_hi, other=float("-inf"))
    c_next = tl.load(crow + nxt, mask=nxt < v_hi, other=0.0)
    for start in range(v_lo, v_hi, BLOCK_V):
        offs = start + base
        valid = offs < v_hi
        x = x_next
        c = c_next
        nxt = offs + BLOCK_V
        x_next = tl.load(lrow + nxt, mask=nxt < v_hi, other=float("-inf"))
        c_next = tl.load(crow + nxt, mask=nxt < v_hi, other=0.0)
        x = x.to(tl.float32)
        if (mask_id >= start) & (mask_id < start + BLOCK_V):
            x = tl.where(offs == mask_id, float("-inf"), x)
        dc = c * d
        tl.store(crow + offs, dc, mask=valid)
        f = x + alpha * _log1p(dc)
        # raw statistics per group, with the decayed credit at the group's running argmax
        gmax = tl.max(x, 1)
        upd = gmax > m
        gi = tl.min(tl.where(x == gmax[:, None], offs, INT32_BIG), 1)
        idx = tl.where(upd, gi, idx)
        dstar = tl.where(upd, tl.sum(tl.where(offs == gi[:, None], dc, 0.0), 1), dstar)
        nm = tl.maximum(m, gmax)
        safe = tl.where(nm == float("-inf"), 0.0, nm)
        s = s * tl.exp(m - safe) + tl.sum(tl.exp(x - safe[:, None]), 1)
        m = nm
        # fused (no increment) statistics per group
        fm, fs, fidx = _lane_update(f, offs, fm, fs, fidx)
    m_r, s_r, idx_r = _combine_partials(m, s, idx)
    dstar_r = tl.sum(tl.where((idx == idx_r) & (m == m_r), dstar, 0.0), 0)
    fm, fs, fidx = _combine_partials(fm, fs, fidx)
    return m_r, s_r, idx_r, dstar_r, fm, fs, fidx


@triton.jit
def _dense_pass_block(lrow, crow, v_lo, v_hi, d, alpha, mask_id, BLOCK_V: tl.constexpr):
    """As _dense_pass_lanes with block-wide reductions of every tile."""
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    idx = tl.zeros((), tl.int32) + v_lo
    dstar = tl.zeros((), tl.float32)
    fm = tl.full((), float("-inf"), tl.float32)
    fs = tl.zeros((), tl.float32)
    fidx = tl.zeros((), tl.int32) + v_lo
    base = tl.arange(0, BLOCK_V)
    # Software prefetch of the next tile (see _raw_stats).
    nxt = v_lo + base
    x_next = tl.load(lrow + tl.max_contiguous(nxt, 4), mask=nxt < v_hi, other=float("-inf"))
    c_next = tl.load(crow + nxt, mask=nxt < v_hi, other=0.0)
    for start in range(v_lo, v_hi, BLOCK_V):
        offs = start + base
        valid = offs < v_hi
        x = x_next
        c = c_next
        nxt = offs + BLOCK_V
        x_next = tl.load(lrow + tl.max_contiguous(nxt, 4), mask=nxt < v_hi, other=float("-inf"))
        c_next = tl.load(crow + nxt, mask=nxt < v_hi, other=0.0)
        x = tl.where(offs == mask_id, float("-inf"), x.to(tl.float32))
        dc = c * d
        tl.store(crow + offs, dc, mask=valid)
        f = x + alpha * _log1p(dc)
        # raw statistics, with the decayed credit at the running argmax
        tm = tl.max(x, 0)
        nm = tl.maximum(m, tm)
        safe = tl.where(nm == float("-inf"), 0.0, nm)
        s = s * tl.exp(m - safe) + tl.sum(tl.exp(x - safe), 0)
        if tm > m:
            idx = tl.min(tl.where(x == tm, offs, INT32_BIG), 0)
            dstar = tl.sum(tl.where(offs == idx, dc, 0.0), 0)
        m = nm
        # fused (no increment) statistics
        tf = tl.max(f, 0)
        nf = tl.maximum(fm, tf)
        fsafe = tl.where(nf == float("-inf"), 0.0, nf)
        fs = fs * tl.exp(fm - fsafe) + tl.sum(tl.exp(f - fsafe), 0)
        if tf > fm:
            fidx = tl.min(tl.where(f == tf, offs, INT32_BIG), 0)
        fm = nf
    return m, s, idx, dstar, fm, fs, fidx


@triton.jit
def _dense_finalize(m, s, vstar, dstar, fm, fs, fidx, row, crow, masked_ptr, x0_ptr, conf_ptr,
                    alpha, gamma):
    msk = tl.load(masked_ptr + row) != 0
    inc = tl.exp2(-gamma * tl.log2(s))  # p* ** gamma with p* = 1 / s
    cnew = dstar + inc
    tl.store(crow + vstar, cnew, mask=msk)
    f_new = m + alpha * _log1p(cnew)
    f_old = m + alpha * _log1p(dstar)
    big_m = tl.maximum(fm, f_new)
    x_new = tl.where(f_new > fm, vstar, tl.where(f_new == fm, tl.minimum(vstar, fidx), fidx))
    z_new = fs * tl.exp(fm - big_m) - tl.exp(f_old - big_m) + tl.exp(f_new - big_m)
    x0 = tl.where(msk, x_new, fidx)
    z = tl.where(msk, z_new, fs)
    tl.store(x0_ptr + row, x0.to(tl.int64))
    tl.store(conf_ptr + row, 1.0 / z)


@triton.jit(do_not_specialize=["Lb", "mask_id", "nsplit"])
def _dense_kernel(
    logits_ptr, credit_ptr, masked_ptr, first_ptr, x0_ptr, conf_ptr, wsf_ptr, wsi_ptr,
    Lb, V, chunk, s_lb, s_ll, s_cb, s_cl,
    alpha, beta, gamma, mask_id, nsplit,
    FINALIZE: tl.constexpr, BLOCK_V: tl.constexpr, LANE: tl.constexpr,
):
    """Grid (rows, nsplit). FINALIZE (nsplit == 1): the whole row and the fix-up; else partials."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    b = (row // Lb).to(tl.int64)
    pos = (row % Lb).to(tl.int64)
    lrow = logits_ptr + b * s_lb + pos * s_ll
    crow = credit_ptr + b * s_cb + pos * s_cl
    alpha = tl.cast(alpha, tl.float32)  # Inductor passes Python floats as fp64
    gamma = tl.cast(gamma, tl.float32)
    d = _decay(first_ptr, beta)
    v_lo = split * chunk
    v_hi = tl.minimum(v_lo + chunk, V)
    if LANE > 0:
        m, s, idx, dstar, fm, fs, fidx = _dense_pass_lanes(lrow, crow, v_lo, v_hi, d, alpha,
                                                           mask_id, BLOCK_V, LANE)
    else:
        m, s, idx, dstar, fm, fs, fidx = _dense_pass_block(lrow, crow, v_lo, v_hi, d, alpha,
                                                           mask_id, BLOCK_V)
    if FINALIZE:
        _dense_finalize(m, s, idx, dstar, fm, fs, fidx, row, crow, masked_ptr, x0_ptr, conf_ptr,
                        alpha, gamma)
    else:
        o = row * nsplit + split
        tl.store(wsf_ptr + NFLOAT * o + 0, m)
        tl.store(wsf_ptr + NFLOAT * o + 1, s)
        tl.store(wsf_ptr + NFLOAT * o + 2, fm)
        tl.store(wsf_ptr + NFLOAT * o + 3, fs)
        tl.store(wsf_ptr + NFLOAT * o + 4, dstar)
        tl.store(wsi_ptr + NINT * o + 0, idx)
        tl.store(wsi_ptr + NINT * o + 1, fidx)


@triton.jit(do_not_specialize=["Lb", "nsplit"])
def _dense_combine_kernel(
    credit_ptr, masked_ptr, x0_ptr, conf_ptr, wsf_ptr, wsi_ptr, Lb, s_cb, s_cl, alpha, gamma,
    nsplit, BLOCK_S: tl.constexpr,
):
    """Grid (rows,): combine the nsplit partials of a row and apply the fix-up."""
    alpha = tl.cast(alpha, tl.float32)
    gamma = tl.cast(gamma, tl.float32)
    row = tl.program_id(0)
    b = (row // Lb).to(tl.int64)
    pos = (row % Lb).to(tl.int64)
    j = tl.arange(0, BLOCK_S)
    jm = j < nsplit
    o = row * nsplit + j
    m_j = tl.load(wsf_ptr + NFLOAT * o + 0, mask=jm, other=float("-inf"))
    s_j = tl.load(wsf_ptr + NFLOAT * o + 1, mask=jm, other=0.0)
    fm_j = tl.load(wsf_ptr + NFLOAT * o + 2, mask=jm, other=float("-inf"))
    fs_j = tl.load(wsf_ptr + NFLOAT * o + 3, mask=jm, other=0.0)
    d_j = tl.load(wsf_ptr + NFLOAT * o + 4, mask=jm, other=0.0)
    i_j = tl.load(wsi_ptr + NINT * o + 0, mask=jm, other=INT32_BIG)
    fi_j = tl.load(wsi_ptr + NINT * o + 1, mask=jm, other=INT32_BIG)
    m, s, vstar = _combine_partials(m_j, s_j, i_j)
    fm, fs, fidx = _combine_partials(fm_j, fs_j, fi_j)
    # chunks are disjoint, so exactly one split holds v* as its own argmax
    dstar = tl.sum(tl.where(jm & (i_j == vstar), d_j, 0.0), 0)
    _dense_finalize(m, s, vstar, dstar, fm, fs, fidx, row, credit_ptr + b * s_cb + pos * s_cl,
                    masked_ptr, x0_ptr, conf_ptr, alpha, gamma)


def launch_credit_step_dense_triton(
    logits: torch.Tensor,
    credit: torch.Tensor,
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
    """Run the dense credit step with the Triton kernels; `credit` is updated in place.

    Plain launcher (wrap=False): callable eagerly, on CUDA tensors or, under TRITON_INTERPRET=1,
    on CPU tensors. The registered triton_op calls it with wrap=True.
    """
    # Launch configuration needs concrete sizes (under symbolic tracing this specializes).
    batch, block, vocab = (int(n) for n in logits.shape)
    if credit.stride(-1) != 1:  # in-place semantics on a copy with a unit last stride
        work = credit.contiguous()
        out = launch_credit_step_dense_triton(
            logits, work, masked, first_step, alpha, beta, gamma, mask_id,
            block_v=block_v, nsplit=nsplit, num_warps=num_warps, lane=lane, wrap=wrap)
        credit.copy_(work)
        return out
    logits, masked, first_step, x0, conf = launch_inputs_and_outputs(logits, masked, first_step)
    rows = batch * block
    if rows == 0:
        return x0, conf
    block_v, nsplit, chunk, num_warps = launch_config(
        rows, vocab, logits.device, layout="dense", elem_size=logits.element_size(),
        block_v=block_v, nsplit=nsplit, num_warps=num_warps)
    lane = min(DENSE_LANE, block_v) if lane is None else lane
    ws = rows * nsplit if nsplit > 1 else 1  # partials, only used when the V axis is split
    wsf = torch.empty((ws, 5), dtype=torch.float32, device=logits.device)
    wsi = torch.empty((ws, 2), dtype=torch.int32, device=logits.device)
    _k(_dense_kernel, wrap)[(rows, nsplit)](
        logits, credit, masked, first_step, x0, conf, wsf, wsi,
        block, vocab, chunk, logits.stride(0), logits.stride(1), credit.stride(0),
        credit.stride(1), float(alpha), float(beta), float(gamma), int(mask_id), nsplit,
        FINALIZE=nsplit == 1, BLOCK_V=block_v, LANE=lane, num_warps=num_warps,
    )
    if nsplit > 1:
        _k(_dense_combine_kernel, wrap)[(rows,)](
            credit, masked, x0, conf, wsf, wsi, block, credit.stride(0), credit.stride(1),
            float(alpha), float(gamma), nsplit,
            BLOCK_S=triton.next_power_of_2(nsplit), num_warps=1,
        )
    return x0, conf
