"""Single-view SynthHands: one rendered crop (one camera of one frame) per item."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import Tensor

from handssl.data.base import Sample, Transform
from handssl.data.synthhands.appearance import hash_ints
from handssl.data.synthhands.dataset import Split, SynthHandsBase, ViewKey
from handssl.data.synthhands.world import SynthHandsWorld

if TYPE_CHECKING:
    from handssl.data.synthhands.multi_view import SynthHandsMultiView

__all__ = ["SynthHands"]


class SynthHands(SynthHandsBase):
    """Single-view SynthHands: one rendered crop (one camera of one frame) per item.

    Items enumerate the split's frames (subject-major, then sequence, then frame); with
    ``camera="all"`` every camera of every frame is an item (camera fastest). Samples are packed
    (:class:`~handssl.data.contract.HandSample`, rendered at the world's ``image_size``: no transform is
    needed) and hold ``image``, ``mask`` (the rendered hand *and* forearm sleeve; a ``real_object`` held
    object is in neither mask), ``hand_mask`` (the skin only), ``depth`` (held object included),
    ``background`` (the view's static background crop), ``joints3d``, ``joints2d``, ``K`` (crop camera),
    ``valid`` (all True), ``R``/``t``, ``joints3d_world`` and ``meta`` (``style``, ``split`` besides the
    usual). Fingertip joints are the centres of the fingertips' end spheres.

    What the pixels look like (style, image size, rig, crops, seed, rendering device) is the ``world``'s;
    the dataset chooses which of its views are items. In YAML::

        class_path: handssl.data.SynthHands
        init_args:
          split: train
          world: {class_path: handssl.data.SynthHandsWorld, init_args: {style: real, image_size: 64}}

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; the splits' subjects are disjoint.
        world: The :class:`~handssl.data.SynthHandsWorld` the views are rendered from (style, image size,
            rig, crops, seed, device); ``None``: ``SynthHandsWorld()`` (synthetic style, 64 px).
        camera: ``"random"`` (one camera per frame, drawn from the index and the world's seed), ``"all"``
            (every camera of every frame) or a camera index (that camera only).
        num_subjects: Subjects in this split; ``None`` uses 32 / 8 / 8 for train / val / test.
        first_subject: The split's first subject used (``first_subject .. first_subject + num_subjects - 1``):
            two datasets of one split with non-overlapping ranges share no subject (e.g. labelled subjects
            0-15 and unlabelled subjects 16-31 of ``"train"``).
        sequences_per_subject: Sequences per subject.
        frames_per_sequence: Frames per sequence (frames ``0 .. frames_per_sequence - 1`` of each: a
            frame's pose does not depend on how many frames are used).
        chunk_size: Items rendered together when a single ``dataset[i]`` misses the cache.
        cache_mb: Memory budget in MiB of the rendered-view cache: when every view the items use fits
            (about 46 KB each at 64 px), one shared-memory slot per view, shared with forked DataLoader
            workers; otherwise a per-process LRU cache of that size. 0 disables caching.
        cache_dir: Optional folder for a disk cache of rendered views (one ``.npz`` per view, in a
            sub-folder named by a hash of the world's arguments, which determine the pixels).
        extra_keys: Which optional keys to return, drawn from ``mask``, ``hand_mask``, ``depth`` and
            ``background``; ``None`` returns all of them (``[]`` keeps samples small when only the pose is
            needed).
        transform: Applied to every sample (the image is already a tensor, no transform is needed).
        mirror_left: Mirror left hands into right hands (SynthHands hands are all right hands).
    """

    def __init__(
        self,
        split: Split = "train",
        world: SynthHandsWorld | None = None,
        camera: Literal["random", "all"] | int = "random",
        num_subjects: int | None = None,
        first_subject: int = 0,
        sequences_per_subject: int = 4,
        frames_per_sequence: int = 64,
        chunk_size: int = 64,
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

    def multi_view(
        self, num_views: int = 2, image_size: int | None = None, **arguments: Any
    ) -> SynthHandsMultiView:
        """This dataset's multi-view form: :class:`SynthHandsMultiView` of the same world, split and frames.

        What multi-view views (:class:`~handssl.data.views.NVSPairs`) read, so that one data config serves
        single- and multi-view methods. The sibling keeps ``split``, ``world``, ``num_subjects``,
        ``first_subject``, ``sequences_per_subject``, ``frames_per_sequence``, ``cache_mb`` and ``cache_dir``;
        ``camera``, ``chunk_size``, ``extra_keys`` (pairs need the background) and ``transform`` (it would see
        single-view samples) are not carried over.

        Args:
            num_views: Views per item.
            image_size: The DataModule's image side; unused (the world renders at its own ``image_size``).
            **arguments: Any other :class:`SynthHandsMultiView` argument, or one of the above to override.
        """
        from handssl.data.synthhands.multi_view import SynthHandsMultiView

        kept = {
            "split": self.split,
            "world": self.world,
            "num_subjects": self.num_subjects,
            "first_subject": self.first_subject,
            "sequences_per_subject": self.sequences_per_subject,
            "frames_per_sequence": self.frames_per_sequence,
            "cache_mb": self.cache_mb,
            "cache_dir": self._cache_dir_given,
        }
        return SynthHandsMultiView(num_views=num_views, **{**kept, **arguments})

    def view_keys(self, index: int, epoch: int = 0) -> list[ViewKey]:
        if self.camera == "all":
            frame_index, camera = divmod(index, self.num_cameras)
        else:
            frame_index = index
            camera = (
                self.camera  # a camera index (checked in __init__)
                if isinstance(self.camera, int)
                else hash_ints(self.world.seed, 0xCA, index) % self.num_cameras
            )
        return [(*self.frame_key(frame_index), int(camera))]

    def _views_used(self) -> int:
        return len(self)

    def _assemble_views(self, items: list[tuple[int, int]], stacked: dict[str, Tensor]) -> list[Sample]:
        samples = []
        for row, (index, _) in enumerate(items):
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
