"""Multi-view SynthHands: synchronised crops of one frame plus a leak-free appearance frame, for NVS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from torch import Tensor

from handssl.data.base import Sample, Transform
from handssl.data.synthhands.appearance import hash_ints
from handssl.data.synthhands.dataset import Split, SynthHandsBase, ViewKey
from handssl.data.synthhands.world import SynthHandsWorld, check_int

__all__ = ["APPEARANCE_SOURCES", "SynthHandsMultiView"]

APPEARANCE_SOURCES: tuple[str, ...] = ("other_sequence", "same_sequence")
"""Where the appearance image of a multi-view item comes from."""


class SynthHandsMultiView(SynthHandsBase):
    """Multi-view SynthHands: ``num_views`` synchronised crops of one frame, plus an appearance image per view.

    One item per frame of the split. Its cameras are distinct and drawn afresh every epoch from all ordered
    camera tuples of the rig (a pure function of seed, epoch and index: pass ``(index, epoch)`` keys, as
    :class:`~handssl.data.views.NVSPairs` do; a plain index means epoch 0). The appearance
    images (``image_t2``, the appearance source of novel-view synthesis, Rhodin et al.) show the same
    subject through the same cameras in **another sequence** by default, so their pose is unrelated to the
    pose at t and cannot pass through the appearance code. Items are packed
    :class:`~handssl.data.contract.MultiViewItem` (every per-view key with a leading ``V``): the keys of
    :class:`SynthHands` samples plus ``image_t2`` (same cameras at the appearance frame; their crops frame the
    hand there) and ``joints3d_t2`` (its joints in those crops' frames, for diagnostics); ``meta`` adds
    ``cameras``, ``sequence_t2``, ``frame_t2`` and ``epoch``.
    Crops of two views of a frame are related by the pure rotation ``R[j] @ R[i].T``.

    What the pixels look like (style, image size, rig, crops, seed, rendering device) is the ``world``'s;
    the dataset chooses which of its views are items (see :class:`SynthHands`).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; the splits' subjects are disjoint.
        world: The :class:`~handssl.data.SynthHandsWorld` the views are rendered from; ``None``:
            ``SynthHandsWorld()`` (synthetic style, 64 px, 8 cameras). Camera tuples and appearance frames
            are drawn from its seed.
        num_views: Views per item, ``1 <= num_views <=`` the world's ``num_cameras``.
        appearance_source: ``"other_sequence"`` (default, leak-free): a random frame of another sequence of
            the same subject; ``"same_sequence"``: another frame t′ of the same sequence (the pose at t′ is
            close to the pose at t: it leaks through the appearance code).
        frame_gap: With ``"same_sequence"``: ``None`` draws t′ from the index; an int ``g`` with
            ``0 < |g| < frames_per_sequence`` sets t′ = (t + g) mod ``frames_per_sequence``.
        num_subjects: Subjects in this split; ``None`` uses 32 / 8 / 8 for train / val / test.
        first_subject: The split's first subject used (``first_subject .. first_subject + num_subjects - 1``):
            two datasets of one split with non-overlapping ranges share no subject (e.g. labelled subjects
            0-15 and unlabelled subjects 16-31 of ``"train"``).
        sequences_per_subject: Sequences per subject.
        frames_per_sequence: Frames per sequence (frames ``0 .. frames_per_sequence - 1`` of each).
        chunk_size: Items rendered together when a single ``dataset[i]`` misses the cache.
        cache_mb: Memory budget in MiB of the rendered-view cache: when every view the items use fits
            (about 46 KB each at 64 px), one shared-memory slot per view, shared with forked DataLoader
            workers; otherwise a per-process LRU cache of that size. 0 disables caching.
        cache_dir: Optional folder for a disk cache of rendered views.
        extra_keys: Which optional keys to return, drawn from ``mask``, ``hand_mask``, ``depth`` and
            ``background``; ``None`` returns all of them (``[]`` keeps samples small when only the pose is
            needed).
        transform: Applied to every sample (receives the stacked multi-view sample).
        mirror_left: Unused (all hands are right hands); kept for the common dataset signature.
    """

    def __init__(
        self,
        split: Split = "train",
        world: SynthHandsWorld | None = None,
        num_views: int = 2,
        appearance_source: Literal["other_sequence", "same_sequence"] = "other_sequence",
        frame_gap: int | None = None,
        num_subjects: int | None = None,
        first_subject: int = 0,
        sequences_per_subject: int = 4,
        frames_per_sequence: int = 64,
        chunk_size: int = 16,
        cache_mb: float = 512.0,
        cache_dir: str | Path | None = None,
        extra_keys: Sequence[str] | None = None,
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(
            split=split,
            world=world,
            num_subjects=num_subjects,
            first_subject=first_subject,
            sequences_per_subject=sequences_per_subject,
            frames_per_sequence=frames_per_sequence,
            chunk_size=chunk_size,
            cache_mb=cache_mb,
            cache_dir=cache_dir,
            extra_keys=extra_keys,
            transform=transform,
            mirror_left=mirror_left,
        )
        self.num_views = check_int("num_views", num_views, 1)
        if self.num_views > self.num_cameras:
            raise ValueError(f"num_views={num_views} exceeds the rig's {self.num_cameras} cameras")
        if appearance_source not in APPEARANCE_SOURCES:
            raise ValueError(
                f"appearance_source must be one of {APPEARANCE_SOURCES}, got {appearance_source!r}"
            )
        if appearance_source == "other_sequence" and self.sequences_per_subject < 2:
            raise ValueError(
                "appearance_source='other_sequence' needs sequences_per_subject >= 2 (the appearance image "
                f"comes from another sequence of the subject), got {self.sequences_per_subject}; "
                "raise it or use appearance_source='same_sequence'"
            )
        if self.frames_per_sequence < 2 and appearance_source == "same_sequence":
            raise ValueError(
                "appearance_source='same_sequence' needs frames_per_sequence >= 2 (a second frame)"
            )
        if frame_gap is not None:
            frame_gap = check_int("frame_gap", frame_gap, -(2**31))
            if not 0 < abs(frame_gap) < self.frames_per_sequence:
                raise ValueError(
                    f"frame_gap must satisfy 0 < |frame_gap| < frames_per_sequence="
                    f"{self.frames_per_sequence}, got {frame_gap}"
                )
        self.appearance_source = appearance_source
        self.frame_gap = frame_gap
        self._store = self._make_store()

    epoch_items = True
    """Items change with the epoch (fresh camera tuples): samplers pass ``(index, epoch)`` keys."""

    def __len__(self) -> int:
        return self.num_frames

    def cameras_of(self, index: int, epoch: int = 0) -> list[int]:
        """The distinct, ordered cameras of item ``index`` in ``epoch`` (a pure function of seed, epoch, index).

        Every epoch draws afresh from all ordered camera tuples of the rig (for two views: all
        ``C (C - 1)`` ordered pairs, so both directions of every pair).
        """
        draws = [hash_ints(self.world.seed, 0x7E, epoch, index, c) for c in range(self.num_cameras)]
        order = sorted(range(self.num_cameras), key=lambda c: (draws[c], c))
        return order[: self.num_views]

    def appearance_frame(self, index: int) -> tuple[int, int]:
        """``(sequence, frame)`` of the appearance image of item ``index`` (same subject, same cameras).

        ``"other_sequence"``: a random frame of another sequence of the subject, so its pose is unrelated to
        the pose at t; ``"same_sequence"``: frame ``t + frame_gap`` or a random other frame of the sequence.
        """
        _, sequence, frame = self.frame_key(index)
        if self.appearance_source == "other_sequence":
            shift = 1 + hash_ints(self.world.seed, 0x73, index) % (self.sequences_per_subject - 1)
            return (sequence + shift) % self.sequences_per_subject, hash_ints(
                self.world.seed, 0x72, index
            ) % self.frames_per_sequence
        if self.frame_gap is not None:
            return sequence, (frame + self.frame_gap) % self.frames_per_sequence
        offset = 1 + hash_ints(self.world.seed, 0x72, index) % (self.frames_per_sequence - 1)
        return sequence, (frame + offset) % self.frames_per_sequence

    def view_keys(self, index: int, epoch: int = 0) -> list[ViewKey]:
        subject, sequence, frame = self.frame_key(index)
        sequence_t2, frame_t2 = self.appearance_frame(index)
        cameras = self.cameras_of(index, epoch)
        return [(subject, sequence, frame, c) for c in cameras] + [
            (subject, sequence_t2, frame_t2, c) for c in cameras
        ]

    def _views_used(self) -> int:
        return self.num_frames * self.num_cameras

    def _assemble_views(self, items: list[tuple[int, int]], stacked: dict[str, Tensor]) -> list[Sample]:
        v, n = self.num_views, len(items)
        second = {
            key: stacked[key].view(n, 2 * v, *stacked[key].shape[1:])[:, v:] for key in ("image", "joints3d")
        }
        stacked = {key: value.view(n, 2 * v, *value.shape[1:])[:, :v] for key, value in stacked.items()}
        samples = []
        for row, (index, epoch) in enumerate(items):
            subject, sequence, frame = self.frame_key(index)
            sequence_t2, frame_t2 = self.appearance_frame(index)
            cameras = self.cameras_of(index, epoch)
            sample: Sample = {key: value[row] for key, value in stacked.items() if key != "joints3d_world"}
            sample["joints3d_world"] = stacked["joints3d_world"][row, 0]
            sample["image_t2"] = second["image"][row]
            sample["joints3d_t2"] = second["joints3d"][row]
            sample["meta"] = {
                "dataset": self.name,
                "subject": subject,
                "sequence": sequence,
                "frame": frame,
                "sequence_t2": sequence_t2,
                "frame_t2": frame_t2,
                "camera": cameras[0],
                "cameras": cameras,
                "epoch": epoch,
                "hand": "right",
                "style": self.style,
                "split": self.split,
                "index": index,
            }
            samples.append(sample)
        return samples
