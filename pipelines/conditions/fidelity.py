"""Condition fidelity of trained adapters on ShapesWorld, per attention mode, and adapter convergence curves.

``python -m dit_attn.pipelines.conditions.fidelity`` generates with the bundled ShapesWorld ``flux`` model on held-out
condition scenes and scores every image with the exact evaluator (:func:`dit_attn.pipelines.shapes.score_conditions`):

* **spatial** (edge maps through the ``edges`` adapter): edge F1 (1-pixel tolerance; ``--tolerance``) and
  foreground-mask IoU against the scene the edge map was rendered from; with ``--edge-style hand`` the maps are
  **hand drawings** of the same scenes (strokes 1-3 px wide, wobbly, with gaps, canny-like noise and some objects
  drawn as ellipses or blobs: :func:`dit_attn.pipelines.shapes.render.hand_drawing`), scored against the drawn
  silhouettes;
* **subject** (a sprite reference + its made-up keyword through the ``subject`` adapter): whether the subject is
  drawn inside its keyword region (the region the caption puts it in), and edge F1 / mask IoU of the whole scene;
* per-object colour + shape accuracy of the caption's other objects (the text is still followed);
* with ``reference_swap`` (``--reference-swap``), subject only: each scene is generated again with the reference
  of *another* subject under the same keyword, and the sprite drawn (the best-matching subject anywhere in the
  image, if it matches at all) is counted as the reference's (``follows_reference``) or the keyword's
  (``follows_keyword``). An adapter that copies the reference draws the reference's sprite; a text-only
  shortcut (the keyword alone picks the sprite) draws the keyword's.

Each mode (``pka``, ``cached-full``, ``concat``) runs with the same adapter, prompts and seeds; ``none`` is the
stock model without conditions (what the adapter adds). ``--curves RUN [RUN ...]`` instead scores every
``checkpoint-N`` of adapter training runs (e.g. CSAS vs logit-normal): a validation loss on a fixed held-out batch
at fixed noise levels ``t = 0.05 .. 0.95`` (the same for every run, whatever the training sampling) and the edge
F1 of a few pka generations.

Example (about a minute on one CPU thread)::

    >>> from dit_attn.pipelines.conditions.fidelity import fidelity
    >>> from dit_attn.pipelines import load_shapes
    >>> scores = fidelity(load_shapes("flux"), condition="edge", modes=("none", "pka"), n=4)
    >>> sorted(scores["pka"])[:2]
    ['colour', 'edge_f1']
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np
import torch
from dit_attn.pipelines.loading import dtype_kwargs

MODES = ("none", "pka", "cached-full", "concat")
ADAPTERS = {"edge": "edges", "subject": "subject"}


def heldout_scenes(condition: str, n: int, seed: int = 0) -> list:
    """``n`` held-out condition scenes: image scenes for ``"edge"``, subject scenes for ``"subject"``."""
    from dit_attn.pipelines.shapes.world import condition_scene

    prob = 1.0 if condition == "subject" else 0.0
    return [condition_scene(seed, "heldout", i, subject_prob=prob) for i in range(n)]


EDGE_STYLES = ("rendered", "hand", "thick", "marker", "sketchy", "canny")
"""Edge maps :func:`fidelity` can condition on: the renderer's one-pixel outlines, or hand drawings
(:func:`dit_attn.pipelines.shapes.render.hand_drawing`: ``"hand"`` picks a preset per scene, or one preset)."""


def drawing_seed(seed: int, index: int) -> int:
    """The seed of the hand drawing of held-out scene ``index`` of :func:`heldout_scenes` ``(..., seed)``."""
    return int(seed) * 100_003 + int(index) + 17


def edge_drawings(scenes: Sequence, style: str = "hand", size: int = 64, seed: int = 0) -> list:
    """A :class:`~dit_attn.pipelines.shapes.render.HandDrawing` of each scene (scene ``i`` with
    :func:`drawing_seed` ``(seed, i)``): the hand-drawn evaluation set of :func:`fidelity` ``(edge_style=...)``.

    Example::

        >>> d = edge_drawings(heldout_scenes("edge", 2), "hand")
        >>> d[0].edges.shape, d[0].style in ("thick", "marker", "sketchy", "canny")
        ((64, 64), True)
    """
    from dit_attn.pipelines.shapes.render import hand_drawing

    return [hand_drawing(s, size, style, drawing_seed(seed, i)) for i, s in enumerate(scenes)]


def condition_image(scene, condition: str, size: int = 64, subject: Optional[str] = None,
                    edges: Optional[np.ndarray] = None) -> torch.Tensor:
    """The condition input of ``scene`` as a ``[3, size, size]`` tensor in [-1, 1]: its edge map (``edges``: a
    given ``(size, size)`` uint8 map instead, e.g. a hand drawing), or its subject reference sprite on the scene's
    background (``subject``: another subject's sprite instead)."""
    from dit_attn.pipelines.shapes.render import (grey_to_rgb, render_edges, render_subject_reference,
                                                  to_tensor_image)

    if condition == "edge":
        return to_tensor_image(grey_to_rgb(render_edges(scene, size) if edges is None else edges))
    if condition == "subject":
        return to_tensor_image(render_subject_reference(subject or scene.subject, size, scene.background))
    raise ValueError(f"condition must be 'edge' or 'subject', got {condition!r}")


def _control(mode: str, condition: str, images: torch.Tensor, keyword: str, adapter: Optional[str],
             epsilon: float):
    import dit_attn

    if condition == "edge":
        return dit_attn.MultiCondition(spatial=[dit_attn.SpatialCondition(images, adapter=adapter)], mode=mode,
                                       epsilon=epsilon)
    return dit_attn.MultiCondition(subjects=[dit_attn.SubjectCondition(images, keyword, adapter=adapter)],
                                   mode=mode, epsilon=epsilon)


@torch.no_grad()
def generate_conditioned(pipe, scenes: Sequence, condition: str, mode: str, adapter: Optional[str] = None,
                         seed: int = 0, batch: int = 8, epsilon: float = 0.2, steps: Optional[int] = None,
                         guidance: Optional[float] = None,
                         references: Optional[Sequence[str]] = None,
                         edge_maps: Optional[Sequence[np.ndarray]] = None) -> list[np.ndarray]:
    """One uint8 image per scene (prompt = the scene's caption, generator ``seed + i``); ``mode="none"``: stock.
    ``references``: subject condition only, the subject whose sprite is each scene's reference (default: the
    scene's own). ``edge_maps``: edge condition only, the ``(size, size)`` uint8 map of each scene (default: the
    rendered outlines; e.g. hand drawings)."""
    if edge_maps is not None and (condition != "edge" or len(edge_maps) != len(scenes)):
        raise ValueError("edge_maps: one map per scene, for the edge condition only")
    if references is not None and (condition != "subject" or len(references) != len(scenes)):
        raise ValueError("references: one subject per scene, for the subject condition only")
    import dit_attn
    from dit_attn.pipelines.shapes.generate import shapes_call_kwargs

    kw = shapes_call_kwargs("flux", steps=steps, guidance=guidance)
    size = kw["height"]
    # Subjects are batched per keyword (one SubjectCondition per call); spatial scenes in plain chunks.
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scenes):
        groups.setdefault(s.subject if condition == "subject" else "", []).append(i)
    out: dict[int, np.ndarray] = {}
    for keyword, members in groups.items():
        for start in range(0, len(members), batch):
            ids = members[start:start + batch]
            call = dict(kw, prompt=[scenes[i].caption for i in ids], negative_prompt=[""] * len(ids),
                        generator=[torch.Generator().manual_seed(seed + i) for i in ids], output_type="np")
            if mode == "none":
                images = pipe(**call).images
            else:
                cond = torch.stack([condition_image(scenes[i], condition, size,
                                                    references[i] if references is not None else None,
                                                    edge_maps[i] if edge_maps is not None else None)
                                    for i in ids])
                control = _control(mode, condition, cond, keyword, adapter, epsilon)
                with dit_attn.attach(pipe, control):
                    images = pipe(**call).images
            for i, img in zip(ids, images):
                out[i] = np.clip(np.rint(np.asarray(img) * 255.0), 0, 255).astype(np.uint8)
    return [out[i] for i in range(len(scenes))]


def score(images: Sequence[np.ndarray], scenes: Sequence, tolerance: int = 1,
          drawings: Optional[Sequence] = None) -> dict[str, float]:
    """Mean condition fidelity (edge F1 within ``tolerance`` pixels, mask IoU, subject placement) and caption
    accuracy of ``images``. ``drawings`` (hand drawings of the scenes, :func:`edge_drawings`): edge F1 and mask IoU
    against the drawn silhouettes (their one-pixel outline and fill: what following the drawing means) instead of
    the scenes' own."""
    from dit_attn.pipelines.shapes.scoring import aggregate, score_conditions, score_image

    drawn = drawings if drawings is not None else [None] * len(images)
    cond = aggregate([score_conditions(img, s, tolerance=tolerance,
                                       edge=None if d is None else d.outline, mask=None if d is None else d.mask)
                      for img, s, d in zip(images, scenes, drawn)])
    caption = aggregate([score_image(img, s) for img, s in zip(images, scenes)])
    out = {k: cond[k] for k in ("edge_f1", "mask_iou", "subject") if k in cond}
    out.update({k: caption[k] for k in ("colour", "object_accuracy") if k in caption})
    out["n"] = float(len(images))
    return out


def swapped_references(scenes: Sequence) -> list[str]:
    """For each subject scene, another subject (cycling through the other three by scene index), whose sprite
    :func:`fidelity` uses as the reference under the scene's own keyword when ``reference_swap`` is on.

    Example::

        >>> scenes = heldout_scenes("subject", 3)
        >>> all(r != s.subject for r, s in zip(swapped_references(scenes), scenes))
        True
    """
    from dit_attn.pipelines.shapes.geometry import SUBJECTS

    return [SUBJECTS[(SUBJECTS.index(s.subject) + 1 + i % (len(SUBJECTS) - 1)) % len(SUBJECTS)]
            for i, s in enumerate(scenes)]


def drawn_subject(image: np.ndarray) -> Optional[str]:
    """The subject whose sprite matches best anywhere in ``image``, or None when none reaches the evaluator's
    :data:`~dit_attn.pipelines.shapes.scoring.SUBJECT_THRESHOLD`.

    Example (a ground-truth render of a subject scene, and a blank image)::

        >>> from dit_attn.pipelines.shapes.render import render_image
        >>> scene = heldout_scenes("subject", 1)[0]
        >>> drawn_subject(render_image(scene)) == scene.subject, drawn_subject(np.zeros((64, 64, 3), np.uint8))
        (True, None)
    """
    from dit_attn.pipelines.shapes.scoring import SUBJECT_THRESHOLD, find_subject
    from dit_attn.pipelines.shapes.geometry import SUBJECTS

    m = find_subject(image, SUBJECTS[0])  # scores every subject; the argument only decides what `present` means
    return m.best_subject if m.best_subject is not None and m.scores[m.best_subject] >= SUBJECT_THRESHOLD else None


def reference_following(images: Sequence[np.ndarray], scenes: Sequence, references: Sequence[str]) -> dict:
    """Of images generated with another subject's reference under each scene's keyword: the fraction whose
    drawn sprite (:func:`drawn_subject`) is the reference's and the fraction where it is the keyword's.

    Example (renders of the scenes as captioned draw the keyword's sprite)::

        >>> from dit_attn.pipelines.shapes.render import render_image
        >>> scenes = heldout_scenes("subject", 2)
        >>> reference_following([render_image(s) for s in scenes], scenes, swapped_references(scenes))
        {'follows_reference': 0.0, 'follows_keyword': 1.0}
    """
    drawn = [drawn_subject(img) for img in images]
    n = max(len(images), 1)
    return {"follows_reference": sum(d == r for d, r in zip(drawn, references)) / n,
            "follows_keyword": sum(d == s.subject for d, s in zip(drawn, scenes)) / n}


def save_grid(path: str, scenes: Sequence, condition: str, images: Sequence[np.ndarray], columns: int = 8,
              edge_maps: Optional[Sequence[np.ndarray]] = None) -> str:
    """Save a PNG of ``images`` under their condition inputs: per block of ``columns`` scenes, a row of condition
    images (edge maps / subject references; ``edge_maps``: these maps) above the row of generations. Returns
    ``path``.

    Example::

        >>> import tempfile, os
        >>> scenes = heldout_scenes("subject", 3)
        >>> out = save_grid(os.path.join(tempfile.mkdtemp(), "g.png"), scenes, "subject",
        ...                 [np.zeros((64, 64, 3), np.uint8)] * 3)
        >>> from PIL import Image; Image.open(out).size
        (192, 128)
    """
    from PIL import Image

    from dit_attn.pipelines.shapes.data import tile

    if len(images) != len(scenes) or not images:
        raise ValueError(f"need one image per scene, got {len(images)} images for {len(scenes)} scenes")
    size = images[0].shape[0]
    maps = edge_maps if edge_maps is not None else [None] * len(scenes)
    cond = [np.clip(np.rint((condition_image(s, condition, size, edges=m).movedim(0, -1).numpy() + 1) * 127.5),
                    0, 255).astype(np.uint8) for s, m in zip(scenes, maps)]
    rows = []
    for start in range(0, len(images), columns):
        rows += [cond[start:start + columns], list(images[start:start + columns])]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(tile(rows, pad=0, fill=0)).save(path)
    return path


def fidelity(pipe, condition: str = "edge", modes: Sequence[str] = MODES, n: int = 32, seed: int = 0,
             adapter: Optional[str] = "default", batch: int = 8, epsilon: float = 0.2, steps: Optional[int] = None,
             guidance: Optional[float] = None, progress: bool = True,
             mode_adapters: Optional[dict[str, str]] = None, grid_prefix: Optional[str] = None,
             reference_swap: bool = False, edge_style: str = "rendered",
             tolerance: int = 1) -> dict[str, dict[str, float]]:
    """``{mode: scores}`` on ``n`` held-out scenes (see the module docstring). ``adapter="default"`` uses the
    bundled adapter of ``condition`` (``"edges"`` / ``"subject"``); ``None`` runs the condition without one.
    ``mode_adapters``: ``{mode: adapter .safetensors}`` trained in that mode, loaded under the adapter's name
    before that mode runs (each mode with its own adapter: the fair comparison). ``grid_prefix``: also save
    each mode's generations under their conditions as ``{grid_prefix}_{condition}_{mode}.png`` (:func:`save_grid`).
    ``reference_swap`` (subject): also ``follows_reference`` / ``follows_keyword`` per mode (module docstring;
    twice the generations). ``edge_style`` (edge): condition on the rendered outlines or on hand drawings of the
    same scenes (:data:`EDGE_STYLES`, :func:`edge_drawings` with this ``seed``), scored against the drawn
    silhouettes; ``tolerance``: of the edge F1, in pixels."""
    from tqdm.auto import tqdm

    from dit_attn.conditions.adapters import load_condition_adapter

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown modes {bad}; expected some of {MODES}")
    if edge_style not in EDGE_STYLES:
        raise ValueError(f"edge_style must be one of {EDGE_STYLES}, got {edge_style!r}")
    if adapter == "default":
        adapter = ADAPTERS[condition]
    scenes = heldout_scenes(condition, n, seed)
    drawings = (edge_drawings(scenes, edge_style, seed=seed) if condition == "edge" and edge_style != "rendered"
                else None)
    maps = [d.edges for d in drawings] if drawings is not None else None
    results = {}
    for mode in tqdm(list(modes), desc=f"fidelity ({condition})", disable=not progress):
        if mode_adapters and mode in mode_adapters:
            load_condition_adapter(pipe.transformer, mode_adapters[mode], adapter)
        images = generate_conditioned(pipe, scenes, condition, mode, adapter, seed=seed, batch=batch,
                                      epsilon=epsilon, steps=steps, guidance=guidance, edge_maps=maps)
        results[mode] = {k: round(v, 4) for k, v in score(images, scenes, tolerance, drawings).items()}
        if grid_prefix:
            tag = condition if drawings is None else f"{condition}-{edge_style}"
            save_grid(f"{grid_prefix}_{tag}_{mode}.png", scenes, condition, images, edge_maps=maps)
        if reference_swap and condition == "subject" and mode != "none":
            refs = swapped_references(scenes)
            swapped = generate_conditioned(pipe, scenes, condition, mode, adapter, seed=seed, batch=batch,
                                           epsilon=epsilon, steps=steps, guidance=guidance, references=refs)
            results[mode].update({k: round(v, 4) for k, v in reference_following(swapped, scenes, refs).items()})
    return results


# --- convergence curves of training runs --------------------------------------------------------------------------
def _checkpoints(run: str) -> list[tuple[int, str]]:
    found = []
    for d in os.listdir(run):
        if d.startswith("checkpoint-") and d.split("-")[1].isdigit():
            found.append((int(d.split("-")[1]), os.path.join(run, d)))
    return sorted(found)


@torch.no_grad()
def validation_loss(pipe, config, n: int = 32, levels: Sequence[float] = tuple(np.linspace(0.05, 0.95, 10)),
                    seed: int = 1) -> float:
    """Flow-matching loss of the loaded adapter on ``n`` held-out items, averaged over fixed noise levels ``t``
    with fixed noise (comparable across runs trained with different timestep samplings)."""
    from dataclasses import replace

    from .train import ConditionTrainer, _collate, _ShapesAdapter

    cfg = replace(config, mode="pka")
    ds = _ShapesAdapter(cfg.condition, cfg.size, n, seed, split="heldout")
    batch = _collate([ds[i] for i in range(n)])
    trainer = ConditionTrainer(pipe, cfg)
    try:
        x0 = trainer._latent_tokens(batch["image"])
        batch = dict(batch, image_latents=x0, condition_latents=trainer._latent_tokens(batch["condition"]))
        losses = []
        for j, t in enumerate(levels):
            gen = torch.Generator().manual_seed(seed * 1000 + j)
            losses.append(float(trainer.loss(batch, gen, t=torch.full((n,), float(t)))))
        return float(np.mean(losses))
    finally:
        trainer.close()


def convergence_curves(runs: Sequence[str], pipe_loader, n_loss: int = 32, n_gen: int = 16,
                       progress: bool = True) -> dict[str, list[dict]]:
    """``{run: [{"step", "val_loss", "edge_f1", ...}]}`` for every checkpoint of each adapter training run."""
    from tqdm.auto import tqdm

    from dit_attn.conditions.adapters import load_condition_adapter
    from .train import TrainConfig

    curves = {}
    for run in runs:
        with open(os.path.join(run, "state.json")) as f:
            cfg_dict = json.load(f)["config"]
        cfg_dict["target_modules"] = tuple(cfg_dict["target_modules"])
        config = TrainConfig(**cfg_dict)
        pipe = pipe_loader()
        rows = []
        for step, folder in tqdm(_checkpoints(run), desc=f"curve {os.path.basename(run)}", disable=not progress):
            name = load_condition_adapter(pipe.transformer, os.path.join(folder, f"{config.adapter_name}.safetensors"),
                                          config.adapter_name, config=asdict(config))
            row = {"step": step, "val_loss": round(validation_loss(pipe, config, n=n_loss), 5)}
            if n_gen:
                scenes = heldout_scenes(config.condition, n_gen)
                images = generate_conditioned(pipe, scenes, config.condition, "pka", name)
                row.update({k: round(v, 4) for k, v in score(images, scenes).items() if k != "n"})
            rows.append(row)
        curves[run] = rows
    return curves


def plot_curves(curves: dict[str, list[dict]], path: str, labels: Optional[dict[str, str]] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["val_loss"] + [k for k in ("edge_f1", "subject") if any(k in r for rows in curves.values() for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
    axes = np.atleast_1d(axes)
    for run, rows in curves.items():
        for ax, key in zip(axes, keys):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=(labels or {}).get(run, os.path.basename(run)))
    for ax, key in zip(axes, keys):
        ax.set_xlabel("adapter training step")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dit_attn.pipelines.conditions.fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--condition", choices=sorted(ADAPTERS), nargs="+", default=["edge", "subject"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--n", type=int, default=32, help="held-out scenes per condition")
    p.add_argument("--model", default=None, help="a FLUX-architecture ShapesWorld folder (default: the bundled flux)")
    p.add_argument("--curves", nargs="+", default=None, help="adapter training runs to score checkpoint by checkpoint")
    p.add_argument("--n-gen", type=int, default=16, help="--curves: generations per checkpoint (0: loss only)")
    p.add_argument("--mode-adapters", nargs="+", default=None, metavar="MODE=PATH",
                   help="an adapter .safetensors trained in each mode (e.g. pka=runs/pka/edges.safetensors), loaded "
                        "under the condition's adapter name before that mode runs; one --condition only")
    p.add_argument("--out", default=None, help="JSON file for the results (a PNG beside it for --curves)")
    p.add_argument("--reference-swap", action="store_true",
                   help="subject: also generate with another subject's reference under each keyword and report how "
                        "often the reference's sprite is drawn (follows_reference) vs the keyword's")
    p.add_argument("--grids", action="store_true",
                   help="with --out: also save each mode's generations under their conditions, OUT_<condition>_<mode>.png")
    p.add_argument("--edge-style", nargs="+", default=["rendered"], choices=EDGE_STYLES,
                   help="edge: condition on the rendered outlines and/or hand drawings of the same scenes ('hand': a "
                        "random preset per scene; results under 'edge' and 'edge-<style>')")
    p.add_argument("--tolerance", type=int, default=1, help="edge F1 tolerance in pixels (the hand-drawn "
                                                             "measurements use 2)")
    p.add_argument("--seed", type=int, default=0, help="held-out scenes, drawings and generator seeds")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.grids and not a.out:
        p.error("--grids needs --out (the grids are saved beside it)")
    if a.threads:
        torch.set_num_threads(a.threads)

    def loader(adapters=True):
        if a.model:
            import diffusers

            pipe = diffusers.FluxPipeline.from_pretrained(a.model, **dtype_kwargs(torch.float32), use_safetensors=True,
                                                          local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            if adapters:
                from dit_attn.conditions.adapters import load_condition_adapters

                load_condition_adapters(pipe.transformer, os.path.join(a.model, "adapters"))
            return pipe
        from dit_attn.pipelines import load_shapes

        return load_shapes("flux", adapters=adapters)

    if a.curves:
        result = convergence_curves(a.curves, lambda: loader(adapters=False), n_gen=a.n_gen)
        if a.out:
            plot_curves(result, os.path.splitext(a.out)[0] + ".png")
    else:
        mode_adapters = None
        if a.mode_adapters:
            if len(a.condition) != 1:
                p.error("--mode-adapters needs exactly one --condition")
            pairs = [m.split("=", 1) for m in a.mode_adapters]
            bad = [m for m, pair in zip(a.mode_adapters, pairs) if len(pair) != 2 or pair[0] not in MODES[1:]]
            if bad:
                p.error(f"--mode-adapters takes MODE=PATH with MODE in {MODES[1:]}; got {bad}")
            mode_adapters = dict(pairs)
        pipe = loader()
        prefix = os.path.splitext(a.out)[0] if a.grids else None
        result = {}
        for c in a.condition:
            for style in (a.edge_style if c == "edge" else ["rendered"]):
                key = c if style == "rendered" else f"{c}-{style}"
                result[key] = fidelity(pipe, c, a.modes, n=a.n, seed=a.seed, mode_adapters=mode_adapters,
                                       grid_prefix=prefix, reference_swap=a.reference_swap, edge_style=style,
                                       tolerance=a.tolerance)
    text = json.dumps(result, indent=1)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
