"""CMU Panoptic Studio multi-view hand data (hdHand3d + HD cameras): single-view samples and multi-view crops.

On disk (panoptic-toolbox layout)::

    <root>/<seq>/calibration_<seq>.json             cameras: K, distCoef [k1,k2,p1,p2,k3], R, t (cm)
    <root>/<seq>/hdHand3d/handRecon3D_hd%08d.json   people[].{right,left}_hand.landmarks (63 floats, cm)
    <root>/<seq>/hdImgs/00_XX/00_XX_%08d.jpg        HD frames (panel 0), e.g. by scripts/hdImgsExtractor.sh

What the loader does: only HD cameras (panel 0); cm -> mm for the landmarks and ``t``; world -> camera with
``x_cam = R x_world + t``; 2D joints are the *distorted* projections (OpenCV model, the toolbox's), so they
sit on the pixels of the original image. Joints are already in canonical (OpenPose) order, root = wrist.
Frames whose chosen hand is missing, has a mean ``averageScore`` below ``min_score`` or non-finite landmarks
are skipped (one warning with the counts); camera views whose image file is missing or that do not see the
whole hand are skipped too (a second warning).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from handssl.data.base import (
    DatasetError,
    HandDataset,
    Sample,
    Transform,
    load_image,
    require_path,
    warn_skipped,
)
from handssl.geometry import crop_camera, project, world_to_camera
from handssl.skeleton import NUM_JOINTS

__all__ = [
    "PANOPTIC_LAYOUT",
    "Panoptic",
    "PanopticCamera",
    "PanopticIndex",
    "PanopticMultiView",
    "crop_source_maps",
    "find_sequences",
    "index_sequences",
    "remap_through_crop",
]

PANOPTIC_LAYOUT = """\
<root>/
  <seq>/                                      e.g. 171204_pose1 (one folder per sequence)
    calibration_<seq>.json
    hdHand3d/handRecon3D_hd00000000.json ...  (untar hdHand3d.tar)
    hdImgs/00_00/00_00_00000000.jpg ...       (scripts/hdImgsExtractor.sh; one folder per HD camera)"""

CM_TO_MM = 10.0
_HAND_FILE = re.compile(r"handRecon3D_hd(\d+)\.json$")


@dataclass
class PanopticCamera:
    """One HD camera of a sequence, in mm.

    Attributes:
        name: ``"00_XX"`` (panel 0, node XX).
        K: ``(3, 3)`` intrinsics.
        R: ``(3, 3)`` world-to-camera rotation.
        t: ``(3,)`` world-to-camera translation in mm.
        dist: ``(5,)`` OpenCV distortion ``[k1, k2, p1, p2, k3]``.
        width: Image width in pixels (read from the first image's header).
        height: Image height in pixels.
    """

    name: str
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    dist: np.ndarray
    width: int
    height: int


def find_sequences(root: str | Path) -> list[str]:
    """Names of the sequence folders under ``root`` (those holding ``calibration_<name>.json``), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / f"calibration_{p.name}.json").is_file())


def remap_through_crop(
    image: np.ndarray,
    K: np.ndarray,
    dist: np.ndarray | None,
    K_crop: np.ndarray,
    R_rot: np.ndarray,
    size: int,
) -> np.ndarray:
    """Resample a (distorted) camera image into a crop camera that shares the camera's centre.

    Every crop pixel becomes a ray (``K_crop^-1``), is rotated into the original camera (``R_rot^T``),
    projected with the original intrinsics and distortion, and the original image is sampled there
    (bilinear, black outside the image). This undistorts and crops in one step.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` original image.
        K: ``(3, 3)`` original intrinsics.
        dist: Original ``(5,)`` distortion, or ``None``.
        K_crop: ``(3, 3)`` crop intrinsics.
        R_rot: ``(3, 3)`` rotation from the original camera frame to the crop camera frame.
        size: Side of the square crop in pixels.

    Returns:
        The ``(size, size, C)`` crop, same dtype as ``image``.
    """
    height, width = image.shape[:2]
    map_x, map_y = crop_source_maps(K, dist, K_crop, R_rot, size, (width, height))
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_source_maps(
    K: np.ndarray,
    dist: np.ndarray | None,
    K_crop: np.ndarray,
    R_rot: np.ndarray,
    size: int,
    image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """For every crop pixel, the original-image pixel it samples (``cv2.remap`` maps, ``float32 (size, size)``).

    Rays that leave the camera's field of view (behind it, or so far outside the image that the polynomial
    distortion could fold them back in: undistorted pixel more than half an image beyond the border) map
    to ``-1`` (outside, black).

    Args:
        K: ``(3, 3)`` original intrinsics.
        dist: Original ``(5,)`` distortion, or ``None``.
        K_crop: ``(3, 3)`` crop intrinsics.
        R_rot: ``(3, 3)`` rotation from the original camera frame to the crop camera frame.
        size: Side of the square crop in pixels.
        image_size: ``(width, height)`` of the original image.
    """
    v, u = np.indices((size, size), dtype=np.float64)
    pixels = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    rays = pixels @ np.linalg.inv(K_crop).T @ R_rot  # crop frame -> original frame (row vectors)
    source = project(rays, np.asarray(K, np.float64), None if dist is None else np.asarray(dist, np.float64))
    pinhole = project(rays, np.asarray(K, np.float64))
    width, height = image_size
    usable = (
        (rays[:, 2] > 1e-6)
        & (pinhole[:, 0] > -0.5 * width)
        & (pinhole[:, 0] < 1.5 * width)
        & (pinhole[:, 1] > -0.5 * height)
        & (pinhole[:, 1] < 1.5 * height)
    )
    source[~usable] = -1.0
    source = source.reshape(size, size, 2).astype(np.float32)
    return source[..., 0], source[..., 1]


@dataclass
class PanopticIndex:
    """Every usable annotated hand (frame, person) of some sequences, and the HD cameras that see it.

    Built by :func:`index_sequences`; :class:`Panoptic` and :class:`PanopticMultiView` both draw their items
    from it. Row ``r`` is one annotated hand.

    Attributes:
        sequences: Sequence names.
        cameras: Per sequence, its HD cameras.
        seq: ``(N,)`` sequence index of each row.
        frame: ``(N,)`` HD frame number of each row.
        person: ``(N,)`` person id of each row.
        joints_world: ``(N, 21, 3)`` world joints in mm.
        views: Per row, the local indices of the cameras whose image exists and (with ``require_in_view``)
            that see the whole hand.
    """

    sequences: list[str]
    cameras: list[list[PanopticCamera]]
    seq: np.ndarray
    frame: np.ndarray
    person: np.ndarray
    joints_world: np.ndarray
    views: list[np.ndarray]


def index_sequences(
    root: Path,
    sequences: str | Sequence[str] | None,
    cameras: Sequence[str | int] | None,
    hand: str,
    min_score: float,
    every_nth_frame: int,
    require_in_view: bool,
    name: str = "panoptic",
) -> PanopticIndex:
    """Read the calibrations and hand annotations of ``sequences`` under ``root`` into a :class:`PanopticIndex`.

    Warns once with the counts of skipped frames and once with the skipped camera views (module docstring).

    Args:
        root: Folder holding one sub-folder per sequence (see :data:`PANOPTIC_LAYOUT`).
        sequences: Sequence name(s); ``None`` takes every sequence found under ``root``.
        cameras: HD camera names or node numbers; ``None`` takes every HD camera with an image folder.
        hand: ``"right"`` or ``"left"``.
        min_score: Hands with a mean ``averageScore`` below this are skipped.
        every_nth_frame: Keep every n-th hand annotation file.
        require_in_view: A camera sees a hand only when every joint projects inside its image.
        name: Dataset name the warnings start with.

    Raises:
        DatasetError: A sequence, its calibration, its annotations or a camera's images are missing or malformed.
    """
    names = _sequence_names(root, sequences)
    all_cameras: list[list[PanopticCamera]] = []
    rows_seq, rows_frame, rows_person, rows_joints, rows_views = [], [], [], [], []
    skipped: dict[str, int] = {"missing": 0, "low_score": 0, "non_finite": 0}
    skipped_views = 0
    for seq_index, seq in enumerate(names):
        seq_dir = require_path(root / seq, f"CMU Panoptic sequence folder {seq!r}", PANOPTIC_LAYOUT)
        cams, image_names = _load_cameras(seq_dir, seq, cameras)
        all_cameras.append(cams)
        frames, people, joints = _load_hands(seq_dir, hand, min_score, every_nth_frame, skipped)
        if not frames:
            continue
        poses = np.stack(joints)  # (N, 21, 3) world mm
        views = np.zeros((len(frames), len(cams)), dtype=bool)
        for c, cam in enumerate(cams):
            has_image = np.array([f"{cam.name}_{frame:08d}.jpg" in image_names[c] for frame in frames])
            views[:, c] = has_image & (_in_view(poses, cam) if require_in_view else True)
        skipped_views += int((~views).sum())
        rows_seq += [seq_index] * len(frames)
        rows_frame += frames
        rows_person += people
        rows_joints.append(poses)
        rows_views += list(views)

    reasons = {
        "missing": f"no {hand} hand",
        "low_score": f"mean averageScore < {min_score:g}",
        "non_finite": "NaN/inf in the landmarks",
    }
    warn_skipped(
        name,
        sum(skipped.values()),
        "frames: " + ", ".join(f"{n} with {reasons[k]}" for k, n in skipped.items() if n),
    )
    warn_skipped(name, skipped_views, "camera views: image file missing or hand not fully in view")
    return PanopticIndex(
        sequences=names,
        cameras=all_cameras,
        seq=np.asarray(rows_seq, dtype=np.int64),
        frame=np.asarray(rows_frame, dtype=np.int64),
        person=np.asarray(rows_person, dtype=np.int64),
        joints_world=(
            np.concatenate(rows_joints) if rows_joints else np.zeros((0, NUM_JOINTS, 3), dtype=np.float64)
        ),
        views=[np.flatnonzero(v) for v in rows_views],
    )


def _sequence_names(root: Path, sequences: str | Sequence[str] | None) -> list[str]:
    if sequences is None:
        found = find_sequences(root)
        if not found:
            raise DatasetError(
                f"no CMU Panoptic sequence found under {root} (no <seq>/calibration_<seq>.json)"
                f"\nExpected layout:\n{PANOPTIC_LAYOUT}"
            )
        return found
    return [sequences] if isinstance(sequences, str) else list(sequences)


def _load_cameras(
    seq_dir: Path, seq: str, wanted: Sequence[str | int] | None
) -> tuple[list[PanopticCamera], list[set[str]]]:
    """The chosen HD cameras of one sequence and, for each, the names of its image files."""
    calib_path = require_path(
        seq_dir / f"calibration_{seq}.json", "CMU Panoptic calibration file", PANOPTIC_LAYOUT
    )
    calib = _read_json(calib_path)
    try:
        hd = {cam["name"]: cam for cam in calib["cameras"] if int(cam.get("panel", -1)) == 0}
    except (KeyError, TypeError) as err:
        raise DatasetError(
            f"{calib_path}: expected {{'cameras': [{{'name', 'panel', ...}}]}} ({err})"
        ) from err
    if not hd:
        raise DatasetError(f"{calib_path}: no HD camera (panel 0) in the calibration")
    images_dir = seq_dir / "hdImgs"
    if wanted is None:
        names = [n for n in sorted(hd) if (images_dir / n).is_dir()]
        if not names:
            require_path(images_dir / sorted(hd)[0], "CMU Panoptic HD image folder", PANOPTIC_LAYOUT)
    else:
        names = [f"00_{c:02d}" if isinstance(c, int) else str(c) for c in wanted]
        for n in names:
            if n not in hd:
                raise DatasetError(f"{calib_path}: no HD camera named {n!r} (HD cameras: {sorted(hd)})")
            require_path(images_dir / n, "CMU Panoptic HD image folder", PANOPTIC_LAYOUT)
    cams, image_names = [], []
    for n in names:
        files = {e.name for e in os.scandir(images_dir / n) if e.name.endswith(".jpg")}
        if not files:
            raise DatasetError(f"CMU Panoptic HD image folder is empty: {images_dir / n}")
        first = images_dir / n / min(files)
        try:
            with Image.open(first) as img:
                width, height = img.size
        except (OSError, SyntaxError) as err:
            raise DatasetError(f"corrupt or truncated image file: {first} ({err})") from err
        cam = hd[n]
        try:
            cams.append(
                PanopticCamera(
                    name=n,
                    K=np.asarray(cam["K"], dtype=np.float64).reshape(3, 3),
                    R=np.asarray(cam["R"], dtype=np.float64).reshape(3, 3),
                    t=np.asarray(cam["t"], dtype=np.float64).reshape(3) * CM_TO_MM,
                    dist=np.asarray(cam["distCoef"], dtype=np.float64).reshape(-1),
                    width=width,
                    height=height,
                )
            )
        except (KeyError, ValueError) as err:
            raise DatasetError(f"{calib_path}: camera {n!r} lacks K, R, t or distCoef ({err})") from err
        image_names.append(files)
    return cams, image_names


def _load_hands(
    seq_dir: Path, hand: str, min_score: float, every_nth_frame: int, skipped: dict[str, int]
) -> tuple[list[int], list[int], list[np.ndarray]]:
    """Frame, person id and world joints (mm) of every kept ``hand`` of one sequence; counts the skipped ones."""
    hand_dir = require_path(seq_dir / "hdHand3d", "CMU Panoptic hand annotation folder", PANOPTIC_LAYOUT)
    files = sorted((int(m.group(1)), p) for p in hand_dir.iterdir() if (m := _HAND_FILE.match(p.name)))
    if not files:
        raise DatasetError(f"no handRecon3D_hd*.json in {hand_dir}\nExpected layout:\n{PANOPTIC_LAYOUT}")
    key = f"{hand}_hand"
    frames, people, joints = [], [], []
    for frame, path in files[::every_nth_frame]:
        data = _read_json(path)
        found = False
        for person in data.get("people", []):
            if person.get("id", 0) < 0 or key not in person:
                continue
            found = True
            annotation = person[key]
            try:
                landmarks = np.asarray(annotation["landmarks"], dtype=np.float64).reshape(NUM_JOINTS, 3)
            except (KeyError, ValueError) as err:
                raise DatasetError(f"{path}: {key} needs 63 'landmarks' values ({err})") from err
            if not np.isfinite(landmarks).all():
                skipped["non_finite"] += 1
                continue
            score = np.asarray(annotation.get("averageScore", [1.0]), dtype=np.float64)
            if not score.size or float(score.mean()) < min_score:
                skipped["low_score"] += 1
                continue
            frames.append(frame)
            people.append(int(person.get("id", 0)))
            joints.append(landmarks * CM_TO_MM)
        if not found:
            skipped["missing"] += 1
    return frames, people, joints


def _in_view(joints_world: np.ndarray, cam: PanopticCamera) -> np.ndarray:
    """``(N,)`` whether every joint of each ``(N, 21, 3)`` world pose projects inside the camera's image."""
    joints_cam = world_to_camera(joints_world, cam.R, cam.t)
    uv = project(joints_cam, cam.K, cam.dist)
    pinhole = project(joints_cam, cam.K)
    inside = (
        (joints_cam[..., 2] > 0)
        & (uv[..., 0] >= -0.5)
        & (uv[..., 0] <= cam.width - 0.5)
        & (uv[..., 1] >= -0.5)
        & (uv[..., 1] <= cam.height - 0.5)
        & (np.abs(pinhole[..., 0] - cam.width / 2) < cam.width)
        & (np.abs(pinhole[..., 1] - cam.height / 2) < cam.height)
    )
    return np.all(inside, axis=-1)


class _PanopticDataset(HandDataset):
    """What :class:`Panoptic` and :class:`PanopticMultiView` share: the index, image paths and meta.

    Subclasses set ``self._items`` (what one item is) and implement ``load_sample``; mirroring is
    :func:`~handssl.data.base.mirror_sample`'s, applied by :class:`~handssl.data.base.HandDataset`.
    """

    name = "panoptic"
    multiview = False

    def __init__(
        self,
        root: str | Path,
        sequences: str | list[str] | None,
        cameras: list[str | int] | None,
        hand: str,
        min_score: float,
        every_nth_frame: int,
        require_in_view: bool,
        transform: Transform | None,
        mirror_left: bool,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
        self.root = require_path(root, "CMU Panoptic root folder", PANOPTIC_LAYOUT)
        self.hand = hand
        self.min_score = float(min_score)
        self.every_nth_frame = every_nth_frame
        self.require_in_view = require_in_view
        self.camera_selection = cameras  # as given (multi_view hands it on)
        self.index = index_sequences(
            self.root, sequences, cameras, hand, self.min_score, every_nth_frame, require_in_view, self.name
        )
        self.sequences: list[str] = self.index.sequences
        self.cameras: list[list[PanopticCamera]] = self.index.cameras
        self._items = np.zeros(0, dtype=np.int64)

    @staticmethod
    def _check_arguments(hand: str, every_nth_frame: int) -> None:
        if hand not in ("right", "left"):
            raise ValueError(f"hand must be 'right' or 'left', got {hand!r}")
        if every_nth_frame < 1:
            raise ValueError(f"every_nth_frame must be >= 1, got {every_nth_frame}")

    def _require_items(self, what: str) -> None:
        if len(self._items) == 0:
            raise DatasetError(
                f"CMU Panoptic under {self.root} (sequences {self.sequences}): no usable {self.hand}-hand "
                f"{what} after filtering (see the warnings)"
            )

    def __len__(self) -> int:
        return len(self._items)

    def _index_camera_views(self) -> None:
        """One item per (row, camera that sees it): the single-view items."""
        self._items = np.array([(r, c) for r, v in enumerate(self.index.views) for c in v], dtype=np.int64)
        self._require_items("camera view")

    def _load_camera_view(self, index: int) -> Sample:
        row, c = (int(i) for i in self._items[index])
        seq = int(self.index.seq[row])
        cam = self.cameras[seq][c]
        world = self.index.joints_world[row]
        joints3d = world_to_camera(world, cam.R, cam.t)
        return {
            "image": load_image(self._image_path(seq, cam, int(self.index.frame[row]))),
            "joints3d": joints3d.astype(np.float32),
            "joints2d": project(joints3d, cam.K, cam.dist).astype(np.float32),
            "K": cam.K.astype(np.float32),
            "valid": np.ones(NUM_JOINTS, dtype=bool),
            "R": cam.R.astype(np.float32),
            "t": cam.t.astype(np.float32),
            "dist": _pad5(cam.dist).astype(np.float32),
            "joints3d_world": world.astype(np.float32),
            "meta": {**self._meta(row), "camera": cam.name, "distorted": True},
        }

    def _image_path(self, seq: int, cam: PanopticCamera, frame: int) -> Path:
        return self.root / self.sequences[seq] / "hdImgs" / cam.name / f"{cam.name}_{frame:08d}.jpg"

    def _meta(self, row: int) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "subject": str(int(self.index.person[row])),
            "sequence": self.sequences[self.index.seq[row]],
            "frame": int(self.index.frame[row]),
            "hand": self.hand,
            "unit": "cm",
            "root_joint": "wrist",
        }


class Panoptic(_PanopticDataset):
    """CMU Panoptic hands from the HD cameras, one (frame, camera) per item.

    Items follow the sample contract with the full original image (``uint8 H x W x 3``), ``joints3d`` in that
    camera's frame (mm), distorted ``joints2d``, ``K``, ``valid`` (all True) and additionally ``R (3, 3)``,
    ``t (3,)`` (world -> camera, mm), ``dist (5,)`` and ``joints3d_world (21, 3)`` (mm).

    Mirroring (``mirror_left``) flips the image and 2D, negates camera-frame x, and keeps the world: ``R`` and
    ``t`` become ``F R`` and ``F t`` with ``F = diag(-1, 1, 1)`` (a reflection, ``det = -1``), and ``dist``'s
    ``p2`` changes sign.

    Args:
        root: Folder holding one sub-folder per sequence (see :data:`PANOPTIC_LAYOUT`).
        sequences: Sequence name(s); ``None`` takes every sequence found under ``root``.
        cameras: HD cameras to use, as names (``"00_03"``) or node numbers (``3``); ``None`` takes every HD
            camera of the calibration that has an ``hdImgs/00_XX`` folder.
        hand: ``"right"`` or ``"left"``.
        min_score: Frames whose hand has a mean ``averageScore`` below this are skipped (public loaders
            use 0.001).
        every_nth_frame: Keep every n-th hand annotation file (consecutive HD frames are near duplicates).
        require_in_view: Skip camera views in which some joint projects outside the image.
        transform: Applied to every item after loading.
        mirror_left: Mirror left hands into right hands.
    """

    def __init__(
        self,
        root: str | Path,
        sequences: str | list[str] | None = None,
        cameras: list[str | int] | None = None,
        hand: str = "right",
        min_score: float = 0.001,
        every_nth_frame: int = 1,
        require_in_view: bool = True,
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        self._check_arguments(hand, every_nth_frame)
        super().__init__(
            root,
            sequences,
            cameras,
            hand,
            min_score,
            every_nth_frame,
            require_in_view,
            transform,
            mirror_left,
        )
        self._index_camera_views()

    def load_sample(self, index: int) -> Sample:
        return self._load_camera_view(index)

    def multi_view(
        self, num_views: int = 2, image_size: int | None = None, **arguments: Any
    ) -> PanopticMultiView:
        """This dataset's multi-view form: :class:`PanopticMultiView` (``multiview=True``) of the same frames.

        What multi-view views (:class:`~handssl.data.views.NVSPairs`) read, so that one data config serves
        single- and multi-view methods. The sibling keeps ``root``, ``sequences``, ``cameras``, ``hand``,
        ``min_score``, ``every_nth_frame``, ``require_in_view`` and ``mirror_left``; ``transform`` (it would
        see single-view samples) is not carried over.

        Args:
            num_views: Views per item.
            image_size: Side of the crops (``crop_size``), the DataModule's image side; ``None`` keeps
                :class:`PanopticMultiView`'s default.
            **arguments: Any other :class:`PanopticMultiView` argument (``crop_extent_mm``, ``seed``, ...), or
                one of the above to override.
        """
        kept: dict[str, Any] = {
            "root": self.root,
            "sequences": list(self.sequences),
            "cameras": self.camera_selection,
            "hand": self.hand,
            "min_score": self.min_score,
            "every_nth_frame": self.every_nth_frame,
            "require_in_view": self.require_in_view,
            "mirror_left": self.mirror_left,
        }
        if image_size is not None:
            kept["crop_size"] = image_size
        return PanopticMultiView(multiview=True, num_views=num_views, **{**kept, **arguments})


class PanopticMultiView(_PanopticDataset):
    """CMU Panoptic hands from the HD cameras as multi-view crops of one frame, for novel-view synthesis.

    Items hold ``num_views`` cameras of one frame as crops through crop cameras
    (:func:`handssl.geometry.crop_camera`: each shares its real camera's centre and looks at the hand centre,
    so crops of different views are related by pure rotations). The original distorted image is resampled
    for every crop pixel (:func:`remap_through_crop`). Keys, as in SynthHands' multi-view items:
    ``image (V, 3, S, S)`` float in ``[0, 1]``; ``background (V, 3, S, S)``, the camera's background (median
    over ``background_frames`` frames of the full image, cached on disk) through the same crop camera;
    ``joints3d (V, 21, 3)`` crop-camera frame mm; ``joints2d (V, 21, 2)``; ``K (V, 3, 3)`` crop intrinsics;
    ``R (V, 3, 3)``, ``t (V, 3)`` world -> crop camera; ``valid (V, 21)``; ``joints3d_world (21, 3)``;
    ``image_t2 (V, 3, S, S)``, the same cameras at another frame t' of the same sequence and person (cropped
    around the hand at t'); and ``meta`` (``cameras`` list, ``frame_t2``). Views and t' are drawn
    deterministically from ``(seed, index)``.

    Mirroring (``mirror_left``) flips images and 2D, negates camera-frame x, and keeps the world: ``R`` and
    ``t`` become ``F R`` and ``F t`` with ``F = diag(-1, 1, 1)`` (relative rotations between views stay
    proper rotations).

    For backward compatibility ``PanopticMultiView(..., multiview=False)``, the default, still gives the
    single-view items of :class:`Panoptic` (with a ``DeprecationWarning``; the multi-view arguments are then
    ignored). Pass ``multiview=True`` for multi-view items.

    Args:
        root, sequences, cameras, hand, min_score, every_nth_frame, require_in_view: As in :class:`Panoptic`.
        multiview: ``True`` for multi-view items; ``False`` (deprecated) for :class:`Panoptic`'s items.
        num_views: Views per item.
        crop_size: Side of the crops in pixels.
        crop_extent_mm: Side of the square (at the hand centre's depth) a crop covers, mm.
        t2_min_gap: Smallest distance in HD frames between t and t' (falls back to any other frame).
        background_frames: Frames (evenly spaced over the camera's images) of the background median.
        cache_dir: Where backgrounds are cached; ``None`` uses ``<root>/<seq>/.handssl_cache/``, otherwise
            ``<cache_dir>/<seq>/``.
        seed: Seed of the per-item view and t' choice.
        transform: Applied to every item after loading.
        mirror_left: Mirror left hands into right hands.
    """

    def __init__(
        self,
        root: str | Path,
        sequences: str | list[str] | None = None,
        cameras: list[str | int] | None = None,
        hand: str = "right",
        min_score: float = 0.001,
        every_nth_frame: int = 1,
        require_in_view: bool = True,
        multiview: bool = False,
        num_views: int = 2,
        crop_size: int = 128,
        crop_extent_mm: float = 250.0,
        t2_min_gap: int = 30,
        background_frames: int = 50,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        self._check_arguments(hand, every_nth_frame)
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if crop_size < 8:
            raise ValueError(f"crop_size must be >= 8 pixels, got {crop_size}")
        if crop_extent_mm <= 0:
            raise ValueError(f"crop_extent_mm must be > 0, got {crop_extent_mm}")
        if background_frames < 1:
            raise ValueError(f"background_frames must be >= 1, got {background_frames}")
        super().__init__(
            root,
            sequences,
            cameras,
            hand,
            min_score,
            every_nth_frame,
            require_in_view,
            transform,
            mirror_left,
        )
        self.num_views = num_views
        self.crop_size = crop_size
        self.crop_extent_mm = float(crop_extent_mm)
        self.t2_min_gap = t2_min_gap
        self.background_frames = background_frames
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.seed = seed
        self._backgrounds: dict[tuple[int, int], np.ndarray] = {}
        self.multiview = multiview
        if not multiview:
            warnings.warn(
                "PanopticMultiView(multiview=False) gives single-view items: use handssl.data.Panoptic",
                DeprecationWarning,
                stacklevel=2,
            )
            self._index_camera_views()
            return
        views = self.index.views
        self._items = np.array([r for r, v in enumerate(views) if len(v) >= num_views], dtype=np.int64)
        warn_skipped(
            self.name, len(views) - len(self._items), f"frames seen by fewer than {num_views} cameras"
        )
        self._require_items("multi-view frame")

    def _choose(self, index: int) -> tuple[int, np.ndarray, int]:
        """The item's row, its cameras (local indices) and the row of frame t'."""
        row = int(self._items[index])
        seq, person, frame, views = self.index.seq, self.index.person, self.index.frame, self.index.views
        rng = np.random.default_rng([self.seed, index])
        cams = np.sort(rng.choice(views[row], size=self.num_views, replace=False))
        same_track = np.flatnonzero(
            (seq == seq[row]) & (person == person[row]) & (np.arange(len(seq)) != row)
        )
        seen = [r for r in same_track if np.isin(cams, views[r]).all()]
        far = [r for r in seen if abs(int(frame[r]) - int(frame[row])) >= self.t2_min_gap]
        candidates = far or seen
        row_t2 = int(rng.choice(candidates)) if candidates else row
        return row, cams, row_t2

    def load_sample(self, index: int) -> Sample:
        if not self.multiview:
            return self._load_camera_view(index)
        row, cams, row_t2 = self._choose(index)
        seq = int(self.index.seq[row])
        frame, frame_t2 = int(self.index.frame[row]), int(self.index.frame[row_t2])
        world, world_t2 = self.index.joints_world[row], self.index.joints_world[row_t2]
        center, center_t2 = world.mean(0), world_t2.mean(0)
        out: dict[str, list[np.ndarray]] = {
            k: [] for k in ("image", "background", "image_t2", "K", "R", "t", "j3", "j2")
        }
        for c in cams:
            cam = self.cameras[seq][c]
            crop = crop_camera(cam.K, cam.R, cam.t, center, self.crop_size, self.crop_extent_mm)
            crop_t2 = crop_camera(cam.K, cam.R, cam.t, center_t2, self.crop_size, self.crop_extent_mm)
            for key, image, at in (
                ("image", load_image(self._image_path(seq, cam, frame)), crop),
                ("background", self.background(seq, int(c)), crop),
                ("image_t2", load_image(self._image_path(seq, cam, frame_t2)), crop_t2),
            ):
                out[key].append(remap_through_crop(image, cam.K, cam.dist, at.K, at.R_rot, self.crop_size))
            joints3d = world_to_camera(world, crop.R, crop.t)
            out["K"].append(crop.K)
            out["R"].append(crop.R)
            out["t"].append(crop.t)
            out["j3"].append(joints3d)
            out["j2"].append(project(joints3d, crop.K))
        names = [self.cameras[seq][c].name for c in cams]
        meta = {**self._meta(row), "camera": ",".join(names), "cameras": names, "frame_t2": frame_t2}

        def images(key: str) -> torch.Tensor:
            return torch.from_numpy(np.stack(out[key]).transpose(0, 3, 1, 2).copy()).float() / 255.0

        def floats(key: str) -> torch.Tensor:
            return torch.from_numpy(np.stack(out[key])).float()

        return {
            "image": images("image"),
            "background": images("background"),
            "image_t2": images("image_t2"),
            "joints3d": floats("j3"),
            "joints2d": floats("j2"),
            "K": floats("K"),
            "R": floats("R"),
            "t": floats("t"),
            "valid": torch.ones(len(cams), NUM_JOINTS, dtype=torch.bool),
            "joints3d_world": torch.from_numpy(world).float(),
            "meta": meta,
        }

    # ------------------------------------------------------------------------------------- background

    def background_path(self, seq: int, camera: int) -> Path:
        """Cache file of the background of camera ``camera`` (local index) of sequence ``seq``."""
        name = self.sequences[seq]
        folder = self.root / name / ".handssl_cache" if self.cache_dir is None else self.cache_dir / name
        return folder / f"background_{self.cameras[seq][camera].name}_n{self.background_frames}.png"

    def background(self, seq: int, camera: int) -> np.ndarray:
        """The background of camera ``camera`` (local index) of sequence ``seq``, ``uint8 (H, W, 3)``.

        It is the per-pixel median over ``background_frames`` frames evenly spaced over the camera's images,
        computed once and then read from the disk cache (:meth:`background_path`).
        """
        key = (seq, camera)
        if key in self._backgrounds:
            return self._backgrounds[key]
        path = self.background_path(seq, camera)
        if path.is_file():
            image = load_image(path)
        else:
            image = self._compute_background(seq, camera)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
                Image.fromarray(image).save(tmp)
                os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
            except OSError as err:
                warnings.warn(
                    f"{self.name}: cannot write the background cache {path} ({err}); set cache_dir to a "
                    "writable folder to avoid recomputing it",
                    stacklevel=2,
                )
        self._backgrounds[key] = image
        return image

    def compute_backgrounds(self) -> list[Path]:
        """Compute (or find) the cached background of every camera of every sequence; return the cache files.

        Call it once before training so that DataLoader workers do not each compute them on first use.
        """
        from handssl._progress import progress

        pairs = [(seq, camera) for seq, cams in enumerate(self.cameras) for camera in range(len(cams))]
        paths = []
        for seq, camera in progress(pairs, "Panoptic backgrounds"):
            self.background(seq, camera)
            paths.append(self.background_path(seq, camera))
        return paths

    def _compute_background(self, seq: int, camera: int) -> np.ndarray:
        cam = self.cameras[seq][camera]
        folder = self.root / self.sequences[seq] / "hdImgs" / cam.name
        files = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".jpg"))
        picks = np.unique(np.linspace(0, len(files) - 1, min(self.background_frames, len(files))).round())
        stack = np.stack([load_image(folder / files[int(i)]) for i in picks])
        background = np.empty(stack.shape[1:], dtype=np.uint8)
        rows = max(1, 2**22 // max(1, stack[0, 0].size * len(stack)))  # bound the float64 median's memory
        for start in range(0, stack.shape[1], rows):
            background[start : start + rows] = np.median(stack[:, start : start + rows], axis=0).round()
        return background


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"malformed json file {path}: {err}") from err


def _pad5(dist: np.ndarray) -> np.ndarray:
    out = np.zeros(5, dtype=np.float64)
    out[: min(5, dist.size)] = dist[:5]
    return out
