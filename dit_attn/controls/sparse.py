"""Rectified sparse attention (Rectified SpaAttn, arXiv 2511.19835; selection after Jenga, arXiv 2505.16864).

Block-sparse attention for video and image DiTs: visual tokens are reordered along a 3D Gilbert curve so that
blocks of ``block_size`` tokens are compact cubes, the attention mass of each (query block, key block) pair is
estimated from block means, only the "critical" blocks are computed exactly (plus 3D neighbours, text, and for
Wan the first-frame blocks), and the result is corrected by a per-query-block scale R and a pooled term C for
the skipped blocks, fused into the kernel's epilogue. Text queries always attend densely. See
``docs/rectified_sparse_math.md`` and :mod:`dit_attn.sparse` for the math.

Where it applies: self-, joint- and single-stream attention whose query and key tokens are the same image/video
(+ text) sequence: Wan ``attn1``, HunyuanVideo, CogVideoX, FLUX (double and single blocks), SD3 (joint and
SD3.5's image-only ``attn2``). Cross-attention (Wan ``attn2``) and anything else stays dense. Per-query masks
(none of the supported models pass one) make the call fall back to dense.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..call import AttentionCall, SparsePlan, _mask_to_bias
from ..layout import Layout
from .base import Control

logger = logging.getLogger("dit_attn")

_KINDS = ("self", "joint", "single")


_DENSE_REASONS_LOGGED: set = set()


def _stays_dense(layout: Layout, reason: str) -> None:
    """Log (once per family and reason) that a call the control would plan stays dense."""
    key = (layout.family, reason)
    if key not in _DENSE_REASONS_LOGGED:
        _DENSE_REASONS_LOGGED.add(key)
        logger.info("RectifiedSparse: %s calls stay dense (%s)", layout.family, reason)


def _video_first_frame(family: str | None) -> bool:
    from ..families import FAMILIES

    return family in FAMILIES and FAMILIES[family].video_first_frame


_FIRST_FRAME_RULES = (None, True, False, "leading")
_COMPAT = (None, "reference")


def _first_frame_rule(first_frame, compat, family: str | None):
    """The first-frame rule in effect: False, True (blocks holding frame-0 tokens) or "leading" (the first
    ``nVB // T`` blocks of the curve, as the Rectified SpaAttn code). ``None`` = the family's default: Wan-style video
    only, with the reference code's rule under ``compat="reference"``."""
    if first_frame is None:
        if not _video_first_frame(family):
            return False
        return "leading" if compat == "reference" else True
    return first_frame


def _forced_first_frame(plan, rule, grid):
    """bool ``[nVB, nVB]`` first-frame pairs always computed, or None (no rule, or a single frame)."""
    if not rule or grid[0] <= 1:
        return None
    blocks = plan.leading if rule == "leading" else plan.first_frame
    return blocks[:, None] & blocks[None, :]


def _resolve_variant(variant, rectify, gain_aware) -> str:
    from dit_attn.sparse.selection import VARIANTS

    if variant is not None:
        if variant not in VARIANTS:
            raise ValueError(f"RectifiedSparse.variant must be None or one of {VARIANTS}; got {variant!r}")
        return variant
    if not rectify:
        return "block"
    return "full" if gain_aware else "rc"


@dataclass
class RectifiedSparse(Control):
    """Rectified block-sparse attention.

    Args:
        sparsity: fraction of visual key blocks that may be dropped, in ``[0, 1)``; sets the minimum number of
            critical blocks per query block, ``k_min = floor((1 - sparsity) · nVB)`` (RSA's ``sa_drop_rate``).
            ``0`` computes every block (= dense attention).
        tau: cumulative pooled mass that the critical set must reach before ``k_min`` applies (RSA's
            ``p_remain_rates``), in ``[0, 1]``.
        block_size: tokens per query/key block (128 on GPUs; smaller only for tiny models and tests).
        rectify: apply R (and C); ``False`` is plain block-sparse attention.
        gain_aware: run the GAPR test (skipped blocks whose pooled estimate is not trusted get no C).
        neighbors: always compute the blocks holding the 26 spatio-temporal neighbours of a block's tokens.
        dense_layers: fraction of layers, counted from the first (``layer_index / num_layers < dense_layers``),
            kept dense.
        dense_steps: fraction of denoising steps, counted from the first (``step_index / num_steps <
            dense_steps``), kept dense; read from the pipeline's step index, so it holds for any step count.
        variant: ablation switch overriding ``rectify``/``gain_aware``: ``"full"`` (R + C + GAPR), ``"rc"``
            (R + C, no GAPR), ``"r"`` (R only), ``"block"`` (plain block-sparse).
        first_frame: first-frame pairs always computed (video with more than one latent frame only):
            ``True`` = every block holding a token of latent frame 0, x the same blocks (along the 3D curve that
            is 58 of 256 blocks at Wan 480p: 5.1 % of the block pairs forced, 6.0 % at 720p);
            ``"leading"`` = the first ``nVB // T`` blocks of the curve x the same (what the Rectified SpaAttn code
            does; those blocks are a corner column through all frames, not frame 0; 0.22 % of the pairs);
            ``False`` = none; ``None`` = Wan-style video only, ``True`` (``"leading"`` with ``compat="reference"``).
        compat: ``None`` (default) = this library's choices; ``"reference"`` = the Rectified SpaAttn code's choices,
            to reproduce the paper's settings: text may take one of the ``n_I`` slots, a partial last block is pooled
            as if zero-padded, the Gilbert curve always starts along width, ``k_min`` truncates without the float
            guard, and the first-frame rule (when ``first_frame`` is None) is ``"leading"``. See
            ``docs/rectified_sparse.md`` for why the default differs.
        min_tokens: calls with fewer query tokens stay dense (sparsity does not pay below ~30k tokens on GPUs;
            0 = always sparse).
        track_density: per sparse call, append ``(layer_index, step_index, density)`` to ``self.density_log``
            (``density`` is a 0-d device tensor: computed/total key blocks of the visual query blocks) and a
            :class:`dit_attn.sparse.density.DensityRecord` to ``self.density_details`` (the same density split into
            text blocks, neighbours, first-frame pairs, the ``tau`` rule and the ``k_min`` floor, a device tensor).
            No host sync in the call: read them with :func:`dit_attn.sparse.density.density_report`, which gives
            per layer the requested density ``1 - sparsity`` next to the achieved one and the breakdown.

    Example:
        >>> import dit_attn
        >>> from dit_attn.testing import tiny_pipeline, tiny_call_kwargs
        >>> pipe = tiny_pipeline("wan")
        >>> with dit_attn.attach(pipe, dit_attn.RectifiedSparse(sparsity=0.5, block_size=16)):
        ...     frames = pipe(**tiny_call_kwargs("wan")).frames
    """

    sparsity: float = 0.8
    tau: float = 0.3
    block_size: int = 128
    rectify: bool = True
    gain_aware: bool = True
    neighbors: bool = True
    dense_layers: float = 0.0
    dense_steps: float = 0.0
    variant: str | None = None
    first_frame: bool | str | None = None
    min_tokens: int = 0
    track_density: bool = False
    compat: str | None = None
    density_log: list = field(default_factory=list, init=False, repr=False, compare=False)
    density_details: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        def number(name, lo, hi, hi_open=False):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not (lo <= x <= hi) or (hi_open and x == hi):
                bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
                raise ValueError(f"RectifiedSparse.{name} must be a number in {bound}; got {x!r}")

        number("sparsity", 0.0, 1.0, hi_open=True)
        number("tau", 0.0, 1.0)
        number("dense_layers", 0.0, 1.0)
        number("dense_steps", 0.0, 1.0)
        for name in ("rectify", "gain_aware", "neighbors", "track_density"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RectifiedSparse.{name} must be True or False; got {getattr(self, name)!r}")
        if not any(self.first_frame is r or (isinstance(r, str) and self.first_frame == r) for r in _FIRST_FRAME_RULES):
            raise ValueError("RectifiedSparse.first_frame must be None, True, False or \"leading\"; "
                             f"got {self.first_frame!r}")
        if self.compat not in _COMPAT:
            raise ValueError(f"RectifiedSparse.compat must be None or \"reference\"; got {self.compat!r}")
        for name, lo in (("block_size", 1), ("min_tokens", 0)):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < lo:
                raise ValueError(f"RectifiedSparse.{name} must be an int >= {lo}; got {x!r}")
        _resolve_variant(self.variant, self.rectify, self.gain_aware)

    @property
    def resolved_variant(self) -> str:
        """The ablation variant in effect: ``variant`` if set, else from ``rectify`` and ``gain_aware``."""
        return _resolve_variant(self.variant, self.rectify, self.gain_aware)

    # --- where -------------------------------------------------------------------------------------------------
    def applies_to(self, layout: Layout) -> bool:
        if layout.kind not in _KINDS or dict(layout.query_segments) != dict(layout.key_segments):
            return False
        segs = layout.query_segments
        if "image" not in segs or layout.query_len < self.min_tokens:
            return False
        if not set(segs) <= {"image", "text"}:
            _stays_dense(layout, f"token segments {sorted(segs)} (only image and text are planned)")
            return False
        return not self.is_warmup(layout)

    def is_warmup(self, layout: Layout) -> bool:
        """Whether ``layout`` falls in the dense warm-up (first layers or first steps)."""
        if self.dense_layers > 0 and layout.layer_index is not None and layout.num_layers:
            if layout.layer_index / layout.num_layers < self.dense_layers:
                return True
        return bool(layout.state.phase(self))

    def step_phase(self, step_index: int | None, num_steps: int | None) -> bool:
        """Whether the step is in the dense warm-up (``step_index / num_steps < dense_steps``). The forward hook
        computes it once per forward, so a compiled transformer reads this bool, not the step: it recompiles once,
        when the warm-up ends."""
        return bool(self.dense_steps > 0 and step_index is not None and num_steps
                    and step_index / num_steps < self.dense_steps)

    @staticmethod
    def grid_for(layout: Layout) -> tuple[int, int, int]:
        """The token grid of the visual segment; a 1D grid (raster order) when the model reports none that fits."""
        v0, v1 = layout.query_segments["image"]
        grid = layout.grid
        if grid is None or grid[0] * grid[1] * grid[2] != v1 - v0:
            return (1, 1, v1 - v0)
        return tuple(int(g) for g in grid)

    # --- what --------------------------------------------------------------------------------------------------
    def prepare(self, call: AttentionCall) -> AttentionCall:
        from dit_attn.sparse.reorder import token_plan

        mask = call.attn_mask
        key_only = mask is None or (mask.dim() == 4 and mask.shape[-2] == 1 and mask.shape[1] == 1)
        layout = call.layout
        vis = layout.query_segments["image"]
        # A key bias for the image rows only (prompt emphasis) composes: those are exactly the rows we plan.
        rows_only = call.key_bias_rows is not None and call.key_bias is not None and \
            call.key_bias_rows.indices(call.query.shape[1])[:2] == tuple(vis)
        if not key_only or call.sparse is not None or call.extra_keys or \
                (call.key_bias_rows is not None and not rows_only):
            _stays_dense(layout, "a per-query attention mask" if not key_only else "another control's plan")
            return call  # something this control cannot combine with: stay dense
        grid = self.grid_for(layout)
        text = layout.query_segments.get("text")
        n = call.query.shape[1]
        bs = self.block_size
        plan = token_plan(grid, vis, text, n, bs, call.query.device,
                          curve="width" if self.compat == "reference" else "longest")
        nv, nvp = plan.n_vis, plan.n_vis_padded

        # Key bias over the call's keys (other controls' bias + the stock key-padding mask), then permuted.
        def permuted(extra):
            if extra is not None:
                while extra.dim() < 3:
                    extra = extra.unsqueeze(0)
                extra = extra.float()
            if mask is not None:
                m = _mask_to_bias(mask, torch.float32)[:, :, 0, :]  # [B|1, 1, Nk]
                extra = m if extra is None else extra + m
            if extra is None:
                return plan.pad_bias.view(1, 1, -1)
            return extra.index_select(-1, plan.kv_index) + plan.pad_bias

        bias = permuted(call.key_bias)
        dense_bias = permuted(None) if rows_only else None  # text rows: stock mask and padding only

        q = call.query.index_select(1, plan.q_index)
        k = call.key.index_select(1, plan.kv_index)
        v = call.value.index_select(1, plan.kv_index)
        sel = self._select(plan, grid, layout, q, k, v, bias, call.effective_scale)
        call.query, call.key, call.value = q, k, v
        call.key_bias, call.attn_mask, call.key_bias_rows = bias, None, None
        call.sparse = SparsePlan(sel.block_index, sel.block_count, bs, bs, sel.rect_scale, sel.rect_add,
                                 query_rows=slice(0, nv), output_order=plan.out_index, dense_key_bias=dense_bias)
        return call

    # --- selection (forced tables, compat choices, density tracking); called by prepare -----------------------
    def _select(self, plan, grid, layout: Layout, q, k, v, bias, scale):
        """Block selection of one planned call on the permuted ``q, k, v`` ``[B, N, H, D]`` and key ``bias``."""
        from dit_attn.sparse.selection import density_breakdown, k_min_for, select_blocks

        nv, nvp = plan.n_vis, plan.n_vis_padded
        reference = self.compat == "reference"
        neighbors = plan.neighbors if self.neighbors else None
        ff = _forced_first_frame(plan, _first_frame_rule(self.first_frame, self.compat, layout.family), grid)
        forced = neighbors if ff is None else ff if neighbors is None else neighbors | ff
        k_min = k_min_for(self.sparsity, plan.n_vblocks, reference=reference)
        kt = k[:, nvp:].transpose(1, 2) if plan.n_text else None
        sel = select_blocks(
            q[:, :nv].transpose(1, 2), k[:, :nv].transpose(1, 2), v[:, :nv].transpose(1, 2),
            kt, bias[..., nvp:] if plan.n_text else None, forced,
            block_size=plan.block_size, tau=self.tau, k_min=k_min, scale=scale, variant=self.resolved_variant,
            text_slot=reference, pool_padded=reference,
        )
        if self.track_density:
            from dit_attn.sparse.density import DensityRecord

            density = sel.block_count.float().mean() / (plan.n_vblocks + plan.n_tblocks)
            self.density_log.append((layout.layer_index, layout.step_index, density))
            self.density_details.append(DensityRecord(
                layout.layer_index, layout.step_index, self.sparsity, plan.n_vblocks, plan.n_tblocks, k_min,
                density_breakdown(sel, neighbors, ff, plan.n_tblocks)))
        return sel
