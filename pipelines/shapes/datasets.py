"""Torch datasets over ShapesWorld: text-to-image, text-to-video and multi-condition items.

Every dataset is procedural and deterministic: item ``i`` of a dataset built with ``seed`` is rendered from
``scene_rng(seed, kind, split, i)`` (a numpy ``Generator`` seeded with ``[seed, kind, split, i]``), so it is
the same in every process, worker and run, independent of access order. ``length`` only bounds the index.

Items are dictionaries that torch's default ``collate`` batches: tensors, strings, ints and bools. Scene metadata
travels as a JSON string (``item["scene"]``, decode with ``Scene.from_json``), because scenes have a variable
number of objects.

Tensors: images ``(3, H, W)`` float32 in [-1, 1]; videos ``(3, F, H, W)``; conditions ``(3, H, W)`` in [-1, 1]
(single-channel maps replicated to RGB, as VAE-encoded control images expect; take channel 0 for a mask).
"""

from __future__ import annotations

from typing import Optional

from torch.utils.data import Dataset

from .render import (grey_to_rgb, render_conditions, render_image, render_subject_reference, render_video,
                     to_tensor_image)
from .world import SPLITS, Scene, condition_scene, sample_scene, scene_rng

_CONDITION_KEYS = ("edge", "mask", "depth")


class _ShapesDataset(Dataset):
    kind = "image"

    def __init__(self, split: str = "train", size: int = 64, length: int = 10000, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 16:
            raise ValueError("size must be at least 16 pixels")
        self.split, self.size, self.length, self.seed = split, int(size), int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of length {self.length}")
        return i

    def scene(self, i: int) -> Scene:
        """The scene of item ``i`` (without rendering it)."""
        i = self._index(i)
        return sample_scene(scene_rng(self.seed, self.kind, self.split, i), split=self.split, kind=self.kind)

    def captions(self, n: Optional[int] = None) -> list[str]:
        """Captions of the first ``n`` items (all by default); cheap, nothing is rendered."""
        return [self.scene(i).caption for i in range(self.length if n is None else min(n, self.length))]


class ShapesImageDataset(_ShapesDataset):
    """Text-to-image items: 1-3 shapes with a caption naming them and their position / relation / order.

    Args:
        split: ``"train"`` or ``"heldout"`` (see the split rule in ``world.py``).
        size: image resolution (32, 64 or 128 recommended).
        length: number of items.
        seed: dataset seed.

    Item: ``{"image": (3, size, size) float32 in [-1, 1], "caption": str, "scene": JSON str, "index": int}``.
    """

    kind = "image"

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        scene = self.scene(i)
        return {"image": to_tensor_image(render_image(scene, self.size)), "caption": scene.caption,
                "scene": scene.to_json(), "index": i}


class ShapesVideoDataset(_ShapesDataset):
    """Text-to-video items: 1-2 shapes moving left / right / up / down ("a yellow square moving right").

    Args:
        frames: number of frames (default 9; Wan-style models want ``4k + 1``).
        Others as :class:`ShapesImageDataset`.

    Item: ``{"video": (3, frames, size, size) float32 in [-1, 1], "caption", "scene", "index"}``.
    """

    kind = "video"

    def __init__(self, split: str = "train", size: int = 64, frames: int = 9, length: int = 10000, seed: int = 0):
        super().__init__(split, size, length, seed)
        if frames < 2:
            raise ValueError("a video needs at least 2 frames")
        self.frames = int(frames)

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        scene = self.scene(i)
        video = to_tensor_image(render_video(scene, self.size, self.frames))  # (F, 3, H, W)
        return {"video": video.permute(1, 0, 2, 3).contiguous(), "caption": scene.caption,
                "scene": scene.to_json(), "index": i}


class ShapesConditionDataset(_ShapesDataset):
    """Multi-condition items: an image with its aligned spatial conditions and, for subject scenes, a reference.

    With probability ``subject_prob`` (decided per item, deterministically) the scene is a subject scene ("a zorb
    to the left of a red circle"), otherwise a plain image scene.

    Args:
        subject_prob: fraction of subject scenes.
        reference_background: background of the subject reference image (None: the scene's own).
        Others as :class:`ShapesImageDataset`.

    Item: ``{"image", "edge", "mask", "depth"}`` (each ``(3, size, size)`` float32 in [-1, 1]), ``"reference"``
    (``(3, size, size)``: the subject sprite alone, centred; a blank background when there is no subject),
    ``"has_reference"`` (bool), ``"subject"`` (keyword or ``""``), ``"caption"``, ``"scene"``, ``"index"``.
    """

    kind = "condition"

    def __init__(self, split: str = "train", size: int = 64, length: int = 10000, seed: int = 0,
                 subject_prob: float = 0.5, reference_background: Optional[str] = None):
        super().__init__(split, size, length, seed)
        self.subject_prob = float(subject_prob)
        self.reference_background = reference_background

    def scene(self, i: int) -> Scene:
        return condition_scene(self.seed, self.split, self._index(i), self.subject_prob)

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        scene = self.scene(i)
        item = {"image": to_tensor_image(render_image(scene, self.size))}
        conds = render_conditions(scene, self.size)
        for k in _CONDITION_KEYS:
            item[k] = to_tensor_image(grey_to_rgb(conds[k]))
        subject = scene.subject
        background = self.reference_background or scene.background
        if subject is not None:
            ref = render_subject_reference(subject, self.size, background)
        else:
            ref = render_image(Scene((), "list", background), self.size)
        item.update({"reference": to_tensor_image(ref), "has_reference": subject is not None,
                     "subject": subject or "", "caption": scene.caption, "scene": scene.to_json(), "index": i})
        return item


def collate_scenes(batch_scenes: list[str]) -> list[Scene]:
    """Decode a batch's ``item["scene"]`` strings back into :class:`Scene` objects."""
    return [Scene.from_json(s) for s in batch_scenes]


__all__ = ["ShapesImageDataset", "ShapesVideoDataset", "ShapesConditionDataset", "collate_scenes"]
