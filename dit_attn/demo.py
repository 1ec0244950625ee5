"""`make demo`: a generation with controls attached, saved as a PNG grid.

Until the ShapesWorld models land this runs on the tiny random-weight SD3 pipeline, so the pictures are noise-like;
what it shows is the plumbing: the same seed with and without a control, side by side.

    python -m dit_attn.demo [--out outputs/demo.png]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

import dit_attn
from dit_attn.testing import tiny_call_kwargs, tiny_pipeline


class _BoostText(dit_attn.Control):
    """Demo control: adds log(2) to the logits of every text key (doubles text attention before renormalising)."""

    def prepare(self, call):
        text = call.layout.key_slice("text")
        if text is not None and call.layout.query_slice("image") is not None:
            import math

            import torch

            bias = torch.zeros(call.key.shape[1], device=call.key.device)
            bias[text] = math.log(2.0)
            call.add_key_bias(bias)
        return call


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo.png")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    pipe = tiny_pipeline("sd3")
    kwargs = lambda: tiny_call_kwargs("sd3", steps=args.steps)  # noqa: E731
    plain = pipe(**kwargs()).images[0]
    with dit_attn.attach(pipe, _BoostText()):
        boosted = pipe(**kwargs()).images[0]
    tiles = [np.asarray(x, dtype=np.float32) for x in (plain, boosted)]
    grid = np.concatenate(tiles, axis=1)
    img = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)).resize(
        (grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    img.save(args.out)
    print(f"saved {args.out}: left = stock, right = text keys boosted x2 (same seed)")
    return args.out


if __name__ == "__main__":
    main()
