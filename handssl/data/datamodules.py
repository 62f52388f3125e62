"""DataModules: the shared base and the single-view supervised DataModule.

The multi-view DataModule of novel-view synthesis lives in :mod:`handssl.data.multiview`, the
labeled + unlabeled mix of SemiHand in :mod:`handssl.data.semi`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from handssl.data.base import Sample, Transform
from handssl.data.transforms import CropResize


def collate_samples(samples: Sequence[Sample]) -> dict[str, Any]:
    """Collate sample dicts: tensors are stacked, ``meta`` becomes a dict of lists (values untouched).

    Keys missing from some samples (e.g. ``mask`` in a dataset that only has it for some items) are
    dropped from the batch rather than failing the whole batch.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = set(samples[0])
    for s in samples[1:]:
        keys &= set(s)
    batch: dict[str, Any] = {}
    for key in sorted(keys):
        if key == "meta":
            metas = [s["meta"] for s in samples]
            meta_keys = set().union(*(m.keys() for m in metas))
            batch["meta"] = {k: [m.get(k) for m in metas] for k in sorted(meta_keys)}
        else:
            batch[key] = default_collate([s[key] for s in samples])
    return batch


class TransformedDataset(Dataset):
    """A dataset view that applies ``transform`` to every sample of ``dataset``.

    Args:
        dataset: Any map-style dataset returning sample dicts.
        transform: Sample transform.
    """

    def __init__(self, dataset: Dataset, transform: Transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        return self.transform(self.dataset[index])

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        # Keep batched loading (SynthHands renders a whole batch in one go) working through the wrapper.
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return [self.transform(s) for s in samples]


class HandDataModule(pl.LightningDataModule):
    """Base DataModule: batch size, workers and a deterministic, DDP-shardable loader factory.

    Args:
        batch_size: Samples per batch (per process under DDP).
        num_workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: Pin host memory (helps GPU training).
        seed: Seed of the shuffling order.
    """

    def __init__(
        self, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False, seed: int = 0
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed

    def _dataloader(
        self,
        dataset: Dataset,
        shuffle: bool,
        sampler: Sampler | None = None,
        batch_size: int | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle and sampler is None else None
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
            collate_fn=collate_samples,
            generator=generator,
        )


def _default_synthhands(split: str, image_size: int) -> Dataset:
    from handssl.data.synthhands.single_view import SynthHands

    return SynthHands(split=split, image_size=image_size)


class SupervisedDataModule(HandDataModule):
    """Single-view labeled data for supervised training and for evaluation.

    Any handssl dataset can be plugged in by ``class_path`` in YAML. Datasets returning the full
    original image (numpy) get the default transform :class:`~handssl.data.transforms.CropResize`
    (square crop around the hand, resized to ``image_size``); rendered datasets (SynthHands) are used
    as they are. With no dataset given at all, SynthHands ``train`` / ``val`` / ``test`` are used.

    Args:
        train: Training dataset.
        val: Validation dataset (validation is skipped when absent).
        test: Test dataset.
        predict: Prediction dataset (defaults to ``test``).
        image_size: Side of the network input in pixels.
        crop_margin: Margin of the default crop, as a fraction of the hand's box.
        batch_size: Samples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory.
        seed: Seed of the shuffling order.
    """

    def __init__(
        self,
        train: Dataset | None = None,
        val: Dataset | None = None,
        test: Dataset | None = None,
        predict: Dataset | None = None,
        image_size: int = 64,
        crop_margin: float = 0.25,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, seed=seed)
        self.transform = CropResize(image_size, crop_margin)
        self.image_size = image_size
        if train is None and val is None and test is None and predict is None:
            train, val, test = (_default_synthhands(s, image_size) for s in ("train", "val", "test"))
        self.datasets = {"train": train, "val": val, "test": test, "predict": predict or test}

    def _split(self, name: str) -> Dataset:
        dataset = self.datasets[name]
        if dataset is None:
            raise ValueError(
                f"no {name} dataset configured: set data.init_args.{name} in the config "
                f"(e.g. class_path: handssl.data.SynthHands, init_args: {{split: {name}}})"
            )
        return TransformedDataset(dataset, self.transform)

    def train_dataloader(self) -> DataLoader:
        return self._dataloader(self._split("train"), shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.datasets["val"] is None:
            return []
        return self._dataloader(self._split("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._dataloader(self._split("test"), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._dataloader(self._split("predict"), shuffle=False)
