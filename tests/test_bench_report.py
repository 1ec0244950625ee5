"""`dit-attn bench`: one report naming the machine; GPU-only sections say so on CPU; bad section names refused."""

import json

import pytest
import torch

from dit_attn import cli
from dit_attn.bench.report import SECTIONS, run_report
from dit_attn.testing import FAMILIES, cpu_threads


# slow tier: the overhead section over every family; tests/test_bench_report.py's refusal test stays fast
@pytest.mark.slow
def test_report_on_cpu(tmp_path):
    with cpu_threads(1):
        code = cli.main(["bench", "--out", str(tmp_path), "--quick", "--only", "overhead,kernels"])
    assert code == 0
    report = (tmp_path / "report.md").read_text()
    assert "machine:" in report and f"torch {torch.__version__}" in report
    for family in FAMILIES:
        assert f"| {family} |" in report
    overhead = json.loads((tmp_path / "overhead.json").read_text())
    assert {r["family"] for r in overhead["results"]} == set(FAMILIES)
    assert all(r["ratio"] > 0 for r in overhead["results"])
    status = json.loads((tmp_path / "report.json").read_text())["sections"]
    assert status["overhead"] == "ok"
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in status["kernels"] and "needs a CUDA GPU" in report


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ValueError, match="available: " + SECTIONS[0].name):
        run_report(tmp_path, only=["nope"])


def test_emphasis_benchmark_smoke_on_cpu(tmp_path, capsys):
    from dit_attn.bench import emphasis as bench_emphasis

    rows = bench_emphasis.main(["--shapes", "small", "--json", str(tmp_path / "e.json")])
    assert "NOT GPU NUMBERS" in capsys.readouterr().out or torch.cuda.is_available()
    assert rows[0]["plain_ms"] > 0 and rows[0]["emphasis_ms"] > 0
    assert json.loads((tmp_path / "e.json").read_text())["results"][0]["shape"] == "small"


# slow tier: four report sections end to end; each benchmark has its own fast smoke test
@pytest.mark.slow
def test_report_sections_of_sparse_and_conditions_on_cpu(tmp_path):
    with cpu_threads(1):
        run_report(tmp_path, quick=True, only=["sparse_quality", "conditions", "sparse_speed", "guidance"])
    status = json.loads((tmp_path / "report.json").read_text())["sections"]
    assert status["sparse_quality"] == "ok" and status["conditions"] == "ok" and status["guidance"] == "ok", status
    report = (tmp_path / "report.md").read_text()
    assert "| full |" in report and "concat/pka" in report and "CFG + SoftPAG batched" in report
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in status["sparse_speed"]


# slow tier: two CPU processes time a transformer; tests/test_context_parallel.py checks the same plumbing fast
@pytest.mark.slow
def test_context_parallel_section_says_what_it_needs_and_its_cpu_run_measures(tmp_path, monkeypatch):
    """Without two GPUs the section says so; the benchmark itself runs on 2 CPU processes (plumbing check)."""
    run_report(tmp_path, only=["context_parallel"])
    status = json.loads((tmp_path / "report.json").read_text())["sections"]
    if torch.cuda.device_count() < 2:
        assert "needs" in status["context_parallel"] and "GPU" in status["context_parallel"]
    from dit_attn.bench import context_parallel

    assert "skipped" in context_parallel.run(degree=2) or torch.cuda.device_count() >= 2
    result = context_parallel.run(degree=2, tokens=64, text_len=8, repeats=1, cpu=True)
    assert set(result["ratios"]) == {"ulysses:2 / one process (stock)", "controls / stock (one process)",
                                     "controls / stock (ulysses:2)"}
    assert all(value > 0 for value in result["ratios"].values())
