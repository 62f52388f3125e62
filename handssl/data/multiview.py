"""MultiViewDataModule: the earlier form of the DataModule with NVS's views, kept for configs written before.

It is :class:`~handssl.data.datamodules.HandDataModule` with :class:`~handssl.data.views.NVSPairs`. The views (:class:`MultiViewPairs`, :class:`LabeledShareBatchSampler`, the labelled subset and the pose
statistics) live in :mod:`handssl.data.views.nvs`; new configs name ``handssl.data.HandDataModule`` with the
method's ``views: {class_path: handssl.data.NVSPairs, ...}``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import Tensor
from torch.utils.data import Dataset

from handssl.data.datamodules import HandDataModule, ResumableBatchLoader
from handssl.data.synthhands.world import Style
from handssl.data.views.nvs import (
    PAIR_KEYS,
    LabeledShareBatchSampler,
    MultiViewPairs,
    NVSPairs,
    SlotKey,
    labeled_subjects_subset,
    labeled_subset,
    pose_statistics,
)

__all__ = [
    "PAIR_KEYS",
    "LabeledShareBatchSampler",
    "MultiViewDataModule",
    "MultiViewPairs",
    "ResumableBatchLoader",
    "SlotKey",
    "labeled_subjects_subset",
    "labeled_subset",
    "pose_statistics",
]


class MultiViewDataModule(HandDataModule):
    """Multi-view pairs for novel-view synthesis, with a deterministic labeled subset and oversampling.

    :class:`~handssl.data.datamodules.HandDataModule` with :class:`~handssl.data.views.NVSPairs` built from the
    arguments below. With no dataset given, SynthHandsMultiView ``train`` / ``val`` / ``test`` (two views,
    ``style``, ``image_size``) are used. Validation and test items are fully labeled; the evaluation uses view *i*.

    Args:
        train: Multi-view training dataset.
        val: Multi-view validation dataset (skipped when absent).
        test: Multi-view test dataset.
        image_size: Image side of the default SynthHands datasets.
        style: Appearance style of the default SynthHands datasets.
        label_fraction: Share of training items whose labels are used (ignored when ``num_labeled`` or
            ``labeled_subjects`` is set).
        num_labeled: Number of labeled training items (overrides ``label_fraction``).
        labeled_subjects: Label every item of this many training subjects (seeded) and none of the others.
        labeled_share: Share of every training batch drawn from the labeled subset.
        statistics_items: Labeled items (evenly spaced) used to compute the pose mean and std.
        batch_size: Items per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory.
        seed: Seed of the labeled subset, the shuffling and the labeled draws.
        render_on: Where a SynthHands training set is rendered (see
            :class:`~handssl.data.datamodules.HandDataModule`).
    """

    views: NVSPairs

    moved_arguments: ClassVar[dict[str, str]] = {}  # it takes its own arguments

    def __init__(
        self,
        train: Dataset | None = None,
        val: Dataset | None = None,
        test: Dataset | None = None,
        image_size: int = 64,
        style: Style = "synthetic",
        label_fraction: float = 0.05,
        num_labeled: int | None = None,
        labeled_subjects: int | None = None,
        labeled_share: float = 0.5,
        statistics_items: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        render_on: Literal["workers", "device"] = "workers",
    ) -> None:
        views = NVSPairs(
            label_fraction=label_fraction,
            num_labeled=num_labeled,
            labeled_subjects=labeled_subjects,
            labeled_share=labeled_share,
            statistics_items=statistics_items,
            style=style,
        )
        super().__init__(
            train=train,
            val=val,
            test=test,
            views=views,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
            render_on=render_on,
        )

    @property
    def labeled_share(self) -> float:
        """Share of every training batch drawn from the labeled subset."""
        return self.views.labeled_share

    @property
    def labeled_per_batch(self) -> int:
        """Labeled items per training batch."""
        return self.views.labeled_per_batch(self.batch_size)

    @property
    def labeled_indices(self) -> Tensor:
        """Sorted indices of the labeled training items (deterministic given ``seed``)."""
        return self.views.labeled_indices(self)

    def pose_statistics(self) -> tuple[Tensor, Tensor]:
        """Mean and std ``(21, 3)`` (mm) of root-relative joints of the labeled subset (both views)."""
        return self.views.pose_statistics(self)

    def train_pairs(self) -> MultiViewPairs:
        """The training pairs (labels visible only for the labeled subset)."""
        return self.views.train_pairs(self)
