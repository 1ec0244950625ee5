"""Achieved density of rectified sparse attention, and why it differs from ``1 - sparsity``.

``sparsity`` only sets the floor ``k_min = floor((1 - sparsity) · nVB)`` of visual blocks per query block. What the
kernel computes is that floor or more: the ``tau`` rule may rank more blocks, and the forced sets (3D neighbours,
the first-frame rule, text blocks) are computed whatever the estimate says. :class:`DensityRecord` (one per call,
``RectifiedSparse(track_density=True)``) keeps the split as a device tensor; :func:`density_report` reads them
(the one host sync) and gives per layer the requested density next to the achieved one with the breakdown
(:data:`dit_attn.sparse.selection.DENSITY_PARTS`).

``python -m dit_attn.sparse.density --shapes flux_1024,wan_480p,wan_720p --sparsity 0.8`` measures it on CPU at
real shapes with the selection code on random inputs: the forced parts are properties of the forced sets (exact,
input-independent); the ``tau`` / ``k_min`` parts depend on the inputs (on iid random q/k the pooled estimate is
nearly flat, so ``tau = 0.3`` ranks about 30 % of the blocks; trained attention is more peaked).
"""

from __future__ import annotations

import argparse
import json
from typing import NamedTuple

import torch

from .selection import DENSITY_PARTS

__all__ = ["DensityRecord", "density_report", "density_table", "forced_fractions", "shape_density"]


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


def forced_fractions(grid, block_size: int = 128, *, first_frame=True, compat=None, neighbors: bool = True,
                     n_text: int = 0) -> dict:
    """Fractions of the visual block pairs ``nVB x nVB`` forced by each rule (input-independent, exact):
    ``neighbors``, ``first_frame`` (the rule alone), ``first_frame_extra`` (beyond the neighbours) and ``union``.

    >>> f = forced_fractions((21, 30, 52), first_frame="leading", neighbors=False)
    >>> round(f["first_frame"], 5), f["n_vblocks"], f["first_frame_blocks"]
    (0.0022, 256, 12)
    """
    from dit_attn.controls.sparse import _forced_first_frame

    from .reorder import token_plan

    nv = grid[0] * grid[1] * grid[2]
    plan = token_plan(tuple(grid), (0, nv), (nv, nv + n_text) if n_text else None, nv + n_text, block_size, "cpu",
                      curve="width" if compat == "reference" else "longest")
    nb = plan.neighbors if neighbors else torch.zeros_like(plan.neighbors)
    ff = _forced_first_frame(plan, first_frame, grid)
    ff = torch.zeros_like(nb) if ff is None else ff
    return {"n_vblocks": plan.n_vblocks, "first_frame_blocks": int(ff.any(-1).sum()),
            "neighbors": float(nb.float().mean()), "first_frame": float(ff.float().mean()),
            "first_frame_extra": float((ff & ~nb).float().mean()), "union": float((ff | nb).float().mean())}


def shape_density(shape: str, sparsity: float, *, tau: float = 0.3, block_size: int = 128, heads: int = 2,
                  first_frame=None, compat=None, neighbors: bool = True, inputs: str = "random",
                  seed: int = 0) -> dict:
    """Requested vs achieved density of one :data:`dit_attn.sparse.bench.SHAPES` shape on CPU: one call of the
    selection on random q/k/v (``inputs="random"``: iid normal; ``"local"``: the speed benchmark's
    locality-biased inputs), ``heads`` heads. Returns the :func:`density_report` row plus the shape and settings."""
    import dit_attn
    from dit_attn.call import AttentionCall

    from .bench import SHAPES, shape_inputs, shape_layout

    grid, n_text, _, d = SHAPES[shape]
    layout = shape_layout(shape, heads=heads)
    q, k, v = shape_inputs(grid, n_text, heads, d, torch.float32, seed=seed, device="cpu",
                           local=inputs == "local")
    control = dit_attn.RectifiedSparse(sparsity=sparsity, tau=tau, block_size=block_size, neighbors=neighbors,
                                       first_frame=first_frame, compat=compat, track_density=True)
    control.prepare(AttentionCall(q, k, v, layout))
    row = density_report(control)[0]
    row.update(shape=shape, grid=list(grid), n_text=n_text, sparsity=sparsity, tau=tau, block_size=block_size,
               first_frame=first_frame, compat=compat, neighbors=neighbors, inputs=inputs)
    return row


def main(argv=None) -> list[dict]:
    from .bench import SHAPES

    ap = argparse.ArgumentParser(prog="python -m dit_attn.sparse.density", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="flux_1024,wan_480p,wan_720p", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--first-frame", default="default", help="default (None), true, false or leading")
    ap.add_argument("--compat", default=None, choices=[None, "reference"])
    ap.add_argument("--no-neighbors", action="store_true")
    ap.add_argument("--inputs", default="random", choices=["random", "local"])
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    ff = {"default": None, "true": True, "false": False, "leading": "leading"}[args.first_frame.lower()]
    rows = []
    for shape in [s for s in args.shapes.split(",") if s]:
        if shape not in SHAPES:
            ap.error(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        row = shape_density(shape, args.sparsity, tau=args.tau, heads=args.heads, first_frame=ff,
                            compat=args.compat, neighbors=not args.no_neighbors, inputs=args.inputs)
        rows.append(row)
        parts = ", ".join(f"{p} {row['parts'][p]:.3f}" for p in DENSITY_PARTS)
        print(f"{shape}: requested {row['requested']:.3f} (floor with text {row['floor']:.3f}), achieved "
              f"{row['achieved']:.3f} = {parts}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
