"""merge_attention: exact merge of attention over disjoint key sets."""

import math

import pytest
import torch

import dit_attn.kernels as K

IMPLS = ["triton", "reference"]


def attn(impl, *args, **kw):
    fn = K.block_sparse_attention_triton if impl == "triton" else K.block_sparse_attention_reference
    return fn(*args, return_lse=True, **kw)


def split_lut(idx, cnt, gen):
    """Split every row's valid LUT entries into two disjoint LUTs (random split point, may be empty)."""
    frac = torch.rand(cnt.shape, generator=gen)
    cnt_a = (cnt.float() * frac).floor().to(cnt.dtype)
    cnt_b = cnt - cnt_a
    pos = torch.arange(idx.shape[-1])
    # b's entries are a's tail shifted to the front.
    gather = (pos + cnt_a.unsqueeze(-1).long()).clamp(max=idx.shape[-1] - 1)
    idx_b = torch.gather(idx, -1, gather)
    return (idx, cnt_a), (idx_b, cnt_b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_merge_of_two_lut_halves_equals_union(impl, dtype, gen, seed, kt):
    B, H, Nq, Nk, D, bsq, bsk = 2, 2, 70, 130, 32, 32, 16
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen, dtype)
    idx, cnt = kt.random_lut(B, H, kt.cdiv(Nq, bsq), kt.cdiv(Nk, bsk), gen, extra=0)
    (ia, ca), (ib, cb) = split_lut(idx, cnt, gen)
    kw = dict(block_size_q=bsq, block_size_k=bsk)
    oa, la = attn(impl, q, k, v, ia, ca, **kw)
    ob, lb = attn(impl, q, k, v, ib, cb, **kw)
    # Merge in fp32 (keep the halves' outputs in fp32 so that the merge adds no rounding of its own).
    out, lse = K.merge_attention(oa.float(), la, ob.float(), lb)
    mask = kt.token_mask_from_lut(idx, cnt, Nq, Nk, bsq, bsk, B, H)
    ref_out, ref_lse = kt.oracle_attention(q, k, v, mask)
    kt.assert_close(out, ref_out, dtype, seed, "merged output")
    kt.assert_close(lse, ref_lse, dtype, seed, "merged lse", tol=kt.LSE_TOL)
    # Rectification after the merge equals the fused epilogue on the union.
    nqb = kt.cdiv(Nq, bsq)
    R = torch.rand(B, H, nqb, generator=gen) + 0.5
    C = torch.randn(B, H, nqb, D, generator=gen)
    fused, _ = attn(impl, q, k, v, idx, cnt, rect_scale=R, rect_add=C, **kw)
    rows = torch.arange(Nq) // bsq
    after = out * R[:, :, rows].unsqueeze(-1) + C[:, :, rows]
    kt.assert_close(fused, after, dtype, seed, "fused epilogue vs merge-then-rectify")


@pytest.mark.parametrize("impl", IMPLS)
def test_merge_of_key_halves_via_bias(impl, gen, seed, kt):
    """Text/visual-style split: the same full LUT, the two key sets separated by -inf key biases."""
    B, H, Nq, Nk, D, bs = 2, 2, 48, 80, 64, 16
    q, k, v = kt.qkv(B, H, Nq, Nk, D, gen)
    idx, cnt = kt.full_lut(B, H, kt.cdiv(Nq, bs), kt.cdiv(Nk, bs))
    side = torch.rand(Nk, generator=gen) < 0.5
    bias_a = torch.zeros(Nk).masked_fill(side, -math.inf)
    bias_b = torch.zeros(Nk).masked_fill(~side, -math.inf)
    kw = dict(block_size_q=bs, block_size_k=bs)
    oa, la = attn(impl, q, k, v, idx, cnt, key_bias=bias_a, **kw)
    ob, lb = attn(impl, q, k, v, idx, cnt, key_bias=bias_b, **kw)
    out, lse = K.merge_attention(oa, la, ob, lb)
    ref_out, ref_lse = kt.oracle_attention(q, k, v)
    kt.assert_close(out, ref_out, torch.float32, seed)
    kt.assert_close(lse, ref_lse, torch.float32, seed, "lse", tol=kt.LSE_TOL)


def test_merge_edge_cases_and_reference(gen, seed):
    N, D = 64, 16
    oa, ob = torch.randn(2, 3, N, D, generator=gen), torch.randn(2, 3, N, D, generator=gen)
    la, lb = torch.randn(2, 3, N, generator=gen) * 5, torch.randn(2, 3, N, generator=gen) * 5
    la[:, :, :8] = -math.inf  # a empty
    lb[:, :, 4:12] = -math.inf  # b empty (4..7: both empty)
    oa[:, :, :8] = float("nan")  # garbage in an empty side must not leak
    out, lse = K.merge_attention(oa, la, ob, lb)
    ref_out, ref_lse = K.merge_attention_reference(oa, la, ob, lb)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), f"NaN (seed={seed})"
    assert (out[:, :, 4:8] == 0).all() and torch.isneginf(lse[:, :, 4:8]).all()
    assert torch.equal(out[:, :, :4], ob[:, :, :4]) and torch.equal(lse[:, :, :4], lb[:, :, :4])
    assert torch.allclose(out[:, :, 8:12], oa[:, :, 8:12], atol=1e-6)
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=1e-5), f"seed={seed}"
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse)) and torch.allclose(lse[fin], ref_lse[fin], atol=1e-5)
    # fp64 check of the formula on the finite rows
    w = torch.softmax(torch.stack([la, lb]).double(), 0)
    exp = (w[0].unsqueeze(-1) * oa.double().nan_to_num() + w[1].unsqueeze(-1) * ob.double())
    rows = fin.clone()
    assert torch.allclose(out.double()[rows], exp[rows], atol=1e-5), f"seed={seed}"
    # Low-precision outputs keep their dtype; the lse is fp32.
    o16, l16 = K.merge_attention(oa.half(), la, ob.half(), lb)
    assert o16.dtype == torch.float16 and l16.dtype == torch.float32 and not torch.isnan(o16).any()
    with pytest.raises(ValueError):
        K.merge_attention(oa, la, ob[..., :8], lb)
