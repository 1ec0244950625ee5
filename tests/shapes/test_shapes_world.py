"""ShapesWorld data: determinism, captions, the train / held-out split, placement and rendering."""

import re

import numpy as np
import pytest

from dit_attn.pipelines.shapes import (BACKGROUNDS, COLOURS, HELDOUT_PAIRS, SHAPES, SUBJECTS, TRAIN_PAIRS, Scene,
                                       caption, eval_prompts, is_heldout_pair, render_conditions, render_image,
                                       render_label_map, render_video, sample_scene, scene_rng)
from dit_attn.pipelines.shapes.world import SIZES

_PAIR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def _pairs_in(text):
    return set(_PAIR_RE.findall(text))


def _scenes(kind, split, n, seed=0):
    return [sample_scene(scene_rng(seed, kind, split, i), split=split, kind=kind) for i in range(n)]


def test_palette_and_shapes():
    assert len(COLOURS) >= 8 and len(set(COLOURS.values())) == len(COLOURS)
    assert {"circle", "square", "triangle", "star", "ring", "cross"} <= set(SHAPES)
    for rgb in BACKGROUNDS.values():  # neutral backgrounds
        assert len(set(rgb)) == 1
    rgbs = np.array(list(COLOURS.values()), float)
    d = np.linalg.norm(rgbs[:, None] - rgbs[None], axis=-1)
    assert d[~np.eye(len(rgbs), dtype=bool)].min() > 60  # well separated in RGB
    assert len(SUBJECTS) >= 3


@pytest.mark.parametrize("kind", ["image", "video", "subject"])
def test_sampling_is_deterministic(kind):
    a = _scenes(kind, "train", 20, seed=3)
    b = _scenes(kind, "train", 20, seed=3)
    c = _scenes(kind, "train", 20, seed=4)
    assert a == b
    assert [s.caption for s in a] != [s.caption for s in c]
    for sa, sb in zip(a[:5], b[:5]):
        assert np.array_equal(render_image(sa, 64), render_image(sb, 64))


def test_captions_name_every_object():
    for kind in ("image", "video", "subject"):
        for split in ("train", "heldout"):
            for s in _scenes(kind, split, 60):
                cap = caption(s)
                assert cap == s.caption
                for o in s.objects:
                    if o.is_subject:
                        assert re.search(rf"\ba {o.shape}\b", cap)
                    else:
                        assert f"{o.colour} {o.shape}" in cap
                        assert o.phrase(s.mention_size) in cap
                        if s.mention_size:
                            assert f"{o.size} {o.colour} {o.shape}" in cap
                    if o.direction is not None:
                        assert f"{o.shape} moving {o.direction}" in cap
                assert not re.search(r"\ba [aeiou]", cap), cap  # "an orange ..."


def test_caption_examples():
    from dit_attn.pipelines.shapes import ShapeObject

    red, blue = ShapeObject("circle", "red", "small", (0.2, 0.5)), ShapeObject("square", "blue", "large", (0.7, 0.5))
    assert caption(Scene((red, blue), "relation", relation="left of")) == "a red circle to the left of a blue square"
    assert caption(Scene((red,), "position", position="left", mention_size=True)) == "a small red circle on the left"
    mov = ShapeObject("square", "yellow", "small", (0.3, 0.5), "right", 0.3)
    assert caption(Scene((mov,), "motion", kind="video")) == "a yellow square moving right"
    zorb = ShapeObject("zorb", None, "large", (0.2, 0.5))
    assert caption(Scene((zorb, red), "relation", relation="left of", kind="subject")) == \
        "a zorb to the left of a red circle"


def test_split_rule():
    assert len(HELDOUT_PAIRS) == 8 and len(TRAIN_PAIRS) == 40
    # Every colour and every shape is still seen in training.
    assert {c for c, _ in TRAIN_PAIRS} == set(COLOURS) and {s for _, s in TRAIN_PAIRS} == set(SHAPES)
    assert {c for c, _ in HELDOUT_PAIRS} == set(COLOURS) and {s for _, s in HELDOUT_PAIRS} == set(SHAPES)
    assert is_heldout_pair("red", "circle") and not is_heldout_pair("red", "square")


def test_split_is_disjoint_by_caption_and_heldout_is_new_combinations():
    train_caps, held_caps = set(), set()
    for kind in ("image", "video", "subject"):
        train_caps |= {s.caption for s in _scenes(kind, "train", 400)}
        held = _scenes(kind, "heldout", 150)
        assert all(s.split == "heldout" for s in held)
        held_caps |= {s.caption for s in held}
    assert not train_caps & held_caps
    train_pairs = set().union(*(_pairs_in(c) for c in train_caps))
    assert train_pairs <= set(TRAIN_PAIRS)
    for cap in held_caps:
        new = _pairs_in(cap) - train_pairs
        assert new and new <= set(HELDOUT_PAIRS), cap


def test_eval_prompts():
    for kind in ("t2i", "t2v", "subject"):
        for split in ("heldout", "train"):
            ps = eval_prompts(kind, split=split, n=40)
            assert len(ps) == 40 and len({p for p, _ in ps}) == 40
            assert all(p == s.caption and s.split == split for p, s in ps)
            assert ps == eval_prompts(kind, split=split, n=40)
            assert ps[:10] == eval_prompts(kind, split=split, n=10)
    assert all(s.kind == "video" and all(o.direction for o in s.objects) for _, s in eval_prompts("t2v", n=10))


def test_scene_json_roundtrip():
    for kind in ("image", "video", "subject"):
        for s in _scenes(kind, "train", 10):
            assert Scene.from_json(s.to_json()) == s


def test_objects_inside_and_apart():
    for kind in ("image", "video", "subject"):
        for s in _scenes(kind, "train", 100) + _scenes(kind, "heldout", 30):
            ts = np.linspace(0, 1, 9) if kind == "video" else [0.0]
            for t in ts:
                boxes = [o.bbox(t) for o in s.objects]
                for x0, y0, x1, y1 in boxes:
                    assert 0.0 < x0 < x1 < 1.0 and 0.0 < y0 < y1 < 1.0
                for i in range(len(boxes)):
                    for j in range(i + 1, len(boxes)):
                        a, b = boxes[i], boxes[j]
                        assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
            keys = [(o.colour, o.shape) for o in s.objects]
            assert len(keys) == len(set(keys))


def test_layout_facts_hold():
    for s in _scenes("image", "train", 300):
        c = [o.center for o in s.objects]
        if s.layout == "relation":
            (ax, ay), (bx, by) = c
            assert {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[s.relation] >= 0.2
        elif s.layout == "row":
            assert all(c[i + 1][0] - c[i][0] >= 0.15 for i in range(2))
        elif s.layout == "column":
            assert all(c[i + 1][1] - c[i][1] >= 0.15 for i in range(2))
        elif s.layout == "position":
            x, y = c[0]
            assert {"left": x < 0.34, "right": x > 0.66, "top": y < 0.34, "bottom": y > 0.66,
                    "center": abs(x - 0.5) <= 0.05 and abs(y - 0.5) <= 0.05}[s.position]


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_sizes_and_labels(size):
    for s in _scenes("image", "train", 10):
        img = render_image(s, size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        labels = render_label_map(s, size)
        for k, o in enumerate(s.objects):
            area = (labels == k + 1).sum() / size**2
            assert area > 0.5 * np.pi * 0.3 * SIZES[o.size] ** 2  # every object is visible
            # its pixels carry its colour
            assert np.abs(img[labels == k + 1].astype(int) - COLOURS[o.colour]).max(axis=1).mean() < 60
        assert (img[labels == 0] == BACKGROUNDS[s.background]).all(axis=-1).mean() > 0.9


def test_video_frames_move():
    s = _scenes("video", "train", 1)[0]
    v = render_video(s, 64, 9)
    assert v.shape == (9, 64, 64, 3)
    assert np.array_equal(v[0], render_image(s, 64, 0.0)) and np.array_equal(v[-1], render_image(s, 64, 1.0))
    assert not np.array_equal(v[0], v[-1])


def test_conditions_aligned():
    for s in _scenes("subject", "train", 5) + _scenes("image", "train", 5):
        c = render_conditions(s, 64)
        assert set(c) == {"edge", "mask", "depth"}
        mask, edge = c["mask"] > 0, c["edge"] > 0
        assert (edge <= mask).all()  # contours lie on the objects
        assert np.array_equal(mask, render_label_map(s, 64) > 0)
        # depth: objects are nearer (brighter) than the ground right behind them
        assert c["depth"][mask].mean() > c["depth"][~mask].mean()
