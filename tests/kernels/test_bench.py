"""Smoke test of the benchmark script on CPU with tiny shapes (reference path; no GPU numbers)."""

import json

import torch

from dit_attn.bench import kernels as bench


def test_bench_small_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DIT_ATTN_KERNEL_IMPL", raising=False)
    res = bench.main(["--shapes", "small-d64", "--device", "cpu", "--out", str(tmp_path), "--no-plot",
                      "--warmup", "0", "--rep", "0", "--dtype", "float32"])
    printed = capsys.readouterr().out
    assert "NOT GPU NUMBERS" in printed
    data = json.loads((tmp_path / "bench_results.json").read_text())
    assert data["meta"]["cpu_mode"] is True
    variants = {r["variant"] for r in data["results"]}
    expected = {"sdpa_math_cpu", "ours_dense", "ours_dense+key_bias", "ours_dense+epilogue", "ours_density_0.5",
                "ours_density_0.25", "ours_density_0.1", "ours_density_0.25+bias+epilogue", "block_stats"}
    assert expected <= variants, variants
    for r in data["results"]:
        assert r.get("ms", 0) > 0, r
        if r["variant"].startswith("ours_density"):
            assert 0 < r["density"] < 1 and r["dense_equiv_tflops"] > r["tflops"]
    assert res["results"] and torch.__version__ == data["meta"]["torch"]
