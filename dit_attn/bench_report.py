"""``dit-attn bench``: run every benchmark this machine can run and write one report (markdown + plots).

Each section is a small function that runs one benchmark of the project (processor overhead, kernels, guidance
cost, sparse-attention quality and speed, multi-condition scaling), writes its JSON and plots into the report
folder and returns a markdown fragment. A section that needs a CUDA GPU says so on a CPU machine instead of
printing numbers that would mean nothing; a section whose feature is not in this build says that too.

    python -m dit_attn.bench_report --out bench/report [--quick] [--only overhead,kernels]

The report (``report.md``) starts with the machine: CPU, threads, GPU name (or "none"), torch, diffusers and
the date, so numbers are never separated from where they were measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Callable[[Path, bool], str]  # (report folder, quick) -> markdown
    needs_gpu: bool = False
    module: str | None = None  # the module this section needs; missing → "not in this build"


def machine_info() -> dict:
    """Where the numbers come from."""
    import diffusers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def _plot_bars(labels, values, ylabel, path: Path, reference: float | None = None) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
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


# --- sections -----------------------------------------------------------------------------------------------------
def _overhead(out: Path, quick: bool) -> str:
    from . import bench_overhead

    path = out / "overhead.json"
    bench_overhead.main(["--json", str(path), "--repeats", "2" if quick else "5", "--steps", "2" if quick else "4"])
    data = json.loads(path.read_text())
    rows = data["results"]
    lines = ["| family | stock s | attached s | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['stock_s']:.4f} | {r['attached_s']:.4f} | {r['ratio']:.3f} |" for r in rows]
    png = _plot_bars([r["family"] for r in rows], [r["ratio"] for r in rows], "attached / stock time",
                     out / "overhead.png", reference=1.05)
    text = ("Wall time of each tiny pipeline with `dit_attn.attach(pipe)` (no controls) over stock, best of the "
            "repeats, interleaved in one run. Target ≤ 1.05.\n\n" + "\n".join(lines))
    if png:
        text += f"\n\n![overhead]({png.name})"
    return text


def _kernels(out: Path, quick: bool) -> str:
    from dit_attn.kernels import bench as kernel_bench

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
    from . import bench_emphasis

    rows = bench_emphasis.main(["--json", str(out / "emphasis.json")])
    lines = ["| shape | plain ms | emphasis ms | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['plain_ms']:.3f} | {r['emphasis_ms']:.3f} | {r['ratio']:.3f} |" for r in rows]
    return ("Prompt emphasis (`log w` key bias on image rows through our kernel) vs plain attention, bf16. "
            "Target ≤ 1.05.\n\n" + "\n".join(lines))


def _sparse_quality(out: Path, quick: bool) -> str:
    from dit_attn.sparse import quality

    folder = out / "sparse_quality"
    model = quality._default_model()
    argv = ["--out", str(folder), "--model", model, "--steps", "2" if quick else "4",
            "--sparsities", "0.5,0.75" if quick else "0.5,0.75,0.9"]
    if model.startswith(("tiny:", "shapes:")):
        argv += ["--no-neighbors"]  # small token counts: every block would be a neighbour
    res = quality.main(argv)
    sps = res["sparsities"]
    lines = ["| variant | " + " | ".join(f"sparsity {sp}: PSNR dB / SSIM / density" for sp in sps) + " |",
             "|---|" + "---|" * len(sps)]
    for variant in res["variants"]:
        cells = [res["final"][variant][str(sp)] for sp in sps]
        lines.append(f"| {variant} | " + " | ".join(f"{c['psnr']:.1f} / {c['ssim']:.3f} / {c['density']:.2f}"
                                                    for c in cells) + " |")
    return (f"Final output vs the dense run on `{model}` (same seed), block size {res['block_size']}. Per-layer "
            "errors: `sparse_quality/quality.json`.\n\n" + "\n".join(lines)
            + "\n\n![per layer](sparse_quality/per_layer.png)")


def _sparse_speed(out: Path, quick: bool) -> str:
    from dit_attn.sparse import bench as sparse_bench

    results = sparse_bench.main(["--out", str(out / "sparse_speed.json")]
                                + (["--shapes", "wan_480p"] if quick else []))
    lines = ["| shape | sparsity | density | attention speedup | e2e model | Amdahl ceiling |", "|---|---|---|---|---|---|"]
    for r in results:
        for row in r["sparse"]:
            lines.append(f"| {r['shape']} | {row['sparsity']} | {row['density']:.3f} | "
                         f"{row['attention_speedup']:.2f}x | {row['e2e_speedup_model']:.2f}x | "
                         f"{row['amdahl_ceiling']:.2f}x |")
    return f"Selection + kernel vs dense {results[0]['baseline']} on {results[0]['device']}.\n\n" + "\n".join(lines)


def _conditions(out: Path, quick: bool) -> str:
    from dit_attn.conditions import bench as cond_bench

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
    from . import bench_guidance

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for family in (("sd3", "flux") if quick else bench_guidance.FAMILIES):
        rows.extend(bench_guidance.measure(family, steps=2 if quick else 4, repeats=2 if quick else 5, device=device))
    (out / "guidance.json").write_text(json.dumps(rows, indent=2))
    return ("SoftPAG (one perturbed term) vs CFG only, per denoising step of the tiny pipelines (text encoding and "
            "decoding included, so on CPU the ratios are dominated by overheads). Targets: batched ≤ 1.55x, "
            "uncond ≤ 1.05x.\n\n" + bench_guidance.table(rows))


SECTIONS: list[Section] = [
    Section("overhead", "Processor overhead (attached, no controls, vs stock)", _overhead),
    Section("kernels", "Block-sparse attention kernels vs SDPA (cuDNN, flash)", _kernels, needs_gpu=True),
    Section("emphasis", "Cost of prompt emphasis in the attention logits", _emphasis, needs_gpu=True),
    Section("guidance", "Head-level perturbation guidance: cost vs CFG only", _guidance,
            module="dit_attn.bench_guidance"),
    Section("sparse_quality", "Rectified sparse attention: quality vs dense", _sparse_quality,
            module="dit_attn.sparse.quality"),
    Section("sparse_speed", "Rectified sparse attention: speed at real video shapes", _sparse_speed, needs_gpu=True,
            module="dit_attn.sparse.bench"),
    Section("conditions", "Multi-condition attention: scaling with the number of conditions", _conditions,
            module="dit_attn.conditions.bench"),
]


def _available(section: Section) -> str | None:
    """None when the section can run here, else the reason it cannot."""
    if section.module is not None:
        try:
            importlib.import_module(section.module)
        except ImportError as e:
            return f"not in this build ({section.module}: {e})"
    if section.needs_gpu and not torch.cuda.is_available():
        return "needs a CUDA GPU: not run on this machine"
    return None


def run_report(out: str | os.PathLike, quick: bool = False, only: list[str] | None = None) -> Path:
    """Run the sections (all, or ``only`` these names) and write ``<out>/report.md``; returns its path."""
    names = [s.name for s in SECTIONS]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown benchmark section(s) {unknown}; available: {', '.join(names)}")
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
    for section in SECTIONS:
        if only and section.name not in only:
            continue
        reason = _available(section)
        parts += [f"## {section.title}", ""]
        if reason is not None:
            parts += [f"_Skipped: {reason}._", ""]
            status[section.name] = reason
            print(f"[bench] {section.name}: skipped ({reason})")
            continue
        print(f"[bench] {section.name} ...", flush=True)
        try:
            parts += [section.run(out, quick), ""]
            status[section.name] = "ok"
        except Exception as e:  # one failing benchmark must not hide the others
            parts += [f"_Failed: {type(e).__name__}: {e}_", ""]
            status[section.name] = f"failed: {type(e).__name__}: {e}"
    report = out / "report.md"
    report.write_text("\n".join(parts))
    (out / "report.json").write_text(json.dumps({"machine": info, "sections": status}, indent=2))
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
