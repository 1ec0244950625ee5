"""The sparse problem's token order: visual tokens along a 3D Gilbert curve, padded to whole blocks, text last.

Why per attention call, not once per forward. RoPE is applied inside the attention processor (the adapters
rotate q and k after the projections), with frequency tables in raster order. Reordering q/k/v right before the
kernel (one gather each) and the output right after (one gather) therefore needs no model knowledge at all and
is exact for every family. Doing it once per forward instead would mean permuting ``hidden_states`` after patch
embedding, permuting every rotary table (and FLUX's ``img_ids``) the same way, and un-permuting before
``proj_out``/unpatchify: everything in between (norms, AdaLN modulation, MLPs) is token-wise and commutes with
a permutation, but the hooks would be per model, and controls that address tokens by raster position (grids,
emphasis masks) would all have to know. The per-call gathers move ~4·N·H·D elements per layer, a few percent
of an attention call at the 30k+ tokens where sparsity pays (the benchmark script reports them).

What is cached: :func:`token_plan` builds every index table once per (grid, segments, block size, device) and
keeps it in an LRU cache, so the per-call work is the gathers only (no host work, no ``.item()``).

Layout of the sparse problem (``Nv`` visual tokens, ``nVB = ceil(Nv / B)`` visual blocks, ``Nt`` text tokens):

* queries: ``[visual in curve order (Nv), text (Nt)]``; the sparse kernel runs on rows ``[0, Nv)`` (its last
  query block may be partial), the text rows run dense;
* keys/values: ``[visual in curve order (Nv), padding (nVB·B − Nv), text (Nt)]``: text starts on a block
  boundary, so key blocks ``[0, nVB)`` are visual and ``[nVB, nVB + nTB)`` text; padding keys are masked with a
  ``-inf`` key bias (they repeat a real token, so nothing reads uninitialised memory).

First-frame tables (Wan's rule; :class:`dit_attn.RectifiedSparse` ``first_frame``):

* ``first_frame`` (``first_frame=True``): the blocks that hold at least one token of latent frame 0. Along a 3D
  curve frame 0 is not a prefix of the order: the curve's blocks are small space-time boxes, and the ones touching
  ``t = 0`` are spread along the whole curve (58 of 256 blocks at Wan 480p, 145 of 591 at 720p), so forcing all
  pairs of them costs 5.1 % / 6.0 % of all visual block pairs.
* ``leading`` (``first_frame="leading"``): the first ``nVB // T`` blocks of the curve, which is what the Rectified
  SpaAttn code forces (its ``first_frame_blocks``). It reorders tokens along its own 3D curve too, so those leading
  blocks are not frame 0 there either: at Wan 480p/720p they are a thin corner column through all 21 latent frames
  holding 112 of frame 0's 1 560 tokens (120 of 3 600 at 720p). 0.22 % of the block pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
from functools import lru_cache

import torch

from .gilbert import gilbert_order, inverse_permutation

__all__ = ["TokenPlan", "token_plan", "neighbor_block_table", "frame_blocks", "leading_blocks"]


@dataclass(frozen=True)
class TokenPlan:
    """Index tables of one sparse problem (all on the attention's device)."""

    q_index: torch.Tensor  # int64 [Nv + Nt]: call query position of each sparse-problem query
    kv_index: torch.Tensor  # int64 [nVB*B + Nt]: call key position of each sparse-problem key (pads repeat one)
    pad_bias: torch.Tensor  # fp32 [nVB*B + Nt]: 0, or -inf on padding keys
    out_index: torch.Tensor  # int64 [Nv + Nt]: inverse of q_index (sparse-problem row of each call query)
    neighbors: torch.Tensor  # bool [nVB, nVB]: blocks holding a 3D neighbour of a token of the query block
    first_frame: torch.Tensor  # bool [nVB]: blocks holding a token of latent frame 0
    leading: torch.Tensor  # bool [nVB]: the first nVB // T blocks of the curve (the reference code's rule)
    n_vis: int
    n_text: int
    block_size: int

    @property
    def n_vblocks(self) -> int:
        return -(-self.n_vis // self.block_size)

    @property
    def n_tblocks(self) -> int:
        return -(-self.n_text // self.block_size)

    @property
    def n_vis_padded(self) -> int:
        return self.n_vblocks * self.block_size


def neighbor_block_table(grid: tuple[int, int, int], order: torch.Tensor, block_size: int) -> torch.Tensor:
    """bool ``[nVB, nVB]`` (CPU): ``[I, J]`` iff block J holds one of the 26 spatio-temporal neighbours (or the
    token itself) of some token of block I, with blocks = runs of ``block_size`` tokens along ``order``."""
    t, h, w = grid
    n = t * h * w
    nb = -(-n // block_size)
    block_of = torch.empty(n, dtype=torch.int64)
    block_of[order] = torch.arange(n, dtype=torch.int64) // block_size  # block of each raster token
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    tt, yy, xx = tt.reshape(-1), yy.reshape(-1), xx.reshape(-1)
    table = torch.zeros(nb, nb, dtype=torch.bool)
    for dt in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                t2, y2, x2 = tt + dt, yy + dy, xx + dx
                ok = (t2 >= 0) & (t2 < t) & (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
                src = block_of[ok]
                dst = block_of[(t2 * h * w + y2 * w + x2)[ok]]
                table[src, dst] = True
    return table


def frame_blocks(grid: tuple[int, int, int], order: torch.Tensor, block_size: int, frame: int = 0) -> torch.Tensor:
    """bool ``[nVB]`` (CPU): blocks that hold at least one token of latent frame ``frame``.

    (Along a 3D curve frame 0 is spread over many blocks, so these are the blocks that actually contain it; the
    Rectified SpaAttn code forces :func:`leading_blocks` instead, which along its 3D curve are not frame 0.)
    """
    t, h, w = grid
    n = t * h * w
    nb = -(-n // block_size)
    frame_of_pos = order // (h * w)  # latent frame of each curve position
    out = torch.zeros(nb, dtype=torch.bool)
    out[(torch.arange(n) // block_size)[frame_of_pos == frame]] = True
    return out


def leading_blocks(grid: tuple[int, int, int], block_size: int) -> torch.Tensor:
    """bool ``[nVB]`` (CPU): the first ``nVB // T`` blocks of the order (the Rectified SpaAttn code's first-frame
    blocks: one frame's share of the blocks, taken from the start of the curve)."""
    t, h, w = grid
    nb = -(-(t * h * w) // block_size)
    return torch.arange(nb) < nb // t


def token_plan(grid: tuple[int, int, int], vis: tuple[int, int], text: tuple[int, int] | None, n_tokens: int,
               block_size: int, device, curve: str = "longest") -> TokenPlan:
    """The (cached) :class:`TokenPlan` for a call whose visual tokens are ``vis = (start, stop)`` of a sequence of
    ``n_tokens`` (raster order over ``grid``) and whose text tokens, if any, are ``text = (start, stop)``;
    ``curve`` is the Gilbert curve's major axis (:func:`dit_attn.sparse.gilbert.gilbert_curve`).

    Example::

        >>> from dit_attn.sparse.reorder import token_plan
        >>> p = token_plan((3, 5, 7), (0, 105), (105, 111), 111, 16, "cpu")
        >>> p.n_vblocks, p.n_tblocks, p.kv_index.shape[0]       # 105 visual -> 7 blocks of 16 (112), + 6 text
        (7, 1, 118)
    """
    key = (tuple(int(g) for g in grid), tuple(int(x) for x in vis), None if text is None else tuple(int(x) for x in text),
           int(n_tokens), int(block_size), str(torch.device(device)), curve)
    n_vis, n_text = _check_plan(*key[:4])
    if torch.compiler.is_compiling():
        # The tables depend on the shapes only. While torch.compile traces, _plan_while_tracing runs for real (it
        # is not traced) and keeps the plan as an attribute of _TRACED_PLANS; the compiled code then reads its
        # tables as inputs instead of tracing the curve and rebuilding the tables at every call.
        return getattr(_TRACED_PLANS, _plan_while_tracing(key))
    return _token_plan(*key)


class _TracedPlans:
    """Plans built for compiled code, one attribute per key, kept for the process (one per token layout and block
    size). Attributes, not a dict: the tracer reads a dict once per trace, so it would not see a key added by a
    later call of the same trace; each attribute is read when it is asked for."""


_TRACED_PLANS = _TracedPlans()


@torch._dynamo.assume_constant_result
def _plan_while_tracing(key: tuple) -> str:
    """The name of the attribute of _TRACED_PLANS holding the plan of ``key`` (built if needed)."""
    name = "plan_" + hashlib.sha1(repr(key).encode()).hexdigest()
    if not hasattr(_TRACED_PLANS, name):
        setattr(_TRACED_PLANS, name, _token_plan(*key))
    return name


def _check_plan(grid, vis, text, n_tokens) -> tuple[int, int]:
    """Visual and text token counts of a plan, or a ValueError when the grid or the segments do not fit."""
    v0, v1 = vis
    n_vis = v1 - v0
    if grid[0] * grid[1] * grid[2] != n_vis:
        raise ValueError(f"token grid {grid} has {grid[0] * grid[1] * grid[2]} cells but the call has {n_vis} "
                         "visual tokens")
    t0, t1 = text if text is not None else (0, 0)
    n_text = t1 - t0
    if n_vis + n_text != n_tokens:
        raise ValueError(f"visual ({n_vis}) + text ({n_text}) tokens do not cover the sequence ({n_tokens})")
    return n_vis, n_text


@lru_cache(maxsize=32)
def _token_plan(grid, vis, text, n_tokens, block_size, device, curve="longest") -> TokenPlan:
    v0, v1 = vis
    n_vis, n_text = _check_plan(grid, vis, text, n_tokens)
    t0, t1 = text if text is not None else (0, 0)
    order = gilbert_order(grid, curve)
    nvb = -(-n_vis // block_size)
    pad = nvb * block_size - n_vis
    text_idx = torch.arange(t0, t1, dtype=torch.int64)
    q_index = torch.cat([order + v0, text_idx])
    kv_index = torch.cat([order + v0, torch.full((pad,), v0, dtype=torch.int64), text_idx])
    pad_bias = torch.zeros(kv_index.numel(), dtype=torch.float32)
    pad_bias[n_vis:n_vis + pad] = float("-inf")
    return TokenPlan(
        q_index=q_index.to(device), kv_index=kv_index.to(device), pad_bias=pad_bias.to(device),
        out_index=inverse_permutation(q_index).to(device),
        neighbors=neighbor_block_table(grid, order, block_size).to(device),
        first_frame=frame_blocks(grid, order, block_size).to(device),
        leading=leading_blocks(grid, block_size).to(device),
        n_vis=n_vis, n_text=n_text, block_size=block_size,
    )
