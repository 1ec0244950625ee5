"""The emphasis-effect measurement script: prompt rewriting, one run on a tiny model, the doc block (rewritten only
with --write-docs)."""

import json

import pytest

from dit_attn.bench import reweighting as bench_reweighting
from dit_attn.prompt import parse_emphasis
from dit_attn.testing import cpu_threads


def test_weighted_prompt_wraps_the_first_colour():
    caption, scene = bench_reweighting.two_object_prompts(1)[0]
    prompt = bench_reweighting.weighted_prompt(caption, scene, 2.5)
    parsed = parse_emphasis(prompt)
    assert parsed.text == caption
    (span,) = parsed.spans
    assert caption[span.start:span.end] == scene.objects[0].colour and span.weight == 2.5


def test_run_on_tiny_model_and_doc_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n<!-- results -->\nold\n<!-- /results -->\n\nafter\n")
    with cpu_threads(1):
        data = bench_reweighting.main(["--model", "tiny:sd3", "--n", "2", "--seeds", "1", "--weights", "0.5,1",
                                       "--out", str(tmp_path / "out"), "--write-docs", "--doc", str(doc)])
    saved = json.loads((tmp_path / "out" / "reweighting.json").read_text())
    assert saved["cells"].keys() == data["cells"].keys() and len(data["cells"]) == 6
    # At w = 1 no mode changes anything, so every mode scores the same images.
    at_one = {data["cells"][f"{m}@1"]["target_colour"] for m in bench_reweighting.MODES}
    assert len(at_one) == 1
    text = doc.read_text()
    assert "old" not in text and "| attention |" in text and text.endswith("after\n")
    assert (tmp_path / "out" / "reweighting.png").stat().st_size > 1000


def test_docs_change_only_with_write_docs(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- results -->\nold\n<!-- /results -->\n")
    with cpu_threads(1):
        bench_reweighting.main(["--model", "tiny:sd3", "--n", "1", "--seeds", "1", "--weights", "1",
                                "--out", str(tmp_path / "out"), "--doc", str(doc)])
    assert doc.read_text() == "<!-- results -->\nold\n<!-- /results -->\n"


def test_negative_weight_refused():
    with pytest.raises(SystemExit):
        bench_reweighting.main(["--weights", "-1"])


# slow tier: the experiment on the trained model; tests/test_head_guidance.py covers SoftPAG itself
@pytest.mark.slow
def test_guidance_effect_script_on_the_trained_model(tmp_path):
    """(On a random-weight model the evaluator scores every head 0 and the search refuses it: trained model.)"""
    from dit_attn.bench import guidance_effect as bench_guidance_effect

    doc = tmp_path / "doc.md"
    with cpu_threads(1):
        data = bench_guidance_effect.main(["--model", "shapes:t2i", "--n", "2", "--seeds", "1", "--top-k", "1",
                                           "--search-prompts", "1", "--out", str(tmp_path / "out"),
                                           "--write-docs", "--doc", str(doc)])
    assert [r["config"].split(" ")[0] for r in data["rows"]] == ["CFG"] * 4
    assert all(0 <= r["object_accuracy"] <= 1 for r in data["rows"])
    assert dit_attn_heads_parse(data["heads"])
    assert "| configuration |" in doc.read_text()
    assert (tmp_path / "out" / "search" / "heads.json").exists()


def dit_attn_heads_parse(spec):
    import dit_attn

    return len(dit_attn.HeadSet.parse(spec)) == 1
