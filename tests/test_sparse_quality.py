"""dit_attn.bench.sparse_quality: averaging over several (prompt, seed) samples."""

import pytest

from dit_attn.bench import sparse_quality as quality


def test_samples_average_the_single_sample_runs_with_successive_seeds():
    kw = dict(steps=2, neighbors=False)
    both = quality.evaluate("tiny:wan", [0.75], ["r", "block"], samples=2, seed=3, **kw)
    first = quality.evaluate("tiny:wan", [0.75], ["r", "block"], samples=1, seed=3, **kw)
    second = quality.evaluate("tiny:wan", [0.75], ["r", "block"], samples=1, seed=4, **kw)
    for variant in ("r", "block"):
        got = both["final"][variant]["0.75"]
        singles = [run["final"][variant]["0.75"]["psnr"] for run in (first, second)]
        assert got["psnr_samples"] == pytest.approx(singles)
        assert singles[0] != singles[1]  # the second sample is a different noise draw
        assert got["psnr"] == pytest.approx(sum(singles) / 2)
        layer_errors = [run["per_layer"]["0"][variant]["0.75"]["rel_err"] for run in (first, second)]
        # every layer-0 call of both samples, pooled: the mean of two equal-sized groups
        assert both["per_layer"]["0"][variant]["0.75"]["rel_err"] == pytest.approx(sum(layer_errors) / 2)
    assert both["samples"] == 2


def test_samples_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="samples must be >= 1"):
        quality.evaluate("tiny:wan", [0.5], ["block"], samples=0)
    with pytest.raises(SystemExit):
        quality.main(["--model", "tiny:wan", "--out", str(tmp_path), "--samples", "0"])
