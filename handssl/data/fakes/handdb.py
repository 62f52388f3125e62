"""A tiny fake CMU HandDB copy (``hand143_panopticdb`` and ``hand_labels``) in the real format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from handssl.data.fakes.panoptic import draw_hand, fake_background, place_hand, random_hand_pose
from handssl.geometry import project

__all__ = ["make_fake_handdb"]

_SUBSETS = ("panopticdb", "manual_train", "manual_test")


def _fake_hand_2d(rng: np.random.Generator, side: str, width: int, height: int) -> np.ndarray:
    """2D joints ``(21, 2)`` of a random ``side`` hand seen by a pinhole camera, inside a WxH image."""
    focal = float(max(width, height))
    depth = focal * 200.0 / (0.6 * min(width, height))
    joints = place_hand(random_hand_pose(rng, side), rng, (rng.uniform(-20, 20), rng.uniform(-20, 20), depth))
    K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    return project(joints, K)


def _draw(path: Path, uv: np.ndarray, width: int, height: int, pattern: int) -> None:
    image = Image.fromarray(fake_background(width, height, pattern))
    draw_hand(image, uv)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)


def _points(uv: np.ndarray, unlabelled: Sequence[int]) -> list[list[float]]:
    """21 x [x, y, flag]; unlabelled joints get flag 0 and (0, 0) coordinates."""
    out = [[float(u), float(v), 1.0] for u, v in uv]
    for j in unlabelled:
        out[j] = [0.0, 0.0, 0.0]
    return out


def make_fake_handdb(
    root: str | Path,
    subsets: Sequence[str] = _SUBSETS,
    num_images: int = 3,
    unlabelled_joints: Sequence[int] = (20, 3),
    nan_entries: Sequence[int] = (),
    seed: int = 0,
) -> Path:
    """Write a tiny fake CMU HandDB under ``root`` (``hand143_panopticdb/`` and ``hand_labels/``).

    ``hand143_panopticdb/hands_v143_14817.json`` keeps the real file name (the loader must not rely on the
    count in it) with ``num_images`` entries and ``imgs/%08d.jpg`` (200 x 150); ``hand_labels/manual_*/``
    holds one ``.jpg`` + ``.json`` per image (sizes vary), alternating right (``_r``, ``is_left`` 0) and left
    (``_l``, ``is_left`` 1) hands, starting with a right hand.

    Args:
        root: Output folder (created).
        subsets: Which of ``"panopticdb"``, ``"manual_train"``, ``"manual_test"`` to write.
        num_images: Annotations per subset.
        unlabelled_joints: Joints flagged 0 (not labelled) in the second annotation of each subset.
        nan_entries: Annotation positions (per subset) whose middle-finger tip is NaN but flagged valid.
        seed: Random seed.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    unknown = set(subsets) - set(_SUBSETS)
    if unknown:
        raise ValueError(f"unknown HandDB subsets {sorted(unknown)}; valid: {_SUBSETS}")
    root = Path(root)
    for s, subset in enumerate(subsets):
        rng = np.random.default_rng([seed, _SUBSETS.index(subset)])
        entries = []
        for i in range(num_images):
            width, height = (200, 150) if subset == "panopticdb" else (160 + 16 * i, 120 + 8 * i)
            side = "left" if i % 2 else "right"
            uv = _fake_hand_2d(rng, side, width, height)
            points = _points(uv, unlabelled_joints if i == 1 else ())
            if i in nan_entries:
                points[12][0] = float("nan")
            center = [float(c) for c in uv.mean(0)]
            if subset == "panopticdb":
                name = f"imgs/{i:08d}.jpg"
                _draw(root / "hand143_panopticdb" / name, uv, width, height, s + i)
                entries.append(
                    {
                        "img_paths": name,
                        "img_width": width,
                        "img_height": height,
                        "joint_self": points,
                        "objpos": center,
                        "scale_provided": 0.5,
                    }
                )
            else:
                folder = root / "hand_labels" / subset
                stem = f"{15774 + 97 * i:09d}_{1 + i % 3:02d}_{side[0]}"
                _draw(folder / f"{stem}.jpg", uv, width, height, s + i)
                annotation = {"hand_pts": points, "is_left": int(side == "left"), "hand_box_center": center}
                (folder / f"{stem}.json").write_text(json.dumps(annotation))
        if subset == "panopticdb":
            (root / "hand143_panopticdb" / "hands_v143_14817.json").write_text(json.dumps({"root": entries}))
    return root
