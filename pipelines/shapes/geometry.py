"""Shape and subject geometry of ShapesWorld, in unit-radius object coordinates.

Every object is drawn in its own frame ``(u, v)``: ``u`` to the right, ``v`` downwards (image convention), both
in units of the object's radius, with the object's centre at the origin. A shape is a predicate ``inside(u, v)``;
a subject sprite is a predicate plus a texture ``colour(u, v)``. Rendering (``render.py``) samples these
predicates on a supersampled pixel grid; the scorer (``scoring.py``) samples the same predicates inside a
detected component's bounding box to obtain the silhouette templates it compares against. Keeping one
definition for both makes the evaluator exact on ground-truth renders.

All shapes are upright (no rotation): a star has a point at the top, a triangle a vertex at the top, squares
and crosses are axis-aligned. ``EXTENTS`` gives each silhouette's bounding box in unit-radius coordinates.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
"""The plain shapes, in a fixed order (the order is part of the train/held-out split rule)."""

SUBJECTS = ("zorb", "blicket", "wug", "dax")
"""Made-up subjects: each keyword names one distinctive, textured two-colour sprite."""

SQUARE_HALF = 0.85
RING_INNER = 0.55
CROSS_HALF_WIDTH = 0.33
CROSS_HALF_LENGTH = 0.95
STAR_OUTER = 1.1
STAR_INNER_RATIO = 0.42
TRIANGLE = np.array([[0.0, -1.1], [1.0, 0.65], [-1.0, 0.65]])


def _star_polygon(outer: float = STAR_OUTER, inner_ratio: float = STAR_INNER_RATIO) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, outer, outer * inner_ratio)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


STAR = _star_polygon()
# A pointy-top hexagon: the rotation puts vertices at the top and bottom.
HEXAGON = np.stack([np.cos(-np.pi / 2 + np.arange(6) * np.pi / 3), np.sin(-np.pi / 2 + np.arange(6) * np.pi / 3)], 1)

# Texture colours of the subject sprites (RGB). All chromatic, so a sprite is never confused with a neutral
# background; each sprite uses a different pair and a different pattern and silhouette. The two colours of a pair
# are less than ~100 degrees of hue apart, so their antialiased mixtures stay saturated (a complementary pair
# would mix to grey and punch holes into the sprite's foreground mask).
SUBJECT_STYLE = {
    "zorb": dict(silhouette="disk", pattern="pinwheel", colours=((235, 60, 170), (250, 235, 15))),
    "blicket": dict(silhouette="rounded_square", pattern="stripes", colours=((20, 185, 205), (40, 75, 225))),
    "wug": dict(silhouette="hexagon", pattern="checker", colours=((30, 180, 50), (250, 235, 15))),
    "dax": dict(silhouette="diamond", pattern="bands", colours=((225, 25, 50), (140, 60, 210))),
}


def _polygon_extent(poly: np.ndarray) -> tuple[float, float, float, float]:
    return float(poly[:, 0].min()), float(poly[:, 1].min()), float(poly[:, 0].max()), float(poly[:, 1].max())


EXTENTS: dict[str, tuple[float, float, float, float]] = {
    "circle": (-1.0, -1.0, 1.0, 1.0),
    "square": (-SQUARE_HALF, -SQUARE_HALF, SQUARE_HALF, SQUARE_HALF),
    "triangle": _polygon_extent(TRIANGLE),
    "star": _polygon_extent(STAR),
    "ring": (-1.0, -1.0, 1.0, 1.0),
    "cross": (-CROSS_HALF_LENGTH, -CROSS_HALF_LENGTH, CROSS_HALF_LENGTH, CROSS_HALF_LENGTH),
    "zorb": (-1.0, -1.0, 1.0, 1.0),
    "blicket": (-0.9, -0.9, 0.9, 0.9),
    "wug": _polygon_extent(HEXAGON),
    "dax": (-1.1, -1.1, 1.1, 1.1),
}
"""Silhouette bounding box ``(u0, v0, u1, v1)`` of every shape and subject, in unit-radius coordinates."""


def in_polygon(poly: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the points ``(u, v)``."""
    inside = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = x1 + (x2 - x1) * (v - y1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean silhouette of ``shape`` (a plain shape or a subject keyword) at unit-radius points ``(u, v)``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= SQUARE_HALF) & (np.abs(v) <= SQUARE_HALF)
    if shape == "triangle":
        return in_polygon(TRIANGLE, u, v)
    if shape == "star":
        return in_polygon(STAR, u, v)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= RING_INNER**2)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= CROSS_HALF_LENGTH) & (av <= CROSS_HALF_WIDTH)) | ((au <= CROSS_HALF_WIDTH) & (av <= CROSS_HALF_LENGTH))
    if shape in SUBJECT_STYLE:
        sil = SUBJECT_STYLE[shape]["silhouette"]
        if sil == "disk":
            return u * u + v * v <= 1.0
        if sil == "rounded_square":
            # A 1.8 x 1.8 square with corners rounded at radius 0.35.
            h, rc = 0.9, 0.35
            du = np.maximum(np.abs(u) - (h - rc), 0.0)
            dv = np.maximum(np.abs(v) - (h - rc), 0.0)
            return (np.abs(u) <= h) & (np.abs(v) <= h) & (du * du + dv * dv <= rc * rc)
        if sil == "hexagon":
            return in_polygon(HEXAGON, u, v)
        if sil == "diamond":
            return np.abs(u) + np.abs(v) <= 1.1
    raise ValueError(f"unknown shape {shape!r}")


def subject_texture(subject: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB texture (float, 0..255, shape ``u.shape + (3,)``) of a subject sprite at unit-radius points.

    The texture is defined everywhere; combine it with :func:`inside` for the sprite's silhouette.
    Patterns: ``pinwheel`` (8 alternating sectors), ``stripes`` (4 horizontal bands), ``checker`` (4x4 cells),
    ``bands`` (concentric diamond bands). Periods are relative to the radius, so the pattern scales with the
    sprite and stays a few pixels wide at 64x64.
    """
    style = SUBJECT_STYLE[subject]
    pattern = style["pattern"]
    if pattern == "pinwheel":
        sel = (np.floor((np.arctan2(v, u) + np.pi) / (np.pi / 4)).astype(int) % 2) == 0
    elif pattern == "stripes":
        sel = (np.floor((v + 0.9) / 0.45).astype(int) % 2) == 0
    elif pattern == "checker":
        sel = ((np.floor((u + 1.0) / 0.5).astype(int) + np.floor((v + 1.0) / 0.5).astype(int)) % 2) == 0
    elif pattern == "bands":
        sel = (np.floor((np.abs(u) + np.abs(v)) / 0.3667).astype(int) % 2) == 0
    else:  # pragma: no cover - the styles above are exhaustive
        raise ValueError(pattern)
    c0 = np.asarray(style["colours"][0], dtype=np.float32)
    c1 = np.asarray(style["colours"][1], dtype=np.float32)
    return np.where(sel[..., None], c0, c1)


def template(shape: str, height: int, width: int, supersample: int = 4) -> np.ndarray:
    """Soft silhouette (coverage in [0, 1], ``(height, width)``) of ``shape`` stretched to fill the given box.

    The shape's bounding box (``EXTENTS``) is mapped onto the ``width x height`` pixel box, so the template
    matches a detected component of the same bounding box regardless of the object's size. Used by the
    evaluator's shape classifier.
    """
    u0, v0, u1, v1 = EXTENTS[shape]
    s = supersample
    xs = (np.arange(width * s) + 0.5) / (width * s)
    ys = (np.arange(height * s) + 0.5) / (height * s)
    u = u0 + xs[None, :] * (u1 - u0)
    v = v0 + ys[:, None] * (v1 - v0)
    cov = inside(shape, u, v).astype(np.float32)
    return cov.reshape(height, s, width, s).mean(axis=(1, 3))
