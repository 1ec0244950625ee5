"""Achieved density of rectified sparse attention, and why it differs from ``1 - sparsity``.

``sparsity`` only sets the floor ``k_min = floor((1 - sparsity) · nVB)`` of visual blocks per query block. What the
kernel computes is that floor or more: the ``tau`` rule may rank more blocks, and the forced sets (3D neighbours,
the first-frame rule, text blocks) are computed whatever the estimate says. :class:`DensityRecord` (one per call,
``RectifiedSparse(track_density=True)``) keeps the split as a device tensor; :func:`density_report` reads them
(the one host sync) and gives per layer the requested density next to the achieved one with the breakdown
(:data:`dit_attn.sparse.selection.DENSITY_PARTS`).

``python -m dit_attn.bench.sparse_density`` measures it on CPU at real shapes (:mod:`dit_attn.bench.sparse_density`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .selection import DENSITY_PARTS

__all__ = ["DensityRecord", "density_report", "density_table"]


class DensityRecord(NamedTuple):
    layer: int | None
    step: int | None
    sparsity: float
    n_vblocks: int
    n_tblocks: int
    k_min: int
    parts: torch.Tensor  # fp32 [len(DENSITY_PARTS)] on the call's device (sums to the call's density)


def density_report(records) -> list[dict]:
    """Per layer (``None`` = calls without a layer index): ``calls``, ``requested`` (``1 - sparsity``),
    ``floor`` (``(k_min + nTB) / (nVB + nTB)``, what ``k_min`` plus the always-computed text blocks give),
    ``achieved`` (mean computed fraction of the key blocks of the visual query blocks) and ``parts`` (achieved,
    split into :data:`DENSITY_PARTS`; they sum to ``achieved``). ``records``: a control's ``density_details`` or
    the control itself. Reads the device tensors once.

    Example::

        >>> import torch, dit_attn
        >>> from dit_attn.sparse import make_layout, sparse_attention
        >>> from dit_attn.sparse.density import density_report
        >>> c = dit_attn.RectifiedSparse(sparsity=0.75, block_size=16, track_density=True)
        >>> q, k, v = (torch.randn(1, 110, 2, 16) for _ in range(3))
        >>> layout = make_layout(110, 2, 16, 1, grid=(2, 5, 10), vis=(0, 100), text=(100, 110))
        >>> _ = sparse_attention(c, q, k, v, layout)
        >>> row = density_report(c)[0]
        >>> row["requested"], round(sum(row["parts"].values()), 6) == round(row["achieved"], 6)
        (0.25, True)
    """
    records = getattr(records, "density_details", records)
    if not records:
        return []
    parts = torch.stack([r.parts.float().cpu() if r.parts.device.type != "cpu" else r.parts.float()
                         for r in records]).tolist()
    by_layer: dict = {}
    for r, p in zip(records, parts):
        by_layer.setdefault(r.layer, []).append((r, p))
    rows = []
    for layer in sorted(by_layer, key=lambda x: (x is None, x if x is not None else 0)):
        group = by_layer[layer]
        n = len(group)
        mean_parts = {name: sum(p[i] for _, p in group) / n for i, name in enumerate(DENSITY_PARTS)}
        rows.append({
            "layer": layer, "calls": n,
            "requested": sum(1.0 - r.sparsity for r, _ in group) / n,
            "floor": sum((r.k_min + r.n_tblocks) / (r.n_vblocks + r.n_tblocks) for r, _ in group) / n,
            "achieved": sum(mean_parts.values()),
            "parts": mean_parts,
        })
    return rows


def density_table(rows: list[dict]) -> str:
    """Markdown table of :func:`density_report` rows."""
    head = ("| layer | calls | requested 1 - sparsity | k_min + text floor | achieved | "
            + " | ".join(DENSITY_PARTS) + " |")
    lines = [head, "|" + "---|" * (5 + len(DENSITY_PARTS))]
    for r in rows:
        lines.append(f"| {'-' if r['layer'] is None else r['layer']} | {r['calls']} | {r['requested']:.3f} | "
                     f"{r['floor']:.3f} | {r['achieved']:.3f} | "
                     + " | ".join(f"{r['parts'][p]:.3f}" for p in DENSITY_PARTS) + " |")
    return "\n".join(lines)
