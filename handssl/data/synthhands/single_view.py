"""Single-view SynthHands: one rendered crop (one camera of one frame) per item."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from handssl.data.base import Sample, Transform
from handssl.data.synthhands._common import Crop, Style, base_arguments
from handssl.data.synthhands.appearance import hash_ints
from handssl.data.synthhands.cache import SynthHandsBase, ViewKey

__all__ = ["SynthHands"]


class SynthHands(SynthHandsBase):
    """Single-view SynthHands: one rendered crop (one camera of one frame) per item.

    Items enumerate the split's frames (subject-major, then sequence, then frame); with
    ``camera="all"`` every camera of every frame is an item (camera fastest). Samples are packed
    (:class:`~handssl.data.contract.HandSample`, rendered at ``image_size``: no transform is needed) and hold
    ``image``, ``mask`` (the rendered hand *and* forearm sleeve; a ``real_object`` held object is in neither
    mask), ``hand_mask`` (the skin only), ``depth`` (held object included), ``background`` (the view's static
    background crop), ``joints3d``, ``joints2d``, ``K`` (crop camera), ``valid`` (all True), ``R``/``t``,
    ``joints3d_world`` and ``meta`` (``style``, ``split`` besides the usual). Fingertip joints are the centres of
    the fingertips' end spheres.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; the splits' subjects are disjoint.
        style: ``"synthetic"`` (RHD-like source: rendered hands over varied natural-looking backgrounds,
            random lights), ``"real"`` (STB-like target: a camera in a lab room, key and fill light, sensor
            effects) or ``"real_object"`` (Dexter+Object-like: ``"real"`` with a held, occluding object);
            same geometry.
        image_size: Side of the square crops in pixels, an int >= 16 (64 on CPU; 128 and 256 work).
        num_cameras: Cameras in the rig.
        camera: ``"random"`` (one camera per frame, drawn from the index), ``"all"`` (every camera of
            every frame) or a camera index (that camera only).
        seed: World seed: subjects, motion, rig, appearance and camera draws.
        num_subjects: Subjects in this split; ``None`` uses 32 / 8 / 8 for train / val / test.
        first_subject: The split's first subject used (``first_subject .. first_subject + num_subjects - 1``):
            two datasets of one split with non-overlapping ranges share no subject (e.g. labelled subjects
            0-15 and unlabelled subjects 16-31 of ``"train"``).
        sequences_per_subject: Sequences per subject.
        frames_per_sequence: Frames per sequence.
        crop: ``"joints"`` (default): each crop looks at the hand centre and frames the joints' square box
            times ``crop_margin``, as the papers' crops do (each view its own focal length, in ``K``);
            ``"fixed"``: every crop covers ``crop_extent_mm`` at the hand centre's depth.
        crop_margin: Crop side over the joints' box side for ``crop="joints"``.
        crop_extent_mm: Side (mm), at the hand centre's depth, of the square a ``"fixed"`` crop covers.
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
        style: Style = "synthetic",
        image_size: int = 64,
        num_cameras: int = 8,
        camera: str | int = "random",
        seed: int = 0,
        num_subjects: int | None = None,
        first_subject: int = 0,
        sequences_per_subject: int = 4,
        frames_per_sequence: int = 64,
        crop: Crop = "joints",
        crop_margin: float = 1.25,
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
        super().__init__(**base_arguments(locals()))
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

    def view_keys(self, index: int, epoch: int = 0) -> list[ViewKey]:
        if self.camera == "all":
            frame_index, camera = divmod(index, self.num_cameras)
        else:
            frame_index = index
            camera = (
                self.camera  # a camera index (checked in __init__)
                if isinstance(self.camera, int)
                else hash_ints(self.seed, 0xCA, index) % self.num_cameras
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
