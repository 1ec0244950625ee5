"""Quality of rectified sparse attention vs dense: per-layer error on captured q/k/v and final-output PSNR/SSIM.

``python -m dit_attn.bench.sparse_quality --model tiny:wan --out DIR``

1. Runs the pipeline densely with a capture control that keeps every attention call's q, k, v, mask and layout.
2. For each captured call RectifiedSparse applies to, and each (variant, sparsity): relative error
   ``|o - o_dense| / |o_dense|`` and cosine similarity of the attention output (averaged over steps per layer),
   plus the computed-block density.
3. Runs the whole pipeline with each (variant, sparsity) and reports PSNR and SSIM of the output vs the dense run
   (same seed).
4. Writes ``quality.json`` and ``per_layer.png`` / ``final.png`` (matplotlib) into ``--out``.

``--samples N`` repeats 1-3 for N (prompt, seed) pairs and averages (one prompt and one seed is a small sample:
on trained models the ranking of the variants can flip between seeds); each sample's PSNR / SSIM is kept in
the JSON, with the standard error over the samples (``psnr_stderr``, ``ssim_stderr``; None for one sample) and the
paired gain over plain block-sparse (``psnr_gain_vs_block``). Per layer it also keeps the requested density
``1 - sparsity`` next to the achieved one and its breakdown (:mod:`dit_attn.sparse.density`).

:data:`DOCS_PROTOCOL` is the run behind the trained-model claim in ``docs/rectified_sparse.md``; ``dit-attn
bench`` runs the same protocol (its ``--quick`` run on the first ``quick_samples`` samples) and prints the docs'
numbers restricted to the same samples next to its own (:func:`restrict_samples`).

Models: ``tiny:<family>`` (``dit_attn.testing`` tiny random-weight pipelines: sd3, flux, wan, hunyuan_video,
cogvideox), ``shapes:t2v`` / ``shapes:t2i`` (the bundled ShapesWorld models), or a local diffusers pipeline
directory (``DiffusionPipeline.from_pretrained``, never downloads). The default is ShapesWorld t2v when installed,
else ``tiny:wan``. Tiny and ShapesWorld models have 64-192 tokens:
use small blocks (the default there is 8 / 16) and ``--no-neighbors``, or every block is a neighbour and nothing
is sparse.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import dit_attn
from dit_attn.call import AttentionCall, execute
from dit_attn.controls.base import Control

from dit_attn.sparse import sparse_attention
from dit_attn.sparse.density import density_report
from dit_attn.sparse.selection import DENSITY_PARTS, VARIANTS

from .timing import default_model

# The run behind the trained-model quality claim in docs/rectified_sparse.md (samples i use seed i and held-out
# caption i, so the first n samples of that run are exactly an n-sample run).
DOCS_PROTOCOL = {
    "model": "shapes:t2v", "steps": 4, "sparsities": [0.5, 0.75], "block_size": 16, "neighbors": False, "seed": 0,
    "samples": 32, "quick_samples": 4, "results": "docs/results/sparse_quality_shapes_t2v/quality.json",
}


def docs_results() -> dict | None:
    """The JSON of :data:`DOCS_PROTOCOL`'s run (``None`` outside a source checkout)."""
    path = Path(__file__).resolve().parents[2] / DOCS_PROTOCOL["results"]
    return json.loads(path.read_text()) if path.is_file() else None


def stderr(values) -> float | None:
    """Standard error of the mean (``None`` for fewer than two values)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def restrict_samples(results: dict, n: int) -> dict:
    """``results`` as if only its first ``n`` samples had been run: final means, standard errors and paired gains
    recomputed (per-layer errors are pooled over samples in the JSON, so they are dropped)."""
    final = {}
    for variant, per_sp in results["final"].items():
        for sp, e in per_sp.items():
            ps, ss = e["psnr_samples"][:n], e["ssim_samples"][:n]
            final.setdefault(variant, {})[sp] = dict(
                e, psnr_samples=ps, ssim_samples=ss, psnr=float(np.mean(ps)), ssim=float(np.mean(ss)),
                psnr_stderr=stderr(ps), ssim_stderr=stderr(ss), samples=len(ps))
    out = dict(results, final=final, samples=min(n, results["samples"]), per_layer={})
    if "block" in results["variants"] and len(results["variants"]) > 1:
        out["psnr_gain_vs_block"] = paired_psnr_gain(out)
    return out


class _Capture(Control):
    """Keeps every call's q, k, v, stock mask and layout (dense run)."""

    def __init__(self):
        self.calls = []

    def prepare(self, call):
        keep = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        self.calls.append((keep(call.query), keep(call.key), keep(call.value), keep(call.attn_mask), call.layout,
                           call.scale))
        return call


def _load(model: str, steps: int):
    """(pipeline, ``call_kwargs(i, seed)`` giving the i-th sample's call, default block size).

    Sample i uses seed ``seed + i``; ShapesWorld models also take the i-th held-out caption of their kind, so a
    multi-sample run averages over prompts as well as noise draws.
    """
    if model.startswith("tiny:"):
        from dit_attn.testing import tiny_call_kwargs, tiny_pipeline

        fam = model.split(":", 1)[1]
        return tiny_pipeline(fam), lambda i, seed: tiny_call_kwargs(fam, steps=steps, seed=seed + i), 8
    if model.startswith("shapes:"):
        from dit_attn.pipelines import load_shapes, shapes_call_kwargs
        from dit_attn.pipelines.shapes import eval_prompts

        kind = model.split(":", 1)[1]
        base = shapes_call_kwargs(kind, steps=steps)

        def call_kwargs(i, seed):
            prompt = eval_prompts(kind, "heldout", n=i + 1)[i][0]
            return dict(base, prompt=prompt, generator=torch.Generator().manual_seed(seed + i), output_type="np")

        # 64 image tokens per frame (t2v: 3 latent frames, 192 tokens): blocks of 16 give 4-12 blocks per row.
        return load_shapes(kind), call_kwargs, 16
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True, use_safetensors=True)
    return pipe, lambda i, seed: dict(prompt="a red circle above a blue square", num_inference_steps=steps,
                                      generator=torch.Generator().manual_seed(seed + i), output_type="np"), 128


def _default_model() -> str:
    """ShapesWorld t2v when installed, else t2i, else ``tiny:wan``."""
    return default_model(("t2v", "t2i"), fallback="tiny:wan")


def _frames(result) -> np.ndarray:
    """Output as float array [..., H, W, C] in [0, 1]."""
    x = result.frames if hasattr(result, "frames") else result.images
    if isinstance(x, list) and x and not isinstance(x[0], np.ndarray):
        x = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in x])
    return np.asarray(x, dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images in [0, 1] (inf when equal)."""
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Mean SSIM (uniform ``win`` x ``win`` window, grey = channel mean) over all frames of ``[..., H, W, C]``.

    >>> x = np.random.rand(2, 16, 16, 3)
    >>> round(ssim(x, x), 6)
    1.0
    """
    ga = torch.from_numpy(a.mean(-1).reshape(-1, 1, *a.shape[-3:-1]))
    gb = torch.from_numpy(b.mean(-1).reshape(-1, 1, *b.shape[-3:-1]))
    win = min(win, ga.shape[-1], ga.shape[-2])
    pool = lambda x: torch.nn.functional.avg_pool2d(x, win, stride=1)  # noqa: E731
    ma, mb = pool(ga), pool(gb)
    va, vb, cov = pool(ga * ga) - ma ** 2, pool(gb * gb) - mb ** 2, pool(ga * gb) - ma * mb
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return float(s.mean())


def evaluate(model: str, sparsities, variants, *, steps: int = 4, seed: int = 0, block_size: int | None = None,
             neighbors: bool = True, tau: float = 0.3, samples: int = 1, progress: bool = False) -> dict:
    """Run the whole evaluation and return the results as a JSON-able dict.

    ``samples`` > 1 repeats it for that many (prompt, seed) pairs: per-layer errors are averaged over every captured
    call of every sample; final PSNR / SSIM are the mean over samples, with each sample's value kept in
    ``final[variant][sparsity]["psnr_samples"]`` (and ``"ssim_samples"``) so the spread can be read.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    pipe, call_kwargs, default_bs = _load(model, steps)
    bs = block_size or default_bs

    def control(variant, sparsity, track=False):
        return dit_attn.RectifiedSparse(sparsity=sparsity, tau=tau, block_size=bs, neighbors=neighbors,
                                        variant=variant, track_density=track)

    layers: dict = {}
    final: dict = {}
    for i in tqdm(range(samples), desc="sparse quality samples", disable=not progress):
        cap = _Capture()
        with dit_attn.attach(pipe, cap):
            dense_out = _frames(pipe(**call_kwargs(i, seed)))
        for q, k, v, mask, layout, scale in cap.calls:
            if not control("full", 0.5).applies_to(layout):
                continue
            ref = execute(AttentionCall(q, k, v, layout, attn_mask=mask, scale=scale)).double()
            for variant in variants:
                for sp in sparsities:
                    c = control(variant, sp, track=True)
                    out = sparse_attention(c, q, k, v, layout, attn_mask=mask, scale=scale).double()
                    entry = layers.setdefault(str(layout.layer_index), {}).setdefault(variant, {}).setdefault(
                        str(sp), {"rel_err": [], "cosine": [], "density": [], "requested_density": [],
                                  **{f"density_{p}": [] for p in DENSITY_PARTS}})
                    entry["rel_err"].append(float((out - ref).norm() / ref.norm()))
                    entry["cosine"].append(float(torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(),
                                                                                       dim=0)))
                    rows = density_report(c)
                    entry["density"].append(rows[0]["achieved"] if rows else 1.0)
                    entry["requested_density"].append(1.0 - sp)
                    for p in DENSITY_PARTS:
                        entry[f"density_{p}"].append(rows[0]["parts"][p] if rows else 0.0)
        del cap
        for variant in variants:
            for sp in sparsities:
                c = control(variant, sp, track=True)
                with dit_attn.attach(pipe, c):
                    out = _frames(pipe(**call_kwargs(i, seed)))
                dens = float(torch.stack([d for _, _, d in c.density_log]).mean()) if c.density_log else 1.0
                entry = final.setdefault(variant, {}).setdefault(str(sp), {"psnr_samples": [], "ssim_samples": [],
                                                                           "density_samples": []})
                entry["psnr_samples"].append(psnr(out, dense_out))
                entry["ssim_samples"].append(ssim(out, dense_out))
                entry["density_samples"].append(dens)
    for per_variant in layers.values():
        for per_sp in per_variant.values():
            for key, e in per_sp.items():
                per_sp[key] = {m: float(np.mean(vals)) for m, vals in e.items()}
    for per_sp in final.values():
        for e in per_sp.values():
            e.update(psnr=float(np.mean(e["psnr_samples"])), ssim=float(np.mean(e["ssim_samples"])),
                     psnr_stderr=stderr(e["psnr_samples"]), ssim_stderr=stderr(e["ssim_samples"]),
                     samples=len(e["psnr_samples"]), density=float(np.mean(e.pop("density_samples"))))
    results = {"model": model, "steps": steps, "seed": seed, "samples": samples, "block_size": bs,
               "neighbors": neighbors, "tau": tau, "sparsities": list(sparsities), "variants": list(variants),
               "per_layer": layers, "final": final, "machine": os.uname().machine, "torch": torch.__version__}
    if "block" in variants and len(variants) > 1:
        results["psnr_gain_vs_block"] = paired_psnr_gain(results)
    return results


def paired_psnr_gain(results: dict, baseline: str = "block") -> dict:
    """Per variant and sparsity: mean PSNR gain over ``baseline`` on the same samples, its standard error (``None``
    for one sample) and on how many samples the variant wins. Pairing removes the between-prompt spread, which on
    trained models is larger than the differences between variants.

    >>> r = {"variants": ["rc", "block"], "sparsities": [0.5], "final": {
    ...     "rc": {"0.5": {"psnr_samples": [20.0, 18.0]}}, "block": {"0.5": {"psnr_samples": [19.0, 18.5]}}}}
    >>> gain = paired_psnr_gain(r)["rc"]["0.5"]
    >>> gain["mean"], round(gain["stderr"], 6), gain["wins"], gain["samples"]
    (0.25, 0.75, 1, 2)
    """
    out: dict = {}
    for variant in results["variants"]:
        if variant == baseline:
            continue
        for sp in results["sparsities"]:
            gain = (np.asarray(results["final"][variant][str(sp)]["psnr_samples"])
                    - np.asarray(results["final"][baseline][str(sp)]["psnr_samples"]))
            n = len(gain)
            out.setdefault(variant, {})[str(sp)] = {
                "mean": float(gain.mean()), "stderr": float(gain.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
                "wins": int((gain > 0).sum()), "samples": n}
    return out


def plot(results: dict, out_dir: Path) -> list[Path]:
    """``per_layer.png`` (relative error per layer, one panel per sparsity) and ``final.png`` (PSNR vs sparsity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sps, variants = results["sparsities"], results["variants"]
    layer_ids = sorted(results["per_layer"], key=int)
    fig, axes = plt.subplots(1, len(sps), figsize=(4 * len(sps), 3.2), squeeze=False)
    for ax, sp in zip(axes[0], sps):
        for variant in variants:
            ys = [results["per_layer"][lid][variant][str(sp)]["rel_err"] for lid in layer_ids]
            ax.plot([int(x) for x in layer_ids], ys, marker="o", label=variant)
        ax.set_title(f"sparsity {sp}")
        ax.set_xlabel("layer")
        ax.set_ylabel("relative error vs dense")
    axes[0][0].legend()
    fig.tight_layout()
    p1 = out_dir / "per_layer.png"
    fig.savefig(p1, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for variant in variants:
        ys = [min(results["final"][variant][str(sp)]["psnr"], 100.0) for sp in sps]
        ax.plot(sps, ys, marker="o", label=variant)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("PSNR vs dense (dB)")
    ax.legend()
    fig.tight_layout()
    p2 = out_dir / "final.png"
    fig.savefig(p2, dpi=100)
    plt.close(fig)
    return [p1, p2]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m dit_attn.bench.sparse_quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="tiny:<family>, shapes:t2v|t2i, or a local pipeline directory")
    ap.add_argument("--out", required=True, help="output directory (quality.json, per_layer.png, final.png)")
    ap.add_argument("--sparsities", default="0.5,0.75,0.9")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1,
                    help="(prompt, seed) pairs to average over: seeds seed..seed+N-1, ShapesWorld held-out captions")
    ap.add_argument("--block-size", type=int, default=None, help="default: 8 for tiny models, else 128")
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--no-neighbors", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; allowed: {', '.join(VARIANTS)}")
    try:
        sparsities = [float(s) for s in args.sparsities.split(",") if s]
    except ValueError:
        ap.error(f"--sparsities must be comma-separated numbers; got {args.sparsities!r}")
    if args.samples < 1:
        ap.error(f"--samples must be >= 1; got {args.samples}")
    model = args.model or _default_model()
    results = evaluate(model, sparsities, variants, steps=args.steps, seed=args.seed, block_size=args.block_size,
                       neighbors=not args.no_neighbors, tau=args.tau, samples=args.samples, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    plot(results, out)
    for variant in variants:
        row = "  ".join(f"sp={sp}: PSNR {results['final'][variant][str(sp)]['psnr']:.1f} dB "
                        f"(min {min(results['final'][variant][str(sp)]['psnr_samples']):.1f}) "
                        f"SSIM {results['final'][variant][str(sp)]['ssim']:.3f} "
                        f"(density {results['final'][variant][str(sp)]['density']:.2f})" for sp in sparsities)
        print(f"{variant:>5}: {row}")
    for variant, per_sp in results.get("psnr_gain_vs_block", {}).items():
        row = "  ".join(f"sp={sp}: {g['mean']:+.2f} dB" + (f" ± {g['stderr']:.2f}" if g["stderr"] is not None else "")
                        + f", wins {g['wins']}/{g['samples']}" for sp, g in per_sp.items())
        print(f"{variant:>5} vs block (paired): {row}")
    return results


if __name__ == "__main__":
    main()
