"""GPU benchmark of rectified sparse attention (numbers are measured only on a CUDA machine).

``python -m dit_attn.bench.sparse_speed [--shapes hunyuan_720p,wan_480p] [--sparsities 0.5,0.75,0.8,0.9] [--out F.json]``

Per shape it times (:func:`dit_attn.bench.timing.time_ms`: median of Triton's ``do_bench``):

* dense attention: ``torch.nn.functional.scaled_dot_product_attention`` with the cuDNN backend where available
  and FLASH (FA2-class) otherwise; the baseline actually used is written into the JSON;
* sparse: Gilbert gathers + selection (:func:`dit_attn.sparse.select_blocks`) + the Triton block-sparse kernel
  with the R/C epilogue, at each sparsity, on random q/k/v whose attention is made local (q and k share a
  smooth positional feature, so the selection behaves like a real model rather than uniform noise); the
  measured density ρ is reported with the time split (selection vs kernel);
* a speed model: attention ratio ``(1-w)(t_sparse/t_dense) + w`` for the dense-call fraction ``w``
  (``--dense-frac``, default 0) and the end-to-end ``1/((1-f) + f·ratio)`` for the attention share ``f``
  (``--attn-share``, default 0.85 HunyuanVideo / 0.75 Wan, assumed), with the Amdahl ceiling
  ``1/(1-f)`` and the density bound ``1/ρ``.

A measured end-to-end DiT step (full-size random-weight Wan-1.3B / HunyuanVideo transformers, dense vs attached)
is not in this script yet: the end-to-end numbers it prints come from the speed model above with a measured
attention time and an assumed attention share ``f``.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from dit_attn.sparse import make_layout

from .timing import time_ms

SHAPES = {  # name: (grid (T, H, W) after patching, text tokens, heads, head dim)
    "hunyuan_720p": ((33, 45, 80), 256, 24, 128),
    "hunyuan_544p": ((33, 34, 60), 256, 24, 128),
    "wan_480p": ((21, 30, 52), 0, 12, 128),
    "wan_720p": ((21, 45, 80), 0, 40, 128),
    "cogvideox_480p": ((13, 30, 45), 226, 30, 64),
    "flux_1024": ((1, 64, 64), 512, 24, 128),
    "flux_4096": ((1, 256, 256), 512, 24, 128),
}
# Speed targets: attention speedup vs the dense baseline on this shape at this sparsity, and the
# end-to-end model's fraction of its Amdahl ceiling.
ATTENTION_TARGET = {"shape": "hunyuan_720p", "sparsity": 0.8, "speedup": 3.5}
E2E_CEILING_TARGET = 0.9
ATTN_SHARE = {"hunyuan": 0.85, "wan": 0.75, "cogvideox": 0.75, "flux": 0.7}


def shape_inputs(grid, n_text, heads, d, dtype, seed=0, device="cuda", local=True):
    """q, k, v ``[1, N, heads, d]`` (visual raster tokens first, then text): iid normal, plus (``local``) a smooth
    positional feature shared by q and k so that attention is local like a real model's."""
    g = torch.Generator(device=device).manual_seed(seed)
    t, h, w = grid
    n = t * h * w + n_text
    q, k, v = (torch.randn(1, n, heads, d, device=device, generator=g) for _ in range(3))
    if not local:
        return q.to(dtype), k.to(dtype), v.to(dtype)
    pos = torch.stack(torch.meshgrid(*(torch.arange(s, device=device) for s in grid), indexing="ij"), -1)
    phase = pos.reshape(-1, 3).float() @ (torch.randn(d // 2, 3, device=device, generator=g) * 0.3).T
    feat = torch.cat([phase.cos(), phase.sin()], -1)
    feat = torch.cat([feat, torch.zeros(n_text, d, device=device)])[None, :, None] * 2.0
    return (q + feat).to(dtype), (k + feat).to(dtype), v.to(dtype)


def shape_layout(name, heads=None, batch=1):
    """The :class:`~dit_attn.layout.Layout` of a :data:`SHAPES` entry (FLUX and CogVideoX put text first)."""

    grid, n_text, h, d = SHAPES[name]
    nv = grid[0] * grid[1] * grid[2]
    n = nv + n_text
    text_first = name.startswith(("flux", "cogvideox"))
    vis, text = ((n_text, n), (0, n_text)) if text_first else ((0, nv), (nv, n))
    return make_layout(n, heads or h, d, batch, grid=grid, vis=vis, text=text if n_text else None,
                       family=name.split("_")[0])


def _dense_fn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    for backend, name in ((SDPBackend.CUDNN_ATTENTION, "cuDNN SDPA"), (SDPBackend.FLASH_ATTENTION, "FLASH SDPA (FA2)")):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
            torch.cuda.synchronize()

            def run(backend=backend):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)

            return run, name
        except RuntimeError:
            continue
    return (lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)), "SDPA (default)"


def bench_shape(name, sparsities, dense_frac, attn_share, dtype=torch.bfloat16):
    import dit_attn
    from dit_attn.call import AttentionCall, execute
    from dit_attn.sparse.density import density_report

    grid, n_text, heads, d = SHAPES[name]
    q, k, v = shape_inputs(grid, n_text, heads, d, dtype)
    n = q.shape[1]
    layout = shape_layout(name)
    dense, baseline = _dense_fn(q, k, v)
    t_dense = time_ms(dense, "cuda")
    flops = 4 * n * n * heads * d
    f = attn_share if attn_share is not None else ATTN_SHARE[name.split("_")[0]]
    rows = []
    for sp in sparsities:
        tracked = dit_attn.RectifiedSparse(sparsity=sp, track_density=True)
        prepared = tracked.prepare(AttentionCall(q, k, v, layout))
        report = density_report(tracked)[0]  # read once, outside the timed region
        rho = report["achieved"]
        control = dit_attn.RectifiedSparse(sparsity=sp)  # timed without the density bookkeeping
        t_select = time_ms(lambda: control.prepare(AttentionCall(q, k, v, layout)), "cuda")
        t_kernel = time_ms(lambda: execute(prepared), "cuda")
        t_sparse = t_select + t_kernel
        ratio = (1 - dense_frac) * (t_sparse / t_dense) + dense_frac
        e2e = 1 / ((1 - f) + f * ratio)
        rows.append({
            "sparsity": sp, "density": rho, "requested_density": report["requested"],
            "density_floor": report["floor"], "density_parts": report["parts"], "select_ms": t_select,
            "kernel_ms": t_kernel, "sparse_ms": t_sparse,
            "attention_speedup": t_dense / t_sparse, "density_bound": 1 / rho,
            "efficiency_eta": rho * t_dense / t_kernel,
            "e2e_speedup_model": e2e, "amdahl_ceiling": 1 / (1 - f),
            "e2e_fraction_of_ceiling": e2e * (1 - f), "e2e_target_met": e2e * (1 - f) >= E2E_CEILING_TARGET,
        })
        if name == ATTENTION_TARGET["shape"] and math.isclose(sp, ATTENTION_TARGET["sparsity"]):
            rows[-1]["attention_target"] = ATTENTION_TARGET["speedup"]
            rows[-1]["attention_target_met"] = t_dense / t_sparse >= ATTENTION_TARGET["speedup"]
    return {"shape": name, "tokens": n, "heads": heads, "head_dim": d, "dtype": str(dtype), "baseline": baseline,
            "dense_ms": t_dense, "dense_tflops": flops / t_dense / 1e9, "attn_share": f, "dense_frac": dense_frac,
            "sparse": rows, "device": torch.cuda.get_device_name()}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dit_attn.bench.sparse_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="hunyuan_720p,wan_480p", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--sparsities", default="0.5,0.75,0.8,0.9")
    ap.add_argument("--dense-frac", type=float, default=0.0, help="fraction w of attention calls kept dense")
    ap.add_argument("--attn-share", type=float, default=None, help="attention share f of DiT time (default per model)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("dit_attn.bench.sparse_speed needs a CUDA GPU (numbers are never simulated on CPU)")
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {unknown}; known: {', '.join(SHAPES)}")
    sps = [float(s) for s in args.sparsities.split(",")]
    results = []
    for s in shapes:
        r = bench_shape(s, sps, args.dense_frac, args.attn_share)
        results.append(r)
        print(f"{s}: {r['tokens']} tokens, dense {r['dense_ms']:.2f} ms ({r['baseline']}, {r['dense_tflops']:.0f} TFLOP/s)")
        for row in r["sparse"]:
            print(f"  sparsity {row['sparsity']}: density {row['density']:.3f} (requested "
                  f"{row['requested_density']:.3f}), select {row['select_ms']:.2f} ms + "
                  f"kernel {row['kernel_ms']:.2f} ms -> attention x{row['attention_speedup']:.2f} "
                  f"(bound x{row['density_bound']:.2f}, eta {row['efficiency_eta']:.2f}); e2e model "
                  f"x{row['e2e_speedup_model']:.2f} of ceiling x{row['amdahl_ceiling']:.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
