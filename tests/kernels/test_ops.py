"""torch.library registration: opcheck and torch.compile(fullgraph=True) on CPU."""

import pytest
import torch

import dit_attn.kernels as K


def _inputs(gen, dtype=torch.float32, B=2, H=2, Nq=40, Nk=50, D=16, bs=16, opts=True):
    q = torch.randn(B, H, Nq, D, generator=gen).to(dtype)
    k = torch.randn(B, H, Nk, D, generator=gen).to(dtype)
    v = torch.randn(B, H, Nk, D, generator=gen).to(dtype)
    nqb, nkb = -(-Nq // bs), -(-Nk // bs)
    idx = torch.argsort(torch.rand(B, H, nqb, nkb, generator=gen), -1).to(torch.int32)
    cnt = torch.randint(0, nkb + 1, (B, H, nqb), generator=gen, dtype=torch.int32)
    bias = torch.randn(1, 1, Nk, generator=gen) if opts else None
    R = torch.rand(B, H, nqb, generator=gen) + 0.5 if opts else None
    C = torch.randn(B, H, nqb, D, generator=gen) if opts else None
    return (q, k, v, idx, cnt, bs, bs, bias, 0.3 if opts else None, R, C)


@pytest.mark.parametrize("opts", [False, True])
def test_opcheck_block_sparse_attention(opts, gen, monkeypatch):
    monkeypatch.delenv("DIT_ATTN_KERNEL_IMPL", raising=False)
    torch.library.opcheck(torch.ops.dit_attn.block_sparse_attention.default, _inputs(gen, opts=opts))


def test_opcheck_block_sparse_attention_triton_interpreter(gen, monkeypatch):
    monkeypatch.setenv("DIT_ATTN_KERNEL_IMPL", "triton")
    torch.library.opcheck(torch.ops.dit_attn.block_sparse_attention.default,
                          _inputs(gen, dtype=torch.float16, Nq=20, Nk=30))


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_opcheck_block_stats(impl, gen, monkeypatch):
    monkeypatch.setenv("DIT_ATTN_KERNEL_IMPL", impl)
    q = torch.randn(2, 2, 40, 16, generator=gen)
    k = torch.randn(2, 2, 33, 16, generator=gen)
    torch.library.opcheck(torch.ops.dit_attn.block_stats.default, (q, k, k.clone(), 16))


def _pipeline(q, k, v, idx, cnt, bias, R, C):
    """A small prediction + sparse attention + merge pipeline, all through the public functions."""
    st = K.block_stats(q, k, v, block_size=16)
    half = k.shape[2] // 2
    bias_a = bias.clone()
    bias_a[..., half:] = float("-inf")
    bias_b = bias.clone()
    bias_b[..., :half] = float("-inf")
    oa, la = K.block_sparse_attention(q, k, v, idx, cnt, block_size_q=16, block_size_k=16, key_bias=bias_a,
                                      return_lse=True)
    ob, lb = K.block_sparse_attention(q, k, v, idx, cnt, block_size_q=16, block_size_k=16, key_bias=bias_b,
                                      return_lse=True)
    out, lse = K.merge_attention(oa, la, ob, lb)
    rect = K.block_sparse_attention(q, k, v, idx, cnt, block_size_q=16, block_size_k=16, key_bias=bias,
                                    rect_scale=R, rect_add=C)
    return out, lse, rect, st.q_mean, st.k_mad


def test_torch_compile_fullgraph_cpu(gen, seed, monkeypatch):
    # Inductor on CPU (gcc is available here; the first compile takes some seconds on 2 cores). Everything in
    # the graph is either an opaque custom op with a fake implementation or plain torch.
    monkeypatch.delenv("DIT_ATTN_KERNEL_IMPL", raising=False)
    q, k, v, idx, cnt, _, _, bias, _, R, C = _inputs(gen)
    torch._dynamo.reset()
    compiled = torch.compile(_pipeline, fullgraph=True)
    got = compiled(q, k, v, idx, cnt, bias, R, C)
    exp = _pipeline(q, k, v, idx, cnt, bias, R, C)
    for g, e in zip(got, exp):
        assert g.shape == e.shape and g.dtype == e.dtype
        fin = torch.isfinite(e)
        assert torch.equal(fin, torch.isfinite(g)), f"seed={seed}"
        assert torch.allclose(g[fin], e[fin], atol=1e-5, rtol=1e-5), f"seed={seed}"
    # A second call with new values reuses the graph (no recompilation needed for the same shapes).
    q2 = torch.randn(q.shape, generator=gen)
    got2 = compiled(q2, k, v, idx, cnt, bias, R, C)
    exp2 = _pipeline(q2, k, v, idx, cnt, bias, R, C)
    assert torch.allclose(got2[2], exp2[2], atol=1e-5)


def test_docstring_examples_run(monkeypatch):
    import doctest

    from dit_attn.kernels import merge, ops, reference

    monkeypatch.delenv("DIT_ATTN_KERNEL_IMPL", raising=False)
    for mod in (ops, reference, merge):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0 and res.attempted > 0, (mod.__name__, res)
