"""SemiHand's views: every training batch mixes labelled and unlabelled items, with perturbations and masks.

:class:`SemiHandViews` makes training batches of two parts, ``{"labeled": ..., "unlabeled": ...}`` (Lightning's
:class:`~pytorch_lightning.utilities.combined_loader.CombinedLoader` in ``"max_size_cycle"`` mode, built by
:class:`~handssl.data.datamodules.HandDataModule`): their sizes are set by ``batch_size`` and
``unlabeled_fraction``; an epoch lasts as long as the longer part and the shorter one cycles. Under DDP Lightning
gives each inner loader its own distributed sampler.

Labelled items (:class:`LabeledView`, :class:`~handssl.data.contract.SemiLabeledSample`, from the DataModule's
``train``) get the "diversity" augmentation with their labels moved along
(:func:`handssl.data.augment.augment_sample`). Unlabelled items (:class:`UnlabeledView`,
:class:`~handssl.data.contract.SemiUnlabeledSample`, from ``unlabeled``) carry the original crop, ``P``
"perturbation" copies (for the pseudo-label views and the consistency loss), one "diversity" copy on which the
student learns from the (transformed) pseudo-label, the matrices of all of them, the item's ``index`` (pseudo-label
storage and export) and the dataset's annotation, if any, only as ``eval_*`` (for monitoring pseudo-label error and
for the paper's "known root and scale" lifting; training never uses them as labels). Every key is documented in
:data:`handssl.data.contract.FIELDS`. Both views crop and augment raw numpy samples (a rendered SynthHands
sample is unpacked first) and convert to tensors once, at their end (:func:`~handssl.data.contract.pack_sample`).

Validation and test run on the DataModule's ``val`` / ``test`` sets (normally the unlabelled domain's), through
the default crop.

Datasets that return full images (RHD, STB, Dexter+Object) are cropped by
:class:`~handssl.data.transforms.CropResize` around their annotated 2D joints (the usual "GT crop"), the
unlabelled ones included: like the paper's protocol (known root and scale), the crop uses the annotation.
Rendered SynthHands crops need no crop.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from handssl.data.augment import augment_sample, make_pipeline
from handssl.data.base import Sample
from handssl.data.batch_augment import (
    DiversityOptions,
    PerturbationOptions,
    augment_labeled_batch,
    augment_unlabeled_batch,
)
from handssl.data.contract import float_image, float_map, pack_sample, unpack_sample
from handssl.data.datamodules import TransformedDataset
from handssl.data.transforms import CropResize
from handssl.data.views.base import TrainPart, Views

if TYPE_CHECKING:
    from handssl.data.datamodules import HandDataModule

__all__ = ["AUGMENT_ON", "LabeledView", "SemiHandViews", "UnlabeledView"]

_EVAL_KEYS = ("joints3d", "joints2d", "valid")
AUGMENT_ON = ("workers", "batch")
"""Where SemiHandViews' training augmentations run (``augment_on``)."""


def _seed_from(base: int, index: int, deterministic: bool) -> int:
    if deterministic:
        return int(np.random.SeedSequence([base, index]).generate_state(1)[0] & 0x7FFFFFFF)
    return int(torch.randint(0, 2**31 - 1, ()).item())


def _with_mask(sample: Sample, prefer_hand_mask: bool = True) -> Sample:
    """Every labelled item gets ``mask`` (zeros where absent) and ``has_mask``, so batches always collate.

    Works on the raw sample (``float32 H x W`` mask). With ``prefer_hand_mask`` a dataset's ``hand_mask``
    (skin only, as SynthHands provides besides the hand-plus-sleeve ``mask``) becomes the ``mask`` target:
    the capsule hand of the cross-modal loss has no forearm.
    """
    out = dict(sample)
    if prefer_hand_mask and out.get("hand_mask") is not None:
        out["mask"] = out["hand_mask"]
    out.pop("hand_mask", None)
    if out.get("mask") is None:
        out["mask"] = np.zeros(np.shape(out["image"])[:2], dtype=np.float32)
        out["has_mask"] = np.array(False)
    else:
        out["mask"] = float_map(out["mask"])
        out["has_mask"] = np.array(True)
    return out


class _CroppedView(TransformedDataset):
    """Crop every sample (batched through :class:`TransformedDataset`), finish it per index, pack it.

    The whole per-sample pipeline runs on raw numpy samples (a packed SynthHands sample is unpacked after
    the crop, which only checks its size): crop, the finishing step (the labelled or unlabelled view's
    augmentation), then :func:`~handssl.data.contract.pack_sample`, the one conversion to tensors.
    """

    def __init__(self, dataset: Dataset, image_size: int, crop_margin: float) -> None:
        super().__init__(dataset, CropResize(image_size, crop_margin).crop)

    def _finish(self, sample: Sample, index: int) -> Sample:
        raise NotImplementedError

    def _run(self, cropped: Sample, index: int) -> Sample:
        sample = unpack_sample(cropped)
        sample["image"] = float_image(sample["image"])
        return pack_sample(self._finish(sample, index))

    def __getitem__(self, index: int) -> Sample:
        return self._run(self.transform(self.dataset[index]), index)

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        cropped = super().__getitems__(list(indices))
        return [self._run(sample, i) for sample, i in zip(cropped, indices)]


class LabeledView(_CroppedView):
    """Labelled training items: crop, optional "diversity" augmentation, a ``mask`` key always present.

    Args:
        dataset: Map-style dataset of sample dicts.
        image_size: Network input side (crop size).
        augment: Apply the "diversity" augmentation.
        diversity: Keyword arguments of :func:`handssl.data.augment.diversity_pipeline`.
        crop_margin: Margin of the default crop around the hand.
        seed: Base seed (augmentation draws come from torch's per-worker generator).
        prefer_hand_mask: Use a dataset's ``hand_mask`` (no forearm) as the mask target where it has one.
    """

    def __init__(
        self,
        dataset: Dataset,
        image_size: int = 64,
        augment: bool = True,
        diversity: dict[str, Any] | None = None,
        crop_margin: float = 0.25,
        seed: int = 0,
        prefer_hand_mask: bool = True,
    ) -> None:
        super().__init__(dataset, image_size, crop_margin)
        self.pipeline = make_pipeline("diversity", **(diversity or {})) if augment else None
        self.seed = seed
        self.prefer_hand_mask = prefer_hand_mask

    def _finish(self, sample: Sample, index: int) -> Sample:
        sample = _with_mask(sample, self.prefer_hand_mask)
        if self.pipeline is not None:
            sample = augment_sample(sample, self.pipeline, seed=_seed_from(self.seed, index, False))
        else:
            sample.pop("depth", None)
            sample.pop("background", None)
            sample["in_bounds"] = np.ones(np.shape(sample["valid"]), dtype=bool)
            sample["transform_matrix"] = np.eye(3, dtype=np.float32)
        return sample


class UnlabeledView(_CroppedView):
    """Unlabelled items: the original crop, ``P`` perturbed copies and one "diversity" copy, with matrices.

    Args:
        dataset: Map-style dataset of sample dicts (annotations, if any, are only kept as ``eval_*``).
        image_size: Network input side (crop size).
        num_perturbations: Number ``P`` of perturbed copies.
        perturbation: Keyword arguments of :func:`handssl.data.augment.perturbation_pipeline`.
        diversity: Keyword arguments of :func:`handssl.data.augment.diversity_pipeline`.
        strong: Produce the "diversity" copy (``image_strong``).
        copies: Produce the copies at all (``False``: only the original crop, its ``K``, ``index`` and
            ``eval_*``; the copies are then made batched, :mod:`handssl.data.batch_augment`).
        deterministic: Draw the perturbations from ``(seed, index)`` (the same copies every epoch, for stored
            pseudo-labels); otherwise from torch's per-worker generator.
        crop_margin: Margin of the default crop around the hand.
        seed: Base seed.
    """

    def __init__(
        self,
        dataset: Dataset,
        image_size: int = 64,
        num_perturbations: int = 2,
        perturbation: dict[str, Any] | None = None,
        diversity: dict[str, Any] | None = None,
        strong: bool = True,
        deterministic: bool = False,
        crop_margin: float = 0.25,
        seed: int = 0,
        copies: bool = True,
    ) -> None:
        if num_perturbations < 1:
            raise ValueError(f"num_perturbations must be >= 1, got {num_perturbations}")
        super().__init__(dataset, image_size, crop_margin)
        self.num_perturbations = num_perturbations
        self.perturbation = make_pipeline("perturbation", **(perturbation or {}))
        self.diversity = make_pipeline("diversity", **(diversity or {})) if strong else None
        self.deterministic = deterministic
        self.seed = seed
        self.copies = copies

    def _finish(self, sample: Sample, index: int) -> Sample:
        base = {"image": sample["image"], "K": sample["K"], "joints2d": sample["joints2d"]}
        out: dict[str, Any] = {"image": sample["image"], "K": sample["K"], "index": np.array(index, np.int64)}
        for key in _EVAL_KEYS:
            if key in sample:
                out[f"eval_{key}"] = sample[key]
        if "meta" in sample:
            out["meta"] = sample["meta"]
        if not self.copies:
            return out
        seed = _seed_from(self.seed, index, self.deterministic)
        images, matrices = [], []
        for p in range(self.num_perturbations):
            aug = augment_sample(base, self.perturbation, seed=seed + 1 + p)
            images.append(aug["image"])
            matrices.append(aug["transform_matrix"])
        out["image_perturbed"] = np.stack(images)
        out["perturb_matrix"] = np.stack(matrices)
        if self.diversity is not None:
            aug = augment_sample(base, self.diversity, seed=seed)
            out["image_strong"] = aug["image"]
            out["strong_matrix"] = aug["transform_matrix"]
            out["K_strong"] = aug["K"]
        return out


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    """YAML gives ranges as lists; the frozen option dataclasses hold tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


class SemiHandViews(Views):
    """SemiHand's batches: labelled items of ``train`` and unlabelled items of ``unlabeled`` in fixed shares.

    With no datasets given, the DataModule gets SynthHands ``style="synthetic"`` train (labelled), SynthHands
    ``style="real"`` train (unlabelled), and the real-style val / test subjects for evaluation.

    Args:
        unlabeled_fraction: Share of unlabelled items in a training batch (0 trains on labelled data only,
            and needs no ``unlabeled`` dataset).
        eval_batch_size: Batch size of validation / test / pseudo-label loaders (default: the DataModule's
            ``batch_size``).
        num_perturbations: Perturbed copies per unlabelled item.
        augment_labeled: Apply the "diversity" augmentation to labelled items.
        perturbation: Options of the "perturbation" pipeline (``shift_px``, ``rotate_deg``, ``right_angles``).
        diversity: Options of the "diversity" pipeline (``rotate_deg``, ``scale``, ``translate_fraction``, ...).
        crop_margin: Margin of the default crop around the hand (real datasets).
        augment_on: Where the training augmentations run: ``"workers"`` (per item, albumentations, in the
            DataLoader) or ``"batch"`` (the whole labelled and unlabelled parts at once, in torch, on the batch's
            device in ``on_after_batch_transfer``; :mod:`handssl.data.batch_augment`: the same transforms and
            option names, several times cheaper on a CPU).
    """

    combined = True

    def __init__(
        self,
        unlabeled_fraction: float = 0.5,
        eval_batch_size: int | None = None,
        num_perturbations: int = 2,
        augment_labeled: bool = True,
        perturbation: dict[str, Any] | None = None,
        diversity: dict[str, Any] | None = None,
        crop_margin: float = 0.25,
        augment_on: Literal["workers", "batch"] = "workers",
    ) -> None:
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
        if not 0.0 <= unlabeled_fraction <= 1.0:
            raise ValueError(f"unlabeled_fraction must be in [0, 1], got {unlabeled_fraction}")
        if num_perturbations < 1:
            raise ValueError(f"num_perturbations must be >= 1, got {num_perturbations}")
        self.augment_on = augment_on
        self.unlabeled_fraction = unlabeled_fraction
        self._eval_batch_size = eval_batch_size
        self.num_perturbations = num_perturbations
        self.augment_labeled = augment_labeled
        self.perturbation = dict(perturbation or {})
        self.diversity = dict(diversity or {})
        self.crop_margin = crop_margin
        if augment_on == "batch":  # the same option names as the per-item pipelines, checked now
            self.batch_perturbation = PerturbationOptions(**self.perturbation)
            self.batch_diversity = DiversityOptions(**_tuples(self.diversity))

    def default_datasets(self, image_size: int, seed: int) -> dict[str, Any]:
        """Synthetic-style labelled, real-style unlabelled SynthHands training subjects; real-style val / test."""
        from handssl.data.synthhands.single_view import SynthHands
        from handssl.data.synthhands.world import SynthHandsWorld

        source = SynthHandsWorld(style="synthetic", image_size=image_size)
        target = SynthHandsWorld(style="real", image_size=image_size)
        return {
            "train": SynthHands(split="train", world=source),
            "unlabeled": SynthHands(split="train", world=target),
            "val": SynthHands(split="val", world=target),
            "test": SynthHands(split="test", world=target),
        }

    def split_batch_size(self, batch_size: int) -> tuple[int, int]:
        """``(labelled, unlabelled)`` items per training batch (at least one of each when both are wanted)."""
        unlabeled = round(batch_size * self.unlabeled_fraction)
        if 0 < self.unlabeled_fraction < 1:
            unlabeled = min(max(unlabeled, 1), batch_size - 1)
        return batch_size - unlabeled, unlabeled

    def check(self, datamodule: HandDataModule) -> None:
        """Single-view datasets, and each part of the batch has its dataset."""
        super().check(datamodule)
        labeled, unlabeled = self.split_batch_size(datamodule.batch_size)
        if labeled and datamodule.datasets["train"] is None:
            raise ValueError(
                f"SemiHandViews: no labeled dataset configured but unlabeled_fraction {self.unlabeled_fraction} "
                "< 1: set data.init_args.train"
            )
        if unlabeled and datamodule.datasets["unlabeled"] is None:
            raise ValueError(
                f"SemiHandViews: no unlabeled dataset configured but unlabeled_fraction {self.unlabeled_fraction} "
                "> 0: use a data config with data.init_args.unlabeled (e.g. experiments/data/rhd_to_stb.yaml) "
                "or unlabeled_fraction 0 (source only)"
            )

    def unlabeled_view(
        self,
        datamodule: HandDataModule,
        deterministic: bool = False,
        strong: bool = True,
        copies: bool = True,
    ) -> UnlabeledView:
        """The unlabelled items as :class:`UnlabeledView` (``deterministic`` for stored / exported labels)."""
        unlabeled = datamodule.datasets["unlabeled"]
        if unlabeled is None:
            raise ValueError("no unlabeled dataset configured: set data.init_args.unlabeled in the config")
        return UnlabeledView(
            unlabeled,
            datamodule.image_size,
            self.num_perturbations,
            self.perturbation,
            self.diversity,
            strong=strong,
            deterministic=deterministic,
            crop_margin=self.crop_margin,
            seed=datamodule.seed,
            copies=copies,
        )

    def train_parts(self, datamodule: HandDataModule) -> dict[str, TrainPart]:
        """``labeled`` and ``unlabeled`` parts (a part with no items per batch is left out)."""
        labeled_size, unlabeled_size = self.split_batch_size(datamodule.batch_size)
        parts: dict[str, TrainPart] = {}
        if labeled_size:
            labeled = LabeledView(
                datamodule.split("train"),
                datamodule.image_size,
                self.augment_labeled and self.augment_on == "workers",
                self.diversity,
                self.crop_margin,
                datamodule.seed,
            )
            parts["labeled"] = TrainPart(labeled, labeled_size)
        if unlabeled_size:
            unlabeled = self.unlabeled_view(datamodule, copies=self.augment_on == "workers")
            parts["unlabeled"] = TrainPart(unlabeled, unlabeled_size)
        return parts

    def eval_view(self, datamodule: HandDataModule, dataset: Dataset) -> Dataset:
        """The default crop."""
        return TransformedDataset(dataset, CropResize(datamodule.image_size, self.crop_margin))

    def eval_batch_size(self, datamodule: HandDataModule) -> int:
        """``eval_batch_size``, else the DataModule's ``batch_size``."""
        return self._eval_batch_size or datamodule.batch_size

    def on_after_batch_transfer(self, datamodule: HandDataModule, batch: Any, training: bool) -> Any:
        """With ``augment_on="batch"``, augment a training batch's parts."""
        if self.augment_on != "batch" or not training or not isinstance(batch, dict):
            return batch
        batch = dict(batch)
        if "labeled" in batch and self.augment_labeled:
            batch["labeled"] = augment_labeled_batch(batch["labeled"], self.batch_diversity)
        if "unlabeled" in batch:
            batch["unlabeled"] = augment_unlabeled_batch(
                batch["unlabeled"], self.num_perturbations, self.batch_perturbation, self.batch_diversity
            )
        return batch

    def num_unlabeled(self, datamodule: HandDataModule) -> int:
        """Number of unlabelled items (0 when none is configured)."""
        unlabeled = datamodule.datasets["unlabeled"]
        if unlabeled is None:
            return 0
        if not isinstance(unlabeled, Sized):
            raise TypeError(f"the unlabeled dataset ({type(unlabeled).__name__}) must define __len__")
        return len(unlabeled)

    def pseudo_label_dataloader(
        self, datamodule: HandDataModule, rank: int = 0, world_size: int = 1
    ) -> DataLoader:
        """Deterministic, unshuffled loader over the unlabelled items (for stored / exported pseudo-labels).

        Args:
            datamodule: The DataModule whose ``unlabeled`` items are read.
            rank: This process's rank; with ``world_size > 1`` it reads its own shard.
            world_size: Number of processes.
        """
        view = self.unlabeled_view(datamodule, deterministic=True, strong=False)
        sampler: DistributedSampler | None = None
        if world_size > 1:
            sampler = DistributedSampler(view, num_replicas=world_size, rank=rank, shuffle=False)
        return datamodule.make_dataloader(
            view, False, sampler=sampler, batch_size=self.eval_batch_size(datamodule)
        )
