"""Condition images → packed latent tokens, position ids and PAA alignment (``docs/multi_condition_math.md``,
sections 1 and 6).

Conditions are encoded with the pipeline's own VAE and packed exactly as the pipeline packs its latents, so each
condition is a grid of ``h x w`` tokens like the image. Two layouts (``layout=``):

* ``"flux"`` (FLUX.1, Chroma): ``latent_dist.mode()``, then the VAE's shift and scaling, 2x2 patches packed by the
  pipeline's ``_pack_latents``; ids ``(0, row, col)``;
* ``"flux2"`` (FLUX.2): the pipeline's own ``_encode_vae_image`` (``argmax`` latents, 2x2 patchify, the VAE's
  latent batch-norm statistics) and ``_pack_latents``; ids ``(T, row, col, L)`` with ``L = 0``.

Position ids (our defaults, labelled choices; they must match what the condition adapters were trained with):

* spatial, same grid as the image: the image's own ids (``(0, row, col)``, FLUX.2 ``(0, row, col, 0)``; RoPE then
  cancels in the PAA logit);
* spatial at another resolution (``scale`` ≠ 1): token centres interpolated onto the image grid,
  ``(r + 0.5)·H/h − 0.5`` (EasyControl's reading); PAA aligns image token ``i`` to the nearest condition token
  by centres, ``a(i) = floor((i + 0.5)·h/H)`` per axis;
* subject ``k`` (0-based): FLUX.1/Chroma: OminiControl's shift, columns ``− (k + 1)·w``; FLUX.2: its own grid at
  time coordinate ``T = 10·(k + 1)``, the layout ``Flux2Pipeline`` gives its reference images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ConditionTokens:
    """One encoded condition: packed tokens ``[B|1, h*w, C]``, its token grid ``(h, w)`` and position ids
    ``[h*w, 3]`` (FLUX.2: ``[h*w, 4]``; filled in by :func:`spatial_ids` / :func:`subject_ids` when left ``None``)."""

    tokens: torch.Tensor
    grid: tuple[int, int]
    ids: torch.Tensor | None = None

    def __post_init__(self):
        if not isinstance(self.tokens, torch.Tensor) or self.tokens.dim() != 3:
            raise TypeError("ConditionTokens.tokens must be a [batch, tokens, channels] tensor, got "
                            f"{getattr(self.tokens, 'shape', type(self.tokens).__name__)}")
        h, w = self.grid
        if self.tokens.shape[1] != h * w:
            raise ValueError(f"ConditionTokens: {self.tokens.shape[1]} tokens for a {h}x{w} grid")


def grid_ids(h: int, w: int, row_scale: float = 1.0, col_scale: float = 1.0, col_offset: float = 0.0,
             device=None, dtype=torch.float32) -> torch.Tensor:
    """``[h*w, 3]`` ids ``(0, row, col)`` with token centres mapped by the scales (1: FLUX's own ids)."""
    rows = (torch.arange(h, dtype=torch.float64) + 0.5) * row_scale - 0.5
    cols = (torch.arange(w, dtype=torch.float64) + 0.5) * col_scale - 0.5 + col_offset
    ids = torch.zeros(h, w, 3, dtype=torch.float64)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


LAYOUTS = ("flux", "flux2")
FLUX2_REFERENCE_T = 10  # Flux2Pipeline._prepare_image_ids: reference image i at T = 10 + 10·i


def _four_axes(ids: torch.Tensor, t: float = 0.0) -> torch.Tensor:
    """``(0, row, col)`` → FLUX.2's ``(T, row, col, L = 0)``."""
    out = torch.zeros(ids.shape[0], 4, dtype=ids.dtype, device=ids.device)
    out[:, 0] = t
    out[:, 1:3] = ids[:, 1:3]
    return out


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown condition token layout {layout!r}; known: {LAYOUTS}")


def spatial_ids(cond_grid, image_grid, device=None, dtype=torch.float32, layout: str = "flux") -> torch.Tensor:
    """Spatial condition ids: shared with the image, interpolated onto its grid for another resolution."""
    _check_layout(layout)
    (h, w), (hh, ww) = cond_grid, image_grid
    ids = grid_ids(h, w, hh / h, ww / w, device=device, dtype=dtype)
    return _four_axes(ids) if layout == "flux2" else ids


def subject_ids(cond_grid, index: int, device=None, dtype=torch.float32, layout: str = "flux") -> torch.Tensor:
    """Subject ``index`` ids: its own grid, shifted left by ``(index + 1)`` widths (OminiControl); FLUX.2: its own
    grid at ``T = 10·(index + 1)`` (how ``Flux2Pipeline`` places reference images)."""
    _check_layout(layout)
    h, w = cond_grid
    if layout == "flux2":
        return _four_axes(grid_ids(h, w, device=device, dtype=dtype), FLUX2_REFERENCE_T * (index + 1))
    return grid_ids(h, w, col_offset=-(index + 1) * w, device=device, dtype=dtype)


def aligned_index(image_grid, cond_grid, device=None) -> torch.Tensor:
    """PAA alignment ``[H*W]`` (long): the condition token nearest to each image token, by token centres."""
    (hh, ww), (h, w) = image_grid, cond_grid
    rows = torch.clamp(((torch.arange(hh, dtype=torch.float64) + 0.5) * h / hh).floor().long(), max=h - 1)
    cols = torch.clamp(((torch.arange(ww, dtype=torch.float64) + 0.5) * w / ww).floor().long(), max=w - 1)
    return (rows[:, None] * w + cols[None, :]).reshape(-1).to(device)


def _to_pixels(image, height: int, width: int, what: str) -> torch.Tensor:
    """A PIL image, or a tensor in [-1, 1] (``[3, H, W]`` or ``[B, 3, H, W]``), as ``[B, 3, height, width]``."""
    from PIL import Image

    if isinstance(image, Image.Image):
        import numpy as np

        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        image = torch.from_numpy(arr).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{what}: expected a PIL image or a tensor in [-1, 1] of shape [3, H, W] or [B, 3, H, W]; "
                        f"got {type(image).__name__}")
    x = image if image.dim() == 4 else image.unsqueeze(0) if image.dim() == 3 else None
    if x is None or x.shape[1] != 3:
        raise ValueError(f"{what}: expected 3 channels as [3, H, W] or [B, 3, H, W]; got shape {tuple(image.shape)}")
    x = x.float()
    if x.shape[-2:] != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                            antialias=True)
    return x


def check_aspect(image, image_hw: tuple[int, int], what: str, tolerance: float = 0.02) -> None:
    """A spatial condition must have the output's aspect ratio (it is aligned token by token)."""
    size = getattr(image, "size", None)
    if isinstance(image, torch.Tensor):
        h, w = image.shape[-2:]
    elif isinstance(size, tuple) and len(size) == 2:
        w, h = size
    else:
        return
    ar, target = w / h, image_hw[1] / image_hw[0]
    if abs(ar / target - 1) > tolerance:
        raise ValueError(f"{what} is {w}x{h} (W x H), aspect {ar:.3f}, but the output is {image_hw[1]}x"
                         f"{image_hw[0]}, aspect {target:.3f}: spatial conditions are aligned with the output "
                         "token by token, so they need its aspect ratio")


@torch.no_grad()
def encode_image(pipe, image, grid: tuple[int, int], what: str = "condition", layout: str = "flux") -> torch.Tensor:
    """VAE-encode ``image`` at the pixel size of token grid ``grid`` and pack it as the pipeline packs its latents:
    ``[B, h*w, 4*C]`` (``layout``: ``"flux"`` for FLUX.1 and Chroma, ``"flux2"`` for FLUX.2)."""
    _check_layout(layout)
    h, w = grid
    f = pipe.vae_scale_factor * 2
    pixels = _to_pixels(image, h * f, w * f, what)
    vae = pipe.vae
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    if layout == "flux2":  # argmax latents, 2x2 patchify, the VAE's latent batch-norm statistics
        return pipe._pack_latents(pipe._encode_vae_image(pixels, generator=None))
    latents = vae.encode(pixels).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = (latents - shift) * vae.config.scaling_factor
    b, c, lh, lw = latents.shape
    return pipe._pack_latents(latents, b, c, lh, lw)
