"""Head search: greedy rounds with a cheap objective, resume after interruption, JSON + heatmap outputs."""

import json

import numpy as np
import pytest

import dit_attn
from dit_attn.head_search import add_cli, candidate_heads
from dit_attn.testing import cpu_threads, tiny_pipeline

CALL = dict(num_inference_steps=1, height=48, width=64, guidance_scale=1.0, max_sequence_length=32)
CANDIDATES = "transformer_blocks.0:*; transformer_blocks.1:0"


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):
        yield


def brightness(images, prompts):
    return [float(np.asarray(im, dtype=np.float64).mean()) for im in images]


def _search(pipe, out, objective=brightness):
    return dit_attn.search_heads(pipe, candidates=CANDIDATES, objective=objective, prompts=["a red circle"],
                                 seeds=[0, 1], rounds=2, top_k=1, out_dir=out, progress=False, **CALL)


def test_search_resume_and_outputs(tmp_path):
    pipe = tiny_pipeline("sd3")
    full = _search(pipe, tmp_path / "full")
    assert len(full.rounds[0]) == 3 and len(full.rounds[1]) == 2
    assert len(set(full.rounds[0].values())) == 3  # heads really differ
    best = max(full.rounds[0], key=full.rounds[0].get)
    assert full.selected[0] == [best]
    assert dit_attn.HeadSet.load(full.files["heads"]) == full.heads and len(full.heads) == 2
    assert (tmp_path / "full" / "heatmap.png").stat().st_size > 0
    assert (tmp_path / "full" / "heatmap_round2.png").exists()

    calls = {"n": 0}

    def flaky(images, prompts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # interrupted in round 1, after two heads
        return brightness(images, prompts)

    with pytest.raises(KeyboardInterrupt):
        _search(pipe, tmp_path / "resume", flaky)
    saved = json.loads((tmp_path / "resume" / "scores.rank0.json").read_text())["scores"]
    assert len(saved) == 2
    calls["n"] = 10
    resumed = _search(pipe, tmp_path / "resume", flaky)
    assert calls["n"] == 10 + 1 + 2  # only the missing head of round 1, then round 2
    assert resumed.heads == full.heads and resumed.rounds == full.rounds


def test_candidates_and_errors(tmp_path):
    pipe = tiny_pipeline("sd3")
    all_heads = candidate_heads(pipe.transformer)
    assert all_heads == [("transformer_blocks", b, h) for b in range(2) for h in range(2)]  # no attn2
    assert candidate_heads(pipe.transformer, [("transformer_blocks", 1, 1)]) == [("transformer_blocks", 1, 1)]
    with pytest.raises(ValueError, match="has no block 7"):
        candidate_heads(pipe.transformer, "transformer_blocks.7:0")
    _search(pipe, tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        dit_attn.search_heads(pipe, candidates=CANDIDATES, objective=brightness, prompts=["a blue square"],
                              seeds=[0], out_dir=tmp_path, progress=False, **CALL)


def test_cli_parser():
    import argparse

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["heads", "search", "--rounds", "2", "--top-k", "3", "--out", "h"])
    assert (args.model, args.rounds, args.top_k, args.out) == ("tiny:sd3", 2, 3, "h") and callable(args.func)
