"""The README's Python examples and `make demo`'s entry point run."""

import os
import re

import dit_attn.demo

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_demo_writes_grid(tmp_path):
    out = dit_attn.demo.main(["--out", str(tmp_path / "demo.png"), "--steps", "2"])
    assert os.path.getsize(out) > 0


def test_readme_python_blocks_run():
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
