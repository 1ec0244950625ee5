"""`make demo`: every dit_attn control on the bundled ShapesWorld models, in one labelled figure with numbers.

Panels (each at the same seed as its stock picture, scored by the exact ShapesWorld evaluator where it applies):

1. **Prompt emphasis** (t2i): a prompt whose stock picture gets an object's shape wrong; emphasising that word in
   the attention logits (``(square:8)``) draws it right.
2. **SoftPAG vs CFG** (t2i): CFG alone and CFG + SoftPAG on searched heads (the heads and settings of
   ``docs/head_guidance.md``), on a held-out prompt where CFG alone misses an object.
3. **Rectified sparse attention** (t2i): dense and ``RectifiedSparse(sparsity=0.8)`` (first quarter of the steps
   dense), with the PSNR between them and the attention density actually computed.
4. **Multi-condition** (flux): an edge map (the condition), the stock picture without it, and the picture with it
   (PKA, the bundled ``edges`` adapter), with edge F1 of both pictures against the map.
5. **Text-to-video** (t2v): frames of one clip and the direction the evaluator measures.

Every "stock" picture is the same pipeline with no control attached and the prompt without syntax.

    python -m dit_attn.demo [--out outputs/demo.png] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import numpy as np
import torch

import dit_attn

EMPHASIS = ("a large blue square on the left", "a large blue (square:8) on the left", 0)
SOFTPAG = ("a pink square, a green circle and a pink star", "transformer_blocks.0:0,1; transformer_blocks.1:1", 0)
SPARSE = ("a red circle above a blue square", 0)
CONDITION_SCENE = 3  # held-out edge scene index
VIDEO = ("a green square moving right", 0)

LAST_PANELS: list = []  # the panels of the last main() run (for tests and notebooks)

# Thresholds the test checks (mean absolute difference to stock in 0-255 pixel units; PSNR in dB).
MIN_DIFFERENCE = 2.0
MIN_SPARSE_PSNR = 20.0


@dataclass
class Panel:
    """One row of the figure: labelled pictures, the numbers behind them, and what it shows."""

    title: str
    pictures: list[tuple[str, np.ndarray]]  # (label, HxWx3 float in [0, 1])
    metrics: dict = field(default_factory=dict)
    claim: str = ""


def _np(result) -> np.ndarray:
    return np.asarray(result.images[0] if hasattr(result, "images") else result.frames[0], dtype=np.float32)


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean() * 255)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _describe(image) -> str:
    from dit_attn.pipelines.shapes.scoring import parse_image

    objects = [f"{d.colour} {d.shape}" for d in parse_image(image) if d.shape != "unknown"]
    return ", ".join(objects) or "nothing recognised"


def build_panels(steps: int = 20) -> list[Panel]:
    """Generate every panel (about a minute on one CPU thread at 20 steps)."""
    from dit_attn.pipelines.conditions.fidelity import condition_image, heldout_scenes
    from dit_attn.pipelines import load_shapes
    from dit_attn.pipelines.shapes.generate import shapes_call_kwargs
    from dit_attn.pipelines.shapes.scoring import edge_f1, score_video
    from dit_attn.pipelines.shapes.world import eval_prompts

    t2i = load_shapes("t2i")
    kw = shapes_call_kwargs("t2i", steps=steps)

    def image(pipe, prompt, seed, *controls, **extra):
        args = dict(kw, **extra)
        generator = torch.Generator().manual_seed(seed)
        with dit_attn.attach(pipe, *controls):
            return _np(pipe(prompt=prompt, generator=generator, output_type="np", **args))

    panels = []
    plain, emphasised, seed = EMPHASIS
    stock, ours = image(t2i, plain, seed), image(t2i, emphasised, seed, dit_attn.Emphasis())
    panels.append(Panel("Prompt emphasis (attention logits)", [
        (f"stock: {plain!r}\n-> {_describe(stock)}", stock),
        (f"Emphasis: {emphasised!r}\n-> {_describe(ours)}", ours)],
        {"mean_abs_diff": _mean_diff(stock, ours)},
        "the stock model draws the wrong shape; emphasising the shape word in the attention logits fixes it"))

    prompt, heads, seed = SOFTPAG
    stock = image(t2i, prompt, seed)
    ours = image(t2i, prompt, seed, dit_attn.SoftPAG(heads, strength=0.5, scale=2.0))
    panels.append(Panel("SoftPAG vs CFG", [
        (f"CFG {kw['guidance_scale']:g} (stock)\n-> {_describe(stock)}", stock),
        (f"CFG + SoftPAG u=0.5 w=2\n-> {_describe(ours)}", ours)],
        {"mean_abs_diff": _mean_diff(stock, ours)},
        f"{prompt!r}: perturbed-attention guidance on heads {heads} on top of the pipeline's CFG"))

    prompt, seed = SPARSE
    # 64 image tokens: blocks of 4; the first quarter of the steps dense (the usual warm-up).
    sparse = dit_attn.RectifiedSparse(sparsity=0.8, block_size=4, neighbors=False, dense_steps=0.25,
                                      track_density=True)
    stock, ours = image(t2i, prompt, seed), image(t2i, prompt, seed, sparse)
    density = float(torch.stack([d for _, _, d in sparse.density_log]).mean()) if sparse.density_log else 1.0
    psnr = _psnr(stock, ours)
    panels.append(Panel("Rectified sparse attention", [
        ("dense (stock)", stock),
        (f"RectifiedSparse(sparsity=0.8)\nPSNR {psnr:.1f} dB, density {density:.0%}", ours)],
        {"mean_abs_diff": _mean_diff(stock, ours), "psnr_db": psnr, "density": density},
        f"{prompt!r}: the same picture with {density:.0%} of the attention blocks computed in the sparse steps "
        f"(the first 25% of the steps dense)"))

    flux = load_shapes("flux")
    scene = heldout_scenes("edge", CONDITION_SCENE + 1)[CONDITION_SCENE]
    edges = condition_image(scene, "edge")
    fkw = shapes_call_kwargs("flux", steps=steps)

    def flux_image(*controls):
        with dit_attn.attach(flux, *controls):
            return _np(flux(prompt=scene.caption, generator=torch.Generator().manual_seed(0), output_type="np",
                            **fkw))

    stock = flux_image()
    ours = flux_image(dit_attn.MultiCondition(spatial=[dit_attn.SpatialCondition(edges, adapter="edges")],
                                              mode="pka"))
    edge_map = (edges.permute(1, 2, 0).numpy() + 1) / 2
    f1_stock, f1_ours = edge_f1(stock, edges), edge_f1(ours, edges)
    panels.append(Panel("Multi-condition attention (PKA)", [
        ("condition: edge map", edge_map),
        (f"stock (no condition)\nedge F1 {f1_stock:.2f}", stock),
        (f"MultiCondition pka + edges adapter\nedge F1 {f1_ours:.2f}", ours)],
        {"mean_abs_diff": _mean_diff(stock, ours), "edge_f1_stock": f1_stock, "edge_f1": f1_ours},
        f"{scene.caption!r} on the flux model: the output follows the condition's outlines"))

    t2v = load_shapes("t2v")
    prompt, seed = VIDEO
    spec = next((s for p, s in eval_prompts("t2v", "train", n=64) if p == prompt), None)
    video = np.asarray(t2v(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="np",
                           **shapes_call_kwargs("t2v", steps=steps)).frames[0], dtype=np.float32)
    direction = None
    if spec is not None:
        objects = score_video(video, spec).objects
        direction = objects[0].direction if objects else None
    picks = np.linspace(0, len(video) - 1, 4).round().astype(int)
    panels.append(Panel("Text-to-video (t2v model)", [(f"frame {i}", video[i]) for i in picks],
                        {"frames": len(video), "direction": direction},
                        f"{prompt!r}: measured direction {direction or 'not tracked'}"))
    return panels


def render(panels: list[Panel], path: str) -> str:
    """Save the panels as one labelled figure (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(p.pictures) for p in panels)
    fig, axes = plt.subplots(len(panels), cols, figsize=(3.2 * cols, 3.6 * len(panels)), squeeze=False)
    for row, panel in zip(axes, panels):
        for ax in row:
            ax.axis("off")
        for ax, (label, picture) in zip(row, panel.pictures):
            ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
            ax.set_title(label, fontsize=8)
        row[0].text(-0.08, 0.5, panel.title, transform=row[0].transAxes, rotation=90, ha="right", va="center",
                    fontsize=10, fontweight="bold")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo.png")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: extra threads only spin on a shared CPU
    global LAST_PANELS
    panels = LAST_PANELS = build_panels(args.steps)
    render(panels, args.out)
    for panel in panels:
        numbers = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in panel.metrics.items())
        print(f"- {panel.title}: {panel.claim} ({numbers})")
    print(f"saved {args.out}")
    return args.out


if __name__ == "__main__":
    main()
