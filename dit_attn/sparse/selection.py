"""Critical-block selection for rectified sparse attention, on the attention's device (steps 1-7).

Everything is tensor code (einsum, softmax, sort, cumsum, scatter): no ``.item()``, no Python loop over blocks,
static output shapes, so it runs inside CUDA graphs and ``torch.compile(fullgraph=True)``. Block statistics come
from :func:`dit_attn.kernels.block_stats` (one Triton pass on CUDA).

Per batch row, head and query block I (blocks of ``B`` visual tokens along the Gilbert order):

1. pooled means ``q̄_I, k̄_J, v̄_J`` (visual keys only; a partial last block averages its valid tokens);
2. pooled logits ``s_IJ = q̄_I·k̄_J·scale`` and, for each valid text key, ``s_It = q̄_I·k_t·scale`` (text keys
   are not pooled: "isolated");
3. IPAR mass: one fp32 softmax over ``[s_IJ + log n_J, s_It]`` (``n_J`` = valid tokens of block J, the block's
   multiplicity); ``P̂_IJ`` visual, ``P̂_IT`` = sum of the text columns;
4. ``n_I = max(#{cumsum of the sorted row [P̂_I1..P̂_InVB, P̂_IT] ≤ tau} + 1, k_min)`` with
   ``k_min = floor((1 - sparsity) · nVB)``; the critical set is the ``n_I`` visual blocks of largest ``P̂``
   (the text entry counts towards tau but takes no slot: text blocks are always computed), plus the forced
   blocks (3D neighbours, Wan first-frame pairs), plus all text blocks;
5-7. GAPR test, R and C (:mod:`dit_attn.sparse.rectify`).

Reference-code choices (``RectifiedSparse(compat="reference")``, see ``docs/rectified_sparse.md``):
``text_slot=True`` ranks the text entry together with the visual blocks, so text may take one of the ``n_I``
slots (one visual block fewer when the text mass is among the largest); ``pool_padded=True`` pools a partial
last block as if padded with zero tokens to ``B`` (means divided by ``B``, multiplicity ``B`` for every block).

Why the achieved density differs from ``1 - sparsity``: :func:`density_breakdown` splits each computed
(query block, key block) pair into text blocks, neighbours, first-frame pairs (beyond the neighbours), blocks the
``tau`` rule picked (beyond the forced ones) and blocks only ``k_min`` added.

The output is the kernel's LUT: ``block_index`` int32 ``[B, H, nQB, nVB + nTB]`` (selected blocks first, then
the others, which the kernel ignores) and ``block_count`` int32 ``[B, H, nQB]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from dit_attn.kernels import block_stats

from .rectify import gapr_untrusted, rectification

__all__ = ["VARIANTS", "DENSITY_PARTS", "Selection", "select_blocks", "mask_to_lut", "k_min_for",
           "density_breakdown"]

# full: R + C with the gain-aware test; rc: R + C, every skipped block compensated; r: R only; block: plain
# block-sparse (no rectification).
VARIANTS = ("full", "rc", "r", "block")


class Selection(NamedTuple):
    block_index: torch.Tensor  # int32 [B, H, nQB, nVB + nTB]
    block_count: torch.Tensor  # int32 [B, H, nQB]
    rect_scale: torch.Tensor | None  # fp32 [B, H, nQB]
    rect_add: torch.Tensor | None  # fp32 [B, H, nQB, D]
    critical: torch.Tensor  # bool [B, H, nQB, nVB]: computed visual blocks (S without text)
    untrusted: torch.Tensor  # bool [B, H, nQB, nVB]: U (skipped, not compensated)
    p_vis: torch.Tensor  # fp32 [B, H, nQB, nVB]
    p_text: torch.Tensor | None  # fp32 [B, H, nQB]
    # How the ranked set was chosen (for density_breakdown; no extra work): sort indices of the ranked row
    # ([B, H, nQB, nVB], or nVB + 1 with the text entry last when text takes a slot), the tau count and the
    # final count n_I (int64 [B, H, nQB], both counting the text entry when it takes a slot).
    order: torch.Tensor | None = None
    n_tau: torch.Tensor | None = None
    n_sel: torch.Tensor | None = None


# The parts of the achieved density, in the order density_breakdown returns them.
DENSITY_PARTS = ("text", "neighbors", "first_frame", "tau", "k_min")


def k_min_for(sparsity: float, n_vblocks: int, reference: bool = False) -> int:
    """``floor((1 - sparsity) · nVB)``, at least 1 (the +1 of the tau rule guarantees one block anyway).

    A tiny epsilon guards against ``(1 - 0.8) * 10 = 1.9999999999999996``; ``reference=True`` truncates without
    it, as the Rectified SpaAttn code does (``int((1 - sparsity) * nVB)``).

    >>> k_min_for(0.8, 10), k_min_for(0.8, 10, reference=True)
    (2, 1)
    """
    if reference:
        return int((1.0 - sparsity) * n_vblocks)
    return max(1, int(math.floor((1.0 - sparsity) * n_vblocks + 1e-9)))


def mask_to_lut(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``[..., nKB]`` -> (``block_index`` int32 ``[..., nKB]`` with the selected ids first in increasing
    order, ``block_count`` int32 ``[...]``). A stable partition by cumulative sums (no sort, no host read)."""
    m = mask.to(torch.int32)
    count = m.sum(-1, dtype=torch.int32)
    pos_sel = torch.cumsum(m, -1) - 1
    pos_rest = count.unsqueeze(-1) + torch.cumsum(1 - m, -1) - 1
    pos = torch.where(mask, pos_sel, pos_rest).to(torch.int64)
    ids = torch.arange(mask.shape[-1], device=mask.device, dtype=torch.int32).expand_as(m)
    index = torch.empty_like(m).scatter_(-1, pos, ids)
    return index, count


def select_blocks(
    q_vis: torch.Tensor,
    k_vis: torch.Tensor,
    v_vis: torch.Tensor,
    k_text: torch.Tensor | None,
    text_bias: torch.Tensor | None,
    forced: torch.Tensor | None,
    *,
    block_size: int,
    tau: float,
    k_min: int,
    scale: float,
    variant: str = "full",
    text_slot: bool = False,
    pool_padded: bool = False,
) -> Selection:
    """Pooled estimate, critical selection, GAPR and rectification for one attention call.

    Args:
        q_vis, k_vis, v_vis: ``[B, H, Nv, D]`` visual queries/keys/values in block order (any strides).
        k_text: ``[B, H, Nt, D]`` text keys (own tokens, not pooled), or None.
        text_bias: additive logit bias of the text keys broadcastable to ``[B, H, Nt]`` (``-inf`` = padded
            text key, excluded from the estimate), or None.
        forced: bool ``[nVB, nVB]`` (broadcastable) blocks always computed (3D neighbours, first-frame pairs).
        block_size, tau, k_min, scale: see the module docs; ``scale`` is the logit scale of the attention.
        variant: one of :data:`VARIANTS`.
        text_slot: the text entry competes for the ``n_I`` slots (reference code) instead of taking none.
        pool_padded: pool a partial last visual block as if zero-padded to ``block_size`` (reference code)
            instead of averaging its valid tokens.

    Returns a :class:`Selection` (LUT with text blocks ``nVB .. nVB + nTB - 1`` always listed).

    Example::

        >>> import torch
        >>> from dit_attn.sparse.selection import select_blocks
        >>> q, k, v = (torch.randn(1, 2, 100, 16) for _ in range(3))
        >>> sel = select_blocks(q, k, v, None, None, None, block_size=16, tau=0.3, k_min=2, scale=0.25)
        >>> sel.block_index.shape, bool((sel.block_count >= 2).all())
        (torch.Size([1, 2, 7, 7]), True)
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    if pool_padded and q_vis.shape[2] % block_size:
        pad = (0, 0, 0, block_size - q_vis.shape[2] % block_size)
        q_vis, k_vis, v_vis = (torch.nn.functional.pad(x, pad) for x in (q_vis, k_vis, v_vis))
    st = block_stats(q_vis, k_vis, v_vis, block_size)
    qm, km = st.q_mean, st.k_mean  # fp32
    n_vb = km.shape[2]
    logits = (qm @ km.transpose(-1, -2)) * scale + torch.log(st.k_count.to(torch.float32))
    if k_text is not None and k_text.shape[2] > 0:
        s_text = (qm @ k_text.float().transpose(-1, -2)) * scale
        if text_bias is not None:
            s_text = s_text + text_bias.float().unsqueeze(-2)
        lse = torch.logsumexp(torch.cat([logits, s_text], -1), -1, keepdim=True)
        p_vis = torch.exp(logits - lse)
        p_text = torch.exp(s_text - lse).sum(-1)
        n_tb = -(-k_text.shape[2] // block_size)
    else:
        p_vis = torch.softmax(logits, -1)
        p_text, n_tb = None, 0

    # Critical count: tau over the sorted row (text entry included), at least k_min visual blocks.
    row = p_vis if p_text is None else torch.cat([p_vis, p_text.unsqueeze(-1)], -1)
    sorted_row = torch.sort(row, dim=-1, descending=True, stable=True)
    csum = torch.cumsum(sorted_row.values, -1)
    if text_slot and p_text is not None:  # rank text with the visual blocks: it may take a slot
        n_entries, order = n_vb + 1, sorted_row.indices
    else:
        n_entries = n_vb
        order = sorted_row.indices if p_text is None else \
            torch.sort(p_vis, dim=-1, descending=True, stable=True).indices
    n_tau = ((csum <= tau).sum(-1) + 1).clamp(max=n_entries)
    n_sel = n_tau.clamp(min=k_min, max=n_entries)
    ranked = torch.arange(n_entries, device=p_vis.device) < n_sel.unsqueeze(-1)
    critical = torch.zeros_like(ranked).scatter_(-1, order, ranked)[..., :n_vb]
    if forced is not None:
        critical = critical | forced

    if variant == "full":
        untrusted = gapr_untrusted(qm, km, st.q_mad, st.k_mad) & ~critical
    else:
        untrusted = torch.zeros_like(critical)
    if variant == "block":
        r = c = None
    else:
        r, c = rectification(p_vis, p_text, st.v_mean, critical | untrusted, with_c=variant in ("full", "rc"))

    mask = critical
    if n_tb:
        mask = torch.cat([critical, critical.new_ones(*critical.shape[:-1], n_tb)], -1)
    index, count = mask_to_lut(mask)
    return Selection(index, count, r, c, critical, untrusted, p_vis, p_text, order, n_tau, n_sel)


def density_breakdown(sel: Selection, neighbors: torch.Tensor | None, first_frame: torch.Tensor | None,
                      n_tblocks: int) -> torch.Tensor:
    """fp32 ``[5]`` on the selection's device: the achieved density of ``sel`` split into :data:`DENSITY_PARTS`
    (fractions of the ``nVB + nTB`` key blocks, averaged over batch rows, heads and visual query blocks; they sum
    to ``block_count.mean() / (nVB + nTB)``). Tensor code only (no host read): read it when reporting.

    Each computed pair counts once, in this order: ``text`` (text blocks, always computed), ``neighbors`` (the
    forced 3D-neighbour table), ``first_frame`` (forced first-frame pairs not already neighbours), ``tau`` (blocks
    the ``tau`` rule ranked, not forced) and ``k_min`` (blocks only the ``k_min`` floor added, not forced).
    ``neighbors`` / ``first_frame``: the bool ``[nVB, nVB]`` forced tables passed to the selection, or None.

    Example::

        >>> import torch
        >>> from dit_attn.sparse.selection import density_breakdown, select_blocks
        >>> q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
        >>> sel = select_blocks(q, k, v, None, None, None, block_size=8, tau=0.3, k_min=4, scale=0.25)
        >>> parts = density_breakdown(sel, None, None, 0)
        >>> bool(torch.isclose(parts.sum(), sel.block_count.float().mean() / 8))
        True
    """
    n_vb = sel.critical.shape[-1]
    total = n_vb + n_tblocks
    n_entries = sel.order.shape[-1]
    rank = torch.empty_like(sel.order).scatter_(
        -1, sel.order, torch.arange(n_entries, device=sel.order.device).expand_as(sel.order))[..., :n_vb]
    by_tau = rank < sel.n_tau.unsqueeze(-1)
    by_rank = rank < sel.n_sel.unsqueeze(-1)
    zero = torch.zeros((), device=rank.device)
    forced = torch.zeros(n_vb, n_vb, dtype=torch.bool, device=rank.device)
    nb = ff = zero
    if neighbors is not None:
        forced = forced | neighbors.to(rank.device)
        nb = neighbors.sum(-1).float().mean()
    if first_frame is not None:
        ff = (first_frame.to(rank.device) & ~forced).sum(-1).float().mean()
        forced = forced | first_frame.to(rank.device)
    tau_part = (by_tau & ~forced).sum(-1).float().mean()
    kmin_part = (by_rank & ~by_tau & ~forced).sum(-1).float().mean()
    text = torch.full((), float(n_tblocks), device=rank.device)
    return torch.stack([text, nb, ff, tau_part, kmin_part]) / total
