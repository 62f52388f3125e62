"""STB, the Stereo Hand Pose Tracking Benchmark (Zhang et al., ICIP 2017).

Six backgrounds (B1..B6) x two sequences (Counting, Random), one left hand, 640x480 images from a
RealSense SK colour camera and a Bumblebee BB stereo pair. Labels (``labels/<seq>_SK.mat`` and
``<seq>_BB.mat``, ``handPara`` of shape ``3 x 21 x N``, mm) are converted to the camera frame of the
chosen image:

* ``SK``: labels are in the SK *depth* camera frame; colour frame = ``R^T (X_d - t)`` with
  ``R = Rodrigues(rotation vector)`` (the official ``positionCalc.m``).
* ``BB_left``: labels are in the left BB frame already; ``BB_right``: ``X - (baseline, 0, 0)``.

STB's joint 0 is the palm centre, not the wrist. By default a wrist is synthesised from it
(``palm_to_wrist``, see :func:`palm_to_wrist`); ``root_joint="palm"`` keeps the palm in slot 0.
``meta["root_joint"]`` records which.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from handssl.data.base import (
    DatasetError,
    HandDataset,
    Sample,
    Transform,
    load_image,
    require_path,
    warn_skipped,
)
from handssl.geometry import axis_angle_to_matrix, project
from handssl.skeleton import MIDDLE_MCP, STB_TO_CANONICAL

__all__ = [
    "BB_BASELINE_MM",
    "BB_K",
    "SK_COLOR_K",
    "SK_DEPTH_TO_COLOR_ROTVEC",
    "SK_DEPTH_TO_COLOR_T_MM",
    "STB",
    "STB_LAYOUT",
    "STB_TEST_SEQUENCES",
    "STB_TRAIN_SEQUENCES",
    "palm_to_wrist",
    "sk_depth_to_color",
]

STB_LAYOUT = """\
<root>/
  images/                      (or the sequence folders directly under <root>)
    B1Counting/  SK_color_0.png ... BB_left_0.png ... BB_right_0.png ...
    B1Random/ B2Counting/ ... B6Random/
  labels/
    B1Counting_SK.mat  B1Counting_BB.mat  ...  B6Random_SK.mat  B6Random_BB.mat"""

STB_TEST_SEQUENCES: tuple[str, ...] = ("B1Counting", "B1Random")
"""The standard STB test split."""

STB_TRAIN_SEQUENCES: tuple[str, ...] = tuple(
    f"B{b}{kind}" for b in range(2, 7) for kind in ("Counting", "Random")
)
"""The standard STB training split: B2..B6, Counting and Random."""

SK_COLOR_K = np.array([[607.92271, 0.0, 314.78337], [0.0, 607.88192, 236.42484], [0.0, 0.0, 1.0]])
"""Intrinsics of the SK (RealSense F200) colour camera (official README)."""

BB_K = np.array([[822.79041, 0.0, 318.47345], [0.0, 822.79041, 250.31296], [0.0, 0.0, 1.0]])
"""Intrinsics of both rectified Bumblebee views (official README)."""

BB_BASELINE_MM = 120.054
"""Bumblebee stereo baseline in mm: right-camera frame = left-camera frame - (baseline, 0, 0)."""

SK_DEPTH_TO_COLOR_ROTVEC = np.array([0.00531, -0.01196, 0.00301])
"""Rodrigues vector ``om`` of the SK extrinsics: ``X_depth = R(om) X_color + t``."""

SK_DEPTH_TO_COLOR_T_MM = np.array([-24.0381, -0.4563, -1.2326])
"""Translation ``t`` (mm) of the SK extrinsics: ``X_depth = R(om) X_color + t``."""

CAMERAS = ("SK", "BB_left", "BB_right")
ROOT_JOINTS = ("wrist", "palm")
PALM_TO_WRIST = ("ring", "middle", "mean_mcp")
_IMAGE_PREFIX = {"SK": "SK_color", "BB_left": "BB_left", "BB_right": "BB_right"}
_MCPS = (5, 9, 13, 17)
_RING_MCP = 13


def sk_depth_to_color(points_depth: np.ndarray) -> np.ndarray:
    """SK depth-camera frame to SK colour-camera frame, ``R^T (X_d - t)`` on ``(..., 3)`` points in mm."""
    R = axis_angle_to_matrix(SK_DEPTH_TO_COLOR_ROTVEC)
    return (np.asarray(points_depth, dtype=np.float64) - SK_DEPTH_TO_COLOR_T_MM) @ R


def palm_to_wrist(joints: np.ndarray, method: str = "ring") -> np.ndarray:
    """Replace STB's palm centre in canonical slot 0 by a synthesised wrist (STB has no wrist label).

    Published variants (canonical indices; ``palm`` is slot 0):

    * ``"ring"`` (hand3d, hand-graph-cnn, Minimal-Hand): ``ring_MCP + 2 (palm - ring_MCP)``.
    * ``"middle"`` (bihand): ``middle_MCP + 2.2 (palm - middle_MCP)``.
    * ``"mean_mcp"`` (bihand, unused there): mean over the index, middle, ring and pinky MCPs of
      ``MCP + 2.25 (palm - MCP)``.

    Args:
        joints: ``(..., 21, 3)`` canonical joints with the palm in slot 0.
        method: ``"ring"``, ``"middle"`` or ``"mean_mcp"``.

    Returns:
        A copy with the wrist in slot 0.
    """
    if method not in PALM_TO_WRIST:
        raise ValueError(f"palm_to_wrist must be one of {PALM_TO_WRIST}, got {method!r}")
    out = np.array(joints, copy=True)
    palm = out[..., 0, :]
    if method == "ring":
        out[..., 0, :] = out[..., _RING_MCP, :] + 2.0 * (palm - out[..., _RING_MCP, :])
    elif method == "middle":
        out[..., 0, :] = out[..., MIDDLE_MCP, :] + 2.2 * (palm - out[..., MIDDLE_MCP, :])
    else:
        mcps = out[..., _MCPS, :]
        out[..., 0, :] = (mcps + 2.25 * (palm[..., None, :] - mcps)).mean(-2)
    return out


class STB(HandDataset):
    """STB loader: canonical order, mm, camera frame of the chosen camera's image; all left hands.

    Frames whose labels contain NaN or inf are skipped at construction, with one warning giving the
    count. The number of frames per sequence is read from each label file (``handPara.shape[2]``).

    Args:
        root: The STB folder holding ``labels/`` and ``images/`` (or the sequence folders directly).
        split: ``"train"`` (B2..B6, Counting and Random) or ``"test"`` (B1Counting, B1Random).
        camera: ``"SK"`` (RealSense colour), ``"BB_left"`` or ``"BB_right"`` (Bumblebee stereo).
        root_joint: ``"wrist"`` puts a synthesised wrist in slot 0; ``"palm"`` keeps STB's palm centre.
        palm_to_wrist: How the wrist is synthesised (``"ring"``, ``"middle"``, ``"mean_mcp"``; see
            :func:`palm_to_wrist`); ignored with ``root_joint="palm"``.
        sequences: Sequence names to load instead of the split's (e.g. ``["B1Counting"]``).
        transform: Applied to every sample (``None`` returns the raw sample).
        mirror_left: Mirror the (left) hands into right hands.

    Sample extras: ``meta`` has ``unit="mm"``, ``root_joint``, ``palm_to_wrist`` (or ``None``),
    ``image_path``; ``subject`` is the background (``"B1"``..``"B6"``).
    """

    name = "stb"
    eval_protocol = "stb"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        camera: str = "SK",
        root_joint: str = "wrist",
        palm_to_wrist: str = "ring",
        sequences: list[str] | None = None,
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
        if split not in ("train", "test"):
            raise ValueError(f"STB split must be 'train' or 'test', got {split!r}")
        if camera not in CAMERAS:
            raise ValueError(f"STB camera must be one of {CAMERAS}, got {camera!r}")
        if root_joint not in ROOT_JOINTS:
            raise ValueError(f"STB root_joint must be one of {ROOT_JOINTS}, got {root_joint!r}")
        if palm_to_wrist not in PALM_TO_WRIST:
            raise ValueError(f"STB palm_to_wrist must be one of {PALM_TO_WRIST}, got {palm_to_wrist!r}")
        if sequences is not None and (isinstance(sequences, str) or not sequences):
            raise ValueError(f"STB sequences must be a non-empty list of names, got {sequences!r}")
        self.root = require_path(root, "STB root folder", STB_LAYOUT)
        self.split = split
        self.camera = camera
        self.root_joint = root_joint
        self.palm_to_wrist = palm_to_wrist if root_joint == "wrist" else None
        self.sequences = tuple(sequences) if sequences is not None else _split_sequences(split)
        self.K = (SK_COLOR_K if camera == "SK" else BB_K).astype(np.float32)
        labels_dir = require_path(self.root / "labels", "STB labels folder", STB_LAYOUT)

        self.image_dirs: list[Path] = []
        self.joints3d: list[np.ndarray] = []
        self.joints2d: list[np.ndarray] = []
        index: list[tuple[int, int]] = []
        skipped = 0
        for s, seq in enumerate(self.sequences):
            label_path = require_path(
                labels_dir / f"{seq}_{'SK' if camera == 'SK' else 'BB'}.mat", "STB label file", STB_LAYOUT
            )
            self.image_dirs.append(self._image_dir(seq))
            joints = self._convert(_read_hand_para(label_path))
            finite = np.isfinite(joints).all((-1, -2))
            skipped += int((~finite).sum())
            self.joints3d.append(joints.astype(np.float32))
            self.joints2d.append(project(joints, SK_COLOR_K if camera == "SK" else BB_K).astype(np.float32))
            index.extend((s, int(frame)) for frame in np.flatnonzero(finite))
        warn_skipped(f"STB {split}", skipped, "NaN or inf in the labels")
        self.index = index

    def _image_dir(self, seq: str) -> Path:
        for candidate in (self.root / "images" / seq, self.root / seq):
            if candidate.is_dir():
                return candidate
        raise DatasetError(
            f"STB image folder of sequence {seq!r} not found: neither {self.root / 'images' / seq} "
            f"nor {self.root / seq} exists\nExpected layout:\n{STB_LAYOUT}"
        )

    def _convert(self, native: np.ndarray) -> np.ndarray:
        """``(N, 21, 3)`` native labels -> canonical joints in the chosen camera's frame (mm)."""
        if self.camera == "SK":
            joints = sk_depth_to_color(native)
        elif self.camera == "BB_right":
            joints = native - np.array([BB_BASELINE_MM, 0.0, 0.0])
        else:
            joints = native
        joints = joints[:, list(STB_TO_CANONICAL)]
        if self.palm_to_wrist is not None:  # set exactly when root_joint == "wrist"
            joints = palm_to_wrist(joints, self.palm_to_wrist)
        return joints

    def __len__(self) -> int:
        return len(self.index)

    def load_sample(self, index: int) -> Sample:
        s, frame = self.index[index]
        seq = self.sequences[s]
        image_path = self.image_dirs[s] / f"{_IMAGE_PREFIX[self.camera]}_{frame}.png"
        return {
            "image": load_image(image_path),
            "joints3d": self.joints3d[s][frame].copy(),
            "joints2d": self.joints2d[s][frame].copy(),
            "K": self.K.copy(),
            "valid": np.ones(21, dtype=bool),
            "meta": {
                "dataset": "stb",
                "subject": seq[:2],
                "sequence": seq,
                "frame": frame,
                "camera": self.camera,
                "hand": "left",
                "root_joint": self.root_joint,
                "palm_to_wrist": self.palm_to_wrist,
                "unit": "mm",
                "image_path": str(image_path),
            },
        }


def _split_sequences(split: str) -> tuple[str, ...]:
    return STB_TEST_SEQUENCES if split == "test" else STB_TRAIN_SEQUENCES


def _read_hand_para(path: Path) -> np.ndarray:
    """``handPara`` (``3 x 21 x N``, mm) of an STB label file as ``(N, 21, 3)`` float64."""
    try:
        contents = scipy.io.loadmat(path)
    except (MatReadError, ValueError, OSError, TypeError, NotImplementedError) as err:
        raise DatasetError(f"cannot read STB label file {path}: {err}") from err
    if "handPara" not in contents:
        keys = sorted(k for k in contents if not re.match(r"__\w+__", k))
        raise DatasetError(f"STB label file {path} has no 'handPara' variable (found {keys})")
    para = np.asarray(contents["handPara"], dtype=np.float64)
    if para.ndim != 3 or para.shape[:2] != (3, 21):
        raise DatasetError(f"STB label file {path}: handPara must have shape (3, 21, N), got {para.shape}")
    return para.transpose(2, 1, 0)
