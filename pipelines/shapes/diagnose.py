"""Where a ShapesWorld model fails: ``python -m dit_attn.pipelines.shapes.diagnose --kind t2i|flux|t2v``.

Image models (:func:`diagnose`), two measurements on training renders (about a minute on one CPU thread for 48
items):

* **SDEdit from noise level s**: the ground-truth latent noised to ``s`` (``s = 1``: pure noise) and integrated
  back with 10 Euler steps, then scored by the evaluator. High scores at ``s = 0.4`` and low ones at ``s = 1``
  mean the model denoises well once the layout is there but does not create it from the prompt.
* **Word sensitivity**: the RMS change of the model's clean-image prediction at noise level ``s`` when the
  caption's shape words (or colour words) are replaced by other shape (colour) words. A model that ignores shape
  words barely moves when they change.

Video model (:func:`direction_sign`), on training clips: does the model know which way time runs?

* **Sign gap**: the flow loss with the time-reversed caption ("moving left" for a clip moving right) minus the loss
  with the true caption, relative to the latter. Zero: the direction words' sign is ignored.
* **Time-reversal gap**: how far the model is from equivariance under playing the input backwards
  (``|f(reverse(x)) - reverse(f(x))| / |f(x)|``, RMS). A model near zero cannot make "left" differ from "right";
  with one latent frame per patch, Wan sees time only through relative rotary embeddings.

Example::

    >>> from dit_attn.pipelines import load_shapes
    >>> from dit_attn.pipelines.shapes.diagnose import diagnose
    >>> report = diagnose(load_shapes("t2i"), "t2i", n=4, levels=(0.4,), sensitivity_levels=(0.7,))
    >>> sorted(report)
    ['sdedit', 'word_sensitivity']
"""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

import torch
from dit_attn.pipelines.loading import dtype_kwargs


def _swap(caption: str, words: Sequence[str]) -> str:
    words = list(words)
    return " ".join(words[(words.index(w) + 1) % len(words)] if w in words else w for w in caption.split())


@torch.no_grad()
def diagnose(pipe, kind: str = "t2i", n: int = 48, seed: int = 0, levels: Sequence[float] = (0.4, 0.6, 0.8, 1.0),
             sensitivity_levels: Sequence[float] = (0.5, 0.7, 0.9), steps: int = 10) -> dict:
    """``{"sdedit": {s: aggregate scores}, "word_sensitivity": {s: {"shape": rms, "colour": rms}}}``."""
    from .scoring import aggregate, score_image
    from .geometry import SHAPES
    from .train import _encode_text, _scene, predict_velocity, render_batch
    from .world import COLOURS

    if kind not in ("t2i", "flux"):
        raise ValueError(f"diagnose handles the image models 't2i' and 'flux', got {kind!r}")
    vae = pipe.vae
    idx = list(range(100, 100 + n))
    x, captions = render_batch(kind, seed, idx)
    scenes = [_scene(kind, seed, i) for i in idx]
    shift = vae.config.shift_factor or 0.0
    z0 = (vae.encode(x).latent_dist.mean - shift) * vae.config.scaling_factor
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    cond = _encode_text(pipe, kind, captions)

    def decode(z):
        return vae.decode(z / vae.config.scaling_factor + shift).sample.clamp(-1, 1)

    report: dict = {"sdedit": {}, "word_sensitivity": {}}
    for s0 in levels:
        xt = (1 - s0) * z0 + s0 * noise
        grid = torch.linspace(s0, 0.0, steps + 1)
        for a, b in zip(grid[:-1], grid[1:]):
            xt = xt + (b - a) * predict_velocity(pipe, kind, xt, torch.full((n,), float(a)), cond)
        scores = aggregate([score_image(img, sc) for img, sc in zip(decode(xt), scenes)])
        report["sdedit"][str(s0)] = {k: round(v, 4) for k, v in scores.items()
                                     if k in ("object_accuracy", "colour", "shape", "count")}
    for s in sensitivity_levels:
        xt = (1 - s) * z0 + s * noise
        preds = {}
        for name, caps in (("true", captions), ("shape", [_swap(c, SHAPES) for c in captions]),
                           ("colour", [_swap(c, list(COLOURS)) for c in captions])):
            c = cond if name == "true" else _encode_text(pipe, kind, caps)
            preds[name] = xt - s * predict_velocity(pipe, kind, xt, torch.full((n,), s), c)
        report["word_sensitivity"][str(s)] = {
            k: round(float((preds[k] - preds["true"]).pow(2).mean().sqrt()), 4) for k in ("shape", "colour")}
    return report


@torch.no_grad()
def direction_sign(pipe, n: int = 48, seed: int = 0, levels: Sequence[float] = (0.5, 0.7, 0.9)) -> dict:
    """``{s: {"loss": true-caption loss, "sign_gap": relative loss increase with reversed directions,
    "colour_gap": the same with the colour words swapped, "time_reversal_gap": relative distance from
    time-reversal equivariance}}`` at noise levels ``s``, on the normalised latents of ``n`` training clips
    (items 100..100+n-1) of the t2v model ``pipe``. The colour gap is the yardstick for the sign gap: how much the
    model's prediction depends on a caption word it has learnt to use."""
    from .train import (_encode_text, colour_swapped_caption, encode_mean, latent_std, predict_velocity,
                        render_batch, time_reversed_caption)

    vae = pipe.vae
    x, captions = render_batch("t2v", seed, list(range(100, 100 + n)))
    z = encode_mean(vae, x.to(vae.device))
    mean = torch.tensor(vae.config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
    std = latent_std(vae).to(z.device)
    z = (z - mean) / std
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(z.device)
    true, reversed_ = _encode_text(pipe, "t2v", captions), _encode_text(
        pipe, "t2v", [time_reversed_caption(c) for c in captions])
    swap_gen = torch.Generator().manual_seed(seed)
    swapped = _encode_text(pipe, "t2v", [colour_swapped_caption(c, swap_gen) for c in captions])
    report = {}
    for s in levels:
        xt = (1 - s) * z + s * noise
        sv = torch.full((n,), float(s), device=z.device)
        pred = predict_velocity(pipe, "t2v", xt, sv, true)
        loss = (pred - (noise - z)).pow(2).mean()
        loss_rev = (predict_velocity(pipe, "t2v", xt, sv, reversed_) - (noise - z)).pow(2).mean()
        loss_swap = (predict_velocity(pipe, "t2v", xt, sv, swapped) - (noise - z)).pow(2).mean()
        pred_flip = predict_velocity(pipe, "t2v", xt.flip(2), sv, true).flip(2)
        report[str(s)] = {"loss": round(float(loss), 5), "sign_gap": round(float(loss_rev / loss - 1), 5),
                          "colour_gap": round(float(loss_swap / loss - 1), 5),
                          "time_reversal_gap": round(float((pred_flip - pred).pow(2).mean().sqrt()
                                                           / pred.pow(2).mean().sqrt()), 5)}
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dit_attn.pipelines.shapes.diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("t2i", "flux", "t2v"), default="t2i")
    p.add_argument("--model", default=None, help="pipeline folder (default: the bundled model of --kind)")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.model:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(a.model, **dtype_kwargs(torch.float32), use_safetensors=True)
    else:
        from .bundled import load_shapes

        pipe = load_shapes(a.kind, adapters=False)
    report = direction_sign(pipe, n=a.n) if a.kind == "t2v" else diagnose(pipe, a.kind, n=a.n)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
