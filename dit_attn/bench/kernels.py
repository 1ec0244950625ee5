"""Benchmark of dit_attn.kernels.block_sparse_attention against torch SDPA (cuDNN and flash backends).

Usage::

    python -m dit_attn.bench.kernels                      # GPU: real DiT shapes, bf16
    python -m dit_attn.bench.kernels --shapes flux,wan1.3b
    python -m dit_attn.bench.kernels --shapes small       # tiny shapes; runs on CPU (reference) for a smoke test

For every shape it times: our dense path (full LUT), densities 0.5 / 0.25 / 0.1 (random LUTs with that
fraction of key blocks per query block), the cost of ``key_bias`` and of the rectification epilogue on the
dense path, torch SDPA with the cuDNN and flash backends, and the block-statistics kernel. It reports the
median time, the TFLOP/s of the computed work (``4 * D * computed (query, key) pairs``) and, for sparse
runs, the dense-equivalent TFLOP/s and the speedup over each named SDPA baseline. Results go to
``<out>/bench_results.json`` and, if matplotlib is installed, ``<out>/bench_tflops.png``.

On CPU the numbers come from the plain-PyTorch reference (or the Triton interpreter) and SDPA's math
backend: they are NOT GPU numbers and say nothing about kernel performance.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from dit_attn.kernels import block_sparse_attention, block_stats
from dit_attn.kernels.roofline import REAL_SHAPES

from .timing import time_ms

SMALL_SHAPES = {
    "small-d64": dict(H=2, D=64, L=300, label="tiny (2x64, 300)"),
    "small-d128": dict(H=2, D=128, L=520, label="tiny (2x128, 520)"),
}
DENSITIES = (0.5, 0.25, 0.1)


def _time_ms(fn, device: torch.device, warmup: int, rep: int) -> float:
    """Median milliseconds per call: ``warmup`` / ``rep`` are do_bench's milliseconds on a GPU; on CPU they set a
    few calls (the reference path is slow and its numbers are only a smoke test)."""
    return time_ms(fn, device, repeats=max(1, min(5, rep // 100 + 1)), warmup=max(1, warmup // 25),
                   cuda_warmup_ms=warmup, cuda_rep_ms=rep)


def _random_lut(B, H, nqb, nkb, density, device, gen):
    k = max(1, min(nkb, round(density * nkb)))
    scores = torch.rand(B, H, nqb, nkb, generator=gen, device=device)
    idx = torch.argsort(scores, dim=-1)[..., :k].sort(dim=-1).values.to(torch.int32).contiguous()
    cnt = torch.full((B, H, nqb), k, dtype=torch.int32, device=device)
    return idx, cnt


def _computed_pairs(idx, cnt, Nq, Nk, bsq, bsk):
    """Exact number of (query, key) pairs computed for a LUT (for FLOP counts)."""
    B, H, nqb, _ = idx.shape
    dev = idx.device
    keys_in = (Nk - torch.arange(-(-Nk // bsk), device=dev) * bsk).clamp(max=bsk)
    rows_in = (Nq - torch.arange(nqb, device=dev) * bsq).clamp(max=bsq)
    valid = torch.arange(idx.shape[-1], device=dev) < cnt.unsqueeze(-1)
    keys = (keys_in[idx.long().clamp(0, keys_in.numel() - 1)] * valid).sum(-1)  # [B, H, nqb]
    return int((keys * rows_in).sum().item())  # benchmark bookkeeping, not on any hot path


def _sdpa_variants(device):
    from torch.nn.attention import SDPBackend

    if device.type == "cuda":
        return [("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]
    return [("sdpa_math_cpu", SDPBackend.MATH)]


def bench_shape(name, spec, args, device, dtype, gen):
    from torch.nn.attention import sdpa_kernel

    B, H, D, L = args.batch, spec["H"], spec["D"], spec["L"]
    bs = args.block_size
    nb = -(-L // bs)
    q, k, v = (torch.randn(B, H, L, D, device=device, generator=gen, dtype=torch.float32).to(dtype) for _ in range(3))
    dense_flops = 4.0 * B * H * L * L * D
    rows = []

    def record(variant, ms, pairs=None, **extra):
        flops = dense_flops if pairs is None else 4.0 * pairs * D
        row = dict(shape=name, label=spec["label"], B=B, H=H, D=D, L=L, dtype=str(dtype).replace("torch.", ""),
                   variant=variant, ms=ms, tflops=flops / (ms * 1e-3) / 1e12,
                   density=flops / dense_flops, dense_equiv_tflops=dense_flops / (ms * 1e-3) / 1e12, **extra)
        rows.append(row)
        print(f"  {variant:<34s} {ms:10.3f} ms  {row['tflops']:8.2f} TFLOP/s  "
              f"(density {row['density']:.3f}, dense-equiv {row['dense_equiv_tflops']:8.2f} TFLOP/s)", flush=True)

    for variant, backend in _sdpa_variants(device):
        try:
            with sdpa_kernel([backend]):
                fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
                fn()
                record(variant, _time_ms(fn, device, args.warmup, args.rep))
        except Exception as e:  # backend unavailable for this shape/GPU
            print(f"  {variant:<34s} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            rows.append(dict(shape=name, variant=variant, error=f"{type(e).__name__}: {e}"[:500]))

    full_idx = torch.arange(nb, device=device, dtype=torch.int32).expand(1, 1, nb, nb)
    full_cnt = torch.full((1, 1, nb), nb, device=device, dtype=torch.int32)
    kw = dict(block_size_q=bs, block_size_k=bs)

    fn = lambda: block_sparse_attention(q, k, v, full_idx, full_cnt, **kw)  # noqa: E731
    record("ours_dense", _time_ms(fn, device, args.warmup, args.rep))
    bias = torch.zeros(1, 1, L, device=device)
    bias[..., -max(1, L // 20):] = float("-inf")  # 5% padded keys
    fn = lambda: block_sparse_attention(q, k, v, full_idx, full_cnt, key_bias=bias, **kw)  # noqa: E731
    record("ours_dense+key_bias", _time_ms(fn, device, args.warmup, args.rep))
    R = torch.rand(B, H, nb, device=device, generator=gen) + 0.5
    C = torch.randn(B, H, nb, D, device=device, generator=gen)
    fn = lambda: block_sparse_attention(q, k, v, full_idx, full_cnt, rect_scale=R, rect_add=C, **kw)  # noqa: E731
    record("ours_dense+epilogue", _time_ms(fn, device, args.warmup, args.rep))

    for density in args.densities:
        idx, cnt = _random_lut(B, H, nb, nb, density, device, gen)
        pairs = _computed_pairs(idx, cnt, L, L, bs, bs)
        fn = lambda: block_sparse_attention(q, k, v, idx, cnt, **kw)  # noqa: E731
        record(f"ours_density_{density:g}", _time_ms(fn, device, args.warmup, args.rep), pairs=pairs)
        if density == 0.25:
            fn = lambda: block_sparse_attention(q, k, v, idx, cnt, key_bias=bias, rect_scale=R,  # noqa: E731
                                                rect_add=C, **kw)
            record(f"ours_density_{density:g}+bias+epilogue", _time_ms(fn, device, args.warmup, args.rep),
                   pairs=pairs)

    fn = lambda: block_stats(q, k, v, block_size=bs)  # noqa: E731
    ms = _time_ms(fn, device, args.warmup, args.rep)
    gbs = 3 * q.numel() * q.element_size() / (ms * 1e-3) / 1e9
    print(f"  {'block_stats':<34s} {ms:10.3f} ms  {gbs:8.1f} GB/s read")
    rows.append(dict(shape=name, variant="block_stats", ms=ms, gbytes_per_s=gbs))

    # Speedups over each baseline that ran.
    base = {r["variant"]: r["ms"] for r in rows if r["variant"].startswith("sdpa") and "ms" in r}
    for r in rows:
        if r["variant"].startswith("ours") and "ms" in r:
            r["speedup_vs"] = {b: t / r["ms"] for b, t in base.items()}
    return rows


def _autotune_report():
    """Best configs chosen by the autotuner (GPU only), to refresh block_sparse.DEFAULT_CONFIGS."""
    from dit_attn.kernels.block_sparse import _bsa_fwd_autotuned

    return {str(k): str(v) for k, v in getattr(_bsa_fwd_autotuned, "cache", {}).items()}


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional: the JSON carries every number
        print("matplotlib is not installed (pip install 'dit_attn[bench]'): skipping the plot (JSON written)")
        return None
    shapes = list(dict.fromkeys(r["shape"] for r in rows if "tflops" in r))
    variants = list(dict.fromkeys(r["variant"] for r in rows if "tflops" in r))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(shapes) * len(variants) / 4), 5))
    width = 0.8 / max(1, len(variants))
    for i, var in enumerate(variants):
        ys = [next((r["dense_equiv_tflops"] for r in rows if r["shape"] == s and r["variant"] == var
                    and "tflops" in r), 0.0) for s in shapes]
        ax.bar([x + i * width for x in range(len(shapes))], ys, width, label=var)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(shapes))])
    ax.set_xticklabels(shapes)
    ax.set_ylabel("dense-equivalent TFLOP/s (4*L^2*H*D / time)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dit_attn.bench.kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=None,
                   help="'real' (default on GPU), 'small' (default on CPU) or a comma list of: "
                        + ", ".join(list(REAL_SHAPES) + list(SMALL_SHAPES)))
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--block-size", type=int, default=None, help="selection block (default 128; 32 for small shapes)")
    p.add_argument("--densities", default=",".join(f"{d:g}" for d in DENSITIES))
    p.add_argument("--warmup", type=int, default=25, help="ms (GPU, triton do_bench)")
    p.add_argument("--rep", type=int, default=100, help="ms (GPU, triton do_bench)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out", help="output folder for JSON and plot")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    args.densities = [float(x) for x in args.densities.split(",") if x]

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    shapes_arg = args.shapes or ("real" if device.type == "cuda" else "small")
    if shapes_arg == "real":
        shapes = dict(REAL_SHAPES)
    elif shapes_arg == "small":
        shapes = dict(SMALL_SHAPES)
    else:
        table = {**REAL_SHAPES, **SMALL_SHAPES}
        unknown = [s for s in shapes_arg.split(",") if s not in table]
        if unknown:
            p.error(f"unknown shapes {unknown}; known: {sorted(table)}")
        shapes = {s: table[s] for s in shapes_arg.split(",")}

    if args.block_size is None:
        args.block_size = 32 if all(s in SMALL_SHAPES for s in shapes) else 128
    cpu_mode = device.type != "cuda"
    impl = os.environ.get("DIT_ATTN_KERNEL_IMPL", "") or ("triton" if not cpu_mode else "reference")
    if cpu_mode:
        banner = ("CPU MODE: timings come from the plain-PyTorch reference (or the Triton interpreter) and SDPA's math "
                  "backend. THESE ARE NOT GPU NUMBERS and say nothing about kernel performance.")
        print("=" * 100 + "\n" + banner + "\n" + "=" * 100)
    else:
        banner = f"GPU: {torch.cuda.get_device_name(device)}"
        print(banner)

    gen = torch.Generator(device=device).manual_seed(args.seed)
    rows = []
    for name, spec in shapes.items():
        print(f"[{name}] {spec['label']}  B={args.batch} {args.dtype} block={args.block_size}", flush=True)
        rows.extend(bench_shape(name, spec, args, device, dtype, gen))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(
        cpu_mode=cpu_mode, note=banner, impl=impl, device=str(device),
        device_name=torch.cuda.get_device_name(device) if not cpu_mode else platform.processor() or platform.machine(),
        torch=torch.__version__, python=sys.version.split()[0], dtype=args.dtype, batch=args.batch,
        block_size=args.block_size, densities=args.densities, seed=args.seed,
        autotune=os.environ.get("DIT_ATTN_AUTOTUNE", "1") != "0",
    )
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:  # the optional triton extra: the reference path ran, and the JSON says so
        meta["triton"] = None
    if not cpu_mode:
        meta["autotune_best_configs"] = _autotune_report()
    json_path = out_dir / "bench_results.json"
    json_path.write_text(json.dumps(dict(meta=meta, results=rows), indent=2, default=str))
    print(f"wrote {json_path}")
    if not args.no_plot:
        png = _plot(rows, out_dir / "bench_tflops.png")
        if png:
            print(f"wrote {png}")
    if cpu_mode:
        print("REMINDER: CPU numbers above are not GPU numbers.")
    return dict(meta=meta, results=rows)


if __name__ == "__main__":
    main()
