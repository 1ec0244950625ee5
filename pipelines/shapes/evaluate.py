"""Command line: generate with a ShapesWorld model and score the outputs with the exact scorer.

``python -m dit_attn.pipelines.shapes.evaluate --kind t2i --n 200 --out docs/shapesworld`` writes
``<kind>_scores.json`` (scores, 95% intervals, chance levels, the call settings) and ``<kind>_samples.png``.
The scoring itself lives in :mod:`.scoring` (pure functions of pixels and scenes) and generate-then-score in
:mod:`.generate`; this module only wires them to a command line, and nothing in the package imports it.

The scorer's names are re-exported here because code written before the split imports them from this module
(``from dit_attn.pipelines.shapes.evaluate import score_image``): a module ``__getattr__`` forwards them to
:mod:`.scoring`, which new code imports directly.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from dit_attn.pipelines.loading import dtype_kwargs

from . import scoring
from .generate import evaluate_pipeline, generate, shapes_call_kwargs
from .geometry import SHAPES
from .scoring import direction_confusion, intervals
from .world import COLOURS, eval_prompts


def _chance_levels(kind: str) -> dict[str, float]:
    """Chance levels of the main criteria for a generator that ignores the prompt (uniform guesses)."""
    colour, shape = 1.0 / len(COLOURS), 1.0 / len(SHAPES)
    out = {"colour": colour, "shape": shape, "object_accuracy": colour * shape}
    if kind == "t2v":
        out["direction"] = 1.0 / 4
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dit_attn.pipelines.shapes.evaluate --kind t2i --n 200 --out DIR`` (see :func:`run_evaluation`)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dit_attn.pipelines.shapes.evaluate",
                                description="Generate for held-out and training captions with a ShapesWorld model "
                                            "and score the outputs with the exact evaluator.")
    p.add_argument("--kind", choices=("t2i", "t2v", "flux"), default="t2i")
    p.add_argument("--model", default=None, help="pipeline folder (default: the bundled model of --kind)")
    p.add_argument("--n", type=int, default=200, help="prompts per split")
    p.add_argument("--splits", default="heldout,train")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/shapesworld", help="folder for <kind>_scores.json and <kind>_samples.png")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the pipeline runs (cpu, cuda, cuda:N); seeds are CPU draws")
    a = p.parse_args(argv)
    run_evaluation(a.kind, a.model, a.n, tuple(a.splits.split(",")), a.steps, a.guidance, a.seed, a.out, a.threads,
                   a.device)
    return 0


def run_evaluation(kind: str, model: Optional[str] = None, n: int = 200, splits: Sequence[str] = ("heldout", "train"),
                   steps: Optional[int] = None, guidance: Optional[float] = None, seed: int = 0,
                   out: str = "docs/shapesworld", threads: int = 1, device: str = "cpu") -> dict:
    """Score a ShapesWorld model on ``n`` prompts per split; writes ``OUT/<kind>_scores.json`` and a sample grid."""
    import json
    import os
    import time

    import torch
    from PIL import Image

    from .bundled import load_shapes

    torch.set_num_threads(threads)
    if model is None:
        pipe = load_shapes(kind)
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model, **dtype_kwargs(torch.float32), use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    settings = shapes_call_kwargs(kind, steps=steps, guidance=guidance)
    report: dict[str, Any] = {"kind": kind, "model": model or f"bundled {kind}", "n": n, "seed": seed, "device": device,
                              "settings": settings, "chance": _chance_levels(kind), "scores": {}}
    os.makedirs(out, exist_ok=True)
    tiles = []
    for split in splits:
        t0 = time.time()
        summary, results = evaluate_pipeline(pipe, kind, split=split, n=n, seed=seed, **{
            k: v for k, v in settings.items() if k in ("num_inference_steps", "guidance_scale", "true_cfg_scale")})
        summary["seconds"] = round(time.time() - t0, 1)
        report["scores"][split] = {k: round(v, 4) for k, v in summary.items()}
        report.setdefault("interval95", {})[split] = {k: [round(lo, 4), round(hi, 4)]
                                                      for k, (lo, hi) in intervals(results).items()}
        print(f"{kind} {split}: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(summary.items())))
        print(f"{kind} {split} 95% intervals: " + ", ".join(
            f"{k} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in sorted(report["interval95"][split].items())))
        tiles.append((split, results))
        if kind == "t2v":
            specs = [spec for _, spec in eval_prompts("t2v", split=split, n=n)]
            report.setdefault("direction_confusion", {})[split] = direction_confusion(results, specs)
            print(f"{kind} {split} directions (named: measured): {report['direction_confusion'][split]}")
    # Sample grid: first 8 prompts of each split (regenerated; cheap at this size).
    rows = []
    for split in splits:
        prompts = [p for p, _ in eval_prompts("t2v" if kind == "t2v" else "t2i", split=split, n=8)]
        samples = generate(pipe, kind, prompts, seed=seed, num_inference_steps=settings["num_inference_steps"])
        rows.append(np.concatenate([s[len(s) // 2] if kind == "t2v" else s for s in samples], axis=1))
        report.setdefault("grid_prompts", {})[split] = prompts
    grid = np.concatenate(rows, axis=0)
    grid_path = os.path.join(out, f"{kind}_samples.png")
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(grid_path)
    path = os.path.join(out, f"{kind}_scores.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path} and {grid_path}")
    return report


def __getattr__(name: str):
    """The scorer's names under their old import path (see the module docstring)."""
    try:
        return getattr(scoring, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


__all__ = ["main", "run_evaluation"]


if __name__ == "__main__":
    raise SystemExit(main())
