"""Overhead of the processor layer: wall time of attached-without-controls vs stock, per tiny pipeline.

Measured in one run, interleaving stock and attached repetitions so that machine noise hits both alike.
Target: ratio <= 1.05.

    python -m dit_attn.bench.overhead [--repeats 5] [--steps 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

import dit_attn
from dit_attn.testing import FAMILIES, tiny_call_kwargs, tiny_pipeline

from .timing import machine_line, seconds


def measure(family: str, repeats: int, steps: int) -> dict:
    pipe = tiny_pipeline(family)
    run = lambda: pipe(**tiny_call_kwargs(family, steps=steps))  # noqa: E731
    run()  # warm-up
    stock, attached = [], []
    for _ in range(repeats):
        stock.append(seconds(run))
        with dit_attn.attach(pipe):
            attached.append(seconds(run))
    stock_t, attached_t = min(stock), min(attached)
    return {"family": family, "stock_s": stock_t, "attached_s": attached_t, "ratio": attached_t / stock_t}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dit_attn.bench.overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [measure(f, args.repeats, args.steps) for f in args.families]
    machine = machine_line()
    print(f"dit_attn processor overhead (tiny pipelines, CPU fp32, {args.steps} steps, best of {args.repeats}); {machine}")
    print(f"{'family':<15}{'stock s':>10}{'attached s':>12}{'ratio':>8}")
    for r in rows:
        print(f"{r['family']:<15}{r['stock_s']:>10.4f}{r['attached_s']:>12.4f}{r['ratio']:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
