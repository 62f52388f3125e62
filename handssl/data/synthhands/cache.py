"""The caches of rendered SynthHands views: what is kept of a view (a record), in memory and on disk.

Rendered views are kept in memory (``cache_mb``: one slot per view in anonymous shared memory that forked
DataLoader workers share when the whole dataset fits, else a per-process LRU) and, optionally, on disk
(``cache_dir``: one ``.npz`` per view). :class:`~handssl.data.synthhands.dataset.SynthHandsBase` decides
what to fetch and renders the misses.
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

import numpy as np
import torch
from torch import Tensor

from handssl.data.synthhands.world import SynthHandsWorld
from handssl.skeleton import NUM_JOINTS

__all__ = [
    "GEOMETRY",
    "DiskStore",
    "LRUStore",
    "SharedStore",
    "ViewKey",
    "make_store",
    "record_fields",
    "split_records",
    "view_columns",
]

GEOMETRY: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("K", (3, 3)),
    ("R", (3, 3)),
    ("t", (3,)),
    ("joints3d", (NUM_JOINTS, 3)),
    ("joints2d", (NUM_JOINTS, 2)),
    ("joints3d_world", (NUM_JOINTS, 3)),
)
"""The geometry of a view (names and shapes of its float32 tensors), packed into one record field."""
GEOMETRY_SIZE = sum(math.prod(shape) for _, shape in GEOMETRY)
ViewKey = tuple[int, int, int, int]
"""``(subject, sequence, frame, camera)`` of one rendered view."""


def record_fields(s: int) -> tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]:
    """What is kept of a rendered view: pixels as rendered (uint8 / float32) and its geometry."""
    return (
        ("image", torch.uint8, (3, s, s)),
        ("background", torch.uint8, (3, s, s)),
        ("label", torch.uint8, (s, s)),
        ("depth", torch.float32, (s, s)),
        ("geometry", torch.float32, (GEOMETRY_SIZE,)),
    )


def record_bytes(s: int) -> int:
    return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in record_fields(s))


def view_columns(
    keys: Sequence[ViewKey],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(subjects, sequences, frames, cameras)`` of view keys: the columns :meth:`SynthHandsWorld.render` takes."""
    subjects, sequences, frames, cameras = (tuple(key[column] for key in keys) for column in range(4))
    return subjects, sequences, frames, cameras


def split_records(rendered: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """Per-view records (fresh tensors) from a :meth:`SynthHandsWorld.render` batch."""
    n = rendered["image"].shape[0]
    geometry = torch.cat([rendered[name].reshape(n, -1) for name, _ in GEOMETRY], 1)
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


class SharedStore:
    """One slot per view of a dataset in anonymous shared memory, so forked DataLoader workers share it.

    Pages are only committed when a slot is written. A slot is written data first, then its flag, and
    every writer of a slot writes the same bytes (rendering is deterministic), so readers never see a
    torn record. Not picklable by design: a dataset sent to a spawned process falls back to an LRU.
    """

    def __init__(self, num_slots: int, s: int) -> None:
        layout, offset = [], 0
        for name, dtype, shape in (("filled", torch.uint8, ()), *record_fields(s)):
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


class LRUStore:
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


def make_store(num_slots: int, views_used: int, image_size: int, cache_mb: float) -> SharedStore | LRUStore:
    """A shared store when every used view fits in ``cache_mb`` (made before any worker forks), else an LRU.

    Args:
        num_slots: Views a dataset could address (its frames times the rig's cameras).
        views_used: Distinct views its items use.
        image_size: Side of a view in pixels.
        cache_mb: Memory budget in MiB (0 disables caching).
    """
    record = record_bytes(image_size)
    budget = int(cache_mb * 2**20)
    if 0 < views_used * record <= budget and num_slots * record <= 16 * max(budget, 2**30):
        return SharedStore(num_slots, image_size)
    return LRUStore(budget // record)


class DiskStore:
    """Records on disk, one ``.npz`` per view, in a sub-folder of ``root`` named by a hash of the world.

    The hash is over :meth:`SynthHandsWorld.config`, everything that determines the pixels, so worlds that
    render differently never share a file and datasets drawing from one world share them all.
    """

    def __init__(self, root: str | Path, world: SynthHandsWorld) -> None:
        digest = hashlib.sha1(json.dumps(world.config(), sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        self.image_size = world.image_size

    def path(self, key: ViewKey) -> Path:
        return self.folder / "s{}_q{}_f{}_c{}.npz".format(*key)

    def get(self, key: ViewKey) -> dict[str, Tensor] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        fields = record_fields(self.image_size)
        try:
            with np.load(path) as data:
                record = {name: torch.from_numpy(data[name].copy()) for name, _, _ in fields}
        except (OSError, ValueError, KeyError):  # partial or foreign file: render again
            return None
        return record if all(record[name].shape == shape for name, _, shape in fields) else None

    def put(self, key: ViewKey, record: dict[str, Tensor]) -> None:
        path = self.path(key)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        arrays = {name: value.numpy() for name, value in record.items()}
        # allow_pickle is numpy's default, spelled out so that no ``**arrays`` entry can be taken for it.
        np.savez(tmp, allow_pickle=True, **arrays)
        os.replace(tmp, path)
