"""``dit-attn bench``: run every benchmark this machine can run and write one report (markdown + plots).

Each section is a small function that runs one benchmark of the project (processor overhead, kernels, guidance
cost, sparse-attention quality and speed, multi-condition scaling), writes its JSON and plots into the report
folder and returns a markdown fragment. A section that needs a CUDA GPU says so on a CPU machine instead of
printing numbers that would mean nothing; a section whose feature is not in this build says that too.

    python -m dit_attn.bench.report --out bench/report [--quick] [--only overhead,kernels]

The report (``report.md``) starts with the machine: CPU, threads, GPU name (or "none"), torch, diffusers and
the date, so numbers are never separated from where they were measured. Every quality number carries its sample
size and standard error, and every target is marked met or **MISSED** (or "not measured").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .timing import machine_info

logger = logging.getLogger("dit_attn")


# Targets the report marks met or **MISSED** (the docs state the same ones).
OVERHEAD_TARGET = 1.05  # attached without controls / stock wall time
EMPHASIS_TARGET = 1.05  # emphasis path / plain attention
GUIDANCE_TARGETS = {"batched": 1.55, "uncond": 1.05}  # SoftPAG step time / CFG-only step time, by mode


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Callable[[Path, bool], str]  # (report folder, quick) -> markdown
    needs_gpu: bool = False
    min_gpus: int = 0  # sections that split one generation over several GPUs


def _plot_bars(labels, values, ylabel, path: Path, reference: float | None = None) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional: the tables carry every number
        logger.info("matplotlib is not installed (pip install 'dit_attn[bench]'): the report has no plots")
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels)), 3.2))
    ax.bar(labels, values, color="#4c72b0")
    if reference is not None:
        ax.axhline(reference, color="#c44e52", linestyle="--", linewidth=1, label=f"target {reference:g}")
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    """``met`` or ``**MISSED**`` for a measured value against its target (a missed target is never silent)."""
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**MISSED**"


def _pm(mean: float, se: float | None, n: int, fmt: str = ".1f") -> str:
    """``mean ± SE (n = N)``; ``n = 1`` has no standard error and says so."""
    spread = f" ± {se:{fmt.lstrip('+')}}" if se is not None else " (no SE)"
    return f"{mean:{fmt}}{spread} (n = {n})"


# --- sections -----------------------------------------------------------------------------------------------------
def _overhead(out: Path, quick: bool) -> str:
    from . import overhead as bench_overhead

    path = out / "overhead.json"
    bench_overhead.main(["--json", str(path), "--repeats", "2" if quick else "5", "--steps", "2" if quick else "4"])
    data = json.loads(path.read_text())
    rows = data["results"]
    target = OVERHEAD_TARGET
    lines = [f"| family | stock s | attached s | ratio | target ≤ {target} |", "|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['stock_s']:.4f} | {r['attached_s']:.4f} | {r['ratio']:.3f} | "
              f"{_verdict(r['ratio'], target)} |" for r in rows]
    missed = [f"{r['family']} ({r['ratio']:.3f})" for r in rows if r["ratio"] > target]
    png = _plot_bars([r["family"] for r in rows], [r["ratio"] for r in rows], "attached / stock time",
                     out / "overhead.png", reference=target)
    text = ("Wall time of each tiny pipeline with `dit_attn.attach(pipe)` (no controls) over stock, best of the "
            f"repeats, interleaved in one run. Target ≤ {target}: "
            + (f"**missed** by {', '.join(missed)}." if missed else "met by every family.")
            + "\n\n" + "\n".join(lines))
    if png:
        text += f"\n\n![overhead]({png.name})"
    return text


def _kernels(out: Path, quick: bool) -> str:
    from . import kernels as kernel_bench

    folder = out / "kernels"
    argv = ["--out", str(folder)] + (["--shapes", "flux,wan1.3b"] if quick else [])
    data = kernel_bench.main(argv)
    rows = [r for r in data["results"] if "tflops" in r]
    lines = ["| shape | variant | ms | TFLOP/s | dense-equiv TFLOP/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['variant']} | {r['ms']:.3f} | {r['tflops']:.1f} | "
              f"{r.get('dense_equiv_tflops', r['tflops']):.1f} |" for r in rows]
    return (f"{data['meta']['note']}. Full results: `kernels/bench_results.json`.\n\n" + "\n".join(lines)
            + "\n\n![kernels](kernels/bench_tflops.png)")


def _emphasis(out: Path, quick: bool) -> str:
    from . import emphasis as bench_emphasis

    rows = bench_emphasis.main(["--json", str(out / "emphasis.json")])
    lines = [f"| shape | plain ms | emphasis ms | ratio | target ≤ {EMPHASIS_TARGET} |", "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['plain_ms']:.3f} | {r['emphasis_ms']:.3f} | {r['ratio']:.3f} | "
              f"{_verdict(r['ratio'], EMPHASIS_TARGET)} |" for r in rows]
    missed = [r["shape"] for r in rows if r["ratio"] > EMPHASIS_TARGET]
    return ("Prompt emphasis (`log w` key bias on image rows through our kernel) vs plain attention, bf16. "
            f"Target ≤ {EMPHASIS_TARGET}: " + (f"**missed** at {', '.join(missed)}." if missed else "met at every shape.")
            + "\n\n" + "\n".join(lines))


def _sparse_quality(out: Path, quick: bool) -> str:
    from . import sparse_quality as quality

    folder = out / "sparse_quality"
    model = quality._default_model()
    proto = quality.DOCS_PROTOCOL
    if model == proto["model"]:  # the docs' protocol, so that the report and the docs measure the same thing
        samples = proto["quick_samples"] if quick else proto["samples"]
        argv = ["--steps", str(proto["steps"]), "--sparsities", ",".join(map(str, proto["sparsities"])),
                "--block-size", str(proto["block_size"]), "--seed", str(proto["seed"])]
        argv += [] if proto["neighbors"] else ["--no-neighbors"]
    else:
        samples = 2 if quick else 8
        argv = ["--steps", "2" if quick else "4", "--sparsities", "0.5,0.75" if quick else "0.5,0.75,0.9"]
        if model.startswith(("tiny:", "shapes:")):
            argv += ["--no-neighbors"]  # small token counts: every block would be a neighbour
    res = quality.main(["--out", str(folder), "--model", model, "--samples", str(samples)] + argv)
    return sparse_quality_markdown(res, quality.docs_results() if model == proto["model"] else None)


def sparse_quality_markdown(res: dict, docs: dict | None = None) -> str:
    """The sparse-quality section from a :func:`dit_attn.sparse.quality.evaluate` result: every number with its
    sample size and standard error; the docs' claim restricted to the same samples beside it (``docs``: the JSON
    of the docs' run, same protocol); per layer, the requested density next to the achieved one and why."""
    from dit_attn.sparse.selection import DENSITY_PARTS

    from . import sparse_quality as quality

    sps, n = res["sparsities"], res["samples"]
    lines = ["| variant | " + " | ".join(f"sparsity {sp}: PSNR dB / SSIM / density" for sp in sps) + " |",
             "|---|" + "---|" * len(sps)]
    for variant in res["variants"]:
        cells = [res["final"][variant][str(sp)] for sp in sps]
        lines.append(f"| {variant} | " + " | ".join(
            f"{_pm(c['psnr'], c.get('psnr_stderr'), n)} / {_pm(c['ssim'], c.get('ssim_stderr'), n, '.3f')} / "
            f"{c['density']:.2f}" for c in cells) + " |")
    text = [f"Final output vs the dense run on `{res['model']}`, {n} sample(s) (seeds {res['seed']}-"
            f"{res['seed'] + n - 1}), {res['steps']} steps, block size {res['block_size']}: mean ± standard error "
            "over the samples. Per-layer errors: `sparse_quality/quality.json`.", "", *lines]
    gains = res.get("psnr_gain_vs_block", {})
    if gains:
        docs_n = quality.restrict_samples(docs, n)["psnr_gain_vs_block"] if docs else None
        docs_all = docs.get("psnr_gain_vs_block") if docs else None
        head = "| variant vs block | sparsity | this run | " + (
            f"docs' run, same {n} samples | docs' claim (n = {docs['samples']}) |" if docs else "")
        rows = [head, "|---|---|---|" + ("---|---|" if docs else "")]
        for variant, per_sp in gains.items():
            for sp, g in per_sp.items():
                cell = f"{_pm(g['mean'], g['stderr'], g['samples'], '+.2f')} dB, wins {g['wins']}/{g['samples']}"
                row = f"| {variant} | {sp} | {cell} |"
                if docs:
                    d, a = docs_n[variant][sp], docs_all[variant][sp]
                    row += (f" {_pm(d['mean'], d['stderr'], d['samples'], '+.2f')} dB | "
                            f"{_pm(a['mean'], a['stderr'], a['samples'], '+.2f')} dB, "
                            f"wins {a['wins']}/{a['samples']} |")
                rows.append(row)
        text += ["", "Paired final-PSNR gain over plain block-sparse on the same samples (mean ± standard error, "
                 "wins = samples where the variant is ahead)"
                 + (": the docs' claim is made at n = " + str(docs["samples"]) + "; at this run's n the docs' own "
                    "run gives the middle column, so a small-n report is compared with the docs at the same n."
                    if docs else "."), "", *rows]
        if n < 8:
            text += ["", f"_With {n} sample(s) the standard error is of the order of the effect: read the sign of a "
                     "gain only where |mean| > 2 standard errors._"]
    layers = res.get("per_layer", {})
    if layers:
        variant = res["variants"][0]
        rows = ["| layer | sparsity | requested 1 - sparsity | achieved | " + " | ".join(DENSITY_PARTS) + " |",
                "|---|---|---|---|" + "---|" * len(DENSITY_PARTS)]
        for lid in sorted(layers, key=int):
            for sp in sps:
                e = layers[lid][variant][str(sp)]
                rows.append(f"| {lid} | {sp} | {e.get('requested_density', 1 - sp):.3f} | {e['density']:.3f} | "
                            + " | ".join(f"{e.get('density_' + p, float('nan')):.3f}" for p in DENSITY_PARTS) + " |")
        text += ["", "Density per layer (computed key blocks of the visual query blocks, mean over calls): requested "
                 "`1 - sparsity` vs achieved, split into text blocks, forced 3D neighbours, forced first-frame pairs, "
                 "blocks the `tau` rule ranked and blocks only the `k_min` floor added.", "", *rows]
    return "\n".join(text) + "\n\n![per layer](sparse_quality/per_layer.png)"


def _sparse_density(out: Path, quick: bool) -> str:
    from . import sparse_density as density

    shapes = ["flux_1024", "wan_480p"] if quick else ["flux_1024", "wan_480p", "wan_720p", "hunyuan_720p"]
    rows = []
    for shape in shapes:
        rules = [None, "leading"] if shape.startswith("wan") else [None]
        for rule in rules:
            rows.append(density.shape_density(shape, 0.8, first_frame=rule))
    (out / "sparse_density.json").write_text(json.dumps(rows, indent=1))
    from dit_attn.sparse.selection import DENSITY_PARTS

    lines = ["| shape | first_frame | requested 1 - sparsity | k_min + text floor | achieved | "
             + " | ".join(DENSITY_PARTS) + " |", "|---|---|---|---|---|" + "---|" * len(DENSITY_PARTS)]
    for r in rows:
        lines.append(f"| {r['shape']} | {'default' if r['first_frame'] is None else r['first_frame']} | "
                     f"{r['requested']:.3f} | {r['floor']:.3f} | {r['achieved']:.3f} | "
                     + " | ".join(f"{r['parts'][p]:.3f}" for p in DENSITY_PARTS) + " |")
    return ("Achieved density at real shapes, `sparsity=0.8`, block 128, on CPU with the selection code on iid random "
            "q/k/v (2 heads). The forced parts (text, neighbours, first-frame) are properties of the forced sets and "
            "hold for any input; the `tau` / `k_min` parts depend on the inputs (random q/k give a flat pooled "
            "estimate, so `tau = 0.3` ranks ~30 % of the blocks).\n\n" + "\n".join(lines))


def _sparse_speed(out: Path, quick: bool) -> str:
    from . import sparse_speed as sparse_bench

    results = sparse_bench.main(["--out", str(out / "sparse_speed.json")]
                                + (["--shapes", "wan_480p"] if quick else []))
    target = sparse_bench.ATTENTION_TARGET
    lines = ["| shape | sparsity | requested density | achieved density | attention speedup | e2e model | "
             f"Amdahl ceiling | e2e ≥ {sparse_bench.E2E_CEILING_TARGET} of ceiling |", "|" + "---|" * 8]
    attention_verdict = None
    for r in results:
        for row in r["sparse"]:
            speed = f"{row['attention_speedup']:.2f}x"
            if "attention_target" in row:
                attention_verdict = _verdict(row["attention_speedup"], row["attention_target"], True)
                speed += f" (target ≥ {row['attention_target']}x: {attention_verdict})"
            lines.append(f"| {r['shape']} | {row['sparsity']} | {row['requested_density']:.3f} | "
                         f"{row['density']:.3f} | {speed} | {row['e2e_speedup_model']:.2f}x | "
                         f"{row['amdahl_ceiling']:.2f}x | "
                         f"{_verdict(row['e2e_fraction_of_ceiling'], sparse_bench.E2E_CEILING_TARGET, True)} |")
    head = (f"Selection + kernel vs dense {results[0]['baseline']} on {results[0]['device']}. Attention target "
            f"(≥ {target['speedup']}x at sparsity {target['sparsity']} on {target['shape']}): "
            + ("**not measured** in this run." if attention_verdict is None else f"{attention_verdict}."))
    return head + "\n\n" + "\n".join(lines)


def _conditions(out: Path, quick: bool) -> str:
    from . import conditions as cond_bench

    path = out / "conditions.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv = ["--out", str(path), "--device", device, "--counts"] + (["1", "4"] if quick else ["1", "2", "4", "8", "16"])
    if device == "cuda":
        argv += ["--dtype", "bfloat16", "--heads", "24", "--head-dim", "128", "--text", "512", "--image", "4096",
                 "--cond-tokens", "1024"]
    else:
        argv += ["--repeats", "2" if quick else "5"]
    cond_bench.main(argv)
    data = json.loads(path.read_text())
    results = data["results"] if isinstance(data, dict) else data
    where = "FLUX shapes (24x128, 4096 image + 512 text, 1024-token conditions), bf16" if device == "cuda" else \
        "small CPU shapes (4x32, 256 image + 64 text, 256-token conditions), fp32: not GPU numbers"
    return f"Attention-module time and memory vs number of conditions, {where}.\n\n" + cond_bench.table(results)


def _guidance(out: Path, quick: bool) -> str:
    from dit_attn.testing import FAMILIES as TINY_FAMILIES

    from . import guidance as bench_guidance

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for family in (("sd3", "flux") if quick else bench_guidance.FAMILIES):
        rows.extend(bench_guidance.measure(family, steps=2 if quick else 4, repeats=2 if quick else 5, device=device))
    (out / "guidance.json").write_text(json.dumps(rows, indent=2))
    lines = ["| pipeline | mode | ms / step | x CFG time | target | verdict |", "|---|---|---|---|---|---|"]
    missed = []
    for r in rows:
        target = next((t for mode, t in GUIDANCE_TARGETS.items() if mode in r["mode"]), None)
        verdict = "-" if target is None else _verdict(r["time_ratio"], target)
        if verdict != "met" and target is not None:
            missed.append(f"{r['family']} {r['mode']}")
        lines.append(f"| {r['family']} | {r['mode']} | {r['step_ms']:.1f} | {r['time_ratio']:.2f} | "
                     f"{'-' if target is None else f'≤ {target}x'} | {verdict} |")
    targets = ", ".join(f"{mode} ≤ {t}x" for mode, t in GUIDANCE_TARGETS.items())
    unsupported = [f for f in TINY_FAMILIES if f not in bench_guidance.FAMILIES]
    return ("SoftPAG (one perturbed term) vs CFG only, per denoising step of the tiny pipelines (text encoding and "
            f"decoding included, so on CPU the ratios are dominated by overheads). Targets: {targets}: "
            + (f"**missed** by {', '.join(missed)}." if missed else "met by every pipeline.")
            + (f" Not measured (SoftPAG does not support the family): {', '.join(unsupported)}."
               if unsupported and not quick else "")
            + "\n\n" + "\n".join(lines))


def _context_parallel(out: Path, quick: bool) -> str:
    from . import context_parallel

    result = context_parallel.run(degree=2, tokens=1024 if quick else 4096, repeats=3 if quick else 10)
    (out / "context_parallel.json").write_text(json.dumps(result, indent=2))
    lines = ["| configuration | ms per forward |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in result.items() if name != "ratios"]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f}x |" for name, value in result["ratios"].items()]
    return ("One FLUX-shaped transformer forward (8 heads of 64, 2 double + 4 single blocks) on one GPU and split "
            "over 2 with diffusers' Ulysses context parallelism, stock and with Emphasis + EntropyScale + "
            "RectifiedSparse(0.5); every control equals one process there (docs/scaling_out.md).\n\n"
            + "\n".join(lines))


SECTIONS: list[Section] = [
    Section("overhead", "Processor overhead (attached, no controls, vs stock)", _overhead),
    Section("kernels", "Block-sparse attention kernels vs SDPA (cuDNN, flash)", _kernels, needs_gpu=True),
    Section("emphasis", "Cost of prompt emphasis in the attention logits", _emphasis, needs_gpu=True),
    Section("guidance", "Head-level perturbation guidance: cost vs CFG only", _guidance),
    Section("sparse_quality", "Rectified sparse attention: quality vs dense", _sparse_quality),
    Section("sparse_density", "Rectified sparse attention: requested vs achieved density at real shapes",
            _sparse_density),
    Section("sparse_speed", "Rectified sparse attention: speed at real video shapes", _sparse_speed, needs_gpu=True),
    Section("conditions", "Multi-condition attention: scaling with the number of conditions", _conditions),
    Section("context_parallel", "One generation over 2 GPUs (Ulysses context parallelism), stock and with controls",
            _context_parallel, needs_gpu=True, min_gpus=2),
]


def _available(section: Section) -> str | None:
    """None when the section can run here, else the reason it cannot."""
    if section.needs_gpu and not torch.cuda.is_available():
        return "needs a CUDA GPU: not run on this machine"
    if torch.cuda.device_count() < section.min_gpus:
        return f"needs {section.min_gpus} GPUs: this machine has {torch.cuda.device_count()}"
    return None


def run_report(out: str | os.PathLike, quick: bool = False, only: list[str] | None = None) -> Path:
    """Run the sections (all, or ``only`` these names, in that order) and write ``<out>/report.md`` and
    ``<out>/report.json``, rewritten after every section so that a run stopped part-way keeps what it finished;
    returns the report's path."""
    by_name = {s.name: s for s in SECTIONS}
    if only:
        unknown = sorted(set(only) - set(by_name))
        if unknown:
            raise ValueError(f"unknown benchmark section(s) {unknown}; available: {', '.join(by_name)}")
    chosen = [by_name[name] for name in dict.fromkeys(only)] if only else list(SECTIONS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    parts = [
        "# dit_attn benchmark report", "",
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}, {info['cpu_count']} CPU cores ({info['torch_threads']} torch threads), "
        f"GPU: {info['gpu'] or 'none'}",
        f"- python {info['python']}, torch {info['torch']}, diffusers {info['diffusers']}", "",
    ]
    status = {}
    report = out / "report.md"

    def write() -> None:
        report.write_text("\n".join(parts))
        (out / "report.json").write_text(json.dumps({"machine": info, "sections": status}, indent=2))

    for section in chosen:
        reason = _available(section)
        parts += [f"## {section.title}", ""]
        if reason is not None:
            parts += [f"_Skipped: {reason}._", ""]
            status[section.name] = reason
            print(f"[bench] {section.name}: skipped ({reason})")
            write()
            continue
        print(f"[bench] {section.name} ...", flush=True)
        try:
            parts += [section.run(out, quick), ""]
            status[section.name] = "ok"
        except Exception as e:  # one failing benchmark must not hide the others; its traceback goes to the log
            logger.exception("benchmark section %s failed", section.name)
            parts += [f"_Failed: {type(e).__name__}: {e}_", ""]
            status[section.name] = f"failed: {type(e).__name__}: {e}"
        write()
    write()
    print(f"wrote {report}")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dit-attn bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/report")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shapes (a smoke run)")
    parser.add_argument("--only", default=None, help="comma list of sections: " + ", ".join(s.name for s in SECTIONS))
    args = parser.parse_args(argv)
    run_report(args.out, quick=args.quick, only=args.only.split(",") if args.only else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
