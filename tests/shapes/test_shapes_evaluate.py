"""The ShapesWorld evaluator: exact on ground truth, robust to mild degradation, near zero on noise."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from dit_attn.pipelines.shapes import (SHAPES, SUBJECTS, ShapeObject, ShapesVideoDataset, aggregate, edge_f1,
                                       eval_prompts, find_subject, intervals, mask_iou, parse_image, render_conditions,
                                       render_image, render_video, sample_scene, scene_rng, score_conditions,
                                       score_image, score_video)
from dit_attn.pipelines.shapes.scoring import classify_shape, label
from dit_attn.pipelines.shapes.world import COLOURS, Scene

from conftest import degrade


def _image_scenes(n, seed=1):
    return [sample_scene(scene_rng(seed, "image", split, i), split=split)
            for i, split in zip(range(n), ["train", "heldout"] * n)]


def _video_scenes(n, seed=1):
    return [sample_scene(scene_rng(seed, "video", "train", i), kind="video") for i in range(n)]


SCENES = _image_scenes(240)


def test_ground_truth_images_64():
    agg = aggregate([score_image(render_image(s, 64), s) for s in SCENES])
    assert agg["n"] == 240
    assert agg["object_accuracy"] >= 0.98 and agg["correct"] >= 0.98
    for k in ("count", "colour", "shape", "size", "position", "relation", "order"):
        assert agg[k] >= 0.98, (k, agg)


@pytest.mark.parametrize("size", [32, 128])
def test_ground_truth_images_other_sizes(size):
    agg = aggregate([score_image(render_image(s, size), s) for s in SCENES[:60]])
    assert agg["object_accuracy"] >= 0.98 and agg["correct"] >= 0.95, agg


def test_every_shape_and_colour_classified():
    for shape in SHAPES:
        for colour in COLOURS:
            for size, bg in (("small", "white"), ("large", "dark grey")):
                s = Scene((ShapeObject(shape, colour, size, (0.5, 0.5)),), "list", bg)
                dets = parse_image(render_image(s, 64))
                assert len(dets) == 1
                d = dets[0]
                assert (d.colour, d.shape, d.size) == (colour, shape, size)
                assert abs(d.centroid[0] - 0.5) < 0.03


def test_mild_blur_and_noise():
    rng = np.random.default_rng(0)
    blurred = aggregate([score_image(degrade(render_image(s, 64), rng, 1.0, 0.0), s) for s in SCENES[:120]])
    noisy = aggregate([score_image(degrade(render_image(s, 64), rng, 0.0, 0.05), s) for s in SCENES[120:]])
    both = aggregate([score_image(degrade(render_image(s, 64), rng, 1.0, 0.05), s) for s in SCENES[:120]])
    for agg in (blurred, noisy, both):
        assert agg["object_accuracy"] >= 0.9 and agg["correct"] >= 0.9, agg


def test_noise_images_score_near_zero():
    rng = np.random.default_rng(0)
    results = []
    for s in SCENES[:60]:
        results.append(score_image(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), s))
        results.append(score_image(np.clip(rng.normal(128, 60, (64, 64, 3)), 0, 255).astype(np.uint8), s))
    agg = aggregate(results)
    assert agg["object_accuracy"] <= 0.02 and agg["correct"] == 0.0, agg
    # a blank background is not an object either
    assert parse_image(np.full((64, 64, 3), 128, np.uint8)) == []


def test_wrong_prompts_fail():
    """The evaluator checks what the prompt says: a wrong colour, shape or relation is caught."""
    checked = 0
    for s in SCENES[:80]:
        img = render_image(s, 64)
        o = s.objects[0]
        other_colour = next(c for c in COLOURS if c != o.colour and all(c != p.colour for p in s.objects))
        other_shape = next(x for x in SHAPES if x != o.shape and all(x != p.shape for p in s.objects))
        bad_c = dataclasses.replace(s, objects=(dataclasses.replace(o, colour=other_colour),) + s.objects[1:])
        bad_s = dataclasses.replace(s, objects=(dataclasses.replace(o, shape=other_shape),) + s.objects[1:])
        for bad in (bad_c, bad_s):
            r = score_image(img, bad)
            assert not r.correct and not r.objects[0].correct
        if s.layout == "relation":
            flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
            r = score_image(img, dataclasses.replace(s, relation=flip[s.relation]))
            assert r.relation_ok is False and not r.correct
            checked += 1
    assert checked > 5
    # an extra object is a count error
    one = next(s for s in SCENES if len(s.objects) == 1)
    two = next(s for s in SCENES if len(s.objects) == 2)
    assert not score_image(render_image(two, 64), dataclasses.replace(two, objects=two.objects[:1],
                                                                       layout="list")).count_ok
    assert score_image(render_image(one, 64), one).count_ok


def test_input_formats_agree():
    s = SCENES[0]
    img = render_image(s, 64)
    ref = score_image(img, s)
    t01 = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    for x in (Image.fromarray(img), img.astype(np.float32) / 255.0, t01, t01 * 2 - 1, img.astype(np.float32) / 127.5 - 1):
        r = score_image(x, s)
        assert r.correct == ref.correct and [o.correct for o in r.objects] == [o.correct for o in ref.objects]
    assert ref.correct


def test_ground_truth_videos():
    scenes = _video_scenes(40)
    agg = aggregate([score_video(render_video(s, 64, 9), s) for s in scenes])
    assert agg["direction"] >= 0.98 and agg["object_accuracy"] >= 0.98 and agg["correct"] >= 0.98, agg
    rng = np.random.default_rng(0)
    deg = aggregate([score_video(np.stack([degrade(f, rng, 1.0, 0.05) for f in render_video(s, 64, 9)]), s)
                     for s in scenes[:15]])
    assert deg["direction"] >= 0.9, deg
    noise = aggregate([score_video(rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8), s) for s in scenes[:10]])
    assert noise["direction"] == 0.0 and noise["object_accuracy"] == 0.0


def test_video_direction_errors_and_dataset_layout():
    ds = ShapesVideoDataset(size=64, frames=9, length=5, seed=0)
    item = ds[0]
    s = Scene.from_json(item["scene"])
    assert score_video(item["video"], s).correct  # (C, F, H, W) tensor in [-1, 1]
    assert score_video(list(render_video(s, 64, 9)), s).correct  # list of frames
    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    wrong = dataclasses.replace(s, objects=tuple(dataclasses.replace(o, direction=flip[o.direction]) for o in s.objects))
    r = score_video(render_video(s, 64, 9), wrong)
    assert r.direction_accuracy == 0.0 and not r.correct
    # a still clip has no direction
    still = np.stack([render_image(s, 64, 0.0)] * 9)
    assert score_video(still, s).direction_accuracy == 0.0


def test_condition_fidelity():
    scenes = [sample_scene(scene_rng(2, k, "train", i), kind=k) for i in range(12) for k in ("image", "subject")]
    rng = np.random.default_rng(0)
    bad = []
    for s in scenes:
        img = render_image(s, 64)
        cond = render_conditions(s, 64)
        r = score_conditions(img, s)
        assert r.edge_f1 >= 0.97 and r.mask_iou >= 0.97, r
        assert edge_f1(img, cond["edge"]) == r.edge_f1 and mask_iou(img, cond["mask"]) == r.mask_iou
        if s.subject:
            assert r.subject_ok
        # a shifted condition and another scene's condition score low
        shifted = score_conditions(img, s, edge=np.roll(cond["edge"], 8, axis=1), mask=np.roll(cond["mask"], 8, axis=1))
        assert shifted.edge_f1 < 0.5 and shifted.mask_iou < 0.6
        other = render_conditions(sample_scene(scene_rng(77, "image", "train", len(bad))), 64)
        bad.append(score_conditions(img, s, edge=other["edge"], mask=other["mask"]))
        # still faithful after mild degradation
        deg = score_conditions(degrade(img, rng, 1.0, 0.05), s)
        assert deg.edge_f1 >= 0.85 and deg.mask_iou >= 0.85, deg
    wrong = aggregate(bad)
    assert wrong["edge_f1"] < 0.3 and wrong["mask_iou"] < 0.3, wrong
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert score_conditions(noise, scenes[0]).edge_f1 < 0.4


def test_subject_presence():
    scenes = [sample_scene(scene_rng(3, "subject", "train", i), kind="subject") for i in range(16)]
    rng = np.random.default_rng(0)
    for s in scenes:
        img = render_image(s, 64)
        assert score_image(img, s).correct
        m = find_subject(img, s.subject)
        assert m.present and m.best_subject == s.subject
        box = next(o for o in s.objects if o.is_subject).bbox()
        assert box[0] - 0.05 <= m.center[0] <= box[2] + 0.05 and box[1] - 0.05 <= m.center[1] <= box[3] + 0.05
        assert find_subject(degrade(img, rng, 1.0, 0.05), s.subject).present
        for wrong in SUBJECTS:
            if wrong != s.subject:
                assert not find_subject(img, wrong).present
    plain = render_image(SCENES[0], 64)
    assert not any(find_subject(plain, k).present for k in SUBJECTS)
    assert not find_subject(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "zorb").present


def test_eval_prompt_specs_score_their_references():
    for kind, scorer, render in (("t2i", score_image, lambda s: render_image(s, 64)),
                                 ("t2v", score_video, lambda s: render_video(s, 64, 9)),
                                 ("subject", score_image, lambda s: render_image(s, 64))):
        ps = eval_prompts(kind, split="heldout", n=12)
        agg = aggregate([scorer(render(spec), (prompt, spec)) for prompt, spec in ps])
        assert agg["correct"] == 1.0, (kind, agg)


def test_label_matches_flood_fill():
    rng = np.random.default_rng(0)
    for _ in range(5):
        classes = rng.integers(0, 3, (20, 23))
        lab, n = label(classes)
        # reference: BFS flood fill with 8-connectivity
        ref = np.zeros_like(classes)
        m = 0
        for y in range(20):
            for x in range(23):
                if classes[y, x] and not ref[y, x]:
                    m += 1
                    stack = [(y, x)]
                    ref[y, x] = m
                    while stack:
                        cy, cx = stack.pop()
                        for dy in (-1, 0, 1):
                            for dx in (-1, 0, 1):
                                ny, nx = cy + dy, cx + dx
                                if 0 <= ny < 20 and 0 <= nx < 23 and not ref[ny, nx] and classes[ny, nx] == classes[cy, cx]:
                                    ref[ny, nx] = m
                                    stack.append((ny, nx))
        assert n == m
        # same partition
        pairs = set(zip(lab.ravel().tolist(), ref.ravel().tolist()))
        assert len(pairs) == m + 1


def test_classify_shape_from_mask_alone():
    from dit_attn.pipelines.shapes.render import render_label_map

    for shape in SHAPES:
        s = Scene((ShapeObject(shape, "red", "large", (0.5, 0.5)),), "list")
        mask = render_label_map(s, 128) == 1
        assert classify_shape(mask)[0] == shape


class _Criteria:
    """A scored result reduced to its criteria (what aggregate and intervals read)."""

    def __init__(self, **criteria):
        self._criteria = criteria

    def criteria(self):
        return self._criteria


def test_intervals_are_wilson_intervals():
    # 10 of 20 correct: the textbook Wilson 95% interval is (0.2993, 0.7007); 0 of 20: (0, 0.1611).
    results = [_Criteria(colour=i < 10, shape=False, relation=None, _objects=(i % 2, 2)) for i in range(20)]
    iv = intervals(results)
    assert iv["colour"] == pytest.approx((0.2993, 0.7007), abs=1e-4)
    assert iv["shape"] == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert "relation" not in iv  # measured on no result
    # objects are pooled: 10 of 40
    lo, hi = iv["object_accuracy"]
    assert aggregate(results)["object_accuracy"] == 0.25 and lo < 0.25 < hi and hi - lo < 0.3
    # more prompts, narrower interval around the same rate
    lo10, hi10 = intervals(results * 10)["colour"]
    assert iv["colour"][0] < lo10 < 0.5 < hi10 < iv["colour"][1]
    assert intervals([_Criteria(colour=True)] * 21)["colour"][1] == 1.0  # exact ends


def test_object_accuracy_pools_objects_not_results():
    """Real results report a per-image object accuracy and the object counts: aggregate pools the objects."""
    one = next(s for s in SCENES if len(s.objects) == 1)
    three = next(s for s in SCENES if len(s.objects) == 3)
    missed = score_image(np.full((64, 64, 3), 128, np.uint8), one)  # 0 of 1 object
    found = score_image(render_image(three, 64), three)  # 3 of 3
    assert [sum(o.correct for o in r.objects) for r in (missed, found)] == [0, 3]
    agg = aggregate([missed, found])
    assert agg["object_accuracy"] == 0.75  # 3 of 4 objects, not the mean of 0 and 1 per image
    assert list(agg)[:2] == ["correct", "object_accuracy"] and agg["n"] == 2.0
    lo, hi = intervals([missed, found])["object_accuracy"]
    assert lo < 0.75 < hi


def test_docstring_examples_run():
    import doctest

    import dit_attn.pipelines.shapes.scoring as scoring_module

    result = doctest.testmod(scoring_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_direction_confusion_shows_a_sign_error_as_the_opposite_direction():
    from dit_attn.pipelines.shapes import eval_prompts, render_video, score_video
    from dit_attn.pipelines.shapes.scoring import direction_confusion

    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    specs = [s for _, s in eval_prompts("t2v", split="heldout", n=12)]
    backwards = [score_video(render_video(s, 64, 9)[::-1], s) for s in specs]  # each clip played in reverse
    confusion = direction_confusion(backwards, specs)
    assert sum(sum(row.values()) for row in confusion.values()) == sum(len(s.objects) for s in specs)
    assert len(confusion) >= 3
    for named, row in confusion.items():
        assert row.get(opposite[named], 0) >= 0.9 * sum(row.values()), (named, row)


def test_direction_confusion_tells_still_objects_from_lost_ones():
    import numpy as np

    from dit_attn.pipelines.shapes import eval_prompts, render_video, score_video
    from dit_attn.pipelines.shapes.scoring import direction_confusion

    specs = [s for _, s in eval_prompts("t2v", split="heldout", n=8)]
    clips = [np.asarray(render_video(s, 64, 9)) for s in specs]
    frozen = [score_video(np.repeat(c[:1], len(c), axis=0), s) for c, s in zip(clips, specs)]  # first frame held
    empty = [score_video(np.broadcast_to(c[:1, :1, :1], c.shape).copy(), s) for c, s in zip(clips, specs)]  # background
    n_objects = sum(len(s.objects) for s in specs)
    still = direction_confusion(frozen, specs)
    lost = direction_confusion(empty, specs)
    assert sum(row.get("still", 0) for row in still.values()) >= 0.9 * n_objects, still
    assert sum(row.get("lost", 0) for row in lost.values()) == n_objects, lost


def test_scorer_is_pure_and_the_command_keeps_its_name():
    """The scorer loads no model code (no generate / evaluate / diffusers import), generate does not import the
    command, the command still answers under its name, and the scorer's names still import from it."""
    import subprocess
    import sys

    code = ("import sys; import dit_attn.pipelines.shapes.scoring\n"
            "assert not {'dit_attn.pipelines.shapes.generate', 'dit_attn.pipelines.shapes.evaluate', 'diffusers'}"
            " & set(sys.modules), sorted(m for m in sys.modules if 'shapes' in m)\n"
            "import dit_attn.pipelines.shapes.generate\n"
            "assert 'dit_attn.pipelines.shapes.evaluate' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "dit_attn.pipelines.shapes.evaluate", "--help"], check=True,
                         capture_output=True, text=True).stdout
    assert "--kind" in out and "--splits" in out
    from dit_attn.pipelines.shapes import evaluate, scoring

    assert evaluate.score_image is scoring.score_image and evaluate._dilate is scoring._dilate
    with pytest.raises(AttributeError):
        evaluate.no_such_name
