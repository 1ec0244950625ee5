"""track_density: achieved density per layer next to the requested one, split into forced and selected blocks,
kept as device tensors (no host read in the call) and read at report time."""

import pytest
import torch

import dit_attn
from dit_attn.kernels import lut_to_block_mask
from dit_attn.sparse import make_layout, select_blocks, sparse_attention
from dit_attn.bench.sparse_density import forced_fractions, shape_density
from dit_attn.sparse.density import density_report, density_table
from dit_attn.sparse.reorder import token_plan
from dit_attn.sparse.selection import DENSITY_PARTS, density_breakdown
from dit_attn.testing import cpu_threads, tiny_call_kwargs, tiny_pipeline


def _qkv(seed, n, b=1, h=2, d=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, h, d, generator=g) for _ in range(3))


@pytest.mark.parametrize("kw", [
    dict(neighbors=True, first_frame=False), dict(neighbors=False), dict(neighbors=True, first_frame=True),
    dict(neighbors=False, first_frame="leading"), dict(neighbors=True, compat="reference"),
])
def test_breakdown_sums_to_density_and_matches_a_brute_force_count(kw):
    grid, n_text, bs = (4, 6, 8), 12, 8
    nv = grid[0] * grid[1] * grid[2]
    q, k, v = _qkv(3, nv + n_text, b=2)
    layout = make_layout(nv + n_text, 2, 16, 2, grid=grid, vis=(0, nv), text=(nv, nv + n_text), family="wan")
    c = dit_attn.RectifiedSparse(sparsity=0.7, block_size=bs, track_density=True, **kw)
    call = c.prepare(dit_attn.AttentionCall(q, k, v, layout))
    rec = c.density_details[0]
    assert isinstance(rec.parts, torch.Tensor) and rec.parts.shape == (len(DENSITY_PARTS),)
    assert float(rec.parts.sum()) == pytest.approx(float(c.density_log[0][2]), abs=1e-6)
    nvb, ntb = rec.n_vblocks, rec.n_tblocks
    parts = dict(zip(DENSITY_PARTS, rec.parts.tolist()))
    assert parts["text"] == pytest.approx(ntb / (nvb + ntb))
    plan = token_plan(grid, (0, nv), (nv, nv + n_text), nv + n_text, bs, "cpu",
                      curve="width" if kw.get("compat") else "longest")
    nb = plan.neighbors.sum(-1).float().mean() / (nvb + ntb) if kw["neighbors"] else 0.0
    assert parts["neighbors"] == pytest.approx(float(nb))
    if kw.get("first_frame") is False:
        assert parts["first_frame"] == 0.0
    elif not kw["neighbors"]:  # Wan: first-frame pairs (True by default, "leading" under compat="reference")
        assert parts["first_frame"] > 0.0
    # selected (tau + k_min) = computed visual blocks that no forced table holds
    mask = lut_to_block_mask(call.sparse.block_index, call.sparse.block_count, nvb + ntb)
    forced = plan.neighbors.clone() if kw["neighbors"] else torch.zeros(nvb, nvb, dtype=torch.bool)
    rule = kw.get("first_frame", "leading" if kw.get("compat") else True)
    if rule:
        ff = plan.leading if rule == "leading" else plan.first_frame
        forced |= ff[:, None] & ff[None, :]
    free = (mask[..., :nvb] & ~forced).sum(-1).float().mean() / (nvb + ntb)
    assert parts["tau"] + parts["k_min"] == pytest.approx(float(free), abs=1e-6)


def test_k_min_part_when_tau_ranks_one_block():
    q, k, v = (x.transpose(1, 2) for x in _qkv(0, 96))
    sel = select_blocks(q, k, v, None, None, None, block_size=8, tau=0.0, k_min=5, scale=0.25)
    parts = dict(zip(DENSITY_PARTS, density_breakdown(sel, None, None, 0).tolist()))
    assert parts["tau"] == pytest.approx(1 / 12) and parts["k_min"] == pytest.approx(4 / 12)


def test_breakdown_is_tensor_code_that_compiles_fullgraph():
    q, k, v = (x.transpose(1, 2) for x in _qkv(1, 80))
    forced = torch.eye(10, dtype=torch.bool)

    def fn(q, k, v):
        sel = select_blocks(q, k, v, None, None, forced, block_size=8, tau=0.3, k_min=2, scale=0.25)
        return density_breakdown(sel, forced, None, 0)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")  # a host read would break the graph
    assert torch.allclose(fn(q, k, v), compiled(q, k, v))


def test_report_per_layer_through_a_pipeline():
    pipe = tiny_pipeline("wan")
    c = dit_attn.RectifiedSparse(sparsity=0.75, block_size=8, neighbors=False, track_density=True)
    with cpu_threads(1), dit_attn.attach(pipe, c):
        pipe(**tiny_call_kwargs("wan", steps=2))
    rows = density_report(c)
    assert [r["layer"] for r in rows] == sorted({rec.layer for rec in c.density_details})
    for r in rows:
        assert r["requested"] == pytest.approx(0.25) and r["calls"] >= 2
        assert sum(r["parts"].values()) == pytest.approx(r["achieved"])
        assert r["achieved"] >= r["floor"] - 1e-6
    table = density_table(rows)
    assert "requested 1 - sparsity" in table and all(p in table for p in DENSITY_PARTS)
    assert density_report([]) == []


def test_flux_1024_at_sparsity_08_explains_its_density():
    """The FLUX 1024² case: 32 visual + 4 text blocks; requested 0.2, achieved ~0.47 on random inputs, because text
    blocks (4/36), neighbours and a flat random estimate (tau ranks ~30 %) come on top of k_min."""
    with cpu_threads(1):
        row = shape_density("flux_1024", 0.8)
    assert row["requested"] == pytest.approx(0.2)
    assert 0.40 < row["achieved"] < 0.55
    assert row["parts"]["text"] == pytest.approx(4 / 36)
    assert row["parts"]["neighbors"] > 0.1 and row["parts"]["tau"] > 0.1


def test_forced_fractions_are_input_independent_properties_of_the_tables():
    f = forced_fractions((3, 6, 8), 16, first_frame=True)
    plan = token_plan((3, 6, 8), (0, 144), None, 144, 16, "cpu")
    ff = plan.first_frame[:, None] & plan.first_frame[None, :]
    assert f["neighbors"] == pytest.approx(float(plan.neighbors.float().mean()))
    assert f["first_frame"] == pytest.approx(float(ff.float().mean()))
    assert f["union"] == pytest.approx(float((ff | plan.neighbors).float().mean()))


@pytest.mark.parametrize("name", ["dit_attn.sparse.density", "dit_attn.sparse.selection", "dit_attn.sparse.reference",
                                  "dit_attn.sparse.reorder", "dit_attn.sparse.gilbert"])
def test_docstring_examples_of_the_sparse_modules(name):
    import doctest
    import importlib

    with cpu_threads(1):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0, result


def test_first_frame_rule_dominates_the_shapes_t2v_grid():
    """docs: on the 3x8x8 ShapesWorld t2v grid with blocks of 16, 10 of 12 blocks hold a frame-0 token (69 % of
    the pairs forced by first_frame=True); the leading rule forces 12 // 3 = 4 blocks."""
    f = forced_fractions((3, 8, 8), 16, first_frame=True, neighbors=False)
    assert (f["n_vblocks"], f["first_frame_blocks"]) == (12, 10)
    assert f["first_frame"] == pytest.approx(100 / 144)
    assert forced_fractions((3, 8, 8), 16, first_frame="leading", neighbors=False)["first_frame_blocks"] == 4
