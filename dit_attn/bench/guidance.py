"""Cost of SoftPAG guidance vs CFG only, measured in one run: ``python -m dit_attn.bench.guidance``.

For each pipeline: wall time per denoising step (whole pipeline call / steps, so text encoding and decoding are included;
median of ``--repeats`` calls, configurations interleaved) and, on CUDA, peak allocated memory,
for CFG only, CFG + SoftPAG ``mode="batched"`` (one perturbed term) and CFG + SoftPAG ``mode="uncond"``. Defaults
run the tiny offline pipelines on the CPU; ``--device cuda`` runs them on a GPU (numbers for real model sizes need
real weights or full-size random-weight transformers, not bundled here).
"""

from __future__ import annotations

import argparse
import statistics

import torch

import dit_attn
from dit_attn.families import FAMILIES as FAMILY_DATA
from dit_attn.families import family_of
from dit_attn.families.support import support
from dit_attn.heads import HeadSet
from dit_attn.testing import FAMILIES as TINY_FAMILIES
from dit_attn.testing import tiny_call_kwargs, tiny_pipeline

# The tiny pipelines whose family SoftPAG supports (the others refuse it with a clear error: see the support matrix).
FAMILIES = tuple(f for f in TINY_FAMILIES if support(FAMILY_DATA[f])["SoftPAG"] == "yes")

from .timing import seconds

# Perturbed heads: every head of the second layer of the family's main block list (the first where there is only
# one); Wan VACE's main list is its control branch, so its base model's blocks are named here.
HEADS = {"wan_vace": "blocks.1:*"}


def perturbed_heads(family: str, transformer) -> str:
    """The head spec SoftPAG perturbs in this benchmark, for ``family``'s tiny ``transformer``."""
    if family in HEADS:
        return HEADS[family]
    block_list, attr = family_of(transformer).sites[0][:2]
    layers = [i for bl, i, at, _, _ in HeadSet.model_layers(transformer) if bl == block_list and at == attr]
    return f"{block_list}.{layers[min(1, len(layers) - 1)]}:*"


def _once(pipe, kwargs, device, control):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    attachment = dit_attn.attach(pipe, control) if control is not None else None
    try:
        elapsed = seconds(lambda: pipe(**kwargs), device)
    finally:
        if attachment is not None:
            attachment.detach()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return elapsed, peak


def measure(family: str, steps: int = 4, repeats: int = 5, device: str = "cpu") -> list[dict]:
    """Configurations run round-robin (one call each per repeat), so machine load drifts hit all alike."""
    dev = torch.device(device)
    pipe = tiny_pipeline(family).to(dev)
    heads = perturbed_heads(family, pipe.transformer)
    configs = (("CFG only", None), ("CFG + SoftPAG batched", dit_attn.SoftPAG(heads, strength=0.5)),
               ("CFG + SoftPAG uncond", dit_attn.SoftPAG(heads, strength=0.5, mode="uncond")))
    times = {name: [] for name, _ in configs}
    peaks = {name: None for name, _ in configs}
    for i in range(repeats + 1):  # the first round warms up
        for name, control in configs:
            kwargs = tiny_call_kwargs(family, steps=steps)
            kwargs["generator"] = torch.Generator(dev).manual_seed(0)
            t, peak = _once(pipe, kwargs, dev, control)
            if i:
                times[name].append(t)
                peaks[name] = peak
    rows = [{"family": family, "mode": name, "step_ms": 1000 * statistics.median(times[name]) / steps,
             "peak_mib": peaks[name]} for name, _ in configs]
    base = rows[0]
    for r in rows:
        r["time_ratio"] = r["step_ms"] / base["step_ms"]
        r["mem_ratio"] = (r["peak_mib"] / base["peak_mib"]) if r["peak_mib"] else None
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| pipeline | mode | ms / step | x CFG time | peak MiB | x CFG memory |", "|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] else "n/a (CPU)"
        mem = f"{r['mem_ratio']:.2f}" if r["mem_ratio"] else "n/a"
        lines.append(f"| {r['family']} | {r['mode']} | {r['step_ms']:.1f} | {r['time_ratio']:.2f} | {peak} | {mem} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dit_attn.bench.guidance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for family in args.families.split(","):
        rows.extend(measure(family, args.steps, args.repeats, args.device))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    print(f"SoftPAG cost vs CFG only ({name}; tiny pipelines, {args.steps} steps, median of {args.repeats})\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
