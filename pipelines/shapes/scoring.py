"""Exact scorer for ShapesWorld (a GenEval for this world): parse images/videos back into objects and score them.

Pure functions of pixels and scenes: nothing here loads or runs a model (generating and scoring a model is
:mod:`.generate`; the command line is :mod:`.evaluate`).

Parsing an image (:func:`parse_image`)
--------------------------------------
1. **Input** - PIL image, numpy ``(H, W, 3)`` (uint8, or float in [0, 1] / [-1, 1]), or torch ``(3, H, W)`` in
   [0, 1] or [-1, 1] (a negative value means [-1, 1]); see :func:`to_rgb`.
2. **Background** - the per-channel median of the one-pixel image border.
3. **Colour segmentation** - each pixel's difference from the background is projected onto the opponent chroma
   plane ``a = R - (G + B) / 2``, ``b = sqrt(3) / 2 (G - B)``. Mixing a palette colour with a neutral background
   (antialiasing, blur) scales this vector but keeps its direction, so the *nearest palette colour* is the one
   with the nearest hue. A pixel gets that colour when its hue is within :data:`HUE_TOLERANCE` degrees of it and
   its chroma is at least :data:`ALPHA_THRESHOLD` of the palette colour's (a distance threshold: the pixel is at
   least ~45% the object colour, which puts the segment boundary on the 50%-coverage contour). Other pixels
   are background / unassigned.
4. **Connected components** - 8-connected components of equal colour (:func:`label`, numpy-only label
   propagation with pointer jumping); components smaller than ``min_area`` (fraction of the image, at least
   8 pixels) are dropped, which removes noise speckle and antialiasing fringes.
5. **Shape classification** (:func:`classify_shape`, :func:`fit_shapes`) - around each component a soft coverage
   map ``alpha`` is computed (chroma projected on the palette colour's chroma direction / its chroma, clipped to
   [0, 1]). For every shape hypothesis, the radius and centre follow from ``alpha``'s moments (mass = unit area
   x r^2, mass centroid = shape centroid; both invariant to blur); the upright shape is rendered there,
   blurred at a few sigmas (:data:`BLUR_SIGMAS`), and the best soft IoU with ``alpha`` is the shape's score.
   This silhouette fit uses the geometric cues at once - fill of the bounding box (square ~1, circle ~0.79,
   triangle ~0.5), concavities (star and cross vs their convex hulls), the ring's hole, orientation and symmetry
   (star and triangle point up) - and is robust to a model's blur because blur is part of the model. A ring also
   needs explicit hole evidence: a hole in the thresholded mask (complement components not touching the crop
   border, :func:`hole_fraction`) or a light centre in ``alpha``. A best IoU below :data:`MIN_SHAPE_IOU`, or a
   bounding-box aspect outside [0.5, 2], gives ``"unknown"``. ``Detection.features`` keeps the fill ratio, hole
   fraction, aspect, centre coverage, fitted blur and radius.
6. **Size** - the fitted radius, split at the midpoint of the small and large radii.

Scoring (:func:`score_image`, :func:`score_video`, :func:`score_conditions`)
---------------------------------------------------------------------------
Expected objects (from a :class:`~.world.Scene`, i.e. what the caption states) are matched one-to-one with
detections by brute force, maximising 2 x colour match + shape match. Per object: colour, shape, size (only when
the caption mentions it). Per prompt: count (recognised objects == expected), position of a lone object (centroid
``x < 0.4`` for left, ``> 0.6`` for right, likewise ``y`` for top/bottom, within 0.15 of the centre for center),
relation between two objects (centroid difference > :data:`RELATION_MARGIN` along the relation's axis), order
of three objects (row / column), subject presence, and for videos the motion direction of each object (least-
squares centroid trajectory over the frames; the dominant axis and sign must match and the displacement must be
at least :data:`MIN_MOTION`). Spatial facts count only when the objects involved are correct (colour + shape).
``correct`` is True when every criterion holds; ``object_accuracy`` is the fraction of expected objects with
the right colour and shape.

Condition fidelity: the foreground mask of the image (all chroma-classified pixels, small components removed)
against the mask condition (IoU), its one-pixel contour against the edge condition (F1 with a pixel tolerance),
and subject presence: masked normalised cross-correlation (FFT-based) of the image with every subject sprite at
a few scales, inside the keyword's region; present when the expected subject is the best match and scores at
least :data:`SUBJECT_THRESHOLD`.

:func:`aggregate` averages any list of results.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .geometry import EXTENTS, SHAPES, SUBJECTS, inside, template
from .render import _raster, label_edges, render_edges, render_mask, render_sprite
from .world import COLOURS, SIZES, SUBJECT_RADIUS, Scene

HUE_TOLERANCE = 30.0
"""Max hue difference (degrees) between a pixel and its palette colour."""
ALPHA_THRESHOLD = 0.45
"""A pixel belongs to a colour when its chroma is at least this fraction of the palette colour's chroma."""
MIN_CHROMA = 20.0
"""Absolute chroma floor (0..255 units) below which a pixel is background."""
MIN_AREA = 0.004
"""Default minimum component area (fraction of the image)."""
MIN_SHAPE_IOU = 0.55
"""Minimum silhouette IoU for a shape label; below it the shape is ``"unknown"``."""
RING_MIN_HOLE = 0.04
"""Minimum hole fraction (hole area / filled area) for ``ring`` ..."""
RING_MAX_CENTRE_ALPHA = 0.7
"""... or maximum mean coverage around the centroid (a blurred ring's filled-in hole stays lighter)."""
RELATION_MARGIN = 0.05
"""Minimum centroid difference (fraction of the image) for left/right/above/below."""
MIN_MOTION = 0.08
"""Minimum displacement over a clip (fraction of the image) for a motion direction."""
SUBJECT_THRESHOLD = 0.5
"""Minimum masked NCC for a subject to count as present."""
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2
BLUR_SIGMAS = (0.0, 0.7, 1.2, 1.8)
"""Blur levels (pixels) the shape fit tries, to be robust to a model's blur."""

_NAMES = list(COLOURS)
_RGB = np.asarray([COLOURS[c] for c in _NAMES], dtype=np.float32)


def _opponent(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return r - (g + b) / 2.0, (math.sqrt(3.0) / 2.0) * (g - b)


_PA, _PB = _opponent(_RGB)
_PAL_HUE = np.degrees(np.arctan2(_PB, _PA))
_PAL_CHROMA = np.hypot(_PA, _PB)


# ------------------------------------------------------------------------------------------------------------------
# Input conversion


def to_rgb(image: Any) -> np.ndarray:
    """Convert an image to float32 ``(H, W, 3)`` in 0..255.

    Accepts a PIL image; a numpy array ``(H, W, 3|4)``, ``(3, H, W)`` or ``(H, W)`` (uint8 as is; float in
    [0, 1], or [-1, 1] if it has negative values); a torch tensor ``(3, H, W)`` / ``(H, W, 3)`` with the same value
    conventions.
    """
    if hasattr(image, "convert") and hasattr(image, "size") and not hasattr(image, "shape"):  # PIL
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if hasattr(image, "detach"):  # torch
        image = image.detach().cpu()
        image = image.float().numpy() if image.is_floating_point() else image.numpy()
    x = np.asarray(image)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3:
        raise ValueError(f"expected a single image, got shape {x.shape}")
    if x.shape[-1] not in (3, 4) and x.shape[0] in (1, 3, 4):
        x = np.moveaxis(x, 0, -1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    x = x[..., :3]
    if x.dtype == np.uint8:
        return x.astype(np.float32)
    x = x.astype(np.float32)
    if x.min() < 0.0:
        x = (x + 1.0) * 0.5
    if x.max() <= 1.0 + 1e-6:
        x = x * 255.0
    return np.clip(x, 0.0, 255.0)


def to_frames(video: Any) -> list[np.ndarray]:
    """Split a video into frames (each converted by :func:`to_rgb`).

    Accepts a list/tuple of images; a torch tensor ``(C, F, H, W)`` (the dataset layout) or ``(F, C, H, W)``; a
    numpy array ``(F, H, W, 3)`` (uint8 or float) or ``(C, F, H, W)``.
    """
    if isinstance(video, (list, tuple)):
        return [to_rgb(f) for f in video]
    is_torch = hasattr(video, "detach")
    x = video.detach().cpu() if is_torch else np.asarray(video)
    if x.ndim != 4:
        raise ValueError(f"expected a 4-d video, got shape {tuple(x.shape)}")
    if x.shape[-1] in (3, 4) and not (is_torch and x.shape[0] in (1, 3)):
        return [to_rgb(x[f]) for f in range(x.shape[0])]
    if x.shape[0] in (1, 3):  # C, F, H, W
        return [to_rgb(x[:, f]) for f in range(x.shape[1])]
    return [to_rgb(x[f]) for f in range(x.shape[0])]  # F, C, H, W


# ------------------------------------------------------------------------------------------------------------------
# Segmentation


def estimate_background(img: np.ndarray) -> np.ndarray:
    """Background colour: per-channel median of the one-pixel border of ``img`` (float ``(H, W, 3)``)."""
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]], axis=0)
    return np.median(border, axis=0)


def classify_pixels(img: np.ndarray, background: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel palette classification.

    Returns ``(classes, foreground)``: ``classes`` int ``(H, W)`` with 0 = unassigned and ``k + 1`` = palette
    colour ``k`` (``list(COLOURS)[k]``); ``foreground`` bool ``(H, W)``: chroma (relative to the nearest-hue
    palette colour, without the hue tolerance) above the threshold - any saturated pixel, including mixtures of
    two palette colours inside a subject's texture.
    """
    bg = estimate_background(img) if background is None else np.asarray(background, dtype=np.float32)
    a, b = _opponent(img - bg)
    chroma = np.hypot(a, b)
    hue = np.degrees(np.arctan2(b, a))
    dh = np.abs((hue[..., None] - _PAL_HUE + 180.0) % 360.0 - 180.0)
    k = np.argmin(dh, axis=-1)
    dmin = np.take_along_axis(dh, k[..., None], axis=-1)[..., 0]
    strong = (chroma >= ALPHA_THRESHOLD * _PAL_CHROMA[k]) & (chroma >= MIN_CHROMA)
    classes = np.where(strong & (dmin <= HUE_TOLERANCE), k + 1, 0).astype(np.int32)
    return classes, strong


def label(classes: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of equal non-zero values (numpy only).

    Returns ``(labels, n)``: int32 labels ``1..n`` (0 where ``classes == 0``). Implementation: every pixel starts
    with its own index as label; each round takes the minimum over same-class neighbours and then follows the
    labels as pointers until they are stable (pointer jumping), until no label changes.
    """
    classes = np.asarray(classes)
    h, w = classes.shape
    n = h * w
    fg = classes != 0
    lab = np.where(fg, np.arange(n, dtype=np.int64).reshape(h, w), n)
    if connectivity == 8:
        offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    elif connectivity == 4:
        offsets = [(-1, 0), (0, -1), (0, 1), (1, 0)]
    else:
        raise ValueError("connectivity must be 4 or 8")
    cpad = np.pad(classes, 1, constant_values=0)
    same = [fg & (cpad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == classes) for dy, dx in offsets]
    while True:
        lpad = np.pad(lab, 1, constant_values=n)
        new = lab.copy()
        for (dy, dx), s in zip(offsets, same):
            nb = lpad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            np.minimum(new, np.where(s, nb, n), out=new)
        flat = new.ravel()
        while True:
            jumped = np.append(flat, n)[flat]
            if np.array_equal(jumped, flat):
                break
            flat = jumped
        new = flat.reshape(h, w)
        if np.array_equal(new, lab):
            break
        lab = new
    out = np.zeros((h, w), dtype=np.int32)
    uniq, inv = np.unique(lab[fg], return_inverse=True)
    out[fg] = inv.reshape(-1) + 1
    return out, len(uniq)


@functools.lru_cache(maxsize=4096)
def _template(shape: str, h: int, w: int) -> np.ndarray:
    return template(shape, h, w)


@functools.lru_cache(maxsize=None)
def _unit_moments(shape: str) -> tuple[float, float, float]:
    """Area and centroid ``(u, v)`` of a shape's unit-radius silhouette."""
    u0, v0, u1, v1 = EXTENTS[shape]
    n = 600
    u = u0 + (np.arange(n) + 0.5) / n * (u1 - u0)
    v = v0 + (np.arange(n) + 0.5) / n * (v1 - v0)
    ins = inside(shape, u[None, :], v[:, None])
    cell = (u1 - u0) * (v1 - v0) / (n * n)
    area = float(ins.sum() * cell)
    vv, uu = np.nonzero(ins)
    return area, float(u[uu].mean()), float(v[vv].mean())


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(x, ((r, r), (0, 0)))
    x = sum(k[i] * p[i:i + x.shape[0]] for i in range(2 * r + 1))
    p = np.pad(x, ((0, 0), (r, r)))
    return sum(k[i] * p[:, i:i + x.shape[1]] for i in range(2 * r + 1))


def hole_fraction(mask: np.ndarray) -> float:
    """Area of the holes of a binary mask (complement regions not touching the border) / filled area."""
    comp = np.pad(~mask, 1, constant_values=True)
    lab, _ = label(comp.astype(np.int8), connectivity=4)
    outside = lab[0, 0]
    holes = int(((lab != outside) & comp).sum())
    area = int(mask.sum())
    return holes / max(area + holes, 1)


def fit_shapes(alpha: np.ndarray, sigmas: Sequence[float] = BLUR_SIGMAS,
               amplitudes: Sequence[float] = (1.0,)) -> dict[str, tuple[float, float, float]]:
    """Blur-aware silhouette fit of every shape to a soft coverage map (``alpha`` in [0, 1], one object).

    For each shape and each amplitude ``A`` (the object's saturation relative to the palette colour), the radius
    and centre follow from the coverage map's moments (total mass = A x shape area x r^2, mass centroid = shape
    centroid; both are invariant to blur); the shape is rendered there (antialiased), blurred with each of
    ``sigmas`` (pixels), scaled by ``A`` and compared with ``alpha`` by soft IoU (``sum min / sum max``).
    Returns ``{shape: (best IoU, its sigma, radius in pixels)}``.
    """
    h, w = alpha.shape
    mass = float(alpha.sum())
    out: dict[str, tuple[float, float, float]] = {}
    if mass < 3.0:
        return {s: (0.0, 0.0, 0.0) for s in SHAPES}
    ys, xs = np.mgrid[0:h, 0:w]
    cx = float((alpha * (xs + 0.5)).sum() / mass)
    cy = float((alpha * (ys + 0.5)).sum() / mass)
    for s in SHAPES:
        area, cu, cv = _unit_moments(s)
        best = (0.0, 0.0, 0.0)
        for amp in amplitudes:
            r = math.sqrt(mass / (area * amp))
            res = _raster(s, "red", cx - cu * r, cy - cv * r, r, h, w)
            cov = np.zeros((h, w), np.float32)
            if res is not None:
                y0, x0, c, _, _ = res
                cov[y0:y0 + c.shape[0], x0:x0 + c.shape[1]] = c * amp
            for sig in sigmas:
                t = _gaussian_blur(cov, sig)
                iou = float(np.minimum(alpha, t).sum() / max(np.maximum(alpha, t).sum(), 1e-6))
                if iou > best[0]:
                    best = (iou, float(sig), r)
        out[s] = best
    return out


def classify_shape(mask: np.ndarray, alpha: Optional[np.ndarray] = None) -> tuple[str, dict[str, float], dict[str, float]]:
    """Classify one component.

    Args:
        mask: the component's boolean mask, cropped to a window around it.
        alpha: soft coverage of the component's colour over the same window (see :func:`parse_image`); when
            given, shapes are scored by the blur-aware fit :func:`fit_shapes`, otherwise by the silhouette IoU
            of the mask's bounding box with each shape stretched to it.

    Returns ``(shape, scores, features)``: ``scores`` maps every shape to its IoU; ``features`` has ``fill``
    (area / bbox area), ``hole`` (:func:`hole_fraction`), ``aspect`` (bbox w / h) and, with ``alpha``, ``blur``
    (the best fit's blur sigma) and ``radius`` (pixels).
    """
    mask = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return "unknown", {s: 0.0 for s in SHAPES}, {}
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    hole = hole_fraction(crop)
    features = {"fill": float(crop.sum()) / float(h * w), "hole": hole, "aspect": w / float(h)}
    if h < 3 or w < 3:
        return "unknown", {s: 0.0 for s in SHAPES}, features
    scores = {}
    if alpha is None:
        m = crop.astype(np.float32)
        for s in SHAPES:
            t = _template(s, h, w)
            scores[s] = float(np.minimum(m, t).sum() / max(np.maximum(m, t).sum(), 1e-6))
    else:
        # Also try the object's own saturation when it is clearly below the palette's (a generator may wash
        # colours out); 1.0 stays in the set, so thin or blurred shapes whose peak coverage is < 1 still fit.
        peak = float(np.percentile(alpha[mask], 95))
        amplitudes = (1.0,) if peak >= 0.9 else (1.0, max(peak, 0.4))
        fits = fit_shapes(alpha, amplitudes=amplitudes)
        scores = {s: v[0] for s, v in fits.items()}
    ring_evidence = hole >= RING_MIN_HOLE
    if alpha is not None:
        # A blurred ring may lose its hole in the thresholded mask but keeps a dip of coverage at its centre.
        ah, aw = alpha.shape
        yy, xx = np.mgrid[0:ah, 0:aw]
        mass = float(alpha.sum())
        cx, cy = (alpha * (xx + 0.5)).sum() / mass, (alpha * (yy + 0.5)).sum() / mass
        centre = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= max((0.3 * fits["ring"][2]) ** 2, 0.5)
        features["centre_alpha"] = float(alpha[centre].mean()) if centre.any() else 1.0
        ring_evidence = ring_evidence or features["centre_alpha"] < RING_MAX_CENTRE_ALPHA
    if not ring_evidence:
        scores["ring"] = 0.0
    best = max(scores, key=scores.get)
    if alpha is not None:
        features["blur"], features["radius"] = fits[best][1], fits[best][2]
    if scores[best] < MIN_SHAPE_IOU or not 0.5 <= features["aspect"] <= 2.0:
        return "unknown", scores, features
    return best, scores, features


@dataclass
class Detection:
    """One parsed object. Coordinates are normalised by the image size (x right, y down)."""

    colour: Optional[str]
    shape: str
    centroid: tuple[float, float]
    bbox: tuple[float, float, float, float]
    area: float
    size: str
    scores: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)


def _size_word(shape: str, bbox: tuple[float, float, float, float], radius: Optional[float] = None) -> str:
    """``"small"`` / ``"large"`` from the fitted radius (normalised), or else from the bbox and shape extents."""
    if radius is None:
        u0, v0, u1, v1 = EXTENTS[shape if shape in EXTENTS else "circle"]
        radius = 0.5 * ((bbox[2] - bbox[0]) / (u1 - u0) + (bbox[3] - bbox[1]) / (v1 - v0))
    return "large" if radius > SIZE_SPLIT else "small"


def parse_image(image: Any, min_area: float = MIN_AREA, max_objects: int = 16, saturation: float = 1.0) -> list[Detection]:
    """Parse an image into objects (see the module docstring); the ``max_objects`` largest, largest first.

    ``saturation`` scales the palette chroma that counts as full coverage in the shape fit (lower it, e.g. to
    0.85, for a generator that systematically desaturates colours).
    """
    img = to_rgb(image)
    hgt, wid = img.shape[:2]
    bg = estimate_background(img)
    classes, _ = classify_pixels(img, bg)
    labels, n = label(classes)
    a_opp, b_opp = _opponent(img - bg)
    if n == 0:
        return []
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)
    keep = np.nonzero(counts >= max(min_area * hgt * wid, 8))[0]
    keep = keep[keep > 0]
    keep = keep[np.argsort(-counts[keep], kind="stable")][:max_objects]
    if len(keep) == 0:
        return []
    ys, xs = np.divmod(np.arange(hgt * wid), wid)
    sx = np.bincount(flat, weights=xs, minlength=n + 1)
    sy = np.bincount(flat, weights=ys, minlength=n + 1)
    cls_of = np.zeros(n + 1, dtype=np.int32)
    cls_of[flat] = classes.ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    dets = []
    for k in keep:
        idx = order[starts[k]:starts[k + 1]]
        py, px = ys[idx], xs[idx]
        y0, y1, x0, x1 = int(py.min()), int(py.max()) + 1, int(px.min()), int(px.max()) + 1
        # Soft coverage of this colour around the component: chroma projected on the palette colour's chroma
        # direction, relative to the palette colour's chroma; pixels of other components are zeroed.
        pad = 4
        wy0, wy1, wx0, wx1 = max(0, y0 - pad), min(hgt, y1 + pad), max(0, x0 - pad), min(wid, x1 + pad)
        ci = cls_of[k] - 1
        hue = math.radians(float(_PAL_HUE[ci]))
        proj = a_opp[wy0:wy1, wx0:wx1] * math.cos(hue) + b_opp[wy0:wy1, wx0:wx1] * math.sin(hue)
        win_lab = labels[wy0:wy1, wx0:wx1]
        own = win_lab == k
        ref = float(_PAL_CHROMA[ci]) * saturation
        alpha = np.clip(proj / ref, 0.0, 1.0) * ((win_lab == 0) | own)
        shape, scores, feats = classify_shape(own, alpha)
        bbox = (x0 / wid, y0 / hgt, x1 / wid, y1 / hgt)
        c = (float(sx[k] / counts[k] + 0.5) / wid, float(sy[k] / counts[k] + 0.5) / hgt)
        radius = feats["radius"] / wid if "radius" in feats else None
        dets.append(Detection(_NAMES[cls_of[k] - 1], shape, c, bbox, float(counts[k]) / (hgt * wid),
                              _size_word(shape, bbox, radius), scores, feats))
    dets.sort(key=lambda d: -d.area)
    return dets


def foreground_mask(image: Any, min_area: float = MIN_AREA) -> np.ndarray:
    """Boolean object mask of an image: saturated pixels (see :func:`classify_pixels`), small components removed."""
    img = to_rgb(image)
    _, fg = classify_pixels(img)
    labels, n = label(fg.astype(np.int8))
    if n == 0:
        return fg
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    ok = counts >= max(min_area * fg.size, 3)
    ok[0] = False
    return ok[labels]


# ------------------------------------------------------------------------------------------------------------------
# Subjects


@dataclass
class SubjectMatch:
    """Result of a subject search: the best-matching subject, its score and where it is (normalised)."""

    subject: str
    present: bool
    score: float
    best_subject: Optional[str]
    scores: dict[str, float]
    center: Optional[tuple[float, float]]
    bbox: Optional[tuple[float, float, float, float]]


@functools.lru_cache(maxsize=256)
def _sprite(subject: str, radius_px: float):
    """Matching template of a subject: (mask, zero-mean masked texture, its energy)."""
    cov, rgb = render_sprite(subject, radius_px)
    m = (cov >= 0.5).astype(np.float64)
    t = (rgb - (rgb * m[..., None]).sum((0, 1)) / m.sum()) * m[..., None]
    return m, t.astype(np.float64), float((t * t).sum())


class _Correlator:
    """Valid-mode cross-correlations of one image with many small kernels, sharing the image's FFTs.

    ``out[y, x] = sum_ij img[y + i, x + j] * ker[i, j]``, computed as a product of spectra on a fixed padded
    grid large enough for every kernel up to ``max_kernel`` pixels.
    """

    def __init__(self, img: np.ndarray, max_kernel: int):
        self.H, self.W = img.shape[:2]
        self.fh, self.fw = self.H + max_kernel - 1, self.W + max_kernel - 1
        x = img.astype(np.float64)
        self.spec = [np.fft.rfft2(x[..., c], (self.fh, self.fw)) for c in range(3)]
        self.spec2 = [np.fft.rfft2(x[..., c] ** 2, (self.fh, self.fw)) for c in range(3)]

    def _kspec(self, ker: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(ker[::-1, ::-1], (self.fh, self.fw))

    def _valid(self, spectrum: np.ndarray, h: int, w: int) -> np.ndarray:
        return np.fft.irfft2(spectrum, (self.fh, self.fw))[h - 1:self.H, w - 1:self.W]

    def ncc(self, subject: str, radius_px: float) -> Optional[tuple[np.ndarray, int, int]]:
        """Masked NCC map of a subject sprite of ``radius_px`` over the image (None if it does not fit)."""
        m, t, tt = _sprite(subject, round(radius_px, 2))
        h, w = m.shape
        if h > self.H or w > self.W or h + self.H - 1 > self.fh or w + self.W - 1 > self.fw:
            return None
        n = m.sum()
        mspec = self._kspec(m)
        num = sum(self.spec[c] * self._kspec(t[..., c]) for c in range(3))
        s1 = [self._valid(self.spec[c] * mspec, h, w) for c in range(3)]
        s2 = sum(self.spec2[c] for c in range(3)) * mspec
        var = self._valid(s2, h, w) - sum(x * x for x in s1) / n
        num = self._valid(num, h, w)
        ok = var > n * 25.0  # flat windows (std below ~3 levels) cannot show a texture
        return np.where(ok, num / np.sqrt(np.maximum(var, 1e-9) * tt), 0.0), h, w


def find_subject(image: Any, subject: str, region: Optional[Sequence[float]] = None,
                 radius: float = SUBJECT_RADIUS, scales: Sequence[float] = (0.8, 1.0, 1.25),
                 tolerance: float = 0.1) -> SubjectMatch:
    """Look for subject sprites in an image (masked normalised cross-correlation with every subject's sprite).

    Args:
        image: anything :func:`to_rgb` accepts.
        subject: the expected subject keyword.
        region: optional normalised bbox ``(x0, y0, x1, y1)`` (the keyword's region); only matches centred inside
            it, grown by ``tolerance``, count. None searches the whole image.
        radius: expected sprite radius (fraction of the image width); searched at ``scales`` times it.

    Returns a :class:`SubjectMatch`; ``present`` is True iff ``subject`` is the best-scoring subject and its
    score is at least :data:`SUBJECT_THRESHOLD`.
    """
    img = to_rgb(image)
    H, W = img.shape[:2]
    max_kernel = max(max(_sprite(s, round(radius * sc * W, 2))[0].shape) for s in SUBJECTS for sc in scales)
    corr = _Correlator(img, max_kernel)
    best: dict[str, tuple[float, Optional[tuple[float, float]], Optional[tuple]]] = {}
    for s in SUBJECTS:
        top = (-1.0, None, None)
        for sc in scales:
            found = corr.ncc(s, radius * sc * W)
            if found is None:
                continue
            ncc, h, w = found
            cy = (np.arange(ncc.shape[0]) + h / 2.0) / H
            cx = (np.arange(ncc.shape[1]) + w / 2.0) / W
            if region is not None:
                x0, y0, x1, y1 = region
                okx = (cx >= x0 - tolerance) & (cx <= x1 + tolerance)
                oky = (cy >= y0 - tolerance) & (cy <= y1 + tolerance)
                ncc = np.where(oky[:, None] & okx[None, :], ncc, -1.0)
            iy, ix = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
            if ncc[iy, ix] > top[0]:
                ex = EXTENTS[s]
                c = (float(cx[ix]), float(cy[iy]))
                r = radius * sc
                top = (float(ncc[iy, ix]), c, (c[0] + ex[0] * r, c[1] + ex[1] * r, c[0] + ex[2] * r, c[1] + ex[3] * r))
        best[s] = top
    scores = {s: v[0] for s, v in best.items()}
    best_subject = max(scores, key=scores.get) if scores else None
    score, center, bbox = best.get(subject, (-1.0, None, None))
    present = best_subject == subject and score >= SUBJECT_THRESHOLD
    return SubjectMatch(subject, present, score, best_subject, scores, center, bbox)


# ------------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class ObjectResult:
    """Score of one expected object."""

    phrase: str
    found: bool
    colour_ok: bool
    shape_ok: bool
    size_ok: Optional[bool] = None
    detection: Optional[Detection] = None

    @property
    def correct(self) -> bool:
        """Colour and shape right (and size, when the caption states it)."""
        return self.colour_ok and self.shape_ok and self.size_ok is not False


def _criteria_mean(values: Sequence[Optional[bool]]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class ImageResult:
    """Score of one image against its prompt. ``None`` criteria do not apply to the prompt."""

    prompt: str
    objects: list[ObjectResult]
    n_expected: int
    n_detected: int
    count_ok: bool
    position_ok: Optional[bool] = None
    relation_ok: Optional[bool] = None
    order_ok: Optional[bool] = None
    subject_ok: Optional[bool] = None
    detections: list[Detection] = field(default_factory=list)

    @property
    def object_accuracy(self) -> float:
        """Fraction of expected objects with the right colour and shape (and size when stated)."""
        return sum(o.correct for o in self.objects) / max(len(self.objects), 1)

    @property
    def correct(self) -> bool:
        """Every criterion holds."""
        flags = [self.count_ok, *(o.correct for o in self.objects), self.position_ok, self.relation_ok,
                 self.order_ok, self.subject_ok]
        return all(f is not False for f in flags)

    def criteria(self) -> dict[str, Optional[float]]:
        """Per-criterion scores in [0, 1] (None when not applicable)."""
        return {
            "correct": float(self.correct), "object_accuracy": self.object_accuracy,
            "count": float(self.count_ok),
            "colour": _criteria_mean([o.colour_ok for o in self.objects]),
            "shape": _criteria_mean([o.shape_ok for o in self.objects]),
            "size": _criteria_mean([o.size_ok for o in self.objects]),
            "position": _criteria_mean([self.position_ok]), "relation": _criteria_mean([self.relation_ok]),
            "order": _criteria_mean([self.order_ok]), "subject": _criteria_mean([self.subject_ok]),
            "_objects": (sum(o.correct for o in self.objects), len(self.objects)),
        }


def _match(expected: Sequence, dets: Sequence[Detection], max_candidates: int = 8) -> list[Optional[int]]:
    """One-to-one assignment of expected objects to detections maximising 2 x colour + shape (brute force)."""
    cands = list(range(min(len(dets), max_candidates)))
    best, best_score = [None] * len(expected), -1.0
    options = [cands + [None]] * len(expected)
    for combo in itertools.product(*options):
        used = [c for c in combo if c is not None]
        if len(used) != len(set(used)):
            continue
        score = 0.0
        valid = True
        for e, c in zip(expected, combo):
            if c is None:
                continue
            d = dets[c]
            s = 2.0 * (d.colour == e.colour) + 1.0 * (d.shape == e.shape)
            if s == 0:
                valid = False
                break
            score += s + 1e-3 * d.area
        if valid and score > best_score:
            best, best_score = list(combo), score
    return best


def _position_ok(pos: str, c: tuple[float, float]) -> bool:
    x, y = c
    return {"left": x < 0.4, "right": x > 0.6, "top": y < 0.4, "bottom": y > 0.6,
            "center": abs(x - 0.5) < 0.15 and abs(y - 0.5) < 0.15}[pos]


def _relation_ok(rel: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    return {"left of": b[0] - a[0], "right of": a[0] - b[0], "above": b[1] - a[1], "below": a[1] - b[1]}[rel] \
        > RELATION_MARGIN


def _as_scene(spec: Any) -> Scene:
    if isinstance(spec, Scene):
        return spec
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], Scene):
        return spec[1]
    if isinstance(spec, dict):
        return Scene.from_dict(spec)
    if isinstance(spec, str):
        return Scene.from_json(spec)
    raise TypeError(f"expected a Scene (or (prompt, Scene), dict, JSON), got {type(spec).__name__}")


def score_image(image: Any, spec: Any, detections: Optional[list[Detection]] = None,
                subject_region: Optional[Sequence[float]] = None) -> ImageResult:
    """Score an image against a prompt's spec (a :class:`Scene`, e.g. from :func:`~.world.eval_prompts`).

    Only what the caption states is checked (see the module docstring). ``subject_region`` optionally restricts
    the subject search to a normalised bbox (e.g. the subject's box in a spatial condition).
    """
    scene = _as_scene(spec)
    dets = parse_image(image) if detections is None else list(detections)
    results: list[Optional[ObjectResult]] = [None] * len(scene.objects)
    positions: list[Optional[tuple[float, float]]] = [None] * len(scene.objects)
    subject_ok = None
    # Subjects first: find them and drop the colour fragments of their texture from the detections.
    for i, o in enumerate(scene.objects):
        if not o.is_subject:
            continue
        m = find_subject(image, o.shape, region=subject_region)
        subject_ok = m.present if subject_ok is None else (subject_ok and m.present)
        if m.present:
            positions[i] = m.center
            x0, y0, x1, y1 = m.bbox
            dets = [d for d in dets if not (x0 <= d.centroid[0] <= x1 and y0 <= d.centroid[1] <= y1)]
        results[i] = ObjectResult(o.phrase(), m.present, m.present, m.present)
    plain = [i for i, o in enumerate(scene.objects) if not o.is_subject]
    recognised = [d for d in dets if d.shape != "unknown"]
    assign = _match([scene.objects[i] for i in plain], recognised)
    for i, a in zip(plain, assign):
        o = scene.objects[i]
        d = recognised[a] if a is not None else None
        colour_ok = d is not None and d.colour == o.colour
        shape_ok = d is not None and d.shape == o.shape
        size_ok = None
        if scene.mention_size:
            size_ok = d is not None and d.size == o.size
        results[i] = ObjectResult(o.phrase(scene.mention_size), d is not None, colour_ok, shape_ok, size_ok, d)
        if colour_ok and shape_ok:
            positions[i] = d.centroid
    n_detected = len(recognised) + sum(1 for i, o in enumerate(scene.objects) if o.is_subject and results[i].found)
    res = ImageResult(scene.caption, results, len(scene.objects), n_detected,
                      n_detected == len(scene.objects), subject_ok=subject_ok, detections=dets)
    ok_pos = [p is not None for p in positions]
    if scene.layout == "position":
        res.position_ok = ok_pos[0] and _position_ok(scene.position, positions[0])
    elif scene.layout == "relation":
        res.relation_ok = all(ok_pos) and _relation_ok(scene.relation, positions[0], positions[1])
    elif scene.layout in ("row", "column"):
        k = 0 if scene.layout == "row" else 1
        res.order_ok = all(ok_pos) and all(positions[j + 1][k] - positions[j][k] > RELATION_MARGIN
                                           for j in range(len(positions) - 1))
    return res


# ------------------------------------------------------------------------------------------------------------------
# Videos


@dataclass
class VideoObjectResult:
    """Score of one expected moving object across a clip."""

    phrase: str
    presence: float
    colour_ok: bool
    shape_ok: bool
    direction: Optional[str]
    displacement: Optional[tuple[float, float]]
    direction_ok: bool

    @property
    def correct(self) -> bool:
        """Colour and shape right in most frames."""
        return self.colour_ok and self.shape_ok


@dataclass
class VideoResult:
    """Score of one video against its prompt."""

    prompt: str
    objects: list[VideoObjectResult]
    n_frames: int
    count_ok: bool

    @property
    def object_accuracy(self) -> float:
        """Fraction of expected objects with the right colour and shape (majority over frames)."""
        return sum(o.correct for o in self.objects) / max(len(self.objects), 1)

    @property
    def direction_accuracy(self) -> float:
        """Fraction of expected objects moving in the right direction."""
        return sum(o.direction_ok for o in self.objects) / max(len(self.objects), 1)

    @property
    def correct(self) -> bool:
        """Count right and every object has the right colour, shape and direction."""
        return self.count_ok and all(o.correct and o.direction_ok for o in self.objects)

    def criteria(self) -> dict[str, Optional[float]]:
        """Per-criterion scores in [0, 1]."""
        return {
            "correct": float(self.correct), "object_accuracy": self.object_accuracy,
            "count": float(self.count_ok),
            "colour": _criteria_mean([o.colour_ok for o in self.objects]),
            "shape": _criteria_mean([o.shape_ok for o in self.objects]),
            "direction": self.direction_accuracy,
            "_objects": (sum(o.correct for o in self.objects), len(self.objects)),
        }


def parse_video(video: Any, min_area: float = MIN_AREA) -> list[list[Detection]]:
    """Parse every frame of a video (see :func:`to_frames`): one detection list per frame."""
    return [parse_image(f, min_area) for f in to_frames(video)]


def direction_of(displacement: tuple[float, float]) -> Optional[str]:
    """Direction word of a displacement (dominant axis and sign), None if shorter than :data:`MIN_MOTION`."""
    dx, dy = displacement
    if max(abs(dx), abs(dy)) < MIN_MOTION:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def score_video(video: Any, spec: Any) -> VideoResult:
    """Score a video (frames; see :func:`to_frames`) against a motion prompt's spec.

    Each frame is parsed and matched to the expected objects; an object's colour / shape are right when they are
    right in more than half of the frames, and its direction comes from a least-squares fit of its centroid
    against time over the frames where it was found with the right colour (at least two, and half the clip).
    """
    scene = _as_scene(spec)
    frames = to_frames(video)
    nf = len(frames)
    per_obj: list[list[tuple[float, Detection]]] = [[] for _ in scene.objects]
    counts = []
    for f, frame in enumerate(frames):
        t = 0.0 if nf <= 1 else f / (nf - 1)
        dets = [d for d in parse_image(frame) if d.shape != "unknown"]
        counts.append(len(dets))
        for i, a in enumerate(_match(scene.objects, dets)):
            if a is not None:
                per_obj[i].append((t, dets[a]))
    objs = []
    for o, track in zip(scene.objects, per_obj):
        colour_frames = [(t, d) for t, d in track if d.colour == o.colour]
        colour_ok = len(colour_frames) * 2 > nf
        shape_ok = sum(d.shape == o.shape for _, d in track) * 2 > nf
        disp = None
        if len(colour_frames) >= 2 and len(colour_frames) * 2 >= nf:
            ts = np.array([t for t, _ in colour_frames])
            cs = np.array([d.centroid for _, d in colour_frames])
            if np.ptp(ts) > 0:
                tc = ts - ts.mean()
                slope = (tc[:, None] * (cs - cs.mean(0))).sum(0) / (tc * tc).sum()
                disp = (float(slope[0]), float(slope[1]))
        direction = direction_of(disp) if disp is not None else None
        objs.append(VideoObjectResult(o.phrase(scene.mention_size), len(track) / max(nf, 1), colour_ok, shape_ok,
                                      direction, disp, direction == o.direction))
    count_ok = bool(nf) and int(np.median(counts)) == len(scene.objects)
    return VideoResult(scene.caption, objs, nf, count_ok)


# ------------------------------------------------------------------------------------------------------------------
# Conditions


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    p = np.pad(mask, radius, constant_values=False)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def _binary(cond: Any) -> np.ndarray:
    x = np.asarray(cond.detach().cpu().float().numpy() if hasattr(cond, "detach") else cond)
    if x.ndim == 3:
        x = x[..., 0] if x.shape[-1] in (1, 3, 4) else x[0]
    x = x.astype(np.float32)
    if x.min() < 0:
        x = (x + 1.0) / 2.0
    thr = 127.5 if x.max() > 1.0 + 1e-6 else 0.5
    return x > thr


def edge_scores(pred_edges: np.ndarray, true_edges: np.ndarray, tolerance: int = 1) -> tuple[float, float, float]:
    """(precision, recall, F1) of two boolean edge maps; a pixel matches within a ``tolerance``-pixel square."""
    pred, true = np.asarray(pred_edges, bool), np.asarray(true_edges, bool)
    np_, nt = int(pred.sum()), int(true.sum())
    if np_ == 0 or nt == 0:
        return (float(np_ == nt), float(np_ == nt), float(np_ == nt))
    precision = float((pred & _dilate(true, tolerance)).sum()) / np_
    recall = float((true & _dilate(pred, tolerance)).sum()) / nt
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def image_edges(image: Any) -> np.ndarray:
    """One-pixel contour (boolean) of an image's foreground mask (same definition as the edge condition)."""
    return label_edges(foreground_mask(image).astype(np.int32))


def edge_f1(image: Any, edge_condition: Any, tolerance: int = 1) -> float:
    """Edge F1 between an image's object contours and an edge condition (uint8 0/255, bool, or [-1, 1] tensor)."""
    return edge_scores(image_edges(image), _binary(edge_condition), tolerance)[2]


def mask_iou(image: Any, mask_condition: Any) -> float:
    """IoU between an image's foreground mask and a mask condition."""
    pred, true = foreground_mask(image), _binary(mask_condition)
    union = int((pred | true).sum())
    return 1.0 if union == 0 else float((pred & true).sum()) / union


@dataclass
class ConditionResult:
    """Condition fidelity of one image."""

    edge_precision: float
    edge_recall: float
    edge_f1: float
    mask_iou: float
    subject_ok: Optional[bool] = None
    subject_score: Optional[float] = None

    def criteria(self) -> dict[str, Optional[float]]:
        """Per-criterion scores."""
        return {"edge_f1": self.edge_f1, "mask_iou": self.mask_iou,
                "subject": None if self.subject_ok is None else float(self.subject_ok)}


def score_conditions(image: Any, scene: Any, edge: Any = None, mask: Any = None, tolerance: int = 1,
                     t: float = 0.0) -> ConditionResult:
    """Fidelity of an image to the spatial conditions of ``scene`` (or to explicitly given ``edge`` / ``mask``).

    Conditions are rendered from the scene at the image's resolution when not given. For a subject scene, the
    subject is searched inside its own bounding box (the keyword region) and must be the best-matching subject.
    """
    scene = _as_scene(scene)
    img = to_rgb(image)
    size = img.shape[0]
    edge = render_edges(scene, size, t) if edge is None else edge
    mask = render_mask(scene, size, t) if mask is None else mask
    p, r, f = edge_scores(image_edges(img), _binary(edge), tolerance)
    res = ConditionResult(p, r, f, mask_iou(img, mask))
    for o in scene.objects:
        if o.is_subject:
            m = find_subject(img, o.shape, region=o.bbox(t), radius=o.radius)
            res.subject_ok, res.subject_score = m.present, m.score
    return res


def _tally(results: Sequence[Any]) -> dict[str, tuple[float, int]]:
    """Per criterion: (sum of the per-result scores, number of results where it applies); ``object_accuracy``
    instead pools the expected objects of all results (correct objects, objects) when results list them."""
    tally: dict[str, tuple[float, int]] = {}
    pooled_ok = pooled_n = 0
    for r in results:
        for k, v in r.criteria().items():
            if k == "_objects":
                pooled_ok += v[0]
                pooled_n += v[1]
            elif v is not None:
                ok, n = tally.get(k, (0.0, 0))
                tally[k] = (ok + float(v), n + 1)
    if pooled_n:
        tally["object_accuracy"] = (float(pooled_ok), pooled_n)
    return tally


def aggregate(results: Sequence[Any]) -> dict[str, float]:
    """Average results (:class:`ImageResult`, :class:`VideoResult`, :class:`ConditionResult`) per criterion.

    Each criterion is averaged over the results where it applies; ``object_accuracy`` is pooled over all
    expected objects (overall per-object colour + shape accuracy); ``n`` is the number of results.
    """
    out = {k: ok / n for k, (ok, n) in _tally(results).items()}
    out["n"] = float(len(results))
    return out


def intervals(results: Sequence[Any], z: float = 1.96) -> dict[str, tuple[float, float]]:
    """Wilson score interval (95% for ``z = 1.96``) of every criterion :func:`aggregate` reports, from the number
    of results (objects, for ``object_accuracy``) it was measured on: how far a score on ``n`` prompts can move
    by chance. Objects of one image are not independent, so the ``object_accuracy`` interval is a lower bound on
    the true uncertainty.

    >>> from dit_attn.pipelines.shapes import eval_prompts, render_image, score_image
    >>> specs = [s for _, s in eval_prompts("t2i", split="heldout", n=20)]
    >>> lo, hi = intervals([score_image(render_image(s, 64), s) for s in specs])["colour"]
    >>> 0.8 < lo <= 1.0 and hi == 1.0
    True
    """
    out = {}
    for k, (ok, n) in _tally(results).items():
        p = ok / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        # exact ends at p = 0 and p = 1 (the formula gives them up to rounding)
        out[k] = (0.0 if p == 0 else max(0.0, centre - half), 1.0 if p == 1 else min(1.0, centre + half))
    return out


def direction_confusion(results: Sequence[Any], specs: Sequence[Any]) -> dict[str, dict[str, int]]:
    """``{named direction: {measured direction: count}}`` over the objects of scored videos (:func:`score_video`
    results with their prompts' specs). Besides the four directions, an object is measured ``"still"`` (tracked
    with its colour in half the frames, moving less than :data:`MIN_MOTION`) or ``"lost"`` (not tracked in half the
    frames). Tells a generator that gets the axis but not the sign (left <-> right) from one that ignores the
    direction, and one that does not move its objects from one that loses them.

    >>> from dit_attn.pipelines.shapes import eval_prompts, render_video, score_video
    >>> specs = [s for _, s in eval_prompts("t2v", split="heldout", n=4)]
    >>> confusion = direction_confusion([score_video(render_video(s, 64, 9), s) for s in specs], specs)
    >>> all(got == named for named, row in confusion.items() for got, k in row.items() if k)
    True
    """
    out: dict[str, dict[str, int]] = {}
    for res, spec in zip(results, specs):
        for got, obj in zip(res.objects, _as_scene(spec).objects):
            row = out.setdefault(obj.direction, {})
            measured = got.direction or ("lost" if got.displacement is None else "still")
            row[measured] = row.get(measured, 0) + 1
    return out
