"""`dit-attn bench`: one report naming the machine; GPU-only sections say so on CPU; bad section names refused."""

import json

import pytest
import torch

from dit_attn import cli
from dit_attn.bench.report import SECTIONS, run_report
from dit_attn.testing import FAMILIES, cpu_threads


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


def test_report_sections_of_sparse_and_conditions_on_cpu(tmp_path):
    with cpu_threads(1):
        run_report(tmp_path, quick=True, only=["sparse_quality", "conditions", "sparse_speed", "guidance"])
    status = json.loads((tmp_path / "report.json").read_text())["sections"]
    assert status["sparse_quality"] == "ok" and status["conditions"] == "ok" and status["guidance"] == "ok", status
    report = (tmp_path / "report.md").read_text()
    assert "| full |" in report and "concat/pka" in report and "CFG + SoftPAG batched" in report
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in status["sparse_speed"]
