"""Pose25DTask: lifting, evaluation, prediction and health of a task whose network predicts 2.5D poses.

A 2.5D network (:class:`~handssl.models.components.pose25d.Pose25DNet`) predicts ``uv`` pixels and a depth
relative to a root joint; the task lifts them to camera-frame millimetres with a
:class:`~handssl.models.components.lifting.Lifter` (``lifting``: the annotated root depth and scale, the paper's
protocol, or predicted ones), scores them with the base task's metrics and logs the network's health
(:func:`~handssl.metrics.health.pose25d_health`, ``val/health_*``) from the same forward pass.
:class:`~handssl.models.SemiHandModule` builds on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from handssl.models.base import BaseHandTask, to_float
from handssl.models.components.lifting import Lifter
from handssl.skeleton import root_relative

__all__ = ["Pose25DTask"]


class Pose25DTask(BaseHandTask):
    """A :class:`BaseHandTask` whose evaluation network (:attr:`eval_model`) predicts 2.5D poses.

    Subclasses set ``lifter`` (the :class:`~handssl.models.components.lifting.Lifter`) and ``lifting``
    (``"known"`` or ``"predicted"``: how evaluation and prediction lift) before ``super().__init__``, and define
    :attr:`eval_model`. Evaluation, prediction and the health diagnostics come from here.
    """

    lifter: Lifter
    lifting: str
    _last_eval_out: dict[str, Tensor] | None = None

    @property
    def template_scale_mm(self) -> float:
        """Reference-bone length (mm) of the template hand of ``"predicted"`` lifting."""
        return self.lifter.template_scale_mm

    @property
    def eval_model(self) -> nn.Module:
        """The network used for evaluation and prediction (override)."""
        raise NotImplementedError

    def lifting_params(
        self,
        uv: Tensor,
        depth: Tensor,
        K: Tensor,
        lifting: str,
        joints3d: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Root depth and scale (both ``(B,)`` mm) to lift a 2.5D pose (:meth:`Lifter.params`)."""
        return self.lifter.params(uv, depth, K, lifting, joints3d, valid)

    def lift_known(self, out: dict[str, Tensor], batch: dict[str, Any]) -> Tensor:
        """Camera-frame joints (mm) of network outputs lifted with the batch's annotated root depth and scale."""
        return self.lifter.lift_known(out, batch)

    def health(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """:func:`~handssl.metrics.health.pose25d_health` of network outputs on an annotated batch.

        3D is lifted with the annotated root depth and scale (``"known"``), whatever ``lifting`` says, so that
        depth and size are judged on their own.
        """
        with torch.no_grad(), self.full_precision():
            return self.lifter.health(to_float(out), batch)

    def log_health(self, stage: str, out: dict[str, Tensor], batch: dict[str, Any]) -> None:
        """Log the finite :meth:`health` values as ``{stage}/health_*`` (batches with 2D labels and ``K``)."""
        if "joints2d" not in batch or "K" not in batch:
            return
        for name, value in self.health(out, batch).items():
            if torch.isfinite(value):
                self.log(f"{stage}/health_{name}", value, batch_size=out["uv"].shape[0])

    def _lift_batch(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor]:
        """The evaluation network's outputs on ``batch`` and its camera-frame 3D joints (mm, as ``lifting``)."""
        out = to_float(self.eval_model(batch["image"]))
        with self.full_precision():
            joints = self.lifter.lift(
                out["uv"], out["depth"], batch["K"], self.lifting, batch.get("joints3d"), batch.get("valid")
            )
        return out, joints

    def predict_joints3d(self, batch: dict[str, Any]) -> Tensor:
        out, joints = self._lift_batch(batch)
        self._last_eval_out = out  # validation_step reads it for the health diagnostics: no second pass
        return root_relative(joints)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The base task's metrics plus the network's health (``val/health_*``) from the same forward pass."""
        self._evaluate(batch, "val")
        if self._last_eval_out is not None:
            self.log_health("val", self._last_eval_out, batch)
            self._last_eval_out = None

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Root-relative and camera-frame 3D joints, 2D joints and a per-joint confidence.

        ``joints3d`` and ``joints3d_camera`` in mm (the root depth as ``lifting`` gives it, with the batch's
        ``K``), ``joints2d`` in network input pixels, ``confidence`` the peak of each joint's heatmap in (0, 1].
        """
        out, joints = self._lift_batch(batch)
        return {
            "joints3d": root_relative(joints),
            "joints3d_camera": joints,
            "joints2d": out["uv"],
            "confidence": out["heatmaps"].flatten(2).amax(-1),
            "meta": batch.get("meta"),
        }
