"""Head search: greedy rounds with a cheap objective, resume after interruption, JSON + heatmap outputs."""

import json

import numpy as np
import pytest

import dit_attn
from dit_attn.head_search import candidate_heads, read_prompts
from dit_attn.pipelines.head_search import _run_cli, add_cli, shapes_objective
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
    assert (args.model, args.rounds, args.top_k, args.out) == ("shapes:t2i", 2, 3, "h") and callable(args.func)


def _cli_args(*argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    return parser.parse_args(["heads", "search", *argv])


def test_degenerate_objective_refused(tmp_path):
    pipe = tiny_pipeline("sd3")
    with pytest.raises(ValueError, match=r"degenerate.*all 3 candidate heads scored exactly 0\.5 in round 1.*"
                                         r"cannot tell heads apart.*another objective"):
        _search(pipe, tmp_path / "constant", lambda images, prompts: [0.5] * len(images))
    assert not (tmp_path / "constant" / "heads.json").exists()

    # What made the README example (the built-in ShapesWorld objective on the untrained tiny model) score 0.0:
    # its images hold nothing the evaluator recognises, so every head scores 0 and nothing can be selected.
    objective = shapes_objective()
    with pytest.raises(ValueError, match=r"all 2 candidate heads scored exactly 0 .*untrained model \(tiny:\*\)"):
        dit_attn.search_heads(pipe, candidates="transformer_blocks.0:*", objective=objective,
                              prompts=objective.default_prompts[:1],
                              seeds=[0], out_dir=tmp_path / "tiny", progress=False, **CALL)
    assert not (tmp_path / "tiny" / "heads.json").exists()


@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"), ("", "holds no prompts"), ("\n  \n# only a comment\n", "holds no prompts"),
    ("a cat\n", "scores only its eval prompts"), (b"\xff\xfe\x00", "UTF-8"),
])
def test_cli_prompts_checked_before_model_loads(tmp_path, monkeypatch, content, needle):
    from dit_attn.pipelines import loading

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before --prompts was checked")

    monkeypatch.setattr(loading, "load_pipeline", no_load)
    path = tmp_path / "prompts.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=needle):
        _run_cli(_cli_args("--prompts", str(path), "--out", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_cli_other_arguments_checked_before_model_loads(tmp_path, monkeypatch):
    from dit_attn.pipelines import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "p.json").write_text('["a cat", 3]')
    for argv, needle in [(["--prompts", str(tmp_path / "p.json")], "list of non-empty strings"),
                         (["--prompts", str(tmp_path)], "is not a file"), (["--seeds", "0,x"], "--seeds"),
                         (["--candidates", "transformer_blocks.x:0"], "bad head spec"), (["--top-k", "0"], ">= 1")]:
        with pytest.raises(ValueError, match=needle):
            _run_cli(_cli_args(*argv, "--out", str(tmp_path / "out")))


def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("# eval prompts\n a red circle \n\na blue square\n")
    assert read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    (tmp_path / "p.json").write_text('["a red circle", "a blue square"]')
    assert read_prompts(tmp_path / "p.json") == ["a red circle", "a blue square"]


def test_cli_search_on_trained_shapes_model_gives_distinct_scores(tmp_path, capsys):
    from dit_attn.pipelines.shapes.bundled import has_weights

    if not has_weights("t2i"):
        pytest.skip("the bundled ShapesWorld t2i weights are not in this checkout")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(shapes_objective().default_prompts[:2]) + "\n")
    out = tmp_path / "heads"
    assert _run_cli(_cli_args("--model", "shapes:t2i", "--prompts", str(prompts), "--seeds", "0", "--top-k", "1",
                              "--candidates", "transformer_blocks.0:*; transformer_blocks.3:*",
                              "--out", str(out))) == 0
    data = json.loads((out / "heads.json").read_text())
    scores = data["scores"]
    assert len(scores) == 8 and len(set(scores.values())) >= 2  # real scores: the objective tells heads apart
    assert all(0.0 <= v <= 1.0 for v in scores.values()) and max(scores.values()) > 0
    best = max(scores, key=scores.get)
    assert data["selected"] == [[best]] and dit_attn.HeadSet.load(out / "heads.json") == dit_attn.HeadSet.parse(best)
    assert "round 1: 8 heads scored" in capsys.readouterr().out
