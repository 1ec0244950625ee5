"""Data preview CLI: ``python -m dit_attn.pipelines.shapes.data --out DIR --n 16``.

Writes ``DIR/grid.png`` (a grid of samples; PIL only) and ``DIR/captions.txt`` (``index<TAB>caption`` per line).

* ``--kind image`` (default): a square-ish grid of images.
* ``--kind video``: one row per clip, its frames left to right.
* ``--kind condition``: one row per item: image | edge | mask | depth | subject reference.

Items are exactly those of the corresponding dataset (same ``--split``, ``--size``, ``--seed``), so the preview
shows what training will see. ``--scale`` enlarges the grid by nearest-neighbour upsampling for viewing.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .render import grey_to_rgb, render_conditions, render_image, render_subject_reference, render_video
from .world import SPLITS, Scene, condition_scene, sample_scene, scene_rng


def _scene(kind: str, split: str, seed: int, i: int) -> Scene:
    if kind == "condition":
        return condition_scene(seed, split, i)
    return sample_scene(scene_rng(seed, kind, split, i), split=split, kind=kind)


def tile(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile rows of equal-size uint8 ``(h, w, 3)`` images into one image, ``pad`` pixels of ``fill`` between and
    around them; short rows are filled with ``fill``.

    Example::

        >>> tile([[np.zeros((4, 4, 3), np.uint8)] * 2, [np.zeros((4, 4, 3), np.uint8)]], pad=1).shape
        (11, 11, 3)
    """
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + h, x:x + w] = img
    return out


def preview(out: str, n: int = 16, kind: str = "image", split: str = "train", size: int = 64, seed: int = 0,
            frames: int = 9, scale: int = 2) -> tuple[str, str]:
    """Write a preview grid and captions for the first ``n`` items; returns (grid path, captions path)."""
    os.makedirs(out, exist_ok=True)
    scenes = [_scene(kind, split, seed, i) for i in range(n)]
    if kind == "image":
        cols = int(math.ceil(math.sqrt(n)))
        imgs = [render_image(s, size) for s in scenes]
        rows = [imgs[r * cols:(r + 1) * cols] for r in range(int(math.ceil(n / cols)))]
    elif kind == "video":
        rows = [list(render_video(s, size, frames)) for s in scenes]
    elif kind == "condition":
        rows = []
        for s in scenes:
            cond = render_conditions(s, size)
            ref = (render_subject_reference(s.subject, size, s.background) if s.subject
                   else render_image(Scene((), "list", s.background), size))
            rows.append([render_image(s, size)] + [grey_to_rgb(cond[k]) for k in ("edge", "mask", "depth")] + [ref])
    else:
        raise ValueError(f"unknown kind {kind!r}")
    grid = tile(rows)
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    grid_path = os.path.join(out, "grid.png")
    img.save(grid_path)
    cap_path = os.path.join(out, "captions.txt")
    with open(cap_path, "w") as f:
        for i, s in enumerate(scenes):
            f.write(f"{i}\t{s.caption}\n")
    return grid_path, cap_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m dit_attn.pipelines.shapes.data",
                                description="Preview ShapesWorld samples as a PNG grid plus captions.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--kind", choices=("image", "video", "condition"), default="image")
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--size", type=int, default=64, help="resolution (32, 64 or 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=9, help="frames per clip (--kind video)")
    p.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the grid")
    a = p.parse_args(argv)
    grid, caps = preview(a.out, a.n, a.kind, a.split, a.size, a.seed, a.frames, a.scale)
    print(f"wrote {grid} and {caps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
