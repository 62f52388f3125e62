"""Dexter+Object (Sridhar et al., ECCV 2016): hands grasping objects, five annotated fingertips.

Only a test split exists. Annotation rows (``annotations/<seq>3D.txt``, one line per frame, five
``x, y, z`` fields separated by ``;``, mm) are paired with the colour images by sorted order (natural
sort, so ``2.png`` comes before ``10.png``); the official page with frame names was not available, so
this follows the public loaders.

The raw 3D is in the depth camera's frame with ``x`` and ``y`` flipped; the loader returns it in the
colour camera's frame, ``T_depth->colour @ (-x, -y, z, 1)``. A coordinate equal to ``32001`` marks a tip
that is not annotated (NaN and ``valid`` False). All other joints are NaN and not valid.

Hands are reported as left hands, following Minimal-Hand's comment ("all hands in DexterObjectDataset are
left hands"); this is not verified against the official release.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from handssl.data.base import DatasetError, HandDataset, Sample, Transform, load_image, require_path
from handssl.geometry import project
from handssl.skeleton import DEXTER_OBJECT_TIPS, NUM_JOINTS

__all__ = [
    "DEXTER_OBJECT_LAYOUT",
    "DEXTER_OBJECT_SEQUENCES",
    "DO_COLOR_K",
    "DO_DEPTH_K",
    "DO_DEPTH_TO_COLOR",
    "DO_MISSING_VALUE",
    "DexterObject",
    "depth_to_color",
    "natural_sort_key",
    "read_dexter_object_3d",
]

DEXTER_OBJECT_LAYOUT = """\
<root>/                       (dexter+object; or its data/ folder directly)
  data/
    Grasp1/
      color/<frames>          640x480, paired with annotation rows by sorted name
      annotations/Grasp13D.txt
    Grasp2/ Occlusion/ Pinch/ Rigid/ Rotate/"""

DEXTER_OBJECT_SEQUENCES: tuple[str, ...] = ("Grasp1", "Grasp2", "Occlusion", "Pinch", "Rigid", "Rotate")
"""The six sequences of the benchmark."""

DO_COLOR_K = np.array([[587.45209, 0.0, 325.0], [0.0, 600.67456, 249.0], [0.0, 0.0, 1.0]])
"""Intrinsics of the colour camera (640x480)."""

DO_DEPTH_K = np.array([[224.502, 0.0, 160.0], [0.0, 230.494, 120.0], [0.0, 0.0, 1.0]])
"""Intrinsics of the depth camera (320x240); the 2D annotation files are in its pixels."""

DO_DEPTH_TO_COLOR = np.array(
    [
        [0.9999, 0.0034, 0.0161, 19.0473],
        [-0.0033, 1.0000, -0.0079, -1.8514],
        [-0.0162, 0.0079, 0.9998, -4.7501],
    ]
)
"""3x4 depth-to-colour transform (translation in mm), applied to ``(-x, -y, z, 1)`` of the raw 3D."""

DO_MISSING_VALUE = 32001.0
"""Coordinate value marking a fingertip without annotation."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def natural_sort_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers (``frame2`` < ``frame10``)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def read_dexter_object_3d(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a D+O ``<seq>3D.txt`` file.

    Args:
        path: The annotation file; one line per frame, ``x, y, z;`` five times (a trailing ``;`` is
            allowed), blank lines ignored.

    Returns:
        ``(tips (N, 5, 3) float64 raw mm, annotated (N, 5) bool)``; tips with a ``32001`` coordinate are
        NaN and not annotated.

    Raises:
        DatasetError: A line without five ``x, y, z`` fields, or with NaN or inf, naming the file and line.
    """
    path = Path(path)
    rows: list[list[list[float]]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split(";")]
            while fields and not fields[-1]:
                fields.pop()
            try:
                tips = [[float(v) for v in field.split(",")] for field in fields]
            except ValueError as err:
                raise DatasetError(f"{path}, line {line_no}: cannot parse {line.strip()!r} ({err})") from err
            if len(tips) != 5 or any(len(t) != 3 for t in tips):
                raise DatasetError(
                    f"{path}, line {line_no}: expected five 'x, y, z' fields separated by ';', "
                    f"got {line.strip()!r}"
                )
            if not np.isfinite(tips).all():
                raise DatasetError(f"{path}, line {line_no}: NaN or inf in the fingertip annotation")
            rows.append(tips)
    if not rows:
        raise DatasetError(f"D+O annotation file {path} has no annotation rows")
    all_tips = np.asarray(rows, dtype=np.float64)
    annotated = ~np.any(np.abs(all_tips - DO_MISSING_VALUE) < 1e-3, axis=-1)
    all_tips[~annotated] = np.nan
    return all_tips, annotated


def depth_to_color(raw_tips: np.ndarray) -> np.ndarray:
    """Raw D+O 3D (depth frame, ``x`` and ``y`` flipped; ``(..., 3)`` mm) to the colour camera frame."""
    flipped = np.asarray(raw_tips, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])
    return flipped @ DO_DEPTH_TO_COLOR[:, :3].T + DO_DEPTH_TO_COLOR[:, 3]


class DexterObject(HandDataset):
    """Dexter+Object loader (test only): five fingertips in the colour camera frame, mm.

    NaN or inf in an annotation row raises :class:`DatasetError` at construction (naming the file and
    line); a count mismatch between colour images and annotation rows does too.

    Args:
        root: The ``dexter+object`` folder (holding ``data/``), or its ``data/`` folder.
        split: Must be ``"test"`` (the benchmark has no other split).
        sequences: Sequences to load (default: all six; every one must be present).
        annotation_pattern: File name of the 3D annotations inside ``<seq>/annotations/``;
            ``"my_{sequence}3D.txt"`` selects Minimal-Hand's corrected (unofficial) labels.
        transform: Applied to every sample (``None`` returns the raw sample).
        mirror_left: Mirror the (left) hands into right hands.

    Sample extras: ``meta`` has ``unit="mm"``, ``image_path``; ``subject`` is ``"unknown"``, ``camera``
    ``"color"``; ``K`` is the colour camera's.
    """

    name = "dexter_object"
    eval_protocol = "dexter_object"

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        sequences: list[str] | None = None,
        annotation_pattern: str = "{sequence}3D.txt",
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
        if split != "test":
            raise ValueError(f"Dexter+Object only has a 'test' split, got split={split!r}")
        if sequences is not None and (isinstance(sequences, str) or not sequences):
            raise ValueError(f"DexterObject sequences must be a non-empty list of names, got {sequences!r}")
        if "{sequence}" not in annotation_pattern:
            raise ValueError(f"annotation_pattern must contain '{{sequence}}', got {annotation_pattern!r}")
        root = require_path(root, "Dexter+Object root folder", DEXTER_OBJECT_LAYOUT)
        self.data_dir = root / "data" if (root / "data").is_dir() else root
        self.sequences = tuple(sequences) if sequences is not None else DEXTER_OBJECT_SEQUENCES
        self.K = DO_COLOR_K.astype(np.float32)
        self.images: list[Path] = []
        self.frames: list[tuple[str, int]] = []
        joints3d, valid = [], []
        for seq in self.sequences:
            seq_dir = require_path(
                self.data_dir / seq, f"Dexter+Object sequence {seq!r}", DEXTER_OBJECT_LAYOUT
            )
            color_dir = require_path(seq_dir / "color", "Dexter+Object color folder", DEXTER_OBJECT_LAYOUT)
            anno_path = require_path(
                seq_dir / "annotations" / annotation_pattern.format(sequence=seq),
                "Dexter+Object annotation file",
                DEXTER_OBJECT_LAYOUT,
            )
            images = sorted(
                (p for p in color_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: natural_sort_key(p.name),
            )
            tips, annotated = read_dexter_object_3d(anno_path)
            if len(images) != len(tips):
                raise DatasetError(
                    f"Dexter+Object sequence {seq!r}: {len(images)} images in {color_dir} but {len(tips)} "
                    f"annotation rows in {anno_path}; images and rows are paired by sorted order, so the "
                    "counts must match"
                )
            canonical = np.full((len(tips), NUM_JOINTS, 3), np.nan)
            canonical[:, list(DEXTER_OBJECT_TIPS)] = depth_to_color(tips)
            seq_valid = np.zeros((len(tips), NUM_JOINTS), dtype=bool)
            seq_valid[:, list(DEXTER_OBJECT_TIPS)] = annotated
            joints3d.append(canonical)
            valid.append(seq_valid)
            self.images.extend(images)
            self.frames.extend((seq, i) for i in range(len(tips)))
        joints = np.concatenate(joints3d)
        self.joints3d = joints.astype(np.float32)
        self.joints2d = project(joints, DO_COLOR_K).astype(np.float32)
        self.valid = np.concatenate(valid)

    def __len__(self) -> int:
        return len(self.frames)

    def load_sample(self, index: int) -> Sample:
        seq, frame = self.frames[index]
        image_path = self.images[index]
        joints2d = self.joints2d[index].copy()
        joints2d[~self.valid[index]] = np.nan
        return {
            "image": load_image(image_path),
            "joints3d": self.joints3d[index].copy(),
            "joints2d": joints2d,
            "K": self.K.copy(),
            "valid": self.valid[index].copy(),
            "meta": {
                "dataset": "dexter_object",
                "subject": "unknown",
                "sequence": seq,
                "frame": frame,
                "camera": "color",
                "hand": "left",
                "unit": "mm",
                "image_path": str(image_path),
            },
        }
