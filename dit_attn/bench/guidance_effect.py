"""Measured effect of head-level guidance on ShapesWorld, scored by the exact evaluator.

Four configurations on the same held-out prompts and seeds:

1. CFG only (guidance scale ``g``);
2. CFG + SoftPAG on heads found by a (small) HeadHunter search on *training* prompts (``u``, ``w``);
3. CFG at the matched higher scale ``g + w`` (a guidance-strength control: preference-like gains from simply
   guiding harder should not be credited to the heads);
4. layer-level PAG: all heads of the layer holding most searched heads, ``u = 1``, same ``w``.

    python -m dit_attn.bench.guidance_effect [--model shapes:t2i] [--n 24] [--seeds 2] [--write-docs]

The search here is a labelled shortcut of the paper's (1 round, a few prompts, few steps, low resolution).
Results: JSON, and with ``--write-docs`` (a maintainer's step) the markdown block between ``<!-- results -->``
markers of ``docs/head_guidance.md`` (``--doc`` names another page).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import dit_attn
from dit_attn.head_search import candidate_heads, search_heads
from dit_attn.pipelines.loading import call_kwargs, load_pipeline
from dit_attn.pipelines.shapes import eval_prompts, score_image

from .timing import add_docs_arguments, default_model, machine_line, write_docs


def _generate_scores(pipe, model, prompts, seeds, controls, guidance):
    acc, correct = [], []
    for caption, scene in prompts:
        for seed in range(seeds):
            params = {"model": model, "prompt": caption, "guidance": guidance}
            kwargs = call_kwargs(pipe, params, torch.Generator("cpu").manual_seed(seed))
            with dit_attn.attach(pipe, *controls):
                image = pipe(**kwargs).images[0]
            result = score_image(image, scene)
            acc.append(result.object_accuracy)
            correct.append(float(result.correct))
    return float(np.mean(acc)), float(np.mean(correct))


def run(model: str, n: int, seeds: int, guidance: float, scale: float, strength: float, top_k: int,
        search_prompts: int, out: Path) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    # Search on training captions (never on the held-out ones we report).
    scenes = dict(eval_prompts("t2i", split="train", n=search_prompts))
    train = list(scenes)

    def objective(images, texts):
        return [float(score_image(im, scenes[t]).object_accuracy) for im, t in zip(images, texts)]

    base = call_kwargs(pipe, {"model": model, "prompt": train[0], "guidance": 1.0}, torch.Generator())
    search_kwargs = {k: v for k, v in base.items() if k not in ("prompt", "generator", "output_type")}
    result = search_heads(pipe, objective=objective, prompts=train, seeds=(0,), rounds=1, top_k=top_k, strength=1.0, scale=scale,
                          out_dir=out / "search", progress=True, **search_kwargs)
    heads = result.heads
    layer_of = Counter(f"{bl}.{i}" for bl, i, _ in heads.pairs(pipe.transformer))
    busiest = layer_of.most_common(1)[0][0]
    configs = {
        f"CFG {guidance:g}": [],
        f"CFG {guidance:g} + SoftPAG searched heads (u={strength:g}, w={scale:g})":
            [dit_attn.SoftPAG(heads, strength=strength, scale=scale)],
        f"CFG {guidance + scale:g} (matched scale)": [],
        f"CFG {guidance:g} + layer PAG {busiest} (u=1, w={scale:g})":
            [dit_attn.SoftPAG(f"{busiest}:*", strength=1.0, scale=scale)],
    }
    guidances = [guidance, guidance, guidance + scale, guidance]
    held_out = eval_prompts("t2i", split="heldout", n=n)
    rows = []
    for (name, controls), g in tqdm(list(zip(configs.items(), guidances)), desc="guidance effect"):
        acc, correct = _generate_scores(pipe, model, held_out, seeds, controls, g)
        rows.append({"config": name, "object_accuracy": acc, "all_correct": correct})
    data = {"model": model, "heads": heads.to_spec(), "candidates": len(candidate_heads(pipe.transformer)),
            "search_prompts": len(train), "prompts": len(held_out), "seeds": seeds, "rows": rows,
            "seconds": time.perf_counter() - start,
            "machine": machine_line()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "guidance_effect.json").write_text(json.dumps(data, indent=2))
    return data


def markdown(data: dict) -> str:
    lines = ["| configuration | object accuracy | all criteria correct |", "|---|---|---|"]
    lines += [f"| {r['config']} | {r['object_accuracy']:.3f} | {r['all_correct']:.3f} |" for r in data["rows"]]
    return (f"Model `{data['model']}`; {data['prompts']} held-out captions × {data['seeds']} seeds per row "
            f"({data['machine']}, {data['seconds']:.0f} s in all). Heads from a shortcut search (1 round over "
            f"{data['candidates']} candidates, {data['search_prompts']} training captions, u = 1): "
            f"`{data['heads']}`.\n\n" + "\n".join(lines))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dit_attn.bench.guidance_effect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: shapes:t2i when bundled, else tiny:sd3")
    parser.add_argument("--n", type=int, default=24, help="held-out prompts")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--scale", type=float, default=2.0, help="SoftPAG w")
    parser.add_argument("--strength", type=float, default=0.5, help="SoftPAG u applied after the search at u = 1")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--search-prompts", type=int, default=4)
    parser.add_argument("--out", default="docs/results/head_guidance")
    add_docs_arguments(parser, "docs/head_guidance.md")
    args = parser.parse_args(argv)
    data = run(args.model or default_model(), args.n, args.seeds, args.guidance, args.scale, args.strength,
               args.top_k, args.search_prompts, Path(args.out))
    text = markdown(data)
    print(text)
    write_docs(args, text)
    return data


if __name__ == "__main__":
    main()
