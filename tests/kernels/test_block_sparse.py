"""block_sparse_attention: Triton kernel (interpreter) and reference vs an fp64 computation from the definition."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dit_attn.kernels as K

IMPLS = ["triton", "reference"]


def run(impl, q, k, v, idx, cnt, **kw):
    """Run one implementation and return (out, lse). The Triton path writes into NaN-poisoned buffers."""
    if impl == "triton":
        B, H, Nq, D = q.shape
        out = torch.full((B, H, Nq, D), float("nan"), dtype=q.dtype)
        lse = torch.full((B, H, Nq), float("nan"), dtype=torch.float32)
        res = K.block_sparse_attention_triton(q, k, v, idx, cnt, out=out, lse=lse, return_lse=True, **kw)
        assert res[0] is out and res[1] is lse
        return res
    return K.block_sparse_attention_reference(q, k, v, idx, cnt, return_lse=True, **kw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [16, 32, 64, 128])
def test_full_lut_equals_dense(impl, dtype, D, gen, seed, kt):
    B, H, Nq, Nk, bsq, bsk = 2, 2, 70, 45, 32, 16
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen, dtype)
    idx, cnt = kt.full_lut(B, H, kt.cdiv(Nq, bsq), kt.cdiv(Nk, bsk))
    out, lse = run(impl, q, k, v, idx, cnt, block_size_q=bsq, block_size_k=bsk)
    ref_out, ref_lse = kt.oracle_attention(q, k, v)
    assert out.dtype == dtype and lse.dtype == torch.float32
    kt.assert_close(out, ref_out, dtype, seed)
    kt.assert_close(lse, ref_lse, dtype, seed, "lse", tol=kt.LSE_TOL)
    if dtype == torch.float32:  # and the same as torch's own SDPA
        sdpa = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        kt.assert_close(out, sdpa, dtype, seed, "out vs SDPA")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "Nq,Nk,bsq,bsk,dtype",
    [
        (1, 1, 16, 16, torch.float32),
        (1, 129, 32, 32, torch.bfloat16),
        (127, 129, 32, 16, torch.float16),
        (129, 127, 16, 32, torch.float32),
        (1000, 1000, 128, 128, torch.bfloat16),
    ],
)
def test_odd_lengths_random_lut(impl, Nq, Nk, bsq, bsk, dtype, gen, seed, kt):
    B, H, D = 2, 1, 32
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen, dtype)
    idx, cnt = kt.random_lut(B, H, kt.cdiv(Nq, bsq), kt.cdiv(Nk, bsk), gen, min_count=1)
    out, lse = run(impl, q, k, v, idx, cnt, block_size_q=bsq, block_size_k=bsk)
    mask = kt.token_mask_from_lut(idx, cnt, Nq, Nk, bsq, bsk, B, H)
    ref_out, ref_lse = kt.oracle_attention(q, k, v, mask)
    kt.assert_close(out, ref_out, dtype, seed)
    kt.assert_close(lse, ref_lse, dtype, seed, "lse", tol=kt.LSE_TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "bsq,bsk,lut_dtype",
    [(16, 32, torch.int32), (32, 16, torch.int32), (24, 40, torch.int64)],  # incl. non-powers of two
)
def test_random_lut_equals_block_masked_dense(impl, dtype, bsq, bsk, lut_dtype, gen, seed, kt):
    B, H, Nq, Nk, D = 2, 3, 77, 101, 32
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen, dtype)
    idx, cnt = kt.random_lut(B, H, kt.cdiv(Nq, bsq), kt.cdiv(Nk, bsk), gen)
    idx, cnt = idx.to(lut_dtype), cnt.to(lut_dtype)
    out, lse = run(impl, q, k, v, idx, cnt, block_size_q=bsq, block_size_k=bsk)
    mask = kt.token_mask_from_lut(idx, cnt, Nq, Nk, bsq, bsk, B, H)
    ref_out, ref_lse = kt.oracle_attention(q, k, v, mask)
    kt.assert_close(out, ref_out, dtype, seed)
    kt.assert_close(lse, ref_lse, dtype, seed, "lse", tol=kt.LSE_TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias_shape", ["k", "11k", "b1k", "bhk"])
def test_key_bias_equals_sdpa_additive_mask(impl, bias_shape, gen, seed, kt):
    B, H, Nq, Nk, D, bs = 2, 2, 50, 61, 64, 16
    dtype = torch.float32
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen, dtype)
    shape = {"k": (Nk,), "11k": (1, 1, Nk), "b1k": (B, 1, Nk), "bhk": (B, H, Nk)}[bias_shape]
    bias = torch.randn(*shape, generator=gen) * 2.0
    # Padding: mask ~30% of the keys with -inf (never all of them).
    pad = torch.rand(*shape, generator=gen) < 0.3
    pad[..., 0] = False
    bias = bias.masked_fill(pad, -math.inf)
    idx, cnt = kt.full_lut(B, H, kt.cdiv(Nq, bs), kt.cdiv(Nk, bs))
    scale = 0.1 + torch.rand((), generator=gen).item()
    out, lse = run(impl, q, k, v, idx, cnt, block_size_q=bs, block_size_k=bs, key_bias=bias, scale=scale)
    bias4 = bias.reshape(*([1] * (3 - bias.dim())), *bias.shape).unsqueeze(-2)  # [., ., 1, Nk]
    sdpa = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias4.double(), scale=scale)
    kt.assert_close(out, sdpa, dtype, seed, "out vs SDPA with additive mask")
    ref_out, ref_lse = kt.oracle_attention(q, k, v, bias=bias4, scale=scale)
    kt.assert_close(lse, ref_lse, dtype, seed, "lse", tol=kt.LSE_TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lse_and_bias_with_random_lut(impl, dtype, gen, seed, kt):
    B, H, Nq, Nk, D, bsq, bsk = 2, 2, 66, 90, 32, 32, 16
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen, dtype, spread=3.0)
    idx, cnt = kt.random_lut(B, H, kt.cdiv(Nq, bsq), kt.cdiv(Nk, bsk), gen)
    bias = torch.randn(B, 1, Nk, generator=gen).to(dtype)  # low-precision bias is accepted too
    out, lse = run(impl, q, k, v, idx, cnt, block_size_q=bsq, block_size_k=bsk, key_bias=bias)
    mask = kt.token_mask_from_lut(idx, cnt, Nq, Nk, bsq, bsk, B, H)
    ref_out, ref_lse = kt.oracle_attention(q, k, v, mask, bias=bias.unsqueeze(-2))
    kt.assert_close(lse, ref_lse, dtype, seed, "lse", tol=kt.LSE_TOL)
    kt.assert_close(out, ref_out, dtype, seed)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("broadcast", [False, True])
def test_epilogue_equals_R_out_plus_C(impl, dtype, broadcast, gen, seed, kt):
    B, H, Nq, Nk, D, bsq, bsk = 2, 2, 75, 64, 32, 32, 32
    nqb = kt.cdiv(Nq, bsq)
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen, dtype)
    idx, cnt = kt.random_lut(B, H, nqb, kt.cdiv(Nk, bsk), gen, min_count=1)
    if broadcast:
        R = 0.5 + torch.rand(1, H, nqb, generator=gen)
        C = torch.randn(B, 1, nqb, D, generator=gen)
    else:
        R = 0.5 + torch.rand(B, H, nqb, generator=gen)
        C = torch.randn(B, H, nqb, D, generator=gen)
    out, lse = run(impl, q, k, v, idx, cnt, block_size_q=bsq, block_size_k=bsk, rect_scale=R, rect_add=C)
    mask = kt.token_mask_from_lut(idx, cnt, Nq, Nk, bsq, bsk, B, H)
    rows = torch.arange(Nq) // bsq
    R_rows = R.expand(B, H, nqb)[:, :, rows]
    C_rows = C.expand(B, H, nqb, D)[:, :, rows]
    ref_out, ref_lse = kt.oracle_attention(q, k, v, mask, rect_rows=R_rows, add_rows=C_rows)
    kt.assert_close(out, ref_out, dtype, seed, "rectified output")
    # The LSE is that of the computed attention, independent of the epilogue.
    kt.assert_close(lse, ref_lse, dtype, seed, "lse", tol=kt.LSE_TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_empty_rows_give_zero_and_neg_inf(impl, dtype, gen, seed, kt):
    B, H, Nq, Nk, D, bs = 2, 2, 64, 48, 16, 16
    nqb, nkb = kt.cdiv(Nq, bs), kt.cdiv(Nk, bs)
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen, dtype)
    idx, cnt = kt.full_lut(B, H, nqb, nkb)
    cnt[:, :, 1] = 0  # query block 1 sees nothing
    cnt[0, 1, 3] = 0
    bias = torch.zeros(B, 1, Nk)
    bias[1] = -math.inf  # batch element 1: every key masked by the bias
    out, lse = run(impl, q, k, v, idx, cnt, block_size_q=bs, block_size_k=bs, key_bias=bias)
    empty = torch.zeros(B, H, Nq, dtype=torch.bool)
    empty[:, :, bs:2 * bs] = True
    empty[0, 1, 3 * bs:] = True
    empty[1] = True
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), f"NaN (seed={seed})"
    assert (out[empty] == 0).all(), f"empty rows not zero (seed={seed})"
    assert torch.isneginf(lse[empty]).all(), f"empty rows lse not -inf (seed={seed})"
    assert torch.isfinite(lse[~empty]).all(), f"non-empty rows lse not finite (seed={seed})"
    mask = kt.token_mask_from_lut(idx, cnt, Nq, Nk, bs, bs, B, H)
    ref_out, ref_lse = kt.oracle_attention(q, k, v, mask, bias=bias.unsqueeze(-2))
    kt.assert_close(out, ref_out, dtype, seed)
    kt.assert_close(lse, ref_lse, dtype, seed, "lse", tol=kt.LSE_TOL)
    # With the epilogue, empty rows hold exactly rect_add (rounded to the output dtype).
    R = torch.rand(B, H, nqb, generator=gen) + 0.5
    C = torch.randn(B, H, nqb, D, generator=gen)
    out2, _ = run(impl, q, k, v, idx, cnt, block_size_q=bs, block_size_k=bs, key_bias=bias, rect_scale=R, rect_add=C)
    C_rows = C[:, :, torch.arange(Nq) // bs]
    # Exact up to the final rounding to the output dtype (the Triton interpreter truncates fp32 -> bf16 where
    # the GPU rounds to nearest, so compare within the dtype tolerance rather than bit for bit).
    kt.assert_close(out2[empty], C_rows[empty], dtype, seed, "empty rows vs rect_add")


@pytest.mark.parametrize("impl", IMPLS)
def test_noncontiguous_inputs_and_broadcast_lut(impl, gen, seed, kt):
    """q/k/v as [B, N, H, D] views (diffusers layout), a LUT shared by all (b, h), strided poisoned out."""
    B, H, Nq, Nk, D, bs = 2, 3, 45, 45, 32, 16
    dtype = torch.float16
    q = (torch.randn(B, Nq, H, D, generator=gen) * 1.5).to(dtype).transpose(1, 2)
    k = torch.randn(B, Nk, H, D, generator=gen).to(dtype).transpose(1, 2)
    v = torch.randn(B, Nk, H, D, generator=gen).to(dtype).transpose(1, 2)
    nqb, nkb = kt.cdiv(Nq, bs), kt.cdiv(Nk, bs)
    idx, cnt = kt.random_lut(1, 1, nqb, nkb, gen, min_count=1)
    if impl == "triton":
        out_bnhd = torch.full((B, Nq, H, D), float("nan"), dtype=dtype)
        out = K.block_sparse_attention_triton(q, k, v, idx, cnt, block_size_q=bs, block_size_k=bs,
                                              out=out_bnhd.transpose(1, 2))
        assert out.data_ptr() == out_bnhd.data_ptr()
    else:
        out = K.block_sparse_attention_reference(q, k, v, idx, cnt, block_size_q=bs, block_size_k=bs)
    mask = kt.token_mask_from_lut(idx, cnt, Nq, Nk, bs, bs, B, H)
    ref_out, _ = kt.oracle_attention(q, k, v, mask)
    kt.assert_close(out, ref_out, dtype, seed)


def test_public_function_dispatch_cpu_reference_and_triton(gen, seed, kt, monkeypatch):
    B, H, N, D, bs = 1, 2, 40, 16, 16
    q, k, v = kt.qkv(B, H, N, N, D, gen)
    idx, cnt = kt.random_lut(B, H, 3, 3, gen)
    kw = dict(block_size_q=bs, block_size_k=bs)
    monkeypatch.delenv("DIT_ATTN_KERNEL_IMPL", raising=False)
    ref = K.block_sparse_attention_reference(q, k, v, idx, cnt, **kw)
    pub = K.block_sparse_attention(q, k, v, idx, cnt, **kw)
    assert torch.equal(pub, ref), f"CPU default must be the reference (seed={seed})"
    monkeypatch.setenv("DIT_ATTN_KERNEL_IMPL", "triton")
    tri, tri_lse = K.block_sparse_attention_triton(q, k, v, idx, cnt, return_lse=True, **kw)
    pub, pub_lse = K.block_sparse_attention(q, k, v, idx, cnt, return_lse=True, **kw)
    assert torch.equal(pub, tri) and torch.equal(pub_lse, tri_lse), f"triton dispatch (seed={seed})"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        K.block_sparse_attention(q, k, v, idx, cnt, **kw)
    monkeypatch.setenv("DIT_ATTN_KERNEL_IMPL", "bogus")
    with pytest.raises(ValueError, match="DIT_ATTN_KERNEL_IMPL"):
        K.block_sparse_attention(q, k, v, idx, cnt, **kw)


@pytest.mark.parametrize("impl", IMPLS)
def test_shape_errors(impl, gen, kt):
    fn = K.block_sparse_attention_triton if impl == "triton" else K.block_sparse_attention_reference
    q, k, v = kt.qkv(1, 1, 40, 40, 16, gen)
    idx, cnt = kt.full_lut(1, 1, 3, 3)
    with pytest.raises(ValueError, match="block_index"):
        fn(q, k, v, idx[:, :, :2], cnt, block_size_q=16, block_size_k=16)
    with pytest.raises(ValueError, match="block_count"):
        fn(q, k, v, idx, cnt[:, :, :2], block_size_q=16, block_size_k=16)
    with pytest.raises(ValueError):
        fn(q, k[:, :, :, :8], v, idx, cnt, block_size_q=16, block_size_k=16)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
@given(
    B=st.integers(1, 2), H=st.integers(1, 2), Nq=st.integers(1, 90), Nk=st.integers(1, 90),
    D=st.sampled_from([16, 32, 64]), bsq=st.sampled_from([16, 32, 20]), bsk=st.sampled_from([16, 32, 24]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), use_bias=st.booleans(),
    use_rect=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_property_triton_matches_fp64(kt, B, H, Nq, Nk, D, bsq, bsk, dtype, use_bias, use_rect, seed):
    # kt is a stateless helper namespace, so sharing the function-scoped fixture across examples is fine.
    assert_close, cdiv, oracle_attention, qkv = kt.assert_close, kt.cdiv, kt.oracle_attention, kt.qkv
    random_lut, token_mask_from_lut = kt.random_lut, kt.token_mask_from_lut
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(B, H, Nq, Nk, D, gen, dtype)
    nqb, nkb = cdiv(Nq, bsq), cdiv(Nk, bsk)
    idx, cnt = random_lut(B, H, nqb, nkb, gen)
    kw = dict(block_size_q=bsq, block_size_k=bsk)
    bias = R = C = None
    if use_bias:
        bias = torch.randn(1, H, Nk, generator=gen)
        kw["key_bias"] = bias
    if use_rect:
        R = torch.rand(B, H, nqb, generator=gen) + 0.5
        C = torch.randn(B, H, nqb, D, generator=gen)
        kw.update(rect_scale=R, rect_add=C)
    out, lse = run("triton", q, k, v, idx, cnt, **kw)
    mask = token_mask_from_lut(idx, cnt, Nq, Nk, bsq, bsk, B, H)
    rows = torch.arange(Nq) // bsq
    ref_out, ref_lse = oracle_attention(
        q, k, v, mask, bias=None if bias is None else bias.unsqueeze(-2),
        rect_rows=None if R is None else R[:, :, rows], add_rows=None if C is None else C[:, :, rows],
    )
    assert_close(out, ref_out, dtype, seed)
    assert_close(lse, ref_lse, dtype, seed, "lse", tol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("Nq,Nk", [(0, 10), (10, 0), (0, 0)])
def test_zero_lengths(impl, Nq, Nk, gen, kt):
    q, k, v = kt.qkv(1, 2, Nq, Nk, 16, gen)
    nqb, nkb = kt.cdiv(Nq, 16), kt.cdiv(Nk, 16)
    idx = torch.zeros(1, 2, nqb, max(nkb, 1), dtype=torch.int32)
    cnt = torch.full((1, 2, nqb), nkb, dtype=torch.int32)
    out, lse = run(impl, q, k, v, idx, cnt, block_size_q=16, block_size_k=16)
    assert out.shape == (1, 2, Nq, 16) and lse.shape == (1, 2, Nq)
    assert (out == 0).all() and torch.isneginf(lse).all()  # no key at all: zeros and -inf
