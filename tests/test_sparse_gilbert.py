"""Gilbert ordering and the sparse problem's token plan: exact round trips, unit steps, compact blocks."""

import pytest
import torch

from dit_attn.sparse.gilbert import gilbert_curve, gilbert_order, inverse_permutation
from dit_attn.sparse.reorder import frame_blocks, neighbor_block_table, token_plan

GRIDS = [(1, 1, 1), (3, 5, 7), (1, 6, 8), (3, 6, 8), (2, 1, 9), (5, 4, 4), (7, 2, 3), (4, 9, 13), (1, 17, 30)]


@pytest.mark.parametrize("grid", GRIDS)
def test_curve_is_a_walk_over_every_cell(grid):
    cells = gilbert_curve(*grid)
    t, h, w = grid
    assert sorted(cells) == [(a, b, c) for a in range(t) for b in range(h) for c in range(w)]
    steps = [max(abs(x - y) for x, y in zip(cells[i], cells[i + 1])) for i in range(len(cells) - 1)]
    assert all(s == 1 for s in steps)  # always to a 26-neighbour (diagonal only for odd sizes)
    manhattan = [sum(abs(x - y) for x, y in zip(cells[i], cells[i + 1])) for i in range(len(cells) - 1)]
    if manhattan:
        assert sum(m == 1 for m in manhattan) / len(manhattan) > 0.9


@pytest.mark.parametrize("grid", GRIDS)
def test_order_round_trips_exactly(grid):
    order = gilbert_order(grid)
    n = grid[0] * grid[1] * grid[2]
    inv = inverse_permutation(order)
    x = torch.randn(n, 3)
    assert torch.equal(x[order][inv], x)
    assert torch.equal(x[inv][order], x)


def _mean_extent(order, grid, bs):
    t, h, w = grid
    coords = torch.stack([order // (h * w), (order // w) % h, order % w], -1).float()
    ext = []
    for s in range(0, order.numel() - bs + 1, bs):
        c = coords[s:s + bs]
        ext.append(float((c - c.mean(0)).norm(dim=-1).mean()))  # mean distance to the block's centroid
    return sum(ext) / len(ext)


@pytest.mark.parametrize("grid, bs", [((5, 12, 16), 64), ((3, 30, 52), 128), ((1, 32, 48), 128)])
def test_blocks_are_more_compact_than_raster(grid, bs):
    n = grid[0] * grid[1] * grid[2]
    gil = _mean_extent(gilbert_order(grid), grid, bs)
    raster = _mean_extent(torch.arange(n), grid, bs)
    assert gil < 0.6 * raster, (gil, raster)


def test_token_plan_layout_text_first_and_padding():
    grid, bs = (3, 5, 7), 16  # 105 visual tokens -> 7 blocks (112), last one partial; text first (FLUX layout)
    p = token_plan(grid, (6, 111), (0, 6), 111, bs, "cpu")
    assert (p.n_vis, p.n_text, p.n_vblocks, p.n_tblocks) == (105, 6, 7, 1)
    assert torch.equal(p.q_index[:105], gilbert_order(grid) + 6) and torch.equal(p.q_index[105:], torch.arange(6))
    assert torch.equal(p.q_index[p.out_index], torch.arange(111))
    assert torch.isneginf(p.pad_bias[105:112]).all() and (p.pad_bias[:105] == 0).all() and (p.pad_bias[112:] == 0).all()
    assert torch.equal(p.kv_index[112:], torch.arange(6))
    assert p.neighbors.shape == (7, 7) and p.neighbors.diagonal().all() and torch.equal(p.neighbors, p.neighbors.T)
    with pytest.raises(ValueError, match="grid"):
        token_plan((3, 5, 6), (6, 111), (0, 6), 111, bs, "cpu")


def test_neighbour_table_and_frame_blocks_brute_force():
    grid, bs = (3, 4, 5), 8
    order = gilbert_order(grid)
    table = neighbor_block_table(grid, order, bs)
    cells = gilbert_curve(*grid)
    pos = {c: i for i, c in enumerate(cells)}
    expect = torch.zeros_like(table)
    for c, i in pos.items():
        for d in [(a, b, e) for a in (-1, 0, 1) for b in (-1, 0, 1) for e in (-1, 0, 1)]:
            n = tuple(x + y for x, y in zip(c, d))
            if n in pos:
                expect[i // bs, pos[n] // bs] = True
    assert torch.equal(table, expect)
    ff = frame_blocks(grid, order, bs)
    assert ff.tolist() == [any(cells[p][0] == 0 for p in range(b * bs, min(60, (b + 1) * bs))) for b in range(8)]


def test_bad_grid():
    with pytest.raises(ValueError, match="height"):
        gilbert_curve(2, 0, 3)
