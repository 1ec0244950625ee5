"""Rectification of block-sparse attention (Rectified SpaAttn, arXiv 2511.19835).

Steps 5-7 of the algorithm in :mod:`dit_attn.sparse.selection`.

Exact attention of query i is ``o_i = sum_J P_iJ o_iJ`` (``P_iJ`` = its softmax mass on key block J, ``o_iJ`` =
its attention output within J). Sparse softmax over the critical set S renormalises to ``sum_S P = 1``, which
inflates every computed weight by ``1 / sum_S P``. With the pooled estimate ``P_iJ ≈ P̂_IJ`` and, for skipped
blocks, ``o_iJ ≈ v̄_J``:

* **R** ``= sum_{J in S ∪ U} P̂_IJ`` (text mass included) scales the sparse output back;
* **C** ``= sum_{J not in S ∪ U} P̂_IJ v̄_J`` adds the pooled contribution of skipped blocks;
* **U** (GAPR, gain-aware test) = skipped blocks whose pooled logit is not trustworthy: the pooled dot
  product ``gain = |q̄·k̄|`` does not exceed the error bound ``|Δq·k̄| + |q̄·Δk|`` built from the blocks' mean
  absolute deviations. Their mass stays in R (given to the computed tokens) but not in C.

All in fp32, tensors only (no host reads).
"""

from __future__ import annotations

import torch

__all__ = ["gapr_untrusted", "rectification"]


def gapr_untrusted(q_mean: torch.Tensor, k_mean: torch.Tensor, q_mad: torch.Tensor, k_mad: torch.Tensor) -> torch.Tensor:
    """bool ``[B, H, nQB, nKB]``: True where the pooled estimate of block pair (I, J) is **not** trusted,
    i.e. not ``|q̄_I·k̄_J| > |Δq_I·k̄_J| + |q̄_I·Δk_J|`` (unscaled dot products, fp32).

    Example::

        >>> import torch
        >>> qm, km = torch.ones(1, 1, 1, 4), torch.ones(1, 1, 2, 4)
        >>> gapr_untrusted(qm, km, torch.zeros(1, 1, 1, 4), torch.tensor([[[[0.] * 4, [2.] * 4]]])).tolist()
        [[[[False, True]]]]
    """
    qm, km, qd, kd = (x.float() for x in (q_mean, k_mean, q_mad, k_mad))
    gain = (qm @ km.transpose(-1, -2)).abs()
    err = (qd @ km.transpose(-1, -2)).abs() + (qm @ kd.transpose(-1, -2)).abs()
    return ~(gain > err)


def rectification(p_vis: torch.Tensor, p_text: torch.Tensor | None, v_mean: torch.Tensor, kept: torch.Tensor,
                  with_c: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(R, C)`` from the pooled masses.

    Args:
        p_vis: fp32 ``[B, H, nQB, nKB]`` pooled mass ``P̂_IJ`` of the visual key blocks.
        p_text: fp32 ``[B, H, nQB]`` aggregated text mass ``P̂_IT`` (always computed), or None.
        v_mean: fp32 ``[B, H, nKB, D]`` block means of the values.
        kept: bool ``[B, H, nQB, nKB]``: ``S ∪ U`` (blocks whose mass R keeps).
        with_c: also return C (else None).

    Returns ``R`` ``[B, H, nQB]`` and ``C`` ``[B, H, nQB, D]`` (fp32).
    """
    keep = kept.to(p_vis.dtype)
    r = (p_vis * keep).sum(-1)
    if p_text is not None:
        r = r + p_text
    c = (p_vis * (1.0 - keep)) @ v_mean.float() if with_c else None
    return r, c
