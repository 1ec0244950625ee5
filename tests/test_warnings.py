"""No warnings of our own making: a clean build, no deprecated calls, a quiet CLI."""

import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_builds_without_setuptools_warnings(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "Warning" not in text and "absent from the `packages`" not in text, text[-3000:]
    wheel = next(tmp_path.glob("dit_attn-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("dit_attn/pipelines/shapes/models/flux/adapters/") for n in names)
    assert any(n.endswith("transformer/diffusion_pytorch_model.safetensors") for n in names)


def test_loading_a_bundled_model_uses_no_deprecated_argument():
    from dit_attn.pipelines import load_shapes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_shapes("t2i")
    assert not [w for w in caught if "torch_dtype" in str(w.message)]


def test_cli_prints_only_its_own_messages(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dit_attn.cli", "generate", "a red circle", "--model", "tiny:chroma",
                          "--steps", "1", "--out", str(tmp_path / "x.png")], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("note: tiny:chroma has random weights"), out.stderr
