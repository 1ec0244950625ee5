"""Requested vs achieved density of rectified sparse attention at real model shapes, measured on CPU.

``python -m dit_attn.bench.sparse_density --shapes flux_1024,wan_480p,wan_720p --sparsity 0.8`` runs the selection
code on random inputs at each shape (:data:`dit_attn.bench.sparse_speed.SHAPES`) and splits the achieved density
with :func:`dit_attn.sparse.density.density_report`: the forced parts are properties of the forced sets (exact,
input-independent, also given by :func:`forced_fractions`); the ``tau`` / ``k_min`` parts depend on the inputs (on
iid random q/k the pooled estimate is nearly flat, so ``tau = 0.3`` ranks about 30 % of the blocks; trained
attention is more peaked).
"""

from __future__ import annotations

import argparse
import json

import torch

import dit_attn
from dit_attn.call import AttentionCall
from dit_attn.controls.sparse import _forced_first_frame
from dit_attn.sparse.density import density_report
from dit_attn.sparse.reorder import token_plan
from dit_attn.sparse.selection import DENSITY_PARTS

from .sparse_speed import SHAPES, shape_inputs, shape_layout


def forced_fractions(grid, block_size: int = 128, *, first_frame=True, compat=None, neighbors: bool = True,
                     n_text: int = 0) -> dict:
    """Fractions of the visual block pairs ``nVB x nVB`` forced by each rule (input-independent, exact):
    ``neighbors``, ``first_frame`` (the rule alone), ``first_frame_extra`` (beyond the neighbours) and ``union``.

    >>> f = forced_fractions((21, 30, 52), first_frame="leading", neighbors=False)
    >>> round(f["first_frame"], 5), f["n_vblocks"], f["first_frame_blocks"]
    (0.0022, 256, 12)
    """
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
    """Requested vs achieved density of one :data:`~dit_attn.bench.sparse_speed.SHAPES` shape on CPU: one call of the
    selection on random q/k/v (``inputs="random"``: iid normal; ``"local"``: the speed benchmark's
    locality-biased inputs), ``heads`` heads. Returns the :func:`density_report` row plus the shape and settings."""
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
    ap = argparse.ArgumentParser(prog="python -m dit_attn.bench.sparse_density", description=__doc__.split("\n\n")[0])
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
