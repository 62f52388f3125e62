"""SynthHands datasets: a procedural, calibrated, multi-view hand world that needs no download.

:class:`SynthHandsWorld` ties the pieces together (motion -> rig -> crop cameras -> capsules -> ray casting
-> appearance) and renders any batch of ``(subject, sequence, frame, camera)`` views at once.
:class:`SynthHands` (one view per item) and :class:`SynthHandsMultiView` (synchronised views of a frame
plus a second frame of the same sequence) index that world and return the sample dict of
:mod:`handssl.data.base`.

Every sample is a pure function of the dataset arguments and its index: the pixels of a view depend only
on ``(seed, style, image_size, subject, sequence, frame, camera)``, never on the batch it was rendered
in, the access order or the worker. For speed, the datasets render many views at once: a DataLoader with
automatic batching calls :meth:`~SynthHands.__getitems__` with a whole batch; single ``dataset[i]``
accesses render the block of ``chunk_size`` neighbouring items. Rendered views are kept in memory
(``cache_mb``: one slot per view in anonymous shared memory that forked DataLoader workers share when the
whole dataset fits, else a per-process LRU) and, optionally, on disk (``cache_dir``).
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
from handssl.data.synthhands.appearance import STYLES, Appearance, ViewBatch, hash_ints
from handssl.data.synthhands.render import PART_SLEEVE, PRIMITIVE_PART, HandShape, hand_shape, raycast
from handssl.data.synthhands.rig import Rig, make_rig
from handssl.geometry import project, world_to_camera
from handssl.skeleton import NUM_JOINTS

__all__ = ["SPLITS", "SynthHands", "SynthHandsMultiView", "SynthHandsWorld"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Dataset splits; their subjects are disjoint."""

DEFAULT_NUM_SUBJECTS: dict[str, int] = {"train": 32, "val": 8, "test": 8}
"""Subjects per split when ``num_subjects`` is ``None``."""

SPLIT_SUBJECT_OFFSET: dict[str, int] = {"train": 0, "val": 100_000, "test": 200_000}
"""Global index of a split's first subject (``make_subject(seed, offset + i)``): disjoint by construction."""

EXTRA_KEYS: tuple[str, ...] = ("mask", "hand_mask", "depth", "background")
"""Optional per-view sample keys (see ``extra_keys``)."""

RENDER_VERSION = "synthhands-1"
"""Bumped whenever the rendered pixels change; part of the disk cache key."""

_LABEL_BACKGROUND, _LABEL_HAND, _LABEL_SLEEVE = 0, 1, 2


def _motion() -> Any:
    from handssl.data.synthhands import motion

    return motion


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class SynthHandsWorld:
    """The procedural world: subjects and their motion, a camera rig, and a renderer of one style.

    Args:
        style: Appearance domain, ``"synthetic"`` or ``"real"``.
        image_size: Side of the square crops in pixels (at least 16).
        num_cameras: Cameras in the rig.
        seed: World seed (subjects, motion, rig, textures, lights, noise).
        frames_per_sequence: Frames of every sequence (motion is computed per whole sequence).
        crop_extent_mm: Side of the square, at the hand centre's depth, that every crop covers (mm).
        rig_radius_mm: Distance of the cameras from the origin (mm).
        fov_deg: Field of view of the rig cameras' full images (degrees).
        device: Where the ray casting and shading run (``"cpu"`` or ``"cuda"``).
    """

    def __init__(
        self,
        style: str = "synthetic",
        image_size: int = 64,
        num_cameras: int = 8,
        seed: int = 0,
        frames_per_sequence: int = 64,
        crop_extent_mm: float = 240.0,
        rig_radius_mm: float = 600.0,
        fov_deg: float = 60.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.image_size = _check_int("image_size", image_size, 16)
        if self.image_size > 2048:
            raise ValueError(f"image_size must be <= 2048, got {image_size}")
        self.num_cameras = _check_int("num_cameras", num_cameras, 1)
        self.seed = _check_int("seed", seed, 0)
        self.frames_per_sequence = _check_int("frames_per_sequence", frames_per_sequence, 1)
        if not 50.0 <= crop_extent_mm <= 1000.0:
            raise ValueError(f"crop_extent_mm must be in [50, 1000] mm, got {crop_extent_mm}")
        self.style = style
        self.crop_extent_mm = float(crop_extent_mm)
        self.device = torch.device(device)
        self.rig: Rig = make_rig(num_cameras, radius_mm=rig_radius_mm, fov_deg=fov_deg, seed=self.seed)
        # Background textures: cover every crop ray (hand centre within ~80 mm of the origin, camera
        # jitter, crop half-diagonal) at about one texel per crop pixel.
        distance = float(self.rig.centers.norm(dim=-1).min())
        half_angle = math.atan(80.0 / (distance - 80.0)) + math.radians(6.0)
        half_angle += math.atan(self.crop_extent_mm / math.sqrt(2.0) / (distance - 80.0))
        focal_px = self.image_size * distance / self.crop_extent_mm
        self.appearance = Appearance(
            style,
            seed=self.seed,
            num_cameras=self.num_cameras,
            image_size=self.image_size,
            coverage=math.tan(min(half_angle, math.radians(75.0))),
            texels_per_unit=focal_px,
        )
        # About 256k pixels per rendering group on CPU (temporaries stay small); big groups on GPU.
        self.group_size = max(1, 2**18 // self.image_size**2) if self.device.type == "cpu" else 1024
        self._subjects: dict[int, Any] = {}
        self._joints: dict[tuple[int, int], Tensor] = {}
        self._shared_joints: tuple | None = None

    def config(self) -> dict[str, Any]:
        """The arguments that determine the pixels (the disk cache key)."""
        return {
            "version": RENDER_VERSION,
            "style": self.style,
            "image_size": self.image_size,
            "num_cameras": self.num_cameras,
            "seed": self.seed,
            "frames_per_sequence": self.frames_per_sequence,
            "crop_extent_mm": self.crop_extent_mm,
            "rig": [self.rig.K.tolist(), self.rig.R.tolist(), self.rig.t.tolist()],
        }

    def subject(self, subject: int) -> Any:
        """The :class:`~handssl.data.synthhands.motion.Subject` with global index ``subject`` (cached)."""
        if subject not in self._subjects:
            self._subjects[subject] = _motion().make_subject(self.seed, subject)
        return self._subjects[subject]

    def share_sequences(self, keys: Sequence[tuple[int, int]]) -> None:
        """Keep the motion of these ``(subject, sequence)`` keys in anonymous shared memory.

        Forked DataLoader workers then compute each sequence once for all processes (and for the
        workers of later epochs) instead of once per worker.
        """
        keys = list(dict.fromkeys((int(a), int(q)) for a, q in keys))
        frames = self.frames_per_sequence
        flags = -(-len(keys) // 64) * 64
        buffer = mmap.mmap(-1, flags + len(keys) * frames * NUM_JOINTS * 3 * 4)
        filled = torch.frombuffer(buffer, dtype=torch.uint8, count=len(keys))
        joints = torch.frombuffer(
            buffer, dtype=torch.float32, count=len(keys) * frames * NUM_JOINTS * 3, offset=flags
        )
        self._shared_joints = (
            {key: i for i, key in enumerate(keys)},
            filled,
            joints.view(-1, frames, NUM_JOINTS, 3),
            buffer,
        )

    def sequence(self, subject: int, sequence: int) -> Tensor:
        """``(F, 21, 3)`` float32 world joints (mm) of a whole sequence (cached)."""
        key = (subject, sequence)
        if key in self._joints:
            return self._joints[key]
        slots, filled, table, _ = self._shared_joints or ({}, None, None, None)
        slot = slots.get(key)
        if slot is not None and filled[slot]:
            self._joints[key] = table[slot].clone()
            return self._joints[key]
        joints = _motion().sequence_joints(
            self.seed, self.subject(subject), sequence, list(range(self.frames_per_sequence))
        )
        joints = torch.as_tensor(joints, dtype=torch.float32)
        if joints.shape != (self.frames_per_sequence, NUM_JOINTS, 3) or not torch.isfinite(joints).all():
            raise RuntimeError(
                f"motion.sequence_joints returned {tuple(joints.shape)} (finite: "
                f"{bool(torch.isfinite(joints).all())}) for subject {subject}, sequence {sequence}"
            )
        if slot is not None:
            table[slot].copy_(joints)
            filled[slot] = 1
        self._joints[key] = joints
        return joints

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shared_joints"] = None  # shared memory does not travel to spawned processes
        return state

    def render(
        self,
        subjects: Sequence[int],
        sequences: Sequence[int],
        frames: Sequence[int],
        cameras: Sequence[int],
    ) -> dict[str, Tensor]:
        """Render ``N`` views at once (the four sequences give one view each).

        Returns:
            A dict of CPU tensors: ``image`` and ``background`` ``(N, 3, S, S)`` uint8, ``label`` ``(N, S, S)``
            uint8 (0 background, 1 hand skin, 2 sleeve), ``depth`` ``(N, S, S)`` float32 mm (0 on the
            background), ``K``, ``R`` ``(N, 3, 3)``, ``t`` ``(N, 3)`` of the crop cameras (world -> crop),
            ``R_rot`` ``(N, 3, 3)`` (rig camera -> crop camera), ``joints3d`` (crop frame),
            ``joints3d_world`` ``(N, 21, 3)`` and ``joints2d`` ``(N, 21, 2)``; all float32.
        """
        n = len(frames)
        if not n == len(subjects) == len(sequences) == len(cameras):
            raise ValueError("subjects, sequences, frames and cameras must have the same length")
        for name, values, bound in (
            ("frame", frames, self.frames_per_sequence),
            ("camera", cameras, self.num_cameras),
        ):
            bad = [v for v in values if not 0 <= v < bound]
            if bad:
                raise ValueError(f"{name} index out of range [0, {bound}): {bad[:5]}")
        s = self.image_size
        joints_world = torch.stack(
            [self.sequence(int(a), int(q))[int(f)] for a, q, f in zip(subjects, sequences, frames)]
        )
        world64 = joints_world.to(torch.float64)
        center = (world64.amax(1) + world64.amin(1)) / 2.0
        cams = torch.as_tensor(list(cameras), dtype=torch.long)
        crop = self.rig.crop_cameras(cams, center, s, self.crop_extent_mm)
        joints_cam = world_to_camera(world64, crop.R, crop.t)
        radius = torch.tensor([self.subject(int(a)).finger_radius_mm for a in subjects], dtype=torch.float64)
        shape = hand_shape(joints_cam, radius)
        views = ViewBatch(
            cameras=cams,
            subjects=torch.as_tensor(list(subjects), dtype=torch.long),
            sequences=torch.as_tensor(list(sequences), dtype=torch.long),
            frames=torch.as_tensor(list(frames), dtype=torch.long),
            R=crop.R,
            R_rot=crop.R_rot,
            K=crop.K,
            joints=joints_cam,
            skin_rgb=torch.stack([torch.as_tensor(self.subject(int(a)).skin_rgb) for a in subjects]),
            sleeve_rgb=torch.stack([torch.as_tensor(self.subject(int(a)).sleeve_rgb) for a in subjects]),
        )
        # Label of each primitive (index 0: background).
        labels = torch.tensor(
            [_LABEL_BACKGROUND]
            + [_LABEL_SLEEVE if p == PART_SLEEVE else _LABEL_HAND for p in PRIMITIVE_PART],
            dtype=torch.uint8,
        )
        # Small groups keep every temporary in cache (results do not depend on the grouping).
        group = self.group_size
        parts = []
        for first in range(0, n, group):
            rows = slice(first, first + group)
            shape_g = HandShape(**{k: v[rows] for k, v in vars(shape).items()})
            views_g = ViewBatch(**{k: v[rows] for k, v in vars(views).items()})
            hits = raycast(shape_g.to(device=self.device), crop.K[rows].to(self.device), s)
            image, background = self.appearance.render(hits, shape_g, views_g)
            label = labels.to(hits.primitive.device)[hits.primitive + 1]
            depth = torch.where(torch.isinf(hits.depth), 0.0, hits.depth)
            parts.append((image.cpu(), background.cpu(), label.cpu(), depth.cpu()))
        image, background, label, depth = (torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts))
        f32 = torch.float32
        return {
            "image": image,
            "background": background,
            "label": label,
            "depth": depth,
            "K": crop.K.to(f32),
            "R": crop.R.to(f32),
            "t": crop.t.to(f32),
            "R_rot": crop.R_rot.to(f32),
            "joints3d": joints_cam.to(f32),
            "joints2d": project(joints_cam, crop.K).to(f32),
            "joints3d_world": joints_world,
        }


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


class _SynthHandsBase(HandDataset):
    """Shared machinery: arguments, the world, index maps, the caches and batched rendering."""

    name = "synthhands"

    def __init__(
        self,
        split: str,
        style: str,
        image_size: int,
        num_cameras: int,
        seed: int,
        num_subjects: int | None,
        sequences_per_subject: int,
        frames_per_sequence: int,
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
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.split = split
        self.style = style
        self.num_subjects = _check_int(
            "num_subjects", DEFAULT_NUM_SUBJECTS[split] if num_subjects is None else num_subjects, 1
        )
        self.sequences_per_subject = _check_int("sequences_per_subject", sequences_per_subject, 1)
        self.chunk_size = _check_int("chunk_size", chunk_size, 1)
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache_mb = float(cache_mb)
        self.world = SynthHandsWorld(
            style=style,
            image_size=image_size,
            num_cameras=num_cameras,
            seed=seed,
            frames_per_sequence=frames_per_sequence,
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
        offset = SPLIT_SUBJECT_OFFSET[self.split]
        return [offset + i for i in range(self.num_subjects)]

    def frame_key(self, frame_index: int) -> tuple[int, int, int]:
        """``(subject, sequence, frame)`` of the split's ``frame_index``-th frame (subject = global index)."""
        per_subject = self.sequences_per_subject * self.frames_per_sequence
        slot, rest = divmod(frame_index, per_subject)
        sequence, frame = divmod(rest, self.frames_per_sequence)
        return SPLIT_SUBJECT_OFFSET[self.split] + slot, sequence, frame

    def view_keys(self, index: int) -> list[ViewKey]:
        """The ``(subject, sequence, frame, camera)`` views item ``index`` is made of."""
        raise NotImplementedError

    def _views_used(self) -> int:
        """How many distinct views the items use (sizes the shared cache)."""
        raise NotImplementedError

    def _slot(self, key: ViewKey) -> int:
        subject, sequence, frame, camera = key
        subject -= SPLIT_SUBJECT_OFFSET[self.split]
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
            for key, record in zip(missing, _split_records(self.world.render(*zip(*missing)))):
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
        np.savez(tmp, **{name: value.numpy() for name, value in record.items()})
        os.replace(tmp, path)

    def load_sample(self, index: int) -> Sample:
        keys = self.view_keys(index)
        store = self.store
        sequential, self._last_index = index == getattr(self, "_last_index", -2) + 1, index
        missing = any(store.get(self._slot(key)) is None for key in keys)
        if missing and self.chunk_size > 1 and (isinstance(store, _SharedStore) or sequential):
            # Render the whole block of neighbouring items now (kept for later): one batched render
            # instead of chunk_size small ones.
            start = index - index % self.chunk_size
            self._records(
                [k for i in range(start, min(start + self.chunk_size, len(self))) for k in self.view_keys(i)]
            )
        return self._assemble([index], self._records(keys))[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """Batched fetch (what a DataLoader with automatic batching calls): renders all misses at once."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not -len(self) <= i < len(self):
                raise IndexError(f"{self.name}: index {i} out of range for {len(self)} samples")
        indices = [i % len(self) for i in indices]
        records = self._records([k for i in indices for k in self.view_keys(i)])
        return [self._finish(sample) for sample in self._assemble(indices, records)]

    def _finish(self, sample: Sample) -> Sample:
        """What :meth:`HandDataset.__getitem__` does after ``load_sample`` (mirroring, transform)."""
        if self.mirror_left and sample.get("meta", {}).get("hand") == "left":
            sample = mirror_sample(sample)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def _assemble(self, indices: list[int], records: list[dict[str, Tensor]]) -> list[Sample]:
        raise NotImplementedError

    def _stack_views(self, records: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Sample tensors of many views at once (fresh tensors, never views of the cache), ``(N, ...)``."""
        n = len(records)
        geometry = torch.stack([r["geometry"] for r in records])
        out = {
            "image": torch.stack([r["image"] for r in records]).to(torch.float32) / 255.0,
            "valid": torch.ones(n, NUM_JOINTS, dtype=torch.bool),
        }
        if "mask" in self.extra_keys or "hand_mask" in self.extra_keys:
            label = torch.stack([r["label"] for r in records]).unsqueeze(1)
            if "mask" in self.extra_keys:
                out["mask"] = (label > 0).to(torch.float32)
            if "hand_mask" in self.extra_keys:
                out["hand_mask"] = (label == _LABEL_HAND).to(torch.float32)
        if "depth" in self.extra_keys:
            out["depth"] = torch.stack([r["depth"] for r in records]).unsqueeze(1)
        if "background" in self.extra_keys:
            out["background"] = torch.stack([r["background"] for r in records]).to(torch.float32) / 255.0
        start = 0
        for name, shape in _GEOMETRY:
            size = math.prod(shape)
            out[name] = geometry[:, start : start + size].reshape(n, *shape)
            start += size
        return out


class SynthHands(_SynthHandsBase):
    """Single-view SynthHands: one rendered crop (one camera of one frame) per item.

    Items enumerate the split's frames (subject-major, then sequence, then frame); with
    ``camera="all"`` every camera of every frame is an item (camera fastest). Each sample holds ``image``
    (float32 ``3 x S x S`` in ``[0, 1]``, ready to use), ``mask`` (float32 ``1 x S x S``: the rendered hand
    *and* forearm sleeve, i.e. everything that is not background), ``hand_mask`` (the skin only, sleeve
    excluded), ``depth`` (float32 ``1 x S x S`` z-depth in mm, 0 on the background), ``background`` (that
    camera's background crop, float32 ``3 x S x S``), ``joints3d`` (crop-camera frame, mm), ``joints2d``,
    ``K`` (crop camera), ``valid`` (all True), ``R``/``t`` (world -> crop camera), ``joints3d_world`` and
    ``meta`` (``dataset``, ``subject``, ``sequence``, ``frame``, ``camera``, ``hand="right"``, ``style``,
    ``split``). Fingertip joints are the centres of the fingertips' end spheres.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; the splits' subjects are disjoint.
        style: ``"synthetic"`` (clean) or ``"real"`` (textured, cluttered, noisy); same geometry.
        image_size: Side of the square crops in pixels, an int >= 16 (64 on CPU; 128 and 256 work).
        num_cameras: Cameras in the rig.
        camera: ``"random"`` (one camera per frame, drawn from the index), ``"all"`` (every camera of
            every frame) or a camera index (that camera only).
        seed: World seed: subjects, motion, rig, appearance and camera draws.
        num_subjects: Subjects in this split; ``None`` uses 32 / 8 / 8 for train / val / test.
        sequences_per_subject: Sequences per subject.
        frames_per_sequence: Frames per sequence.
        crop_extent_mm: Side (mm), at the hand centre's depth, of the square each crop covers.
        rig_radius_mm: Distance of the cameras from the hand (mm).
        chunk_size: Items rendered together when a single ``dataset[i]`` misses the cache.
        cache_mb: Memory budget in MiB of the rendered-view cache: when every view the items use fits
            (about 46 KB each at 64 px), one shared-memory slot per view, shared with forked DataLoader
            workers; otherwise a per-process LRU cache of that size. 0 disables caching.
        cache_dir: Optional folder for a disk cache of rendered views (one ``.npz`` per view, in a
            sub-folder named by a hash of everything that determines the pixels).
        device: Device of the ray casting and shading (``"cpu"``; ``"cuda"`` only with ``num_workers=0``).
        extra_keys: Which optional keys to return, drawn from ``mask``, ``hand_mask``, ``depth`` and
            ``background``; ``None`` returns all of them (``[]`` keeps samples small when only the pose is
            needed).
        transform: Applied to every sample (the image is already a tensor, no transform is needed).
        mirror_left: Mirror left hands into right hands (SynthHands hands are all right hands).
    """

    def __init__(
        self,
        split: str = "train",
        style: str = "synthetic",
        image_size: int = 64,
        num_cameras: int = 8,
        camera: str | int = "random",
        seed: int = 0,
        num_subjects: int | None = None,
        sequences_per_subject: int = 4,
        frames_per_sequence: int = 64,
        crop_extent_mm: float = 240.0,
        rig_radius_mm: float = 600.0,
        chunk_size: int = 64,
        cache_mb: float = 512.0,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        extra_keys: Sequence[str] | None = None,
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(
            split,
            style,
            image_size,
            num_cameras,
            seed,
            num_subjects,
            sequences_per_subject,
            frames_per_sequence,
            crop_extent_mm,
            rig_radius_mm,
            chunk_size,
            cache_mb,
            cache_dir,
            device,
            extra_keys,
            transform,
            mirror_left,
        )
        if camera not in ("random", "all"):
            if isinstance(camera, bool) or not isinstance(camera, (int, np.integer)):
                raise ValueError(f"camera must be 'random', 'all' or a camera index, got {camera!r}")
            if not 0 <= camera < self.num_cameras:
                raise ValueError(
                    f"camera index {camera} out of range for a rig of {self.num_cameras} cameras"
                )
            camera = int(camera)
        self.camera = camera
        self._store = self._make_store()

    def __len__(self) -> int:
        return self.num_frames * (self.num_cameras if self.camera == "all" else 1)

    def view_keys(self, index: int) -> list[ViewKey]:
        if self.camera == "all":
            frame_index, camera = divmod(index, self.num_cameras)
        else:
            frame_index = index
            camera = (
                hash_ints(self.seed, 0xCA, index) % self.num_cameras
                if self.camera == "random"
                else self.camera
            )
        return [(*self.frame_key(frame_index), int(camera))]

    def _views_used(self) -> int:
        return len(self)

    def _assemble(self, indices: list[int], records: list[dict[str, Tensor]]) -> list[Sample]:
        stacked = self._stack_views(records)
        samples = []
        for row, index in enumerate(indices):
            subject, sequence, frame, camera = self.view_keys(index)[0]
            sample: Sample = {key: value[row] for key, value in stacked.items()}
            sample["meta"] = {
                "dataset": self.name,
                "subject": subject,
                "sequence": sequence,
                "frame": frame,
                "camera": camera,
                "hand": "right",
                "style": self.style,
                "split": self.split,
                "index": index,
            }
            samples.append(sample)
        return samples


class SynthHandsMultiView(_SynthHandsBase):
    """Multi-view SynthHands: ``num_views`` synchronised crops of one frame, plus the same cameras at t′.

    One item per frame of the split. The cameras are distinct and drawn from the index; the second frame
    t′ of the same sequence gives the appearance source of novel-view synthesis (Rhodin et al.). Keys:
    ``image``, ``mask``, ``hand_mask``, ``background`` (``V x 3|1 x S x S``), ``depth`` (``V x 1 x S x S``),
    ``joints3d`` ``(V, 21, 3)`` (each view's crop frame), ``joints2d`` ``(V, 21, 2)``, ``K``/``R`` ``(V, 3, 3)``,
    ``t`` ``(V, 3)``, ``valid`` ``(V, 21)``, ``joints3d_world`` ``(21, 3)``, ``image_t2`` ``(V, 3, S, S)`` (same
    cameras at t′; their crop cameras look at the hand at t′) and ``meta`` (``cameras`` list, ``frame_t2``).
    Crops of two views of a frame are related by the pure rotation ``R[j] @ R[i].T``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; the splits' subjects are disjoint.
        style: ``"synthetic"`` or ``"real"``.
        image_size: Side of the square crops in pixels, an int >= 16.
        num_cameras: Cameras in the rig.
        num_views: Views per item, ``1 <= num_views <= num_cameras``.
        frame_gap: ``None``: t′ is a random other frame of the sequence (drawn from the index); an int
            ``g`` with ``0 < |g| < frames_per_sequence``: t′ = (t + g) mod ``frames_per_sequence``.
        seed: World seed.
        num_subjects: Subjects in this split; ``None`` uses 32 / 8 / 8 for train / val / test.
        sequences_per_subject: Sequences per subject.
        frames_per_sequence: Frames per sequence (at least 2).
        crop_extent_mm: Side (mm), at the hand centre's depth, of the square each crop covers.
        rig_radius_mm: Distance of the cameras from the hand (mm).
        chunk_size: Items rendered together when a single ``dataset[i]`` misses the cache.
        cache_mb: Memory budget in MiB of the rendered-view cache: when every view the items use fits
            (about 46 KB each at 64 px), one shared-memory slot per view, shared with forked DataLoader
            workers; otherwise a per-process LRU cache of that size. 0 disables caching.
        cache_dir: Optional folder for a disk cache of rendered views.
        device: Device of the ray casting and shading.
        extra_keys: Which optional keys to return, drawn from ``mask``, ``hand_mask``, ``depth`` and
            ``background``; ``None`` returns all of them (``[]`` keeps samples small when only the pose is
            needed).
        transform: Applied to every sample (receives the stacked multi-view sample).
        mirror_left: Unused (all hands are right hands); kept for the common dataset signature.
    """

    def __init__(
        self,
        split: str = "train",
        style: str = "synthetic",
        image_size: int = 64,
        num_cameras: int = 8,
        num_views: int = 2,
        frame_gap: int | None = None,
        seed: int = 0,
        num_subjects: int | None = None,
        sequences_per_subject: int = 4,
        frames_per_sequence: int = 64,
        crop_extent_mm: float = 240.0,
        rig_radius_mm: float = 600.0,
        chunk_size: int = 16,
        cache_mb: float = 512.0,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        extra_keys: Sequence[str] | None = None,
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(
            split,
            style,
            image_size,
            num_cameras,
            seed,
            num_subjects,
            sequences_per_subject,
            frames_per_sequence,
            crop_extent_mm,
            rig_radius_mm,
            chunk_size,
            cache_mb,
            cache_dir,
            device,
            extra_keys,
            transform,
            mirror_left,
        )
        self.num_views = _check_int("num_views", num_views, 1)
        if self.num_views > self.num_cameras:
            raise ValueError(f"num_views={num_views} exceeds the rig's {self.num_cameras} cameras")
        if self.frames_per_sequence < 2:
            raise ValueError("SynthHandsMultiView needs frames_per_sequence >= 2 (a second frame t′)")
        if frame_gap is not None:
            frame_gap = _check_int("frame_gap", frame_gap, -(2**31))
            if not 0 < abs(frame_gap) < self.frames_per_sequence:
                raise ValueError(
                    f"frame_gap must satisfy 0 < |frame_gap| < frames_per_sequence="
                    f"{self.frames_per_sequence}, got {frame_gap}"
                )
        self.frame_gap = frame_gap
        self._store = self._make_store()

    def __len__(self) -> int:
        return self.num_frames

    def cameras_of(self, index: int) -> list[int]:
        """The distinct cameras of item ``index`` (a pure function of the seed and the index)."""
        draws = [hash_ints(self.seed, 0x7E, index, c) for c in range(self.num_cameras)]
        order = sorted(range(self.num_cameras), key=lambda c: (draws[c], c))
        return order[: self.num_views]

    def second_frame(self, index: int) -> int:
        """Frame t′ of item ``index``: another frame of the same sequence."""
        frame = self.frame_key(index)[2]
        if self.frame_gap is not None:
            return (frame + self.frame_gap) % self.frames_per_sequence
        offset = 1 + hash_ints(self.seed, 0x72, index) % (self.frames_per_sequence - 1)
        return (frame + offset) % self.frames_per_sequence

    def view_keys(self, index: int) -> list[ViewKey]:
        subject, sequence, frame = self.frame_key(index)
        frame_t2 = self.second_frame(index)
        cameras = self.cameras_of(index)
        return [(subject, sequence, frame, c) for c in cameras] + [
            (subject, sequence, frame_t2, c) for c in cameras
        ]

    def _views_used(self) -> int:
        return self.num_frames * self.num_cameras

    def _assemble(self, indices: list[int], records: list[dict[str, Tensor]]) -> list[Sample]:
        v = self.num_views
        stacked = self._stack_views(records)
        image_t2 = stacked["image"].view(len(indices), 2 * v, *stacked["image"].shape[1:])[:, v:]
        stacked = {
            key: value.view(len(indices), 2 * v, *value.shape[1:])[:, :v] for key, value in stacked.items()
        }
        samples = []
        for row, index in enumerate(indices):
            subject, sequence, frame = self.frame_key(index)
            cameras = self.cameras_of(index)
            sample: Sample = {key: value[row] for key, value in stacked.items() if key != "joints3d_world"}
            sample["joints3d_world"] = stacked["joints3d_world"][row, 0]
            sample["image_t2"] = image_t2[row]
            sample["meta"] = {
                "dataset": self.name,
                "subject": subject,
                "sequence": sequence,
                "frame": frame,
                "frame_t2": self.second_frame(index),
                "camera": cameras[0],
                "cameras": cameras,
                "hand": "right",
                "style": self.style,
                "split": self.split,
                "index": index,
            }
            samples.append(sample)
        return samples
