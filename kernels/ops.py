"""torch.library custom ops and the public, dispatching entry points.

``dit_attn::block_sparse_attention`` and ``dit_attn::block_stats`` are registered with fake (meta)
implementations, so ``torch.compile(fullgraph=True)`` traces through them without graph breaks. The op body
picks the implementation:

* CUDA tensors: the Triton kernel;
* CPU tensors: the plain-PyTorch reference, unless ``DIT_ATTN_KERNEL_IMPL=triton`` (then the Triton kernel,
  which on CPU needs ``TRITON_INTERPRET=1`` set before triton is imported);
* ``DIT_ATTN_KERNEL_IMPL=reference`` forces the reference on every device (debugging).

The Triton modules are imported lazily, so this package imports (and runs on CPU) without triton.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .reference import BlockStats, block_counts, block_sparse_attention_reference, block_stats_reference

__all__ = ["block_sparse_attention", "block_stats"]

_IMPL_ENV = "DIT_ATTN_KERNEL_IMPL"


def _use_triton(t: torch.Tensor) -> bool:
    impl = os.environ.get(_IMPL_ENV, "").strip().lower()
    if impl in ("", "auto"):
        return t.device.type == "cuda"
    if impl == "reference":
        return False
    if impl == "triton":
        if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise RuntimeError(
                f"{_IMPL_ENV}=triton on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
                "before triton is imported"
            )
        return True
    raise ValueError(f"{_IMPL_ENV} must be 'auto', 'reference' or 'triton'; got {impl!r}")


# ----------------------------------------------------------------------------------------------------------
# block_sparse_attention
# ----------------------------------------------------------------------------------------------------------

@torch.library.custom_op("dit_attn::block_sparse_attention", mutates_args=())
def _block_sparse_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_index: torch.Tensor,
    block_count: torch.Tensor,
    block_size_q: int,
    block_size_k: int,
    key_bias: Optional[torch.Tensor],
    scale: Optional[float],
    rect_scale: Optional[torch.Tensor],
    rect_add: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    kwargs = dict(
        block_size_q=block_size_q, block_size_k=block_size_k, key_bias=key_bias, scale=scale,
        rect_scale=rect_scale, rect_add=rect_add, return_lse=True,
    )
    if _use_triton(q):
        from .block_sparse import block_sparse_attention_triton

        return block_sparse_attention_triton(q, k, v, block_index, block_count, **kwargs)
    return block_sparse_attention_reference(q, k, v, block_index, block_count, **kwargs)


@_block_sparse_attention_op.register_fake
def _block_sparse_attention_fake(q, k, v, block_index, block_count, block_size_q, block_size_k, key_bias, scale,
                                 rect_scale, rect_add):
    B, H, Nq, D = q.shape
    torch._check(k.dim() == 4 and v.dim() == 4, lambda: "k and v must be [B, H, Nk, D]")
    return q.new_empty(B, H, Nq, D), q.new_empty(B, H, Nq, dtype=torch.float32)


def block_sparse_attention(
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
):
    """Block-sparse softmax attention driven by a LUT, with key bias, LSE and a rectification epilogue.

    Args:
        q: ``[B, H, Nq, D]``; k, v: ``[B, H, Nk, D]``; fp32, fp16 or bf16 (one dtype); any lengths, any strides.
            The Triton kernel supports D in {16, 32, 64, 128} (other D are padded to a power of two, slower).
        block_index: int32 ``[B, H, ceil(Nq / block_size_q), max_blocks]`` (B and H may be 1): for each query
            block, the key blocks (of ``block_size_k`` keys) it attends to. Entries must be distinct; entries at
            positions ``>= block_count`` are ignored, as are block ids outside ``[0, ceil(Nk / block_size_k))``.
        block_count: int32 ``[B, H, ceil(Nq / block_size_q)]`` (B and H may be 1): number of valid entries.
        block_size_q, block_size_k: selection granularity (default 128 x 128). The Triton kernel tiles blocks
            internally, so non-powers of two work (at some cost); padded tails are masked, never asserted.
        key_bias: optional additive per-key logit bias ``[B, H, Nk]`` broadcastable (e.g. ``[1, 1, Nk]`` or
            ``[B, 1, Nk]``); use ``-inf`` to mask keys (padding) and ``log w`` to reweight them.
        scale: logit scale, default ``D ** -0.5``.
        rect_scale: optional ``[B, H, ceil(Nq / block_size_q)]`` per-query-block scale R (broadcastable).
        rect_add: optional ``[B, H, ceil(Nq / block_size_q), D]`` per-query-block offset C (broadcastable).
            The fused fp32 epilogue gives ``out = R * softmax_attention + C`` (Rectified SpaAttn).
        return_lse: also return the natural-log log-sum-exp of the computed logits (fp32 ``[B, H, Nq]``,
            independent of the epilogue), for :func:`merge_attention` and context parallelism.

    Rows without any (finite) key give 0 (then ``rect_add`` after the epilogue) and ``lse = -inf``, no NaN.
    CUDA tensors run the Triton kernel; CPU tensors run the fp32 reference (see module docs for
    ``DIT_ATTN_KERNEL_IMPL``). A ``torch.library`` custom op underneath: ``torch.compile(fullgraph=True)``
    traces through it, and nothing here synchronises with the host. Forward only (no autograd).

    Returns:
        ``out`` ``[B, H, Nq, D]`` in q's dtype, or ``(out, lse)`` if ``return_lse``.

    Example::

        >>> import torch
        >>> from dit_attn.kernels import block_sparse_attention
        >>> q, k, v = (torch.randn(2, 2, 40, 16) for _ in range(3))
        >>> idx = torch.tensor([0, 1, 2], dtype=torch.int32).expand(2, 2, 3, 3)   # 3 query x 3 key blocks of 16
        >>> cnt = torch.full((2, 2, 3), 3, dtype=torch.int32)                      # full LUT = dense attention
        >>> out = block_sparse_attention(q, k, v, idx, cnt, block_size_q=16, block_size_k=16)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
        True
        >>> cnt = torch.tensor([3, 1, 0], dtype=torch.int32).expand(2, 2, 3)       # block 2 sees nothing
        >>> out, lse = block_sparse_attention(q, k, v, idx, cnt, block_size_q=16, block_size_k=16, return_lse=True)
        >>> bool((out[:, :, 32:] == 0).all()), bool(torch.isneginf(lse[:, :, 32:]).all())
        (True, True)
    """
    out, lse = _block_sparse_attention_op(
        q, k, v, block_index, block_count, block_size_q, block_size_k, key_bias,
        None if scale is None else float(scale), rect_scale, rect_add,
    )
    if return_lse:
        return out, lse
    return out


# ----------------------------------------------------------------------------------------------------------
# block_stats
# ----------------------------------------------------------------------------------------------------------

@torch.library.custom_op("dit_attn::block_stats", mutates_args=())
def _block_stats_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if _use_triton(q):
        from .block_stats_kernel import block_stats_triton

        st = block_stats_triton(q, k, v, block_size)
    else:
        st = block_stats_reference(q, k, v, block_size)
    return st.q_mean, st.k_mean, st.v_mean, st.q_mad, st.k_mad


@_block_stats_op.register_fake
def _block_stats_fake(q, k, v, block_size):
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    nqb = (Nq + block_size - 1) // block_size
    nkb = (Nk + block_size - 1) // block_size
    f = dict(dtype=torch.float32)
    return (q.new_empty(B, H, nqb, D, **f), q.new_empty(B, H, nkb, D, **f), q.new_empty(B, H, nkb, D, **f),
            q.new_empty(B, H, nqb, D, **f), q.new_empty(B, H, nkb, D, **f))


def block_stats(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int = 128) -> BlockStats:
    """Per-block statistics of q, k, v in one pass (fp32): means and mean absolute deviations.

    q ``[B, H, Nq, D]``, k and v ``[B, H, Nk, D]`` (Nq and Nk may differ; any dtype, any strides). Blocks are
    consecutive runs of ``block_size`` tokens; the last block may be partial and then averages over its valid
    tokens only. Returns a :class:`BlockStats` named tuple ``(q_mean, k_mean, v_mean, q_mad, k_mad, q_count,
    k_count)``: means and MADs ``[B, H, nBlocks, D]`` fp32 with ``mad = mean_i |x_i - mean|`` (element-wise),
    counts int32 ``[nBlocks]``. CUDA: one Triton launch; CPU: the reference. Custom op, compile-safe.

    Example::

        >>> import torch
        >>> from dit_attn.kernels import block_stats
        >>> q, k, v = torch.randn(2, 3, 300, 64), torch.randn(2, 3, 250, 64), torch.randn(2, 3, 250, 64)
        >>> st = block_stats(q, k, v, block_size=128)
        >>> st.q_mean.shape, st.k_mad.shape, st.k_count.tolist()
        (torch.Size([2, 3, 3, 64]), torch.Size([2, 3, 2, 64]), [128, 122])
    """
    q_mean, k_mean, v_mean, q_mad, k_mad = _block_stats_op(q, k, v, int(block_size))
    return BlockStats(q_mean, k_mean, v_mean, q_mad, k_mad,
                      block_counts(q.shape[2], block_size, q.device), block_counts(k.shape[2], block_size, q.device))
