"""A plain-PyTorch, loop-by-loop reference of the whole rectified sparse attention algorithm (spec steps 0-8).

Written from the spec, independently of the library's vectorised path: loops over batch rows, heads, blocks and
tokens, float64 throughout, neighbours found by walking each token's 26 grid neighbours, and the sparse output
computed token by token from an explicit key list. Only the Gilbert order itself is shared with the library
(:func:`dit_attn.sparse.gilbert.gilbert_order`; the curve has its own tests). Slow: for tests on small shapes.
"""

from __future__ import annotations

import math

import torch

from .gilbert import gilbert_order

__all__ = ["rectified_sparse_reference"]


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
    first_frame: bool = False,
    variant: str = "full",
    scale: float | None = None,
) -> torch.Tensor:
    """Rectified sparse attention of ``q, k, v`` ``[B, N, H, D]`` (dispatch layout), in float64.

    ``vis``/``text``: token ranges of the visual tokens (raster order over ``grid = (T, H, W)``) and the text
    tokens; ``key_valid`` bool ``[B, N]`` marks usable keys (padded text keys False). Returns ``[B, N, H, D]``
    float64 in the input token order: visual queries get ``R · o_sparse + C``, text queries dense attention.

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
    order = gilbert_order(grid).tolist()
    vis_pos = [v0 + r for r in order]  # sequence position of the visual token at curve position p
    nb = -(-nv // block_size)
    blocks = [list(range(i * block_size, min(nv, (i + 1) * block_size))) for i in range(nb)]  # curve positions
    pos_of_raster = {r: p for p, r in enumerate(order)}
    k_min = max(1, int(math.floor((1.0 - sparsity) * nb + 1e-9)))

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

    out = torch.zeros(B, N, H, D, dtype=torch.float64)
    for b in range(B):
        valid = [True] * N if key_valid is None else [bool(x) for x in key_valid[b]]
        vtext = [t for t in text_pos if valid[t]]
        all_keys = [j for j in range(N) if valid[j]]
        for h in range(H):
            Q, K, V = (x[b, :, h].double() for x in (q, k, v))
            qm = [Q[[vis_pos[p] for p in blk]].mean(0) for blk in blocks]
            km = [K[[vis_pos[p] for p in blk]].mean(0) for blk in blocks]
            vm = [V[[vis_pos[p] for p in blk]].mean(0) for blk in blocks]
            qd = [(Q[[vis_pos[p] for p in blk]] - qm[i]).abs().mean(0) for i, blk in enumerate(blocks)]
            kd = [(K[[vis_pos[p] for p in blk]] - km[i]).abs().mean(0) for i, blk in enumerate(blocks)]
            for i in range(nb):
                # IPAR: block multiplicity on visual logits, text keys isolated.
                lv = [float(qm[i] @ km[j]) * scale + math.log(len(blocks[j])) for j in range(nb)]
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
