"""The README's *Add a method* guide, the optional fifth file: a method's own views (``handssl/data/views/<name>.py``).

A toy policy: every training batch holds each crop twice, once as it is and once mirrored left-right (labels
moved along), so a batch of ``batch_size`` items draws ``batch_size // 2`` dataset items per part.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from handssl.data.base import Sample
from handssl.data.datamodules import HandDataModule, TransformedDataset
from handssl.data.transforms import CropResize
from handssl.data.views import TrainPart, Views


def mirrored(sample: Sample) -> Sample:
    """A packed crop mirrored left-right, its 2D joints, 3D joints (camera x) and ``K`` along."""
    out = dict(sample)
    width = sample["image"].shape[-1]
    out["image"] = sample["image"].flip(-1)
    out["joints2d"] = sample["joints2d"] * torch.tensor([-1.0, 1.0]) + torch.tensor([width - 1.0, 0.0])
    out["joints3d"] = sample["joints3d"] * torch.tensor([-1.0, 1.0, 1.0])
    K = sample["K"].clone()
    K[0, 2] = width - 1.0 - K[0, 2]
    out["K"] = K
    return out


class ToyMirrorViews(Views):
    """Training batches of two parts, ``plain`` and ``mirrored`` crops; evaluation on the plain crops.

    Args:
        crop_margin: Margin of the crop around the hand.
    """

    combined = True

    def __init__(self, crop_margin: float = 0.25) -> None:
        self.crop_margin = crop_margin

    def train_parts(self, datamodule: HandDataModule) -> dict[str, TrainPart]:
        crop = CropResize(datamodule.image_size, self.crop_margin)
        train = datamodule.split("train")
        half = max(1, datamodule.batch_size // 2)
        return {
            "plain": TrainPart(TransformedDataset(train, crop), half),
            "mirrored": TrainPart(TransformedDataset(train, lambda s: mirrored(crop(s))), half),
        }

    def eval_view(self, datamodule: HandDataModule, dataset: Dataset) -> Dataset:
        return TransformedDataset(dataset, CropResize(datamodule.image_size, self.crop_margin))

    def on_after_batch_transfer(self, datamodule: HandDataModule, batch: Any, training: bool) -> Any:
        """One batch of both parts for the model (a method's training_step could as well take the dict)."""
        if not training or not isinstance(batch, dict) or "plain" not in batch:
            return batch
        plain, flipped = batch["plain"], batch["mirrored"]
        out = {k: torch.cat([plain[k], flipped[k]]) for k in plain if isinstance(plain[k], torch.Tensor)}
        out["meta"] = {k: plain["meta"][k] + flipped["meta"][k] for k in plain["meta"]}
        return out
