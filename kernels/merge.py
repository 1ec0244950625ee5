"""Exact merge of two attention results computed over disjoint key sets."""

from __future__ import annotations

import torch

__all__ = ["merge_attention"]


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Merge two softmax-attention results over disjoint key sets into the result over their union.

    ``out_*`` are ``[..., N, D]`` (any float dtype) and ``lse_*`` the matching natural-log log-sum-exp
    ``[..., N]`` (as returned by ``block_sparse_attention(..., return_lse=True)``, *without* a rectification
    epilogue: apply ``rect_scale``/``rect_add`` after merging). With ``m = max(lse_a, lse_b)``::

        w_a = exp(lse_a - m), w_b = exp(lse_b - m)
        out = (w_a * out_a + w_b * out_b) / (w_a + w_b),   lse = m + log(w_a + w_b)

    computed in fp32. A side with ``lse = -inf`` (no key) contributes nothing, whatever its output holds;
    rows empty on both sides give ``out = 0`` and ``lse = -inf`` (no NaN). Returns ``(out, lse)`` with ``out``
    in ``out_a.dtype`` and ``lse`` in fp32. Pure torch: works on any device and inside ``torch.compile``.

    Example::

        >>> import torch
        >>> from dit_attn.kernels import merge_attention
        >>> q, k, v = torch.randn(1, 1, 8, 16), torch.randn(1, 1, 20, 16), torch.randn(1, 1, 20, 16)
        >>> def attn(k, v):
        ...     s = q @ k.transpose(-1, -2) / 4.0
        ...     return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
        >>> out, lse = merge_attention(*attn(k[:, :, :7], v[:, :, :7]), *attn(k[:, :, 7:], v[:, :, 7:]))
        >>> torch.allclose(out, attn(k, v)[0], atol=1e-5)
        True
    """
    if out_a.shape != out_b.shape or lse_a.shape != lse_b.shape or out_a.shape[:-1] != lse_a.shape:
        raise ValueError(
            f"merge_attention: shapes out_a {tuple(out_a.shape)}, lse_a {tuple(lse_a.shape)}, "
            f"out_b {tuple(out_b.shape)}, lse_b {tuple(lse_b.shape)} do not match"
        )
    la = lse_a.to(torch.float32)
    lb = lse_b.to(torch.float32)
    m = torch.maximum(la, lb)
    # Both sides empty: m = -inf; shift by 0 instead so that no (-inf) - (-inf) appears.
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    wa = torch.exp(la - m)  # exactly 0 where lse_a = -inf
    wb = torch.exp(lb - m)
    den = wa + wb
    zero = torch.zeros((), dtype=torch.float32, device=out_a.device)
    num = torch.where(wa.unsqueeze(-1) > 0, wa.unsqueeze(-1) * out_a.to(torch.float32), zero)
    num = num + torch.where(wb.unsqueeze(-1) > 0, wb.unsqueeze(-1) * out_b.to(torch.float32), zero)
    out = num / torch.where(den > 0, den, torch.ones_like(den)).unsqueeze(-1)
    lse = m + torch.log(den)  # log(0) = -inf for rows empty on both sides
    return out.to(out_a.dtype), lse
