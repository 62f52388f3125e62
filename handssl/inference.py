"""One call from images to 3D hands: ``handssl.infer("photos/")``, the Python twin of ``handssl predict``.

``handssl.infer`` and ``handssl.InferError`` are exported lazily from the package (``import handssl`` stays fast).

    >>> import handssl
    >>> hands = handssl.infer("photos/")                      # the shipped semihand-synthhands network
    >>> hands[0]["path"], hands[0]["joints2d"].shape, hands[0]["joints3d"].shape
    ('photos/a.jpg', (21, 2), (21, 3))
    >>> handssl.infer(image_array, boxes=[[120, 80, 360, 320]], hands=["left"])   # uint8 H x W x 3, RGB

Images go through exactly what ``handssl predict -c experiments/predict_images.yaml`` does with them
(:class:`~handssl.data.ImageFolder`'s box, hand and intrinsics handling, the DataModule's square crop with
margin 0.25, the task's ``predict_step``, :class:`~handssl.callbacks.PredictionWriter`'s mapping back to the
original pixels), so the numbers are the same. Each image gives one dict:

* ``path``: the image file (only for files);
* ``joints2d``: ``float32 (21, 2)``, pixels of the original image (pixel centres at integers); ``None`` for a
  model that predicts no 2D joints (NVS);
* ``joints3d``: ``float32 (21, 3)`` mm, root-relative (wrist at the origin), camera axes (x right, y down,
  z forward);
* ``joints3d_camera``: ``float32 (21, 3)`` mm in the camera frame, only where the model lifts to it (SemiHand
  with ``lifting: predicted``) with the image's ``K`` (``calibrated``) or a nominal one;
* ``confidence``: ``float32 (21,)`` in (0, 1], only where the model has one (SemiHand: per-joint heatmap peak);
* ``calibrated``: whether a ``K`` was given for the image (else a nominal focal length of ``max(H, W)``).

Nothing is downloaded. Bad input raises :class:`InferError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

__all__ = ["InferError", "infer"]

PathLike: TypeAlias = str | os.PathLike
Images: TypeAlias = PathLike | np.ndarray | Sequence[PathLike | np.ndarray]
Hand: TypeAlias = Literal["left", "right"]
DEFAULT_MODEL = "semihand-synthhands"
DEFAULT_IMAGE_SIZE = 64
CROP_MARGIN = 0.25  # ImageFolderDataModule's (and SupervisedDataModule's) default crop_margin


class InferError(ValueError):
    """Bad input to :func:`infer`: an unknown model, an unreadable image, a bad box, array or annotation."""


def infer(
    images: Images,
    model: str | PathLike | Any = DEFAULT_MODEL,
    boxes: Sequence[Any] | Mapping[str, Any] | PathLike | None = None,
    hands: Sequence[Hand | None] | Mapping[str, Hand] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> list[dict[str, Any]]:
    """3D hand joints of every image, with one hand per image.

    Args:
        images: An image file, a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``; not its
            sub-folders), a list of files, a ``uint8`` RGB array ``(H, W, 3)`` (or ``(N, H, W, 3)``), or a
            list of arrays (files and arrays may mix).
        model: A shipped name (``handssl models`` lists them), a checkpoint written by ``handssl fit``, or a
            handssl task already loaded.
        boxes: The hand's box ``[x0, y0, x1, y1]`` in pixels of each image, or ``{"box": ..., "hand": ...,
            "K": [[...]]}``: a list (one entry per image, ``None`` for none), a dict by file name (the name
            in its folder, the path as given, or the base name), or a JSON file in
            :class:`~handssl.data.ImageFolder`'s format. Without a box, the centred square of the image is
            the hand's box. A box must overlap the image.
        hands: ``"left"`` or ``"right"`` per image (a list, or a dict by file name as ``boxes``); left hands
            are mirrored for the (right-hand) network and the predictions mirrored back.
        batch_size: Images per forward pass.
        device: Where the network runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        image_size: Side of the network input; default the model's ``image_size`` hyper-parameter, else 64
            (a SupervisedModule does not record it: pass its training data's).

    Returns:
        One dict per image, in input order (a folder: sorted by path); see the module docstring.

    Raises:
        InferError: An unknown model name or missing checkpoint, an unreadable image, an array of the wrong
            shape or dtype, a malformed box or one outside its image, a bad hand, or annotations that do
            not match the images; the message is one line.
    """
    from handssl.callbacks.predictions import prediction_rows, result_row
    from handssl.data.base import DatasetError
    from handssl.data.datamodules import collate_samples
    from handssl.data.transforms import CropResize

    if not isinstance(batch_size, int) or batch_size < 1:
        raise InferError(f"batch_size must be a positive int, got {batch_size!r}")
    task = _task(model, device)
    size = image_size if image_size is not None else _model_image_size(task)
    try:
        crop = CropResize(size, CROP_MARGIN)
    except ValueError as err:
        raise InferError(str(err)) from None
    items = _items(images)
    entries = _entries(items, boxes, hands)
    results: list[dict[str, Any]] = []
    task_device = next(iter(task.parameters())).device
    for start in range(0, len(items), batch_size):
        chunk = range(start, min(start + batch_size, len(items)))
        try:
            samples = [crop(_sample(items[i], entries[i], i)) for i in chunk]
        except DatasetError as err:
            raise InferError(str(err)) from None
        batch = collate_samples(samples)
        on_device = {k: v.to(task_device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.inference_mode():
            prediction = task.predict_step(on_device, start // batch_size)
        for row in prediction_rows(prediction, batch, list(chunk)):
            out = result_row(row)
            out.pop("id", None)
            if items[out["index"]][0] is not None:
                out["path"] = str(items[out["index"]][0])
            results.append({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in out.items()})
    return results


def _task(model: Any, device: str | torch.device) -> Any:
    """The handssl task ``model`` names, in eval mode on ``device``."""
    from handssl.models.base import BaseHandTask

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise InferError(f"unknown device {device!r}; e.g. 'cpu', 'cuda', 'cuda:1'") from None
    if isinstance(model, BaseHandTask):
        return model.to(target).eval()
    if not isinstance(model, (str, os.PathLike)):
        raise InferError(
            f"model must be a shipped name, a checkpoint path or a handssl task, got {type(model)}"
        )
    from handssl import pretrained

    text = os.fspath(model)
    if not Path(text).is_file() and text in pretrained.available():
        try:
            return pretrained.load(text, map_location=target)
        except pretrained.PretrainedError as err:
            raise InferError(str(err)) from None
    from handssl.export import ExportError, load_task

    try:
        return load_task(text).to(target).eval()
    except ExportError as err:
        raise InferError(str(err)) from None


def _model_image_size(task: Any) -> int:
    size = getattr(task, "hparams", {}).get("image_size")
    return int(size) if size is not None else DEFAULT_IMAGE_SIZE


def _items(images: Images) -> list[tuple[Path | None, np.ndarray | None, str | None]]:
    """``(path, array, name)`` per image: the file (``name`` its path within a given folder) or the array."""
    from handssl.data.image_folder import IMAGE_EXTENSIONS

    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [(None, _checked_array(a, i), None) for i, a in enumerate(images)]
        return [(None, _checked_array(images, 0), None)]
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise InferError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
            return [(p, None, p.relative_to(path).as_posix()) for p in files]
        if not path.is_file():
            raise InferError(f"image file or folder not found: {path}")
        return [(path, None, os.fspath(images))]
    if not isinstance(images, Sequence) or isinstance(images, (bytes, bytearray)) or not images:
        raise InferError(
            "images must be an image file, a folder, a uint8 HxWx3 array or a non-empty list of files or "
            f"arrays, got {type(images).__name__}"
        )
    items: list[tuple[Path | None, np.ndarray | None, str | None]] = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            items.append((None, _checked_array(image, i), None))
        elif isinstance(image, (str, os.PathLike)):
            items.append((Path(image), None, os.fspath(image)))
        else:
            raise InferError(
                f"image {i}: expected a file path or a uint8 HxWx3 array, got {type(image).__name__}"
            )
    return items


def _checked_array(image: np.ndarray, index: int) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InferError(
            f"image {index}: an array must be uint8 RGB of shape (H, W, 3), got {image.dtype} of shape "
            f"{tuple(image.shape)}"
        )
    return np.ascontiguousarray(image)


def _entries(
    items: list[tuple[Path | None, np.ndarray | None, str | None]],
    boxes: Sequence[Any] | Mapping[str, Any] | PathLike | None,
    hands: Sequence[Hand | None] | Mapping[str, Hand] | None,
) -> list[dict[str, Any]]:
    """Each image's checked annotation (box, hand, K), from ``boxes`` and ``hands``."""
    from handssl.data.base import DatasetError
    from handssl.data.image_folder import annotation_entry

    raw_boxes = _per_image(items, _read_boxes(boxes), "boxes")
    raw_hands = _per_image(items, hands, "hands")
    entries = []
    for i, (box, hand) in enumerate(zip(raw_boxes, raw_hands, strict=True)):
        where = f"image {items[i][2]!r}" if items[i][2] is not None else f"image {i}"
        try:
            entry = annotation_entry(box, f"{where}, box") if box is not None else {}
            if hand is not None:
                entry = {**entry, **annotation_entry({"hand": hand}, f"{where}, hand")}
        except DatasetError as err:
            raise InferError(str(err)) from None
        entries.append(entry)
    return entries


def _read_boxes(boxes: Any) -> Any:
    if not isinstance(boxes, (str, os.PathLike)):
        return boxes
    path = Path(boxes)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise InferError(f"boxes file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InferError(f"boxes file {path} is not readable JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(content, dict):
        raise InferError(f"boxes file {path} must map image names to boxes, got {type(content).__name__}")
    return content


def _per_image(
    items: list[tuple[Path | None, np.ndarray | None, str | None]], values: Any, what: str
) -> list[Any]:
    """``values`` (``None``, a list in image order, or a dict by file name) as one value per image."""
    if values is None:
        return [None] * len(items)
    if isinstance(values, Mapping):
        out: list[Any] = [None] * len(items)
        for key, value in values.items():
            matches = [i for i, item in enumerate(items) if _names(item) and str(key) in _names(item)]
            if not matches:
                files = [item[2] for item in items if item[2] is not None]
                listed = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
                raise InferError(
                    f"{what}: {key!r} names none of the image files ({listed or 'the images are arrays: give a list'})"
                )
            for i in matches:
                out[i] = value
        return out
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InferError(
            f"{what} must be a list (one per image) or a dict by file name, got {type(values).__name__}"
        )
    if len(values) != len(items):
        raise InferError(
            f"{what}: {len(values)} entries for {len(items)} images (give one per image, None for none)"
        )
    return list(values)


def _names(item: tuple[Path | None, np.ndarray | None, str | None]) -> set[str]:
    path, _, name = item
    if path is None or name is None:
        return set()
    return {name, path.as_posix(), path.name}


def _sample(
    item: tuple[Path | None, np.ndarray | None, str | None], entry: dict[str, Any], index: int
) -> Any:
    from handssl.data.base import load_image
    from handssl.data.image_folder import image_sample

    path, array, name = item
    image = load_image(path) if path is not None else array
    assert image is not None
    return image_sample(image, entry, name, index, mirror_left=True)
