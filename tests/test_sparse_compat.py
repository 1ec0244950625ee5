"""compat="reference" and first_frame="leading": the Rectified SpaAttn code's choices, against a float64 loop
reference written from their definitions (dit_attn.sparse.reference)."""

import pytest
import torch

import dit_attn
from dit_attn.sparse import make_layout, select_blocks, sparse_attention
from dit_attn.bench.sparse_density import forced_fractions
from dit_attn.sparse.gilbert import gilbert_order
from dit_attn.sparse.reference import gilbert_index, rectified_sparse_reference
from dit_attn.sparse.reorder import leading_blocks, token_plan

# grid, text tokens, text first, batch, family, sparsity, neighbours, first_frame. Block size 8: every grid has a
# partial last block; (3, 7, 5), (6, 3, 5) and (5, 4, 3) are not width-longest, so the width-major curve differs.
CASES = [
    ((3, 7, 5), 6, False, 2, "hunyuan_video", 0.75, True, None),
    ((6, 3, 5), 0, False, 1, "wan", 0.8, False, None),  # compat -> leading first-frame rule
    ((5, 4, 3), 0, False, 1, "wan", 0.7, False, True),
    ((1, 6, 9), 0, False, 2, "sd3", 0.6, False, None),
    ((2, 5, 7), 9, True, 2, "flux", 0.7, False, None),
    ((4, 3, 5), 20, True, 1, "cogvideox", 0.9, True, None),
]


def _case(seed, b, grid, n_text, text_first, h=2, d=16):
    g = torch.Generator().manual_seed(seed)
    nv = grid[0] * grid[1] * grid[2]
    n = nv + n_text
    q, k, v = (torch.randn(b, n, h, d, generator=g) for _ in range(3))
    # A few strong text keys so that the text entry lands among the top slots in some rows.
    if n_text:
        t0 = 0 if text_first else nv
        k[:, t0:t0 + 2] *= 4.0
    vis, text = ((n_text, n), (0, n_text) if n_text else None) if text_first else ((0, nv), (nv, n) if n_text else None)
    valid = torch.ones(b, n, dtype=torch.bool)
    if text is not None:
        valid[0, text[1] - max(1, (text[1] - text[0]) // 3):text[1]] = False
    return q, k, v, vis, text, valid


@pytest.mark.parametrize("grid", [(3, 5, 7), (3, 7, 5), (6, 3, 4), (5, 4, 4), (2, 8, 3), (1, 6, 9), (9, 2, 2)])
@pytest.mark.parametrize("major", ["width", "longest"])
def test_curve_equals_the_independent_index_formula(grid, major):
    t, h, w = grid
    order = gilbert_order(grid, major)
    pos = torch.empty_like(order)
    pos[order] = torch.arange(order.numel())
    assert [gilbert_index((a, b, c), grid, major) for a in range(t) for b in range(h) for c in range(w)] == pos.tolist()


def test_width_major_differs_only_off_landscape():
    for grid in [(21, 30, 52), (21, 45, 80), (3, 5, 7)]:  # width longest: the same curve
        assert torch.equal(gilbert_order(grid, "width"), gilbert_order(grid, "longest"))
    assert not torch.equal(gilbert_order((3, 7, 5), "width"), gilbert_order((3, 7, 5), "longest"))


@pytest.mark.parametrize("variant", ["full", "rc", "block"])
@pytest.mark.parametrize("grid, n_text, text_first, b, family, sparsity, neighbors, first_frame", CASES)
def test_reference_compat_equals_loop_reference(grid, n_text, text_first, b, family, sparsity, neighbors,
                                                first_frame, variant):
    bs = 8
    assert (grid[0] * grid[1] * grid[2]) % bs
    q, k, v, vis, text, valid = _case(sum(grid) * 7 + b, b, grid, n_text, text_first)
    mask = valid[:, None, None, :] if n_text else None
    layout = make_layout(q.shape[1], 2, 16, b, grid=grid, vis=vis, text=text, family=family)
    control = dit_attn.RectifiedSparse(sparsity=sparsity, block_size=bs, neighbors=neighbors, variant=variant,
                                       first_frame=first_frame, compat="reference", track_density=True)
    out = sparse_attention(control, q, k, v, layout, attn_mask=mask)
    rule = first_frame if first_frame is not None else ("leading" if family == "wan" else False)
    ref = rectified_sparse_reference(
        q, k, v, grid=grid, vis=vis, text=text, key_valid=valid if n_text else None, sparsity=sparsity,
        block_size=bs, neighbors=neighbors, first_frame=rule, variant=variant, compat="reference")
    assert float(control.density_log[0][2]) < 0.95  # not trivially dense
    assert (out.double() - ref).abs().max() < 1e-4
    if variant == "full":  # the default mode differs from the reference code's on these grids
        default = rectified_sparse_reference(
            q, k, v, grid=grid, vis=vis, text=text, key_valid=valid if n_text else None, sparsity=sparsity,
            block_size=bs, neighbors=neighbors, first_frame=rule, variant=variant)
        assert (default - ref).abs().max() > 1e-3


def test_default_mode_with_leading_rule_equals_loop_reference():
    q, k, v, vis, text, _ = _case(5, 1, (4, 5, 6), 0, False)
    layout = make_layout(q.shape[1], 2, 16, 1, grid=(4, 5, 6), vis=vis, family="wan")
    control = dit_attn.RectifiedSparse(sparsity=0.8, block_size=8, neighbors=False, first_frame="leading")
    out = sparse_attention(control, q, k, v, layout)
    ref = rectified_sparse_reference(q, k, v, grid=(4, 5, 6), vis=vis, sparsity=0.8, block_size=8, neighbors=False,
                                     first_frame="leading")
    assert (out.double() - ref).abs().max() < 1e-4


def test_text_takes_a_slot_only_in_reference_mode():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(16, generator=g)
    q, k, v = (torch.randn(1, 1, 64, 16, generator=g) for _ in range(3))
    q = q + u
    kt = 0.1 * torch.randn(1, 1, 4, 16, generator=g) + u  # text keys aligned with every query: text mass dominates
    kw = dict(block_size=8, tau=0.0, k_min=3, scale=0.25)
    ours = select_blocks(q, k, v, kt, None, None, **kw)
    ref = select_blocks(q, k, v, kt, None, None, text_slot=True, **kw)
    assert bool((ours.p_text > ours.p_vis.max(-1).values).all())
    assert (ours.critical.sum(-1) == 3).all() and (ref.critical.sum(-1) == 2).all()  # text took one of 3 slots
    assert (ref.block_count == 3).all()  # 2 visual + the text block


def test_zero_padded_pooling_of_a_partial_last_block():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 20, 8, generator=g) + 1.0 for _ in range(3))  # 20 = 2 full blocks of 8 + 4
    kw = dict(block_size=8, tau=0.3, k_min=1, scale=0.3, variant="rc")
    ours = select_blocks(q, k, v, None, None, None, **kw)
    ref = select_blocks(q, k, v, None, None, None, pool_padded=True, **kw)
    pad = torch.nn.functional.pad
    full = select_blocks(pad(q, (0, 0, 0, 4)), pad(k, (0, 0, 0, 4)), pad(v, (0, 0, 0, 4)), None, None, None, **kw)
    assert torch.allclose(ref.p_vis, full.p_vis) and torch.allclose(ref.rect_add, full.rect_add)
    # valid-count pooling: the last block's pooled key is the mean of its 4 tokens; zero padding halves it.
    assert not torch.allclose(ours.p_vis, ref.p_vis)


@pytest.mark.parametrize("grid", [(21, 30, 52), (21, 45, 80)])
def test_first_frame_rules_forced_fractions_at_wan_shapes(grid):
    """Wan 2.1 480p (832x480, 81 frames -> latent 21x60x104, patch 1x2x2) and 720p (1280x720 -> 21x90x160)."""
    true_rule = forced_fractions(grid, first_frame=True, neighbors=False)
    leading = forced_fractions(grid, first_frame="leading", neighbors=False)
    nvb = -(-(grid[0] * grid[1] * grid[2]) // 128)
    assert leading["first_frame_blocks"] == nvb // 21
    assert leading["first_frame"] == pytest.approx((nvb // 21 / nvb) ** 2)
    assert leading["first_frame"] == pytest.approx(0.0022, abs=1e-4)
    assert 0.05 < true_rule["first_frame"] < 0.065
    # the leading blocks are not frame 0 along the 3D curve: a corner column through every latent frame
    order = gilbert_order(grid)
    frames = (order[: leading["first_frame_blocks"] * 128] // (grid[1] * grid[2])).unique()
    assert frames.numel() == grid[0]
    nv = grid[0] * grid[1] * grid[2]
    assert torch.equal(token_plan(grid, (0, nv), None, nv, 128, "cpu").leading, leading_blocks(grid, 128))


def test_validation_of_new_fields():
    dit_attn.RectifiedSparse(first_frame="leading", compat="reference")
    for bad in ("yes", 1, "first"):
        with pytest.raises(ValueError, match="first_frame"):
            dit_attn.RectifiedSparse(first_frame=bad)
    with pytest.raises(ValueError, match="compat"):
        dit_attn.RectifiedSparse(compat="rsa")
