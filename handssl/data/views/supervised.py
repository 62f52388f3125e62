"""Single-view labelled items: the crop around the hand, resized to the network input (supervised methods)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from handssl.data.transforms import CropResize
from handssl.data.views.base import TrainPart, Views

if TYPE_CHECKING:
    from handssl.data.datamodules import HandDataModule

__all__ = ["SupervisedViews"]


class SupervisedViews(Views):
    """One cropped view per labelled item, for supervised methods.

    Datasets returning the full original image (numpy) are cropped by :class:`~handssl.data.transforms.CropResize` (a square around the hand, resized to ``image_size``);
    rendered datasets (SynthHands) are used as they are. Training batches draw from ``train`` only (an
    ``unlabeled`` dataset of the data config is left out).

    Args:
        crop_margin: Margin of the crop around the hand, as a fraction of the hand's box.
    """

    def __init__(self, crop_margin: float = 0.25) -> None:
        self.crop_margin = crop_margin

    def transform(self, datamodule: HandDataModule) -> CropResize:
        """The crop every item goes through."""
        return CropResize(datamodule.image_size, self.crop_margin)

    def default_datasets(self, image_size: int, seed: int) -> dict[str, Any]:
        """SynthHands ``train`` / ``val`` / ``test`` of one default world at ``image_size``."""
        from handssl.data.synthhands.dataset import SPLITS
        from handssl.data.synthhands.single_view import SynthHands
        from handssl.data.synthhands.world import SynthHandsWorld

        world = SynthHandsWorld(image_size=image_size)  # one world, three splits of its subjects
        return dict(zip(SPLITS, (SynthHands(split=s, world=world) for s in SPLITS)))

    def train_parts(self, datamodule: HandDataModule) -> dict[str, TrainPart]:
        """The training crops, ``batch_size`` per batch."""
        from handssl.data.datamodules import TransformedDataset

        train = TransformedDataset(datamodule.split("train"), self.transform(datamodule))
        return {"train": TrainPart(train, datamodule.batch_size)}

    def eval_view(self, datamodule: HandDataModule, dataset: Dataset) -> Dataset:
        """The same crop."""
        from handssl.data.datamodules import TransformedDataset

        return TransformedDataset(dataset, self.transform(datamodule))
