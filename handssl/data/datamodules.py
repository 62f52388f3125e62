"""The one DataModule: datasets and views in, resumable loaders out.

:class:`HandDataModule` holds a data config's datasets (``train``, ``unlabeled``, ``val``, ``test``,
``predict``), builds the loaders (seeded, DDP-shardable, resumable mid-epoch) and asks the method's
:class:`~handssl.data.views.Views` (``views``, named by the method's config) how samples become batches:
:class:`~handssl.data.views.SupervisedViews`, :class:`~handssl.data.views.SemiHandViews`,
:class:`~handssl.data.views.NVSPairs`. :class:`SupervisedDataModule`,
:class:`~handssl.data.semi.SemiSupervisedDataModule` and :class:`~handssl.data.multiview.MultiViewDataModule`
are its earlier forms, kept for configs and checkpoints written before.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence, Sized
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler
from torch.utils.data._utils.collate import default_collate

from handssl.data.base import Sample, Transform

if TYPE_CHECKING:
    from pytorch_lightning.utilities.combined_loader import CombinedLoader

    from handssl.data.views.base import TrainPart, Views

RENDER_ON = ("workers", "device")
"""Where a DataModule's SynthHands training set is rendered (``render_on``)."""


def collate_samples(samples: Sequence[Sample]) -> dict[str, Any]:
    """Collate packed sample dicts: tensors are stacked, ``meta`` becomes a dict of lists (values untouched).

    Keys missing from some samples (e.g. ``mask`` in a dataset that only has it for some items) are
    dropped from the batch rather than failing the whole batch. A numpy value is refused: samples arrive
    packed (:func:`~handssl.data.contract.pack_sample` is the one conversion to tensors), so that collate
    never converts layouts behind the contract's back.
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
            values = [s[key] for s in samples]
            if any(isinstance(v, np.ndarray) for v in values):
                raise TypeError(
                    f"cannot collate {key!r}: it is a numpy array, but samples reach collate packed "
                    "(pass them through handssl.data.contract.pack_sample, e.g. with CropResize or ToTensor)"
                )
            batch[key] = default_collate(values)
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


class ResumableSampler(DistributedSampler):
    """Seeded shuffling whose order is a pure function of ``(seed, epoch, pass)``, and which can start mid-way.

    Under DDP each rank takes its own strided share of the same permutation (padded as
    :class:`~torch.utils.data.DistributedSampler` pads), so Lightning keeps this sampler instead of replacing it.
    ``pass`` counts the passes over the data within one epoch (a shorter loader in a ``max_size_cycle``
    :class:`~pytorch_lightning.utilities.combined_loader.CombinedLoader` makes several). Nothing depends on how
    many epochs came before, so a resumed run draws the same order as the uninterrupted one.
    :class:`ResumableDataLoader` sets ``pass_index`` and ``start``.

    Args:
        dataset: The dataset (only its length is used).
        shuffle: Shuffle (else dataset order).
        seed: Seed of the permutations.
        num_replicas: Number of processes (default: the initialised process group's size, else 1).
        rank: This process's rank (default: from the process group, else 0).
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        self.pass_index = 0
        self.start = 0

    def indices(self) -> list[int]:
        """This rank's indices of the current ``(epoch, pass_index)``, from the first one."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            state = np.random.SeedSequence([self.seed, self.epoch, self.pass_index]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(state))
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        if self.total_size > n:  # pad by repeating, as DistributedSampler does
            order += (order * (self.total_size // max(n, 1) + 1))[: self.total_size - n]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.indices()[start:])


def _rng_state() -> dict[str, Any]:
    """The global generators' states (torch, CUDA when initialised, numpy, random), in checkpoint-safe types."""
    # The legacy global generator is the state to save (code that calls np.random.* draws from it).
    legacy = np.random.get_state(legacy=True)  # noqa: NPY002
    if not isinstance(legacy, tuple):  # legacy=True always gives the tuple; the dict is legacy=False's
        raise TypeError(f"numpy's legacy generator state is a {type(legacy).__name__}, not a tuple")
    keys, pos, has_gauss, cached = legacy[1:]
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "random": [int(version), torch.tensor(internal, dtype=torch.int64), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _PassLoader(Protocol):
    """What :class:`CountingIterator` needs of a loader."""

    _batches: int

    def __len__(self) -> int: ...

    def _start_pass(self) -> Iterator: ...


class CountingIterator:
    """Starts a resumable loader's pass at the first ``next`` (after Lightning's ``set_epoch``), counts batches.

    Shared by :class:`ResumableDataLoader` and :class:`~handssl.data.multiview.ResumableBatchLoader`: the loader
    provides ``_start_pass()`` and the ``_batches`` counter.
    """

    def __init__(self, loader: _PassLoader) -> None:
        self.loader = loader
        self.iterator: Iterator | None = None

    def __iter__(self) -> CountingIterator:
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.loader._start_pass()
        batch = next(self.iterator)
        self.loader._batches += 1
        return batch


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` whose position is saved in Lightning checkpoints.

    Lightning stores ``state_dict()`` of every training loader that has one in the checkpoint (the fit loop's
    ``combined_loader`` entry) and calls ``load_state_dict`` when it resumes, just before training goes on.
    The state is the epoch, the pass within the epoch and the batches already consumed in it, so the
    resumed loader skips those indices (without loading them) and continues with the same batches; a
    state taken after a pass's last batch continues with the next pass, or with the next epoch when
    Lightning has started one. It also holds the global random generators' states at the checkpoint
    (torch, CUDA, numpy, random: dropout and anything else drawn in the training step), restored on load,
    since Lightning does not save them. Under DDP the checkpoint holds rank 0's generators, which equal the
    other ranks' when every rank was seeded alike (``seed_everything``).

    Exact with ``num_workers=0``; with workers it is exact as long as an item depends only on its index (as
    SynthHands' items do), since random draws inside worker processes are not saved.
    """

    # Set by ``_start_pass`` (absent from ``__dict__`` until the first pass) and advanced by CountingIterator.
    _epoch: int
    _pass: int
    _batches: int

    def __iter__(self) -> CountingIterator:  # type: ignore[override]
        return CountingIterator(self)

    def _start_pass(self) -> Iterator:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, got {type(sampler).__name__}")
        pending = self.__dict__.pop("_pending", None)
        skip = 0
        if pending is not None and pending["epoch"] == sampler.epoch:
            if pending["batches"] >= len(self):
                pass_index = pending["pass"] + 1
            else:
                pass_index, skip = pending["pass"], pending["batches"]
        elif pending is None and self.__dict__.get("_epoch") == sampler.epoch:
            pass_index = self._pass + 1
        else:
            pass_index = 0
        sampler.pass_index, sampler.start = pass_index, skip * (self.batch_size or 1)
        self._epoch, self._pass, self._batches = sampler.epoch, pass_index, skip
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """Position (``epoch``, ``pass``, ``batches`` consumed in the pass) and the global RNG states."""
        if "_pending" in self.__dict__:
            position = {k: self._pending[k] for k in ("epoch", "pass", "batches")}
        elif "_epoch" in self.__dict__:
            position = {"epoch": self._epoch, "pass": self._pass, "batches": self._batches}
        else:
            position = {"epoch": getattr(self.sampler, "epoch", 0), "pass": 0, "batches": 0}
        return {**position, "rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict`` at the next pass; restores the global RNG states now."""
        self._pending = {k: int(state_dict[k]) for k in ("epoch", "pass", "batches")}
        if isinstance(self.sampler, ResumableSampler):
            self.sampler.epoch = self._pending["epoch"]
        if "rng" in state_dict:
            _set_rng_state(state_dict["rng"])


@runtime_checkable
class ResumableBatchSampler(Protocol):
    """A batch sampler that can say where its pass stands and continue from there.

    E.g. NVS's :class:`~handssl.data.views.nvs.LabeledShareBatchSampler`.
    """

    def position(self) -> dict[str, Any]:
        """What :meth:`restore` needs (with an ``epoch`` key)."""
        ...

    def restore(self, position: dict[str, Any], batches: int, finished: bool = False) -> None:
        """Continue the pass of ``position`` after its first ``batches`` batches (``finished``: it is over)."""
        ...


class ResumableBatchLoader(DataLoader):
    """A DataLoader over a :class:`ResumableBatchSampler` whose position goes into Lightning checkpoints.

    As :class:`ResumableDataLoader` for a batch sampler policy: the state is the epoch, the batches consumed in
    the current pass, the sampler's position (e.g. its stream generator's state) and the global RNG states; a
    resumed run skips the consumed batches' keys (without loading them) and continues with the same batches.
    """

    _batches: int  # set by ``_start_pass``, advanced by CountingIterator

    def __iter__(self) -> CountingIterator:  # type: ignore[override]
        return CountingIterator(self)

    def _start_pass(self) -> Iterator:
        sampler = self.batch_sampler
        pending = self.__dict__.pop("_pending", None)
        if pending is not None and isinstance(sampler, ResumableBatchSampler):
            done = pending["batches"] >= len(self)
            # Lightning may have moved on to the next epoch (set_epoch); else the pass count gives the epoch.
            epoch_set = getattr(sampler, "_epoch_set", None)
            same_epoch = epoch_set is None or pending["epoch"] == epoch_set
            sampler.restore(pending["sampler"], pending["batches"], finished=done or not same_epoch)
            self._batches = 0 if done or not same_epoch else pending["batches"]
        else:
            self._batches = 0
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """Position (``epoch``, ``batches`` consumed in the pass, the sampler's) and the global RNG states."""
        if "_pending" in self.__dict__:
            position = {k: self._pending[k] for k in ("epoch", "batches", "sampler")}
        else:
            sampler = self.batch_sampler
            where = sampler.position() if isinstance(sampler, ResumableBatchSampler) else {"epoch": 0}
            position = {
                "epoch": where["epoch"],
                "batches": self.__dict__.get("_batches", 0),
                "sampler": where,
            }
        return {**position, "rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict`` at the next pass; restores the global RNG states now."""
        self._pending = {
            "epoch": int(state_dict["epoch"]),
            "batches": int(state_dict["batches"]),
            "sampler": state_dict.get("sampler", {}),
        }
        if "rng" in state_dict:
            _set_rng_state(state_dict["rng"])


def load_pending_loader_states(trainer: pl.Trainer) -> bool:
    """Give the training loaders the positions and RNG states of the checkpoint being resumed, if still pending.

    Lightning restores a loader's ``load_state_dict`` only while it builds the training loaders after the
    checkpoint was read. A model whose ``configure_optimizers`` asks for ``trainer.estimated_stepping_batches``
    (every handssl task with the cosine schedule and a ``max_epochs``) makes Lightning build them earlier,
    before the checkpoint is read, and the states are then dropped silently (Lightning issue #20550): the
    resumed run starts the epoch over with the RNG of a fresh process. Called at ``on_train_start`` (after
    both, before the first batch is drawn; handssl's resumable loaders start their pass at the first batch).

    Args:
        trainer: The trainer that is about to train.

    Returns:
        Whether states were pending (and are now loaded).
    """
    fit_loop = trainer.fit_loop
    # Private Lightning state (2.2-2.6): the list ``_FitLoop.on_load_checkpoint`` stores and
    # ``_load_combined_loader_states`` consumes (and empties), so this is a no-op where Lightning already did it.
    if not getattr(fit_loop, "_combined_loader_states_to_load", None):
        return False
    fit_loop._load_combined_loader_states()
    return not fit_loop._combined_loader_states_to_load


def _concat(datasets: Sequence[Dataset] | Dataset | None) -> Dataset | None:
    """One dataset of a split given as a dataset, a list of datasets (concatenated) or nothing."""
    if datasets is None:
        return None
    if isinstance(datasets, Dataset):
        return datasets
    datasets = list(datasets)
    if not datasets:
        return None
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


SPLIT_NAMES = ("train", "unlabeled", "val", "test", "predict")
"""The datasets a :class:`HandDataModule` holds (``predict`` defaults to ``test``)."""


class HandDataModule(pl.LightningDataModule):
    """The DataModule: a data config's datasets, the method's views, deterministic resumable loaders.

    A data config (``experiments/data/<name>.yaml``) gives the datasets, ``image_size`` and the loader settings;
    the method's config gives ``views`` (:class:`~handssl.data.views.SupervisedViews` when absent), which
    turn the samples into the method's batches. So one data config serves every method whose views fit its
    datasets: single-view labelled ``train`` for the supervised and source-only methods, ``train`` plus
    ``unlabeled`` for SemiHand, multi-view datasets for NVS. With no dataset given at all, the views' defaults
    are used (SynthHands).

    Training loaders are :class:`ResumableDataLoader` over a :class:`ResumableSampler`, or, where the views set
    a batch sampler policy, :class:`ResumableBatchLoader`: the order of epoch ``e`` depends only on ``(seed,
    e)``, the same permutation is split between DDP ranks, and a run resumed from a mid-epoch checkpoint
    continues with exactly the batches the uninterrupted run used. Every loader has its own generator, so
    iterating one never draws from torch's global generator (which would shift the dropout of the training
    steps that follow). Views with several training parts (SemiHand's labelled and unlabelled items) get
    Lightning's ``CombinedLoader`` in ``"max_size_cycle"`` mode, a dict of the parts' batches.

    Args:
        train: Training dataset (labelled), or a list of them (concatenated).
        val: Validation dataset(s) (validation is skipped when absent).
        test: Test dataset(s).
        predict: Prediction dataset(s) (defaults to ``test``).
        unlabeled: Unlabelled training dataset(s) (for views that use them, e.g. SemiHand's; their
            annotations are never used as labels).
        views: How the method turns samples into batches (default :class:`~handssl.data.views.SupervisedViews`).
        image_size: Side of the network input in pixels.
        batch_size: Items per training batch (per process under DDP).
        num_workers: DataLoader worker processes (0 loads in the main process).
        pin_memory: Pin host memory (helps GPU training).
        seed: Seed of the shuffling order (and of the views' seeded draws: labelled subsets, perturbations).
        render_on: Where SynthHands training sets are rendered: ``"workers"`` (in the DataLoader, cached; the
            default) or ``"device"`` (the loader yields render requests and the whole batch, or each SynthHands
            part of a combined batch, is ray-cast on the training device in ``on_after_batch_transfer``,
            uncached; the same pixels).
    """

    #: Arguments of the earlier DataModules that are the method's views' now: a config naming one on
    #: ``HandDataModule`` is told the new place in one line (``handssl._lightning_cli.moved_argument``).
    moved_arguments: ClassVar[dict[str, str]] = {
        "labeled": "train: [...]  (the labelled datasets)",
        **{
            name: f"views: {{class_path: handssl.data.SemiHandViews, init_args: {{{name}: ...}}}}"
            for name in (
                "unlabeled_fraction",
                "eval_batch_size",
                "num_perturbations",
                "augment_labeled",
                "perturbation",
                "diversity",
                "augment_on",
            )
        },
        **{
            name: f"views: {{class_path: handssl.data.NVSPairs, init_args: {{{name}: ...}}}}"
            for name in (
                "label_fraction",
                "num_labeled",
                "labeled_subjects",
                "labeled_share",
                "statistics_items",
                "style",
            )
        },
        "crop_margin": "views: {init_args: {crop_margin: ...}}  (SupervisedViews, SemiHandViews)",
    }

    def __init__(
        self,
        train: Dataset | list[Dataset] | None = None,
        val: Dataset | list[Dataset] | None = None,
        test: Dataset | list[Dataset] | None = None,
        predict: Dataset | list[Dataset] | None = None,
        unlabeled: Dataset | list[Dataset] | None = None,
        views: Views | None = None,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        render_on: Literal["workers", "device"] = "workers",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if render_on not in RENDER_ON:
            raise ValueError(f"render_on must be one of {RENDER_ON}, got {render_on!r}")
        if views is None:
            from handssl.data.views.supervised import SupervisedViews

            views = SupervisedViews()
        self.views = views
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.render_on = render_on
        given = (train, unlabeled, val, test, predict)
        if all(d is None for d in given):
            defaults = views.default_datasets(image_size, seed)
            given = tuple(defaults.get(name) for name in SPLIT_NAMES)  # type: ignore[assignment]
        datasets = dict(zip(SPLIT_NAMES, (_concat(d) for d in given)))
        if datasets["predict"] is None:
            datasets["predict"] = datasets["test"]
        self.datasets: dict[str, Dataset | None] = views.adapt(datasets, image_size)
        # DeferredRendering of the training set (key "") or of a combined batch's parts, with render_on="device"
        self._deferred: dict[str, Any] = {}
        views.check(self)

    def split(self, name: str) -> Dataset:
        """The dataset of split ``name``; a missing one is a one-line error naming the config key."""
        dataset = self.datasets[name]
        if dataset is None:
            raise ValueError(
                f"no {name} dataset configured: set data.init_args.{name} in the config "
                f"(e.g. class_path: {self.views.example_dataset}, init_args: {{split: {name}}})"
            )
        return dataset

    def _deferred_training_set(
        self, dataset: Dataset, render_on: str, part: str = "", required: bool = True
    ) -> Dataset:
        """``dataset`` itself, or its render requests (rendered in :meth:`on_after_batch_transfer`).

        Args:
            dataset: The training set the DataLoader would use.
            render_on: ``"workers"`` (return ``dataset``) or ``"device"``.
            part: Key of this loader's batch in a combined batch (``""``: the batch is this loader's own).
            required: Raise when ``dataset`` holds no SynthHands; otherwise such a part stays in the workers.
        """
        from handssl.data.synthhands.deferred import DeferredRendering, find_synthhands

        self._deferred.pop(part, None)
        if render_on == "workers" or (not required and find_synthhands(dataset) is None):
            return dataset
        self._deferred[part] = DeferredRendering(dataset, collate_samples)
        return self._deferred[part]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Render SynthHands render requests on the batch's device, then let the views change the batch.

        ``render_on="device"`` renders here; the views then may change the batch (e.g. SemiHand's batched
        augmentation of training batches). A combined batch (a dict of the parts' batches) has each deferred part rendered in place.
        """
        batch = self._render_deferred(batch)
        trainer = getattr(self, "trainer", None)  # None outside a Trainer
        return self.views.on_after_batch_transfer(self, batch, trainer is None or bool(trainer.training))

    def _render_deferred(self, batch: Any) -> Any:
        from handssl.data.synthhands.deferred import RENDER_REQUEST

        if not self._deferred or not isinstance(batch, dict):
            return batch
        if RENDER_REQUEST in batch and "" in self._deferred:
            return self._deferred[""].render(batch)
        rendered = dict(batch)
        for part, deferred in self._deferred.items():
            inner = batch.get(part)
            if isinstance(inner, dict) and RENDER_REQUEST in inner:
                rendered[part] = deferred.render(inner)
        return rendered

    def make_dataloader(
        self,
        dataset: Dataset,
        shuffle: bool,
        sampler: Sampler | None = None,
        batch_size: int | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        """A loader of this DataModule's settings; shuffled ones are resumable (:class:`ResumableDataLoader`).

        Args:
            dataset: Items (already viewed).
            shuffle: Shuffle (a seeded :class:`ResumableSampler`, unless ``sampler`` is given).
            sampler: Explicit sampler (e.g. a DDP shard of the pseudo-label pass).
            batch_size: Items per batch (default: ``batch_size``).
            drop_last: Drop the last incomplete batch.
        """
        generator = torch.Generator().manual_seed(self.seed)
        loader_class = DataLoader
        if shuffle and sampler is None:
            sampler = ResumableSampler(dataset, shuffle=True, seed=self.seed)  # type: ignore[arg-type]
            loader_class = ResumableDataLoader
        return loader_class(
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

    _dataloader = make_dataloader  # the name of earlier versions

    def _train_loader(self, dataset: Dataset, part: TrainPart) -> DataLoader:
        if part.batch_sampler is None:
            return self.make_dataloader(dataset, True, batch_size=part.batch_size, drop_last=True)
        stream = RandomSampler(part.dataset, generator=torch.Generator().manual_seed(self.seed))  # type: ignore[arg-type]
        return ResumableBatchLoader(
            dataset,
            batch_sampler=part.batch_sampler(stream),
            generator=torch.Generator().manual_seed(self.seed),  # iterating must not draw from the global one
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_samples,
        )

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        """The views' training parts as resumable loaders (a ``CombinedLoader`` of them for combined views)."""
        combined = self.views.combined
        loaders: dict[str, DataLoader] = {}
        for name, part in self.views.train_parts(self).items():
            dataset = self._deferred_training_set(
                part.dataset, self.render_on, name if combined else "", required=not combined
            )
            loaders[name] = self._train_loader(dataset, part)
        if not combined:
            (loader,) = loaders.values()
            return loader
        if self.render_on == "device" and not self._deferred:
            raise ValueError(
                "render_on='device' renders SynthHands in the training step, but no training set holds "
                "SynthHands; use render_on='workers'"
            )
        from pytorch_lightning.utilities.combined_loader import CombinedLoader

        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_dataloader(self, name: str, required: bool) -> DataLoader | list:
        dataset = self.datasets[name]
        if dataset is None and not required:
            return []
        view = self.views.eval_view(self, self.split(name))
        return self.make_dataloader(view, False, batch_size=self.views.eval_batch_size(self))

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_dataloader("val", required=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_dataloader("test", required=True)

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_dataloader("predict", required=True)

    @property
    def num_unlabeled(self) -> int:
        """Number of unlabelled items (0 when none is configured)."""
        unlabeled = self.datasets["unlabeled"]
        if unlabeled is None:
            return 0
        if not isinstance(unlabeled, Sized):
            raise TypeError(f"the unlabeled dataset ({type(unlabeled).__name__}) must define __len__")
        return len(unlabeled)

    def pseudo_label_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """The views' deterministic pass over the unlabelled items (SemiHand's stored / exported pseudo-labels).

        Args:
            rank: This process's rank; with ``world_size > 1`` it reads its own shard.
            world_size: Number of processes.
        """
        make = getattr(self.views, "pseudo_label_dataloader", None)
        if make is None:
            raise ValueError(
                f"pseudo-labels need views with an unlabelled pass (handssl.data.SemiHandViews), "
                f"not {type(self.views).__name__}"
            )
        return make(self, rank, world_size)


class SupervisedDataModule(HandDataModule):
    """:class:`HandDataModule` with :class:`~handssl.data.views.SupervisedViews`: the earlier single-view form.

    Kept for configs written before (``data.class_path: handssl.data.SupervisedDataModule``); new configs name
    ``handssl.data.HandDataModule`` (whose default views are these).

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
        render_on: Where a SynthHands training set is rendered (see :class:`HandDataModule`).
    """

    moved_arguments: ClassVar[dict[str, str]] = {}  # it takes its own arguments

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
        render_on: Literal["workers", "device"] = "workers",
    ) -> None:
        from handssl.data.views.supervised import SupervisedViews

        super().__init__(
            train=train,
            val=val,
            test=test,
            predict=predict,
            views=SupervisedViews(crop_margin),
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
            render_on=render_on,
        )
