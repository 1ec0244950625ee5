"""The README's Python examples and `make demo`'s entry point run."""

import os
import re

import dit_attn.demo

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_demo_shows_every_control_doing_what_it_claims(tmp_path, capsys):
    """`make demo` at its default settings: every panel differs visibly from its stock picture (the documented
    threshold), except the sparse one, which must stay the same picture (PSNR threshold); the figure is written
    and each panel is described on stdout."""
    from PIL import Image

    out = dit_attn.demo.main(["--out", str(tmp_path / "demo.png")])
    printed = capsys.readouterr().out
    panels = dit_attn.demo.LAST_PANELS
    titles = [p.title for p in panels]
    assert titles == ["Prompt emphasis (attention logits)", "SoftPAG vs CFG", "Rectified sparse attention",
                      "Multi-condition attention (PKA)", "Text-to-video (t2v model)"]
    for panel in panels:
        assert panel.title in printed
        if panel.title.startswith("Rectified sparse"):
            assert panel.metrics["psnr_db"] >= dit_attn.demo.MIN_SPARSE_PSNR
            assert panel.metrics["density"] < 0.8
        elif "mean_abs_diff" in panel.metrics:
            assert panel.metrics["mean_abs_diff"] >= dit_attn.demo.MIN_DIFFERENCE, panel.title
    emphasis = panels[0].pictures
    assert "square" not in emphasis[0][0].split("->")[1] and "blue square" in emphasis[1][0].split("->")[1]
    assert panels[3].metrics["edge_f1"] > panels[3].metrics["edge_f1_stock"] + 0.1
    assert panels[4].metrics["direction"] == "right"
    assert Image.open(out).size[0] > 600


def test_readme_python_blocks_run():
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
