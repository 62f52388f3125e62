"""View records and the caches behind the SynthHands datasets, and the base class that indexes the world.

Rendered views are kept in memory (``cache_mb``: one slot per view in anonymous shared memory that forked
DataLoader workers share when the whole dataset fits, else a per-process LRU) and, optionally, on disk
(``cache_dir``). For speed, the datasets render many views at once: a DataLoader with automatic batching
calls :meth:`SynthHandsBase.__getitems__` with a whole batch; single ``dataset[i]`` accesses render the
block of ``chunk_size`` neighbouring items.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from handssl.data.base import HandDataset, Sample, Transform, mirror_sample
from handssl.data.synthhands._common import Crop, Style
from handssl.data.synthhands.world import LABEL_HAND, LABEL_SLEEVE, SynthHandsWorld, check_int
from handssl.skeleton import NUM_JOINTS

__all__ = ["EXTRA_KEYS", "SPLITS", "SynthHandsBase", "ViewKey"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Dataset splits; their subjects are disjoint."""

DEFAULT_NUM_SUBJECTS: dict[str, int] = {"train": 32, "val": 8, "test": 8}
"""Subjects per split when ``num_subjects`` is ``None``."""

SPLIT_SUBJECT_OFFSET: dict[str, int] = {"train": 0, "val": 100_000, "test": 200_000}
"""Global index of a split's first subject (``make_subject(seed, offset + i)``): disjoint by construction."""

SUBJECTS_PER_SPLIT = 100_000
"""Room for subjects in each split: ``first_subject + num_subjects`` stays below the next split's offset."""

EXTRA_KEYS: tuple[str, ...] = ("mask", "hand_mask", "depth", "background")
"""Optional per-view sample keys (see ``extra_keys``)."""


_GEOMETRY: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("K", (3, 3)),
    ("R", (3, 3)),
    ("t", (3,)),
    ("joints3d", (NUM_JOINTS, 3)),
    ("joints2d", (NUM_JOINTS, 2)),
    ("joints3d_world", (NUM_JOINTS, 3)),
)
_GEOMETRY_SIZE = sum(math.prod(shape) for _, shape in _GEOMETRY)
ViewKey = tuple[int, int, int, int]
"""``(subject, sequence, frame, camera)`` of one rendered view."""


def _record_fields(s: int) -> tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]:
    """What is kept of a rendered view: pixels as rendered (uint8 / float32) and its geometry."""
    return (
        ("image", torch.uint8, (3, s, s)),
        ("background", torch.uint8, (3, s, s)),
        ("label", torch.uint8, (s, s)),
        ("depth", torch.float32, (s, s)),
        ("geometry", torch.float32, (_GEOMETRY_SIZE,)),
    )


def _record_bytes(s: int) -> int:
    return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in _record_fields(s))


def _view_columns(
    keys: Sequence[ViewKey],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(subjects, sequences, frames, cameras)`` of view keys: the columns :meth:`SynthHandsWorld.render` takes."""
    subjects, sequences, frames, cameras = (tuple(key[column] for key in keys) for column in range(4))
    return subjects, sequences, frames, cameras


def _split_records(rendered: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """Per-view records (fresh tensors) from a :meth:`SynthHandsWorld.render` batch."""
    n = rendered["image"].shape[0]
    geometry = torch.cat([rendered[name].reshape(n, -1) for name, _ in _GEOMETRY], 1)
    return [
        {
            "image": rendered["image"][i].clone(),
            "background": rendered["background"][i].clone(),
            "label": rendered["label"][i].clone(),
            "depth": rendered["depth"][i].clone(),
            "geometry": geometry[i].clone(),
        }
        for i in range(n)
    ]


class _SharedStore:
    """One slot per view of a dataset in anonymous shared memory, so forked DataLoader workers share it.

    Pages are only committed when a slot is written. A slot is written data first, then its flag, and
    every writer of a slot writes the same bytes (rendering is deterministic), so readers never see a
    torn record. Not picklable by design: a dataset sent to a spawned process falls back to an LRU.
    """

    def __init__(self, num_slots: int, s: int) -> None:
        layout, offset = [], 0
        for name, dtype, shape in (("filled", torch.uint8, ()), *_record_fields(s)):
            offset = -(-offset // 64) * 64
            layout.append((name, dtype, shape, offset))
            offset += num_slots * math.prod(shape) * dtype.itemsize
        self._buffer = mmap.mmap(-1, max(offset, 1))
        self.fields = {
            name: torch.frombuffer(
                self._buffer, dtype=dtype, count=num_slots * math.prod(shape), offset=start
            ).view(num_slots, *shape)
            for name, dtype, shape, start in layout
        }

    def get(self, slot: int) -> dict[str, Tensor] | None:
        if not self.fields["filled"][slot]:
            return None
        return {name: field[slot] for name, field in self.fields.items() if name != "filled"}

    def put(self, slot: int, record: dict[str, Tensor]) -> None:
        for name, value in record.items():
            self.fields[name][slot].copy_(value)
        self.fields["filled"][slot] = 1


class _LRUStore:
    """A per-process least-recently-used cache of view records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[int, dict[str, Tensor]] = OrderedDict()

    def get(self, slot: int) -> dict[str, Tensor] | None:
        record = self._items.get(slot)
        if record is not None:
            self._items.move_to_end(slot)
        return record

    def put(self, slot: int, record: dict[str, Tensor]) -> None:
        if self.capacity <= 0:
            return
        self._items[slot] = record
        self._items.move_to_end(slot)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class SynthHandsBase(HandDataset):
    """Shared machinery: arguments, the world, index maps, the caches and batched rendering."""

    name = "synthhands"

    def __init__(
        self,
        *,
        split: str,
        style: Style,
        image_size: int,
        num_cameras: int,
        seed: int,
        num_subjects: int | None,
        first_subject: int,
        sequences_per_subject: int,
        frames_per_sequence: int,
        crop: Crop,
        crop_margin: float,
        crop_extent_mm: float,
        rig_radius_mm: float,
        chunk_size: int,
        cache_mb: float,
        cache_dir: str | Path | None,
        device: str,
        extra_keys: Sequence[str] | None,
        transform: Transform | None,
        mirror_left: bool,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
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
        self.style = style
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
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache_mb = float(cache_mb)
        self.world = SynthHandsWorld(
            style=style,
            image_size=image_size,
            num_cameras=num_cameras,
            seed=seed,
            frames_per_sequence=frames_per_sequence,
            crop=crop,
            crop_margin=crop_margin,
            crop_extent_mm=crop_extent_mm,
            rig_radius_mm=rig_radius_mm,
            device=device,
        )
        self.image_size = self.world.image_size
        self.num_cameras = self.world.num_cameras
        self.frames_per_sequence = self.world.frames_per_sequence
        self.seed = self.world.seed
        self.world.share_sequences([(a, q) for a in self.subjects for q in range(self.sequences_per_subject)])
        self._store: _SharedStore | _LRUStore | None = None  # subclasses call _make_store() when set up
        self.render_device: torch.device | None = None  # set by handssl.data.synthhands.deferred only
        self.cache_dir: Path | None = None
        if cache_dir is not None:
            digest = hashlib.sha1(json.dumps(self.world.config(), sort_keys=True).encode()).hexdigest()[:16]
            self.cache_dir = Path(cache_dir) / digest
            self.cache_dir.mkdir(parents=True, exist_ok=True)

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

    def _make_store(self) -> _SharedStore | _LRUStore:
        """A shared store when every used view fits in ``cache_mb`` (made before any worker forks), else an LRU."""
        record = _record_bytes(self.image_size)
        budget = int(self.cache_mb * 2**20)
        slots = self.num_frames * self.num_cameras
        if 0 < self._views_used() * record <= budget and slots * record <= 16 * max(budget, 2**30):
            return _SharedStore(slots, self.image_size)
        return _LRUStore(budget // record)

    @property
    def store(self) -> _SharedStore | _LRUStore:
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
            if record is None and self.cache_dir is not None:
                record = self._load_record(key)
                if record is not None:
                    store.put(slot, record)
            if record is None:
                missing.append(key)
            else:
                found[key] = record
        if missing:
            for key, record in zip(missing, _split_records(self.world.render(*_view_columns(missing)))):
                found[key] = record
                store.put(self._slot(key), record)
                if self.cache_dir is not None:
                    self._save_record(key, record)
        return [found[key] for key in keys]

    def _record_path(self, key: ViewKey) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / "s{}_q{}_f{}_c{}.npz".format(*key)

    def _load_record(self, key: ViewKey) -> dict[str, Tensor] | None:
        path = self._record_path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                record = {
                    name: torch.from_numpy(data[name].copy())
                    for name, _, _ in _record_fields(self.image_size)
                }
        except (OSError, ValueError, KeyError):  # partial or foreign file: render again
            return None
        shapes_ok = all(record[name].shape == shape for name, _, shape in _record_fields(self.image_size))
        return record if shapes_ok else None

    def _save_record(self, key: ViewKey, record: dict[str, Tensor]) -> None:
        path = self._record_path(key)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        arrays = {name: value.numpy() for name, value in record.items()}
        # allow_pickle is numpy's default, spelled out so that no ``**arrays`` entry can be taken for it.
        np.savez(tmp, allow_pickle=True, **arrays)
        os.replace(tmp, path)

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
        if missing and self.chunk_size > 1 and (isinstance(store, _SharedStore) or sequential):
            # Render the whole block of neighbouring items now (kept for later): one batched render
            # instead of chunk_size small ones.
            start = index - index % self.chunk_size
            stop = min(start + self.chunk_size, len(self))
            self._records([k for i in range(start, stop) for k in self.view_keys(i, epoch)])
        return self._assemble([(index, epoch)], self._records(keys))[0]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[Sample]:
        """Batched fetch (what a DataLoader with automatic batching calls): renders all misses at once.

        Keys are indices or ``(index, epoch)`` pairs (see :meth:`__getitem__`).
        """
        items = [self._parse_key(key) for key in keys]
        view_keys = [k for index, epoch in items for k in self.view_keys(index, epoch)]
        if self.render_device is not None:  # in the training step, on its device (see .deferred)
            views = self._render_views(view_keys, self.render_device)
            return [self._finish(sample) for sample in self._assemble_views(items, views)]
        records = self._records(view_keys)
        return [self._finish(sample) for sample in self._assemble(items, records)]

    def _render_views(self, keys: Sequence[ViewKey], device: torch.device) -> dict[str, Tensor]:
        """Sample tensors of ``keys`` rendered together on ``device``, uncached (as :meth:`_stack_views`)."""
        rendered = self.world.render(*_view_columns(keys), device=device)
        n = len(keys)
        geometry = torch.cat([rendered[name].reshape(n, -1) for name, _ in _GEOMETRY], 1).to(device)
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
        for name, shape in _GEOMETRY:
            size = math.prod(shape)
            out[name] = geometry[:, start : start + size].reshape(n, *shape)
            start += size
        return out
