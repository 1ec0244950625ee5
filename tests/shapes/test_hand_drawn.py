"""Hand-drawn edge maps (``render.hand_drawing``): deterministic per seed, the presets differ in what they vary,
everything stays inside the image, and the fidelity scorer reads them against the drawn silhouettes."""

import numpy as np
import pytest

from dit_attn.pipelines.shapes.scoring import _dilate, edge_scores
from dit_attn.pipelines.shapes.render import (HAND_STYLES, OOV_SHAPES, hand_drawing, hand_drawn_edges,
                                              hand_style_names, label_edges, render_hand_drawn_image)
from dit_attn.pipelines.shapes.world import Scene, ShapeObject, condition_scene


def _scenes(n=12, split="heldout"):
    return [condition_scene(0, split, i, subject_prob=0.0) for i in range(n)]


def test_deterministic_per_seed_and_different_across_seeds():
    scene = _scenes(1)[0]
    for style in hand_style_names():
        a, b = hand_drawing(scene, 64, style, seed=3), hand_drawing(scene, 64, style, seed=3)
        np.testing.assert_array_equal(a.edges, b.edges)
        np.testing.assert_array_equal(a.outline, b.outline)
        assert a.style == b.style and a.shapes == b.shapes
        assert not np.array_equal(a.edges, hand_drawing(scene, 64, style, seed=4).edges), style
    np.testing.assert_array_equal(hand_drawn_edges(scene, 64, "canny", 5), hand_drawing(scene, 64, "canny", 5).edges)
    picked = {hand_drawing(scene, 64, "hand", seed=s).style for s in range(24)}
    assert picked == set(HAND_STYLES)  # "hand" draws every preset
    with pytest.raises(ValueError, match="style must be one of"):
        hand_drawing(scene, 64, "crayon")


def _stats(style, scenes, seeds=range(3)):
    """Per preset: stroke pixels per outline pixel, fraction of stroke pixels farther than 3 px from the outline
    (noise), outline recall of the strokes (gaps), and how many objects became ellipses / blobs."""
    width, far, recall, oov, objects = [], [], [], 0, 0
    for i, scene in enumerate(scenes):
        for s in seeds:
            d = hand_drawing(scene, 64, style, seed=100 * i + s)
            drawn, outline = d.edges > 0, d.outline > 0
            width.append(drawn.sum() / outline.sum())
            far.append((drawn & ~_dilate(outline, 3)).sum() / drawn.sum())
            recall.append((outline & _dilate(drawn, 0)).sum() / outline.sum())
            oov += sum(sh in OOV_SHAPES for sh in d.shapes)
            objects += len(d.shapes)
    return np.mean(width), np.mean(far), np.mean(recall), oov / objects


def test_styles_differ_in_width_noise_gaps_and_vocabulary():
    scenes = _scenes(8)
    st = {name: _stats(name, scenes) for name in HAND_STYLES}
    # width: 2-3 px strokes hold about twice the pixels of the one-pixel outline, 1 px strokes about as many
    assert st["thick"][0] > 1.8 and st["marker"][0] > 1.8 and st["canny"][0] < 1.4, st
    # canny-like noise far from any outline; none in "thick"
    assert st["thick"][1] == 0.0 and st["canny"][1] > 0.02, st
    # gaps: 1-px strokes with breaks miss some of the outline; closed 2-3 px strokes cover it
    assert st["thick"][2] > 0.9 and st["canny"][2] < st["thick"][2] - 0.05, st
    # out-of-vocabulary shapes: never in "thick", often in "marker"
    assert st["thick"][3] == 0.0 and st["marker"][3] > 0.2, st
    scene = scenes[0]
    maps = {name: hand_drawing(scene, 64, name, seed=0).edges for name in HAND_STYLES}
    assert len({m.tobytes() for m in maps.values()}) == len(HAND_STYLES)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_stays_inside_the_image_and_near_the_objects(size):
    """Right shape and values at every size; without noise every stroke pixel lies within the stroke width (+ the
    wobble) of the drawn outline, and objects at the image border are clipped, not wrapped around."""
    border = Scene((ShapeObject("square", "red", "large", (0.02, 0.5)), ShapeObject("star", "blue", "large",
                                                                                      (0.97, 0.97))), "list")
    for i, scene in enumerate(_scenes(6) + [border]):
        for style in hand_style_names():
            d = hand_drawing(scene, size, style, seed=i)
            for m in (d.edges, d.outline, d.mask):
                assert m.shape == (size, size) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
            assert d.labels.shape == (size, size) and d.labels.max() <= len(scene.objects)
            np.testing.assert_array_equal(d.outline > 0, label_edges(d.labels))  # the fill's one-pixel contour
            if style == "thick":  # no noise, no retracing: strokes hug the outline
                assert not ((d.edges > 0) & ~_dilate(d.outline > 0, 3)).any()
    d = hand_drawing(border, size, "thick", seed=0)
    assert (d.edges[:, :2] > 0).any()  # the square at the left border is drawn there...
    assert not (d.edges[:size // 4, :size // 4] > 0).any()  # ...and nothing wraps into the far corner


def test_image_follows_the_drawing():
    """The image rendered from a drawing has the drawn silhouettes: its outline scores F1 1 against the drawing's
    outline, the scene's own render less when an object became an ellipse or a blob."""
    from dit_attn.pipelines.shapes.scoring import image_edges
    from dit_attn.pipelines.shapes.render import render_image

    hits = 0
    for i, scene in enumerate(_scenes(10)):
        d = hand_drawing(scene, 64, "marker", seed=i)
        img = render_hand_drawn_image(scene, d)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert edge_scores(image_edges(img), d.outline > 0, 1)[2] > 0.95
        if any(sh in OOV_SHAPES for sh in d.shapes):
            hits += 1
            assert edge_scores(image_edges(render_image(scene)), d.outline > 0, 1)[2] < 0.95
    assert hits >= 2


def test_fidelity_scores_hand_drawings_against_the_drawn_silhouettes():
    from dit_attn.pipelines.conditions import fidelity as FID

    scenes = FID.heldout_scenes("edge", 4)
    drawings = FID.edge_drawings(scenes, "hand")
    assert [d.edges.tobytes() for d in drawings] == [d.edges.tobytes() for d in FID.edge_drawings(scenes, "hand")]
    other = FID.edge_drawings(FID.heldout_scenes("edge", 4, seed=1), "hand", seed=1)
    assert all(a.edges.tobytes() != b.edges.tobytes() for a, b in zip(drawings, other))
    followed = [render_hand_drawn_image(s, d) for s, d in zip(scenes, drawings)]
    assert FID.score(followed, scenes, 1, drawings)["edge_f1"] > 0.95
    assert FID.score(followed, scenes, 2, drawings)["mask_iou"] > 0.95
    cond = FID.condition_image(scenes[0], "edge", edges=drawings[0].edges)
    assert cond.shape == (3, 64, 64) and float(cond.max()) == 1.0 and float(cond.min()) == -1.0
    with pytest.raises(ValueError, match="edge_style must be one of"):
        FID.fidelity(None, "edge", modes=("none",), n=1, edge_style="crayon")
    with pytest.raises(ValueError, match="one map per scene"):
        FID.generate_conditioned(None, scenes, "edge", "pka", edge_maps=[d.edges for d in drawings[:2]])


def test_render_docstring_examples_run():
    import doctest

    from dit_attn.pipelines.shapes import render

    result = doctest.testmod(render, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 4
