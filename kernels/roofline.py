"""Roofline estimates (predicted, never measured) for the shapes of ``python -m dit_attn.bench.kernels``.

A kernel that moves ``bytes`` through HBM and does ``flops`` on the tensor cores cannot finish faster than
``max(flops / peak_flops, bytes / peak_bandwidth)``. :func:`roofline_ms` computes that bound from the published
peaks in :data:`GPUS`; :func:`bench_predictions` applies it to every (shape, variant) the benchmark times, with
the benchmark's own FLOP count (``4 * D * computed (query, key) pairs``), so a predicted time sits next to the
measured one of ``bench_results.json`` (``--bench-json`` of ``python -m dit_attn.kernels.static_report``).

What the estimate leaves out (each makes the real time longer): the softmax's exponentials (one ``exp2`` per
(query, key) pair on the SFU: at head dim 64 that is about as long as the matmuls on H100, see FlashAttention-3),
the LUT's load latency, tail effects of the grid, and the K/V re-reads that miss L2 (the byte count is the
compulsory traffic: every input read once, every output written once). Peaks are the datasheets' dense numbers,
which no kernel reaches (FlashAttention-3 reaches ~75% of the bf16 peak on H100 SXM5).

Example::

    >>> from dit_attn.kernels.roofline import GPUS, attention_cost, roofline_ms
    >>> c = attention_cost(B=1, H=24, Lq=4608, Lk=4608, D=128)   # FLUX.1 1024^2, dense, bf16
    >>> round(c.flops / 1e12, 4), round(c.bytes / 1e6, 1)         # TFLOP, MB
    (0.2609, 113.8)
    >>> round(c.flops / c.bytes)                                    # FLOP per byte: far above the ridge
    2292
    >>> t = roofline_ms(c, GPUS["H100 SXM5"])
    >>> round(t.ms, 3), t.bound
    (0.264, 'compute')
    >>> sparse = attention_cost(1, 24, 4608, 4608, 128, density=0.1)  # 4 of 36 key blocks per query block
    >>> [(round(roofline_ms(sparse, GPUS[g]).ms, 4), roofline_ms(sparse, GPUS[g]).bound) for g in ("H100 SXM5", "H200 SXM")]
    [(0.0339, 'memory'), (0.0293, 'compute')]
"""

from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional

__all__ = ["REAL_SHAPES", "GPUS", "Cost", "Roofline", "attention_cost", "block_stats_cost", "roofline_ms", "bench_predictions"]

# Published peaks (NVIDIA datasheets; the tensor-core numbers there are quoted "with sparsity", the dense rate is
# half). bf16 and fp16 share the tensor-core rate. fp32_tflops: non-tensor-core FP32 (the kernel's fp32 path
# uses exact fp32 products, not TF32).
GPUS: Dict[str, dict] = {
    "H100 SXM5": dict(bf16_tflops=989.4, fp32_tflops=66.9, hbm_tbps=3.35,
                      source="NVIDIA H100 Tensor Core GPU datasheet: BF16 1,979 TFLOPS with sparsity, "
                             "FP32 67 TFLOPS, HBM3 3.35 TB/s"),
    "H100 PCIe": dict(bf16_tflops=756.5, fp32_tflops=51.2, hbm_tbps=2.0,
                      source="NVIDIA H100 Tensor Core GPU datasheet: BF16 1,513 TFLOPS with sparsity, "
                             "FP32 51 TFLOPS, HBM2e 2 TB/s"),
    "H200 SXM": dict(bf16_tflops=989.4, fp32_tflops=66.9, hbm_tbps=4.8,
                     source="NVIDIA H200 Tensor Core GPU datasheet: BF16 1,979 TFLOPS with sparsity, "
                            "FP32 67 TFLOPS, HBM3e 4.8 TB/s"),
    "H200 NVL": dict(bf16_tflops=835.5, fp32_tflops=60.0, hbm_tbps=4.8,
                     source="NVIDIA H200 Tensor Core GPU datasheet: BF16 1,671 TFLOPS with sparsity, "
                            "FP32 60 TFLOPS, HBM3e 4.8 TB/s"),
}

_ELEM = {"bfloat16": 2, "float16": 2, "float32": 4}


class Cost(NamedTuple):
    flops: float          # the benchmark's FLOP count (4 * D per computed (query, key) pair)
    bytes: float          # compulsory HBM traffic
    tensor_core: bool     # whether the FLOPs run on tensor cores (bf16/fp16 attention) or FP32 units


class Roofline(NamedTuple):
    ms: float             # predicted (lower bound) milliseconds
    compute_ms: float
    memory_ms: float
    bound: str            # "compute" or "memory"


def attention_cost(B: int, H: int, Lq: int, Lk: int, D: int, *, density: float = 1.0, dtype: str = "bfloat16",
                   block_size: int = 128, key_bias: bool = False, epilogue: bool = False) -> Cost:
    """FLOPs and compulsory bytes of block-sparse attention as the benchmark runs it.

    ``density`` is the fraction of key blocks per query block (the benchmark's random LUT keeps
    ``round(density * nkb)`` blocks, at least one); FLOPs count ``4 * D`` per computed pair (QK^T and PV), using
    the expected number of keys of the chosen blocks. Bytes: q, k, v read once, out and the fp32 LSE written
    once, the int32 LUT, and the fp32 key bias ``[L]`` / epilogue ``R [B,H,nqb]``, ``C [B,H,nqb,D]`` when used.
    """
    e = _ELEM[dtype]
    nqb, nkb = -(-Lq // block_size), -(-Lk // block_size)
    kept = max(1, min(nkb, round(density * nkb)))
    pairs = B * H * Lq * kept * (Lk / nkb)
    flops = 4.0 * D * pairs
    nbytes = (B * H * (Lq + 2 * Lk) * D * e            # q, k, v
              + B * H * Lq * D * e + B * H * Lq * 4     # out, lse
              + B * H * nqb * (kept + 1) * 4)           # LUT and counts
    if key_bias:
        nbytes += Lk * 4
    if epilogue:
        nbytes += B * H * nqb * (1 + D) * 4
    return Cost(flops, float(nbytes), dtype != "float32")


def block_stats_cost(B: int, H: int, L: int, D: int, *, dtype: str = "bfloat16", block_size: int = 128) -> Cost:
    """Block statistics: q, k, v read once; five fp32 ``[B, H, nb, D]`` outputs; ~9 FP32 ops per element."""
    nb = -(-L // block_size)
    return Cost(9.0 * B * H * L * D, float(3 * B * H * L * D * _ELEM[dtype] + 5 * B * H * nb * D * 4), False)


def roofline_ms(cost: Cost, gpu: dict) -> Roofline:
    """Lower bound on the time of ``cost`` on ``gpu`` (an entry of :data:`GPUS`): max(compute, memory)."""
    peak = gpu["bf16_tflops"] if cost.tensor_core else gpu["fp32_tflops"]
    compute = cost.flops / (peak * 1e12) * 1e3
    memory = cost.bytes / (gpu["hbm_tbps"] * 1e12) * 1e3
    return Roofline(max(compute, memory), compute, memory, "compute" if compute >= memory else "memory")


# The real DiT attention shapes the GPU benchmark (python -m dit_attn.bench.kernels) times and this module predicts:
# name -> (heads, head dim, tokens); tokens include text where the model attends jointly.
REAL_SHAPES = {
    "flux": dict(H=24, D=128, L=4096 + 512, label="FLUX.1 1024^2 (24x128, 4.6k)"),
    "cogvideox5b": dict(H=48, D=64, L=17550 + 226, label="CogVideoX-5B 480p (48x64, 17.8k)"),
    "wan1.3b": dict(H=12, D=128, L=32760, label="Wan2.1-1.3B 480p (12x128, 32.8k)"),
    "wan14b": dict(H=40, D=128, L=75600, label="Wan2.1-14B 720p (40x128, 75.6k)"),
    "hunyuan": dict(H=24, D=128, L=118800 + 256, label="HunyuanVideo 720p (24x128, 119k)"),
}

# The variants timed by dit_attn.bench.kernels.bench_shape: name -> (density, key_bias, epilogue).
BENCH_VARIANTS = {
    "ours_dense": (1.0, False, False),
    "ours_dense+key_bias": (1.0, True, False),
    "ours_dense+epilogue": (1.0, False, True),
    "ours_density_0.5": (0.5, False, False),
    "ours_density_0.25": (0.25, False, False),
    "ours_density_0.25+bias+epilogue": (0.25, True, True),
    "ours_density_0.1": (0.1, False, False),
}


def bench_predictions(shapes: Optional[dict] = None, *, batch: int = 1, dtype: str = "bfloat16",
                      block_size: int = 128, gpus=("H100 SXM5", "H200 SXM"),
                      measured: Optional[List[dict]] = None) -> List[dict]:
    """One row per (benchmark shape, variant): FLOPs, bytes, FLOP/byte and the predicted ms per GPU.

    ``shapes`` defaults to :data:`REAL_SHAPES` (what the benchmark times on a GPU, batch 1, bf16, 128-token
    blocks); ``measured`` is the ``results`` list of a ``bench_results.json``, whose ``ms`` fills the
    ``measured_ms`` column (``None``: owed, no GPU run yet).
    """
    if shapes is None:
        shapes = REAL_SHAPES
    got = {(r.get("shape"), r.get("variant")): r.get("ms") for r in (measured or []) if "ms" in r}
    rows = []
    for name, spec in shapes.items():
        H, D, L = spec["H"], spec["D"], spec["L"]
        costs = {v: attention_cost(batch, H, L, L, D, density=d, dtype=dtype, block_size=block_size,
                                   key_bias=kb, epilogue=ep) for v, (d, kb, ep) in BENCH_VARIANTS.items()}
        costs["block_stats"] = block_stats_cost(batch, H, L, D, dtype=dtype, block_size=block_size)
        for variant, c in costs.items():
            row = dict(shape=name, variant=variant, B=batch, H=H, D=D, L=L, dtype=dtype, gflop=c.flops / 1e9,
                       mbytes=c.bytes / 1e6, flop_per_byte=c.flops / c.bytes if c.bytes else math.inf)
            for g in gpus:
                r = roofline_ms(c, GPUS[g])
                row[f"predicted_ms[{g}]"] = r.ms
                row[f"bound[{g}]"] = r.bound
            row["measured_ms"] = got.get((name, variant))
            rows.append(row)
    return rows
