"""3D generalized Hilbert ("Gilbert") ordering of a (frames, height, width) token grid, and its inverse.

A Hilbert curve visits every cell of a box moving one step at a time, so any run of consecutive cells along it
is spatio-temporally compact: cutting the curve into 128-token blocks gives blocks that are small cubes rather
than the thin raster rows of diffusers' (t, h, w)-major token order. The generalized form (Jakub Červený's
"gilbert" construction) works for any box size, odd and non-power-of-two sizes included: it splits the box
along its longest axes into 2 (very elongated boxes) or 3-5 sub-boxes, orients each so that the walk leaves
one where the next begins, and recurses down to single rows. For odd sizes a few steps are diagonal; the
curve is always a permutation of the cells.

Token index convention: raster index ``r = t * H * W + y * W + x``, as diffusers flattens patch tokens of
video (``[B, C, T, H, W] -> flatten(2)``) and image (``T = 1``) latents.

Example::

    >>> from dit_attn.sparse.gilbert import gilbert_order, inverse_permutation
    >>> order = gilbert_order((3, 5, 7))          # raster indices in curve order
    >>> sorted(order.tolist()) == list(range(105))
    True
    >>> inv = inverse_permutation(order)
    >>> bool((order[inv] == __import__("torch").arange(105)).all())
    True
"""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["MAJORS", "gilbert_curve", "gilbert_order", "inverse_permutation"]


def _sgn(a: int) -> int:
    return (a > 0) - (a < 0)


def _vec_add(*vs):
    return tuple(sum(c) for c in zip(*vs))


def _vec_neg(v):
    return tuple(-c for c in v)


def _vec_half(v):
    return tuple(c // 2 for c in v)


def _length(v) -> int:
    return abs(sum(v))


MAJORS = ("longest", "width")


def gilbert_curve(frames: int, height: int, width: int, major: str = "longest") -> list[tuple[int, int, int]]:
    """The cells ``(t, y, x)`` of a ``frames x height x width`` box in generalized-Hilbert order.

    ``major`` picks the axis the walk starts along: ``"longest"`` (this library's default: the longest axis, ties
    to width, then height) or ``"width"`` (always width, then height, then frames: the Rectified SpaAttn code's
    axis order, used by ``RectifiedSparse(compat="reference")``). The two are the same curve whenever width is the
    longest axis (every landscape video shape); they differ on portrait or very long (many-frame) grids.

    Iterative (explicit stack) so deep recursions on long boxes never hit Python's recursion limit.
    """
    for name, n in (("frames", frames), ("height", height), ("width", width)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"gilbert_curve: {name} must be a positive int, got {n!r}")
    if major not in MAJORS:
        raise ValueError(f"gilbert_curve: major must be one of {MAJORS}, got {major!r}")
    # Work in (x, y, z) = (width, height, frames) coordinates; a, b, c are the box's edge vectors, with a the
    # major ("walk along") direction, b then c the other two in (x, y, z) order.
    X, Y, Z = (1, 0, 0), (0, 1, 0), (0, 0, 1)
    sizes = {"x": width, "y": height, "z": frames}
    axes = {"x": X, "y": Y, "z": Z}
    if major == "width":
        major = "x"
    else:
        major = sorted(sizes, key=lambda k: (-sizes[k], "xyz".index(k)))[0]
    rest = [k for k in "xyz" if k != major]
    vec = lambda k: tuple(sizes[k] * c for c in axes[k])  # noqa: E731
    out: list[tuple[int, int, int]] = []
    stack = [((0, 0, 0), vec(major), vec(rest[0]), vec(rest[1]))]
    while stack:
        p, a, b, c = stack.pop()
        w, h, d = _length(a), _length(b), _length(c)
        da, db, dc = tuple(map(_sgn, a)), tuple(map(_sgn, b)), tuple(map(_sgn, c))
        # Straight runs end the recursion.
        if h == 1 and d == 1:
            out.extend(_vec_add(p, tuple(i * e for e in da)) for i in range(w))
            continue
        if w == 1 and d == 1:
            out.extend(_vec_add(p, tuple(i * e for e in db)) for i in range(h))
            continue
        if w == 1 and h == 1:
            out.extend(_vec_add(p, tuple(i * e for e in dc)) for i in range(d))
            continue
        a2, b2, c2 = _vec_half(a), _vec_half(b), _vec_half(c)
        # Halves of even length keep the walk on unit steps; nudge odd halves by one cell.
        if _length(a2) % 2 and w > 2:
            a2 = _vec_add(a2, da)
        if _length(b2) % 2 and h > 2:
            b2 = _vec_add(b2, db)
        if _length(c2) % 2 and d > 2:
            c2 = _vec_add(c2, dc)
        a_rest, b_rest, c_rest = _vec_add(a, _vec_neg(a2)), _vec_add(b, _vec_neg(b2)), _vec_add(c, _vec_neg(c2))
        far_a = _vec_add(a, _vec_neg(da))  # from the start corner to the last cell along a
        if 2 * w > 3 * h and 2 * w > 3 * d:  # elongated along a: two halves
            subs = [(p, a2, b, c), (_vec_add(p, a2), a_rest, b, c)]
        elif 3 * h > 4 * d:  # flat in c: split a and b only
            subs = [
                (p, b2, c, a2),
                (_vec_add(p, b2), a, b_rest, c),
                (_vec_add(p, far_a, b2, _vec_neg(db)), _vec_neg(b2), c, _vec_neg(a_rest)),
            ]
        elif 3 * d > 4 * h:  # flat in b: split a and c only
            subs = [
                (p, c2, a2, b),
                (_vec_add(p, c2), a, b, c_rest),
                (_vec_add(p, far_a, c2, _vec_neg(dc)), _vec_neg(c2), _vec_neg(a_rest), b),
            ]
        else:  # split all three axes into five sub-boxes
            far_c = _vec_add(c, _vec_neg(dc))
            subs = [
                (p, b2, c2, a2),
                (_vec_add(p, b2), c, a2, b_rest),
                (_vec_add(p, b2, _vec_neg(db), far_c), a, _vec_neg(b2), _vec_neg(c_rest)),
                (_vec_add(p, far_a, b2, far_c), _vec_neg(c), _vec_neg(a_rest), b_rest),
                (_vec_add(p, far_a, b2, _vec_neg(db)), _vec_neg(b2), c2, _vec_neg(a_rest)),
            ]
        stack.extend(reversed(subs))  # the stack pops the first sub-box first
    return [(z, y, x) for x, y, z in out]


@lru_cache(maxsize=64)
def _gilbert_order_cpu(frames: int, height: int, width: int, major: str) -> torch.Tensor:
    cells = torch.tensor(gilbert_curve(frames, height, width, major), dtype=torch.int64)
    return cells[:, 0] * (height * width) + cells[:, 1] * width + cells[:, 2]


def gilbert_order(grid: tuple[int, int, int], major: str = "longest") -> torch.Tensor:
    """int64 ``[T*H*W]`` (CPU): raster token indices in Gilbert-curve order for ``grid = (T, H, W)``
    (``major``: see :func:`gilbert_curve`).

    Cached per grid (a shared tensor: do not modify it in place).
    """
    t, h, w = (int(g) for g in grid)
    return _gilbert_order_cpu(t, h, w, major)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[i]] = i`` (so ``x[perm][inv] == x``); same device and dtype as ``perm``."""
    inv = torch.empty_like(perm)
    inv.scatter_(0, perm, torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype))
    return inv
