"""Static GPU compile report: compile every Triton kernel of dit_attn.kernels ahead of time, no GPU needed.

Usage::

    python -m dit_attn.kernels.static_report                          # full grid, sm_80 and sm_90
    python -m dit_attn.kernels.static_report --configs shipped --head-dims 64,128 --jobs 2 --out static_out
    python -m dit_attn.kernels.static_report --arch sm_90 --bench-json bench_out/bench_results.json

For each kernel x config x dtype x head dim x target it runs Triton's own compiler (``triton.compile`` on an
``ASTSource`` for ``GPUTarget("cuda", arch, 32)``, with the ptxas bundled in the triton wheel) on exactly what a
launch would compile: the launchers of ``block_sparse.py`` and ``block_stats_kernel.py`` are called on ``meta``
tensors with the kernels swapped for a recorder, and the recorded arguments are specialised by Triton's own JIT
binder (pointer alignment, unit strides, divisibility by 16). Configs: ``shipped`` is what runs without
autotuning (``block_sparse.DEFAULT_CONFIGS`` clamped to the selection blocks, and the block-statistics
launcher's rule); ``autotune`` adds every config that ``_bsa_fwd_autotuned`` keeps after its own pruning.

Per compile it records: the error (if any), registers and spills (ptxas ``-v``), shared memory (the compiled
kernel's metadata, checked against the target's per-block opt-in limit), tensor-core instructions (``mma.sync``
/ ``wgmma.mma_async`` in the PTX, ``HMMA`` / ``HGMMA`` in the SASS) and ptxas's info lines. Output:
``<out>/static_report.md`` and ``<out>/static_report.json``, plus a roofline table (predicted times on H100 and
H200 for the benchmark's shapes, :mod:`dit_attn.kernels.roofline`) beside the measured times, which are owed
until ``python -m dit_attn.bench.kernels`` has run on a GPU (pass its JSON with ``--bench-json``).

Problems (exit status 1): a compile error, a spill, or shared memory above the limit for a ``shipped`` config.
For ``autotune``-only configs they are listed as notes: the autotuner skips configs that fail to compile or
launch, and a spilling config only loses the timing race.

What it cannot tell: anything about time (no kernel runs), correctness on hardware, occupancy under real
register files, or bank conflicts. Registers, spills and shared memory are those of the real cubin.

Needs a non-interpreted triton: run it in a process without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["SMEM_LIMIT", "build_jobs", "compile_job", "run_report", "problems", "main"]

# Maximum shared memory per thread block (opt-in), bytes: CUDA C++ Programming Guide, "Technical Specifications
# per Compute Capability" (8.0: 163 KB of the SM's 164 KB; 9.0: 227 KB of 228 KB; 8.6/8.9/12.0: 99 KB).
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024,
              120: 99 * 1024}

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
HEAD_DIMS = (16, 32, 64, 128)  # the head dims of block_sparse.DEFAULT_CONFIGS (bench shapes use 64 and 128)
VARIANTS = ("plain", "bias+epilogue")
# Representative launch shape (the benchmark's FLUX.1 shape): only integer specialisation hints depend on it.
_B, _H, _L = 1, 24, 4608

_BSA = ("dit_attn.kernels.block_sparse", "_bsa_fwd_kernel")
_STATS = ("dit_attn.kernels.block_stats_kernel", "_block_stats_kernel")
_CFG_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "num_ctas", "maxnreg")


# ------------------------------------------------------------------------------------------------------------
# Recording what the launchers would compile
# ------------------------------------------------------------------------------------------------------------

class _Recorder:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


@contextlib.contextmanager
def _patched(module, **attrs):
    saved = {k: getattr(module, k) for k in attrs}
    try:
        for k, v in attrs.items():
            setattr(module, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def _check_not_interpreted(module):
    if getattr(module, "INTERPRET", False):
        raise RuntimeError("the static report needs compiled (not interpreted) Triton kernels: run it in a process "
                           "without TRITON_INTERPRET=1")


def _record_bsa(D: int, dtype: torch.dtype, variant: str, block_size: int):
    """(args, meta, static config, autotune configs) of one block_sparse_attention_triton launch."""
    from . import block_sparse as bs

    _check_not_interpreted(bs)
    q = torch.empty(_B, _H, _L, D, dtype=dtype, device="meta")
    nb = -(-_L // block_size)
    idx = torch.empty(1, 1, nb, nb, dtype=torch.int32, device="meta")
    cnt = torch.empty(1, 1, nb, dtype=torch.int32, device="meta")
    kw = dict(block_size_q=block_size, block_size_k=block_size)
    if variant == "bias+epilogue":  # as the benchmark passes them (fp32)
        kw.update(key_bias=torch.empty(1, 1, _L, device="meta"), rect_scale=torch.empty(_B, _H, nb, device="meta"),
                  rect_add=torch.empty(_B, _H, nb, D, device="meta"))
    rec = _Recorder()
    with _patched(bs, _bsa_fwd_kernel=rec, _autotune_enabled=lambda: False):
        bs.block_sparse_attention_triton(q, q, q, idx, cnt, **kw)
    (args, kwargs), = rec.calls
    meta = {k: v for k, v in kwargs.items() if k not in _CFG_KEYS}
    static = {k: v for k, v in kwargs.items() if k in _CFG_KEYS}
    at = bs._bsa_fwd_autotuned
    named = dict(zip(bs._bsa_fwd_kernel.arg_names, args))
    pruned = at.early_config_prune(at.configs, named, **meta) if at.early_config_prune else at.configs
    tuned = [c.all_kwargs() for c in pruned]
    return args, meta, static, tuned


def _record_stats(D: int, dtype: torch.dtype, block_size: int):
    from . import block_stats_kernel as bsk

    _check_not_interpreted(bsk)
    q = torch.empty(_B, _H, _L, D, dtype=dtype, device="meta")
    rec = _Recorder()
    with _patched(bsk, _block_stats_kernel=rec):
        bsk.block_stats_triton(q, q, q, block_size=block_size)
    (args, kwargs), = rec.calls
    return args, kwargs


def _kernel(ref):
    import importlib

    return getattr(importlib.import_module(ref[0]), ref[1])


def _specialise(ref, arch: int, args, kwargs):
    """Signature, constexprs, attrs and options exactly as JITFunction.run would build them for ``arch``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature

    fn = _kernel(ref)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    # Torch tensors -> MockTensor (data_ptr 0: 16-byte aligned, as the caching allocator's pointers are).
    args = [MockTensor(a.dtype, list(a.shape)) if isinstance(a, torch.Tensor) else a for a in args]
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, opts, bound, spec, opts)
    return signature, constexprs, attrs, dict(options.__dict__)


def _cfg_label(cfg: dict) -> str:
    s = f"w{cfg.get('num_warps', 4)} s{cfg.get('num_stages', 3)}"
    if "BLOCK_M" in cfg:
        s = f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']} " + s
    return s


def build_jobs(archs: Sequence[int], *, head_dims: Sequence[int] = HEAD_DIMS, dtypes: Sequence[str] = tuple(DTYPES),
               configs: str = "all", variants: Sequence[str] = VARIANTS, block_size: int = 128,
               kernels: Sequence[str] = ("block_sparse", "block_stats")) -> List[dict]:
    """Every (kernel, target, dtype, head dim, variant, config) to compile, each with its specialisation."""
    jobs = []
    for dt_name in dtypes:
        dtype = DTYPES[dt_name]
        for D in head_dims:
            todo = []
            if "block_sparse" in kernels:
                for variant in variants:
                    args, meta, static, tuned = _record_bsa(D, dtype, variant, block_size)
                    cfgs = {_cfg_label(static): (static, "shipped")}
                    if configs in ("all", "autotune"):
                        for c in tuned:
                            lab = _cfg_label(c)
                            cfgs[lab] = (cfgs[lab][0], "shipped+autotune") if lab in cfgs else (c, "autotune")
                    for lab, (cfg, source) in cfgs.items():
                        todo.append(("block_sparse", _BSA, variant, args, {**meta, **cfg}, cfg, source))
            if "block_stats" in kernels:
                args, kwargs = _record_stats(D, dtype, block_size)
                cfg = {k: v for k, v in kwargs.items() if k in _CFG_KEYS}
                todo.append(("block_stats", _STATS, "-", args, kwargs, cfg, "shipped"))
            for name, ref, variant, args, kwargs, cfg, source in todo:
                for arch in archs:
                    signature, constexprs, attrs, options = _specialise(ref, arch, args, kwargs)
                    jobs.append(dict(kernel=name, ref=ref, arch=arch, dtype=dt_name, head_dim=D, variant=variant,
                                     block_size=block_size, config=_cfg_label(cfg), config_source=source,
                                     signature=signature, constexprs=constexprs, attrs=attrs, options=options))
    return jobs


# ------------------------------------------------------------------------------------------------------------
# Compiling one job
# ------------------------------------------------------------------------------------------------------------

_CACHE_DIR: Optional[str] = None


def _private_cache() -> str:
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = tempfile.mkdtemp(prefix="dit_attn_static_report_")
        atexit.register(shutil.rmtree, _CACHE_DIR, True)
    return _CACHE_DIR


def _sass(cubin: bytes) -> str:
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.remove(f.name)


def _parse_ptxas(log: str) -> dict:
    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    lines = [ln.strip() for ln in log.splitlines()
             if ln.strip() and "Compile time" not in ln and not ln.lstrip().startswith("//")]
    notes = [ln for ln in lines if re.search(r"warning|performance|serializ", ln, re.I)]
    return dict(registers=num(r"Used (\d+) registers"), spill_stores=num(r"(\d+) bytes spill stores"),
                spill_loads=num(r"(\d+) bytes spill loads"), stack_bytes=num(r"(\d+) bytes stack frame"),
                barriers=num(r"used (\d+) barriers"), ptxas_info=[ln for ln in lines if "ptxas" in ln or "bytes" in ln],
                ptxas_notes=notes)


def compile_job(job: dict, sass: bool = True, asm_dir: Optional[str] = None) -> dict:
    """Compile one job (see :func:`build_jobs`) and return its row of the report."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    knobs.cache.dir = _private_cache()
    knobs.compilation.always_compile = True  # ptxas must run (and print its -v log) every time
    knobs.nvidia.dump_ptxas_log = True
    row = {k: job[k] for k in ("kernel", "arch", "dtype", "head_dim", "variant", "block_size", "config",
                               "config_source")}
    row["fp_fusion"] = job["options"].get("enable_fp_fusion")
    src = ASTSource(_kernel(job["ref"]), job["signature"], job["constexprs"], job["attrs"])
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ck = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32), options=job["options"])
    except Exception as e:  # a compile error is a result of the report
        msg = str(e)
        keep = [ln for ln in msg.splitlines() if ln.strip()][:12]
        row.update(status="error", error=f"{type(e).__name__}: " + "\n".join(keep)[:2000],
                   compile_s=time.perf_counter() - t0)
        return row
    row["compile_s"] = time.perf_counter() - t0
    md = ck.metadata
    ptx = ck.asm["ptx"]
    row.update(status="ok", shared_bytes=int(md.shared), num_warps=md.num_warps, num_stages=md.num_stages,
               ptx_mma_sync=len(re.findall(r"\bmma\.sync\.aligned", ptx)),
               ptx_wgmma=len(re.findall(r"\bwgmma\.mma_async", ptx)),
               ptx_cp_async=len(re.findall(r"\bcp\.async\.(?:ca|cg)", ptx)),
               ptx_tma=len(re.findall(r"\bcp\.async\.bulk", ptx)),
               **_parse_ptxas(log.getvalue()))
    if sass:
        text = _sass(ck.asm["cubin"])
        row.update(sass_hmma=len(re.findall(r"\bHMMA\b", text)), sass_hgmma=len(re.findall(r"\bHGMMA\b", text)),
                   sass_local_mem=len(re.findall(r"\b(?:LDL|STL)\b", text)))
    if asm_dir:
        stem = Path(asm_dir) / (f"{row['kernel']}_sm{row['arch']}_{row['dtype']}_d{row['head_dim']}_"
                                f"{row['variant']}_{row['config']}".replace(" ", "_").replace("+", "-"))
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".ptx").write_text(ptx)
        if sass:
            stem.with_suffix(".sass").write_text(text)
    return row


def _compile_star(a):
    return compile_job(*a)


def run_report(archs: Sequence[int], *, jobs: int = 1, sass: bool = True, asm_dir: Optional[str] = None,
               progress=None, **grid) -> List[dict]:
    """Build the jobs (:func:`build_jobs` keyword arguments in ``grid``) and compile them, ``jobs`` at a time
    (spawned worker processes)."""
    todo = build_jobs(archs, **grid)
    work = [(j, sass, asm_dir) for j in todo]
    rows = []
    if jobs <= 1:
        for i, w in enumerate(work):
            rows.append(compile_job(*w))
            if progress:
                progress(i + 1, len(work), rows[-1])
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            for i, row in enumerate(ex.map(_compile_star, work)):
                rows.append(row)
                if progress:
                    progress(i + 1, len(work), row)
    return rows


# ------------------------------------------------------------------------------------------------------------
# Checks and rendering
# ------------------------------------------------------------------------------------------------------------

def _row_issues(r: dict) -> List[str]:
    if r["status"] != "ok":
        return [f"compile error: {r['error'].splitlines()[0]}"]
    out = []
    if (r.get("spill_stores") or 0) or (r.get("spill_loads") or 0):
        out.append(f"spills {r['spill_stores']} B stores / {r['spill_loads']} B loads")
    lim = SMEM_LIMIT.get(r["arch"])
    if lim is not None and r["shared_bytes"] > lim:
        out.append(f"shared memory {r['shared_bytes']} B > sm_{r['arch']} limit {lim} B")
    return out


def _what(r):
    return f"{r['kernel']} sm_{r['arch']} {r['dtype']} D={r['head_dim']} {r['variant']} [{r['config']}]"


def problems(rows: List[dict], *, include_autotune: bool = False) -> List[str]:
    """Compile errors, spills and over-limit shared memory (of shipped configs unless ``include_autotune``)."""
    return [f"{_what(r)}: {msg}" for r in rows
            if include_autotune or r["config_source"] != "autotune" for msg in _row_issues(r)]


def _tc(r):
    if r["status"] != "ok":
        return ""
    parts = []
    if r["ptx_wgmma"]:
        parts.append(f"wgmma x{r['ptx_wgmma']}")
    if r["ptx_mma_sync"]:
        parts.append(f"mma.sync x{r['ptx_mma_sync']}")
    if "sass_hgmma" in r and (r["sass_hgmma"] or r["sass_hmma"]):
        parts.append(f"(SASS {'HGMMA x%d' % r['sass_hgmma'] if r['sass_hgmma'] else 'HMMA x%d' % r['sass_hmma']})")
    return " ".join(parts) or "no"


def summary(rows: List[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    out = dict(compiles=len(rows), ok=len(ok), errors=len(rows) - len(ok), per_arch={})
    for arch in sorted({r["arch"] for r in rows}):
        a = [r for r in ok if r["arch"] == arch]
        shipped = [r for r in a if r["config_source"] != "autotune"]
        out["per_arch"][f"sm_{arch}"] = dict(
            compiles=sum(r["arch"] == arch for r in rows), ok=len(a),
            max_registers=max((r["registers"] or 0 for r in a), default=None),
            max_registers_shipped=max((r["registers"] or 0 for r in shipped), default=None),
            spilling=sum(bool(r["spill_stores"] or r["spill_loads"]) for r in a),
            max_shared_bytes=max((r["shared_bytes"] for r in a), default=None),
            max_shared_bytes_shipped=max((r["shared_bytes"] for r in shipped), default=None),
            over_smem_limit=sum(r["shared_bytes"] > SMEM_LIMIT.get(arch, 1 << 30) for r in a),
            wgmma_serialized=sum(any("serialized" in n for n in r["ptxas_notes"]) for r in a),
            smem_limit=SMEM_LIMIT.get(arch))
    return out


def _md_table(rows: List[dict]) -> List[str]:
    out = ["| kernel | variant | dtype | D | config (BMxBN warps stages) | source | status | regs | spills st/ld (B) "
           "| smem KiB | tensor cores | ptxas |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            err = r["error"].splitlines()[0].replace("|", "/")[:160]
            out.append(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['head_dim']} | {r['config']} | "
                       f"{r['config_source']} | **error** | | | | | {err} |")
            continue
        lim = SMEM_LIMIT.get(r["arch"])
        smem = f"{r['shared_bytes'] / 1024:.0f}" + (" **over**" if lim and r["shared_bytes"] > lim else "")
        spills = f"{r['spill_stores']}/{r['spill_loads']}"
        if r["spill_stores"] or r["spill_loads"]:
            spills = f"**{spills}**"
        used = [re.sub(r"^ptxas(-blackwell)?\s+info\s*:\s*", "", ln) for ln in r["ptxas_info"]
                if "Used" in ln or "stack frame" in ln]
        info = "; ".join(r["ptxas_notes"] + used).replace("|", "/")[:240]
        out.append(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['head_dim']} | {r['config']} | "
                   f"{r['config_source']} | ok | {r['registers']} | {spills} | {smem} | {_tc(r)} | {info} |")
    return out


def render_markdown(rows: List[dict], roofline_rows: List[dict], meta: dict) -> str:
    s = summary(rows)
    lines = ["# Static GPU compile report (dit_attn.kernels)", "",
             f"triton {meta['triton']}, ptxas {meta['ptxas']}; command: `{meta['command']}`; "
             f"{s['compiles']} compiles, {s['ok']} ok, {s['errors']} errors, {meta['wall_s']:.0f} s.", "",
             "Compiled ahead of time, nothing ran: no timing here. Registers, spills and shared memory are those of "
             "the real cubin. Shared-memory limits per block (opt-in): "
             + ", ".join(f"sm_{a} {SMEM_LIMIT[a] // 1024} KiB" for a in meta["archs"] if a in SMEM_LIMIT) + ". "
             "fp32 runs exact fp32 products (`input_precision=\"ieee\"`): no tensor cores by design.", ""]
    probs = problems(rows)
    notes = [p for p in problems(rows, include_autotune=True) if p not in probs]
    lines += ["## Problems (shipped configs)", ""] + ([f"- {p}" for p in probs] or ["none"]) + [""]
    if notes:
        lines += [f"## Notes: autotune-only configs the autotuner would skip or lose ({len(notes)})", ""]
        lines += [f"- {p}" for p in notes[:200]] + ([f"- ... {len(notes) - 200} more (JSON)"] if len(notes) > 200
                                                      else []) + [""]
    for arch in meta["archs"]:
        a = s["per_arch"].get(f"sm_{arch}")
        if not a:
            continue
        lines += [f"## sm_{arch}", "",
                  f"{a['ok']}/{a['compiles']} compiled; max registers {a['max_registers']} (shipped "
                  f"{a['max_registers_shipped']}); {a['spilling']} spilling; max shared memory "
                  f"{(a['max_shared_bytes'] or 0) / 1024:.0f} KiB (shipped {(a['max_shared_bytes_shipped'] or 0) / 1024:.0f}"
                  f" KiB, limit {(a['smem_limit'] or 0) // 1024} KiB), {a['over_smem_limit']} over the limit; "
                  f"{a['wgmma_serialized']} with wgmma serialized by ptxas (C7511).", ""]
        lines += _md_table([r for r in rows if r["arch"] == arch]) + [""]
    if roofline_rows:
        gpus = [k[len("predicted_ms["):-1] for k in roofline_rows[0] if k.startswith("predicted_ms[")]
        lines += ["## Roofline (predicted) vs measured", "",
                  "Predicted = max(FLOPs / dense bf16 tensor-core peak, compulsory bytes / HBM bandwidth), published "
                  "peaks: " + "; ".join(f"{g}: {meta['gpus'][g]['bf16_tflops']} TFLOP/s, {meta['gpus'][g]['hbm_tbps']} "
                                        f"TB/s" for g in gpus)
                  + ". A lower bound (no exp/SFU cost, no L2 misses, no launch tail). FLOPs as the benchmark counts "
                  "them (4 * D per computed pair); benchmark defaults: batch 1, bf16, 128-token blocks.", "",
                  "| shape | variant | GFLOP | MB | FLOP/B | " + " | ".join(f"predicted ms {g}" for g in gpus)
                  + " | measured ms |", "|---|---|---|---|---|" + "---|" * len(gpus) + "---|"]
        for r in roofline_rows:
            pred = " | ".join(f"{r[f'predicted_ms[{g}]']:.3f} ({r[f'bound[{g}]'][:3]})" for g in gpus)
            meas = f"{r['measured_ms']:.3f}" if r["measured_ms"] is not None else "owed (no GPU run yet)"
            lines.append(f"| {r['shape']} | {r['variant']} | {r['gflop']:.1f} | {r['mbytes']:.1f} | "
                         f"{r['flop_per_byte']:.0f} | {pred} | {meas} |")
        lines.append("")
    return "\n".join(lines)


def _parse_archs(text: str) -> List[int]:
    out = []
    for a in text.split(","):
        a = a.strip().lower().removeprefix("sm_").removeprefix("sm").rstrip("a")
        if a:
            out.append(int(a))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dit_attn.kernels.static_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sm_80,sm_90", help="comma list of targets (default sm_80,sm_90)")
    p.add_argument("--out", default="static_report_out", help="output folder (markdown + JSON)")
    p.add_argument("--configs", default="all", choices=["all", "shipped"],
                   help="shipped: configs used without autotuning; all: plus every pruned autotune config")
    p.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--variants", default=",".join(VARIANTS), help="block_sparse operands: plain, bias+epilogue")
    p.add_argument("--kernels", default="block_sparse,block_stats")
    p.add_argument("--block-size", type=int, default=128, help="selection block size (default 128, the benchmark's)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiler processes")
    p.add_argument("--no-sass", action="store_true", help="skip the SASS disassembly (HMMA/HGMMA counts)")
    p.add_argument("--dump-asm", action="store_true", help="write each kernel's PTX (and SASS) under <out>/asm")
    p.add_argument("--bench-json", default=None, help="bench_results.json of a GPU run, for the measured column")
    p.add_argument("--no-roofline", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        p.error("TRITON_INTERPRET=1 is set: the static report compiles real kernels; unset it")
    import triton
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas

    from . import roofline

    # Triton 3.9 warns that its fp-fusion default will change; the report compiles with the current default (as a
    # launch would) and records it in each row's options.
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    archs = _parse_archs(args.arch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def progress(i, n, row):
        if not args.quiet:
            tail = (f"{row['registers']} regs, spills {row['spill_stores']}/{row['spill_loads']}, "
                    f"{row['shared_bytes'] / 1024:.0f} KiB smem, {_tc(row)}" if row["status"] == "ok"
                    else row["error"].splitlines()[0][:120])
            print(f"[{i}/{n}] {_what(row)} ({row['compile_s']:.1f} s): {row['status']}: {tail}", flush=True)

    rows = run_report(archs, jobs=args.jobs, sass=not args.no_sass,
                      asm_dir=str(out / "asm") if args.dump_asm else None, progress=progress,
                      head_dims=[int(x) for x in args.head_dims.split(",") if x],
                      dtypes=[x for x in args.dtypes.split(",") if x], configs=args.configs,
                      variants=[x for x in args.variants.split(",") if x],
                      kernels=[x for x in args.kernels.split(",") if x], block_size=args.block_size)
    measured = None
    if args.bench_json:
        measured = json.loads(Path(args.bench_json).read_text())["results"]
    roof = [] if args.no_roofline else roofline.bench_predictions(measured=measured, block_size=args.block_size)
    ptxas = {f"sm_{a}": get_ptxas(a).version for a in archs}
    meta = dict(triton=triton.__version__, ptxas=", ".join(f"{k}: {v}" for k, v in ptxas.items()),
                command="python -m dit_attn.kernels.static_report " + " ".join(sys.argv[1:] if argv is None else argv),
                archs=archs, wall_s=time.perf_counter() - t0, smem_limit={f"sm_{a}": SMEM_LIMIT.get(a) for a in archs},
                gpus={g: roofline.GPUS[g] for g in ("H100 SXM5", "H200 SXM")}, cuobjdump=knobs.nvidia.cuobjdump.path)
    probs = problems(rows)
    (out / "static_report.json").write_text(json.dumps(
        dict(meta=meta, summary=summary(rows), problems=probs, results=rows, roofline=roof), indent=1, default=str))
    (out / "static_report.md").write_text(render_markdown(rows, roof, meta))
    s = summary(rows)
    print(f"{s['compiles']} compiles, {s['ok']} ok, {s['errors']} errors in {meta['wall_s']:.0f} s")
    for a, v in s["per_arch"].items():
        print(f"  {a}: max {v['max_registers']} regs, {v['spilling']} spilling, max smem "
              f"{(v['max_shared_bytes'] or 0) / 1024:.0f} KiB (limit {(v['smem_limit'] or 0) // 1024}), "
              f"{v['over_smem_limit']} over, {v['wgmma_serialized']} with wgmma serialized")
    print(f"wrote {out / 'static_report.md'} and {out / 'static_report.json'}")
    for pr in probs:
        print("PROBLEM:", pr)
    return 1 if probs else 0


if __name__ == "__main__":
    sys.exit(main())
