"""Measured effect of prompt emphasis on ShapesWorld: does weighting a colour word change how often it is drawn?

For two-object captions ("a red circle above a blue square") the colour word of the first object gets weight
``w`` (``"a (red:2) circle above a blue square"``); each image is scored by the exact ShapesWorld evaluator and
we report, per emphasis mode and weight, the rate at which that object's colour is rendered correctly (and the
other object's, which emphasis should not destroy). Same prompts and seeds for every cell, so differences are the
control's. Modes: ``attention`` (``log w`` in the logits, ours), ``embedding-a1111`` and ``embedding-comfy``.

    python -m dit_attn.bench.reweighting [--model shapes:t2i] [--n 24] [--seeds 2] [--weights 0.3,1,3]
        [--out docs/results/reweighting] [--write-docs]

``--write-docs`` (a maintainer's step) rewrites the results block of ``docs/reweighting.md`` (between
``<!-- results -->`` markers; ``--doc`` names another page).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import dit_attn
from dit_attn.pipelines.loading import call_kwargs, load_pipeline
from dit_attn.pipelines.shapes import eval_prompts, score_image

from .timing import add_docs_arguments, default_model, machine_line, write_docs

MODES = ("attention", "embedding-a1111", "embedding-comfy")


def weighted_prompt(caption: str, scene, weight: float) -> str:
    """The caption with the first object's colour word wrapped as ``(colour:weight)``."""
    obj = scene.objects[0]
    phrase = obj.phrase(scene.mention_size)
    at = caption.find(phrase)
    if at < 0:
        raise ValueError(f"phrase {phrase!r} not in caption {caption!r}")
    colour_at = at + phrase.find(obj.colour)
    end = colour_at + len(obj.colour)
    return f"{caption[:colour_at]}({obj.colour}:{weight:g}){caption[end:]}"


def two_object_prompts(n: int):
    pool = eval_prompts("t2i", split="train", n=max(8 * n, 64))
    chosen = [(c, s) for c, s in pool if len(s.objects) == 2 and not any(o.is_subject for o in s.objects)]
    return chosen[:n]


def run(model: str, n: int, seeds: int, weights: list[float], out: Path) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    prompts = two_object_prompts(n)
    if not prompts:
        raise RuntimeError("no two-object prompts found")
    cells = {}
    start = time.perf_counter()
    total = len(MODES) * len(weights) * len(prompts) * seeds
    with tqdm(total=total, desc="emphasis effect") as bar:
        for mode in MODES:
            for w in weights:
                target, other = [], []
                for caption, scene in prompts:
                    prompt = weighted_prompt(caption, scene, w)
                    for seed in range(seeds):
                        params = {"model": model, "prompt": prompt}
                        kwargs = call_kwargs(pipe, params, torch.Generator("cpu").manual_seed(seed))
                        with dit_attn.attach(pipe, dit_attn.Emphasis(mode=mode)):
                            image = pipe(**kwargs).images[0]
                        result = score_image(image, scene)
                        target.append(bool(result.objects[0].colour_ok))
                        other.append(bool(result.objects[1].colour_ok))
                        bar.update(1)
                cells[f"{mode}@{w:g}"] = {"mode": mode, "weight": w, "target_colour": float(np.mean(target)),
                                          "other_colour": float(np.mean(other)), "n": len(target)}
    data = {"model": model, "prompts": len(prompts), "seeds": seeds, "weights": weights, "cells": cells,
            "seconds": time.perf_counter() - start,
            "machine": machine_line(),
            "example_prompt": weighted_prompt(*prompts[0], weights[-1])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "reweighting.json").write_text(json.dumps(data, indent=2))
    _plot(data, out / "reweighting.png")
    return data


def _plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for mode in MODES:
        cells = [c for c in data["cells"].values() if c["mode"] == mode]
        ax.plot([c["weight"] for c in cells], [c["target_colour"] for c in cells], marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("weight of the first object's colour word")
    ax.set_ylabel("that colour rendered correctly")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(data: dict) -> str:
    weights = data["weights"]
    head = "| mode | " + " | ".join(f"w = {w:g}" for w in weights) + " |"
    lines = [head, "|---|" + "---|" * len(weights)]
    for mode in MODES:
        row = [data["cells"][f"{mode}@{w:g}"] for w in weights]
        lines.append(f"| {mode} | " + " | ".join(f"{c['target_colour']:.2f} ({c['other_colour']:.2f})" for c in row)
                     + " |")
    return (f"Model `{data['model']}`, {data['prompts']} two-object training captions × {data['seeds']} seeds per "
            f"cell ({data['machine']}, {data['seconds']:.0f} s in all). Cell: rate at which the weighted colour is "
            f"rendered correctly (in brackets: the other object's colour). Example prompt: "
            f"`{data['example_prompt']}`.\n\n" + "\n".join(lines))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dit_attn.bench.reweighting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: shapes:t2i when bundled, else tiny:sd3")
    parser.add_argument("--n", type=int, default=24, help="two-object prompts")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--weights", default="0.3,1,3")
    parser.add_argument("--out", default="docs/results/reweighting")
    add_docs_arguments(parser, "docs/reweighting.md")
    args = parser.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    if any(w < 0 for w in weights):
        parser.error("weights must be >= 0")
    data = run(args.model or default_model(), args.n, args.seeds, weights, Path(args.out))
    text = markdown(data)
    print(text)
    write_docs(args, text)
    return data


if __name__ == "__main__":
    main()
