"""Static GPU compile report: the Triton kernels compile ahead of time for sm_80 and sm_90 (Triton's bundled ptxas,
no GPU) without errors, spills, or shared memory above the target's per-block limit; the roofline doctest.

The compile test runs a representative subset (the shipped configs of both kernels, head dims 64 and 128 — the
benchmark's — in bf16 and fp32, both operand variants of the attention kernel: 24 compiles, ~30-60 s on two
cores). fp16 compiles to the same code as bf16 (same registers and shared memory in the full report), and head
dims 16/32 and the autotune configs are in the full grid: ``python -m dit_attn.kernels.static_report``.
It runs in a subprocess because this folder's conftest sets TRITON_INTERPRET=1, under which triton.jit makes
interpreted functions that cannot be compiled.
"""

import doctest
import json
import os
import subprocess
import sys

import pytest

from dit_attn.kernels import roofline


def _nvidia_toolchain():
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except Exception as e:  # noqa: BLE001 - triton missing or without the NVIDIA backend
        return f"triton's NVIDIA backend is not importable: {e}"
    try:
        get_ptxas(80).path, get_ptxas(90).path
    except Exception as e:  # noqa: BLE001
        return f"no ptxas: {e}"
    return None


def test_roofline_doctest():
    result = doctest.testmod(roofline, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_roofline_bench_rows():
    from dit_attn.kernels.roofline import REAL_SHAPES

    rows = roofline.bench_predictions(measured=[dict(shape="flux", variant="ours_dense", ms=1.5)])
    assert {r["shape"] for r in rows} == set(REAL_SHAPES)
    flux = {r["variant"]: r for r in rows if r["shape"] == "flux"}
    assert flux["ours_dense"]["measured_ms"] == 1.5 and flux["ours_density_0.1"]["measured_ms"] is None
    # Sparser is never slower; H200 (more bandwidth, same tensor-core peak) never slower than H100.
    for r in rows:
        assert 0 < r["predicted_ms[H200 SXM]"] <= r["predicted_ms[H100 SXM5]"]
    assert flux["ours_density_0.1"]["predicted_ms[H100 SXM5]"] < flux["ours_dense"]["predicted_ms[H100 SXM5]"]
    assert flux["block_stats"]["bound[H100 SXM5]"] == "memory"


def test_problem_gate():
    from dit_attn.kernels.static_report import problems

    base = dict(kernel="k", dtype="bfloat16", head_dim=64, variant="-", config="c", status="ok", spill_stores=0,
                spill_loads=0, shared_bytes=1024)
    rows = [dict(base, arch=80, config_source="shipped"),
            dict(base, arch=80, config_source="shipped", spill_stores=8, spill_loads=4),
            dict(base, arch=80, config_source="shipped", shared_bytes=164 * 1024),
            dict(base, arch=90, config_source="shipped", shared_bytes=164 * 1024),
            dict(base, arch=90, config_source="shipped", status="error", error="PTXASError: boom"),
            dict(base, arch=90, config_source="autotune", shared_bytes=300 * 1024)]
    found = problems(rows)
    assert len(found) == 3 and "spills" in found[0] and "limit" in found[1] and "boom" in found[2]
    assert len(problems(rows, include_autotune=True)) == 4


# slow tier: every shipped config compiled for two architectures (about 30 s of ptxas)
@pytest.mark.slow
def test_static_compile_report_sm80_sm90(tmp_path):
    why = _nvidia_toolchain()
    if why:
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "dit_attn.kernels.static_report", "--arch", "sm_80,sm_90", "--configs", "shipped",
           "--head-dims", "64,128", "--dtypes", "bfloat16,float32", "--jobs", "2", "--no-sass", "--quiet",
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    data = json.loads((out / "static_report.json").read_text()) if (out / "static_report.json").exists() else None
    assert data is not None, f"no report (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rows = data["results"]
    assert len(rows) == 2 * 2 * 2 * (2 + 1), [r["kernel"] for r in rows]  # archs x D x dtypes x (2 variants + stats)

    from dit_attn.kernels.static_report import SMEM_LIMIT

    bad = []
    for r in rows:
        what = f"{r['kernel']} sm_{r['arch']} {r['dtype']} D={r['head_dim']} {r['variant']} [{r['config']}]"
        if r["status"] != "ok":
            bad.append(f"{what}: {r['error']}")
            continue
        if r["spill_stores"] or r["spill_loads"]:
            bad.append(f"{what}: spills {r['spill_stores']}/{r['spill_loads']} B ({r['ptxas_info']})")
        if r["shared_bytes"] > SMEM_LIMIT[r["arch"]]:
            bad.append(f"{what}: {r['shared_bytes']} B shared memory > {SMEM_LIMIT[r['arch']]} B")
        if r["registers"] is None or not 0 < r["registers"] <= 255:
            bad.append(f"{what}: registers {r['registers']} not parsed from ptxas -v")
        if r["kernel"] == "block_sparse" and r["dtype"] == "bfloat16":
            # Tensor cores: warpgroup MMA on Hopper, mma.sync on Ampere.
            if (r["ptx_wgmma"] if r["arch"] == 90 else r["ptx_mma_sync"]) == 0:
                bad.append(f"{what}: no tensor-core instructions in the PTX")
    assert not bad, "\n".join(bad)
    assert proc.returncode == 0 and not data["problems"], proc.stdout[-3000:]
    md = (out / "static_report.md").read_text()
    assert "## sm_80" in md and "## sm_90" in md and "predicted" in md and "owed" in md
