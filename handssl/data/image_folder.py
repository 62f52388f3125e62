"""A folder of the user's own images, for ``handssl predict`` (no labels).

Each item is one image file (PNG / JPEG / BMP / WebP / TIFF, sorted by path; 16-bit and float images are
scaled to 8 bits, not clipped). The hand's box comes from an
optional JSON file; without one the hand is taken to fill the centred square of the image. The default
transform of :class:`~handssl.data.views.SupervisedViews` (:class:`~handssl.data.transforms.CropResize`)
then crops a square around the box (enlarged by the DataModule's ``crop_margin``, as training crops are
around the joints' box) and resizes it to the network's input size; the crop matrix travels with the
sample, so :class:`~handssl.callbacks.PredictionWriter` can write 2D joints in the original image's pixels.

The optional JSON file maps an image's path relative to ``root`` to either a box ``[x0, y0, x1, y1]``
(pixels of the original image; it must overlap the image) or an object with any of ``box``, ``hand``
(``"left"`` / ``"right"``) and ``K`` (3×3 intrinsics)::

    {"a.jpg": [120, 80, 360, 320], "b.png": {"box": [10, 10, 200, 220], "hand": "left", "K": [[...]]}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from handssl.data.base import DatasetError, Sample, Transform, load_image, mirror_sample
from handssl.data.datamodules import SupervisedDataModule
from handssl.skeleton import NUM_JOINTS

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "ImageFolderDataModule",
    "annotation_entry",
    "image_sample",
    "unreadable_sample",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolder(Dataset):
    """Unlabelled images from a folder, with optional per-image boxes, hands and intrinsics.

    Samples follow the contract of :mod:`handssl.data.base` with NaN joints and no valid joint, plus
    ``box`` (``float32 (4,)``, ``x0, y0, x1, y1`` of the hand in the returned image). ``K`` is the JSON's
    when given, else a nominal one (focal length ``max(H, W)`` pixels, about a 53° field of view,
    principal point at the centre) and ``meta['calibrated']`` is False: root-relative 3D predictions do
    not depend on it.

    Args:
        root: Folder of images.
        boxes: JSON file with per-image boxes / hands / intrinsics (relative to ``root`` unless absolute).
        recursive: Also read images in sub-folders.
        mirror_left: Mirror images marked ``"hand": "left"`` so a right-hand model sees a right hand
            (``meta['mirrored']``; the prediction writer mirrors the predictions back).
        transform: Sample transform (``None``: the original ``uint8`` image, as other datasets return it).
        skip_unreadable: An image that cannot be read (corrupt, truncated, too large) becomes a blank
            placeholder whose ``meta['skipped']`` holds the reason (the prediction writer leaves it out and
            names it), instead of a :class:`~handssl.data.base.DatasetError` that ends the whole run.
    """

    def __init__(
        self,
        root: str | Path,
        boxes: str | Path | None = None,
        recursive: bool = False,
        mirror_left: bool = False,
        transform: Transform | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder not found: {self.root}")
        pattern = "**/*" if recursive else "*"
        self.files = sorted(
            p for p in self.root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not self.files:
            raise DatasetError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.root}"
                + ("" if recursive else " (set recursive: true to read sub-folders)")
            )
        self.annotations = self._read_annotations(boxes) if boxes is not None else {}
        self.mirror_left = mirror_left
        self.transform = transform
        self.skip_unreadable = skip_unreadable

    def _read_annotations(self, boxes: str | Path) -> dict[str, dict[str, Any]]:
        path = Path(boxes)
        if not path.is_absolute() and not path.exists():
            path = self.root / path
        if not path.is_file():
            raise DatasetError(f"boxes file not found: {path}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"boxes file {path} is not valid JSON: {err}") from err
        except UnicodeDecodeError as err:
            raise DatasetError(f"boxes file {path} is not UTF-8 text: {err}") from err
        if not isinstance(raw, dict):
            raise DatasetError(f"boxes file {path} must map image paths to boxes, got {type(raw).__name__}")
        names = {p.relative_to(self.root).as_posix() for p in self.files}
        out: dict[str, dict[str, Any]] = {}
        for name, entry in raw.items():
            if name not in names:
                raise DatasetError(f"boxes file {path}: {name!r} is not an image in {self.root}")
            out[name] = annotation_entry(entry, f"boxes file {path}, {name!r}")
            if "box" in out[name]:
                size = image_size_or_none(self.root / name)
                if size is not None:  # checked now, before any prediction is made (unreadable: at load time)
                    check_box(out[name]["box"], *size, f"boxes file {path}, {name!r}")
        return out

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        name = path.relative_to(self.root).as_posix()
        entry = self.annotations.get(name, {})
        try:
            image = load_image(path)
        except DatasetError as err:
            if not self.skip_unreadable:
                raise
            sample = unreadable_sample(name, index, str(err))
        else:
            sample = image_sample(image, entry, name, index, self.mirror_left)
        return self.transform(sample) if self.transform is not None else sample


#: Side of the blank placeholder that stands in for an unreadable image (see :func:`unreadable_sample`).
PLACEHOLDER_SIZE = 32


def unreadable_sample(name: str, index: int, reason: str) -> Sample:
    """A blank stand-in for an image that cannot be read, marked ``meta['skipped'] = reason``.

    It keeps a batch's shape (and a worker's error message) on its way to the prediction writer, which
    drops it and names it, so that one bad file does not cost the others' predictions.
    """
    size = PLACEHOLDER_SIZE
    sample = image_sample(np.zeros((size, size, 3), dtype=np.uint8), {}, name, index)
    sample["meta"]["skipped"] = reason
    return sample


def annotation_entry(entry: Any, where: str) -> dict[str, Any]:
    """One image's checked annotation: a box ``[x0, y0, x1, y1]`` or a dict of ``box``, ``hand``, ``K``.

    Shared by :class:`ImageFolder` (its boxes file) and :func:`handssl.infer`.

    Args:
        entry: The value of the boxes file for one image.
        where: Names the entry in error messages (e.g. ``"boxes file b.json, 'a.jpg'"``).

    Returns:
        ``{"box": float64 (4,), "hand": "left" | "right", "K": float64 (3, 3)}``, each key only when given.

    Raises:
        DatasetError: A malformed box, hand or ``K``.
    """
    if isinstance(entry, (list, tuple, np.ndarray)):
        entry = {"box": entry}
    if not isinstance(entry, dict):
        raise DatasetError(
            f"{where}: expected a box [x0, y0, x1, y1] or an object, got {type(entry).__name__}"
        )
    entry = {k: v for k, v in entry.items() if v is not None}
    if "box" in entry:
        try:
            box = np.asarray(entry["box"], dtype=np.float64)
        except (TypeError, ValueError):
            box = np.full(0, np.nan)
        if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise DatasetError(
                f"{where}: box must be [x0, y0, x1, y1] with x1 > x0, y1 > y0, got {entry['box']!r}"
            )
        entry["box"] = box
    if entry.get("hand", "right") not in ("left", "right"):
        raise DatasetError(f"{where}: hand must be 'left' or 'right', got {entry['hand']!r}")
    if "K" in entry:
        try:
            K = np.asarray(entry["K"], dtype=np.float64)
        except (TypeError, ValueError):
            K = np.full(0, np.nan)
        if K.shape != (3, 3) or not np.isfinite(K).all():
            raise DatasetError(f"{where}: K must be a finite 3x3 matrix")
        if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-6):
            raise DatasetError(
                f"{where}: K must be camera intrinsics [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with focal lengths "
                f"fx, fy > 0 (pixels), got {K.tolist()}"
            )
        entry["K"] = K
    return entry


#: The share of a given box that must lie inside its image: a hand at the border may stick out a little, but
#: a box mostly outside (or ``1e30`` wide) is a mistake whose crop would be mostly padding.
MIN_BOX_INSIDE = 0.5


def box_inside_fraction(box: np.ndarray, width: int, height: int) -> float:
    """The share of ``box`` (``x0, y0, x1, y1``) that lies inside an image of ``width`` x ``height`` pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    area = (x1 - x0) * (y1 - y0)
    if not np.isfinite(area) or area <= 0:
        return 0.0
    ix = max(0.0, min(x1, width - 0.5) - max(x0, -0.5))
    iy = max(0.0, min(y1, height - 0.5) - max(y0, -0.5))
    return ix * iy / area


def check_box(box: np.ndarray, width: int, height: int, where: str) -> None:
    """Refuse a box outside its image, or mostly outside (:data:`MIN_BOX_INSIDE`).

    Raises:
        DatasetError: Naming ``where`` (the image, and the boxes file where there is one).
    """
    shown = [round(float(v), 2) for v in box]
    # Pixel centres are integers, so the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5].
    if box[2] <= -0.5 or box[3] <= -0.5 or box[0] >= width - 0.5 or box[1] >= height - 0.5:
        raise DatasetError(f"{where}: box {shown} lies outside the image ({width}x{height} pixels)")
    inside = box_inside_fraction(box, width, height)
    if inside < MIN_BOX_INSIDE:
        raise DatasetError(
            f"{where}: box {shown} lies mostly outside the image ({width}x{height} pixels; {inside:.0%} of it "
            f"inside, at least {MIN_BOX_INSIDE:.0%} needed): give the hand's box in this image's pixels"
        )


def image_size_or_none(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header, or ``None`` when it cannot be read."""
    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def image_sample(
    image: np.ndarray, entry: dict[str, Any], name: str | None, index: int, mirror_left: bool = False
) -> Sample:
    """The unlabelled sample of one image, as :class:`ImageFolder` returns it (before its transform).

    Shared by :class:`ImageFolder` and :func:`handssl.infer`, so that both crop the same way.

    Args:
        image: ``uint8 (H, W, 3)``.
        entry: Its checked annotation (:func:`annotation_entry`; ``{}``: centred square, nominal ``K``).
        name: ``meta['path']`` (``None`` for an image that is no file).
        index: ``meta['frame']``.
        mirror_left: Mirror the sample when ``entry`` says ``"hand": "left"``.

    Raises:
        DatasetError: The box does not overlap the image.
    """
    h, w = image.shape[:2]
    if "box" in entry:
        box = entry["box"]
        check_box(box, w, h, f"{name!r}" if name is not None else f"image {index}")
    else:  # the centred square
        side = min(h, w)
        x0, y0 = (w - side) / 2, (h - side) / 2
        box = np.array([x0, y0, x0 + side, y0 + side])
    if "K" in entry:
        K = entry["K"]
    else:
        f = float(max(h, w))
        K = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
    hand = entry.get("hand")
    sample: Sample = {
        "image": image,
        "joints3d": np.full((NUM_JOINTS, 3), np.nan, dtype=np.float32),
        "joints2d": np.full((NUM_JOINTS, 2), np.nan, dtype=np.float32),
        "valid": np.zeros(NUM_JOINTS, dtype=bool),
        "K": K.astype(np.float32),
        "box": box.astype(np.float32),
        "meta": {
            "dataset": "image_folder",
            "path": name,
            "frame": index,
            "hand": hand,
            "image_width": w,
            "image_height": h,
            "box_source": "file" if "box" in entry else "center",
            "calibrated": "K" in entry,
            "mirrored": False,
        },
    }
    if mirror_left and hand == "left":
        sample = mirror_sample(sample)
    return sample


class ImageFolderDataModule(SupervisedDataModule):
    """Predict on a folder of images: :class:`ImageFolder` as the ``predict`` split of a supervised DataModule.

    ``handssl predict -c experiments/predict_images.yaml --data.init_args.root DIR --ckpt_path X``; the
    model is rebuilt from the checkpoint. ``image_size`` must be the one the model was trained with (also
    when this file follows the training config: ``-c train.yaml -c experiments/predict_images.yaml`` keeps
    its ``image_size`` and datasets).

    Args:
        root: Folder of images.
        boxes: JSON file with per-image boxes / hands / intrinsics (see :class:`ImageFolder`).
        recursive: Also read images in sub-folders.
        mirror_left: Mirror left hands for a right-hand model (predictions are mirrored back).
        image_size: Side of the network input in pixels (the training config's).
        crop_margin: Margin of the crop around the hand's box, as a fraction of the box.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory.
        seed: Seed of the shuffling order (unused for prediction).
        skip_unreadable: Skip unreadable images (named in the log, left out of the predictions) instead of
            stopping at the first (``handssl predict --strict true`` turns it off).
        train: Training dataset (only so a training config may come first).
        val: Validation dataset (idem).
        test: Test dataset (idem).
    """

    def __init__(
        self,
        root: str,
        boxes: str | None = None,
        recursive: bool = False,
        mirror_left: bool = False,
        image_size: int = 64,
        crop_margin: float = 0.25,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        skip_unreadable: bool = True,
        train: Dataset | None = None,
        val: Dataset | None = None,
        test: Dataset | None = None,
    ) -> None:
        images = ImageFolder(
            root, boxes=boxes, recursive=recursive, mirror_left=mirror_left, skip_unreadable=skip_unreadable
        )
        super().__init__(
            train=train,
            val=val,
            test=test,
            predict=images,
            image_size=image_size,
            crop_margin=crop_margin,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
        )
