"""Plain-PyTorch references for the kernels in :mod:`dit_attn.kernels`.

Each reference has the same signature and the same semantics as its Triton counterpart and is what the
public functions run on CPU tensors. They compute in fp32 (inputs are upcast), handle arbitrary lengths
and empty rows (no listed key block, or every listed key masked by ``key_bias = -inf``: output 0 before
the epilogue, log-sum-exp ``-inf``), and never read a tensor value on the host (no ``.item()``), so they
are safe inside ``torch.compile`` too.

These are written for clarity and bounded memory, not for speed: the dense masked logits are built one
chunk of query blocks at a time.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

__all__ = [
    "BlockStats",
    "block_sparse_attention_reference",
    "block_stats_reference",
    "merge_attention_reference",
    "block_counts",
    "lut_to_block_mask",
]

# Upper bound on the number of fp32 logits materialised per chunk by the reference (256 MiB).
_REFERENCE_CHUNK_ELEMS = 1 << 26


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockStats(NamedTuple):
    """Per-block statistics of q, k and v (all fp32 except the counts).

    ``q_mean``/``q_mad`` are ``[B, H, ceil(Nq / block_size), D]``, ``k_mean``/``k_mad``/``v_mean`` are
    ``[B, H, ceil(Nk / block_size), D]``. ``*_mad`` is the element-wise mean absolute deviation from the block
    mean, ``mean_{i in block} |x_i - mean|``. ``q_count``/``k_count`` (int32, ``[nQ]``/``[nK]``) hold the number
    of valid tokens of each block: ``block_size`` except for a partial last block.
    """

    q_mean: torch.Tensor
    k_mean: torch.Tensor
    v_mean: torch.Tensor
    q_mad: torch.Tensor
    k_mad: torch.Tensor
    q_count: torch.Tensor
    k_count: torch.Tensor


def block_counts(n: int, block_size: int, device=None) -> torch.Tensor:
    """int32 ``[ceil(n / block_size)]``: number of valid tokens in each block of a length-``n`` sequence.

    Example::

        >>> from dit_attn.kernels import block_counts
        >>> counts = block_counts(40, block_size=16)
        >>> counts.tolist(), counts.dtype
        ([16, 16, 8], torch.int32)
    """
    nb = _cdiv(n, block_size)
    starts = torch.arange(nb, device=device, dtype=torch.int64) * block_size
    return (n - starts).clamp(max=block_size).to(torch.int32)


def lut_to_block_mask(block_index: torch.Tensor, block_count: torch.Tensor, num_key_blocks: int) -> torch.Tensor:
    """Dense boolean block mask ``[..., nQB, num_key_blocks]`` from a LUT.

    Entry ``j`` of ``block_index[..., i, :]`` is used iff ``j < block_count[..., i]``; entries outside
    ``[0, num_key_blocks)`` are ignored (they cover no key), exactly as in the kernel.

    Example::

        >>> import torch
        >>> from dit_attn.kernels import lut_to_block_mask
        >>> idx = torch.tensor([[2, 0, 1], [1, 7, 0]], dtype=torch.int32)  # 2 query blocks, up to 3 entries each
        >>> cnt = torch.tensor([2, 3], dtype=torch.int32)  # row 0 uses [2, 0]; row 1 [1, 7, 0] (7: no such block)
        >>> lut_to_block_mask(idx, cnt, num_key_blocks=3)
        tensor([[ True, False,  True],
                [ True,  True, False]])
    """
    block_index, block_count = torch.broadcast_tensors(block_index, block_count.unsqueeze(-1))
    block_count = block_count[..., 0]
    max_blocks = block_index.shape[-1]
    idx = block_index.to(torch.int64)
    valid = torch.arange(max_blocks, device=idx.device) < block_count.to(torch.int64).unsqueeze(-1)
    valid = valid & (idx >= 0) & (idx < num_key_blocks)
    # Invalid entries are sent to a dump column that is dropped afterwards.
    idx = torch.where(valid, idx, torch.full_like(idx, num_key_blocks))
    mask = torch.zeros(*idx.shape[:-1], num_key_blocks + 1, dtype=torch.bool, device=idx.device)
    mask.scatter_(-1, idx, True)
    return mask[..., :num_key_blocks]


def _check_attention_args(q, k, v, block_index, block_count, block_size_q, block_size_k):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, N, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, H or D")
    if block_size_q < 1 or block_size_k < 1:
        raise ValueError("block sizes must be positive")
    nqb = _cdiv(q.shape[2], block_size_q)
    if block_index.dim() != 4 or block_index.shape[2] != nqb:
        raise ValueError(
            f"block_index must be [B, H, ceil(Nq / block_size_q) = {nqb}, max_blocks] (B, H may be 1); "
            f"got {tuple(block_index.shape)}"
        )
    if block_count.dim() != 3 or block_count.shape[2] != nqb:
        raise ValueError(f"block_count must be [B, H, {nqb}] (B, H may be 1); got {tuple(block_count.shape)}")


def block_sparse_attention_reference(
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
    """Reference for :func:`dit_attn.kernels.block_sparse_attention` (fp32 math, same semantics).

    Example::

        >>> import torch
        >>> from dit_attn.kernels import block_sparse_attention_reference
        >>> q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
        >>> idx = torch.arange(3, dtype=torch.int32).expand(1, 2, 3, 3)   # every query block sees all 3 key blocks
        >>> cnt = torch.full((1, 2, 3), 3, dtype=torch.int32)
        >>> out, lse = block_sparse_attention_reference(q, k, v, idx, cnt, block_size_q=16, block_size_k=16,
        ...                                             return_lse=True)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
        True
    """
    _check_attention_args(q, k, v, block_index, block_count, block_size_q, block_size_k)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    nqb = _cdiv(Nq, block_size_q)
    nkb = _cdiv(Nk, block_size_k)
    if scale is None:
        scale = D ** -0.5
    dev = q.device
    f32 = torch.float32

    block_mask = lut_to_block_mask(block_index.expand(B, H, nqb, -1), block_count.expand(B, H, nqb), nkb)
    key_block_of = torch.arange(Nk, device=dev) // block_size_k  # [Nk]
    kf = k.to(f32)
    vf = v.to(f32)
    bias = None
    if key_bias is not None:
        bias = key_bias.to(f32)
        while bias.dim() < 3:
            bias = bias.unsqueeze(0)
        bias = bias.expand(B, H, Nk).unsqueeze(-2)  # [B, H, 1, Nk]
    rs = None if rect_scale is None else rect_scale.to(f32).expand(B, H, nqb)
    ra = None if rect_add is None else rect_add.to(f32).expand(B, H, nqb, D)

    out = torch.empty(B, H, Nq, D, dtype=q.dtype, device=dev)
    lse = torch.empty(B, H, Nq, dtype=f32, device=dev)
    # Chunk over whole query blocks so that the [B, H, rows, Nk] logits stay bounded.
    rows = max(1, _REFERENCE_CHUNK_ELEMS // max(1, B * H * Nk)) // block_size_q * block_size_q
    rows = max(rows, block_size_q)
    for r0 in range(0, Nq, rows):
        r1 = min(Nq, r0 + rows)
        qblk = torch.arange(r0, r1, device=dev) // block_size_q  # [rows]
        tok_mask = block_mask[:, :, qblk][..., key_block_of]  # [B, H, rows, Nk]
        logits = torch.matmul(q[:, :, r0:r1].to(f32), kf.transpose(-1, -2)) * scale
        if bias is not None:
            logits = logits + bias
        logits = logits.masked_fill(~tok_mask, float("-inf"))
        row_lse = torch.logsumexp(logits, dim=-1)  # -inf for empty rows
        m = torch.where(torch.isfinite(row_lse), row_lse, torch.zeros_like(row_lse))
        p = torch.exp(logits - m.unsqueeze(-1))  # exactly 0 for masked keys and empty rows
        o = torch.matmul(p, vf)
        if rs is not None:
            o = o * rs[:, :, qblk].unsqueeze(-1)
        if ra is not None:
            o = o + ra[:, :, qblk]
        out[:, :, r0:r1] = o.to(q.dtype)
        lse[:, :, r0:r1] = row_lse
    if return_lse:
        return out, lse
    return out


def block_stats_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int = 128) -> BlockStats:
    """Reference for :func:`dit_attn.kernels.block_stats`: per-block means of q, k, v and the mean absolute
    deviation of q and k from their block mean, in fp32; a partial last block averages over its valid tokens.

    Example::

        >>> import torch
        >>> from dit_attn.kernels import block_stats_reference
        >>> q, k, v = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33, 16)
        >>> st = block_stats_reference(q, k, v, block_size=16)
        >>> st.q_mean.shape, st.k_mean.shape, st.k_count.tolist()
        (torch.Size([1, 2, 3, 16]), torch.Size([1, 2, 3, 16]), [16, 16, 1])
        >>> torch.allclose(st.q_mean[:, :, 2], q[:, :, 32:].mean(2))
        True
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, H, N, D]")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if block_size < 1:
        raise ValueError("block_size must be positive")

    def stats(x: torch.Tensor, with_mad: bool):
        B, H, N, D = x.shape
        nb = _cdiv(N, block_size)
        pad = nb * block_size - N
        xf = torch.nn.functional.pad(x.to(torch.float32), (0, 0, 0, pad)).view(B, H, nb, block_size, D)
        valid = (torch.arange(nb * block_size, device=x.device) < N).view(nb, block_size, 1)
        cnt = block_counts(N, block_size, x.device)
        denom = cnt.to(torch.float32).clamp(min=1).view(nb, 1)
        mean = xf.sum(3) / denom
        mad = None
        if with_mad:
            dev = (xf - mean.unsqueeze(3)).abs() * valid
            mad = dev.sum(3) / denom
        return mean, mad, cnt

    q_mean, q_mad, q_cnt = stats(q, True)
    k_mean, k_mad, k_cnt = stats(k, True)
    v_mean, _, _ = stats(v, False)
    return BlockStats(q_mean, k_mean, v_mean, q_mad, k_mad, q_cnt, k_cnt)


def merge_attention_reference(out_a, lse_a, out_b, lse_b):
    """Reference for :func:`dit_attn.kernels.merge_attention`, written independently via ``logaddexp``.

    ``lse = logaddexp(lse_a, lse_b)``, ``out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b`` in fp32;
    rows with ``lse_a = lse_b = -inf`` give ``out = 0`` and ``lse = -inf``. Returns ``(out, lse)``.

    Example (attention over two halves of the keys, merged, equals attention over all keys)::

        >>> import torch
        >>> from dit_attn.kernels import merge_attention_reference
        >>> q, k, v = torch.randn(1, 1, 8, 16), torch.randn(1, 1, 20, 16), torch.randn(1, 1, 20, 16)
        >>> def attn(k, v):
        ...     s = q @ k.transpose(-1, -2) / 4.0  # scale D ** -0.5
        ...     return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
        >>> out, lse = merge_attention_reference(*attn(k[:, :, :7], v[:, :, :7]), *attn(k[:, :, 7:], v[:, :, 7:]))
        >>> torch.allclose(out, attn(k, v)[0], atol=1e-5), torch.allclose(lse, attn(k, v)[1], atol=1e-5)
        (True, True)
        >>> empty = torch.full((1, 1, 8), float("-inf"))  # a part with no keys contributes nothing
        >>> torch.equal(merge_attention_reference(out, lse, torch.zeros_like(out), empty)[0], out)
        True
    """
    la = lse_a.to(torch.float32)
    lb = lse_b.to(torch.float32)
    lse = torch.logaddexp(la, lb)
    empty = torch.isneginf(lse)
    lse_safe = torch.where(empty, torch.zeros_like(lse), lse)
    wa = torch.where(torch.isneginf(la), torch.zeros_like(la), torch.exp(la - lse_safe)).unsqueeze(-1)
    wb = torch.where(torch.isneginf(lb), torch.zeros_like(lb), torch.exp(lb - lse_safe)).unsqueeze(-1)
    zero = torch.zeros((), dtype=torch.float32, device=out_a.device)
    out = torch.where(wa > 0, wa * out_a.to(torch.float32), zero) + torch.where(wb > 0, wb * out_b.to(torch.float32), zero)
    return out.to(out_a.dtype), lse
