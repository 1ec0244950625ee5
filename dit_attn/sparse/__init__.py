"""Rectified sparse attention: Gilbert reordering, on-device block selection, rectification, references, tools.

* :mod:`dit_attn.sparse.gilbert`: 3D generalized Hilbert order of a (t, h, w) token grid and its inverse;
* :mod:`dit_attn.sparse.reorder`: the cached index tables of the sparse problem (why per call: see there);
* :mod:`dit_attn.sparse.selection`: pooled estimate, critical blocks, LUT (tensor code, compile-safe);
* :mod:`dit_attn.sparse.rectify`: GAPR test, R and C;
* :mod:`dit_attn.sparse.reference`: a float64 loop-by-loop reference of the whole algorithm;
* ``python -m dit_attn.bench.sparse_quality``: per-layer error and final PSNR/SSIM of each variant vs dense;
* ``python -m dit_attn.bench.sparse_speed``: GPU speed benchmark (dense SDPA vs sparse, Amdahl ceiling).

The user-facing control is :class:`dit_attn.RectifiedSparse`; :func:`sparse_attention` runs it on bare tensors.
"""

from __future__ import annotations

import torch

from .gilbert import gilbert_curve, gilbert_order, inverse_permutation
from .reorder import TokenPlan, token_plan
from .selection import VARIANTS, Selection, k_min_for, mask_to_lut, select_blocks

__all__ = [
    "VARIANTS", "Selection", "TokenPlan", "gilbert_curve", "gilbert_order", "inverse_permutation", "k_min_for",
    "mask_to_lut", "select_blocks", "sparse_attention", "token_plan", "make_layout",
]


def make_layout(n_tokens: int, heads: int, head_dim: int, batch: int, *, grid, vis, text=None, family=None,
                kind: str = "joint"):
    """A :class:`~dit_attn.layout.Layout` for bare tensors: visual tokens ``vis`` over ``grid``, text ``text``."""
    from dit_attn.layout import ForwardState, Layout

    segs = {"image": tuple(vis)}
    if text is not None:
        segs["text"] = tuple(text)
    state = ForwardState(family=family, grid_fn=lambda: tuple(grid))
    return Layout(family=family, site=None, kind=kind, heads=heads, head_dim=head_dim, query_segments=segs,
                  key_segments=segs, batch_size=batch, state=state)


def sparse_attention(control, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout, attn_mask=None,
                     scale: float | None = None) -> torch.Tensor:
    """Run ``control`` (a :class:`dit_attn.RectifiedSparse`) on bare ``[B, N, H, D]`` tensors; dense if it does not
    apply to ``layout``. Returns ``[B, N, H, D]``.

    Example::

        >>> import torch, dit_attn
        >>> from dit_attn.sparse import make_layout, sparse_attention
        >>> q, k, v = (torch.randn(2, 110, 2, 16) for _ in range(3))
        >>> layout = make_layout(110, 2, 16, 2, grid=(2, 5, 10), vis=(0, 100), text=(100, 110))
        >>> out = sparse_attention(dit_attn.RectifiedSparse(sparsity=0.5, block_size=16), q, k, v, layout)
        >>> out.shape
        torch.Size([2, 110, 2, 16])
    """
    from dit_attn.call import AttentionCall, execute

    call = AttentionCall(q, k, v, layout, attn_mask=attn_mask, scale=scale)
    if control.applies_to(layout):
        call = control.prepare(call)
    return execute(call)
