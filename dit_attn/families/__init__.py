"""Supported model families, as data.

One :class:`Family` per diffusers transformer class says which attention modules we take over (block lists and
attribute names, in model order), which adapter computes their Q/K/V, where the token grid comes from, how the
pipeline passes the timestep, and the row order of batched classifier-free guidance. Everything else in dit_attn
reads these entries; nothing else knows model classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..layout import COND, UNCOND
from ..tensor_memo import TensorMemo
from . import adapters
from .adapters import Adapter


def _grid_from_latents(patch_t: int, patch: int, frame_axis: int | None, spatial_axes: tuple[int, int]):
    def grid(transformer, kwargs, hidden_states):
        cfg = transformer.config
        pt = getattr(cfg, "patch_size_t", None) or patch_t if frame_axis is not None else 1
        if isinstance(cfg.patch_size, (tuple, list)):
            pt, ph, pw = cfg.patch_size
        else:
            ph = pw = cfg.patch_size
        shape = hidden_states.shape
        frames = -(-shape[frame_axis] // pt) if frame_axis is not None else 1
        return frames, shape[spatial_axes[0]] // ph, shape[spatial_axes[1]] // pw

    return grid


def _flux_grid(transformer, kwargs, hidden_states):
    img_ids = kwargs.get("img_ids")
    if img_ids is None:
        return None
    # Positions are (0, row, col). Reading them is a host sync, so it happens once per img_ids tensor: the
    # pipelines pass the same tensor at every step (memo on the transformer, checked by identity and version).
    memo = getattr(transformer, "_dit_attn_grid_memo", None)
    if memo is None:
        memo = TensorMemo()
        try:
            transformer._dit_attn_grid_memo = memo
        except (AttributeError, TypeError):  # a transformer that refuses attributes: read every forward
            pass
    return memo.get(img_ids, _grid_of_ids)


def _grid_of_ids(img_ids: torch.Tensor) -> tuple[int, int, int]:
    ids = img_ids[0] if img_ids.dim() == 3 else img_ids
    rows, cols = (int(x) + 1 for x in ids[-1, 1:3].tolist())
    return 1, rows, cols


@dataclass(frozen=True)
class Family:
    name: str
    transformer_class: str
    sites: tuple[tuple[str, str, str], ...]  # (block list, attention attribute, kind hint)
    adapter: Adapter
    grid: Callable
    timestep_scale: float = 1.0  # the pipeline passes scheduler timestep / timestep_scale to the transformer
    batched_cfg_order: tuple[str, str] = (UNCOND, COND)  # row halves when cond and uncond share a forward


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd3", "SD3Transformer2DModel",
               (("transformer_blocks", "attn", "joint"), ("transformer_blocks", "attn2", "self")),
               adapters.SD3, _grid_from_latents(1, 2, None, (2, 3))),
        Family("flux", "FluxTransformer2DModel",
               (("transformer_blocks", "attn", "joint"), ("single_transformer_blocks", "attn", "single")),
               adapters.FLUX, _flux_grid, timestep_scale=1000.0),
        Family("wan", "WanTransformer3DModel",
               (("blocks", "attn1", "self"), ("blocks", "attn2", "cross")),
               adapters.WAN, _grid_from_latents(1, 2, 2, (3, 4))),
        Family("hunyuan_video", "HunyuanVideoTransformer3DModel",
               (("transformer_blocks", "attn", "joint"), ("single_transformer_blocks", "attn", "single")),
               adapters.HUNYUAN_VIDEO, _grid_from_latents(1, 2, 2, (3, 4))),
        Family("cogvideox", "CogVideoXTransformer3DModel",
               (("transformer_blocks", "attn1", "joint"),),
               adapters.COGVIDEOX, _grid_from_latents(1, 2, 1, (3, 4))),
    )
}


def family_of(transformer: torch.nn.Module) -> Family:
    """The :class:`Family` of a diffusers transformer, or a ``ValueError`` naming the supported ones."""
    for cls in type(transformer).__mro__:
        for fam in FAMILIES.values():
            if cls.__name__ == fam.transformer_class:
                return fam
    supported = ", ".join(f"{f.name} ({f.transformer_class})" for f in FAMILIES.values())
    raise ValueError(
        f"dit_attn does not support {type(transformer).__name__}; supported model families: {supported}"
    )


def attention_sites(transformer: torch.nn.Module, family: Family):
    """Yield ``(module_name, block_list, block_index, kind, module)`` for every attention module we take over."""
    for list_name in dict.fromkeys(s[0] for s in family.sites):
        blocks = getattr(transformer, list_name, None)
        if blocks is None:
            continue
        for index, block in enumerate(blocks):
            for s_list, attr, kind in family.sites:
                if s_list != list_name:
                    continue
                module = getattr(block, attr, None)
                if module is not None:
                    yield f"{list_name}.{index}.{attr}", list_name, index, kind, module
