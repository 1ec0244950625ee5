"""Rasterisation of ShapesWorld scenes: images, videos, spatial conditions and subject references.

Everything is numpy-only and deterministic. Objects are rasterised with 4x4 supersampling (antialiased
coverage) inside their own pixel window and composited over a flat neutral background; the scene samples
objects that never overlap, so compositing order does not matter.

Conventions: images are ``uint8`` arrays ``(H, W, 3)``, videos ``(F, H, W, 3)``, single-channel conditions
``(H, W)`` ``uint8``. Normalised coordinate ``x`` maps to pixel coordinate ``x * size`` (pixel ``j`` covers
``[j, j + 1)``). Frame ``f`` of an ``F``-frame video shows the scene at time ``t = f / (F - 1)``.

Conditions (for multi-condition / control adapters), all aligned with :func:`render_image` at ``t``:

* :func:`render_label_map` - instance labels (object ``k`` -> ``k + 1``) where an object covers >= half a pixel.
* :func:`render_mask` - binary object mask (0 / 255): union of the instance labels.
* :func:`render_edges` - one-pixel object contours (0 / 255): labelled pixels with a 4-neighbour of another label
  (outer silhouettes and inner contours such as a ring's hole; no texture edges inside subject sprites).
* :func:`render_depth` - a depth-like (near = bright) map: the background is a ground plane brightening towards the
  bottom; each object is a slightly domed plate whose brightness grows with its footing (bottom edge), so lower
  objects read as nearer.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .geometry import EXTENTS, inside, subject_texture
from .world import BACKGROUNDS, COLOURS, Scene, ShapeObject

SUPERSAMPLE = 4
VALID_SIZES = (32, 64, 128)
"""Resolutions the world is designed for (others work but objects get tiny below 32)."""


def _raster(shape: str, colour: Optional[str], cx: float, cy: float, r: float, height: int, width: int,
            supersample: int = SUPERSAMPLE, shading: bool = False):
    """Antialiased coverage of one object (centre ``(cx, cy)``, radius ``r``, all in pixels) in its pixel window.

    Returns ``(y0, x0, coverage (h, w), colour (h, w, 3), dome (h, w) or None)``, or None when the window is
    empty. ``colour`` is the mean texture colour over the covered subsamples (constant for plain shapes), ``dome``
    the covered-sample mean of ``1 - rho^2`` (used by the depth map).
    """
    u0, v0, u1, v1 = EXTENTS[shape]
    x0, x1 = max(0, int(math.floor(cx + u0 * r))), min(width, int(math.ceil(cx + u1 * r)))
    y0, y1 = max(0, int(math.floor(cy + v0 * r))), min(height, int(math.ceil(cy + v1 * r)))
    if x1 <= x0 or y1 <= y0:
        return None
    s = supersample
    h, w = y1 - y0, x1 - x0
    u = (((x0 + (np.arange(w * s) + 0.5) / s) - cx) / r)[None, :]
    v = (((y0 + (np.arange(h * s) + 0.5) / s) - cy) / r)[:, None]
    ins = inside(shape, u, v)
    insf = ins.astype(np.float32)
    cov = insf.reshape(h, s, w, s).mean(axis=(1, 3))
    if colour is None:  # a subject sprite: average its texture over the covered subsamples
        tex = subject_texture(shape, np.broadcast_to(u, ins.shape), np.broadcast_to(v, ins.shape))
        tsum = (tex * insf[..., None]).reshape(h, s, w, s, 3).mean(axis=(1, 3))
        rgb = tsum / np.maximum(cov, 1e-6)[..., None]
    else:
        rgb = np.broadcast_to(np.asarray(COLOURS[colour], dtype=np.float32), (h, w, 3))
    dome = None
    if shading:
        rho2 = np.minimum(u * u + v * v, 1.0)
        dome = ((1.0 - rho2) * insf).reshape(h, s, w, s).mean(axis=(1, 3)) / np.maximum(cov, 1e-6)
    return y0, x0, cov, rgb, dome


def _rasterize(obj: ShapeObject, t: float, size: int, shading: bool = False):
    """:func:`_raster` for a scene object at time ``t`` in a ``size x size`` image."""
    cx, cy = obj.center_at(t)
    return _raster(obj.shape, obj.colour, cx * size, cy * size, obj.radius * size, size, size, shading=shading)


def _frame_time(frame: int, frames: int) -> float:
    return 0.0 if frames <= 1 else frame / (frames - 1)


def render_image(scene: Scene, size: int = 64, t: float = 0.0) -> np.ndarray:
    """Render ``scene`` at time ``t`` as an antialiased ``(size, size, 3)`` uint8 RGB image."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[...] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    for obj in scene.objects:
        _composite(img, _rasterize(obj, t, size))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_video(scene: Scene, size: int = 64, frames: int = 9) -> np.ndarray:
    """Render ``frames`` frames (``(F, size, size, 3)`` uint8); frame ``f`` is at time ``f / (frames - 1)``."""
    return np.stack([render_image(scene, size, _frame_time(f, frames)) for f in range(frames)])


def render_label_map(scene: Scene, size: int = 64, t: float = 0.0) -> np.ndarray:
    """Instance label map ``(size, size)`` int32: object ``k`` -> ``k + 1`` where it covers >= 0.5 of a pixel."""
    labels = np.zeros((size, size), dtype=np.int32)
    for k, obj in enumerate(scene.objects):
        res = _rasterize(obj, t, size)
        if res is None:
            continue
        y0, x0, cov, _, _ = res
        h, w = cov.shape
        win = labels[y0:y0 + h, x0:x0 + w]
        win[cov >= 0.5] = k + 1
    return labels


def render_mask(scene: Scene, size: int = 64, t: float = 0.0) -> np.ndarray:
    """Binary object mask ``(size, size)`` uint8, 255 on objects (including subjects), 0 elsewhere."""
    return np.where(render_label_map(scene, size, t) > 0, 255, 0).astype(np.uint8)


def label_edges(labels: np.ndarray) -> np.ndarray:
    """Boolean inner contour of a label map: labelled pixels with a 4-neighbour of a different label."""
    lab = np.pad(labels, 1, mode="constant", constant_values=0)
    c = lab[1:-1, 1:-1]
    diff = (c != lab[:-2, 1:-1]) | (c != lab[2:, 1:-1]) | (c != lab[1:-1, :-2]) | (c != lab[1:-1, 2:])
    return (c > 0) & diff


def render_edges(scene: Scene, size: int = 64, t: float = 0.0) -> np.ndarray:
    """Edge condition ``(size, size)`` uint8: 255 on one-pixel object contours (see the module docstring)."""
    return np.where(label_edges(render_label_map(scene, size, t)), 255, 0).astype(np.uint8)


def render_depth(scene: Scene, size: int = 64, t: float = 0.0) -> np.ndarray:
    """Depth-like condition ``(size, size)`` uint8, brighter = nearer (see the module docstring)."""
    ys = (np.arange(size, dtype=np.float32) + 0.5) / size
    depth = np.broadcast_to((30.0 + 80.0 * ys)[:, None], (size, size)).copy()
    for obj in scene.objects:
        res = _rasterize(obj, t, size, shading=True)
        if res is None:
            continue
        y0, x0, cov, _, dome = res
        footing = obj.bbox(t)[3]
        value = 110.0 + 110.0 * min(max(footing, 0.0), 1.0) + 25.0 * dome
        h, w = cov.shape
        win = depth[y0:y0 + h, x0:x0 + w]
        win[...] = win * (1.0 - cov) + value * cov
    return np.clip(np.rint(depth), 0, 255).astype(np.uint8)


def render_conditions(scene: Scene, size: int = 64, t: float = 0.0) -> dict[str, np.ndarray]:
    """All spatial conditions of ``scene``: ``{"edge", "mask", "depth"}``, each ``(size, size)`` uint8."""
    return {"edge": render_edges(scene, size, t), "mask": render_mask(scene, size, t),
            "depth": render_depth(scene, size, t)}


def _composite(img: np.ndarray, res) -> None:
    if res is None:
        return
    y0, x0, cov, colour, _ = res
    h, w = cov.shape
    win = img[y0:y0 + h, x0:x0 + w]
    win[...] = win * (1.0 - cov[..., None]) + colour * cov[..., None]


def render_subject_reference(subject: str, size: int = 64, background: str = "white",
                             radius: float = 0.32, center: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Reference image of a subject sprite alone: ``(size, size, 3)`` uint8, sprite of ``radius`` at ``center``."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[...] = np.asarray(BACKGROUNDS[background], dtype=np.float32)
    _composite(img, _raster(subject, None, center[0] * size, center[1] * size, radius * size, size, size))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_sprite(subject: str, radius_px: float, supersample: int = SUPERSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """A subject sprite of pixel radius ``radius_px`` centred in a tight window with a one-pixel border.

    Returns ``(coverage (h, w), rgb (h, w, 3))``; the evaluator's subject detector uses it as a template.
    """
    u0, v0, u1, v1 = EXTENTS[subject]
    w = int(math.ceil((u1 - u0) * radius_px)) + 2
    h = int(math.ceil((v1 - v0) * radius_px)) + 2
    cx, cy = w / 2 - (u0 + u1) / 2 * radius_px, h / 2 - (v0 + v1) / 2 * radius_px
    _, _, cov, rgb, _ = _raster(subject, None, cx, cy, radius_px, h, w, supersample)
    full_cov = np.zeros((h, w), np.float32)
    full_rgb = np.zeros((h, w, 3), np.float32)
    y0 = max(0, int(math.floor(cy + v0 * radius_px)))
    x0 = max(0, int(math.floor(cx + u0 * radius_px)))
    full_cov[y0:y0 + cov.shape[0], x0:x0 + cov.shape[1]] = cov
    full_rgb[y0:y0 + cov.shape[0], x0:x0 + cov.shape[1]] = rgb
    return full_cov, full_rgb


def to_tensor_image(img: np.ndarray):
    """uint8 ``(..., H, W, C)`` -> float32 torch tensor ``(..., C, H, W)`` in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(127.5).sub_(1.0)
    return x.movedim(-1, -3).contiguous()


def grey_to_rgb(cond: np.ndarray) -> np.ndarray:
    """Single-channel ``(H, W)`` uint8 -> ``(H, W, 3)`` by replication."""
    return np.repeat(cond[..., None], 3, axis=-1)
