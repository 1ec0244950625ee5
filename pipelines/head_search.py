"""The ShapesWorld objective of a head search, and the ``dit-attn heads search`` command.

:func:`dit_attn.search_heads` takes any objective; this module gives it the one the project's experiments use
(:func:`shapes_objective`: ShapesWorld's exact evaluator) and the command line that searches a loaded model with
it (``dit-attn heads search --model shapes:t2i --rounds 2 --top-k 3 --out heads/``).
"""

from __future__ import annotations

from typing import Callable

import torch

from dit_attn.head_search import check_prompts, read_prompts, search_heads
from dit_attn.heads import HeadSet
from dit_attn.pipelines import loading


def shapes_objective() -> Callable:
    """ShapesWorld's evaluator as a :func:`dit_attn.search_heads` objective: the mean object accuracy of each image
    against its prompt's scene. It scores only the ShapesWorld eval prompts (``check_prompts`` refuses others before
    any generation) and offers eight of them as ``default_prompts``."""
    from dit_attn.pipelines.shapes import eval_prompts, score_image  # ShapesWorld loads only when a search runs

    scenes = {p: s for p, s in eval_prompts("t2i", n=256)}

    def objective(images, prompts):
        missing = [p for p in prompts if p not in scenes]
        if missing:
            raise ValueError(f"the ShapesWorld objective scores only its eval prompts; unknown: {missing[:3]}")
        return [float(score_image(im, scenes[p]).object_accuracy) for im, p in zip(images, prompts)]

    def check_prompts(prompts):
        missing = [p for p in prompts if p not in scenes]
        if missing:
            raise ValueError(f"the built-in ShapesWorld objective scores only its eval prompts (e.g. "
                             f"{next(iter(scenes))!r}); not among them: {missing[:3]}. Leave --prompts out to use "
                             "them, or pass objective= (Python) to score other prompts")

    objective.default_prompts = [p for p, _ in eval_prompts("t2i", n=8)]
    objective.check_prompts = check_prompts
    objective.degenerate_hint = ("The objective is the ShapesWorld evaluator: an untrained model (tiny:*) draws nothing "
                                 "it recognises (every score 0.0); use a trained ShapesWorld model (shapes:t2i), more "
                                 "steps or seeds, or another objective.")
    return objective


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise ValueError(f"--seeds must be a comma list of integers (e.g. 0,1); got {text!r}")
    return seeds


def _run_cli(args) -> int:
    # Everything that can be checked without the model is checked first: loading one can take minutes.
    if args.rounds < 1 or args.top_k < 1 or args.steps < 1:
        raise ValueError(f"--rounds, --top-k and --steps must be >= 1; got {args.rounds}, {args.top_k}, {args.steps}")
    seeds = _parse_seeds(args.seeds)
    if args.candidates:
        HeadSet.parse(args.candidates)
    objective = shapes_objective()
    prompts = read_prompts(args.prompts) if args.prompts else objective.default_prompts
    check_prompts(prompts, objective)

    pipe = loading.load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    # The model's own settings (size, text length, negative prompt: tiny:* and shapes:* know theirs), then ours.
    params = {"model": args.model, "prompt": prompts[0], "steps": args.steps, "guidance": args.guidance}
    call = {k: v for k, v in loading.call_kwargs(pipe, params, torch.Generator()).items()
            if k not in ("prompt", "generator", "output_type")}
    result = search_heads(pipe, candidates=args.candidates, objective=objective, prompts=prompts, seeds=seeds,
                          rounds=args.rounds, top_k=args.top_k, strength=args.strength, scale=args.scale,
                          out_dir=args.out, **call)
    print(f"selected heads: {result.heads.to_spec()}")
    for r, (round_scores, added) in enumerate(zip(result.rounds, result.selected)):
        values = sorted(round_scores.values())
        print(f"  round {r + 1}: {len(values)} heads scored {values[0]:.3f} to {values[-1]:.3f}; added "
              + ", ".join(f"{h} ({round_scores[h]:.3f})" for h in added))
    for name, path in result.files.items():
        print(f"  {name}: {path}")
    return 0


def add_cli(subparsers) -> None:
    """Add ``heads search`` to the ``dit-attn`` command line."""
    heads = subparsers.add_parser("heads", help="head sets: search (HeadHunter)")
    sub = heads.add_subparsers(dest="heads_command", required=True)
    p = sub.add_parser("search", help="greedy per-head SoftPAG search (resumable; data parallel with accelerate)",
                       description="Example: dit-attn heads search --model shapes:t2i --rounds 2 --top-k 3 --out heads/ "
                                   "(about 1.5 min on 2 CPU cores); accelerate launch -m dit_attn.cli heads search ... "
                                   "splits the heads over processes. The objective is the ShapesWorld evaluator, so "
                                   "the model must draw ShapesWorld scenes: on an untrained tiny:* model every head "
                                   "scores 0 and the search is refused as degenerate")
    p.add_argument("--model", default="shapes:t2i",
                   help="shapes:<kind>, tiny:<family>, a local folder or a hub id (default: shapes:t2i)")
    p.add_argument("--prompts", default=None,
                   help="text file, one prompt per line ('#' comments skipped), or a .json list; every prompt must "
                        "be a ShapesWorld eval prompt (default: 8 of them); checked before the model loads")
    p.add_argument("--seeds", default="0,1", help="comma list of seeds")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--strength", type=float, default=1.0, help="SoftPAG u while searching (paper: 1.0)")
    p.add_argument("--scale", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=None, help="the pipeline's guidance_scale (paper: CFG off)")
    p.add_argument("--candidates", default=None, help="head spec restricting the candidates (default: all)")
    p.add_argument("--out", default="heads")
    p.set_defaults(func=_run_cli)
