"""Triton block statistics for the sparse-attention prediction path (one launch over q, k and v).

For every block of ``block_size`` tokens: the fp32 mean of q, k and v and the element-wise mean absolute
deviation ``mean_i |x_i - mean|`` of q and k (RSA/Jenga's GAPR test). A partial last block averages over
its valid tokens. q and k/v may have different lengths. Program ``(i, b*H + h)`` handles query block ``i``
(if ``i < nQ``) and key/value block ``i`` (if ``i < nK``); when a block fits in one tile (``block_size <= 128``,
the usual case) its tokens are loaded once and both moments come from registers, otherwise the block is
streamed twice in chunks (the second pass mostly hits L2).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .reference import BlockStats, block_counts

__all__ = ["block_stats_triton"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _block_moments(
    X, Mean, Mad, b, h, blk, N,
    stride_xb, stride_xh, stride_xn, stride_xd,
    stride_mb, stride_mh, stride_mn, stride_md,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr,
    COMPUTE_MAD: tl.constexpr,
):
    NCHUNK: tl.constexpr = (BLOCK_SIZE + BLOCK_T - 1) // BLOCK_T
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    start = blk.to(tl.int64) * BLOCK_SIZE
    cnt = tl.minimum(N - start, BLOCK_SIZE).to(tl.float32)
    x_base = X + b * stride_xb + h * stride_xh
    m_ptrs = Mean + b * stride_mb + h * stride_mh + blk * stride_mn + offs_d * stride_md
    a_ptrs = Mad + b * stride_mb + h * stride_mh + blk * stride_mn + offs_d * stride_md
    if NCHUNK == 1:
        tok = start + offs_t
        ok = (offs_t < BLOCK_SIZE) & (tok < N)
        x = tl.load(x_base + tok[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                    mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        mean = tl.sum(x, 0) / cnt
        tl.store(m_ptrs, mean, mask=d_ok)
        if COMPUTE_MAD:
            dev = tl.where(ok[:, None], tl.abs(x - mean[None, :]), 0.0)
            tl.store(a_ptrs, tl.sum(dev, 0) / cnt, mask=d_ok)
    else:
        total = tl.zeros([BLOCK_D], dtype=tl.float32)
        for c in range(0, NCHUNK):
            in_blk = c * BLOCK_T + offs_t
            tok = start + in_blk
            ok = (in_blk < BLOCK_SIZE) & (tok < N)
            x = tl.load(x_base + tok[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                        mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            total += tl.sum(x, 0)
        mean = total / cnt
        tl.store(m_ptrs, mean, mask=d_ok)
        if COMPUTE_MAD:
            dev_total = tl.zeros([BLOCK_D], dtype=tl.float32)
            for c in range(0, NCHUNK):
                in_blk = c * BLOCK_T + offs_t
                tok = start + in_blk
                ok = (in_blk < BLOCK_SIZE) & (tok < N)
                x = tl.load(x_base + tok[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                            mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
                dev_total += tl.sum(tl.where(ok[:, None], tl.abs(x - mean[None, :]), 0.0), 0)
            tl.store(a_ptrs, dev_total / cnt, mask=d_ok)


@triton.jit
def _block_stats_kernel(
    Q, K, V, QMean, QMad, KMean, KMad, VMean,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_sqb, stride_sqh, stride_sqn, stride_sqd,
    stride_skb, stride_skh, stride_skn, stride_skd,
    H, Nq, Nk, NQB, NKB,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr,
):
    blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    if blk < NQB:
        _block_moments(Q, QMean, QMad, b, h, blk, Nq,
                       stride_qb, stride_qh, stride_qn, stride_qd,
                       stride_sqb, stride_sqh, stride_sqn, stride_sqd,
                       HEAD_DIM, BLOCK_D, BLOCK_SIZE, BLOCK_T, True)
    if blk < NKB:
        _block_moments(K, KMean, KMad, b, h, blk, Nk,
                       stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_skb, stride_skh, stride_skn, stride_skd,
                       HEAD_DIM, BLOCK_D, BLOCK_SIZE, BLOCK_T, True)
        _block_moments(V, VMean, VMean, b, h, blk, Nk,
                       stride_vb, stride_vh, stride_vn, stride_vd,
                       stride_skb, stride_skh, stride_skn, stride_skd,
                       HEAD_DIM, BLOCK_D, BLOCK_SIZE, BLOCK_T, False)


def _p2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def block_stats_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int = 128,
    *,
    out: Optional[Sequence[torch.Tensor]] = None,
) -> BlockStats:
    """Direct launcher of the Triton block-statistics kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    Same semantics as :func:`dit_attn.kernels.block_stats`. ``out`` optionally supplies preallocated fp32
    ``(q_mean, k_mean, v_mean, q_mad, k_mad)`` tensors (the kernel writes every element); ``k_mean``, ``k_mad``
    and ``v_mean`` must share strides, as must ``q_mean`` and ``q_mad``.

    Example (CPU, run under ``TRITON_INTERPRET=1``)::

        >>> import torch
        >>> from dit_attn.kernels import block_stats_reference, block_stats_triton
        >>> q, k, v = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33, 16)
        >>> st = block_stats_triton(q, k, v, block_size=16)
        >>> st.q_mean.shape, st.k_mad.shape, st.k_count.tolist()
        (torch.Size([1, 2, 3, 16]), torch.Size([1, 2, 3, 16]), [16, 16, 1])
        >>> all(torch.allclose(a, b, atol=1e-5) for a, b in zip(st, block_stats_reference(q, k, v, block_size=16)))
        True
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, H, N, D]")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if block_size < 1:
        raise ValueError("block_size must be positive")
    if q.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("block_stats_triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    nqb = -(-Nq // block_size)
    nkb = -(-Nk // block_size)
    f32 = dict(dtype=torch.float32, device=q.device)
    if out is None:
        q_mean = torch.empty(B, H, nqb, D, **f32)
        q_mad = torch.empty(B, H, nqb, D, **f32)
        k_mean = torch.empty(B, H, nkb, D, **f32)
        k_mad = torch.empty(B, H, nkb, D, **f32)
        v_mean = torch.empty(B, H, nkb, D, **f32)
    else:
        q_mean, k_mean, v_mean, q_mad, k_mad = out
        for t, n in ((q_mean, nqb), (q_mad, nqb), (k_mean, nkb), (k_mad, nkb), (v_mean, nkb)):
            if t.shape != (B, H, n, D) or t.dtype != torch.float32:
                raise ValueError(f"out tensor {tuple(t.shape)} {t.dtype} != [{B}, {H}, {n}, {D}] fp32")
        if q_mad.stride() != q_mean.stride() or not (k_mean.stride() == k_mad.stride() == v_mean.stride()):
            raise ValueError("out tensors of the same group must share strides")
    if B * H > 0 and max(nqb, nkb) > 0 and D > 0:
        block_t = max(16, min(128, _p2(block_size)))
        block_d = max(16, _p2(D))
        grid = (max(nqb, nkb), B * H)
        ctx = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
        with ctx:
            _block_stats_kernel[grid](
                q, k, v, q_mean, q_mad, k_mean, k_mad, v_mean,
                *q.stride(), *k.stride(), *v.stride(), *q_mean.stride(), *k_mean.stride(),
                H, Nq, Nk, nqb, nkb,
                HEAD_DIM=D, BLOCK_D=block_d, BLOCK_SIZE=block_size, BLOCK_T=block_t,
                num_warps=8 if block_t * block_d >= 8192 else 4,
            )
    return BlockStats(q_mean, k_mean, v_mean, q_mad, k_mad,
                      block_counts(Nq, block_size, q.device), block_counts(Nk, block_size, q.device))
