"""Attention-module time and memory vs number of conditions, for concat / cached-full / pka (one layer's
denoising attention; the write pass is excluded, as in the paper's efficiency numbers).

* ``concat``: one full joint attention over ``[T, X, C_1 .. C_c]`` (every token is a query and a key);
* ``cached-full``: ``[T; X]`` queries over their own keys plus every cached condition key (LSE merge);
* ``pka``: ``[T; X]`` queries, each image query also sees the aligned token of every spatial condition (PAA);
* ``pka-subject``: the conditions are subjects; each is seen by a random 30% of image rows (KSA, ρ = 0.3).

CPU: each configuration runs in its own subprocess (single thread) and its memory is the growth of the peak
resident set while the attention runs (``ru_maxrss``, after the inputs exist). CUDA: ``max_memory_allocated``
above the inputs. Times are medians of ``--repeats`` runs after a warm-up (:func:`dit_attn.bench.timing.time_ms`).

    python -m dit_attn.bench.conditions --out bench_conditions.json                # small CPU shapes
    python -m dit_attn.bench.conditions --device cuda --dtype bfloat16 --heads 24 --head-dim 128 \\
        --text 512 --image 1024 --cond-tokens 1024 --out gpu_1024.json               # FLUX shapes (paper)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from .timing import time_ms

BENCH_MODES = ("concat", "cached-full", "pka", "pka-subject")


def _inputs(mode, c, args, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    H, D, M, N, n = args.heads, args.head_dim, args.text, args.image, args.cond_tokens

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    if mode == "concat":
        L = M + N + c * n
        return {"q": r(1, L, H, D), "k": r(1, L, H, D), "v": r(1, L, H, D)}
    from dit_attn.conditions.attention import SpatialKV, SubjectKV
    from dit_attn.conditions.tokens import aligned_index

    side = int(round(N ** 0.5))
    cside = int(round(n ** 0.5))
    x = {"q": r(1, M + N, H, D), "k": r(1, M + N, H, D), "v": r(1, M + N, H, D)}
    if mode == "pka-subject":
        x["subjects"] = [SubjectKV(r(1, n, H, D), r(1, n, H, D), (torch.rand(1, N, generator=g) < 0.3).to(device))
                         for _ in range(c)]
        x["spatial"] = []
    else:
        idx = aligned_index((side, N // side), (cside, n // cside), device)
        x["spatial"] = [SpatialKV(r(1, n, H, D), r(1, n, H, D), idx) for _ in range(c)]
        x["subjects"] = []
    return x


def _run(mode, x, args):
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from dit_attn.conditions.attention import condition_attention

    if mode == "concat":
        return sdpa(x["q"].transpose(1, 2), x["k"].transpose(1, 2), x["v"].transpose(1, 2))
    bench_mode = "cached-full" if mode == "cached-full" else "pka"
    return condition_attention(x["q"], x["k"], x["v"], text_len=args.text, spatial=x["spatial"],
                               subjects=x["subjects"], mode=bench_mode)


def _bytes(x) -> int:
    total = 0
    for v in x.values():
        for t in (v if isinstance(v, list) else [v]):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
            else:
                total += t.key.numel() * t.key.element_size() * 2
    return total


def measure_one(mode: str, c: int, args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        x = _inputs(mode, c, args, device, dtype)
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = _run(mode, x, args)  # warm-up (and the memory peak)
        del out
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        ms = time_ms(lambda: _run(mode, x, args), device, repeats=args.repeats, warmup=0)  # warmed up above
    return {"mode": mode, "conditions": c, "ms": ms, "peak_bytes": int(peak),
            "input_bytes": _bytes(x)}


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--image", type=int, default=256)
    p.add_argument("--cond-tokens", type=int, default=256)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--modes", nargs="+", default=list(BENCH_MODES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--one", nargs=2, metavar=("MODE", "COUNT"), help=argparse.SUPPRESS)
    return p


def table(results: list[dict]) -> str:
    """A markdown table per mode and count: ms and MiB (the inputs: q/k/v and cached condition K/V, plus the
    peak growth while the attention runs), with the speedups of pka over the baselines."""
    by = {(r["mode"], r["conditions"]): r for r in results}
    modes = list(dict.fromkeys(r["mode"] for r in results))
    counts = sorted({r["conditions"] for r in results})
    head = "| conditions | " + " | ".join(f"{m} ms / MiB" for m in modes) + " | concat/pka | cached-full/pka |"
    lines = [head, "|" + "---|" * (len(modes) + 3)]
    for c in counts:
        cells = []
        for m in modes:
            r = by.get((m, c))
            cells.append(f"{r['ms']:.2f} / {(r['peak_bytes'] + r['input_bytes']) / 2**20:.1f}" if r else "-")
        pka, cat, full = by.get(("pka", c)), by.get(("concat", c)), by.get(("cached-full", c))
        s1 = f"{cat['ms'] / pka['ms']:.1f}x" if pka and cat else "-"
        s2 = f"{full['ms'] / pka['ms']:.1f}x" if pka and full else "-"
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {s1} | {s2} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args)))
        return 0
    results = []
    for c in args.counts:
        for mode in args.modes:
            if args.device == "cpu":  # a fresh process per configuration: ru_maxrss is a process-wide peak
                cmd = [sys.executable, "-m", "dit_attn.bench.conditions", "--one", mode, str(c)] + \
                    _strip_out(list(argv if argv is not None else sys.argv[1:]))
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                line = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip()
                results.append(json.loads(line.splitlines()[-1]))
            else:
                results.append(measure_one(mode, c, args))
            print(json.dumps(results[-1]), file=sys.stderr)
    meta = {k: getattr(args, k) for k in ("device", "dtype", "heads", "head_dim", "text", "image", "cond_tokens",
                                          "repeats", "threads")}
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    print(table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"settings": meta, "results": results}, f, indent=1)
    return 0


def _strip_out(cmd: list[str]) -> list[str]:
    out, skip = [], False
    for a in cmd:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
