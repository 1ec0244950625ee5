"""Where each family's token grid (frames, rows, cols after patching) comes from.

Each function here returns a ``grid(transformer, forward_inputs, hidden_states)`` for a :class:`Family` entry.
The grid is computed lazily, once per forward, only when a control asks for it.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..tensor_memo import TensorMemo


def _patch_sizes(cfg) -> tuple[int, int, int]:
    patch = cfg.patch_size
    if isinstance(patch, (tuple, list)):
        return tuple(int(p) for p in patch) if len(patch) == 3 else (1, int(patch[0]), int(patch[1]))
    return int(getattr(cfg, "patch_size_t", None) or 1), int(patch), int(patch)


def from_latents(patch_t: int, frame_axis: int | None, spatial_axes: tuple[int, int]) -> Callable:
    """Grid of a latent ``hidden_states`` tensor (``[B, C, H, W]``, ``[B, C, F, H, W]`` or ``[B, F, C, H, W]``)
    divided by the transformer's patch sizes."""

    def grid(transformer, inputs, hidden_states):
        if not isinstance(hidden_states, torch.Tensor):
            return None
        pt, ph, pw = _patch_sizes(transformer.config)
        if frame_axis is None:
            pt = 1
        shape = hidden_states.shape
        frames = -(-shape[frame_axis] // pt) if frame_axis is not None else 1
        return frames, shape[spatial_axes[0]] // ph, shape[spatial_axes[1]] // pw

    return grid


def _memo(transformer) -> TensorMemo | None:
    memo = getattr(transformer, "_dit_attn_grid_memo", None)
    if memo is None:
        memo = TensorMemo()
        try:
            transformer._dit_attn_grid_memo = memo
        except (AttributeError, TypeError):  # a transformer that refuses attributes: read every forward
            pass
    return memo


def ids_grid(ids: torch.Tensor, row_axis: int = 1, col_axis: int = 2) -> tuple[int, int, int]:
    """(1, rows, cols) from position ids ``[N, A]`` (or ``[B, N, A]``) whose last token is the last row/col."""
    ids = ids[0] if ids.dim() == 3 else ids
    last = ids[-1]
    return 1, int(last[row_axis]) + 1, int(last[col_axis]) + 1


def from_ids(name: str, row_axis: int = 1, col_axis: int = 2) -> Callable:
    """Grid from a forward argument of position ids (FLUX's ``img_ids``: ``(0, row, col)`` per token).

    Reading ids is a host sync, so it happens once per ids tensor: the pipelines pass the same tensor at every
    step (memo on the transformer, checked by identity and version).
    """

    def grid(transformer, inputs, hidden_states):
        ids = inputs.get(name)
        if not isinstance(ids, torch.Tensor):
            return None
        return _memo(transformer).get(ids, lambda t: ids_grid(t, row_axis, col_axis))

    return grid


def from_shapes(name: str) -> Callable:
    """Grid from a forward argument listing ``(frames, rows, cols)`` per batch item (Qwen-Image's
    ``img_shapes``: a list, per item a list of shapes, the first being the generated image)."""

    def grid(transformer, inputs, hidden_states):
        shapes = inputs.get(name)
        while isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], (list, tuple)):
            shapes = shapes[0]
        if not shapes or len(shapes) != 3:
            return None
        return tuple(int(s) for s in shapes)

    return grid


def from_arguments(frames: str, rows: str, cols: str) -> Callable:
    """Grid from integer forward arguments (LTX-Video's ``num_frames``, ``height``, ``width`` in latent tokens)."""

    def grid(transformer, inputs, hidden_states):
        values = [inputs.get(n) for n in (frames, rows, cols)]
        if any(v is None for v in values):
            return None
        return tuple(int(v) for v in values)

    return grid


def from_latent_list(name: str, patch: str = "patch_size", frame_patch: str = "f_patch_size") -> Callable:
    """Grid of the first of a list of latents ``[C, F, H, W]`` (Z-Image's ``x``), divided by the patch sizes the
    forward receives (``patch_size``, ``f_patch_size``; defaults 2 and 1)."""

    def grid(transformer, inputs, hidden_states):
        latents = inputs.get(name)
        if not isinstance(latents, (list, tuple)) or not latents or latents[0].dim() != 4:
            return None
        p, pf = int(inputs.get(patch) or 2), int(inputs.get(frame_patch) or 1)
        _, f, h, w = latents[0].shape
        return -(-f // pf), h // p, w // p

    return grid
