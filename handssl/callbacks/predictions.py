"""Write what ``handssl predict`` predicts: ``predictions.jsonl`` and ``predictions.pt`` in the run folder.

``predictions.jsonl`` has one JSON object per line, one line per dataset item in dataset order::

    {"index": 0, "path": "a.jpg",            # "path" for image files, else "id": "<dataset>/<frame>"
     "joints2d": [[u, v], ...],              # 21x2, pixels of the original image (null where unknown)
     "joints3d": [[x, y, z], ...],           # 21x3 mm, root-relative (wrist), camera axes
     "joints3d_camera": [[x, y, z], ...],    # 21x3 mm in the camera frame; only when K and a root depth
                                             # are known (the model lifts them, or the sample's labels give the root)
     "confidence": [c, ...],                 # only where the model has one (SemiHand: per-joint heatmap peak)
     "calibrated": false}                    # ImageFolder without a K: joints3d_camera uses a nominal K

Non-finite numbers are written as ``null``. With ``overlays=True`` (``handssl predict --overlays true``)
``overlays/<path or index>.png`` shows each image with its predicted 2D skeleton: the original image for
files of an image folder, else the network input.

The file is a ``torch.save``'d dict, one row per dataset item in dataset order::

    {
        "joints3d": float32 (N, 21, 3),  # mm, root-relative, camera frame of the input image
        "joints2d": float32 (N, 21, 2),  # pixels of the input image; only where the model predicts them
        "crop": float32 (N, 3, 3),       # original image pixels -> input pixels; where the data was cropped
        "joints2d_image": float32 (N, 21, 2),  # joints2d in the original image's pixels (needs both above)
        "index": int64 (N,),             # the item's index in the predict dataset
        "meta": {"dataset": [...], "frame": [...], ...},  # each sample's meta, one list entry per row
    }

Rows of mirrored samples (``meta['mirrored']``, e.g. left hands under ``mirror_left``) are mirrored back:
``joints3d`` gets ``x -> -x`` and ``joints2d_image`` ``u -> W - 1 - u`` (``W = meta['image_width']``), so
they describe the original image; ``joints2d`` stays in the (mirrored) network input.

Read it back with ``torch.load(path)``. Under DDP every rank predicts its share, rank 0 gathers them,
drops the duplicates the distributed sampler pads with and writes one file.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from handssl.models.base import valid_joints
from handssl.skeleton import ROOT

__all__ = ["PredictionWriter", "overlay_names", "prediction_rows", "result_row", "split_skipped"]

ARRAY_KEYS = ("joints3d", "joints3d_camera", "joints2d", "confidence", "crop", "joints2d_image")


class PredictionWriter(BasePredictionWriter):
    """Collect every predict batch and write ``<run dir>/<filename>`` at the end of ``predict``.

    The run dir is ``trainer.log_dir`` (``runs/<name>/version_<n>/`` under ``handssl predict``), or
    ``output_dir`` when given.

    Args:
        filename: Name of the ``torch.save`` file written.
        output_dir: Folder to write into instead of the run directory.
        jsonl_filename: Name of the JSON-lines file written (``None``: none).
        overlays: Also write one PNG per item with the predicted skeleton drawn on the image.
        overlay_dir: Sub-folder of the run directory for the overlays.
    """

    def __init__(
        self,
        filename: str = "predictions.pt",
        output_dir: str | None = None,
        jsonl_filename: str | None = "predictions.jsonl",
        overlays: bool = False,
        overlay_dir: str = "overlays",
    ) -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self.output_dir = output_dir
        self.jsonl_filename = jsonl_filename
        self.jsonl_path: Path | None = None
        self.overlays = overlays
        self.overlay_dir = overlay_dir
        self._rows: list[dict[str, Any]] = []
        self.path: Path | None = None
        #: ``(path or id, reason)`` of every item left out of the last ``predict`` (``meta['skipped']``, e.g.
        #: an unreadable image of :class:`~handssl.data.ImageFolder`).
        self.skipped: list[tuple[str, str]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []
        self.skipped = []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for i, row in enumerate(prediction_rows(prediction, batch, batch_indices)):
            if self.overlays and isinstance(batch, dict) and isinstance(batch.get("image"), Tensor):
                row["input_image"] = batch["image"][i].detach().float().cpu()
            self._rows.append(row)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ``trainer.log_dir`` broadcasts: every rank asks, rank 0 writes.
        out_dir = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        rows = self._rows
        if trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        self._rows = []
        if not trainer.is_global_zero:
            return
        by_index = {row["index"]: row for row in rows}  # the distributed sampler repeats items to even out
        ordered, self.skipped = split_skipped([by_index[i] for i in sorted(by_index)])
        for name, reason in self.skipped:
            print(f"handssl: skipped {name}: {reason}", file=sys.stderr)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / self.filename
        torch.save(_stack(ordered), self.path)
        if self.jsonl_filename:
            self.jsonl_path = out_dir / self.jsonl_filename
            with self.jsonl_path.open("w") as f:
                for row in ordered:
                    f.write(json.dumps(_json_row(row)) + "\n")
        rank_zero_info(f"handssl: wrote {len(ordered)} predictions to {self.jsonl_path or self.path}")
        if self.overlays:
            root = getattr(getattr(trainer, "datamodule", None), "datasets", {}).get("predict")
            root = getattr(root, "root", None)
            folder = out_dir / self.overlay_dir
            names = overlay_names([row["meta"].get("path") for row in ordered])
            written = [
                write_overlay(row, folder, Path(root) if root is not None else None, name=name)
                for row, name in zip(ordered, names, strict=True)
            ]
            rank_zero_info(f"handssl: wrote {sum(w is not None for w in written)} overlays to {folder}")
        if self.skipped:
            print(
                f"handssl: skipped {len(self.skipped)} of {len(ordered) + len(self.skipped)} items (listed "
                f"above); wrote the other {len(ordered)}",
                file=sys.stderr,
            )


def split_skipped(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows to write, and ``(path or id, reason)`` of the rows whose ``meta['skipped']`` says why they are not."""
    kept, skipped = [], []
    for row in rows:
        reason = row["meta"].get("skipped")
        if reason:
            meta = row["meta"]
            name = meta.get("path") or f"{meta.get('dataset', 'item')}/{meta.get('frame', row['index'])}"
            skipped.append((str(name), str(reason)))
        else:
            kept.append(row)
    return kept, skipped


def overlay_names(paths: Sequence[str | None]) -> list[Path | None]:
    """Overlay file names for images at ``paths``, one per image.

    ``a.png`` for ``a.jpg``, or ``a.jpg.png`` when another image shares the stem (``a.png``), so no overlay
    overwrites another; ``None`` for items that are no file.
    """
    stems = [str(Path(p).with_suffix("")) if p is not None else None for p in paths]
    shared = {s for s in stems if s is not None and stems.count(s) > 1}
    out: list[Path | None] = []
    for path, stem in zip(paths, stems, strict=True):
        if path is None:
            out.append(None)
        else:
            out.append(Path(f"{path}.png") if stem in shared else Path(path).with_suffix(".png"))
    return out


def prediction_rows(prediction: Any, batch: Any, batch_indices: Sequence[int] | None) -> list[dict[str, Any]]:
    """One predict batch as per-item rows in the original images (shared by the writer and :func:`handssl.infer`).

    Args:
        prediction: What the task's ``predict_step`` returned (a dict with ``joints3d``).
        batch: The batch it was given (its ``crop`` maps 2D joints back; its labels may give the root).
        batch_indices: The items' indices in the dataset.

    Returns:
        Per item, CPU float tensors (``joints3d``, and where known ``joints3d_camera``, ``joints2d``,
        ``confidence``, ``crop``, ``joints2d_image``; mirrored items mirrored back), ``index`` and ``meta``.
    """
    if not isinstance(prediction, dict) or "joints3d" not in prediction:
        raise TypeError(
            f"PredictionWriter expects predict_step to return a dict with 'joints3d', got {type(prediction)}"
        )
    arrays = {k: prediction[k].detach().float().cpu() for k in ARRAY_KEYS if prediction.get(k) is not None}
    n = arrays["joints3d"].shape[0]
    if batch_indices is None or len(batch_indices) != n:
        raise RuntimeError("PredictionWriter needs the predict loop's batch indices (a map-style dataset)")
    if "joints3d_camera" not in arrays and isinstance(batch, dict):
        root = _known_root(batch, n)
        if root is not None:  # the sample's labels give the root: root-relative prediction + that root
            arrays["joints3d_camera"] = torch.where(
                torch.isfinite(root)[:, None], arrays["joints3d"] + root[:, None], torch.nan
            )
    crop = batch.get("crop") if isinstance(batch, dict) else None
    if isinstance(crop, Tensor) and crop.shape == (n, 3, 3):
        arrays["crop"] = crop.detach().float().cpu()
        if "joints2d" in arrays:
            inverse = torch.linalg.inv(arrays["crop"].double())
            uv = arrays["joints2d"].double()
            arrays["joints2d_image"] = (
                uv @ inverse[:, :2, :2].transpose(1, 2) + inverse[:, None, :2, 2]
            ).float()
    meta = _split_meta(prediction.get("meta"), n)
    rows = []
    for i in range(n):
        row = {k: v[i] for k, v in arrays.items()}
        if meta[i].get("mirrored"):
            row = _unmirror(row, meta[i])
        row["index"] = int(batch_indices[i])
        row["meta"] = meta[i]
        rows.append(row)
    return rows


def result_row(row: dict[str, Any]) -> dict[str, Any]:
    """The public fields of one prediction row, as tensors: what a ``predictions.jsonl`` line holds.

    ``index``; ``path`` (image files) or ``id`` (``<dataset>/<frame>``); ``joints2d`` (original image pixels,
    ``None`` when the model predicts none); ``joints3d``; ``joints3d_camera`` only when finite; ``confidence``
    where the model has one; ``calibrated`` where the data says.
    """
    meta = row["meta"]
    out: dict[str, Any] = {"index": row["index"]}
    if meta.get("path") is not None:
        out["path"] = str(meta["path"])
    else:
        out["id"] = f"{meta.get('dataset', 'item')}/{meta.get('frame', row['index'])}"
    joints2d = row.get("joints2d_image")
    if joints2d is None and "crop" not in row:
        joints2d = row.get("joints2d")  # uncropped input: its pixels are the original image's
    out["joints2d"] = joints2d
    out["joints3d"] = row["joints3d"]
    if "joints3d_camera" in row and torch.isfinite(row["joints3d_camera"]).all():
        out["joints3d_camera"] = row["joints3d_camera"]
    if "confidence" in row:
        out["confidence"] = row["confidence"]
    if "calibrated" in meta:
        out["calibrated"] = bool(meta["calibrated"])
    return out


def _unmirror(row: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A mirrored sample's predictions in the original (unmirrored) image."""
    out = dict(row)
    for key in ("joints3d", "joints3d_camera"):
        if key in row:
            j3 = row[key].clone()
            j3[..., 0] = -j3[..., 0]
            out[key] = j3
    if "joints2d_image" in row and meta.get("image_width") is not None:
        j2 = row["joints2d_image"].clone()
        j2[..., 0] = (meta["image_width"] - 1) - j2[..., 0]
        out["joints2d_image"] = j2
    return out


def write_overlay(
    row: dict[str, Any], folder: Path, root: Path | None = None, name: Path | None = None
) -> Path | None:
    """Draw one prediction row's 2D skeleton on its image and save ``folder/<name>.png`` (None: no 2D joints).

    The image is the original file ``root / meta['path']`` when both are known (with ``joints2d_image``),
    else the network input kept in ``row['input_image']`` (with ``joints2d``). ``name`` overrides the
    file name of an image file's overlay (see :func:`overlay_names`).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from handssl.data.base import load_image
    from handssl.viz import draw_skeleton_2d, image_to_numpy

    path = row["meta"].get("path")
    if root is not None and path is not None and "joints2d_image" in row:
        image, joints2d = load_image(root / path), row["joints2d_image"]
        name = name or Path(path).with_suffix(".png")
    elif "input_image" in row and "joints2d" in row:
        image, joints2d = image_to_numpy(row["input_image"]), row["joints2d"]
        name = Path(f"{row['index']:06d}.png")
    else:
        return None
    h, w = image.shape[:2]
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.set_axis_off()
    draw_skeleton_2d(ax, joints2d)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    out = folder / name
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _known_root(batch: dict[str, Any], n: int) -> Tensor | None:
    """``(n, 3)`` camera-frame root joints from the batch's labels (NaN where not annotated), or None."""
    joints = batch.get("joints3d")
    if not isinstance(joints, Tensor) or joints.shape[:1] != (n,) or not isinstance(batch.get("K"), Tensor):
        return None
    root = joints[:, ROOT].detach().float().cpu().clone()
    valid = valid_joints(batch, "joints3d")
    if valid is not None:
        root[~valid[:, ROOT].cpu()] = torch.nan
    if not torch.isfinite(root).any():
        return None
    return root


def _numbers(x: Tensor) -> Any:
    """A tensor as nested lists of floats rounded to 4 decimals, with ``None`` for NaN / inf."""
    if x.dim() == 0:
        v = float(x)
        return round(v, 4) if math.isfinite(v) else None
    return [_numbers(v) for v in x]


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """One ``predictions.jsonl`` line (:func:`result_row`, numbers rounded to 4 decimals, NaN as ``null``)."""
    return {k: _numbers(v) if isinstance(v, Tensor) else v for k, v in result_row(row).items()}


def _split_meta(meta: Any, n: int) -> list[dict[str, Any]]:
    """A collated ``meta`` dict (lists or tensors per key) as ``n`` per-sample dicts of plain values."""
    if not isinstance(meta, dict):
        return [{} for _ in range(n)]
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, values in meta.items():
        if isinstance(values, Tensor):
            values = values.tolist()
        if not isinstance(values, (list, tuple)) or len(values) != n:
            continue  # not a per-sample field
        for i, value in enumerate(values):
            out[i][key] = value.tolist() if isinstance(value, Tensor) else value
    return out


def _stack(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"index": torch.tensor([r["index"] for r in rows], dtype=torch.int64)}
    for key in ARRAY_KEYS:
        if rows and all(key in r for r in rows):
            out[key] = torch.stack([r[key] for r in rows])
    keys = sorted({k for r in rows for k in r["meta"]})
    out["meta"] = {k: [r["meta"].get(k) for r in rows] for k in keys}
    return out
