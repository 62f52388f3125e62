"""RHD, the Rendered Hand Pose Dataset (Zimmermann & Brox, ICCV 2017).

Each sample renders one person with two hands; the loader keeps one hand (by default the one with more
mask pixels, like hand3d and bihand) and returns its 21 joints in canonical order, converted from metres
to millimetres, in the camera frame of the 320x320 image.

``valid`` follows the per-joint visibility flag ``uv_vis[:, 2] == 1`` (the dataset's 2D annotation
convention). RHD has exact 3D for *every* joint, so ``joints3d`` is filled everywhere; pass
``valid_from="all"`` to mark every joint valid for 3D supervision. ``meta["visible"]`` always holds the
visibility flags.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from handssl.data.base import (
    DatasetError,
    HandDataset,
    Sample,
    Transform,
    load_image,
    require_path,
    warn_skipped,
)
from handssl.skeleton import RHD_TO_CANONICAL

__all__ = ["RHD", "RHD_LAYOUT", "decode_rhd_depth"]

RHD_LAYOUT = """\
<root>/                      (RHD_published_v2)
  training/
    color/00000.png ...      320x320 RGB
    mask/00000.png ...       320x320 part labels
    depth/00000.png ...      (only needed with load_depth=True)
    anno_training.pickle
  evaluation/
    color/ mask/ depth/
    anno_evaluation.pickle"""

SPLITS = ("training", "evaluation")
HANDS = ("auto", "left", "right")
VALID_FROM = ("visibility", "all")

# Mask labels (datasets.md §1): 0 background, 1 person, 2..17 left hand, 18..33 right hand.
_MASK_LABELS = {"left": (2, 17), "right": (18, 33)}
_ROWS = {"left": slice(0, 21), "right": slice(21, 42)}


def decode_rhd_depth(depth_rgb: np.ndarray) -> np.ndarray:
    """Decode an RHD depth PNG (``H x W x 3`` uint8, RGB order) to depth in millimetres.

    The 16-bit value is ``R * 256 + G`` (top bits in red, bottom bits in green) and spans 0-5 m.

    Returns:
        ``float32 (H, W)`` depth in mm.
    """
    if depth_rgb.ndim != 3 or depth_rgb.shape[-1] < 2:
        raise DatasetError(f"RHD depth image must be H x W x 3 (RGB), got shape {depth_rgb.shape}")
    q = depth_rgb[..., 0].astype(np.float64) * 256.0 + depth_rgb[..., 1].astype(np.float64)
    return (q / 65535.0 * 5000.0).astype(np.float32)


class RHD(HandDataset):
    """RHD loader: one hand per sample, canonical order, mm, camera frame of the 320x320 image.

    Samples whose annotation has NaN or inf in a joint that would be valid (or in ``K``) are skipped
    at construction, with one warning giving the count.

    Args:
        root: The ``RHD_published_v2`` folder (containing ``training/`` and ``evaluation/``).
        split: ``"training"`` (41258 samples) or ``"evaluation"`` (2728).
        hand: ``"auto"`` keeps the hand with more mask pixels (ties go to the right hand); ``"left"`` or
            ``"right"`` always returns that hand, even when it is not in view.
        valid_from: ``"visibility"`` marks the visible joints valid (``uv_vis[:, 2] == 1``); ``"all"``
            marks every joint valid (RHD's 3D is exact for occluded joints too).
        load_depth: Also return ``depth`` (``float32 H x W``, mm), decoded from the depth PNG.
        transform: Applied to every sample (``None`` returns the raw sample).
        mirror_left: Mirror left hands into right hands.

    Sample extras: ``mask`` is the chosen hand's mask (``uint8`` 0/1, all its part labels);
    ``meta`` has ``unit="m"`` (the original unit), ``root_joint="wrist"``, ``visible`` (bool (21,)),
    ``image_path``; ``subject`` is ``"unknown"`` and ``camera`` ``"render"`` (RHD records neither).
    """

    name = "rhd"
    eval_protocol = "rhd"

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        hand: str = "auto",
        valid_from: str = "visibility",
        load_depth: bool = False,
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
        if split not in SPLITS:
            raise ValueError(f"RHD split must be one of {SPLITS}, got {split!r}")
        if hand not in HANDS:
            raise ValueError(f"RHD hand must be one of {HANDS}, got {hand!r}")
        if valid_from not in VALID_FROM:
            raise ValueError(f"RHD valid_from must be one of {VALID_FROM}, got {valid_from!r}")
        self.root = require_path(root, "RHD root folder", RHD_LAYOUT)
        self.split = split
        self.hand = hand
        self.valid_from = valid_from
        self.load_depth = load_depth
        split_dir = require_path(self.root / split, f"RHD {split} folder", RHD_LAYOUT)
        anno_path = require_path(split_dir / f"anno_{split}.pickle", "RHD annotation file", RHD_LAYOUT)
        self.color_dir = require_path(split_dir / "color", "RHD color folder", RHD_LAYOUT)
        self.mask_dir = require_path(split_dir / "mask", "RHD mask folder", RHD_LAYOUT)
        self.depth_dir = split_dir / "depth"
        if load_depth:
            require_path(self.depth_dir, "RHD depth folder (load_depth=True)", RHD_LAYOUT)
        ids, xyz, uv_vis, K = _read_annotations(anno_path)
        keep = _finite_rows(xyz, uv_vis, K, valid_from)
        warn_skipped(
            f"RHD {split}", int((~keep).sum()), f"NaN or inf in a joint that would be valid, in {anno_path}"
        )
        self.ids, self.xyz, self.uv_vis, self.K = ids[keep], xyz[keep], uv_vis[keep], K[keep]

    def __len__(self) -> int:
        return len(self.ids)

    def load_sample(self, index: int) -> Sample:
        sample_id = int(self.ids[index])
        name = f"{sample_id:05d}.png"
        image_path = self.color_dir / name
        image = load_image(image_path)
        labels = load_image(self.mask_dir / name, mode=None)
        if labels.ndim == 3:  # some copies store the labels in an RGB PNG; every channel holds them
            labels = labels[..., 0]
        if labels.shape != image.shape[:2]:
            raise DatasetError(
                f"RHD mask {self.mask_dir / name} is {labels.shape}, image {image_path} is {image.shape[:2]}"
            )
        side = self.hand
        if side == "auto":
            side = "left" if _count_labels(labels, "left") > _count_labels(labels, "right") else "right"
        rows = _ROWS[side]
        order = list(RHD_TO_CANONICAL)
        joints3d = (self.xyz[index, rows][order] * 1000.0).astype(np.float32)
        joints2d = self.uv_vis[index, rows, :2][order].astype(np.float32)
        visible = self.uv_vis[index, rows, 2][order] == 1
        valid = visible.copy() if self.valid_from == "visibility" else np.ones(21, dtype=bool)
        lo, hi = _MASK_LABELS[side]
        sample: Sample = {
            "image": image,
            "joints3d": joints3d,
            "joints2d": joints2d,
            "K": self.K[index].astype(np.float32),
            "valid": valid,
            "mask": ((labels >= lo) & (labels <= hi)).astype(np.uint8),
            "meta": {
                "dataset": "rhd",
                "subject": "unknown",
                "sequence": self.split,
                "frame": sample_id,
                "camera": "render",
                "hand": side,
                "root_joint": "wrist",
                "unit": "m",
                "visible": visible,
                "image_path": str(image_path),
            },
        }
        if self.load_depth:
            sample["depth"] = decode_rhd_depth(load_image(self.depth_dir / name, mode="RGB"))
        return sample


def _count_labels(labels: np.ndarray, side: str) -> int:
    lo, hi = _MASK_LABELS[side]
    return int(((labels >= lo) & (labels <= hi)).sum())


def _read_annotations(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``anno_<split>.pickle`` into sorted ids and stacked ``xyz``, ``uv_vis``, ``K`` arrays."""
    try:
        with open(path, "rb") as fh:
            try:
                annotations = pickle.load(fh)
            except UnicodeDecodeError:  # a copy pickled by Python 2
                fh.seek(0)
                annotations = pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, OSError, AttributeError, ValueError) as err:
        raise DatasetError(f"cannot read RHD annotation file {path}: {err}") from err
    if not isinstance(annotations, dict) or not annotations:
        raise DatasetError(f"RHD annotation file {path} must hold a non-empty dict {{sample_id: annotation}}")
    ids = sorted(annotations)
    expected = {"xyz": (42, 3), "uv_vis": (42, 3), "K": (3, 3)}
    arrays: dict[str, list[np.ndarray]] = {key: [] for key in expected}
    for sample_id in ids:
        anno = annotations[sample_id]
        for key, shape in expected.items():
            value = np.asarray(anno.get(key) if isinstance(anno, dict) else None, dtype=np.float64)
            if value.shape != shape:
                raise DatasetError(
                    f"RHD annotation file {path}, sample {sample_id}: {key!r} must have shape {shape}, "
                    f"got {value.shape if value.ndim else 'nothing'}"
                )
            arrays[key].append(value)
    xyz, uv_vis, K = (np.stack(arrays[key]) for key in expected)
    return np.asarray(ids, dtype=np.int64), xyz, uv_vis, K


def _finite_rows(xyz: np.ndarray, uv_vis: np.ndarray, K: np.ndarray, valid_from: str) -> np.ndarray:
    """Samples with finite ``K`` and finite 3D and 2D in every joint that could be marked valid."""
    would_be_valid = uv_vis[..., 2] == 1 if valid_from == "visibility" else np.ones(xyz.shape[:2], bool)
    finite = np.isfinite(xyz).all(-1) & np.isfinite(uv_vis[..., :2]).all(-1)
    return (finite | ~would_be_valid).all(-1) & np.isfinite(K).all((-1, -2))
