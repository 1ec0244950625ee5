"""`make demo`: the bundled ShapesWorld text-to-image model with and without a control, saved as a PNG grid.

One row per prompt: the stock generation (left) and the same seed with :class:`dit_attn.Emphasis` attached and one
word of the prompt emphasised (right). The model is the bundled ``StableDiffusion3Pipeline`` trained on
ShapesWorld (:func:`dit_attn.pipelines.load_shapes`); until its weights exist the demo falls back to the tiny
random-weight SD3 pipeline (noise-like pictures; only the plumbing is shown) and says so.

    python -m dit_attn.demo [--out outputs/demo.png] [--steps 20]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from PIL import Image

import dit_attn

# (plain prompt, the same prompt with emphasis syntax)
PROMPTS = (
    ("a red square above a blue circle", "a (red:2.0) square above a blue circle"),
    ("a green star on the left", "a green (star:2.0) on the left"),
    ("a yellow triangle to the left of a purple ring", "a yellow triangle to the left of a (purple:2.0) ring"),
    ("an orange cross below a cyan star", "an orange cross below a (cyan:2.0) star"),
)


def _load(steps: int):
    """(pipeline, call kwargs without prompt, description), preferring the bundled ShapesWorld model."""
    from dit_attn.pipelines.shapes.bundled import has_weights, load_shapes, model_dir
    from dit_attn.pipelines.shapes.generate import shapes_call_kwargs

    if has_weights("t2i"):
        return load_shapes("t2i"), shapes_call_kwargs("t2i", steps=steps), "ShapesWorld t2i (SD3 architecture)"
    from dit_attn.testing import tiny_call_kwargs, tiny_pipeline

    print(f"note: no trained ShapesWorld weights at {model_dir('t2i')}; falling back to the tiny random-weight SD3 "
          f"pipeline (outputs are noise). Train them with "
          f"`python -m dit_attn.pipelines.shapes.train --kind t2i --out {model_dir('t2i')}`.")
    kw = tiny_call_kwargs("sd3", steps=min(steps, 4))
    for k in ("prompt", "generator", "output_type"):
        kw.pop(k, None)
    return tiny_pipeline("sd3"), kw, "tiny random-weight SD3"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo.png")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: extra threads only spin on a shared CPU
    pipe, kw, what = _load(args.steps)

    def run(prompt: str) -> np.ndarray:
        out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(args.seed), output_type="np", **kw)
        return np.asarray(out.images[0], dtype=np.float32)

    rows = []
    for plain, emphasised in PROMPTS:
        stock = run(plain)
        with dit_attn.attach(pipe, dit_attn.Emphasis()):
            boosted = run(emphasised)
        rows.append(np.concatenate([stock, np.ones_like(stock[:, :2]), boosted], axis=1))
        print(f"  {plain!r}  |  {emphasised!r}")
    grid = np.concatenate([np.concatenate([r, np.ones_like(r[:2])], axis=0) for r in rows], axis=0)
    img = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
    img = img.resize((img.width * 4, img.height * 4), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    img.save(args.out)
    print(f"saved {args.out} ({what}): left = stock, right = the same seed with dit_attn.Emphasis on the "
          f"emphasised word; one row per prompt")
    return args.out


if __name__ == "__main__":
    main()
