"""SemiSupervisedDataModule: the earlier form of the DataModule with SemiHand's views, kept for old configs.

It is :class:`~handssl.data.datamodules.HandDataModule` with :class:`~handssl.data.views.SemiHandViews`. The views (:class:`LabeledView`, :class:`UnlabeledView`, the mixing policy) live in
:mod:`handssl.data.views.semihand`; new configs name ``handssl.data.HandDataModule`` with the labelled data as
``train`` and the method's ``views: {class_path: handssl.data.SemiHandViews, ...}``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch.utils.data import DataLoader, Dataset

from handssl.data.datamodules import HandDataModule
from handssl.data.views.semihand import AUGMENT_ON, LabeledView, SemiHandViews, UnlabeledView

__all__ = ["AUGMENT_ON", "LabeledView", "SemiSupervisedDataModule", "UnlabeledView"]


class SemiSupervisedDataModule(HandDataModule):
    """Labelled + unlabelled training batches (``CombinedLoader``, ``max_size_cycle``); evaluation on the target.

    :class:`~handssl.data.datamodules.HandDataModule` with ``train=labeled`` and
    :class:`~handssl.data.views.SemiHandViews` built from the SemiHand arguments below. With no datasets given:
    SynthHands ``style="synthetic"`` train (labelled), SynthHands ``style="real"`` train (unlabelled), and the
    real-style val / test subjects for evaluation.

    Args:
        labeled: Labelled training datasets (concatenated).
        unlabeled: Unlabelled training datasets (concatenated); their annotations are never used as labels.
        val: Validation datasets (normally the unlabelled domain's).
        test: Test datasets (normally the unlabelled domain's).
        image_size: Network input side in pixels.
        batch_size: Items per training batch, labelled plus unlabelled (per process under DDP).
        unlabeled_fraction: Share of unlabelled items in a training batch (0 trains on labelled data only).
        eval_batch_size: Batch size of validation / test / pseudo-label loaders (default: ``batch_size``).
        num_perturbations: Perturbed copies per unlabelled item.
        augment_labeled: Apply the "diversity" augmentation to labelled items.
        perturbation: Options of the "perturbation" pipeline (``shift_px``, ``rotate_deg``, ``right_angles``).
        diversity: Options of the "diversity" pipeline (``rotate_deg``, ``scale``, ``translate_fraction``, ...).
        crop_margin: Margin of the default crop around the hand (real datasets).
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory.
        seed: Seed of shuffling and of the deterministic perturbations.
        render_on: Where the SynthHands training sets are rendered (see
            :class:`~handssl.data.datamodules.HandDataModule`; a part with no SynthHands stays in the workers).
        augment_on: Where the training augmentations run (see :class:`~handssl.data.views.SemiHandViews`).
    """

    views: SemiHandViews

    moved_arguments: ClassVar[dict[str, str]] = {}  # it takes its own arguments

    def __init__(
        self,
        labeled: list[Dataset] | None = None,
        unlabeled: list[Dataset] | None = None,
        val: list[Dataset] | None = None,
        test: list[Dataset] | None = None,
        image_size: int = 64,
        batch_size: int = 32,
        unlabeled_fraction: float = 0.5,
        eval_batch_size: int | None = None,
        num_perturbations: int = 2,
        augment_labeled: bool = True,
        perturbation: dict[str, Any] | None = None,
        diversity: dict[str, Any] | None = None,
        crop_margin: float = 0.25,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        render_on: Literal["workers", "device"] = "workers",
        augment_on: Literal["workers", "batch"] = "workers",
    ) -> None:
        views = SemiHandViews(
            unlabeled_fraction=unlabeled_fraction,
            eval_batch_size=eval_batch_size,
            num_perturbations=num_perturbations,
            augment_labeled=augment_labeled,
            perturbation=perturbation,
            diversity=diversity,
            crop_margin=crop_margin,
            augment_on=augment_on,
        )
        super().__init__(
            train=labeled,
            unlabeled=unlabeled,
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
    def labeled(self) -> Dataset | None:
        """The labelled training set (``train``)."""
        return self.datasets["train"]

    @property
    def unlabeled(self) -> Dataset | None:
        """The unlabelled training set."""
        return self.datasets["unlabeled"]

    @property
    def val(self) -> Dataset | None:
        """The validation set."""
        return self.datasets["val"]

    @property
    def test(self) -> Dataset | None:
        """The test set."""
        return self.datasets["test"]

    @property
    def unlabeled_fraction(self) -> float:
        """Share of unlabelled items per training batch."""
        return self.views.unlabeled_fraction

    @property
    def augment_on(self) -> str:
        """Where the training augmentations run."""
        return self.views.augment_on

    @property
    def eval_batch_size(self) -> int:
        """Items per validation / test / pseudo-label batch."""
        return self.views.eval_batch_size(self)

    @property
    def labeled_batch_size(self) -> int:
        """Labelled items per training batch."""
        return self.split_batch_size()[0]

    @property
    def unlabeled_batch_size(self) -> int:
        """Unlabelled items per training batch."""
        return self.split_batch_size()[1]

    def split_batch_size(self) -> tuple[int, int]:
        """``(labelled, unlabelled)`` items per training batch (at least one of each when both are wanted)."""
        return self.views.split_batch_size(self.batch_size)

    def unlabeled_view(
        self, deterministic: bool = False, strong: bool = True, copies: bool = True
    ) -> UnlabeledView:
        """The unlabelled items as :class:`UnlabeledView` (``deterministic`` for stored / exported labels)."""
        return self.views.unlabeled_view(self, deterministic, strong, copies)

    def pseudo_label_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Deterministic, unshuffled loader over the unlabelled items (for stored / exported pseudo-labels)."""
        return self.views.pseudo_label_dataloader(self, rank, world_size)
