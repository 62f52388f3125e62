"""A tiny fake FreiHAND copy (json annotations in metres, jpg images per version, masks) in the real format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from handssl.data.fakes.panoptic import draw_hand, fake_background, place_hand, random_hand_pose
from handssl.geometry import project

__all__ = ["make_fake_freihand"]

_VERSIONS = ("gs", "hom", "sample", "auto")


def _fake_split(rng: np.random.Generator, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` right hands (camera frame, mm) and intrinsics that put each inside a ``size`` image."""
    xyz, K = [], []
    for _ in range(count):
        focal = rng.uniform(450.0, 650.0)
        depth_mm = focal * 200.0 / (0.75 * size)  # the hand (~200 mm) spans about 3/4 of the image
        center_mm = (rng.uniform(-15, 15), rng.uniform(-15, 15), depth_mm)
        xyz.append(place_hand(random_hand_pose(rng, "right"), rng, center_mm))
        K.append([[focal, 0.0, (size - 1) / 2 + rng.uniform(-4, 4)], [0.0, focal, (size - 1) / 2], [0, 0, 1]])
    return np.stack(xyz), np.asarray(K)


def make_fake_freihand(
    root: str | Path,
    num_training: int = 3,
    num_evaluation: int = 2,
    versions: Sequence[str] = _VERSIONS,
    with_masks: bool = True,
    with_evaluation_xyz: bool = True,
    image_size: int = 224,
    seed: int = 0,
) -> Path:
    """Write a tiny fake FreiHAND (``FreiHAND_pub_v2`` layout) under ``root``.

    Writes ``training_{K,xyz,mano,verts}.json`` (xyz and verts in metres), ``training/rgb/%08d.jpg`` for each
    requested version at ids ``i + num_training * version_index``, ``training/mask/%08d.jpg`` (the drawn hand,
    thicker), ``evaluation_{K,scale}.json`` (+ ``evaluation_xyz.json``) and ``evaluation/rgb/%08d.jpg``. Each
    version gets its own background, so reading the wrong version's image shows.

    Args:
        root: Output folder (created).
        num_training: Unique training samples ``N`` (the real set has 32560).
        num_evaluation: Evaluation samples.
        versions: Training versions to write images for (``"gs"``, ``"hom"``, ``"sample"``, ``"auto"``).
        with_masks: Write the training masks.
        with_evaluation_xyz: Write ``evaluation_xyz.json`` (released after the challenge).
        image_size: Side of the square images (224 in the real set).
        seed: Random seed.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    unknown = set(versions) - set(_VERSIONS)
    if unknown:
        raise ValueError(f"unknown FreiHAND versions {sorted(unknown)}; valid: {_VERSIONS}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("training", num_training), ("evaluation", num_evaluation)):
        xyz_mm, K = _fake_split(rng, count, image_size)
        xyz_m = xyz_mm / 1000.0
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        _dump(root / f"{split}_K.json", K)
        if split == "training" or with_evaluation_xyz:
            _dump(root / f"{split}_xyz.json", xyz_m)
        verts = xyz_m[:, rng.integers(0, 21, size=778)] + rng.normal(scale=0.004, size=(count, 778, 3))
        if split == "training":
            _dump(root / "training_mano.json", rng.normal(scale=0.3, size=(count, 1, 61)))
            _dump(root / "training_verts.json", verts)
        else:
            _dump(root / "evaluation_scale.json", np.linalg.norm(xyz_m[:, 9] - xyz_m[:, 10], axis=-1))
            if with_evaluation_xyz:
                _dump(root / "evaluation_verts.json", verts)
        split_versions = versions if split == "training" else ("gs",)
        for i in range(count):
            uv = project(xyz_mm[i], K[i])
            for version in split_versions:
                v = _VERSIONS.index(version)
                image = Image.fromarray(fake_background(image_size, image_size, 5 * v + i + 1))
                draw_hand(image, uv, radius=3)
                image.save(root / split / "rgb" / f"{i + count * v:08d}.jpg", quality=95)
            if split == "training" and with_masks:
                mask = Image.new("RGB", (image_size, image_size))
                draw_hand(mask, uv, radius=6)
                mask = Image.fromarray(((np.asarray(mask).max(-1) > 0) * 255).astype(np.uint8))
                (root / split / "mask").mkdir(exist_ok=True)
                mask.save(root / split / "mask" / f"{i:08d}.jpg", quality=95)
    return root


def _dump(path: Path, array: np.ndarray) -> None:
    path.write_text(json.dumps(np.asarray(array).tolist()))
