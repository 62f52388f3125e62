"""CMU HandDB single-view 2D hand keypoints (Simon et al., CVPR 2017): ``hand143_panopticdb`` and ``hand_labels``.

On disk (the two downloads, unpacked side by side)::

    <root>/hand143_panopticdb/hands_v143_14817.json   {"root": [{"img_paths", "joint_self" (21 x [x, y, flag])}]}
    <root>/hand143_panopticdb/imgs/00000000.jpg ...
    <root>/hand_labels/manual_train/<name>.jpg + <name>.json   {"hand_pts" (21 x [x, y, flag]), "is_left"}
    <root>/hand_labels/manual_test/...

``root`` may also point directly at ``hand143_panopticdb/``, at ``hand_labels/`` or at a ``manual_*`` folder.

What the loader does: 2D only. Keypoints are already canonical (OpenPose order, root = wrist); a joint is
``valid`` when its flag is 1 (its ``joints2d`` is NaN otherwise); ``joints3d`` is all NaN. ``K`` is a
*nominal, uncalibrated* pinhole (focal = the image's larger side unless given, principal point at the
image centre), so that crop transforms have a ``K`` to update; do not use it for 3D. Hand side:
``is_left`` for ``hand_labels`` (else the ``_l``/``_r`` file suffix); ``hand143_panopticdb`` has no side
information, so its samples get ``unknown_hand`` (``"unknown"`` by default, which ``mirror_left`` leaves
alone). Entries with a NaN/inf in a joint flagged valid, or with no valid joint, are skipped (one warning).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from handssl.data.base import (
    DatasetError,
    HandDataset,
    Sample,
    Transform,
    load_image,
    nan_joints,
    require_path,
    warn_skipped,
)
from handssl.skeleton import NUM_JOINTS

__all__ = ["HANDDB_LAYOUT", "HANDDB_SUBSETS", "PanopticHandDB", "nominal_intrinsics"]

HANDDB_SUBSETS: tuple[str, ...] = ("panopticdb", "manual_train", "manual_test")

HANDDB_LAYOUT = """\
<root>/
  hand143_panopticdb/hands_v143_14817.json
  hand143_panopticdb/imgs/00000000.jpg ...
  hand_labels/manual_train/000015774_01_l.jpg, 000015774_01_l.json ...
  hand_labels/manual_test/...
(root may also be hand143_panopticdb/, hand_labels/ or a manual_* folder itself)"""


def nominal_intrinsics(width: int, height: int, focal_px: float | None = None) -> np.ndarray:
    """An uncalibrated pinhole ``K`` for an image: focal ``focal_px`` (default the larger side), centred.

    The principal point is the image centre ``((W - 1) / 2, (H - 1) / 2)`` (pixel centres at integers).
    """
    focal = float(max(width, height)) if focal_px is None else float(focal_px)
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


class PanopticHandDB(HandDataset):
    """CMU HandDB 2D hand keypoints: the multiview-bootstrapped Panoptic set or the manual MPII/NZSL labels.

    Samples follow the contract with ``joints3d`` all NaN, ``joints2d`` pixels (NaN where not labelled),
    ``valid`` from the flags (it describes the 2D labels), ``valid3d`` all False (no 3D label anywhere), the
    nominal ``K`` of :func:`nominal_intrinsics` and ``meta["calibrated"] = False``; ``meta["box_center"]``
    holds the annotated hand-box centre when present.

    Args:
        root: Folder holding ``hand143_panopticdb/`` and/or ``hand_labels/`` (or the subset folder itself).
        subset: ``"panopticdb"`` (14817 annotations, train only), ``"manual_train"`` or ``"manual_test"``.
        nominal_focal_px: Focal length of the nominal ``K``; ``None`` uses the image's larger side.
        unknown_hand: ``meta["hand"]`` where the data says nothing about the side (``hand143_panopticdb``):
            ``"unknown"``, ``"right"`` or ``"left"``.
        transform: Applied to every sample after loading.
        mirror_left: Mirror left hands into right hands.
    """

    name = "handdb"

    def __init__(
        self,
        root: str | Path,
        subset: str = "panopticdb",
        nominal_focal_px: float | None = None,
        unknown_hand: str = "unknown",
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
        if subset not in HANDDB_SUBSETS:
            raise ValueError(f"subset must be one of {HANDDB_SUBSETS}, got {subset!r}")
        if unknown_hand not in ("unknown", "right", "left"):
            raise ValueError(f"unknown_hand must be 'unknown', 'right' or 'left', got {unknown_hand!r}")
        if nominal_focal_px is not None and nominal_focal_px <= 0:
            raise ValueError(f"nominal_focal_px must be > 0, got {nominal_focal_px}")
        self.root = require_path(root, "CMU HandDB root folder", HANDDB_LAYOUT)
        self.subset = subset
        self.nominal_focal_px = nominal_focal_px
        self.unknown_hand = unknown_hand
        self._images: list[Path] = []
        self._joints: list[np.ndarray] = []  # (21, 3): x, y, flag
        self._hands: list[str] = []
        self._boxes: list[Any] = []
        self._sources: list[str] = []
        if subset == "panopticdb":
            self.folder = self._index_panopticdb()
        else:
            self.folder = self._index_hand_labels()
        if not self._images:
            raise DatasetError(f"CMU HandDB {subset} in {self.folder}: no usable annotation")

    # ----------------------------------------------------------------------------------------- indexing

    def _index_panopticdb(self) -> Path:
        candidates = [self.root / "hand143_panopticdb", self.root]
        for folder in candidates:
            found = sorted(folder.glob("hands_v143_*.json")) if folder.is_dir() else []
            if found:
                break
        else:
            raise DatasetError(
                f"CMU HandDB panopticdb annotation file not found: {candidates[0] / 'hands_v143_14817.json'} "
                f"(nor {self.root / 'hands_v143_*.json'})\nExpected layout:\n{HANDDB_LAYOUT}"
            )
        path = found[-1]
        try:
            entries = _read_json(path)["root"]
        except (KeyError, TypeError) as err:
            raise DatasetError(f"{path}: expected {{'root': [entries]}} ({err})") from err
        skipped = 0
        for row, entry in enumerate(entries):
            joints = _parse_points(entry, "joint_self", path, row)
            if joints is None:
                skipped += 1
                continue
            image = entry.get("img_paths", f"imgs/{row:08d}.jpg")
            self._add(folder / image, joints, self.unknown_hand, entry.get("objpos"), f"{path.name}[{row}]")
        warn_skipped(
            f"{self.name} panopticdb", skipped, "NaN/inf in a joint flagged valid, or no valid joint"
        )
        return folder

    def _index_hand_labels(self) -> Path:
        candidates = [self.root / "hand_labels" / self.subset, self.root / self.subset]
        if self.root.name == self.subset:
            candidates.insert(0, self.root)
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            not_a_folder = require_path(candidates[0], f"CMU HandDB {self.subset} folder", HANDDB_LAYOUT)
            raise DatasetError(
                f"CMU HandDB {self.subset}: {not_a_folder} is not a folder\nExpected layout:\n{HANDDB_LAYOUT}"
            )
        files = sorted(folder.glob("*.json"))
        if not files:
            raise DatasetError(
                f"CMU HandDB {self.subset}: no annotation (*.json) in {folder}\nExpected layout:\n{HANDDB_LAYOUT}"
            )
        skipped = 0
        for path in files:
            entry = _read_json(path)
            joints = _parse_points(entry, "hand_pts", path, None)
            if joints is None:
                skipped += 1
                continue
            if "is_left" in entry:
                hand = "left" if int(entry["is_left"]) else "right"
            elif path.stem.endswith(("_l", "_r")):
                hand = "left" if path.stem.endswith("_l") else "right"
            else:
                hand = self.unknown_hand
            self._add(path.with_suffix(".jpg"), joints, hand, entry.get("hand_box_center"), path.name)
        warn_skipped(
            f"{self.name} {self.subset}", skipped, "NaN/inf in a joint flagged valid, or no valid joint"
        )
        return folder

    def _add(self, image: Path, joints: np.ndarray, hand: str, box: Any, source: str) -> None:
        self._images.append(image)
        self._joints.append(joints)
        self._hands.append(hand)
        self._boxes.append(None if box is None else [float(b) for b in box])
        self._sources.append(source)

    # ---------------------------------------------------------------------------------------- samples

    def __len__(self) -> int:
        return len(self._images)

    def load_sample(self, index: int) -> Sample:
        image = load_image(self._images[index])
        height, width = image.shape[:2]
        points = self._joints[index]
        valid = points[:, 2] == 1
        joints2d = np.where(valid[:, None], points[:, :2], np.nan)
        return {
            "image": image,
            "joints3d": nan_joints(),
            "joints2d": joints2d.astype(np.float32),
            "K": nominal_intrinsics(width, height, self.nominal_focal_px).astype(np.float32),
            "valid": valid,
            "valid3d": np.zeros(NUM_JOINTS, dtype=bool),
            "meta": {
                "dataset": self.name,
                "subject": self._images[index].stem,
                "sequence": self.subset,
                "frame": index,
                "camera": "",
                "hand": self._hands[index],
                "calibrated": False,
                "box_center": self._boxes[index],
                "source": self._sources[index],
                "unit": "px",
                "root_joint": "wrist",
            },
        }


def _read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"malformed json file {path}: {err}") from err


def _parse_points(entry: Any, key: str, path: Path, row: int | None) -> np.ndarray | None:
    """``(21, 3)`` x, y, flag; ``None`` when a valid joint is non-finite or nothing is valid."""
    where = f"{path}" if row is None else f"{path} entry {row}"
    try:
        points = np.asarray(entry[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{where}: expected {key!r} as 21 x [x, y, flag] ({err})") from err
    if points.shape != (NUM_JOINTS, 3):
        raise DatasetError(f"{where}: expected {key!r} of shape (21, 3), got {points.shape}")
    valid = points[:, 2] == 1
    if not valid.any() or not np.isfinite(points[valid, :2]).all():
        return None
    return points
