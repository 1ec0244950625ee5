"""The branch of execute() that CUDA tensors take (our kernels, not SDPA with a mask), run on CPU tensors with
DIT_ATTN_EXECUTE=kernels: key bias, row-restricted bias, extra key sets, and whole pipelines with controls."""

import os

import numpy as np
import pytest
import torch

import dit_attn
from dit_attn.call import AttentionCall, KeySet, execute
from dit_attn.layout import Layout
from dit_attn.testing import cpu_threads, tiny_call_kwargs, tiny_pipeline


def _layout(n_img, n_txt, b):
    segs = {"image": (0, n_img), "text": (n_img, n_img + n_txt)}
    return Layout(family="sd3", site=None, kind="joint", heads=2, head_dim=16, query_segments=segs,
                  key_segments=segs, batch_size=b)


def _dense(q, k, v, bias):
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5 + bias.double()
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double())


@pytest.fixture(params=["reference", "triton"])
def kernel_path(request, monkeypatch):
    """The kernel branch with the plain-PyTorch kernels and with the Triton kernels (under the interpreter, as
    `make test` runs: TRITON_INTERPRET=1)."""
    if request.param == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernels run on CPU only under TRITON_INTERPRET=1 (set by `make test`)")
    monkeypatch.setenv("DIT_ATTN_EXECUTE", "kernels")
    monkeypatch.setenv("DIT_ATTN_KERNEL_IMPL", request.param)


def test_key_bias_branch_equals_a_float64_reference(kernel_path):
    seed = int(torch.randint(0, 2**31 - 1, ()))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 40, 2, 16, generator=g) for _ in range(3))
    bias = torch.randn(2, 1, 40, generator=g)
    bias[:, :, 35:] = float("-inf")
    out = execute(AttentionCall(q, k, v, _layout(32, 8, 2), key_bias=bias))
    ref = _dense(q, k, v, bias[:, :, None, :])
    assert (out.double() - ref).abs().max() < 1e-5, f"seed {seed}"
    rows = AttentionCall(q, k, v, _layout(32, 8, 2), key_bias=bias, key_bias_rows=slice(0, 32))
    out = execute(rows)
    ref_rows = _dense(q[:, :32], k, v, bias[:, :, None, :])
    ref_text = _dense(q[:, 32:], k, v, torch.zeros(1, 1, 1, 40))
    assert (out[:, :32].double() - ref_rows).abs().max() < 1e-5 and (out[:, 32:].double() - ref_text).abs().max() < 1e-5


def test_extra_key_sets_merge_exactly(kernel_path):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    q, k, v = (torch.randn(1, 24, 2, 16, generator=g) for _ in range(3))
    call = AttentionCall(q, k[:, :16], v[:, :16], _layout(16, 8, 1), extra_keys=[KeySet(k[:, 16:], v[:, 16:])])
    assert (execute(call).double() - _dense(q, k, v, torch.zeros(1, 1, 1, 24))).abs().max() < 1e-5


@pytest.mark.parametrize("family, control", [
    ("flux", lambda: dit_attn.EntropyScale(train_tokens=32)),
    ("sd3", lambda: dit_attn.RectifiedSparse(sparsity=0.5, block_size=16)),
    ("chroma", lambda: dit_attn.RectifiedSparse(sparsity=0.0, block_size=16)),
])
def test_pipelines_through_the_kernel_branch_equal_the_sdpa_branch(family, control, monkeypatch):
    pipe = tiny_pipeline(family)
    kwargs = tiny_call_kwargs(family, steps=2)
    with cpu_threads(1):
        with dit_attn.attach(pipe, control()):
            sdpa = np.asarray(pipe(**kwargs).images)
        monkeypatch.setenv("DIT_ATTN_EXECUTE", "kernels")
        with dit_attn.attach(pipe, control()):
            kernels = np.asarray(pipe(**tiny_call_kwargs(family, steps=2)).images)
    assert np.abs(kernels - sdpa).max() < 1e-4


def test_emphasis_through_the_kernel_branch_on_a_per_query_mask_family(monkeypatch):
    """Chroma passes a [B, 1, N, N] mask: the kernel branch hands such calls to SDPA (it used to raise)."""
    pipe = tiny_pipeline("chroma")
    kwargs = tiny_call_kwargs("chroma", steps=2)
    kwargs["prompt"] = "a (red:2) circle above a blue square"
    with cpu_threads(1):
        with dit_attn.attach(pipe, dit_attn.Emphasis()):
            sdpa = np.asarray(pipe(**kwargs).images)
        monkeypatch.setenv("DIT_ATTN_EXECUTE", "kernels")
        kwargs = tiny_call_kwargs("chroma", steps=2)
        kwargs["prompt"] = "a (red:2) circle above a blue square"
        with dit_attn.attach(pipe, dit_attn.Emphasis()):
            kernels = np.asarray(pipe(**kwargs).images)
    assert np.abs(kernels - sdpa).max() < 1e-5
