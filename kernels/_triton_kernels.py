"""Triton kernels for the fused heads. Imported lazily by `kernels.triton_fused`, never at package import:
`@triton.jit` decides between compiling and interpreting when it decorates, so `TRITON_INTERPRET=1` has to be
in the environment before this module is first imported.

Layout: a 2-D grid of (row block, vocabulary block) programs, flash-decoding style, so that a decode step with a
few dozen rows still spreads a 32k-128k vocabulary over the whole GPU.

`_heads_fwd_kernel`, per program (BLOCK_T rows x BLOCK_V vocabulary columns):
  pass 1 over H: sum(h^2) for the RMSNorm scale r and sum(h * g * w) for the value, both in fp32. Every program
          computes them (BLOCK_T x H multiply-adds, 1/BLOCK_V of the tile's GEMM work) instead of waiting on
          another program; the (0, *) programs store the value.
  pass 2 over H: acc += (h * r * g) @ W_tile^T on tensor cores, fp32 accumulator. The normalised rows never
          go to global memory: that is the norm fusion.
  epilogue: optional reserved slots (A <- value - 1000, B <- -1000), store the logits tile, and the tile's
          entropy partials in fp32 over the *stored* (rounded) logits: m = max z, s = sum e, t = sum e*(z - m)
          with e = exp(z - m).
`_entropy_combine_kernel`, one program per row, merges the partials of all vocabulary blocks:
  M = max m_j, a_j = exp(m_j - M), S = sum a_j s_j, U = sum a_j (t_j + s_j (m_j - M)), entropy = log S - U / S.
  (With e_i = exp(z_i - M): -sum p log p = log S - sum(e_i (z_i - M)) / S.) This is the online-logsumexp merge of
  flash attention, carrying sum(e * z) along.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _heads_fwd_kernel(
    h_ptr,  # [T, H] hidden states, pre-norm (any float dtype)
    g_ptr,  # [H] RMSNorm weight (ignored unless HAS_NORM)
    w_ptr,  # [V, H] LM head
    wv_ptr,  # [H] value-head weight, fp32
    b_ptr,  # [] value-head bias, fp32
    logits_ptr,  # [T, V] out, logits dtype
    value_ptr,  # [T] out, fp32
    part_ptr,  # [3, T, NV] out, fp32 entropy partials (m, s, t)
    T,
    H,
    V,
    NV,
    stride_h,
    stride_w,
    stride_l,
    eps,
    slot_a,
    slot_b,
    slot_offset,
    HAS_NORM: tl.constexpr,
    HAS_SLOTS: tl.constexpr,
    DOT_FP32: tl.constexpr,  # logits (and so the GEMM) in fp32
    DOT_PRECISION: tl.constexpr,  # fp32 GEMM only: "ieee" (exact) or "tf32"
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < T
    col_ok = cols < V
    out_ty = logits_ptr.dtype.element_ty

    # pass 1: RMSNorm scale and the value, fp32
    ss = tl.zeros([BLOCK_T], dtype=tl.float32)
    vw = tl.zeros([BLOCK_T], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        h = h.to(tl.float32)
        wv = tl.load(wv_ptr + ks, mask=k_ok, other=0.0)
        if HAS_NORM:
            ss += tl.sum(h * h, axis=1)
            wv = wv * tl.load(g_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        vw += tl.sum(h * wv[None, :], axis=1)
    if HAS_NORM:
        r = 1.0 / tl.sqrt(ss / H + eps)
    else:
        r = tl.full([BLOCK_T], 1.0, dtype=tl.float32)
    value = vw * r + tl.load(b_ptr)
    if pid_v == 0:
        tl.store(value_ptr + rows, value, mask=row_ok)

    # pass 2: logits tile = norm(h) @ W_tile^T, fp32 accumulator
    acc = tl.zeros([BLOCK_T, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        x = h.to(tl.float32) * r[:, None]
        if HAS_NORM:
            x = x * tl.load(g_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        wt = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        if DOT_FP32:
            acc = tl.dot(x, wt.to(tl.float32), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(x.to(out_ty), wt.to(out_ty), acc)

    z = acc
    if HAS_SLOTS:
        z = tl.where(cols[None, :] == slot_a, value[:, None] - slot_offset, z)
        z = tl.where(cols[None, :] == slot_b, -slot_offset, z)
    zo = z.to(out_ty)
    tl.store(logits_ptr + rows[:, None] * stride_l + cols[None, :], zo, mask=row_ok[:, None] & col_ok[None, :])

    # entropy partials of this tile, over the logits exactly as stored
    # (padding columns are masked without ever forming 0 * inf)
    zf = zo.to(tl.float32)
    m = tl.max(tl.where(col_ok[None, :], zf, float("-inf")), axis=1)
    d = tl.where(col_ok[None, :], zf - m[:, None], 0.0)
    e = tl.where(col_ok[None, :], tl.exp(d), 0.0)
    s = tl.sum(e, axis=1)
    t = tl.sum(e * d, axis=1)
    p = part_ptr + rows * NV + pid_v
    tl.store(p, m, mask=row_ok)
    tl.store(p + T * NV, s, mask=row_ok)
    tl.store(p + 2 * T * NV, t, mask=row_ok)


@triton.jit
def _entropy_combine_kernel(part_ptr, ent_ptr, T, NV, BLOCK_NV: tl.constexpr):
    row = tl.program_id(0)
    j = tl.arange(0, BLOCK_NV)
    ok = j < NV
    base = part_ptr + row * NV + j
    m = tl.load(base, mask=ok, other=float("-inf"))
    s = tl.load(base + T * NV, mask=ok, other=0.0)
    t = tl.load(base + 2 * T * NV, mask=ok, other=0.0)
    big_m = tl.max(m, axis=0)
    dm = tl.where(ok, m - big_m, 0.0)
    a = tl.where(ok, tl.exp(dm), 0.0)
    big_s = tl.sum(a * s, axis=0)
    big_u = tl.sum(a * (t + s * dm), axis=0)
    tl.store(ent_ptr + row, tl.log(big_s) - big_u / big_s)
