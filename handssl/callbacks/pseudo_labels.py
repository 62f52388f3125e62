"""Pseudo-label export and wandb panels for :class:`~handssl.models.SemiHandModule`.

:class:`PseudoLabelExport` writes, for every unlabelled image, the pseudo-label the model would give it now
(joints, spread and confidence, whether it passes the threshold, whether biomechanical correction changed
it and by how much, and, where the unlabelled set carries annotations, the pseudo-label's error before and
after correction) to ``<dir>/pseudo_labels.pt`` and ``<dir>/pseudo_labels.csv``, at the end of fit
(``at_fit_end``) and optionally every few epochs. It is cheap by default: only the first ``max_batches``
batches of the unlabelled set (``None`` for all of it), and nothing at all under ``fast_dev_run``. The labelling
pass is the one the paper's offline rounds use
(:func:`~handssl.callbacks.pseudo_label_pass.label_unlabeled_set`). With a :class:`~pytorch_lightning.loggers.WandbLogger` it also logs, every
``log_every_n_steps`` training steps, pseudo-labels before and after correction drawn over their images, a
confidence histogram and the PCK curves of the pseudo-labels before and after correction (all through
:mod:`handssl.viz`); without one it logs no media.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from handssl.callbacks._state import task_state
from handssl.callbacks.pseudo_label_pass import label_unlabeled_set
from handssl.models.components.pseudo_labels import PseudoLabels
from handssl.skeleton import root_relative

__all__ = ["PseudoLabelExport"]

_CSV_FIELDS = (
    "index",
    "spread",
    "confidence",
    "accepted",
    "changed",
    "refused",
    "mirrored",
    "correction_shift_mm",
    "error_raw_mm",
    "error_final_mm",
    "error_raw_known_mm",
    "error_final_known_mm",
)


def _wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger
    return None


def _fast_dev_run(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` runs a ``fast_dev_run`` (an attribute Lightning sets at runtime, so untyped)."""
    return bool(getattr(trainer, "fast_dev_run", False))


class PseudoLabelExport(Callback):
    """Export SemiHand pseudo-labels per unlabelled image, and log pseudo-label panels to wandb.

    Args:
        dirpath: Folder of the export (default: the run's log directory, else ``default_root_dir``).
        filename: File stem of the ``.pt`` and ``.csv`` files.
        every_n_epochs: Also export after every this many training epochs (0: never during fit).
        at_fit_end: Export at the end of fit.
        max_batches: Label only the first this many batches of the unlabelled set (``None``: all of it).
        log_every_n_steps: Log the wandb panels every this many training steps (0 disables them).
        max_images: Images in the before/after-correction panel.
        pck_low_mm: Lowest threshold of the pseudo-label PCK curves.
        pck_high_mm: Highest threshold of the pseudo-label PCK curves.
        pck_steps: Number of thresholds.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "pseudo_labels",
        every_n_epochs: int = 0,
        at_fit_end: bool = True,
        max_batches: int | None = 8,
        log_every_n_steps: int = 200,
        max_images: int = 4,
        pck_low_mm: float = 0.0,
        pck_high_mm: float = 50.0,
        pck_steps: int = 21,
    ) -> None:
        if every_n_epochs < 0 or log_every_n_steps < 0:
            raise ValueError("every_n_epochs and log_every_n_steps must be >= 0")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        self.at_fit_end = at_fit_end
        self.max_batches = max_batches
        self.dirpath = dirpath
        self.filename = filename
        self.every_n_epochs = every_n_epochs
        self.log_every_n_steps = log_every_n_steps
        self.max_images = max_images
        self.pck = (pck_low_mm, pck_high_mm, pck_steps)
        self.last_summary: dict[str, float] | None = None

    # ----------------------------------------------------------------------------------- export
    def _directory(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    @torch.no_grad()
    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor] | None:
        """Pseudo-labels of the unlabelled items (the first ``max_batches`` batches) as ``(N, ...)`` tensors."""
        return label_unlabeled_set(
            pl_module,
            getattr(trainer, "datamodule", None),
            trainer.global_rank,
            trainer.world_size,
            max_batches=self.max_batches,
        )

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        """Compute, write (rank 0) and summarise the pseudo-labels of the unlabelled items."""
        table = self.collect(trainer, pl_module)
        if table is None:
            return None
        summary = _summary(table)
        self.last_summary = summary
        if trainer.is_global_zero:
            folder = self._directory(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(table, folder / f"{self.filename}.pt")
            with open(folder / f"{self.filename}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                fields = [f for f in _CSV_FIELDS if f in table]
                writer.writerow(fields)
                for i in range(table["index"].shape[0]):
                    writer.writerow([_cell(table[f][i]) for f in fields])
            rank_zero_info(
                f"PseudoLabelExport: wrote {table['index'].shape[0]} pseudo-labels to {folder}/{self.filename}.pt/.csv"
            )
        return summary

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _fast_dev_run(trainer):
            return
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._export_and_log(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_fit_end and not _fast_dev_run(trainer):
            self._export_and_log(trainer, pl_module)

    def _export_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = self.export(trainer, pl_module)
        if summary and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"pseudo/{k}": v for k, v in summary.items()}, step=trainer.global_step)

    # ------------------------------------------------------------------------------------ media
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (
            _fast_dev_run(trainer)
            or not self.log_every_n_steps
            or trainer.global_step % self.log_every_n_steps
        ):
            return
        logger = _wandb_logger(trainer)
        stash = task_state(pl_module).get("pseudo_labels")
        if logger is None or stash is None or not trainer.is_global_zero:
            return
        from handssl import viz

        images = self.panels(stash)
        step = trainer.global_step
        for key, figure in images.items():
            logger.log_image(key=f"pseudo/{key}", images=[viz.figure_to_array(figure)], step=step)
            figure.clf()

    def panels(self, stash: dict[str, Any]) -> dict[str, Any]:
        """The matplotlib figures logged to wandb, from ``pseudo_labels`` of the task's ``visualization_state()``."""
        import matplotlib.pyplot as plt

        from handssl import viz

        labels: PseudoLabels = stash["labels"]
        images = stash["image"]
        gt2d = stash.get("eval_joints2d")
        count = min(self.max_images, images.shape[0])
        fig, axes = plt.subplots(1, count, figsize=(3 * count, 3), squeeze=False)
        for i in range(count):
            viz.plot_pseudo_label_correction(
                images[i],
                labels.uv_raw[i],
                labels.uv[i],
                gt_2d=gt2d[i] if gt2d is not None and gt2d.numel() else None,
                ax=axes[0, i],
                title=f"C={float(labels.spread[i]):.2f}{'' if labels.accepted[i] else ' (rejected)'}",
            )
        out = {"correction": fig}
        threshold = stash.get("threshold")
        out["confidence"] = viz.plot_confidence_histogram(
            labels.confidence,
            threshold=None if threshold is None else float(torch.exp(-torch.tensor(threshold))),
        )
        gt3d = stash.get("eval_joints3d")
        if gt3d is not None and gt3d.numel():
            valid = stash["eval_valid"]  # annotated pseudo-labels come with their validity
            from handssl.metrics import pck_curve
            from handssl.metrics.functional import pck_thresholds

            thresholds = pck_thresholds(*self.pck)
            target = root_relative(gt3d)
            curves = {}
            for name, joints in (
                ("before correction", labels.joints3d_raw),
                ("after correction", labels.joints3d),
            ):
                rel = root_relative(joints)
                curves[name] = (
                    thresholds,
                    pck_curve(rel, torch.nan_to_num(target), thresholds, valid.bool()),
                )
            out["pck"] = viz.plot_pck_curves(curves, title="pseudo-label PCK")
        return out


def _cell(value: Tensor) -> Any:
    if value.dtype == torch.bool:
        return int(value)
    if value.is_floating_point():
        return f"{float(value):.4f}"
    return int(value)


def _summary(table: dict[str, Tensor]) -> dict[str, float]:
    accepted = table["accepted"].bool()
    out = {
        "count": float(accepted.numel()),
        "accept_rate": float(accepted.float().mean()),
        "changed_rate": float(table["changed"].float().mean()),
        "correction_shift_mm": float(table["correction_shift_mm"].mean()),
        "spread": float(table["spread"].mean()),
    }
    if "refused" in table:
        out["refused_rate"] = float(table["refused"].float().mean())
    for key in ("error_raw_mm", "error_final_mm", "error_raw_known_mm", "error_final_known_mm"):
        if key in table:
            err = table[key]
            finite = torch.isfinite(err)
            if finite.any():
                out[key] = float(err[finite].mean())
            for name, chosen in (("accepted", accepted), ("rejected", ~accepted)):
                keep = finite & chosen
                if keep.any():
                    out[f"{key}_{name}"] = float(err[keep].mean())
    return out
