"""The sparse parts of `dit-attn bench` cannot contradict the docs: every quality number carries its sample size and
standard error, the docs' claim is shown at the report's sample size, missed targets are marked, and the claims in
docs/rectified_sparse.md equal the JSON of the run they come from."""

import json
import math
import re
from pathlib import Path

import pytest

from dit_attn.bench import report as bench_report
from dit_attn.bench import sparse_quality as quality
from dit_attn.sparse.selection import DENSITY_PARTS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rectified_sparse.md"


def _docs_run():
    res = quality.docs_results()
    if res is None:
        pytest.skip("docs results not in this checkout")
    return res


def test_docs_claim_equals_its_json_at_n_32_and_at_the_quick_n():
    text = DOCS.read_text()
    res = _docs_run()
    assert res["samples"] == quality.DOCS_PROTOCOL["samples"] == 32
    for key in ("model", "steps", "block_size", "neighbors", "sparsities"):
        assert res[key] == quality.DOCS_PROTOCOL[key], key
    for variant, per_sp in res["psnr_gain_vs_block"].items():
        for g in per_sp.values():
            claim = f"{g['mean']:+.2f} ± {g['stderr']:.2f} dB, {g['wins']} / {g['samples']}"
            assert claim in text, claim
    quick = quality.restrict_samples(res, quality.DOCS_PROTOCOL["quick_samples"])["psnr_gain_vs_block"]["rc"]
    for sp in ("0.5", "0.75"):
        g = quick[sp]
        assert f"{g['mean']:+.2f} ± {g['stderr']:.2f} dB ({g['wins']} / {g['samples']})" in text
    one = quality.restrict_samples(res, 1)["psnr_gain_vs_block"]["rc"]
    assert f"{one['0.5']['mean']:.2f} dB at 0.5 and {one['0.75']['mean']:.2f} dB at 0.75" in text


def test_restrict_samples_reproduces_a_shorter_run():
    res = _docs_run()
    four = quality.restrict_samples(res, 4)
    assert four["samples"] == 4
    e = four["final"]["rc"]["0.5"]
    assert e["psnr"] == pytest.approx(sum(res["final"]["rc"]["0.5"]["psnr_samples"][:4]) / 4)
    assert e["psnr_stderr"] is not None
    assert quality.restrict_samples(res, 1)["final"]["rc"]["0.5"]["psnr_stderr"] is None


def _cells(table: str) -> list[str]:
    """The body cells of a markdown table (header, rule and first column left out)."""
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    return [c for line in rows if "---" not in line for c in line.split("|")[2:-1]]


def test_quality_section_carries_n_and_standard_errors_and_the_docs_at_the_same_n():
    res = _docs_run()
    run = quality.restrict_samples(res, 4)
    run["per_layer"] = {"0": {v: {"0.5": {"density": 0.8, "requested_density": 0.5, **{
        f"density_{p}": 0.16 for p in DENSITY_PARTS}}, "0.75": {"density": 0.7, "requested_density": 0.25, **{
        f"density_{p}": 0.14 for p in DENSITY_PARTS}}} for v in run["variants"]}}
    md = bench_report.sparse_quality_markdown(run, res)
    table = md.split("\n\n")[1]
    for cell in _cells(table):  # every PSNR and SSIM: mean ± SE (n = 4)
        assert cell.count("(n = 4)") == 2 and cell.count(" ± ") == 2, cell
    assert "docs' run, same 4 samples" in md and "docs' claim (n = 32)" in md
    assert "+0.84 ± 0.51 (n = 32) dB, wins 20/32" in md  # the claim, with its n
    rc = quality.restrict_samples(res, 4)["psnr_gain_vs_block"]["rc"]["0.5"]
    assert f"{rc['mean']:+.2f} ± {rc['stderr']:.2f} (n = 4) dB" in md
    assert "standard error is of the order of the effect" in md  # small n is flagged
    assert "requested 1 - sparsity" in md and all(p in md for p in DENSITY_PARTS)


def test_one_sample_says_it_has_no_standard_error():
    res = quality.restrict_samples(_docs_run(), 1)
    md = bench_report.sparse_quality_markdown(res)
    assert "(no SE) (n = 1)" in md and "±" not in md.split("\n\n")[1]


def test_quality_evaluate_keeps_standard_errors_and_density_parts():
    res = quality.evaluate("tiny:wan", [0.75], ["rc", "block"], steps=2, neighbors=False, samples=2)
    e = res["final"]["rc"]["0.75"]
    assert e["samples"] == 2 and e["psnr_stderr"] is not None and e["ssim_stderr"] is not None
    layer = res["per_layer"]["0"]["rc"]["0.75"]
    assert layer["requested_density"] == pytest.approx(0.25)
    assert sum(layer[f"density_{p}"] for p in DENSITY_PARTS) == pytest.approx(layer["density"])
    md = bench_report.sparse_quality_markdown(res)
    assert "(n = 2)" in md and "wins" in md


def test_missed_targets_are_marked(tmp_path, monkeypatch):
    from dit_attn.bench import overhead as bench_overhead

    def fake(argv):
        path = argv[argv.index("--json") + 1]
        rows = [{"family": "sd3", "stock_s": 1.0, "attached_s": 1.01, "ratio": 1.01},
                {"family": "wan", "stock_s": 1.0, "attached_s": 1.068, "ratio": 1.068}]
        Path(path).write_text(json.dumps({"machine": "test", "results": rows}))

    monkeypatch.setattr(bench_overhead, "main", fake)
    md = bench_report._overhead(tmp_path, True)
    assert "| wan | 1.0000 | 1.0680 | 1.068 | **MISSED** |" in md and "| sd3 |" in md and "| met |" in md
    assert "**missed** by wan" in md
    assert bench_report._verdict(3.2, 3.5, True) == "**MISSED**" and bench_report._verdict(0.95, 0.9, True) == "met"


def test_guidance_and_emphasis_sections_mark_their_targets(tmp_path, monkeypatch):
    from dit_attn.bench import emphasis as bench_emphasis
    from dit_attn.bench import guidance as bench_guidance

    def measure(family, steps, repeats, device):
        return [{"family": family, "mode": mode, "step_ms": 10.0 * ratio, "peak_mib": None, "time_ratio": ratio,
                 "mem_ratio": None}
                for mode, ratio in (("CFG only", 1.0), ("CFG + SoftPAG batched", 1.6), ("CFG + SoftPAG uncond", 1.0))]

    monkeypatch.setattr(bench_guidance, "measure", measure)
    md = bench_report._guidance(tmp_path, True)
    assert "| sd3 | CFG + SoftPAG batched | 16.0 | 1.60 | ≤ 1.55x | **MISSED** |" in md
    assert "| sd3 | CFG + SoftPAG uncond | 10.0 | 1.00 | ≤ 1.05x | met |" in md and "**missed** by sd3" in md
    monkeypatch.setattr(bench_emphasis, "main", lambda argv: [
        {"shape": "flux", "label": "FLUX", "plain_ms": 1.0, "emphasis_ms": 1.2, "ratio": 1.2}])
    md = bench_report._emphasis(tmp_path, False)
    assert "| FLUX | 1.000 | 1.200 | 1.200 | **MISSED** |" in md and "**missed** at flux" in md


def test_speed_section_marks_targets_and_says_when_not_measured(tmp_path, monkeypatch):
    from dit_attn.bench import sparse_speed as sparse_bench

    def row(sp, speed, frac, target=None):
        r = {"sparsity": sp, "density": 0.3, "requested_density": 1 - sp, "attention_speedup": speed,
             "e2e_speedup_model": 2.0, "amdahl_ceiling": 4.0, "e2e_fraction_of_ceiling": frac}
        if target:
            r["attention_target"] = target
        return r

    results = [{"shape": "hunyuan_720p", "baseline": "cuDNN SDPA", "device": "GPU",
                "sparse": [row(0.8, 3.0, 0.5, target=3.5), row(0.9, 4.0, 0.95)]}]
    monkeypatch.setattr(sparse_bench, "main", lambda argv: results)
    md = bench_report._sparse_speed(tmp_path, False)
    assert "3.00x (target ≥ 3.5x: **MISSED**)" in md and "| met |" in md and "| **MISSED** |" in md
    results[0]["sparse"] = [row(0.8, 3.0, 0.5)]
    results[0]["shape"] = "wan_480p"
    assert "**not measured**" in bench_report._sparse_speed(tmp_path, True)


def test_density_section_on_cpu(tmp_path, monkeypatch):
    from dit_attn.bench import sparse_density as density

    calls = []

    def fake(shape, sparsity, first_frame=None):
        calls.append((shape, first_frame))
        return {"shape": shape, "first_frame": first_frame, "requested": 1 - sparsity, "floor": 0.2,
                "achieved": 0.4, "parts": {p: 0.08 for p in DENSITY_PARTS}}

    monkeypatch.setattr(density, "shape_density", fake)
    md = bench_report._sparse_density(tmp_path, True)
    assert ("wan_480p", "leading") in calls and ("wan_480p", None) in calls
    assert "| wan_480p | leading | 0.200 |" in md and "properties of the forced sets" in md
    assert math.isclose(json.loads((tmp_path / "sparse_density.json").read_text())[0]["achieved"], 0.4)
    assert re.search(r"\| flux_1024 \| default \| 0\.200 \|", md)


def test_docs_first_frame_table_equals_the_forced_sets():
    from dit_attn.bench.sparse_density import forced_fractions

    text = DOCS.read_text()
    for name, grid in (("480p", (21, 30, 52)), ("720p", (21, 45, 80))):
        cells = []
        for rule in (True, "leading"):
            f = forced_fractions(grid, first_frame=rule)
            cells.append(f"{f['first_frame_blocks']} of {f['n_vblocks']}, {100 * f['first_frame']:.2f} %, "
                         f"{100 * f['first_frame_extra']:.2f} %")
        assert f"| Wan {name} | {cells[0]} | {cells[1]} |" in text
