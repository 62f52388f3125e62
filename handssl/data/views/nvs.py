"""NVS's views: multi-view training pairs, a deterministic labelled subset, minority oversampling.

A multi-view dataset (:class:`~handssl.data.synthhands.multi_view.SynthHandsMultiView`, or
:class:`~handssl.data.panoptic.PanopticMultiView` in multi-view mode) gives, per item, ``V >= 2`` synchronized crop
views of one frame plus the same cameras at another frame ``t'`` (:class:`~handssl.data.contract.MultiViewItem`).
:class:`MultiViewPairs` turns an item into one training pair of its first two views (``i = 0, j = 1`` for even
indices, ``i = 1, j = 0`` for odd ones): :class:`~handssl.data.contract.MultiViewPair`, whose keys (input
``image`` ``I_t^i``, ``target`` ``I_t^j``, ``R_ij``, both backgrounds, both appearance images ``I_t'^i`` and
``I_t'^j``, the labels of both views, ``labeled``, ...) are documented in :data:`handssl.data.contract.FIELDS`.
Both directions are there because Rhodin et al. synthesise every encoded view (``j -> i`` too) and the pose
losses apply to every encoded image; labels are NaN with ``valid`` False unless the item is labeled.

:class:`NVSPairs` picks the labelled subset of the DataModule's ``train`` set deterministically (whole subjects
with ``labeled_subjects``, or frames with ``label_fraction`` or ``num_labeled``), and its training batches carry a
fixed share of labelled items through :class:`LabeledShareBatchSampler` (random minority oversampling: the few
labelled items are re-drawn, in reshuffled cycles, to fill their slots of every batch). The share says what the
regime needs: ``1`` (supervised, stage 2 of pre-training: only labelled items), ``0`` (stage 1: labels hidden), or
in between (semi-supervised).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, ConcatDataset, Dataset, Sampler

from handssl.data.base import Sample
from handssl.data.views.base import TrainPart, Views, is_multiview
from handssl.geometry import relative_rotation
from handssl.skeleton import NUM_JOINTS, root_relative, valid_with_root

if TYPE_CHECKING:
    from handssl.data.datamodules import HandDataModule
    from handssl.data.synthhands.world import Style

__all__ = [
    "PAIR_KEYS",
    "LabeledShareBatchSampler",
    "MultiViewPairs",
    "NVSPairs",
    "labeled_subjects_subset",
    "labeled_subset",
    "pose_statistics",
]

PAIR_VIEWS = 2
"""Views of the multi-view form :class:`NVSPairs` asks a single-view dataset for (a pair's two cameras)."""

MULTI_VIEW_SPLITS = ("train", "val", "test", "predict")
"""The splits whose single-view datasets :class:`NVSPairs` replaces by their multi-view forms."""

PAIR_KEYS = ("image", "background", "R", "image_t2", "joints3d", "joints2d", "K", "valid")
"""Keys a multi-view item must hold (each with a leading view axis)."""

SlotKey = tuple[int, bool, int]
"""A training index with its slot and epoch: ``(index, labels_visible, epoch)``."""


def pose_statistics(joints: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-coordinate mean and standard deviation of root-relative joints over valid samples.

    A pure function of labels (the pose head of :class:`~handssl.models.nvs.NVSModule` normalises its
    targets with it, as Rhodin et al.'s ``LossLabelMeanStdNormalized``); it lives in the data layer so that
    :class:`NVSPairs` needs nothing from :mod:`handssl.models`.

    Args:
        joints: ``(M, 21, 3)`` joints in mm (camera frame); NaN allowed where not valid.
        valid: Optional ``(M, 21)`` bool mask; a joint counts where it and the root are valid.

    Returns:
        ``(mean (21, 3), std (21, 3))`` in mm.
    """
    if joints.dim() != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"joints must be (M, 21, 3), got {tuple(joints.shape)}")
    if valid is None:
        valid = torch.isfinite(joints).all(-1)
    valid = valid_with_root(valid.bool())
    if not valid.any(0).all():
        missing = (~valid.any(0)).nonzero().flatten().tolist()
        raise ValueError(f"no valid labeled sample for joints {missing}; cannot normalise the pose head")
    rel = torch.nan_to_num(root_relative(joints)).double()
    weight = valid.unsqueeze(-1).double()
    count = weight.sum(0)
    mean = (rel * weight).sum(0) / count
    var = (((rel - mean) ** 2) * weight).sum(0) / count
    return mean.float(), var.sqrt().float()


def labeled_subjects_subset(
    item_subjects: Sequence[int] | Tensor, num_subjects: int, seed: int = 0
) -> Tensor:
    """Deterministic labeled subset by subject: every item of ``num_subjects`` subjects drawn by ``seed``.

    As Rhodin et al. label whole subjects (and learn the others without labels), not random frames.

    Args:
        item_subjects: Subject of every training item.
        num_subjects: How many subjects are labeled, ``0 <= num_subjects <= distinct subjects``.
        seed: Seed of the subject permutation (the same seed always picks the same subjects).

    Returns:
        Sorted ``int64`` indices of the labeled items.
    """
    subjects = torch.as_tensor(list(item_subjects), dtype=torch.long)
    distinct = subjects.unique()
    if not 0 <= num_subjects <= len(distinct):
        raise ValueError(
            f"labeled_subjects must be in [0, {len(distinct)}] (the training subjects), got {num_subjects}"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = distinct[torch.randperm(len(distinct), generator=generator)[:num_subjects]]
    return torch.nonzero(torch.isin(subjects, chosen)).squeeze(1)


def labeled_subset(
    num_items: int, label_fraction: float | None = None, num_labeled: int | None = None, seed: int = 0
) -> Tensor:
    """Deterministic labeled subset: the first ``k`` items of a seeded permutation, sorted.

    Args:
        num_items: Items in the training set.
        label_fraction: Share of items that are labeled, in ``[0, 1]`` (at least one item when positive).
        num_labeled: Number of labeled items (instead of ``label_fraction``).
        seed: Seed of the permutation (the same seed always picks the same items).

    Returns:
        Sorted ``int64`` indices of the labeled items.
    """
    if num_labeled is not None and label_fraction is None:
        if not 0 <= num_labeled <= num_items:
            raise ValueError(
                f"num_labeled must be in [0, {num_items}] (the training items), got {num_labeled}"
            )
        count = num_labeled
    elif label_fraction is not None and num_labeled is None:
        if not 0.0 <= label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in [0, 1], got {label_fraction}")
        count = 0 if label_fraction == 0 else max(1, round(label_fraction * num_items))
    else:
        raise ValueError("give exactly one of label_fraction and num_labeled")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_items, generator=generator)[:count].sort().values


class MultiViewPairs(Dataset):
    """Training pairs ``(I_t^i, I_t^j, R_ij, bg_j, I_t'^i, labels where labeled)`` from a multi-view dataset.

    Items are :class:`~handssl.data.contract.MultiViewPair`. An index may be a plain ``int`` (labels visible
    when the item is in ``labeled``) or an ``(index, labels_visible[, epoch])`` key from
    :class:`LabeledShareBatchSampler` (labels visible only in labeled slots, so the labeled share of a batch
    is exactly the configured one). Datasets whose items change with the epoch (``epoch_items = True``,
    e.g. SynthHandsMultiView draws fresh camera pairs) receive ``(index, epoch)``.

    Args:
        dataset: Multi-view dataset whose items hold the keys in :data:`PAIR_KEYS` with ``V >= 2`` views.
        labeled: Indices whose labels are visible; ``None`` makes every item labeled (validation, test).
    """

    def __init__(self, dataset: Dataset, labeled: Sequence[int] | Tensor | None = None) -> None:
        self.dataset = dataset
        self.labeled = None if labeled is None else {int(i) for i in labeled}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def is_labeled(self, index: int) -> bool:
        """Whether item ``index`` belongs to the labeled subset."""
        return self.labeled is None or index in self.labeled

    def _parse(self, key: int | tuple) -> tuple[int, bool, int]:
        if isinstance(key, tuple):
            index, visible = int(key[0]), bool(key[1])
            epoch = int(key[2]) if len(key) > 2 else 0
            if visible and not self.is_labeled(index):
                raise IndexError(
                    f"item {index} is not in the labeled subset but was drawn into a labeled slot"
                )
            return index, visible, epoch
        index = int(key)
        return index, self.is_labeled(index), 0

    def _dataset_key(self, index: int, epoch: int) -> int | tuple[int, int]:
        return (index, epoch) if getattr(self.dataset, "epoch_items", False) else index

    def __getitem__(self, key: int | tuple) -> Sample:
        index, visible, epoch = self._parse(key)
        return self._pair(index, visible, self.dataset[self._dataset_key(index, epoch)])

    def __getitems__(self, keys: Sequence[int | tuple]) -> list[Sample]:
        """Batched fetch: forwards to the dataset's ``__getitems__`` (SynthHands renders a batch at once)."""
        parsed = [self._parse(key) for key in keys]
        dataset_keys = [self._dataset_key(index, epoch) for index, _, epoch in parsed]
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(dataset_keys) if fetch is not None else [self.dataset[k] for k in dataset_keys]
        return [self._pair(index, visible, item) for (index, visible, _), item in zip(parsed, items)]

    def _pair(self, index: int, visible: bool, item: Sample) -> Sample:
        missing = [k for k in PAIR_KEYS if k not in item]
        if missing:
            raise KeyError(f"multi-view item {index} lacks keys {missing}; expected {list(PAIR_KEYS)}")
        if item["image"].shape[0] < 2:
            raise ValueError(f"multi-view item {index} has {item['image'].shape[0]} view(s); pairs need 2")
        # The input view alternates with the index parity, so a dataset that lists its cameras in sorted
        # order (Panoptic) does not always synthesise in the same direction.
        i, j = (0, 1) if index % 2 == 0 else (1, 0)
        # Items are packed (handssl.data.contract.MultiViewItem): float32 / bool tensors with a view axis.
        R = item["R"]
        joints3d = item["joints3d"][i].clone()
        joints2d = item["joints2d"][i].clone()
        valid = item["valid"][i].clone()
        joints3d_j = item["joints3d"][j].clone()
        valid_j = item["valid"][j].clone()
        extra: Sample = {}
        if "joints3d_t2" in item:
            extra["joints3d_t2"] = item["joints3d_t2"][i].clone()
            extra["joints3d_t2_j"] = item["joints3d_t2"][j].clone()
        if not visible:
            for tensor in (joints3d, joints2d, joints3d_j, *extra.values()):
                tensor.fill_(math.nan)
            valid.fill_(False)
            valid_j.fill_(False)
        meta = item.get("meta", {})
        cameras = meta.get("cameras", [None, None])
        pair: Sample = {
            "image": item["image"][i],
            "target": item["image"][j],
            "R_ij": relative_rotation(R[i], R[j]),
            "background": item["background"][j],
            "background_input": item["background"][i],
            "image_t2": item["image_t2"][i],
            "image_t2_j": item["image_t2"][j],
            "joints3d": joints3d,
            "joints3d_j": joints3d_j,
            "valid_j": valid_j,
            **extra,
            "joints2d": joints2d,
            "valid": valid,
            "K": item["K"][i],
            "labeled": torch.tensor(visible),
            "meta": {
                "dataset": meta.get("dataset", "unknown"),
                "subject": meta.get("subject", -1),
                "sequence": meta.get("sequence", -1),
                "frame": meta.get("frame", -1),
                "camera": cameras[i],
                "camera_target": cameras[j],
                "index": index,
            },
        }
        others = [k for k in range(item["image"].shape[0]) if k not in (i, j)]
        if others:  # the frame's further views: silhouettes the latent's points can be checked against
            pair["hull_images"] = item["image"][others]
            pair["hull_backgrounds"] = item["background"][others]
            pair["R_i_hull"] = relative_rotation(R[i].expand(len(others), 3, 3), R[others])
            pair["R_j_hull"] = relative_rotation(R[j].expand(len(others), 3, 3), R[others])
        if "mask" in item:  # for diagnostics only (e.g. hand-region L1); training never reads it
            pair["target_mask"] = item["mask"][j]
            pair["input_mask"] = item["mask"][i]
        return pair


class LabeledShareBatchSampler(BatchSampler):
    """Batches with a fixed number of labeled items: random minority oversampling of the labeled subset.

    Each batch takes ``batch_size - labeled_per_batch`` keys ``(index, False, epoch)`` from ``sampler`` (a stream
    of dataset indices whose labels stay hidden) and ``labeled_per_batch`` keys ``(index, True, epoch)`` from the
    labeled subset, cycling through reshuffled copies of it (the minority is oversampled: each labeled item
    comes back once per cycle). With ``labeled_per_batch == batch_size`` every item is labeled and the stream
    only sets the epoch length (``len(sampler) // batch_size`` batches).

    Under DDP Lightning re-creates this sampler with ``sampler`` replaced by a ``DistributedSampler`` shard
    (it subclasses ``BatchSampler`` and takes ``sampler``, ``batch_size`` and ``drop_last``); every rank then
    draws its labeled items from its own seeded stream (seed, rank, epoch), so no two ranks repeat the same
    labeled order.

    Args:
        sampler: Stream of dataset indices (e.g. a ``RandomSampler``).
        batch_size: Items per batch.
        drop_last: Drop the last incomplete batch.
        labeled_indices: The labeled subset.
        labeled_per_batch: Labeled items per batch, ``0..batch_size``.
        seed: Seed of the labeled draws.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool,
        labeled_indices: Sequence[int] | Tensor = (),
        labeled_per_batch: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.labeled_indices = torch.as_tensor(list(labeled_indices), dtype=torch.long)
        if not 0 <= labeled_per_batch <= batch_size:
            raise ValueError(f"labeled_per_batch must be in [0, {batch_size}], got {labeled_per_batch}")
        if labeled_per_batch > 0 and len(self.labeled_indices) == 0:
            raise ValueError("labeled_per_batch > 0 needs a non-empty labeled subset (raise label_fraction)")
        self.labeled_per_batch = labeled_per_batch
        self.seed = seed
        self._iterations = 0
        self._epoch_set: int | None = None
        self._pass_start: dict[str, Any] | None = None
        self._skip = 0

    @property
    def unlabeled_per_batch(self) -> int:
        """Slots per batch filled from the stream (labels hidden)."""
        return self.batch_size - self.labeled_per_batch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (Lightning calls this before every training epoch, also after a resume)."""
        self._epoch_set = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _epoch(self) -> int:
        if self._epoch_set is not None:
            return self._epoch_set
        epoch = getattr(self.sampler, "epoch", None)
        return int(epoch) if epoch is not None else self._iterations

    def _labeled_stream(self) -> Iterator[int]:
        rank = int(getattr(self.sampler, "rank", 0))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + rank * 10_007 + self._epoch())
        while True:
            for i in torch.randperm(len(self.labeled_indices), generator=generator):
                yield int(self.labeled_indices[i])

    def _stream_generator(self) -> torch.Generator | None:
        generator = getattr(self.sampler, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None

    def position(self) -> dict[str, Any]:
        """What :meth:`restore` needs: pass count and stream generator state at the start of the current pass."""
        if self._pass_start is not None:
            return dict(self._pass_start)
        generator = self._stream_generator()
        return {
            "iterations": self._iterations,
            "generator": generator.get_state() if generator is not None else None,
            "epoch": self._epoch(),
        }

    def restore(self, position: dict[str, Any], batches: int, finished: bool = False) -> None:
        """Continue the pass of ``position`` after its first ``batches`` batches.

        ``finished``: that pass is over; replay its ``batches`` batches' draws from the stream (keys only) so
        the next pass draws what the uninterrupted run drew next.
        """
        generator = self._stream_generator()
        if generator is not None and position.get("generator") is not None:
            generator.set_state(position["generator"])
        self._iterations = int(position.get("iterations", self._iterations))
        self._skip = 0
        if finished:
            replay = self._iter_batches()
            for _ in range(batches):
                next(replay, None)
        else:
            self._skip = batches

    # BatchSampler types its batches as lists of ints; these are lists of (index, labels_visible, epoch) keys.
    def __iter__(self) -> Iterator[list[SlotKey]]:  # type: ignore[override]
        skip, self._skip = self._skip, 0
        for i, keys in enumerate(self._iter_batches()):
            if i >= skip:  # batches a resumed run already trained on: keys only, nothing is loaded
                yield keys

    def _iter_batches(self) -> Iterator[list[SlotKey]]:
        generator = self._stream_generator()
        self._pass_start = {
            "iterations": self._iterations,
            "generator": generator.get_state() if generator is not None else None,
        }
        labeled = self._labeled_stream() if self.labeled_per_batch else iter(())
        epoch = self._epoch()
        self._pass_start["epoch"] = epoch
        self._iterations += 1
        if self.unlabeled_per_batch == 0:
            for _ in range(len(self)):
                yield [(next(labeled), True, epoch) for _ in range(self.batch_size)]
            return
        chunk: list[SlotKey] = []
        for index in self.sampler:
            chunk.append((int(index), False, epoch))
            if len(chunk) == self.unlabeled_per_batch:
                yield chunk + [(next(labeled), True, epoch) for _ in range(self.labeled_per_batch)]
                chunk = []
        if chunk and not self.drop_last:
            yield chunk + [(next(labeled), True, epoch) for _ in range(self.labeled_per_batch)]

    def __len__(self) -> int:
        stream = len(self.sampler)  # type: ignore[arg-type]
        per_batch = self.unlabeled_per_batch or self.batch_size
        return (
            stream // per_batch
            if self.drop_last or not self.unlabeled_per_batch
            else math.ceil(stream / per_batch)
        )


class NVSPairs(Views):
    """NVS's batches: multi-view pairs of ``train`` with a fixed labelled share (minority oversampling).

    Validation and test items are fully labelled pairs; the evaluation uses view *i*. With no datasets given,
    the DataModule gets SynthHandsMultiView ``train`` / ``val`` / ``test`` (two views, ``style``, the
    DataModule's ``image_size`` and ``seed``). A single-view dataset (e.g. ``handssl.data.SynthHands`` or
    ``handssl.data.Panoptic`` of a data config every method shares) is replaced by its multi-view form,
    ``dataset.multi_view(num_views=2, image_size=<the DataModule's>, **multi_view_arguments[split])``; a
    dataset without one is a one-line error. ``num_views`` above 2 (e.g. ``{train: {num_views: 4}}``) keeps the
    pair and adds the frame's further views as ``hull_images`` (their silhouettes, for
    ``geometry.hull_weight``). Multi-view datasets (``handssl.data.SynthHandsMultiView``, ...)
    are used as given.

    Args:
        label_fraction: Share of training items whose labels are used (ignored when ``num_labeled`` or
            ``labeled_subjects`` is set).
        num_labeled: Number of labelled training items (overrides ``label_fraction``).
        labeled_subjects: Label every item of this many training subjects (seeded) and none of the others,
            as Rhodin et al. do; overrides ``label_fraction`` and ``num_labeled``. Needs a dataset with
            ``item_subjects()`` (SynthHandsMultiView).
        labeled_share: Share of every training batch drawn from the labelled subset: ``1.0`` for the
            supervised regime and stage 2 of the pre-trained regime, ``0.0`` for stage 1 (synthesis only,
            all labels hidden), in between for the semi-supervised regime.
        statistics_items: Labelled items (evenly spaced) used to compute the pose mean and std.
        style: Appearance style of the default SynthHands datasets (``"synthetic"``, ``"real"`` or
            ``"real_object"``).
        multi_view_arguments: Per split name (``train``, ``val``, ``test``, ``predict``), arguments of the
            multi-view form of that split's single-view dataset, e.g. a smaller evaluation subset
            ``{val: {frames_per_sequence: 16}}``.
    """

    example_dataset = "handssl.data.SynthHandsMultiView"
    multiview = True

    def __init__(
        self,
        label_fraction: float = 0.05,
        num_labeled: int | None = None,
        labeled_subjects: int | None = None,
        labeled_share: float = 0.5,
        statistics_items: int = 128,
        style: Style = "synthetic",
        multi_view_arguments: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        if not 0.0 <= labeled_share <= 1.0:
            raise ValueError(f"labeled_share must be in [0, 1], got {labeled_share}")
        if statistics_items < 1:
            raise ValueError(f"statistics_items must be >= 1, got {statistics_items}")
        self.labeled_share = labeled_share
        self.label_fraction = None if num_labeled is not None else label_fraction
        self.num_labeled = num_labeled
        self.labeled_subjects = labeled_subjects
        self.statistics_items = statistics_items
        self.style = style
        self.multi_view_arguments = dict(multi_view_arguments or {})
        unknown = sorted(set(self.multi_view_arguments) - set(MULTI_VIEW_SPLITS))
        if unknown:
            raise ValueError(f"multi_view_arguments: unknown split(s) {unknown}; give {MULTI_VIEW_SPLITS}")
        self._labeled: Tensor | None = None
        self._statistics: tuple[Tensor, Tensor] | None = None

    def default_datasets(self, image_size: int, seed: int) -> dict[str, Any]:
        """SynthHandsMultiView ``train`` / ``val`` / ``test`` (two views) of one world of ``style``."""
        from handssl.data.synthhands.dataset import SPLITS
        from handssl.data.synthhands.multi_view import SynthHandsMultiView
        from handssl.data.synthhands.world import SynthHandsWorld

        world = SynthHandsWorld(style=self.style, image_size=image_size, seed=seed)
        return {s: SynthHandsMultiView(split=s, world=world, num_views=2) for s in SPLITS}

    def adapt(self, datasets: dict[str, Dataset | None], image_size: int) -> dict[str, Dataset | None]:
        """Single-view datasets replaced by their multi-view forms (one form per dataset object)."""
        forms: dict[int, Dataset] = {}
        adapted: dict[str, Dataset | None] = {}
        for name, dataset in datasets.items():
            if dataset is None or name == "unlabeled" or is_multiview(dataset):
                adapted[name] = dataset
                continue
            if id(dataset) not in forms:  # predict defaults to the test set: the same form
                forms[id(dataset)] = self.multi_view_form(name, dataset, image_size)
            adapted[name] = forms[id(dataset)]
        return adapted

    def multi_view_form(self, split: str, dataset: Dataset, image_size: int) -> Dataset:
        """The multi-view form of split ``split``'s single-view ``dataset`` (``dataset.multi_view(...)``)."""
        if isinstance(dataset, ConcatDataset):
            return ConcatDataset([self.multi_view_form(split, d, image_size) for d in dataset.datasets])
        form = getattr(dataset, "multi_view", None)
        if not callable(form):
            raise ValueError(
                f"{type(self).__name__} reads multi-view items, but data.init_args.{split} is "
                f"{type(dataset).__name__}, which has no multi-view form (no multi_view()); use a dataset "
                "with one (handssl.data.SynthHands, handssl.data.Panoptic) or a multi-view dataset"
            )
        arguments = {
            "num_views": PAIR_VIEWS,
            "image_size": image_size,
            **self.multi_view_arguments.get(split, {}),
        }
        if arguments["num_views"] < PAIR_VIEWS:
            raise ValueError(
                f"multi_view_arguments.{split}.num_views must be >= {PAIR_VIEWS} (a pair), got {arguments['num_views']}"
            )
        return form(**arguments)

    def labeled_per_batch(self, batch_size: int) -> int:
        """Labelled items per training batch of ``batch_size``."""
        labeled = round(self.labeled_share * batch_size)
        if self.labeled_share > 0 and labeled == 0:
            raise ValueError(
                f"labeled_share {self.labeled_share} of a batch of {batch_size} rounds to no labeled item; "
                "raise labeled_share or batch_size"
            )
        if self.labeled_share < 1 and labeled == batch_size:
            raise ValueError(
                f"labeled_share {self.labeled_share} of a batch of {batch_size} rounds to a fully labeled "
                "batch; use 1.0 or lower it"
            )
        return labeled

    def check(self, datamodule: HandDataModule) -> None:
        """Multi-view datasets, and a labelled share that fits the batch."""
        super().check(datamodule)
        self.labeled_per_batch(datamodule.batch_size)

    def labeled_indices(self, datamodule: HandDataModule) -> Tensor:
        """Sorted indices of the labelled training items (deterministic given the DataModule's ``seed``)."""
        if self._labeled is None:
            train = datamodule.split("train")
            if self.labeled_subjects is not None:
                item_subjects = getattr(train, "item_subjects", None)
                if item_subjects is None:
                    raise ValueError(
                        f"labeled_subjects needs a training dataset with item_subjects(); "
                        f"{type(train).__name__} has none: use label_fraction or num_labeled"
                    )
                self._labeled = labeled_subjects_subset(
                    item_subjects(), self.labeled_subjects, datamodule.seed
                )
            else:
                self._labeled = labeled_subset(
                    len(train),  # type: ignore[arg-type]
                    self.label_fraction,
                    self.num_labeled,
                    datamodule.seed,
                )
            if self.labeled_share > 0 and len(self._labeled) == 0:
                raise ValueError(
                    f"labeled_share {self.labeled_share} needs labeled items, but the labeled subset is empty "
                    f"(label_fraction={self.label_fraction}, num_labeled={self.num_labeled}, "
                    f"labeled_subjects={self.labeled_subjects})"
                )
        return self._labeled

    def pose_statistics(self, datamodule: HandDataModule) -> tuple[Tensor, Tensor]:
        """Mean and std ``(21, 3)`` (mm) of root-relative joints of the labelled subset (both views).

        Computed once from at most ``statistics_items`` evenly spaced labelled items; identical on every rank.
        """
        if self._statistics is None:
            labeled = self.labeled_indices(datamodule)
            if len(labeled) == 0:
                raise ValueError("no labeled training items: pose statistics need label_fraction > 0")
            pick = (
                torch.linspace(0, len(labeled) - 1, min(len(labeled), self.statistics_items)).round().long()
            )
            train = datamodule.split("train")
            indices = labeled[pick.unique()].tolist()
            fetch = getattr(train, "__getitems__", None)
            joints, valid = [], []
            for start in range(0, len(indices), 64):
                chunk = indices[start : start + 64]
                items = fetch(chunk) if fetch is not None else [train[i] for i in chunk]
                for item in items:
                    joints.append(torch.as_tensor(item["joints3d"], dtype=torch.float32).reshape(-1, 21, 3))
                    valid.append(torch.as_tensor(item["valid"]).bool().reshape(-1, 21))
            joints_all, valid_all = torch.cat(joints), torch.cat(valid)
            valid_all &= torch.isfinite(joints_all).all(-1)
            self._statistics = pose_statistics(joints_all, valid_with_root(valid_all))
        return self._statistics

    def train_pairs(self, datamodule: HandDataModule) -> MultiViewPairs:
        """The training pairs (labels visible only for the labelled subset)."""
        return MultiViewPairs(datamodule.split("train"), self.labeled_indices(datamodule))

    def train_parts(self, datamodule: HandDataModule) -> dict[str, TrainPart]:
        """One part: the pairs, batched by :class:`LabeledShareBatchSampler` over a seeded random stream."""
        labeled = self.labeled_indices(datamodule)
        batch_size = datamodule.batch_size
        per_batch = self.labeled_per_batch(batch_size)

        def batch_sampler(stream: Sampler[int]) -> BatchSampler:
            return LabeledShareBatchSampler(
                stream,
                batch_size=batch_size,
                drop_last=True,
                labeled_indices=labeled,
                labeled_per_batch=per_batch,
                seed=datamodule.seed,
            )

        return {"train": TrainPart(self.train_pairs(datamodule), batch_size, batch_sampler)}

    def eval_view(self, datamodule: HandDataModule, dataset: Dataset) -> Dataset:
        """Fully labelled pairs."""
        return MultiViewPairs(dataset)
