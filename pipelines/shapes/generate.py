"""Generation defaults for the ShapesWorld pipelines and generate-then-score helpers.

Example::

    >>> from dit_attn.pipelines import load_shapes
    >>> from dit_attn.pipelines.shapes.generate import shapes_call_kwargs, evaluate_pipeline
    >>> pipe = load_shapes("t2i")
    >>> image = pipe(prompt="a red square above a blue circle", **shapes_call_kwargs("t2i")).images[0]
    >>> summary, results = evaluate_pipeline(pipe, "t2i", split="heldout", n=8)
    >>> sorted(summary)[:3]
    ['colour', 'correct', 'count']
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from .scoring import aggregate, score_image, score_video
from .models import KINDS, NUM_FRAMES, RESOLUTION, T5_MAX_LENGTH
from .world import eval_prompts

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0


def shapes_call_kwargs(kind: str, steps: Optional[int] = None, guidance: Optional[float] = None) -> dict[str, Any]:
    """Default ``pipe(...)`` settings (no prompt, no generator) of the ShapesWorld model of ``kind``.

    64 x 64 pixels (9 frames for t2v), ``DEFAULT_STEPS`` Euler steps, classifier-free guidance
    ``DEFAULT_GUIDANCE`` against the empty prompt (the models were trained with 10% empty captions). For flux the
    guidance is ``true_cfg_scale`` (the model has no distilled guidance embedding), with ``negative_prompt=""``.

    Example::

        >>> from dit_attn.pipelines.shapes.generate import DEFAULT_STEPS, shapes_call_kwargs
        >>> kw = shapes_call_kwargs("flux", guidance=3.0)  # flux: true CFG, distilled guidance off
        >>> kw["num_inference_steps"] == DEFAULT_STEPS, kw["true_cfg_scale"], kw["guidance_scale"]
        (True, 3.0, 1.0)
        >>> shapes_call_kwargs("t2v", steps=2)["num_frames"], "num_frames" in shapes_call_kwargs("t2i")
        (9, False)
    """
    if kind not in KINDS:
        raise ValueError(f"unknown ShapesWorld kind {kind!r}; expected one of {KINDS}")
    steps = DEFAULT_STEPS if steps is None else int(steps)
    guidance = DEFAULT_GUIDANCE if guidance is None else float(guidance)
    kw: dict[str, Any] = dict(height=RESOLUTION, width=RESOLUTION, num_inference_steps=steps,
                              max_sequence_length=T5_MAX_LENGTH)
    if kind == "flux":
        kw.update(true_cfg_scale=guidance, negative_prompt="", guidance_scale=1.0)
    else:
        kw.update(guidance_scale=guidance, negative_prompt="")
    if kind == "t2v":
        kw["num_frames"] = NUM_FRAMES
    return kw


@torch.no_grad()
def generate(pipe, kind: str, prompts: list[str], seed: int = 0, batch: int = 16, **overrides) -> list[np.ndarray]:
    """Generate one sample per prompt; prompt ``i`` uses ``torch.Generator().manual_seed(seed + i)``.

    Returns uint8 arrays: images ``(H, W, 3)``, videos ``(F, H, W, 3)``.
    """
    kw = shapes_call_kwargs(kind)
    kw.update(overrides)
    out: list[np.ndarray] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        gens = [torch.Generator().manual_seed(seed + start + j) for j in range(len(chunk))]
        neg = kw.get("negative_prompt")
        call = dict(kw, prompt=chunk, generator=gens, output_type="np")
        if neg is not None:
            call["negative_prompt"] = [neg] * len(chunk)
        res = pipe(**call)
        arr = res.frames if kind == "t2v" else res.images
        arr = np.clip(np.rint(np.asarray(arr) * 255.0), 0, 255).astype(np.uint8)
        out.extend(list(arr))
    return out


def evaluate_pipeline(pipe, kind: str, split: str = "heldout", n: int = 64, seed: int = 0, batch: int = 16,
                      prompt_seed: int = 20240, **overrides) -> tuple[dict[str, float], list]:
    """Generate for ``eval_prompts(kind, split, n)`` and score with the exact evaluator.

    Returns ``(aggregate(results), results)``; videos add ``direction`` (per-object direction accuracy).
    """
    prompts = eval_prompts("t2v" if kind == "t2v" else "t2i", split=split, n=n, seed=prompt_seed)
    samples = generate(pipe, kind, [p for p, _ in prompts], seed=seed, batch=batch, **overrides)
    if kind == "t2v":
        results = [score_video(list(v), spec) for v, (_, spec) in zip(samples, prompts)]
    else:
        results = [score_image(img, spec) for img, (_, spec) in zip(samples, prompts)]
    return aggregate(results), results


__all__ = ["DEFAULT_STEPS", "DEFAULT_GUIDANCE", "shapes_call_kwargs", "generate", "evaluate_pipeline"]
