"""The base class of every handssl dataset, the one mirroring of samples, and file helpers.

Samples follow the data contract of :mod:`handssl.data.contract` (keys, dtypes, shapes and units, documented
there once). :meth:`HandDataset.load_sample` returns a *raw* sample (numpy: ``uint8 H x W x 3`` image,
``float32`` joints and ``K``, ``bool`` ``valid``, ``meta``); the default transform
(:class:`~handssl.data.transforms.CropResize`) crops it and packs it into tensors
(:func:`~handssl.data.contract.pack_sample`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from handssl.skeleton import NUM_JOINTS

Sample = dict[str, Any]
"""A sample dict, raw or packed (keys in :data:`handssl.data.contract.FIELDS`; typed as
:class:`handssl.data.contract.HandSample` once packed)."""

Transform = Callable[[Sample], Sample]
"""A transform maps a sample dict to a sample dict, keeping ``joints2d`` and ``K`` in step with ``image``."""


class DatasetError(ValueError):
    """A dataset folder, file or annotation is missing or malformed; the message says what and where."""


def require_path(path: str | Path, what: str, layout: str | None = None) -> Path:
    """Return ``path`` if it exists, else raise :class:`DatasetError` naming it and the expected layout.

    Args:
        path: File or folder that must exist.
        what: Human description, e.g. ``"RHD annotation file"``.
        layout: Optional sketch of the expected on-disk layout, appended to the message.
    """
    path = Path(path)
    if not path.exists():
        msg = f"{what} not found: {path}"
        if layout:
            msg += f"\nExpected layout:\n{layout}"
        raise DatasetError(msg)
    return path


def load_image(path: str | Path, mode: str | None = "RGB") -> np.ndarray:
    """Read an image file into a numpy array (``uint8``), with a clear error for missing or corrupt files.

    Args:
        path: Image path.
        mode: PIL mode to convert to (``"RGB"``, ``"L"``, or ``None`` to keep the file's mode).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if mode in ("RGB", "L") and img.mode in WIDE_MODES:
                return to_uint8(img, mode)
            converted = img if mode is None else img.convert(mode)
            return np.asarray(converted).copy()
    except Image.DecompressionBombError as err:
        raise DatasetError(
            f"image too large: {path} ({err}; PIL refuses images over Image.MAX_IMAGE_PIXELS; shrink it first)"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"corrupt or truncated image file: {path} ({err})") from err


#: PIL modes of more than 8 bits per sample (16-bit PNG / TIFF gray, 32-bit integer and float TIFF), which
#: ``Image.convert("RGB")`` clips to 255 instead of scaling.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "F")


def to_uint8(img: Image.Image, mode: str = "RGB") -> np.ndarray:
    """A high-bit-depth gray image (:data:`WIDE_MODES`) scaled to ``uint8`` ``(H, W, 3)`` (``"RGB"``) or ``(H, W)``.

    16-bit samples map ``0..65535`` to ``0..255`` (a 32-bit integer image holding 16-bit values, as PIL
    opens some 16-bit PNGs, too); wider integer ranges and floats are scaled by their own maximum, floats in
    ``[0, 1]`` by 1.
    """
    values = np.asarray(img).astype(np.float64)
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if img.mode.startswith("I;16") or (img.mode == "I" and low >= 0 and high <= 65535):
        scale = 65535.0
    elif img.mode == "F" and low >= 0 and high <= 1:
        scale = 1.0
    else:
        scale = high if high > 0 else 1.0
    gray = np.round(np.clip(np.nan_to_num(values / scale), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1) if mode == "RGB" else gray


def mirror_sample(sample: Sample) -> Sample:
    """Mirror a sample left-right, every geometric key consistently; flips ``meta['hand']``.

    The one mirroring of handssl (datasets with ``mirror_left``, ImageFolder, Panoptic's single- and multi-view
    items). It takes raw samples (numpy, ``(V x) H x W x C`` images, ``(V x) H x W`` maps) and packed ones
    (tensors, ``(V x) C x H x W``), before any crop (a ``crop`` matrix is not updated).

    * images and maps (``image``, ``mask``, ``hand_mask``, ``depth``, ``background``, ``image_t2``): flipped
      along their width;
    * ``joints2d``: ``u -> W - 1 - u``; ``box``: ``x0, x1 -> W - 1 - x1, W - 1 - x0``;
    * camera-frame 3D (``joints3d``, ``joints3d_t2``): ``x -> -x``; ``K``: ``cx -> W - 1 - cx`` and the skew
      changes sign, so projecting the mirrored 3D with the mirrored ``K`` gives the mirrored 2D;
    * the world stays: ``R -> F R`` and ``t -> F t`` with ``F = diag(-1, 1, 1)`` (a reflection; relative
      rotations between views stay proper rotations), ``joints3d_world`` unchanged;
    * ``dist``: ``p2`` (index 3) changes sign (``x -> -x`` flips the tangential ``p2`` term);
    * ``meta``: ``hand`` swapped (``"left"`` / ``"right"`` only), ``mirrored`` set.
    """
    out = dict(sample)
    image = sample["image"]
    width = image.shape[-1] if isinstance(image, torch.Tensor) else image.shape[-2]
    for key, channels_last in _FLIPPED.items():
        if sample.get(key) is not None:
            out[key] = _flip_width(sample[key], channels_last)
    j2 = _clone(sample["joints2d"])
    j2[..., 0] = (width - 1) - j2[..., 0]
    out["joints2d"] = j2
    for key in ("joints3d", "joints3d_t2"):
        if sample.get(key) is not None:
            j3 = _clone(sample[key])
            j3[..., 0] = -j3[..., 0]
            out[key] = j3
    K = _clone(sample["K"])
    K[..., 0, 2] = (width - 1) - K[..., 0, 2]
    K[..., 0, 1] = -K[..., 0, 1]
    out["K"] = K
    if sample.get("R") is not None:
        R = _clone(sample["R"])
        R[..., 0, :] = -R[..., 0, :]
        out["R"] = R
    if sample.get("t") is not None:
        t = _clone(sample["t"])
        t[..., 0] = -t[..., 0]
        out["t"] = t
    if sample.get("dist") is not None:
        dist = _clone(sample["dist"])
        dist[..., 3] = -dist[..., 3]
        out["dist"] = dist
    if sample.get("box") is not None:
        box, flipped = sample["box"], _clone(sample["box"])
        flipped[..., 0] = (width - 1) - box[..., 2]
        flipped[..., 2] = (width - 1) - box[..., 0]
        out["box"] = flipped
    meta = dict(sample.get("meta", {}))
    if meta.get("hand") in ("left", "right"):
        meta["hand"] = "right" if meta["hand"] == "left" else "left"
    meta["mirrored"] = True
    out["meta"] = meta
    return out


_FLIPPED = {
    "image": True,
    "background": True,
    "image_t2": True,
    "mask": False,
    "hand_mask": False,
    "depth": False,
}
"""Keys :func:`mirror_sample` flips, and whether their raw (numpy) layout ends in channels (``... x H x W x C``)."""


def _flip_width(x: Any, channels_last: bool) -> Any:
    """Flip along the width: the last axis of a packed tensor, axis -2 (-1 for maps) of a raw numpy array."""
    if isinstance(x, torch.Tensor):
        return x.flip(-1)
    return np.ascontiguousarray(np.flip(np.asarray(x), -2 if channels_last else -1))


def _clone(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else np.array(x, copy=True)


def check_sample(sample: Sample, where: str = "sample") -> None:
    """Validate a sample against the contract; raise :class:`DatasetError` naming the first problem.

    Checks keys (the required ones present, no key outside :data:`~handssl.data.contract.FIELDS`), shapes,
    that ``valid`` joints have finite 2D/3D values, and that ``K`` is finite. Takes raw and packed samples.
    """
    from handssl.data.contract import FIELDS

    for key in ("image", "joints3d", "joints2d", "K", "valid", "meta"):
        if key not in sample:
            raise DatasetError(f"{where}: missing key {key!r}")
    unknown = sorted(set(sample) - set(FIELDS))
    if unknown:
        raise DatasetError(
            f"{where}: keys {unknown} are not part of the data contract (handssl.data.contract)"
        )
    j3, j2, valid = (np.asarray(sample[k]) for k in ("joints3d", "joints2d", "valid"))
    if j3.shape[-2:] != (NUM_JOINTS, 3) or j2.shape[-2:] != (NUM_JOINTS, 2) or valid.shape[-1] != NUM_JOINTS:
        raise DatasetError(
            f"{where}: expected joints3d (21, 3), joints2d (21, 2), valid (21,); "
            f"got {j3.shape}, {j2.shape}, {valid.shape}"
        )
    if not np.isfinite(np.asarray(sample["K"])).all():
        raise DatasetError(f"{where}: K has non-finite entries")
    valid = valid.astype(bool)
    if not np.isfinite(j2[valid]).all():
        raise DatasetError(f"{where}: NaN or inf in joints2d of joints marked valid")


class HandDataset(Dataset):
    """Base class of every handssl dataset: applies mirroring and the transform around ``load_sample``.

    Subclasses index their files in ``__init__`` (raising :class:`DatasetError` for a wrong root or a
    missing annotation file), implement ``__len__`` and ``load_sample(index)`` returning the raw sample
    (numpy image and annotations, :mod:`handssl.data.contract`).

    Args:
        transform: Applied to every sample after loading (and mirroring); ``None`` keeps the raw sample.
        mirror_left: Mirror left hands into right hands (image, 2D, 3D and ``K`` consistently).

    Attributes:
        name: Short name, used in ``meta["dataset"]`` and in messages.
        eval_protocol: The evaluation protocol of this dataset's test data (a name in
            :data:`handssl.metrics.protocols.PROTOCOLS`); the command line gives it to the model when this
            dataset is the test set, so a data config needs no model key.
    """

    name: str = "dataset"
    eval_protocol: str = "synthhands"

    def __init__(self, transform: Transform | None = None, mirror_left: bool = False) -> None:
        self.transform = transform
        self.mirror_left = mirror_left

    def __len__(self) -> int:
        raise NotImplementedError

    def load_sample(self, index: int) -> Sample:
        """Load the raw sample ``index`` (no transform)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        sample = self.load_sample(index % len(self))
        if self.mirror_left and sample.get("meta", {}).get("hand") == "left":
            sample = mirror_sample(sample)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def warn_skipped(dataset: str, count: int, reason: str) -> None:
    """Warn once that ``count`` samples of ``dataset`` were skipped, and why."""
    if count:
        warnings.warn(f"{dataset}: skipped {count} samples ({reason})", stacklevel=3)


def nan_joints(num: int = NUM_JOINTS, dims: int = 3) -> np.ndarray:
    """A ``(num, dims)`` float32 array of NaN (for joints without annotation)."""
    return np.full((num, dims), math.nan, dtype=np.float32)
