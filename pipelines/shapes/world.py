"""ShapesWorld scenes: palette, shapes, scene descriptions, the scene sampler, captions and the split rule.

A :class:`Scene` is a resolution-free description of one image or video: a tuple of :class:`ShapeObject` (shape,
colour, size, centre in normalised ``[0, 1]`` image coordinates with ``y`` downwards, optional motion), a layout
that says which spatial fact the caption states, and a background colour. Rendering (``render.py``) and
captioning (:func:`caption`) are pure functions of the scene, and :func:`sample_scene` is a pure function of a
``numpy.random.Generator``, so everything is deterministic from a seed.

Design choices
--------------
* **Colours** (:data:`COLOURS`) are eight saturated colours whose hues, in the opponent chroma plane
  ``a = R - (G + B) / 2``, ``b = sqrt(3) / 2 (G - B)``, are at least ~30 degrees apart (red 353, orange 25,
  yellow 57, green 127, cyan 186, blue 230, purple 272, pink 322). **Backgrounds** (:data:`BACKGROUNDS`) are
  neutral greys (zero chroma). Mixing an object colour with a neutral background - antialiasing, a model's blur
  - scales the chroma vector but keeps its hue, so the evaluator can classify colours by hue robustly.
* **Sizes**: ``small`` (radius 0.12 of the image width) and ``large`` (0.19); subjects have radius 0.2.
* **Placement** is by rejection sampling: object bounding boxes keep :data:`MARGIN` from the border and
  :data:`GAP` from each other (for videos, at every time step), and the stated spatial fact holds with a clear
  margin, so the evaluator can separate objects and read relations unambiguously.
* **Layouts**: ``position`` (one object: "a small green star on the left"), ``relation`` (two objects: "a red
  circle above a blue square"), ``list`` ("a red circle and a blue square"), ``row`` / ``column`` (three objects
  ordered left-to-right / top-to-bottom: "a red circle on the left, a blue square in the middle and a green star
  on the right"), ``motion`` (videos: "a yellow square moving right and a blue circle moving up").
* **Subjects** (:data:`SUBJECTS`): made-up keywords ("a zorb") naming textured sprites; subject scenes are "a
  zorb to the left of a red circle" or "a zorb at the top".
* Within a scene every (colour, shape) pair is unique, so each caption phrase identifies one object.

Train / held-out split rule
---------------------------
Colour ``i`` (index in :data:`COLOURS`) and shape ``j`` (index in :data:`SHAPES`) form a *held-out pair* iff
``i % 6 == j``. That holds out 8 of the 48 pairs - red circle, orange square, yellow triangle, green star, cyan
ring, blue cross, purple circle, pink square - so every colour and every shape still occurs in training, but
never in those combinations. A scene is *train* iff none of its objects is a held-out pair and *held-out* iff at
least one is. Captions name every object's colour and shape, so the two splits are disjoint by caption and every
held-out caption contains a colour-shape combination never seen in a training caption.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from .geometry import EXTENTS, SHAPES, SUBJECTS

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 50),
    "orange": (245, 110, 10),
    "yellow": (250, 235, 15),
    "green": (30, 180, 50),
    "cyan": (20, 185, 205),
    "blue": (40, 75, 225),
    "purple": (140, 60, 210),
    "pink": (235, 60, 170),
}
"""Object palette (name -> RGB), in the fixed order used by the split rule."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "light grey": (190, 190, 190),
    "grey": (120, 120, 120),
    "dark grey": (40, 40, 40),
}
"""Neutral background colours (zero chroma, so never confused with an object colour)."""

SIZES: dict[str, float] = {"small": 0.12, "large": 0.19}
"""Object radius (fraction of the image width) per size word."""

SUBJECT_RADIUS = 0.2
"""Radius of a subject sprite (fraction of the image width)."""

POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left of", "right of", "above", "below")
DIRECTIONS = ("left", "right", "up", "down")
LAYOUTS = ("position", "relation", "list", "row", "column", "motion")
_LAYOUT_COUNTS = {"position": (1,), "relation": (2,), "list": (2, 3), "row": (3,), "column": (3,)}
KINDS = ("image", "video", "subject")
SPLITS = ("train", "heldout")

MARGIN = 0.04
"""Minimum distance between an object's bounding box and the image border (fraction of the image)."""
GAP = 0.06
"""Minimum distance between two objects' bounding boxes (fraction of the image)."""

_POSITION_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                    "center": "in the center"}
_RELATION_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
# Centre boxes ((x0, x1), (y0, y1)) in which a lone object is placed for each position word.
_POSITION_BOX = {"left": ((0.0, 0.33), (0.3, 0.7)), "right": ((0.67, 1.0), (0.3, 0.7)),
                 "top": ((0.3, 0.7), (0.0, 0.33)), "bottom": ((0.3, 0.7), (0.67, 1.0)),
                 "center": ((0.45, 0.55), (0.45, 0.55))}


def is_heldout_pair(colour: str, shape: str) -> bool:
    """True iff the (colour, shape) pair is held out of training (colour index mod 6 == shape index)."""
    if colour is None or shape not in SHAPES:
        return False
    return list(COLOURS).index(colour) % len(SHAPES) == SHAPES.index(shape)


HELDOUT_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES if is_heldout_pair(c, s))
"""The 8 held-out (colour, shape) pairs."""
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES if not is_heldout_pair(c, s))
"""The 40 training (colour, shape) pairs."""


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    ``shape`` is a plain shape (:data:`SHAPES`) or a subject keyword (:data:`SUBJECTS`, then ``colour`` is None).
    ``center`` is the object's centre at time 0 in normalised image coordinates (x right, y down). For videos,
    ``direction`` / ``distance`` give a constant-speed motion: the centre moves ``distance`` (fraction of the
    image) in ``direction`` over the clip.
    """

    shape: str
    colour: Optional[str]
    size: str
    center: tuple[float, float]
    direction: Optional[str] = None
    distance: float = 0.0

    @property
    def is_subject(self) -> bool:
        """True for a subject sprite ("a zorb"), False for a plain coloured shape."""
        return self.shape in SUBJECTS

    @property
    def radius(self) -> float:
        """Radius in fractions of the image width."""
        return SUBJECT_RADIUS if self.is_subject else SIZES[self.size]

    def center_at(self, t: float) -> tuple[float, float]:
        """Centre at normalised time ``t`` in [0, 1] (the first frame is 0, the last 1)."""
        if self.direction is None:
            return self.center
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[self.direction]
        return (self.center[0] + dx * self.distance * t, self.center[1] + dy * self.distance * t)

    def bbox(self, t: float = 0.0) -> tuple[float, float, float, float]:
        """Silhouette bounding box ``(x0, y0, x1, y1)`` (normalised) at time ``t``."""
        cx, cy = self.center_at(t)
        u0, v0, u1, v1 = EXTENTS[self.shape]
        r = self.radius
        return (cx + u0 * r, cy + v0 * r, cx + u1 * r, cy + v1 * r)

    def phrase(self, mention_size: bool = False) -> str:
        """Noun phrase naming the object: "a small red circle", "an orange star", "a zorb"."""
        if self.is_subject:
            words = self.shape
        else:
            words = f"{self.size} {self.colour} {self.shape}" if mention_size else f"{self.colour} {self.shape}"
        article = "an" if words[0] in "aeiou" else "a"
        return f"{article} {words}"

    @property
    def heldout(self) -> bool:
        """True iff this object's (colour, shape) pair is held out of training."""
        return is_heldout_pair(self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    """A ShapesWorld scene (image, video or subject scene); see the module docstring for the fields' meaning.

    ``relation`` (layout ``relation``) reads ``objects[0] <relation> objects[1]``; ``position`` (layout
    ``position``) places ``objects[0]``; layouts ``row`` / ``column`` order ``objects`` left-to-right /
    top-to-bottom; layout ``motion`` uses each object's ``direction``.
    """

    objects: tuple[ShapeObject, ...]
    layout: str
    background: str = "white"
    relation: Optional[str] = None
    position: Optional[str] = None
    mention_size: bool = False
    kind: str = "image"

    @property
    def caption(self) -> str:
        """The scene's caption (same as :func:`caption`)."""
        return caption(self)

    @property
    def split(self) -> str:
        """``"heldout"`` if any object is a held-out (colour, shape) pair, else ``"train"``."""
        return "heldout" if any(o.heldout for o in self.objects) else "train"

    @property
    def subject(self) -> Optional[str]:
        """The subject keyword in this scene, if any."""
        for o in self.objects:
            if o.is_subject:
                return o.shape
        return None

    def to_dict(self) -> dict:
        """Plain-JSON-types dictionary (round-trips through :meth:`from_dict`)."""
        d = dataclasses.asdict(self)
        d["objects"] = [dict(o, center=list(o["center"])) for o in d["objects"]]
        return d

    def to_json(self) -> str:
        """JSON string of :meth:`to_dict` (what the datasets put in ``item["scene"]``)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        """Inverse of :meth:`to_dict`."""
        objs = tuple(ShapeObject(**dict(o, center=tuple(o["center"]))) for o in d["objects"])
        return cls(**dict(d, objects=objs))

    @classmethod
    def from_json(cls, s: str) -> "Scene":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(s))


def caption(scene: Scene) -> str:
    """Caption of a scene: names every object's colour and shape (or subject keyword) and the layout's fact.

    Examples: "a small green star on the left", "a red circle above a blue square", "a red circle and a blue
    square", "a red circle at the top, a blue square in the middle and a green star at the bottom", "a yellow
    square moving right and a blue circle moving up", "a zorb to the left of a red circle".
    """
    ph = [o.phrase(scene.mention_size) for o in scene.objects]
    if scene.layout == "position":
        return f"{ph[0]} {_POSITION_PHRASE[scene.position]}"
    if scene.layout == "relation":
        return f"{ph[0]} {_RELATION_PHRASE[scene.relation]} {ph[1]}"
    if scene.layout == "list":
        return ph[0] if len(ph) == 1 else ", ".join(ph[:-1]) + " and " + ph[-1]
    if scene.layout == "row":
        return f"{ph[0]} on the left, {ph[1]} in the middle and {ph[2]} on the right"
    if scene.layout == "column":
        return f"{ph[0]} at the top, {ph[1]} in the middle and {ph[2]} at the bottom"
    if scene.layout == "motion":
        parts = [f"{p} moving {o.direction}" for p, o in zip(ph, scene.objects)]
        return " and ".join(parts)
    raise ValueError(f"unknown layout {scene.layout!r}")


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def _center_range(shape: str, radius: float) -> tuple[tuple[float, float], tuple[float, float]]:
    u0, v0, u1, v1 = EXTENTS[shape]
    return ((MARGIN - u0 * radius, 1 - MARGIN - u1 * radius), (MARGIN - v0 * radius, 1 - MARGIN - v1 * radius))


def _separated(a: Sequence[float], b: Sequence[float], gap: float = GAP) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _all_separated(objs: Sequence[ShapeObject], times: Iterable[float] = (0.0,)) -> bool:
    times = list(times)
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            if not all(_separated(objs[i].bbox(t), objs[j].bbox(t)) for t in times):
                return False
    return True


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> Optional[float]:
    if hi < lo:
        return None
    return float(rng.uniform(lo, hi))


def _pick_pairs(rng: np.random.Generator, n: int, split: str) -> list[tuple[str, str]]:
    """``n`` distinct (colour, shape) pairs valid for ``split`` (held-out: at least one held-out pair)."""
    if split == "train":
        pool = list(TRAIN_PAIRS)
        idx = rng.choice(len(pool), size=n, replace=False)
        return [pool[i] for i in idx]
    if split == "heldout":
        first = HELDOUT_PAIRS[int(rng.integers(len(HELDOUT_PAIRS)))]
        rest_pool = [p for p in TRAIN_PAIRS + HELDOUT_PAIRS if p != first]
        rest = [rest_pool[i] for i in rng.choice(len(rest_pool), size=n - 1, replace=False)]
        pairs = [first] + rest
        order = rng.permutation(n)
        return [pairs[i] for i in order]
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _place_static(rng: np.random.Generator, protos: list[ShapeObject], layout: str, fact: Optional[str],
                  tries: int = 400) -> Optional[list[ShapeObject]]:
    """Rejection-sample centres for ``protos`` so that ``layout``/``fact`` holds clearly and objects stay apart."""
    for _ in range(tries):
        centers = []
        if layout in ("row", "column"):
            # Constructive: lay the objects out along the axis with random slack between them, and scatter them
            # around a common line across it.
            k = 0 if layout == "row" else 1
            lo = [EXTENTS[o.shape][k] * o.radius for o in protos]
            widths = [(EXTENTS[o.shape][k + 2] - EXTENTS[o.shape][k]) * o.radius for o in protos]
            slack = 1.0 - 2 * MARGIN - sum(widths) - GAP * (len(protos) - 1)
            if slack < 0:
                return None
            parts = rng.dirichlet(np.ones(len(protos) + 1)) * slack
            line = float(rng.uniform(0.3, 0.7))
            pos = MARGIN + parts[0]
            for j, o in enumerate(protos):
                along = pos - lo[j]
                pos += widths[j] + GAP + parts[j + 1]
                rng_across = _center_range(o.shape, o.radius)[1 - k]
                across = _uniform(rng, max(rng_across[0], line - 0.08), min(rng_across[1], line + 0.08))
                if across is None:
                    across = float(np.clip(line, *rng_across))
                centers.append((along, across) if k == 0 else (across, along))
        else:
            for o in protos:
                (x0, x1), (y0, y1) = _center_range(o.shape, o.radius)
                if layout == "position":
                    (bx0, bx1), (by0, by1) = _POSITION_BOX[fact]
                    x0, x1, y0, y1 = max(x0, bx0), min(x1, bx1), max(y0, by0), min(y1, by1)
                cx, cy = _uniform(rng, x0, x1), _uniform(rng, y0, y1)
                if cx is None or cy is None:
                    return None
                centers.append((cx, cy))
        objs = [dataclasses.replace(o, center=c) for o, c in zip(protos, centers)]
        if layout == "relation":
            (ax, ay), (bx, by) = centers
            along, across = {"left of": (bx - ax, by - ay), "right of": (ax - bx, ay - by),
                             "above": (by - ay, bx - ax), "below": (ay - by, ax - bx)}[fact]
            if along < 0.2 or abs(across) > 0.6 * along:
                continue
        elif layout in ("row", "column"):
            k = 0 if layout == "row" else 1
            along = [c[k] for c in centers]
            across = [c[1 - k] for c in centers]
            if any(along[i + 1] - along[i] < 0.15 or abs(across[i + 1] - across[i]) > 0.8 * (along[i + 1] - along[i])
                   for i in range(len(along) - 1)):
                continue
        if _all_separated(objs):
            return objs
    return None


def _place_moving(rng: np.random.Generator, protos: list[ShapeObject], tries: int = 400) -> Optional[list[ShapeObject]]:
    """Rejection-sample start centres and motions: objects stay inside the image and apart at every time."""
    times = np.linspace(0.0, 1.0, 17)
    for _ in range(tries):
        objs = []
        for o in protos:
            (x0, x1), (y0, y1) = _center_range(o.shape, o.radius)
            d = o.distance
            if o.direction == "right":
                x1 -= d
            elif o.direction == "left":
                x0 += d
            elif o.direction == "down":
                y1 -= d
            else:
                y0 += d
            cx, cy = _uniform(rng, x0, x1), _uniform(rng, y0, y1)
            if cx is None or cy is None:
                return None
            objs.append(dataclasses.replace(o, center=(cx, cy)))
        if _all_separated(objs, times):
            return objs
    return None


def sample_scene(rng: np.random.Generator, split: str = "train", kind: str = "image",
                 n_objects: Optional[int] = None, layout: Optional[str] = None,
                 subject: Optional[str] = None) -> Scene:
    """Sample a random scene.

    Args:
        rng: numpy Generator; the scene is a deterministic function of its state.
        split: ``"train"`` (only training colour-shape pairs) or ``"heldout"`` (at least one held-out pair).
        kind: ``"image"`` (1-3 static shapes), ``"video"`` (1-2 shapes moving left/right/up/down; render with
            :func:`render_video`) or ``"subject"`` (a made-up textured subject, alone or related to one shape).
        n_objects: number of plain shapes (image: 1-3, video: 1-2, subject: 0-1, held-out subject scenes always 1);
            random if None.
        layout: force an image layout: ``position`` (1 object), ``relation`` (2), ``list`` (2-3), ``row`` /
            ``column`` (3); random if None.
        subject: force the subject keyword (kind ``"subject"``).

    Objects are placed by rejection sampling (see the module docstring); if a configuration does not fit, the
    objects' sizes are resampled.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    mention_size = bool(rng.random() < 0.5)

    if kind == "image":
        if layout is not None:
            allowed = _LAYOUT_COUNTS.get(layout)
            if allowed is None:
                raise ValueError(f"image layouts are {tuple(_LAYOUT_COUNTS)}, got {layout!r}")
            if n_objects is None:
                n_objects = allowed[int(rng.integers(len(allowed)))]
            elif int(n_objects) not in allowed:
                raise ValueError(f"layout {layout!r} takes {allowed} objects, got {n_objects}")
        n = int(n_objects) if n_objects is not None else int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
        if not 1 <= n <= 3:
            raise ValueError("image scenes have 1 to 3 objects")
        if layout is None:
            layout = {1: "position", 2: "relation" if rng.random() < 0.75 else "list",
                      3: ["row", "column", "list"][int(rng.choice(3, p=[0.35, 0.35, 0.3]))]}[n]
        fact = None
        if layout == "position":
            fact = POSITIONS[int(rng.integers(len(POSITIONS)))]
        elif layout == "relation":
            fact = RELATIONS[int(rng.integers(len(RELATIONS)))]
        pairs = _pick_pairs(rng, n, split)
        for attempt in range(50):
            sizes = [("small" if attempt >= 25 else ["small", "large"][int(rng.integers(2))]) for _ in range(n)]
            protos = [ShapeObject(s, c, z, (0.5, 0.5)) for (c, s), z in zip(pairs, sizes)]
            objs = _place_static(rng, protos, layout, fact)
            if objs is not None:
                return Scene(tuple(objs), layout, background,
                             relation=fact if layout == "relation" else None,
                             position=fact if layout == "position" else None,
                             mention_size=mention_size, kind="image")
        raise RuntimeError(f"could not place {n} objects for layout {layout!r}")

    if kind == "video":
        n = int(n_objects) if n_objects is not None else int(rng.choice([1, 2], p=[0.5, 0.5]))
        if not 1 <= n <= 2:
            raise ValueError("video scenes have 1 or 2 objects")
        pairs = _pick_pairs(rng, n, split)
        for attempt in range(50):
            protos = []
            for c, s in pairs:
                size = "small" if attempt >= 25 else ["small", "large"][int(rng.integers(2))]
                direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
                distance = float(rng.uniform(0.25, 0.4))
                protos.append(ShapeObject(s, c, size, (0.5, 0.5), direction, distance))
            objs = _place_moving(rng, protos)
            if objs is not None:
                return Scene(tuple(objs), "motion", background, mention_size=mention_size, kind="video")
        raise RuntimeError("could not place moving objects")

    # Subject scenes: a subject alone (training only) or a subject related to one plain shape.
    if split == "heldout":
        n = 1
    else:
        n = int(n_objects) if n_objects is not None else int(rng.random() < 0.8)
    if subject is None:
        subject = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    sub = ShapeObject(subject, None, "large", (0.5, 0.5))
    if n == 0:
        fact = POSITIONS[int(rng.integers(len(POSITIONS)))]
        objs = _place_static(rng, [sub], "position", fact)
        if objs is None:  # pragma: no cover - a lone subject always fits
            raise RuntimeError("could not place the subject")
        return Scene(tuple(objs), "position", background, position=fact, mention_size=False, kind="subject")
    fact = RELATIONS[int(rng.integers(len(RELATIONS)))]
    (c, s), = _pick_pairs(rng, 1, split)
    subject_first = bool(rng.random() < 0.5)
    for attempt in range(50):
        size = "small" if attempt >= 25 else ["small", "large"][int(rng.integers(2))]
        shape_obj = ShapeObject(s, c, size, (0.5, 0.5))
        protos = [sub, shape_obj] if subject_first else [shape_obj, sub]
        objs = _place_static(rng, protos, "relation", fact)
        if objs is not None:
            return Scene(tuple(objs), "relation", background, relation=fact, mention_size=mention_size,
                         kind="subject")
    raise RuntimeError("could not place the subject scene")  # pragma: no cover


_KIND_ID = {"image": 1, "video": 2, "subject": 3, "condition": 4}
_SPLIT_ID = {"train": 1, "heldout": 2}


def scene_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    """The generator the datasets use for item ``index``: a pure function of (seed, kind, split, index).

    ``kind`` is ``"image"``, ``"video"``, ``"subject"`` or ``"condition"``.
    """
    return np.random.default_rng([int(seed), _KIND_ID[kind], _SPLIT_ID[split], int(index)])


def condition_scene(seed: int, split: str, index: int, subject_prob: float = 0.5) -> Scene:
    """Scene of item ``index`` of the multi-condition dataset: a subject scene with probability ``subject_prob``,
    else an image scene; deterministic in (seed, split, index) and independent of the image dataset's items."""
    rng = np.random.default_rng([int(seed), _KIND_ID["condition"], _SPLIT_ID[split], int(index)])
    kind = "subject" if rng.random() < subject_prob else "image"
    return sample_scene(rng, split=split, kind=kind)


def eval_prompts(kind: str = "t2i", split: str = "heldout", n: int = 64, seed: int = 20240) -> list[tuple[str, Scene]]:
    """Fixed evaluation prompts with their expected scene specs.

    Args:
        kind: ``"t2i"`` (image scenes), ``"t2v"`` (video scenes) or ``"subject"`` (subject scenes).
        split: ``"heldout"`` (new colour-shape combinations) or ``"train"`` (training distribution).
        n: number of prompts; captions are distinct.
        seed: the list is a deterministic function of (kind, split, n, seed); a longer list extends a shorter one.

    Returns:
        ``[(prompt, scene)]``. The scene is one ground-truth instance of the prompt (render it for a reference);
        the evaluator checks only what the caption states (colours, shapes, sizes if mentioned, the
        position/relation/order, motion directions), not the instance's exact positions.
    """
    kinds = {"t2i": "image", "t2v": "video", "subject": "subject", "image": "image", "video": "video"}
    if kind not in kinds:
        raise ValueError(f"kind must be 't2i', 't2v' or 'subject', got {kind!r}")
    scene_kind = kinds[kind]
    rng = np.random.default_rng([int(seed), 7, _KIND_ID[scene_kind], _SPLIT_ID[split]])
    out: list[tuple[str, Scene]] = []
    seen: set[str] = set()
    for _ in range(200 * n + 1000):
        if len(out) >= n:
            break
        scene = sample_scene(rng, split=split, kind=scene_kind)
        cap = caption(scene)
        if cap in seen:
            continue
        seen.add(cap)
        out.append((cap, scene))
    return out
