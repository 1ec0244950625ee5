"""Torch datasets and the preview CLI."""

import numpy as np
import torch
from torch.utils.data import DataLoader

from dit_attn.pipelines.shapes import (Scene, ShapesConditionDataset, ShapesImageDataset, ShapesVideoDataset,
                                       collate_scenes)
from dit_attn.pipelines.shapes.data import main as preview_main


def test_image_dataset_items_and_determinism():
    ds = ShapesImageDataset(split="train", size=64, length=50, seed=0)
    item = ds[3]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert isinstance(item["caption"], str) and Scene.from_json(item["scene"]).caption == item["caption"]
    again = ShapesImageDataset(split="train", size=64, length=50, seed=0)[3]
    assert torch.equal(item["image"], again["image"]) and item["caption"] == again["caption"]
    other = ShapesImageDataset(split="train", size=64, length=50, seed=1)
    assert ds.captions(20) != other.captions(20)
    assert not torch.equal(ds[3]["image"], other[3]["image"])
    # index order does not matter, negative indices wrap
    assert torch.equal(ds[-1]["image"], ds[49]["image"])
    try:
        ds[50]
    except IndexError:
        pass
    else:
        raise AssertionError("index past the end must raise")


def test_heldout_dataset_and_split():
    held = ShapesImageDataset(split="heldout", size=32, length=100, seed=0)
    train = ShapesImageDataset(split="train", size=32, length=300, seed=0)
    assert not set(held.captions()) & set(train.captions())
    assert held[0]["image"].shape == (3, 32, 32)


def test_video_dataset():
    ds = ShapesVideoDataset(split="train", size=32, frames=9, length=10, seed=0)
    item = ds[2]
    assert item["video"].shape == (3, 9, 32, 32) and item["video"].dtype == torch.float32
    assert "moving" in item["caption"]
    assert torch.equal(item["video"], ShapesVideoDataset(size=32, frames=9, length=10, seed=0)[2]["video"])
    assert not torch.equal(item["video"][:, 0], item["video"][:, -1])


def test_condition_dataset_and_collate():
    ds = ShapesConditionDataset(split="train", size=64, length=40, seed=0, subject_prob=0.5)
    kinds = [ds.scene(i).kind for i in range(40)]
    assert "subject" in kinds and "image" in kinds
    i = kinds.index("subject")
    item = ds[i]
    for k in ("image", "edge", "mask", "depth", "reference"):
        assert item[k].shape == (3, 64, 64) and item[k].dtype == torch.float32
    assert item["has_reference"] and item["subject"] in item["caption"]
    assert set(item["mask"].unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(item["edge"], ds[i]["edge"])
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 3, 64, 64) and len(batch["caption"]) == 8
    assert [s.caption for s in collate_scenes(batch["scene"])] == batch["caption"]
    j = kinds.index("image")
    assert not ds[j]["has_reference"] and ds[j]["subject"] == ""


def test_preview_cli(tmp_path):
    from PIL import Image

    assert preview_main(["--out", str(tmp_path / "img"), "--n", "16"]) == 0
    grid = Image.open(tmp_path / "img" / "grid.png")
    assert grid.size[0] > 4 * 64
    lines = (tmp_path / "img" / "captions.txt").read_text().strip().splitlines()
    assert len(lines) == 16 and lines[0].split("\t")[1] == ShapesImageDataset(length=1)[0]["caption"]
    assert preview_main(["--out", str(tmp_path / "vid"), "--n", "2", "--kind", "video", "--size", "32"]) == 0
    assert preview_main(["--out", str(tmp_path / "cond"), "--n", "3", "--kind", "condition"]) == 0
    assert np.asarray(Image.open(tmp_path / "cond" / "grid.png")).ndim == 3
