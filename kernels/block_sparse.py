"""Triton block-sparse attention forward: LUT over key blocks, additive key bias, LSE and a fused
rectification epilogue.

For each query block ``I`` (``block_size_q`` queries) and each ``(b, h)``, the kernel loops only over the
``block_count[b, h, I]`` key blocks listed in ``block_index[b, h, I, :]`` (a LUT, no scan over all blocks),
in sub-tiles of ``BLOCK_N`` keys, with an online softmax in the log2 domain on fp32 logits::

    s    = (q . k) * scale * log2(e) + key_bias * log2(e)        (fp32; keys >= Nk or outside the block: -inf)
    out  = rect_scale[I] * softmax(s) @ v + rect_add[I, :]       (fp32 epilogue, then cast)
    lse  = logsumexp of the natural-log logits over the computed keys (fp32, -inf for empty rows)

Rows without any finite logit (count 0, or every listed key masked by a ``-inf`` bias) produce 0 before the
epilogue and ``lse = -inf``, never NaN. LUT entries must be distinct (a repeated block is counted twice);
entries outside ``[0, ceil(Nk / block_size_k))`` cover no key and are ignored; ``block_count`` is clamped to
``[0, max_blocks]``.

The launcher reads only shapes and strides (no ``.item()``, no host synchronisation) and handles broadcast
operands (``key_bias``, LUT, epilogue tensors with size-1 batch/head dims) through zero strides.

Status: verified numerically under the Triton interpreter only, and compiled ahead of time for sm_80 and sm_90
(the K/V loads are software-pipelined with ``num_stages`` buffers despite the LUT indirection; registers, spills
and shared memory of every config: ``python -m dit_attn.kernels.static_report``, docs/kernels.md); it has not yet
been run or timed on a GPU, and ``DEFAULT_CONFIGS`` are unmeasured defaults.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["block_sparse_attention_triton", "DEFAULT_CONFIGS", "INTERPRET"]

# Whether the kernels of this module were created for the Triton interpreter (decided when triton.jit runs,
# i.e. when this module is first imported).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _bsa_fwd_kernel(
    Q, K, V, Out, Lse,
    BlockIdx, BlockCnt, KeyBias, RectScale, RectAdd,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_lb, stride_lh, stride_ln,
    stride_ib, stride_ih, stride_iq, stride_ik,
    stride_cb, stride_ch, stride_cq,
    stride_bb, stride_bh, stride_bn,
    stride_rsb, stride_rsh, stride_rsq,
    stride_rab, stride_rah, stride_raq, stride_rad,
    H, Nq, Nk, MAX_BLOCKS, qk_scale,
    NQ_BUCKET,  # only used as an autotuning key (short vs long sequences)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE_Q: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RECT_SCALE: tl.constexpr, HAS_RECT_ADD: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # A query block is covered by TILES_Q tiles of BLOCK_M rows; a key block by SUB_K tiles of BLOCK_N keys.
    TILES_Q: tl.constexpr = (BLOCK_SIZE_Q + BLOCK_M - 1) // BLOCK_M
    SUB_K: tl.constexpr = (BLOCK_SIZE_K + BLOCK_N - 1) // BLOCK_N

    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    qb = pid_m // TILES_Q
    sub = pid_m % TILES_Q

    offs_in_qb = sub * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_m = qb * BLOCK_SIZE_Q + offs_in_qb
    row_ok = (offs_in_qb < BLOCK_SIZE_Q) & (offs_m < Nq)
    offs_m64 = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m64[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    idx_base = BlockIdx + b * stride_ib + h * stride_ih + qb * stride_iq
    bias_base = KeyBias + b * stride_bb + h * stride_bh

    cnt = tl.load(BlockCnt + b * stride_cb + h * stride_ch + qb * stride_cq).to(tl.int32)
    cnt = tl.maximum(tl.minimum(cnt, MAX_BLOCKS), 0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    offs_n0 = tl.arange(0, BLOCK_N)

    # One flat loop over (LUT entry, sub-tile) so that the compiler can software-pipeline the K/V loads.
    for it in range(0, cnt * SUB_K):
        j = it // SUB_K
        s = it % SUB_K
        kb = tl.load(idx_base + j * stride_ik).to(tl.int64)
        offs_in_kb = s * BLOCK_N + offs_n0
        offs_n = kb * BLOCK_SIZE_K + offs_in_kb
        col_ok = (offs_in_kb < BLOCK_SIZE_K) & (offs_n >= 0) & (offs_n < Nk)
        kv_mask = col_ok[:, None] & d_ok[None, :]

        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # fp32 logits, log2 units
        if HAS_BIAS:
            kbias = tl.load(bias_base + offs_n * stride_bn, mask=col_ok, other=0.0).to(tl.float32)
            qk = qk + kbias[None, :] * _LOG2E
        qk = tl.where(col_ok[None, :], qk, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # Shift by 0 while a row has seen no finite logit, so that no (-inf) - (-inf) appears.
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(qk - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]

        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        if UPCAST_DOT:
            # Same numerics as the GPU path (p rounded to the input dtype, exact products, fp32 sums).
            p_in = p.to(V.dtype.element_ty).to(tl.float32)
            acc = tl.dot(p_in, v.to(tl.float32), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new

    # Epilogue in fp32: normalise (empty rows: acc = 0, l = 0 -> 0), rectify, cast, store.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    if HAS_RECT_SCALE:
        rs = tl.load(RectScale + b * stride_rsb + h * stride_rsh + qb * stride_rsq).to(tl.float32)
        out = out * rs
    if HAS_RECT_ADD:
        ra = tl.load(RectAdd + b * stride_rab + h * stride_rah + qb * stride_raq + offs_d * stride_rad,
                     mask=d_ok, other=0.0).to(tl.float32)
        out = out + ra[None, :]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m64[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])

    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) * _LN2)
    tl.store(Lse + b * stride_lb + h * stride_lh + offs_m64 * stride_ln, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------------------

def _p2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _tile_caps(block_size_q: int, block_size_k: int):
    """Largest useful tile sizes for the given selection block sizes (powers of two, >= 16 for tl.dot)."""
    return max(16, min(128, _p2(block_size_q))), max(16, min(128, _p2(block_size_k)))


_AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm in (64, 128)
    for bn in (32, 64, 128)
    for w in (4, 8)
    for s in (2, 3, 4)
]

# Shared-memory estimate used to prune configs before benchmarking: q tile + num_stages buffers of K and V
# (matches the compiled kernels for sm_90). H100/H200 allow 227 KiB per block (A100: 163 KiB; configs that do
# not fit there fail to compile and the autotuner skips them).
_SMEM_BUDGET = 220 * 1024


def _prune_configs(configs, named_args, **kwargs):
    bsq = kwargs.get("BLOCK_SIZE_Q", named_args.get("BLOCK_SIZE_Q"))
    bsk = kwargs.get("BLOCK_SIZE_K", named_args.get("BLOCK_SIZE_K"))
    bd = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    cap_m, cap_n = _tile_caps(bsq, bsk)
    elem = named_args["Q"].element_size() if "Q" in named_args else 2
    seen = {}
    for c in configs:
        bm = min(c.kwargs["BLOCK_M"], cap_m)
        bn = min(c.kwargs["BLOCK_N"], cap_n)
        smem = (bm * bd + c.num_stages * 2 * bn * bd) * elem
        if smem > _SMEM_BUDGET:
            continue
        key = (bm, bn, c.num_warps, c.num_stages)
        if key not in seen:
            seen[key] = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=c.num_warps, num_stages=c.num_stages)
    if not seen:  # always keep one config
        seen[0] = triton.Config({"BLOCK_M": min(64, cap_m), "BLOCK_N": min(32, cap_n)}, num_warps=4, num_stages=2)
    return list(seen.values())


_bsa_fwd_autotuned = triton.autotune(
    configs=_AUTOTUNE_CONFIGS,
    key=["HEAD_DIM", "BLOCK_SIZE_Q", "BLOCK_SIZE_K", "HAS_BIAS", "NQ_BUCKET"],
    prune_configs_by={"early_config_prune": _prune_configs},
    cache_results=True,  # persist the tuning result on disk (Triton cache dir) across processes
)(_bsa_fwd_kernel)

# Configs used without autotuning (DIT_ATTN_AUTOTUNE=0), keyed by (head dim, dtype), for 128x128 selection
# blocks. These are educated defaults for Hopper-class GPUs (the FlashAttention-2 Triton tutorial's choices),
# NOT measured in this repository yet: replace them with the winners of `python -m dit_attn.bench.kernels`.
DEFAULT_CONFIGS = {
    (16, torch.float16): dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    (32, torch.float16): dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),  # 4 warps spill on sm_80
    (64, torch.float16): dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    (128, torch.float16): dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    (16, torch.bfloat16): dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    (32, torch.bfloat16): dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),  # 4 warps spill on sm_80
    (64, torch.bfloat16): dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    (128, torch.bfloat16): dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    (16, torch.float32): dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
    (32, torch.float32): dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2),
    # fp32 (exact fp32 products on the FP32 units): 8 warps, because 4 spill registers at D=64 on sm_80 and at
    # D=128 on sm_80 and sm_90 (`python -m dit_attn.kernels.static_report`, docs/kernels.md).
    (64, torch.float32): dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
    (128, torch.float32): dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
}


def _static_config(D: int, dtype: torch.dtype, block_size_q: int, block_size_k: int):
    cap_m, cap_n = _tile_caps(block_size_q, block_size_k)
    if INTERPRET:
        # One big tile per block: fewest interpreted operations. Warps/stages mean nothing there.
        return dict(BLOCK_M=cap_m, BLOCK_N=cap_n, num_warps=4, num_stages=1)
    cfg = dict(DEFAULT_CONFIGS.get((_p2(max(D, 16)), dtype), DEFAULT_CONFIGS[(128, torch.float16)]))
    cfg["BLOCK_M"] = min(cfg["BLOCK_M"], cap_m)
    cfg["BLOCK_N"] = min(cfg["BLOCK_N"], cap_n)
    return cfg


def _autotune_enabled() -> bool:
    return (not INTERPRET) and os.environ.get("DIT_ATTN_AUTOTUNE", "1") != "0"


def _nq_bucket(nq: int) -> int:
    return 0 if nq <= 8192 else (1 if nq <= 32768 else 2)


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------

def _as_3d(t: torch.Tensor, B: int, H: int, n: int, name: str) -> torch.Tensor:
    while t.dim() < 3:
        t = t.unsqueeze(0)
    try:
        return t.expand(B, H, n)
    except RuntimeError as e:  # pragma: no cover - message only
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to [B, H, {n}] = [{B}, {H}, {n}]") from e


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_index: torch.Tensor,
    block_count: torch.Tensor,
    *,
    block_size_q: int = 128,
    block_size_k: int = 128,
    key_bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    rect_scale: Optional[torch.Tensor] = None,
    rect_add: Optional[torch.Tensor] = None,
    return_lse: bool = False,
    out: Optional[torch.Tensor] = None,
    lse: Optional[torch.Tensor] = None,
):
    """Direct launcher of the Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

    Same arguments and semantics as :func:`dit_attn.kernels.block_sparse_attention`, plus optional
    preallocated outputs ``out`` ``[B, H, Nq, D]`` (q's dtype) and ``lse`` ``[B, H, Nq]`` (fp32), any strides;
    the kernel writes every element of both. Not a custom op: use the public function inside torch.compile.

    Example (CPU, run under ``TRITON_INTERPRET=1``)::

        >>> import torch
        >>> from dit_attn.kernels import block_sparse_attention_triton
        >>> q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
        >>> idx = torch.arange(3, dtype=torch.int32).expand(1, 2, 3, 3)
        >>> cnt = torch.full((1, 2, 3), 3, dtype=torch.int32)
        >>> out = block_sparse_attention_triton(q, k, v, idx, cnt, block_size_q=16, block_size_k=16)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
        True
        >>> lse = torch.empty(1, 2, 40)  # a preallocated (fp32) buffer, written in full
        >>> cnt = torch.tensor([3, 1, 0], dtype=torch.int32).expand(1, 2, 3)  # query block 2 sees no key
        >>> out, lse = block_sparse_attention_triton(q, k, v, idx, cnt, block_size_q=16, block_size_k=16,
        ...                                          return_lse=True, lse=lse)
        >>> bool((out[:, :, 32:] == 0).all()), bool(torch.isneginf(lse[:, :, 32:]).all())
        (True, True)
    """
    from .reference import _check_attention_args

    _check_attention_args(q, k, v, block_index, block_count, block_size_q, block_size_k)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"block_sparse_attention: unsupported dtype {q.dtype} (fp32, fp16, bf16)")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device == block_index.device == block_count.device):
        raise ValueError("all tensors must be on the same device")
    if q.device.type == "cpu" and not INTERPRET:
        raise RuntimeError(
            "block_sparse_attention_triton on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before triton is imported (or use the reference, the default on CPU)"
        )
    if block_index.dtype not in (torch.int32, torch.int64) or block_count.dtype not in (torch.int32, torch.int64):
        raise TypeError("block_index and block_count must be int32 (or int64)")

    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    nqb = -(-Nq // block_size_q)
    max_blocks = block_index.shape[-1]
    if scale is None:
        scale = D ** -0.5
    block_index = block_index.expand(B, H, nqb, max_blocks)
    block_count = block_count.expand(B, H, nqb)

    if out is None:
        out = torch.empty(B, H, Nq, D, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype}; got {tuple(out.shape)} {out.dtype}")
    if lse is None:
        lse = torch.empty(B, H, Nq, dtype=torch.float32, device=q.device)
    elif lse.shape != (B, H, Nq) or lse.dtype != torch.float32:
        raise ValueError(f"lse must be [{B}, {H}, {Nq}] fp32; got {tuple(lse.shape)} {lse.dtype}")

    has_bias = key_bias is not None
    has_rs = rect_scale is not None
    has_ra = rect_add is not None
    # Dummy pointers for absent operands (never dereferenced: the kernel branches on constexpr flags).
    bias_t = _as_3d(key_bias, B, H, Nk, "key_bias") if has_bias else out
    rs_t = _as_3d(rect_scale, B, H, nqb, "rect_scale") if has_rs else out
    if has_ra:
        ra_t = rect_add
        while ra_t.dim() < 4:
            ra_t = ra_t.unsqueeze(0)
        try:
            ra_t = ra_t.expand(B, H, nqb, D)
        except RuntimeError as e:
            raise ValueError(f"rect_add of shape {tuple(rect_add.shape)} does not broadcast to [{B}, {H}, {nqb}, {D}]") from e
    else:
        ra_t = out
    bias_strides = bias_t.stride()[:3] if has_bias else (0, 0, 0)
    rs_strides = rs_t.stride()[:3] if has_rs else (0, 0, 0)
    ra_strides = ra_t.stride()[:4] if has_ra else (0, 0, 0, 0)
    for name, t in (("key_bias", key_bias), ("rect_scale", rect_scale), ("rect_add", rect_add)):
        if t is not None and (t.device != q.device or not t.is_floating_point()):
            raise ValueError(f"{name} must be a floating tensor on {q.device}")

    if Nq == 0 or B * H == 0 or D == 0:
        return (out, lse) if return_lse else out

    interp_bf16 = INTERPRET and q.dtype == torch.bfloat16  # the interpreter's tl.dot mishandles bf16 operands
    meta = dict(
        HEAD_DIM=D,
        BLOCK_D=max(16, _p2(D)),
        BLOCK_SIZE_Q=block_size_q,
        BLOCK_SIZE_K=block_size_k,
        HAS_BIAS=has_bias,
        HAS_RECT_SCALE=has_rs,
        HAS_RECT_ADD=has_ra,
        UPCAST_DOT=interp_bf16,
        # fp32 inputs: true fp32 products (tf32 would cost ~1e-3 relative accuracy).
        DOT_PRECISION="ieee" if (q.dtype == torch.float32 or interp_bf16) else "tf32",
    )
    args = (
        q, k, v, out, lse, block_index, block_count, bias_t, rs_t, ra_t,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
        *block_index.stride(), *block_count.stride(),
        *bias_strides, *rs_strides, *ra_strides,
        H, Nq, Nk, max_blocks, float(scale) * 1.4426950408889634, _nq_bucket(Nq),
    )

    def grid(META):
        tiles = -(-block_size_q // META["BLOCK_M"])
        return (nqb * tiles, B * H)

    ctx = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
    with ctx:
        if _autotune_enabled():
            _bsa_fwd_autotuned[grid](*args, **meta)
        else:
            cfg = _static_config(D, q.dtype, block_size_q, block_size_k)
            _bsa_fwd_kernel[grid](*args, **meta, **cfg)
    return (out, lse) if return_lse else out
