"""ShapesWorld: a small procedural world for training tiny diffusion models and scoring them exactly.

Modules
-------
* ``geometry`` - shape and subject silhouettes / textures in unit-radius object coordinates.
* ``world`` - palette, shapes, sizes, the :class:`Scene` description, :func:`sample_scene`, :func:`caption`, the
  train / held-out split rule, :func:`eval_prompts`.
* ``render`` - numpy rasterisation: :func:`render_image`, :func:`render_video`, spatial conditions (edge, mask,
  depth-like, instance labels) and subject references.
* ``datasets`` - torch datasets: :class:`ShapesImageDataset`, :class:`ShapesVideoDataset`,
  :class:`ShapesConditionDataset` (deterministic: item ``i`` of seed ``s`` never changes).
* ``scoring`` - the exact scorer: :func:`parse_image`, :func:`score_image`, :func:`score_video`,
  :func:`score_conditions`, :func:`find_subject`, :func:`aggregate`, :func:`intervals` (95% Wilson intervals).
* ``data`` - preview CLI: ``python -m dit_attn.pipelines.shapes.data --out DIR --n 16``.
* ``models`` - the tiny SD3 / FLUX / Wan architectures and word-level tokenizers (:func:`models.build_pipeline`).
* ``train`` - training CLI: ``python -m dit_attn.pipelines.shapes.train --kind t2i --out DIR --minutes 35``.
* ``bundled`` - :func:`load_shapes` (the trained pipelines shipped in ``models/<kind>/``); ``generate`` -
  :func:`shapes_call_kwargs`, generate-and-score helpers; ``python -m dit_attn.pipelines.shapes.evaluate`` scores
  a model (docs/shapesworld.md).

Typical use::

    from dit_attn.pipelines.shapes import ShapesImageDataset, eval_prompts, score_image, aggregate

    ds = ShapesImageDataset(split="train", size=64, length=50_000, seed=0)
    prompts = eval_prompts("t2i", split="heldout", n=200)
    results = [score_image(generate(prompt), spec) for prompt, spec in prompts]
    print(aggregate(results))   # {"correct": ..., "object_accuracy": ..., "colour": ..., "relation": ..., ...}
"""

from .datasets import ShapesConditionDataset, ShapesImageDataset, ShapesVideoDataset, collate_scenes
from .scoring import (ConditionResult, Detection, ImageResult, ObjectResult, SubjectMatch, VideoObjectResult,
                       VideoResult, aggregate, edge_f1, find_subject, foreground_mask, intervals, mask_iou, parse_image,
                       parse_video, score_conditions, score_image, score_video)
from .geometry import SHAPES, SUBJECTS
from .render import (render_conditions, render_depth, render_edges, render_image, render_label_map, render_mask,
                     render_subject_reference, render_video)
from .world import (BACKGROUNDS, COLOURS, DIRECTIONS, HELDOUT_PAIRS, POSITIONS, RELATIONS, SIZES, TRAIN_PAIRS, Scene,
                    ShapeObject, caption, condition_scene, eval_prompts, is_heldout_pair, sample_scene, scene_rng)

__all__ = [
    "SHAPES", "SUBJECTS", "COLOURS", "BACKGROUNDS", "SIZES", "POSITIONS", "RELATIONS", "DIRECTIONS", "HELDOUT_PAIRS",
    "TRAIN_PAIRS", "Scene", "ShapeObject", "sample_scene", "scene_rng", "condition_scene", "caption",
    "is_heldout_pair", "eval_prompts",
    "render_image", "render_video", "render_label_map", "render_mask", "render_edges", "render_depth",
    "render_conditions", "render_subject_reference",
    "ShapesImageDataset", "ShapesVideoDataset", "ShapesConditionDataset", "collate_scenes",
    "Detection", "ObjectResult", "ImageResult", "VideoObjectResult", "VideoResult", "ConditionResult",
    "SubjectMatch", "parse_image", "parse_video", "score_image", "score_video", "score_conditions", "find_subject",
    "edge_f1", "mask_iou", "foreground_mask", "aggregate", "intervals",
]
