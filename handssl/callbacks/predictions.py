"""Write what ``handssl predict`` predicts: :class:`PredictionWriter` saves ``predictions.pt`` in the run folder.

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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

__all__ = ["PredictionWriter"]

ARRAY_KEYS = ("joints3d", "joints2d", "confidence", "crop", "joints2d_image")


class PredictionWriter(BasePredictionWriter):
    """Collect every predict batch and write ``<run dir>/<filename>`` at the end of ``predict``.

    The run dir is ``trainer.log_dir`` (``runs/<name>/version_<n>/`` under ``handssl predict``), or
    ``output_dir`` when given.

    Args:
        filename: Name of the file written.
        output_dir: Folder to write into instead of the run directory.
    """

    def __init__(self, filename: str = "predictions.pt", output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self.output_dir = output_dir
        self._rows: list[dict[str, Any]] = []
        self.path: Path | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

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
        if not isinstance(prediction, dict) or "joints3d" not in prediction:
            raise TypeError(
                f"PredictionWriter expects predict_step to return a dict with 'joints3d', got {type(prediction)}"
            )
        arrays = {
            k: prediction[k].detach().float().cpu() for k in ARRAY_KEYS if prediction.get(k) is not None
        }
        n = arrays["joints3d"].shape[0]
        if batch_indices is None or len(batch_indices) != n:
            raise RuntimeError(
                "PredictionWriter needs the predict loop's batch indices (a map-style dataset)"
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
        for i in range(n):
            row = {k: v[i] for k, v in arrays.items()}
            if meta[i].get("mirrored"):
                row = _unmirror(row, meta[i])
            row["index"] = int(batch_indices[i])
            row["meta"] = meta[i]
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
        ordered = [by_index[i] for i in sorted(by_index)]
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / self.filename
        torch.save(_stack(ordered), self.path)
        rank_zero_info(f"handssl: wrote {len(ordered)} predictions to {self.path}")


def _unmirror(row: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A mirrored sample's predictions in the original (unmirrored) image."""
    out = dict(row)
    j3 = row["joints3d"].clone()
    j3[..., 0] = -j3[..., 0]
    out["joints3d"] = j3
    if "joints2d_image" in row and meta.get("image_width") is not None:
        j2 = row["joints2d_image"].clone()
        j2[..., 0] = (meta["image_width"] - 1) - j2[..., 0]
        out["joints2d_image"] = j2
    return out


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
