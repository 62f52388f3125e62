"""Default sample transforms: crop around the hand, resize, pack into tensors.

Every transform maps a sample dict to a sample dict (:mod:`handssl.data.contract`) and keeps ``joints2d`` and
``K`` in step with ``image`` (a crop or resize is an affine map ``A`` of pixels: ``uv' = A uv`` and
``K' = A K``; camera-frame 3D joints do not change). The crop works on raw (numpy) samples; the conversion to
tensors is :func:`~handssl.data.contract.pack_sample`, the pipeline's one conversion point.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from handssl.data.base import DatasetError, Sample
from handssl.data.contract import pack_sample


def affine_crop_matrix(center: np.ndarray, side: float, out_size: int) -> np.ndarray:
    """3x3 affine map taking the square of side ``side`` px centred at ``center`` onto ``out_size`` px."""
    scale = out_size / side
    # Pixel centres at integer coordinates: the square spans [c - side/2, c + side/2] -> [-0.5, out - 0.5].
    tx = -0.5 - scale * (center[0] - side / 2)
    ty = -0.5 - scale * (center[1] - side / 2)
    return np.array([[scale, 0.0, tx], [0.0, scale, ty], [0.0, 0.0, 1.0]], dtype=np.float64)


def hand_box(joints2d: np.ndarray, valid: np.ndarray, image_hw: tuple[int, int], margin: float) -> tuple:
    """Square box (centre, side) around the valid 2D joints, enlarged by ``margin`` on each side.

    Falls back to the whole image when fewer than two joints are valid and finite.
    """
    pts = joints2d[valid.astype(bool) & np.isfinite(joints2d).all(-1)]
    if len(pts) < 2:
        h, w = image_hw
        return np.array([(w - 1) / 2, (h - 1) / 2]), float(max(h, w))
    lo, hi = pts.min(0), pts.max(0)
    center = (lo + hi) / 2
    side = float(max(hi - lo).max()) * (1 + 2 * margin)
    return center, max(side, 8.0)


def box_square(box: np.ndarray, margin: float) -> tuple:
    """Square (centre, side) around a box ``x0, y0, x1, y1``, enlarged by ``margin`` on each side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    return center, max(max(x1 - x0, y1 - y0) * (1 + 2 * margin), 8.0)


class CropResize:
    """Crop a square around the hand (from the valid 2D joints), resize it, and pack the sample into tensors.

    A sample with a ``box`` (``x0, y0, x1, y1`` of the hand, e.g. from a detector or
    :class:`~handssl.data.ImageFolder`) is cropped around the box instead, with the same margin.
    Calling it is :meth:`crop` (raw numpy in, raw numpy out, with the ``crop`` matrix recorded) followed by
    :func:`~handssl.data.contract.pack_sample`; pipelines with more numpy steps after the crop (the SemiHand
    views) call :meth:`crop` and pack at their end.

    Samples whose ``image`` is already a tensor (SynthHands, rendered at the right size) are not cropped;
    their size is checked. Cropping from ground-truth 2D joints is the usual "GT crop" protocol of RHD / STB
    evaluation.

    Args:
        image_size: Side of the output image in pixels.
        margin: Fraction of the joints' box added on each side.
    """

    def __init__(self, image_size: int = 64, margin: float = 0.25) -> None:
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.image_size = image_size
        self.margin = margin

    def __call__(self, sample: Sample) -> Sample:
        return pack_sample(self.crop(sample))

    def crop(self, sample: Sample) -> Sample:
        """The cropped raw sample (numpy in the raw layout); a packed sample is only checked for its size."""
        image = sample["image"]
        if isinstance(image, torch.Tensor):
            if image.shape[-1] != self.image_size or image.shape[-2] != self.image_size:
                raise DatasetError(
                    f"sample image is {tuple(image.shape[-2:])} but image_size={self.image_size}; "
                    "render the dataset at the DataModule's image_size (a SynthHands dataset: its world's "
                    "image_size, e.g. image_size: ${data.init_args.image_size} in the world's init_args)"
                )
            return sample
        image = np.asarray(image)
        joints2d = np.asarray(sample["joints2d"], dtype=np.float64)
        if sample.get("box") is not None:
            center, side = box_square(np.asarray(sample["box"]), self.margin)
        else:
            center, side = hand_box(joints2d, np.asarray(sample["valid"]), image.shape[:2], self.margin)
        A = affine_crop_matrix(center, side, self.image_size)
        out = dict(sample)
        if sample.get("box") is not None:
            corners = np.asarray(sample["box"], dtype=np.float64).reshape(2, 2)
            out["box"] = (corners @ A[:2, :2].T + A[:2, 2]).reshape(4).astype(np.float32)
        size = (self.image_size, self.image_size)
        out["image"] = cv2.warpAffine(
            image,
            A[:2],
            size,
            flags=cv2.INTER_AREA if side > self.image_size else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        if sample.get("mask") is not None:
            out["mask"] = cv2.warpAffine(np.asarray(sample["mask"]), A[:2], size, flags=cv2.INTER_NEAREST)
        if sample.get("depth") is not None:
            out["depth"] = cv2.warpAffine(
                np.asarray(sample["depth"], np.float32), A[:2], size, flags=cv2.INTER_NEAREST
            )
        out["joints2d"] = (joints2d @ A[:2, :2].T + A[:2, 2]).astype(np.float32)
        out["K"] = (A @ np.asarray(sample["K"], dtype=np.float64)).astype(np.float32)
        out["crop"] = A.astype(np.float32)
        return out


class ToTensor:
    """Pack a raw sample into tensors (:func:`~handssl.data.contract.pack_sample`), without cropping."""

    def __call__(self, sample: Sample) -> Sample:
        return pack_sample(sample)


def to_tensors(sample: Sample) -> Sample:
    """Former name of :func:`~handssl.data.contract.pack_sample` (without its key and dtype check)."""
    return pack_sample(sample, check=False)
