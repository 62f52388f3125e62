"""Invertible albumentations pipelines for SemiHand: "perturbation" (weak) and "diversity" (strong).

Both pipelines are ``A.Compose(..., keypoint_params=KeypointParams(format="xy", remove_invisible=False),
save_applied_params=True)``, so every geometric transform that ran leaves its 3x3 pixel matrix behind and
:func:`applied_matrix` composes them into one matrix ``M`` that maps original pixels to augmented pixels
(``x_aug = M @ [x, y, 1]``); :func:`invert_matrix` maps predictions back.

* **perturbation** (SemiHand §3.4, for consistency and pseudo-label confidence): exactly one of a shift of
  at most ``shift_px`` pixels, a rotation of at most ``rotate_deg`` degrees, or a rotation by exactly 90,
  180 or 270 degrees (about the image centre).
* **diversity** (for labelled and confidently pseudo-labelled images): colour jitter, gray-scale, rotation,
  scale, translation and random erasing. The paper gives no magnitudes; the defaults are moderate values
  suited to 64 px crops and are all arguments.

Labels follow the image (:func:`augment_sample`): ``joints2d`` through ``M``; the 2x2 part of ``M`` is a
similarity ``s R2`` (rotation + isotropic scale), which is the image of a rotation ``Rz`` of the camera
about its optical axis plus a change of intrinsics, so camera-frame ``joints3d`` become ``Rz @ X`` and
``K`` becomes ``M @ K @ Rz^T``. Projecting the new 3D with the new ``K`` reproduces the new 2D exactly
when ``fx == fy`` and the skew is zero (true for every crop camera in handssl); root-relative 3D is only
rotated, never scaled. Flips are refused (they would turn a right hand into a left one).
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np
from albumentations.augmentations.dropout.transforms import BaseDropout

from handssl.data.base import Sample
from handssl.data.contract import is_packed, pack_sample, unpack_sample
from handssl.geometry import invert_matrix, optical_axis_rotation, transform_intrinsics, transform_points

__all__ = [
    "PIPELINE_KINDS",
    "applied_matrix",
    "augment_sample",
    "diversity_pipeline",
    "invert_matrix",
    "make_pipeline",
    "optical_axis_rotation",
    "perturbation_pipeline",
    "transform_intrinsics",
    "transform_points",
]

PIPELINE_KINDS = ("perturbation", "diversity")

_KEYPOINTS = {"format": "xy", "remove_invisible": False}
_DROPPED_KEYS = ("depth", "background", "image_t2")


def _compose(transforms: list[A.BasicTransform], seed: int | None) -> A.Compose:
    return A.Compose(
        transforms,
        keypoint_params=A.KeypointParams(**_KEYPOINTS),
        save_applied_params=True,
        seed=seed,
    )


def perturbation_pipeline(
    shift_px: int = 5,
    rotate_deg: float = 2.0,
    right_angles: bool = True,
    seed: int | None = None,
) -> A.Compose:
    """The weak "perturbation" pipeline: exactly one small shift, small rotation or right-angle rotation.

    Args:
        shift_px: Largest shift in pixels (each axis drawn in ``[-shift_px, shift_px]``).
        rotate_deg: Largest small rotation in degrees (drawn in ``[-rotate_deg, rotate_deg]``).
        right_angles: Include rotations by exactly 90, 180 or 270 degrees as a third choice.
        seed: Seed of the pipeline's random state (albumentations 2.x ignores global seeds).

    Returns:
        The ``A.Compose``; its output holds ``applied_transforms``.
    """
    if shift_px < 0 or rotate_deg < 0:
        raise ValueError(f"shift_px and rotate_deg must be >= 0, got {shift_px}, {rotate_deg}")
    # One flat OneOf (the transforms' p are its weights): a nested OneOf re-seeded per call would draw its
    # choice from the same stream as the outer one and always pick the same right angle.
    choices: list[A.BasicTransform] = [
        A.Affine(translate_px=(-shift_px, shift_px), p=1.0),
        A.Affine(rotate=(-rotate_deg, rotate_deg), p=1.0),
    ]
    if right_angles:
        choices += [A.Affine(rotate=(angle, angle), p=1.0 / 3.0) for angle in (90.0, 180.0, 270.0)]
    return _compose([A.OneOf(choices, p=1.0)], seed)


def diversity_pipeline(
    rotate_deg: float = 30.0,
    scale: tuple[float, float] = (0.85, 1.1),
    translate_fraction: float = 0.1,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    hue: float = 0.05,
    p_color: float = 0.8,
    p_gray: float = 0.1,
    p_geometric: float = 0.9,
    p_erase: float = 0.3,
    erase_area: tuple[float, float] = (0.02, 0.15),
    p_blur: float = 0.0,
    blur_sigma: tuple[float, float] = (0.3, 1.2),
    p_noise: float = 0.0,
    noise_std: tuple[float, float] = (0.01, 0.05),
    p_jpeg: float = 0.0,
    jpeg_quality: tuple[int, int] = (30, 90),
    seed: int | None = None,
) -> A.Compose:
    """The strong "diversity" pipeline: colour, gray-scale, geometry, erasing; optionally camera degradations.

    Colour jitter, gray-scale, rotation/scale/translation and random erasing, then optionally the camera's own
    degradations (Gaussian blur, sensor noise, a JPEG round trip with its chroma subsampling). The camera terms are off by default (the paper's pipeline); they are what a practitioner adds when the
    target camera is worse than the renderer (SynthHands' real style: blur, noise, chroma subsampling).

    Args:
        rotate_deg: Largest rotation in degrees.
        scale: Range of the isotropic zoom factor.
        translate_fraction: Largest translation as a fraction of the image side.
        brightness: Colour-jitter brightness strength.
        contrast: Colour-jitter contrast strength.
        saturation: Colour-jitter saturation strength.
        hue: Colour-jitter hue strength (in ``[0, 0.5]``).
        p_color: Probability of colour jitter.
        p_gray: Probability of converting to gray-scale.
        p_geometric: Probability of the rotation/scale/translation.
        p_erase: Probability of random erasing (one rectangle filled with zeros).
        erase_area: Range of the erased rectangle's area as a fraction of the image.
        p_blur: Probability of a Gaussian blur.
        blur_sigma: Range of its standard deviation in pixels.
        p_noise: Probability of per-pixel Gaussian noise.
        noise_std: Range of the noise's standard deviation (fraction of the intensity range).
        p_jpeg: Probability of a JPEG round trip.
        jpeg_quality: Range of its quality.
        seed: Seed of the pipeline's random state.

    Returns:
        The ``A.Compose``; its output holds ``applied_transforms``.
    """
    if scale[0] <= 0 or scale[0] > scale[1]:
        raise ValueError(f"scale must be an increasing pair of positive factors, got {scale}")
    if not 0 <= translate_fraction < 0.5:
        raise ValueError(f"translate_fraction must be in [0, 0.5), got {translate_fraction}")
    return _compose(
        [
            A.ColorJitter(
                brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=p_color
            ),
            A.ToGray(p=p_gray),
            A.Affine(
                rotate=(-rotate_deg, rotate_deg),
                scale=scale,
                keep_ratio=True,
                translate_percent=(-translate_fraction, translate_fraction),
                p=p_geometric,
            ),
            A.Erasing(scale=erase_area, p=p_erase),
            A.GaussianBlur(sigma_limit=blur_sigma, p=p_blur),
            A.GaussNoise(std_range=noise_std, p=p_noise),
            A.ImageCompression(quality_range=jpeg_quality, p=p_jpeg),
        ],
        seed,
    )


def make_pipeline(kind: str, seed: int | None = None, **options: Any) -> A.Compose:
    """Build the ``"perturbation"`` or ``"diversity"`` pipeline with ``options`` passed to its builder."""
    if kind == "perturbation":
        return perturbation_pipeline(seed=seed, **options)
    if kind == "diversity":
        return diversity_pipeline(seed=seed, **options)
    raise ValueError(f"unknown augmentation pipeline {kind!r}; expected one of {PIPELINE_KINDS}")


def applied_matrix(applied_transforms: list[tuple[str, dict[str, Any]]]) -> np.ndarray:
    """Compose the geometric transforms recorded by ``save_applied_params=True`` into one 3x3 matrix.

    Pixel-level transforms (colour, gray-scale, erasing) contribute the identity.

    Args:
        applied_transforms: ``output["applied_transforms"]`` of an ``A.Compose`` call.

    Returns:
        ``(3, 3)`` float64 matrix mapping original pixels to augmented pixels.

    Raises:
        ValueError: For a geometric transform whose matrix cannot be recovered (e.g. a flip or elastic warp).
    """
    matrix = np.eye(3)
    for name, params in applied_transforms:
        if "matrix" in params:
            matrix = np.asarray(params["matrix"], dtype=np.float64) @ matrix
            continue
        cls = getattr(A, name, None)
        if isinstance(cls, type) and issubclass(cls, (A.ImageOnlyTransform, BaseDropout)):
            continue
        raise ValueError(
            f"cannot invert augmentation {name!r}: only transforms that record a 'matrix' (Affine) or "
            "pixel-level transforms are supported"
        )
    return matrix


def augment_sample(sample: Sample, pipeline: A.Compose, seed: int | None = None) -> Sample:
    """Augment one sample dict and move its labels along; record the matrix in ``transform_matrix``.

    Works on raw samples (numpy, :mod:`handssl.data.contract`); a packed sample (tensors) is unpacked, augmented
    and packed again, so its output is packed too.

    Args:
        sample: A sample dict (``image`` H x W x C numpy, uint8 or float in ``[0, 1]``; ``joints2d``, ``K``,
            optional ``joints3d`` and ``mask``). Keys that cannot follow the transform (``depth``,
            ``background``, ``image_t2``) are dropped.
        pipeline: A pipeline from :func:`make_pipeline` (``save_applied_params=True``).
        seed: If given, re-seeds the pipeline first (deterministic augmentation).

    Returns:
        A new sample dict with the augmented ``image`` (same dtype), ``mask``, ``joints2d``, ``K``, ``joints3d``
        (rotated about the optical axis), ``in_bounds`` (21,) bool (augmented 2D inside the image) and
        ``transform_matrix`` (3, 3) float32 (original -> augmented px).
    """
    if is_packed(sample):
        return pack_sample(augment_sample(unpack_sample(sample), pipeline, seed), check=False)
    if seed is not None:
        pipeline.set_random_seed(seed)
    image = np.asarray(sample["image"])
    if image.ndim != 3:
        raise ValueError(f"image must be H x W x C, got shape {image.shape}")
    height, width = image.shape[:2]
    joints2d = np.asarray(sample["joints2d"], dtype=np.float64)
    finite = np.all(np.isfinite(joints2d), axis=-1)
    keypoints = np.where(finite[:, None], joints2d, 0.0)
    inputs: dict[str, Any] = {"image": image, "keypoints": keypoints}
    if sample.get("mask") is not None:
        inputs["mask"] = np.asarray(sample["mask"])
    out = pipeline(**inputs)
    matrix = applied_matrix(out["applied_transforms"])
    new2d = np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)
    new2d[~finite] = np.nan

    result = {k: v for k, v in sample.items() if k not in _DROPPED_KEYS}
    result["image"] = out["image"]
    if sample.get("mask") is not None:
        result["mask"] = out["mask"]
    result["joints2d"] = new2d.astype(np.float32)
    result["K"] = transform_intrinsics(np.asarray(sample["K"], dtype=np.float64), matrix).astype(np.float32)
    if "joints3d" in sample:
        rz = optical_axis_rotation(matrix)
        result["joints3d"] = (np.asarray(sample["joints3d"], dtype=np.float64) @ rz.T).astype(np.float32)
    result["in_bounds"] = (
        finite
        & (new2d[:, 0] >= -0.5)
        & (new2d[:, 0] <= width - 0.5)
        & (new2d[:, 1] >= -0.5)
        & (new2d[:, 1] <= height - 0.5)
    )
    result["transform_matrix"] = matrix.astype(np.float32)
    return result
