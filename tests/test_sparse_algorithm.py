"""Rectified sparse attention: full density = dense, library = loop reference, rectification helps, compile."""

import math

import pytest
import torch

import dit_attn
from dit_attn.kernels import lut_to_block_mask
from dit_attn.sparse import make_layout, mask_to_lut, select_blocks, sparse_attention
from dit_attn.sparse.rectify import gapr_untrusted
from dit_attn.sparse.reference import rectified_sparse_reference


def _seed():
    return int(torch.randint(0, 2**31 - 1, ()))


def _dense(q, k, v, key_valid=None):
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double())


def _case(g, b, grid, n_text, text_first, h=2, d=16):
    nv = grid[0] * grid[1] * grid[2]
    n = nv + n_text
    q, k, v = (torch.randn(b, n, h, d, generator=g) for _ in range(3))
    if text_first:
        vis, text = (n_text, n), ((0, n_text) if n_text else None)
    else:
        vis, text = (0, nv), ((nv, n) if n_text else None)
    return q, k, v, vis, text


def _padding_mask(b, n, text):
    """HunyuanVideo-style key mask: the last text tokens of batch row 0 are padding."""
    valid = torch.ones(b, n, dtype=torch.bool)
    if text is not None:
        valid[0, text[1] - max(1, (text[1] - text[0]) // 3):text[1]] = False
    return valid, valid[:, None, None, :]


@pytest.mark.parametrize("grid, n_text, text_first", [((3, 5, 7), 6, False), ((1, 6, 8), 0, False),
                                                      ((2, 4, 6), 9, True)])
def test_full_density_is_dense_with_identity_rectification(grid, n_text, text_first):
    g = torch.Generator().manual_seed(_seed())
    q, k, v, vis, text = _case(g, 2, grid, n_text, text_first)
    valid, mask = _padding_mask(2, q.shape[1], text)
    layout = make_layout(q.shape[1], 2, 16, 2, grid=grid, vis=vis, text=text, family="hunyuan_video")
    control = dit_attn.RectifiedSparse(sparsity=0.0, block_size=16, neighbors=False)
    call = control.prepare(dit_attn.AttentionCall(q, k, v, layout, attn_mask=mask if n_text else None))
    nvb = -(-(vis[1] - vis[0]) // 16)
    assert (call.sparse.block_count == call.sparse.block_index.shape[-1]).all()  # every block listed
    assert call.sparse.block_index.shape[-1] == nvb + -(-n_text // 16)
    assert (call.sparse.rect_scale - 1).abs().max() < 1e-5
    assert call.sparse.rect_add.abs().max() < 1e-6
    out = dit_attn.execute(call)
    assert (out.double() - _dense(q, k, v, valid if n_text else None)).abs().max() < 1e-5


CASES = [  # grid, text tokens, text first, batch, family (wan -> first-frame rule), sparsity, neighbours
    ((3, 5, 7), 6, False, 2, "hunyuan_video", 0.75, True),
    ((3, 5, 7), 0, False, 1, "wan", 0.8, False),
    ((1, 6, 9), 0, False, 2, "sd3", 0.6, False),
    ((2, 4, 6), 9, True, 2, "flux", 0.7, False),
    ((4, 3, 5), 20, True, 1, "cogvideox", 0.9, True),
]


@pytest.mark.parametrize("variant", ["full", "rc", "r", "block"])
@pytest.mark.parametrize("grid, n_text, text_first, b, family, sparsity, neighbors", CASES)
def test_library_equals_loop_reference(grid, n_text, text_first, b, family, sparsity, neighbors, variant):
    g = torch.Generator().manual_seed(_seed())
    bs = 8
    q, k, v, vis, text = _case(g, b, grid, n_text, text_first)
    valid, mask = _padding_mask(b, q.shape[1], text)
    layout = make_layout(q.shape[1], 2, 16, b, grid=grid, vis=vis, text=text, family=family)
    control = dit_attn.RectifiedSparse(sparsity=sparsity, block_size=bs, neighbors=neighbors, variant=variant,
                                       track_density=True)
    out = sparse_attention(control, q, k, v, layout, attn_mask=mask if n_text else None)
    ref = rectified_sparse_reference(
        q, k, v, grid=grid, vis=vis, text=text, key_valid=valid if n_text else None, sparsity=sparsity,
        block_size=bs, neighbors=neighbors, first_frame=family == "wan", variant=variant)
    assert float(control.density_log[0][2]) < 0.95  # the test is not trivially dense
    assert (out.double() - ref).abs().max() < 1e-4


def _structured(seed, grid=(4, 8, 8), h=2, d=32, locality=1.5):
    """Locality-biased q/k (shared smooth positional features + noise) and values with a smooth part and an offset."""
    g = torch.Generator().manual_seed(seed)
    t, hh, w = grid
    n = t * hh * w
    pos = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(hh), torch.arange(w), indexing="ij"), -1)
    phase = pos.reshape(n, 3).float() @ (torch.randn(d // 2, 3, generator=g) * 0.6).T
    feat = torch.cat([phase.cos(), phase.sin()], -1)[None, :, None]
    q = locality * feat + 0.5 * torch.randn(1, n, h, d, generator=g)
    k = locality * feat + 0.5 * torch.randn(1, n, h, d, generator=g)
    v = 0.3 * feat @ torch.randn(d, d, generator=g) + torch.randn(1, n, h, d, generator=g) + 1.0
    return q, k, v


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rectification_beats_plain_block_sparse_at_equal_density(seed):
    q, k, v = _structured(seed)
    layout = make_layout(q.shape[1], 2, 32, 1, grid=(4, 8, 8), vis=(0, 256))
    ref = _dense(q, k, v)
    err, dens = {}, {}
    for variant in ("block", "rc", "full"):
        c = dit_attn.RectifiedSparse(sparsity=0.75, block_size=16, neighbors=False, variant=variant, track_density=True)
        out = sparse_attention(c, q, k, v, layout).double()
        err[variant] = float((out - ref).norm() / ref.norm())
        dens[variant] = float(c.density_log[0][2])
    assert dens["block"] == dens["rc"] == dens["full"] < 0.5
    assert err["full"] < err["block"] and err["rc"] < err["block"], err


def test_gapr_rule():
    g = torch.Generator().manual_seed(_seed())
    qm, km, qd, kd = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(4))
    qd, kd = qd.abs(), kd.abs()
    u = gapr_untrusted(qm, km, qd, kd)
    for i in range(5):
        for j in range(5):
            gain = abs(float(qm[1, 0, i] @ km[1, 0, j]))
            err = abs(float(qd[1, 0, i] @ km[1, 0, j])) + abs(float(qm[1, 0, i] @ kd[1, 0, j]))
            assert bool(u[1, 0, i, j]) == (not gain > err)


def test_lut_round_trips_through_kernel_mask():
    mask = torch.rand(2, 3, 6, 11, generator=torch.Generator().manual_seed(_seed())) > 0.6
    index, count = mask_to_lut(mask)
    assert index.dtype == count.dtype == torch.int32
    assert torch.equal(lut_to_block_mask(index, count, 11), mask)
    assert torch.equal(index.sort(-1).values, torch.arange(11, dtype=torch.int32).expand_as(index))


def test_selection_rules_tau_kmin_text():
    g = torch.Generator().manual_seed(_seed())
    q, k, v = (torch.randn(1, 1, 64, 16, generator=g) for _ in range(3))
    kt = torch.randn(1, 1, 5, 16, generator=g)
    tb = torch.tensor([0.0, 0.0, 0.0, float("-inf"), float("-inf")]).view(1, 1, 5)
    sel = select_blocks(q, k, v, kt, tb, None, block_size=8, tau=0.0, k_min=3, scale=0.25)
    # tau = 0 -> one block by the +1 rule, raised to k_min = 3 visual blocks; text block always listed.
    assert (sel.critical.sum(-1) == 3).all() and (sel.block_count == 4).all()
    assert (sel.block_index[..., 3] == 8).all()
    top3 = sel.p_vis.topk(3, -1).indices.sort(-1).values
    assert torch.equal(sel.critical.nonzero()[:, -1].view(1, 1, 8, 3), top3)
    assert torch.allclose(sel.p_vis.sum(-1) + sel.p_text, torch.ones(1, 1, 8))
    # Padded text keys carry no mass: the same estimate as with only the 3 valid keys.
    sel3 = select_blocks(q, k, v, kt[:, :, :3], None, None, block_size=8, tau=0.0, k_min=3, scale=0.25)
    assert torch.allclose(sel.p_text, sel3.p_text) and torch.allclose(sel.p_vis, sel3.p_vis)
    big = select_blocks(q, k, v, None, None, None, block_size=8, tau=1.0, k_min=1, scale=0.25)
    assert (big.block_count == 8).all()  # tau = 1 keeps everything


def test_selection_compiles_fullgraph():
    g = torch.Generator().manual_seed(_seed())
    q, k, v = (torch.randn(2, 2, 50, 16, generator=g) for _ in range(3))
    kt = torch.randn(2, 2, 7, 16, generator=g)
    forced = torch.eye(7, dtype=torch.bool)

    def fn(q, k, v, kt):
        return select_blocks(q, k, v, kt, None, forced, block_size=8, tau=0.3, k_min=2, scale=0.25)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, b = fn(q, k, v, kt), compiled(q, k, v, kt)
    assert torch.equal(a.block_index, b.block_index) and torch.equal(a.block_count, b.block_count)
    assert torch.allclose(a.rect_scale, b.rect_scale) and torch.allclose(a.rect_add, b.rect_add)


def test_triton_kernels_under_interpreter(monkeypatch):
    pytest.importorskip("triton")
    if __import__("os").environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)")
    g = torch.Generator().manual_seed(_seed())
    q, k, v, vis, text = _case(g, 1, (2, 3, 5), 4, False)
    valid, mask = _padding_mask(1, q.shape[1], text)
    layout = make_layout(q.shape[1], 2, 16, 1, grid=(2, 3, 5), vis=vis, text=text)
    control = dit_attn.RectifiedSparse(sparsity=0.6, block_size=16, neighbors=False)
    ref_out = sparse_attention(control, q, k, v, layout, attn_mask=mask)
    monkeypatch.setenv("DIT_ATTN_KERNEL_IMPL", "triton")
    tri_out = sparse_attention(control, q, k, v, layout, attn_mask=mask)
    assert (tri_out - ref_out).abs().max() < 1e-4
