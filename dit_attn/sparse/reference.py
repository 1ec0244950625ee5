"""A plain-PyTorch, loop-by-loop reference of the whole rectified sparse attention algorithm.

Written from the algorithm's definitions (as :mod:`dit_attn.sparse.selection` and :mod:`dit_attn.sparse.rectify`
state them), independently of the library's vectorised path: loops over batch rows, heads, blocks and tokens,
float64 throughout, neighbours found by walking each token's 26 grid neighbours, and the sparse output
computed token by token from an explicit key list. Only the Gilbert order itself is shared with the library
(:func:`dit_attn.sparse.gilbert.gilbert_order`; the curve has its own tests). Slow: for tests on small shapes.

``compat="reference"`` follows the Rectified SpaAttn code's choices instead (as ``docs/rectified_sparse.md``
describes them), each written here from its definition rather than through the library's flags:

* the curve always starts along width: the curve position of each cell comes from :func:`gilbert_index`, which
  locates a cell by descending into the sub-box that holds it (no shared code with the library's generator);
* a partial last block is pooled as if it held ``B - n`` zero tokens: means and mean absolute deviations over
  ``B`` tokens, and every block's pooled logit carries the same multiplicity ``B``;
* the text entry is ranked with the visual blocks and may take one of the ``n_I`` slots;
* ``k_min = int((1 - sparsity) · nVB)``;
* ``first_frame="leading"``: the first ``nVB // T`` blocks of the curve, pairwise.
"""

from __future__ import annotations

import math

import torch

from .gilbert import gilbert_order

__all__ = ["rectified_sparse_reference", "gilbert_index"]


def _split_boxes(p, a, b, c):
    """The sub-boxes ``(origin, a, b, c)`` a generalized-Hilbert box is walked through, in walk order (edge
    vectors a = walk direction, b, c; the same splitting rules as :mod:`dit_attn.sparse.gilbert`'s docstring)."""
    sgn = lambda x: (x > 0) - (x < 0)  # noqa: E731
    add = lambda *vs: tuple(sum(c_) for c_ in zip(*vs))  # noqa: E731
    neg = lambda v: tuple(-x for x in v)  # noqa: E731
    length = lambda v: abs(sum(v))  # noqa: E731
    w, h, d = length(a), length(b), length(c)
    da, db, dc = (tuple(map(sgn, v)) for v in (a, b, c))
    halves = []
    for v, dv, n in ((a, da, w), (b, db, h), (c, dc, d)):
        v2 = tuple(x // 2 for x in v)
        if length(v2) % 2 and n > 2:
            v2 = add(v2, dv)
        halves.append(v2)
    a2, b2, c2 = halves
    if 2 * w > 3 * h and 2 * w > 3 * d:
        return [(p, a2, b, c), (add(p, a2), add(a, neg(a2)), b, c)]
    if 3 * h > 4 * d:
        return [(p, b2, c, a2), (add(p, b2), a, add(b, neg(b2)), c),
                (add(p, a, neg(da), b2, neg(db)), neg(b2), c, neg(add(a, neg(a2))))]
    if 3 * d > 4 * h:
        return [(p, c2, a2, b), (add(p, c2), a, b, add(c, neg(c2))),
                (add(p, a, neg(da), c2, neg(dc)), neg(c2), neg(add(a, neg(a2))), b)]
    return [(p, b2, c2, a2), (add(p, b2), c, a2, add(b, neg(b2))),
            (add(p, b2, neg(db), c, neg(dc)), a, neg(b2), neg(add(c, neg(c2)))),
            (add(p, a, neg(da), b2, c, neg(dc)), neg(c), neg(add(a, neg(a2))), add(b, neg(b2))),
            (add(p, a, neg(da), b2, neg(db)), neg(b2), c2, neg(add(a, neg(a2))))]


def gilbert_index(cell: tuple[int, int, int], grid: tuple[int, int, int], major: str = "width") -> int:
    """Curve position of ``cell = (t, y, x)`` on the generalized-Hilbert curve over ``grid = (T, H, W)`` whose walk
    starts along width (``major="width"``, then height, then frames) or the longest axis (``"longest"``).

    Computed by descending into the sub-box holding the cell and adding the volumes of the sub-boxes walked
    before it; a straight run (two edges of length 1) gives the offset along the run directly.

    >>> [gilbert_index((0, 0, x), (1, 2, 2)) for x in (0, 1)], gilbert_index((0, 1, 0), (1, 2, 2))
    ([0, 3], 1)
    """
    t0, y0, x0 = cell
    target = (x0, y0, t0)
    sizes = {"x": grid[2], "y": grid[1], "z": grid[0]}
    unit = {"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, 1)}
    first = "x" if major == "width" else sorted(sizes, key=lambda k: (-sizes[k], "xyz".index(k)))[0]
    rest = [k for k in "xyz" if k != first]
    p = (0, 0, 0)
    a, b, c = (tuple(sizes[k] * u for u in unit[k]) for k in (first, *rest))
    index = 0

    def inside(p, a, b, c):
        for axis in range(3):
            span = a[axis] + b[axis] + c[axis]
            lo, hi = (p[axis], p[axis] + span) if span >= 0 else (p[axis] + span + 1, p[axis] + 1)
            if not lo <= target[axis] < hi:
                return False
        return True

    while True:
        dims = [abs(sum(v)) for v in (a, b, c)]
        runs = [v for v, n in zip((a, b, c), dims) if n > 1]
        if len(runs) <= 1:  # a straight run (or a single cell)
            if not runs:
                return index
            v = runs[0]
            axis = next(i for i in range(3) if v[i])
            return index + abs(target[axis] - p[axis])
        for sub in _split_boxes(p, a, b, c):
            if inside(*sub):
                p, a, b, c = sub
                break
            index += abs(sum(sub[1])) * abs(sum(sub[2])) * abs(sum(sub[3]))
        else:
            raise AssertionError(f"cell {cell} outside the grid {grid}")


def rectified_sparse_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: tuple[int, int, int],
    vis: tuple[int, int],
    text: tuple[int, int] | None = None,
    key_valid: torch.Tensor | None = None,
    sparsity: float = 0.8,
    tau: float = 0.3,
    block_size: int = 128,
    neighbors: bool = True,
    first_frame: bool | str = False,
    variant: str = "full",
    scale: float | None = None,
    compat: str | None = None,
) -> torch.Tensor:
    """Rectified sparse attention of ``q, k, v`` ``[B, N, H, D]`` (dispatch layout), in float64.

    ``vis``/``text``: token ranges of the visual tokens (raster order over ``grid = (T, H, W)``) and the text
    tokens; ``key_valid`` bool ``[B, N]`` marks usable keys (padded text keys False). Returns ``[B, N, H, D]``
    float64 in the input token order: visual queries get ``R · o_sparse + C``, text queries dense attention.
    ``first_frame``: False, True (blocks holding frame-0 tokens) or ``"leading"`` (the first ``nVB // T`` blocks);
    ``compat="reference"``: the Rectified SpaAttn code's choices (module docstring).

    Example::

        >>> import torch
        >>> from dit_attn.sparse.reference import rectified_sparse_reference
        >>> q, k, v = (torch.randn(1, 30, 1, 8, dtype=torch.float64) for _ in range(3))
        >>> out = rectified_sparse_reference(q, k, v, grid=(2, 3, 5), vis=(0, 30), sparsity=0.0, block_size=8)
        >>> dense = torch.softmax(q[0, :, 0] @ k[0, :, 0].T / 8 ** 0.5, -1) @ v[0, :, 0]
        >>> bool(torch.allclose(out[0, :, 0], dense))
        True
    """
    B, N, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    T, Hg, Wg = grid
    v0, v1 = vis
    nv = v1 - v0
    if T * Hg * Wg != nv:
        raise ValueError(f"grid {tuple(grid)} holds {T * Hg * Wg} tokens but the visual span {tuple(vis)} has {nv}")
    text_pos = list(range(*text)) if text is not None else []
    reference = compat == "reference"
    if reference:
        order = [0] * nv
        for t in range(T):
            for y in range(Hg):
                for x in range(Wg):
                    order[gilbert_index((t, y, x), grid, "width")] = (t * Hg + y) * Wg + x
    else:
        order = gilbert_order(grid).tolist()
    vis_pos = [v0 + r for r in order]  # sequence position of the visual token at curve position p
    nb = -(-nv // block_size)
    blocks = [list(range(i * block_size, min(nv, (i + 1) * block_size))) for i in range(nb)]  # curve positions
    pos_of_raster = {r: p for p, r in enumerate(order)}
    k_min = int((1.0 - sparsity) * nb) if reference else max(1, int(math.floor((1.0 - sparsity) * nb + 1e-9)))

    # Static tables: 3D neighbour blocks and frame-0 blocks.
    neigh = [set() for _ in range(nb)]
    frame0 = set()
    for i in range(nb):
        for p in blocks[i]:
            r = order[p]
            t, y, x = r // (Hg * Wg), (r // Wg) % Hg, r % Wg
            if t == 0:
                frame0.add(i)
            for dt in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        t2, y2, x2 = t + dt, y + dy, x + dx
                        if 0 <= t2 < T and 0 <= y2 < Hg and 0 <= x2 < Wg:
                            neigh[i].add(pos_of_raster[t2 * Hg * Wg + y2 * Wg + x2] // block_size)
    if first_frame == "leading":
        frame0 = set(range(nb // T))

    out = torch.zeros(B, N, H, D, dtype=torch.float64)
    for b in range(B):
        valid = [True] * N if key_valid is None else [bool(x) for x in key_valid[b]]
        vtext = [t for t in text_pos if valid[t]]
        all_keys = [j for j in range(N) if valid[j]]
        for h in range(H):
            Q, K, V = (x[b, :, h].double() for x in (q, k, v))

            def pooled(X, blk):
                """Block mean and mean absolute deviation (over B tokens, B - n of them zeros, in reference mode)."""
                rows = X[[vis_pos[p] for p in blk]]
                if not reference:
                    m = rows.mean(0)
                    return m, (rows - m).abs().mean(0)
                m = rows.sum(0) / block_size
                return m, ((rows - m).abs().sum(0) + (block_size - len(blk)) * m.abs()) / block_size

            qm, qd = zip(*(pooled(Q, blk) for blk in blocks))
            km, kd = zip(*(pooled(K, blk) for blk in blocks))
            vm = [pooled(V, blk)[0] for blk in blocks]
            for i in range(nb):
                # IPAR: block multiplicity on visual logits, text keys isolated.
                mult = [block_size if reference else len(blk) for blk in blocks]
                lv = [float(qm[i] @ km[j]) * scale + math.log(mult[j]) for j in range(nb)]
                lt = [float(qm[i] @ K[t]) * scale for t in vtext]
                mx = max(lv + lt)
                z = sum(math.exp(x - mx) for x in lv + lt)
                pv = [math.exp(x - mx) / z for x in lv]
                pt = sum(math.exp(x - mx) for x in lt) / z if vtext else 0.0
                row = sorted(pv + ([pt] if vtext else []), reverse=True)
                csum, n_tau = 0.0, 0
                for p in row:
                    csum += p
                    if csum <= tau:
                        n_tau += 1
                if reference and vtext:  # the text entry (index nb) competes for the slots
                    entries = pv + [pt]
                    n_sel = min(max(n_tau + 1, k_min), nb + 1)
                    ranked = sorted(range(nb + 1), key=lambda j: (-entries[j], j))
                    crit = {j for j in ranked[:n_sel] if j < nb}
                else:
                    n_sel = min(max(n_tau + 1, k_min), nb)
                    ranked = sorted(range(nb), key=lambda j: (-pv[j], j))
                    crit = set(ranked[:n_sel])
                if neighbors:
                    crit |= neigh[i]
                if first_frame and T > 1 and i in frame0:
                    crit |= frame0
                untrusted = set()
                if variant == "full":
                    for j in range(nb):
                        if j in crit:
                            continue
                        gain = abs(float(qm[i] @ km[j]))
                        err = abs(float(qd[i] @ km[j])) + abs(float(qm[i] @ kd[j]))
                        if not gain > err:
                            untrusted.add(j)
                kept = crit | untrusted
                R = sum(pv[j] for j in kept) + pt
                C = sum((pv[j] * vm[j] for j in range(nb) if j not in kept), torch.zeros(D, dtype=torch.float64))
                keys = [vis_pos[p] for j in sorted(crit) for p in blocks[j]] + vtext
                for p in blocks[i]:
                    qi = vis_pos[p]
                    w = torch.softmax(K[keys] @ Q[qi] * scale, 0)
                    o = w @ V[keys]
                    if variant == "block":
                        out[b, qi, h] = o
                    elif variant == "r":
                        out[b, qi, h] = R * o
                    else:
                        out[b, qi, h] = R * o + C
            for t in text_pos:  # text queries: dense over every valid key
                w = torch.softmax(K[all_keys] @ Q[t] * scale, 0)
                out[b, t, h] = w @ V[all_keys]
    return out
