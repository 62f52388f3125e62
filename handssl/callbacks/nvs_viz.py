"""wandb panels for novel-view synthesis: input / target / synthesized / turntable grids and the latent points.

Logs only through a :class:`~pytorch_lightning.loggers.WandbLogger`, on global rank zero, every
``every_n_steps`` optimizer steps; with any other logger (or none) it does nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from handssl.viz import image_grid


@torch.no_grad()
def nvs_panels(
    module: Any, batch: dict[str, Any], num_samples: int = 4, turntable_views: int = 8
) -> dict[str, Any]:
    """Images and latent points of the first ``num_samples`` pairs of ``batch``, in eval mode.

    Args:
        module: An :class:`~handssl.models.nvs.NVSModule`.
        batch: A batch of :class:`~handssl.data.multiview.MultiViewPairs` items.
        num_samples: Pairs to show.
        turntable_views: Novel views per pair on a turntable about the camera's y axis (grey background).

    Returns:
        ``images`` ``(S, columns, 3, H, W)`` (input, target, synthesized ``i -> j``, then the turntable; only the
        input without a decoder), ``grid`` (``uint8`` tile of those, one pair per row) and ``points``
        ``(N, 3)`` float numpy, the first pair's latent ``L3D``.
    """
    was_training = module.training
    module.eval()
    try:
        image = batch["image"][:num_samples]
        points, _ = module.encode(image)
        columns = [image]
        if module.decoder is not None:
            columns.append(batch["target"][:num_samples])
            columns.append(
                module.synthesize(image, batch["R_ij"][:num_samples], batch["background"][:num_samples])
            )
            if turntable_views > 0:
                columns.extend(module.turntable(image, turntable_views).unbind(1))
    finally:
        module.train(was_training)
    images = torch.stack(columns, dim=1).clamp(0, 1).float().cpu()
    grid = image_grid(images.flatten(0, 1), nrow=images.shape[1])
    return {"images": images, "grid": grid, "points": points[0].float().cpu().numpy()}


class NVSVisualization(Callback):
    """Log novel-view-synthesis panels to wandb every ``every_n_steps`` training steps.

    Panels: ``nvs/grid`` (per row: input, target view, synthesized target view, turntable of novel views)
    and ``nvs/latent_points`` (the 3D latent of the first pair as a ``wandb.Object3D`` point cloud).

    Args:
        every_n_steps: Log every this many optimizer steps (and at step 0).
        num_samples: Pairs per grid.
        turntable_views: Turntable views per pair (0 disables the turntable).
        log_point_cloud: Also log the latent point cloud.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_samples: int = 4,
        turntable_views: int = 8,
        log_point_cloud: bool = True,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.turntable_views = turntable_views
        self.log_point_cloud = log_point_cloud
        self._last_step = -1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        self._last_step = step
        import wandb

        panels = nvs_panels(pl_module, batch, self.num_samples, self.turntable_views)
        payload: dict[str, Any] = {
            "nvs/grid": wandb.Image(panels["grid"], caption=_caption(pl_module, self.turntable_views)),
            "trainer/global_step": step,
        }
        if self.log_point_cloud:
            payload["nvs/latent_points"] = wandb.Object3D(np.asarray(panels["points"], dtype=np.float64))
        for logger in loggers:
            logger.experiment.log(payload)


def _caption(module: Any, turntable_views: int) -> str:
    if getattr(module, "decoder", None) is None:
        return "input (no decoder in this regime)"
    return f"input | target | synthesized | turntable x{turntable_views}"


__all__ = ["NVSVisualization", "nvs_panels"]
