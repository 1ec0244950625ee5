"""Python started in the repository root (``python -m dit_attn...``, ``make demo``) has the root on sys.path, so
the top-level ``kernels/`` folder could shadow Hugging Face's ``kernels`` package that transformers imports."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_from_repository_root_keeps_hugging_face_kernels():
    pytest.importorskip("kernels", reason="Hugging Face `kernels` is a transformers dependency in our install")
    code = ("import kernels, dit_attn, dit_attn.kernels as ours; "
            "print(kernels.__file__); print(ours.merge_attention.__module__)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    hf_file, merge_module = run.stdout.split()
    assert not hf_file.startswith(os.path.join(ROOT, "kernels")), hf_file
    assert merge_module == "dit_attn.kernels.merge"
