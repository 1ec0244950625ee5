"""HeadHunter head search (arXiv 2506.10978, Alg. 1): greedy rounds of per-head SoftPAG scoring.

``S = base``; each round, every remaining candidate head ``h`` is scored by generating every prompt x seed pair
with SoftPAG on ``S ∪ {h}`` and averaging ``objective(images, prompts)``; the ``top_k`` best heads join ``S``.
Every per-head score is written to ``out_dir`` as soon as it is known (one JSON file per process), so an
interrupted search resumes where it stopped; with ``accelerate launch`` the candidates of a round are split over
the processes (``PartialState().split_between_processes``) and gathered through those files.

Outputs in ``out_dir``: ``scores.rank<i>.json`` (checkpoints), ``heads.json`` (the selected :class:`HeadSet`),
``heatmap.png`` (layers x heads, per-head scores of the first round) and ``heatmap_round<r>.png`` for later rounds.

Example (tiny pipeline, a cheap objective)::

    import dit_attn
    from dit_attn.testing import tiny_pipeline

    pipe = tiny_pipeline("sd3")
    brightness = lambda images, prompts: [sum(im.convert("L").getdata()) / 255 / im.size[0] / im.size[1]
                                          for im in images]
    result = dit_attn.search_heads(pipe, candidates="transformer_blocks.0:*; transformer_blocks.1:0",
                                   objective=brightness, prompts=["a red circle"], seeds=[0], rounds=2, top_k=1,
                                   out_dir="heads/", num_inference_steps=2, height=48, width=64,
                                   guidance_scale=1.0)
    print(result.heads)   # e.g. transformer_blocks.0:1; transformer_blocks.1:0
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .heads import HeadSet

Head = tuple[str, int, int]  # (block_list, block_index, head)


def _head_key(h: Head) -> str:
    return f"{h[0]}.{h[1]}:{h[2]}"


@dataclass
class SearchResult:
    heads: HeadSet  # the selected set S
    rounds: list[dict[str, float]]  # per round: head key -> mean score
    selected: list[list[str]]  # heads added in each round
    files: dict[str, str] = field(default_factory=dict)


def check_prompts(prompts, objective=None) -> list[str]:
    """``prompts`` as a list of non-empty strings, checked against ``objective.check_prompts`` when it has one.

    Raises ``ValueError`` naming the bad prompt; run before any generation (and, in the CLI, before the model loads).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts or [])
    if not prompts:
        raise ValueError("search_heads needs prompts=[...] (at least one non-empty prompt)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is {p!r}; every prompt must be a non-empty string")
    check = getattr(objective, "check_prompts", None)
    if check is not None:
        check(prompts)
    return prompts


def read_prompts(path) -> list[str]:
    """Prompts from a text file (one prompt per line; blank lines and lines starting with ``#`` skipped) or a
    ``.json`` file holding a list of strings. Raises ``ValueError`` saying what is wrong with the file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--prompts file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"--prompts {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --prompts file {str(path)!r} as UTF-8 text: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--prompts file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(data, list) or not all(isinstance(p, str) and p.strip() for p in data):
            raise ValueError(f"--prompts file {str(path)!r}: a JSON prompts file holds a list of non-empty strings")
        prompts = [p.strip() for p in data]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts file {str(path)!r} holds no prompts (expected one prompt per line)")
    return prompts


def _check_distinct(round_scores: dict[str, float], r: int, n_prompts: int, n_seeds: int, hint: str | None) -> None:
    """Refuse a round whose candidates all scored the same: the greedy pick would be arbitrary (head order)."""
    if len(round_scores) < 2:
        return
    values = list(round_scores.values())
    finite = [v for v in values if math.isfinite(v)]
    if finite and len(finite) < len(values):
        return  # non-finite scores rank last: the round still tells heads apart
    if finite:
        lo, hi = min(finite), max(finite)
        if hi - lo > 1e-12 * max(1.0, abs(hi)):
            return
        what = f"scored exactly {hi:g}" if hi == lo else f"scored {lo:g} to {hi:g} (equal up to rounding)"
    else:
        what = "got no finite score"
    raise ValueError(
        f"degenerate head-search objective: all {len(values)} candidate heads {what} in round {r + 1} "
        f"({n_prompts} prompt(s) x {n_seeds} seed(s)), so the objective cannot tell heads apart on this model and "
        "these prompts; selecting heads from it would be arbitrary, so nothing was selected. "
        + (hint + " " if hint else "Try other prompts, more steps or seeds, a trained model, or another objective. ")
        + "The scores so far are kept in the checkpoint files.")


def candidate_heads(transformer, candidates=None) -> list[Head]:
    """All ``(block_list, block, head)`` of the main attention of every block (never cross-attention, never SD3.5's
    ``attn2``), or those of ``candidates`` (a :class:`HeadSet`, a spec string, or a list of triples)."""
    if candidates is None:
        from .families import family_of

        mains = {}
        for bl, attr, _ in family_of(transformer).sites:
            mains.setdefault(bl, attr)
        return [(bl, i, h) for bl, i, attr, n, kind in HeadSet.model_layers(transformer)
                if attr == mains[bl] and kind not in ("cross", "cross_image") for h in range(n)]
    if isinstance(candidates, (list, tuple)) and candidates and not isinstance(candidates[0], str):
        candidates = HeadSet.from_pairs(candidates)
    return sorted(dict.fromkeys(HeadSet.parse(candidates).pairs(transformer)))


def _atomic_write(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _process():
    """(index, count, split) of this process; accelerate when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState()
        return state.process_index, state.num_processes, state
    return 0, 1, None


def search_heads(pipe, candidates=None, objective: Callable | None = None, prompts: Sequence[str] | None = None,
                 seeds: Sequence[int] = (0,), rounds: int = 1, top_k: int = 1, strength: float = 1.0,
                 scale: float = 3.0, scope: str = "all", out_dir: str | os.PathLike = "heads",
                 base=None, progress: bool = True, **call_kwargs) -> SearchResult:
    """Greedy HeadHunter search on ``pipe`` (any supported diffusers pipeline).

    Args:
        candidates: heads to consider (default: every head of every block's main attention).
        objective: ``objective(images: list[PIL.Image], prompts: list[str]) -> list[float]`` (higher is better);
            required. An objective may carry ``default_prompts`` (used when ``prompts`` is None),
            ``check_prompts(prompts)`` (run before any generation) and ``degenerate_hint`` (added to the error when
            every head scores alike), as the ShapesWorld evaluator's does
            (:func:`dit_attn.pipelines.head_search.shapes_objective`).
        prompts, seeds: every prompt is generated with every seed (generator ``manual_seed(seed)``).
        rounds, top_k: R greedy rounds, each adding the k best heads.
        strength, scale, scope: the SoftPAG used while searching (paper: u = 1, then apply lower u).
        out_dir: checkpoints and outputs (see the module docstring); an existing search there is resumed.
        base: heads perturbed in every candidate run (a starting S).
        call_kwargs: passed to every pipeline call (steps, size, guidance...; the paper searches without CFG).

    Raises:
        ValueError: bad arguments or prompts (checked before any generation: ``objective.check_prompts(prompts)``
            runs when the objective has it), or a degenerate objective — every candidate of a round scored the same
            (e.g. the ShapesWorld objective on an untrained model: all 0.0), so no head can be chosen over another.

    Example (the two heads of block 0 of a tiny SD3, one round, mean brightness as a cheap objective)::

        >>> import os, tempfile
        >>> import numpy as np
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd3")
        >>> def brightness(images, prompts):
        ...     return [float(np.asarray(im, dtype=float).mean()) for im in images]
        >>> with tempfile.TemporaryDirectory() as out:
        ...     result = dit_attn.search_heads(pipe, candidates="transformer_blocks.0:*", objective=brightness,
        ...                                    prompts=["a red circle"], seeds=[0], rounds=1, top_k=1, out_dir=out,
        ...                                    progress=False, num_inference_steps=1, height=48, width=64,
        ...                                    guidance_scale=1.0)
        ...     files = sorted(os.listdir(out))
        >>> sorted(result.rounds[0]), len(result.heads)
        (['transformer_blocks.0:0', 'transformer_blocks.0:1'], 1)
        >>> files
        ['heads.json', 'heatmap.png', 'scores.rank0.json']
    """
    from .attachment import attach
    from .controls.head_guidance import SoftPAG

    if objective is None:
        raise ValueError("search_heads needs objective=(images, prompts) -> scores, e.g. the ShapesWorld evaluator "
                         "dit_attn.pipelines.head_search.shapes_objective()")
    prompts = check_prompts(prompts if prompts is not None else getattr(objective, "default_prompts", None),
                            objective)
    if rounds < 1 or top_k < 1:
        raise ValueError(f"rounds and top_k must be >= 1; got rounds={rounds}, top_k={top_k}")
    for reserved in ("prompt", "generator", "output_type"):
        if reserved in call_kwargs:
            raise ValueError(f"search_heads sets {reserved!r} itself; remove it from the call arguments")
    transformer = pipe.transformer
    pool = candidate_heads(transformer, candidates)
    if not pool:
        raise ValueError("search_heads: no candidate heads")
    selected: list[Head] = list(HeadSet.parse(base).pairs(transformer)) if base else []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, state = _process()
    config = {"prompts": list(prompts), "seeds": [int(s) for s in seeds], "strength": strength, "scale": scale,
              "scope": scope, "call_kwargs": {k: repr(v) for k, v in sorted(call_kwargs.items())}}
    mine = out / f"scores.rank{rank}.json"
    scores = _load_scores(out, config)  # "round|S|head" -> score, from every process's file
    own = {k: v for k, v in scores.items()}

    def score(heads: list[Head]) -> float:
        images, texts = [], []
        hs = HeadSet.from_pairs(heads)
        with attach(pipe, SoftPAG(hs, strength=strength, scale=scale, scope=scope)):
            for p in prompts:
                for s in seeds:
                    result = pipe(prompt=p, generator=torch.Generator().manual_seed(int(s)), output_type="pil",
                                  **call_kwargs)
                    ims = result.images if hasattr(result, "images") else [f[0] for f in result.frames]
                    images.append(ims[0])
                    texts.append(p)
        values = [float(v) for v in objective(images, texts)]
        if len(values) != len(images):
            raise ValueError(f"objective returned {len(values)} scores for {len(images)} images")
        return sum(values) / len(values)

    per_round, added = [], []
    from tqdm.auto import tqdm

    for r in range(rounds):
        remaining = [h for h in pool if h not in selected]
        if not remaining:
            break
        prefix = f"{r}|{HeadSet.from_pairs(selected).to_spec() if selected else '-'}|"
        share = remaining
        if state is not None and world > 1:
            with state.split_between_processes(remaining) as part:
                share = list(part)
        todo = [h for h in share if prefix + _head_key(h) not in scores]
        bar = tqdm(total=len(share), initial=len(share) - len(todo), desc=f"round {r + 1}/{rounds}",
                   disable=not progress or rank != 0, leave=False)
        for h in todo:
            value = score(selected + [h])
            scores[prefix + _head_key(h)] = own[prefix + _head_key(h)] = value
            _atomic_write(mine, {"config": config, "scores": own})  # checkpoint every head
            bar.update(1)
        bar.close()
        if state is not None and world > 1:
            state.wait_for_everyone()
            scores.update(_load_scores(out, config))
        round_scores = {_head_key(h): scores[prefix + _head_key(h)] for h in remaining}
        _check_distinct(round_scores, r, len(prompts), len(seeds), getattr(objective, "degenerate_hint", None))
        # Best first; ties broken by head order so that every process picks the same heads.
        order = sorted(remaining, key=lambda h: (-_finite(round_scores[_head_key(h)]), pool.index(h)))
        best = order[:top_k]
        selected.extend(best)
        per_round.append(round_scores)
        added.append([_head_key(h) for h in best])

    heads = HeadSet.from_pairs(selected, source=f"dit_attn head search: {rounds} round(s), top {top_k}, "
                                                f"u={strength}, w={scale}, {len(prompts)} prompt(s) x "
                                                f"{len(seeds)} seed(s)")
    files = {}
    if rank == 0:
        # The head set plus every round's per-head scores (HeadSet.from_dict ignores the extra keys; the app draws
        # its heatmap from them).
        _atomic_write(out / "heads.json", {**heads.to_dict(), "scores": per_round[0] if per_round else {},
                                           "rounds": per_round, "selected": added})
        files["heads"] = str(out / "heads.json")
        for r, round_scores in enumerate(per_round):
            name = "heatmap.png" if r == 0 else f"heatmap_round{r + 1}.png"
            files[f"heatmap{r}"] = str(plot_heatmap(transformer, round_scores, out / name,
                                                    title=f"per-head score, round {r + 1}"))
    return SearchResult(heads, per_round, added, files)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def _load_scores(out: Path, config: dict) -> dict[str, float]:
    scores: dict[str, float] = {}
    for path in sorted(out.glob("scores.rank*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a half-written file of a crashed run: its scores are recomputed
        if data.get("config") != config:
            raise ValueError(f"{path} holds a search with other settings ({data.get('config')}); use another "
                             "out_dir or delete it")
        scores.update(data.get("scores", {}))
    return scores


def heatmap_image(data: dict):
    """A layers × heads heatmap (PIL image) from the ``scores`` of a ``heads.json`` written by the search (no model
    needed: layers are the ``block_list.index`` keys that were scored, in model order)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    scores = data.get("scores") or {}
    parsed = []
    for key, value in scores.items():
        layer, _, head = key.rpartition(":")
        block_list, _, index = layer.rpartition(".")
        if not (block_list and index.isdigit() and head.isdigit()):
            raise ValueError(f"bad head key {key!r} in the scores (expected 'block_list.index:head')")
        parsed.append((block_list, int(index), int(head), float(value)))
    if not parsed:
        raise ValueError("no per-head scores in this file")
    lists = list(dict.fromkeys(p[0] for p in parsed))
    layers = sorted({(p[0], p[1]) for p in parsed}, key=lambda x: (lists.index(x[0]), x[1]))
    grid = np.full((len(layers), max(p[2] for p in parsed) + 1), np.nan)
    for bl, i, h, v in parsed:
        grid[layers.index((bl, i)), h] = v
    fig, ax = plt.subplots(figsize=(max(4, grid.shape[1] * 0.3 + 2), max(3, grid.shape[0] * 0.25 + 1.5)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_yticks(range(len(layers)), [f"{bl}.{i}" for bl, i in layers], fontsize=6)
    ax.set_title("per-head score, round 1")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def plot_heatmap(transformer, round_scores: dict[str, float], path, title: str = "per-head score") -> Path:
    """A layers x heads heatmap PNG (flat layer index in model order; blank = not scored)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .families import family_of

    mains = {}
    for bl, attr, _ in family_of(transformer).sites:
        mains.setdefault(bl, attr)
    layers = [(bl, i, n) for bl, i, attr, n, _ in HeadSet.model_layers(transformer) if attr == mains[bl]]
    grid = np.full((len(layers), max(n for *_, n in layers)), np.nan)
    for row, (bl, i, n) in enumerate(layers):
        for h in range(n):
            grid[row, h] = round_scores.get(f"{bl}.{i}:{h}", np.nan)
    fig, ax = plt.subplots(figsize=(max(4, grid.shape[1] * 0.3 + 2), max(3, grid.shape[0] * 0.25 + 1.5)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer (flat)")
    ax.set_yticks(range(len(layers)), [f"{r} {bl.split('_')[0]}.{i}" for r, (bl, i, _) in enumerate(layers)],
                  fontsize=6)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
