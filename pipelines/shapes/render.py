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


# ------------------------------------------------------------------------------------------------------------------
# Hand-drawn edge maps (what users upload): wobbly strokes 1-3 px wide, gaps, canny-like noise, shapes outside the
# world's vocabulary.

HAND_STYLES: dict[str, dict] = {
    # width: stroke width in pixels (uniform in the range); jitter: RMS displacement of the outline (px, a smooth
    # random warp, at most 0.12 of the object's radius); gaps: breaks in each outline; dots / strokes: isolated
    # noise pixels / short stray segments per image; retrace: probability that an outline is drawn twice (a second,
    # independent wobble); oov: probability that an object is drawn as an ellipse or a blob instead of its shape;
    # scale: per-axis size factor.
    "thick": dict(width=(2.0, 3.0), jitter=(0.3, 0.7), gaps=(0, 0), dots=(0, 0), strokes=(0, 0), retrace=0.0,
                  oov=0.0, scale=(0.92, 1.08)),
    "marker": dict(width=(2.0, 3.0), jitter=(0.5, 1.0), gaps=(0, 1), dots=(0, 2), strokes=(0, 1), retrace=0.0,
                   oov=0.4, scale=(0.8, 1.3)),
    "sketchy": dict(width=(1.0, 2.0), jitter=(0.6, 1.2), gaps=(1, 2), dots=(0, 3), strokes=(0, 1), retrace=0.5,
                    oov=0.25, scale=(0.8, 1.3)),
    "canny": dict(width=(1.0, 1.0), jitter=(0.3, 0.7), gaps=(1, 3), dots=(4, 14), strokes=(1, 4), retrace=0.0,
                  oov=0.25, scale=(0.9, 1.1)),
}
"""Presets of :func:`hand_drawing`; ``"hand"`` picks one of them per drawing (from the drawing's seed)."""

OOV_SHAPES = ("ellipse", "blob")
"""Shapes outside the ShapesWorld vocabulary that a hand drawing may use in place of an object's shape."""


def hand_style_names() -> tuple[str, ...]:
    """The accepted ``style`` values of :func:`hand_drawing`: ``"hand"`` (a random preset) and every preset."""
    return ("hand",) + tuple(HAND_STYLES)


class HandDrawing:
    """A hand-drawn edge map of a scene and what it means (all ``(size, size)``).

    ``edges``: the map (uint8 0 / 255: strokes, gaps and noise); ``outline``: the intended one-pixel contour of the
    drawn silhouettes (uint8 0 / 255, same definition as :func:`render_edges`; what an image following the drawing
    should show, and what fidelity is scored against); ``mask``: the drawn silhouettes (uint8 0 / 255);
    ``labels``: their instance labels (object ``k`` -> ``k + 1``); ``style``: the preset used; ``shapes``: the shape
    drawn for each object (its own, or one of :data:`OOV_SHAPES`). :func:`render_hand_drawn_image` renders the
    scene's objects with the drawn silhouettes (what a training image for the drawing looks like).
    """

    def __init__(self, edges, outline, mask, labels, style, shapes, coverage, size):
        self.edges, self.outline, self.mask, self.labels = edges, outline, mask, labels
        self.style, self.shapes, self.size = style, shapes, size
        self._coverage = coverage  # per object: (coverage (size, size) float32, texture colour or None)


def _smooth_field(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, rms: float, waves: int = 3):
    """A smooth random 2-d displacement field (sum of plane waves, wavelengths 10-24 px) with RMS ``rms`` per axis."""
    out = []
    for _ in range(2):
        f = np.zeros(np.broadcast(xs, ys).shape, np.float32)
        for _ in range(waves):
            lam = rng.uniform(10.0, 24.0)
            ang = rng.uniform(0.0, 2 * np.pi)
            k = 2 * np.pi / lam
            f += np.sin(k * (np.cos(ang) * xs + np.sin(ang) * ys) + rng.uniform(0.0, 2 * np.pi)).astype(np.float32)
        out.append(f * (rms * math.sqrt(2.0 / waves)))
    return out


def _oov_inside(kind: str, params: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if kind == "ellipse":
        a, b, ang = params
        c, s = math.cos(ang), math.sin(ang)
        uu, vv = c * u + s * v, -s * u + c * v
        return (uu / a) ** 2 + (vv / b) ** 2 <= 1.0
    harmonics = params  # blob: rho <= 0.9 * (1 + sum c_k cos(k theta + phi_k))
    theta = np.arctan2(v, u)
    rho = np.sqrt(u * u + v * v)
    bound = np.ones_like(theta)
    for k, c, phi in harmonics:
        bound = bound + c * np.cos(k * theta + phi)
    return rho <= 0.9 * bound


def _stroke(points: np.ndarray, size: int, radius: float, chunk: int = 1024) -> np.ndarray:
    """Boolean ``(size, size)``: the pixels whose centre lies within ``radius`` of one of ``points`` ``[P, 2]``
    (x, y in pixels), computed inside the points' bounding box (grown by ``radius``) only."""
    out = np.zeros((size, size), bool)
    if len(points) == 0:
        return out
    pts = points.astype(np.float32)
    x0, y0 = (max(0, int(math.floor(pts[:, i].min() - radius - 1))) for i in (0, 1))
    x1, y1 = (min(size, int(math.ceil(pts[:, i].max() + radius + 1))) for i in (0, 1))
    cy, cx = np.meshgrid(np.arange(y0, y1, dtype=np.float32) + 0.5, np.arange(x0, x1, dtype=np.float32) + 0.5,
                         indexing="ij")
    centres = np.stack([cx.ravel(), cy.ravel()], 1)
    hit = np.zeros(len(centres), bool)
    r2 = radius * radius
    for start in range(0, len(centres), chunk):
        d = centres[start:start + chunk, None, :] - pts[None, :, :]
        hit[start:start + chunk] = (d * d).sum(-1).min(1) <= r2
    out[y0:y1, x0:x1] = hit.reshape(y1 - y0, x1 - x0)
    return out


def hand_drawing(scene: Scene, size: int = 64, style: str = "hand", seed: int = 0, t: float = 0.0,
                 supersample: int = SUPERSAMPLE) -> HandDrawing:
    """Draw ``scene``'s objects as a person would: see :class:`HandDrawing` and :data:`HAND_STYLES`.

    Each object's silhouette is warped by a smooth random field (RMS ``jitter`` px, at most 0.12 radius), scaled
    per axis, rotated a few degrees, and with probability ``oov`` replaced by an ellipse or a blob of the same size;
    its contour is
    drawn as a stroke ``width`` px wide (pixels within ``width / 2`` of the contour), broken by ``gaps``, sometimes
    retraced; the image gets ``dots`` isolated noise pixels and ``strokes`` short stray segments. Deterministic in
    ``(scene, size, style, seed, t)``; nothing is drawn outside the image (contours are clipped to it).

    >>> from dit_attn.pipelines.shapes.world import condition_scene
    >>> d = hand_drawing(condition_scene(0, "heldout", 0, 0.0), style="thick", seed=1)
    >>> d.edges.shape, d.edges.dtype, sorted(set(d.edges.ravel().tolist()))
    ((64, 64), dtype('uint8'), [0, 255])
    >>> bool((d.edges > 0).sum() > (d.outline > 0).sum())  # strokes 2-3 px wide vs the one-pixel outline
    True
    """
    if style not in hand_style_names():
        raise ValueError(f"style must be one of {hand_style_names()}, got {style!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x4A4E44, hand_style_names().index(style), int(size)])
    if style == "hand":
        style = list(HAND_STYLES)[int(rng.integers(len(HAND_STYLES)))]
    p = HAND_STYLES[style]
    s = supersample
    hi = size * s
    xs = ((np.arange(hi, dtype=np.float32) + 0.5) / s)[None, :]  # sample centres, in pixels
    ys = ((np.arange(hi, dtype=np.float32) + 0.5) / s)[:, None]
    labels_hi = np.zeros((hi, hi), np.int32)
    coverage, shapes, retraces = [], [], []
    for k, obj in enumerate(scene.objects):
        cx, cy = obj.center_at(t)
        cx, cy, r = cx * size, cy * size, obj.radius * size
        jitter = min(rng.uniform(*p["jitter"]), 0.12 * r)
        sx, sy = rng.uniform(*p["scale"]), rng.uniform(*p["scale"])
        rot = math.radians(rng.uniform(-8.0, 8.0))
        shape = obj.shape
        oov = None
        if rng.random() < p["oov"]:
            shape = OOV_SHAPES[int(rng.integers(len(OOV_SHAPES)))]
            if shape == "ellipse":
                a = rng.uniform(0.55, 0.85)
                oov = (1.0, a, rng.uniform(0, np.pi)) if rng.random() < 0.5 else (a, 1.0, rng.uniform(0, np.pi))
            else:
                oov = tuple((kk, rng.uniform(0.04, 0.15), rng.uniform(0, 2 * np.pi)) for kk in (2, 3, 4))

        def silhouette(field):
            dx, dy = field
            x, y = xs + dx - cx, ys + dy - cy
            c, sn = math.cos(rot), math.sin(rot)
            u = (c * x + sn * y) / (r * sx)
            v = (-sn * x + c * y) / (r * sy)
            return (_oov_inside(shape, oov, u, v) if oov is not None else inside(shape, u, v)), u, v

        ins, u, v = silhouette(_smooth_field(rng, xs, ys, jitter))
        labels_hi[ins] = k + 1
        cov = ins.astype(np.float32).reshape(size, s, size, s).mean(axis=(1, 3))
        tex = None
        if obj.is_subject:  # a sprite keeps its texture inside the drawn silhouette
            t3 = subject_texture(obj.shape, np.clip(u, -1.5, 1.5), np.clip(v, -1.5, 1.5)) * ins[..., None]
            tex = t3.reshape(size, s, size, s, 3).mean(axis=(1, 3)) / np.maximum(cov, 1e-6)[..., None]
        coverage.append((cov, tex))
        shapes.append(shape)
        retraces.append(silhouette(_smooth_field(rng, xs, ys, jitter))[0] if rng.random() < p["retrace"] else None)
    # the intended outline: instance labels at >= half coverage, as render_label_map
    labels = np.zeros((size, size), np.int32)
    for k, (cov, _) in enumerate(coverage):
        labels[cov >= 0.5] = k + 1
    outline = label_edges(labels)
    # strokes: pixels within width / 2 of the supersampled contour (minus the gaps), per object
    drawn = np.zeros((size, size), bool)
    for k in range(len(scene.objects)):
        width = rng.uniform(*p["width"])
        radius = max(0.55, width / 2)
        contour = [label_edges((labels_hi == k + 1).astype(np.int32))]
        if retraces[k] is not None:
            contour.append(label_edges(retraces[k].astype(np.int32)))
        pts = np.concatenate([np.argwhere(c)[:, ::-1] for c in contour]).astype(np.float32)
        pts = (pts + 0.5) / s
        for _ in range(int(rng.integers(p["gaps"][0], p["gaps"][1] + 1))):
            if len(pts) == 0:
                break
            centre = pts[int(rng.integers(len(pts)))]
            gap = radius + rng.uniform(1.0, 2.5)
            pts = pts[np.hypot(*(pts - centre).T) > gap]
        drawn |= _stroke(pts, size, radius)
    # canny-like noise: isolated pixels and short stray segments
    for _ in range(int(rng.integers(p["dots"][0], p["dots"][1] + 1))):
        drawn[int(rng.integers(size)), int(rng.integers(size))] = True
    for _ in range(int(rng.integers(p["strokes"][0], p["strokes"][1] + 1))):
        x0, y0 = rng.uniform(0, size, 2)
        ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 6.0)
        for a in np.linspace(0.0, length, int(length * 2) + 1):
            x, y = int(x0 + a * math.cos(ang)), int(y0 + a * math.sin(ang))
            if 0 <= x < size and 0 <= y < size:
                drawn[y, x] = True
    u8 = lambda m: np.where(m, 255, 0).astype(np.uint8)  # noqa: E731
    return HandDrawing(u8(drawn), u8(outline), u8(labels > 0), labels, style, tuple(shapes), coverage, size)


def hand_drawn_edges(scene: Scene, size: int = 64, style: str = "hand", seed: int = 0, t: float = 0.0) -> np.ndarray:
    """The hand-drawn edge map ``(size, size)`` uint8 (0 / 255) of :func:`hand_drawing`."""
    return hand_drawing(scene, size, style, seed, t).edges


def render_hand_drawn_image(scene: Scene, drawing: HandDrawing) -> np.ndarray:
    """``scene`` rendered with the silhouettes of ``drawing`` (same colours and background as
    :func:`render_image`): the image that follows the drawing exactly, ``(size, size, 3)`` uint8."""
    size = drawing.size
    img = np.empty((size, size, 3), dtype=np.float32)
    img[...] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    for obj, (cov, tex) in zip(scene.objects, drawing._coverage):
        colour = tex if tex is not None else np.asarray(COLOURS[obj.colour], dtype=np.float32)
        img[...] = img * (1.0 - cov[..., None]) + colour * cov[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
