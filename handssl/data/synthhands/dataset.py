"""The base class of the SynthHands datasets: which views of a world the items are, and how they are fetched.

A dataset takes a :class:`~handssl.data.synthhands.world.SynthHandsWorld` (everything that determines the
pixels) and its own arguments (split, subjects, sequences, frames; the subclasses add cameras and views).
For speed, the datasets render many views at once: a DataLoader with automatic batching calls
:meth:`SynthHandsBase.__getitems__` with a whole batch; single ``dataset[i]`` accesses render the block of
``chunk_size`` neighbouring items. Rendered views are cached (:mod:`handssl.data.synthhands.cache`), except
inside :meth:`SynthHandsBase.rendering_on`, which renders uncached on a given device (``render_on="device"``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from handssl.data.base import HandDataset, Sample, Transform, mirror_sample
from handssl.data.synthhands.cache import (
    GEOMETRY,
    DiskStore,
    LRUStore,
    SharedStore,
    ViewKey,
    make_store,
    split_records,
    view_columns,
)
from handssl.data.synthhands.world import LABEL_HAND, LABEL_SLEEVE, Style, SynthHandsWorld, check_int
from handssl.skeleton import NUM_JOINTS

__all__ = ["EXTRA_KEYS", "SPLITS", "WORLD_ARGUMENTS", "Split", "SynthHandsBase", "ViewKey"]

Split = Literal["train", "val", "test"]
"""A SynthHands split; their subjects are disjoint."""

SPLITS: tuple[Split, ...] = ("train", "val", "test")
"""Dataset splits; their subjects are disjoint."""

DEFAULT_NUM_SUBJECTS: dict[str, int] = {"train": 32, "val": 8, "test": 8}
"""Subjects per split when ``num_subjects`` is ``None``."""

SPLIT_SUBJECT_OFFSET: dict[str, int] = {"train": 0, "val": 100_000, "test": 200_000}
"""Global index of a split's first subject (``make_subject(seed, offset + i)``): disjoint by construction."""

SUBJECTS_PER_SPLIT = 100_000
"""Room for subjects in each split: ``first_subject + num_subjects`` stays below the next split's offset."""

EXTRA_KEYS: tuple[str, ...] = ("mask", "hand_mask", "depth", "background")
"""Optional per-view sample keys (see ``extra_keys``)."""

WORLD_ARGUMENTS: tuple[str, ...] = (
    "style",
    "image_size",
    "num_cameras",
    "seed",
    "crop",
    "crop_margin",
    "crop_extent_mm",
    "rig_radius_mm",
    "device",
)
"""Arguments the datasets took before they took a ``world``: now :class:`SynthHandsWorld`'s (see ``moved_arguments``)."""


class SynthHandsBase(HandDataset):
    """Shared machinery: the world, index maps, the caches and batched rendering.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        world: The world the views are drawn from; ``None``: ``SynthHandsWorld()`` (its defaults).
        num_subjects: Subjects in this split; ``None`` uses 32 / 8 / 8 for train / val / test.
        first_subject: The split's first subject used.
        sequences_per_subject: Sequences per subject.
        frames_per_sequence: Frames per sequence (frames ``0 .. frames_per_sequence - 1`` of each).
        chunk_size: Items rendered together when a single ``dataset[i]`` misses the cache.
        cache_mb: Memory budget in MiB of the rendered-view cache (0 disables caching).
        cache_dir: Optional folder for a disk cache of rendered views.
        extra_keys: Which optional keys to return (``None``: all of :data:`EXTRA_KEYS`).
        transform: Applied to every sample.
        mirror_left: Mirror left hands into right hands (SynthHands hands are all right hands).
    """

    name = "synthhands"

    moved_arguments: ClassVar[Mapping[str, str]] = {
        name: f"world: {{class_path: handssl.data.SynthHandsWorld, init_args: {{{name}: ...}}}}"
        for name in WORLD_ARGUMENTS
    }
    """Where each argument these datasets no longer take went (read by the CLI to name it in its error)."""

    def __init__(
        self,
        *,
        split: Split,
        world: SynthHandsWorld | None,
        num_subjects: int | None,
        first_subject: int,
        sequences_per_subject: int,
        frames_per_sequence: int,
        chunk_size: int,
        cache_mb: float,
        cache_dir: str | Path | None,
        extra_keys: Sequence[str] | None,
        transform: Transform | None,
        mirror_left: bool,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
        if world is None:
            world = SynthHandsWorld()
        if not isinstance(world, SynthHandsWorld):
            raise TypeError(
                f"{type(self).__name__}: world must be a SynthHandsWorld (or None), got {world!r}; the "
                f"world's arguments ({', '.join(WORLD_ARGUMENTS)}) go to SynthHandsWorld, "
                f"e.g. {type(self).__name__}(split, world=SynthHandsWorld(style='real'))"
            )
        self.world = world
        if extra_keys is None:
            extra_keys = EXTRA_KEYS
        if isinstance(extra_keys, str) or not set(extra_keys) <= set(EXTRA_KEYS):
            raise ValueError(
                f"extra_keys must be a list drawn from {EXTRA_KEYS} (or None for all), got {extra_keys!r}"
            )
        self.extra_keys = tuple(k for k in EXTRA_KEYS if k in extra_keys)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.num_subjects = check_int(
            "num_subjects", DEFAULT_NUM_SUBJECTS[split] if num_subjects is None else num_subjects, 1
        )
        self.first_subject = check_int("first_subject", first_subject, 0)
        if self.first_subject + self.num_subjects > SUBJECTS_PER_SPLIT:
            raise ValueError(
                f"first_subject + num_subjects must be at most {SUBJECTS_PER_SPLIT}, got "
                f"{self.first_subject} + {self.num_subjects}"
            )
        self.sequences_per_subject = check_int("sequences_per_subject", sequences_per_subject, 1)
        self.frames_per_sequence = check_int("frames_per_sequence", frames_per_sequence, 1)
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache_mb = float(cache_mb)
        self.world.share_sequences(
            [(a, q) for a in self.subjects for q in range(self.sequences_per_subject)],
            self.frames_per_sequence,
        )
        self._store: SharedStore | LRUStore | None = None  # subclasses call _make_store() when set up
        self._render_device: torch.device | None = None  # set inside rendering_on() only
        self._cache_dir_given = cache_dir  # what a sibling of this dataset is given (multi_view)
        self._disk = None if cache_dir is None else DiskStore(cache_dir, self.world)

    @property
    def style(self) -> Style:
        """The world's appearance style."""
        return self.world.style

    @property
    def image_size(self) -> int:
        """The world's crop side in pixels."""
        return self.world.image_size

    @property
    def num_cameras(self) -> int:
        """Cameras in the world's rig."""
        return self.world.num_cameras

    @property
    def cache_dir(self) -> Path | None:
        """The folder of this world's disk cache (under the ``cache_dir`` given), if there is one."""
        return None if self._disk is None else self._disk.folder

    # ------------------------------------------------------------------ index maps

    @property
    def num_frames(self) -> int:
        """Frames in the split: subjects x sequences x frames per sequence."""
        return self.num_subjects * self.sequences_per_subject * self.frames_per_sequence

    @property
    def subjects(self) -> list[int]:
        """Global subject indices of this split (disjoint between splits)."""
        offset = SPLIT_SUBJECT_OFFSET[self.split] + self.first_subject
        return [offset + i for i in range(self.num_subjects)]

    def item_subjects(self) -> list[int]:
        """The (global) subject of every item, in item order (for labeled subsets by subject)."""
        return [self.view_keys(i)[0][0] for i in range(len(self))]

    def frame_key(self, frame_index: int) -> tuple[int, int, int]:
        """``(subject, sequence, frame)`` of the split's ``frame_index``-th frame (subject = global index)."""
        per_subject = self.sequences_per_subject * self.frames_per_sequence
        slot, rest = divmod(frame_index, per_subject)
        sequence, frame = divmod(rest, self.frames_per_sequence)
        return SPLIT_SUBJECT_OFFSET[self.split] + self.first_subject + slot, sequence, frame

    def view_keys(self, index: int, epoch: int = 0) -> list[ViewKey]:
        """The ``(subject, sequence, frame, camera)`` views item ``index`` is made of in ``epoch``."""
        raise NotImplementedError

    def _views_used(self) -> int:
        """How many distinct views the items use (sizes the shared cache)."""
        raise NotImplementedError

    def _slot(self, key: ViewKey) -> int:
        subject, sequence, frame, camera = key
        subject -= SPLIT_SUBJECT_OFFSET[self.split] + self.first_subject
        return ((subject * self.sequences_per_subject + sequence) * self.frames_per_sequence + frame) * (
            self.num_cameras
        ) + camera

    # ------------------------------------------------------------------ rendering and caches

    def _make_store(self) -> SharedStore | LRUStore:
        """The memory cache (:func:`~handssl.data.synthhands.cache.make_store`), made before any worker forks."""
        return make_store(
            self.num_frames * self.num_cameras, self._views_used(), self.image_size, self.cache_mb
        )

    @property
    def store(self) -> SharedStore | LRUStore:
        """The in-memory view cache: shared with forked workers when every used view fits in ``cache_mb``."""
        if self._store is None:  # e.g. after unpickling in a spawned worker
            self._store = self._make_store()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None  # shared memory does not travel to spawned processes; they cache their own
        return state

    def _records(self, keys: Sequence[ViewKey]) -> list[dict[str, Tensor]]:
        """Records of ``keys``: from the memory cache, the disk cache, or rendered together."""
        store = self.store
        found: dict[ViewKey, dict[str, Tensor]] = {}
        missing = []
        for key in dict.fromkeys(keys):
            slot = self._slot(key)
            record = store.get(slot)
            if record is None and self._disk is not None:
                record = self._disk.get(key)
                if record is not None:
                    store.put(slot, record)
            if record is None:
                missing.append(key)
            else:
                found[key] = record
        if missing:
            for key, record in zip(missing, split_records(self.world.render(*view_columns(missing)))):
                found[key] = record
                store.put(self._slot(key), record)
                if self._disk is not None:
                    self._disk.put(key, record)
        return [found[key] for key in keys]

    def _parse_key(self, key: int | tuple[int, int]) -> tuple[int, int]:
        """``(index, epoch)`` of an item key: an index (epoch 0) or an ``(index, epoch)`` pair."""
        index, epoch = (key, 0) if not isinstance(key, (tuple, list)) else key
        index, epoch = int(index), int(epoch)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        if epoch < 0:
            raise IndexError(f"{self.name}: epoch must be >= 0, got {epoch}")
        return index % len(self), epoch

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        """Item ``key``: an index, or ``(index, epoch)`` for datasets whose items vary by epoch."""
        return self._finish(self.load_sample(*self._parse_key(key)))

    def load_sample(self, index: int, epoch: int = 0) -> Sample:
        keys = self.view_keys(index, epoch)
        store = self.store
        sequential, self._last_index = index == getattr(self, "_last_index", -2) + 1, index
        missing = any(store.get(self._slot(key)) is None for key in keys)
        if missing and self.chunk_size > 1 and (isinstance(store, SharedStore) or sequential):
            # Render the whole block of neighbouring items now (kept for later): one batched render
            # instead of chunk_size small ones.
            start = index - index % self.chunk_size
            stop = min(start + self.chunk_size, len(self))
            self._records([k for i in range(start, stop) for k in self.view_keys(i, epoch)])
        return self._assemble([(index, epoch)], self._records(keys))[0]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[Sample]:
        """Batched fetch (what a DataLoader with automatic batching calls): renders all misses at once.

        Keys are indices or ``(index, epoch)`` pairs (see :meth:`__getitem__`). Inside
        :meth:`rendering_on`, every view is rendered on that device instead, uncached.
        """
        items = [self._parse_key(key) for key in keys]
        view_keys = [k for index, epoch in items for k in self.view_keys(index, epoch)]
        if self._render_device is not None:
            views = self._render_views(view_keys, self._render_device)
            return [self._finish(sample) for sample in self._assemble_views(items, views)]
        records = self._records(view_keys)
        return [self._finish(sample) for sample in self._assemble(items, records)]

    @contextlib.contextmanager
    def rendering_on(self, device: str | torch.device) -> Iterator[None]:
        """Within the block, batched fetches render every view on ``device``, uncached, and return it there.

        What ``render_on="device"`` uses (:mod:`handssl.data.synthhands.deferred`): the wrappers around the
        dataset (pairs, transforms) fetch through :meth:`__getitems__` as usual, and the pixels are ray-cast
        on the training device, equal to the cached path's.
        """
        previous, self._render_device = self._render_device, torch.device(device)
        try:
            yield
        finally:
            self._render_device = previous

    def _render_views(self, keys: Sequence[ViewKey], device: torch.device) -> dict[str, Tensor]:
        """Sample tensors of ``keys`` rendered together on ``device``, uncached (as :meth:`_stack_views`)."""
        rendered = self.world.render(*view_columns(keys), device=device)
        n = len(keys)
        geometry = torch.cat([rendered[name].reshape(n, -1) for name, _ in GEOMETRY], 1).to(device)
        fields = {name: rendered[name] for name in ("image", "background", "label", "depth")}
        return self._views_from_fields({**fields, "geometry": geometry})

    def _finish(self, sample: Sample) -> Sample:
        """What :meth:`HandDataset.__getitem__` does after ``load_sample`` (mirroring, transform)."""
        if self.mirror_left and sample.get("meta", {}).get("hand") == "left":
            sample = mirror_sample(sample)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def _assemble(self, items: list[tuple[int, int]], records: list[dict[str, Tensor]]) -> list[Sample]:
        return self._assemble_views(items, self._stack_views(records))

    def _assemble_views(self, items: list[tuple[int, int]], views: dict[str, Tensor]) -> list[Sample]:
        """The samples of ``items`` from the stacked tensors of their views (in ``view_keys`` order)."""
        raise NotImplementedError

    def _stack_views(self, records: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Sample tensors of many views at once (fresh tensors, never views of the cache), ``(N, ...)``."""
        return self._views_from_fields({name: torch.stack([r[name] for r in records]) for name in records[0]})

    def _views_from_fields(self, fields: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sample tensors ``(N, ...)`` from stacked record fields (``image``, ``label``, ... ``geometry``).

        The one conversion of the cached (worker) path and of the rendering on the training device, on
        whatever device the fields are.
        """
        geometry = fields["geometry"]
        n = geometry.shape[0]
        out = {
            "image": fields["image"].to(torch.float32) / 255.0,
            "valid": torch.ones(n, NUM_JOINTS, dtype=torch.bool, device=geometry.device),
        }
        if "mask" in self.extra_keys or "hand_mask" in self.extra_keys:
            label = fields["label"].unsqueeze(1)
            if "mask" in self.extra_keys:
                out["mask"] = ((label == LABEL_HAND) | (label == LABEL_SLEEVE)).to(torch.float32)
            if "hand_mask" in self.extra_keys:
                out["hand_mask"] = (label == LABEL_HAND).to(torch.float32)
        if "depth" in self.extra_keys:
            out["depth"] = fields["depth"].unsqueeze(1)
        if "background" in self.extra_keys:
            out["background"] = fields["background"].to(torch.float32) / 255.0
        start = 0
        for name, shape in GEOMETRY:
            size = math.prod(shape)
            out[name] = geometry[:, start : start + size].reshape(n, *shape)
            start += size
        return out
