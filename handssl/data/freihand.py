"""FreiHAND (Zimmermann et al., ICCV 2019): right hands, 224x224 crops, metres in the files.

On disk (the ``FreiHAND_pub_v2`` release)::

    <root>/training_K.json  training_xyz.json  (training_mano.json, training_verts.json: not read)
    <root>/training/rgb/%08d.jpg     versions gs, hom, sample, auto: id + N * version_index
    <root>/training/mask/%08d.jpg    one per unique sample (shared by the versions)
    <root>/evaluation_K.json  (evaluation_xyz.json, released later: optional)
    <root>/evaluation/rgb/%08d.jpg

What the loader does: metres -> mm; the joints are already canonical (root = wrist) and in the camera frame;
2D = pinhole projection with the sample's ``K`` (FreiHAND images are undistorted). ``N`` is the length of the
json lists, never a hard-coded 32560. Non-finite values in an annotation raise a :class:`DatasetError` at
construction naming the file and rows (skipping would break the alignment with the official evaluation
order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from handssl.data.base import DatasetError, HandDataset, Sample, Transform, load_image, require_path
from handssl.geometry import project
from handssl.skeleton import NUM_JOINTS

__all__ = ["FREIHAND_LAYOUT", "FREIHAND_VERSIONS", "FreiHAND"]

FREIHAND_VERSIONS: tuple[str, ...] = ("gs", "hom", "sample", "auto")
"""Training image versions, in the order of the id offsets (green screen, homogenised, sampled, auto)."""

FREIHAND_LAYOUT = """\
<root>/                      (FreiHAND_pub_v2)
  training_K.json  training_xyz.json
  training/rgb/00000000.jpg ...   training/mask/00000000.jpg ...
  evaluation_K.json  [evaluation_xyz.json]
  evaluation/rgb/00000000.jpg ..."""

M_TO_MM = 1000.0
MASK_THRESHOLD = 128
"""Masks are JPEGs (lossy): a pixel belongs to the hand when its value is >= this."""


class FreiHAND(HandDataset):
    """FreiHAND training or evaluation samples (all right hands).

    Samples follow the contract: ``image`` ``uint8 224 x 224 x 3``, ``joints3d`` mm camera frame, ``joints2d``
    (projection with ``K``), ``K``, ``valid`` (all True, or all False for evaluation samples when
    ``evaluation_xyz.json`` is absent, with NaN joints), ``mask`` (training only, when ``training/mask``
    exists: ``uint8`` 0/1) and ``meta`` (``frame`` = sample id, ``sequence`` = version, ``image_id``).

    Args:
        root: The FreiHAND folder (see :data:`FREIHAND_LAYOUT`).
        split: ``"training"`` or ``"evaluation"``.
        version: Training image version ``"gs"``, ``"hom"``, ``"sample"`` or ``"auto"``; evaluation has only
            ``"gs"``.
        load_mask: Return the hand mask of training samples when the mask folder exists.
        transform: Applied to every sample after loading.
        mirror_left: Mirror left hands (FreiHAND has none; kept for a uniform interface).
    """

    name = "freihand"
    eval_protocol = "freihand"

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        version: str = "gs",
        load_mask: bool = True,
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
        if split not in ("training", "evaluation"):
            raise ValueError(f"split must be 'training' or 'evaluation', got {split!r}")
        if version not in FREIHAND_VERSIONS:
            raise ValueError(f"version must be one of {FREIHAND_VERSIONS}, got {version!r}")
        if split == "evaluation" and version != "gs":
            raise ValueError(f"FreiHAND evaluation images exist only in version 'gs', got {version!r}")
        self.root = require_path(root, "FreiHAND root folder", FREIHAND_LAYOUT)
        self.split = split
        self.version = version

        K_path = require_path(
            self.root / f"{split}_K.json", f"FreiHAND {split} intrinsics file", FREIHAND_LAYOUT
        )
        self._K = _load_array(K_path, (3, 3))
        xyz_path = self.root / f"{split}_xyz.json"
        if split == "training":
            require_path(xyz_path, "FreiHAND training joints file", FREIHAND_LAYOUT)
        self.has_joints = xyz_path.is_file()
        if self.has_joints:
            self._xyz_mm = _load_array(xyz_path, (NUM_JOINTS, 3)) * M_TO_MM
            if len(self._xyz_mm) != len(self._K):
                raise DatasetError(
                    f"FreiHAND {split}: {xyz_path.name} has {len(self._xyz_mm)} entries but {K_path.name} has "
                    f"{len(self._K)}"
                )
        self.num_unique = len(self._K)
        if self.num_unique == 0:
            raise DatasetError(f"FreiHAND {split}: {K_path} is an empty list")
        self.id_offset = self.num_unique * FREIHAND_VERSIONS.index(version)
        self.rgb_dir = require_path(
            self.root / split / "rgb", f"FreiHAND {split} image folder", FREIHAND_LAYOUT
        )
        for sample_id in (0, self.num_unique - 1):  # cheap check that this version's images are there
            require_path(self._rgb_path(sample_id), f"FreiHAND {split} image ({version})", FREIHAND_LAYOUT)
        mask_dir = self.root / split / "mask"
        self.mask_dir = mask_dir if load_mask and split == "training" and mask_dir.is_dir() else None

    def _rgb_path(self, sample_id: int) -> Path:
        return self.rgb_dir / f"{sample_id + self.id_offset:08d}.jpg"

    def __len__(self) -> int:
        return self.num_unique

    def load_sample(self, index: int) -> Sample:
        K = self._K[index]
        if self.has_joints:
            joints3d = self._xyz_mm[index]
            joints2d = project(joints3d, K)
            valid = np.ones(NUM_JOINTS, dtype=bool)
        else:
            joints3d = np.full((NUM_JOINTS, 3), np.nan)
            joints2d = np.full((NUM_JOINTS, 2), np.nan)
            valid = np.zeros(NUM_JOINTS, dtype=bool)
        sample: dict[str, Any] = {
            "image": load_image(self._rgb_path(index)),
            "joints3d": joints3d.astype(np.float32),
            "joints2d": joints2d.astype(np.float32),
            "K": K.astype(np.float32),
            "valid": valid,
            "meta": {
                "dataset": self.name,
                "subject": "",
                "sequence": self.version,
                "frame": index,
                "camera": "",
                "hand": "right",
                "split": self.split,
                "image_id": index + self.id_offset,
                "unit": "m",
                "root_joint": "wrist",
            },
        }
        if self.mask_dir is not None:
            mask = load_image(self.mask_dir / f"{index:08d}.jpg", mode="L")
            sample["mask"] = (mask >= MASK_THRESHOLD).astype(np.uint8)
        return sample


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Read a json list of equally shaped arrays; reject wrong shapes and non-finite rows by name."""
    try:
        with open(path) as f:
            data = json.load(f)
        array = np.asarray(data, dtype=np.float64)
    except json.JSONDecodeError as err:
        raise DatasetError(f"malformed json file {path}: {err}") from err
    except (ValueError, TypeError) as err:
        raise DatasetError(f"{path}: expected a list of {shape} arrays ({err})") from err
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, *shape)
    if array.shape[1:] != shape:
        raise DatasetError(f"{path}: expected a list of {shape} arrays, got shape {array.shape}")
    if len(array) == 0:
        raise DatasetError(f"{path} is an empty list: no annotations (expected a list of {shape} arrays)")
    bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(-1))
    if bad.size:
        rows = ", ".join(str(int(r)) for r in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise DatasetError(f"{path}: NaN or inf in row(s) {rows} (of {len(array)})")
    return array
