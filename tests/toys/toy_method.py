"""The README's *Add a method* guide, step 1, followed once: a toy supervised model with a heatmap head."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from handssl.metrics.functional import masked_mean
from handssl.models.base import BaseHandTask, check_batch, valid_joints
from handssl.models.options import Optimization
from handssl.skeleton import NUM_JOINTS, root_relative, valid_with_root


class ToyHeatmapModule(BaseHandTask):
    """Two strided convolutions to ``num_maps`` heatmaps, a linear layer from the heatmaps to 3D joints.

    Args:
        num_maps: Heatmaps of the head.
        width: Channels of the first convolution.
        joint_scale_mm: Unit of the 3D output layer in mm.
        loss: ``"l1"`` or ``"l2"`` distance to the root-relative 3D joints.
        image_size: Side of the input crops (the heatmaps' size, so the linear layer's, depends on it).
        optimizer: AdamW and its learning-rate schedule (:class:`~handssl.models.options.Optimization`).
        eval_protocol: Evaluation protocol name (see :mod:`handssl.metrics.protocols`).
    """

    def __init__(
        self,
        num_maps: int = 21,
        width: int = 8,
        joint_scale_mm: float = 100.0,
        loss: Literal["l1", "l2"] = "l1",
        image_size: int = 64,
        optimizer: Optimization = Optimization(),
        eval_protocol: str = "synthhands",
    ) -> None:
        self.num_maps = num_maps
        self.width = width
        self.joint_scale_mm = joint_scale_mm
        self.loss = loss
        self.image_size = image_size
        super().__init__(optimizer=optimizer, eval_protocol=eval_protocol)

    def configure_models(self) -> None:
        self.maps = nn.Sequential(
            nn.Conv2d(3, self.width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(self.width, self.num_maps, 3, stride=2, padding=1),
        )
        side = (self.image_size + 3) // 4
        self.head = nn.Linear(self.num_maps * side * side, NUM_JOINTS * 3)

    def forward(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` image to root-relative joints ``(B, 21, 3)`` in mm."""
        heatmaps = self.maps(image).flatten(2).softmax(-1).flatten(1)
        joints = self.head(heatmaps).view(-1, NUM_JOINTS, 3) * self.joint_scale_mm
        return root_relative(joints)

    def predict_joints3d(self, batch: dict[str, Any]) -> Tensor:
        return self(batch["image"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        check_batch(batch, "training batch")
        pred = self(batch["image"]) / self.joint_scale_mm
        target = root_relative(batch["joints3d"]).nan_to_num() / self.joint_scale_mm
        valid = valid_joints(batch, "joints3d")
        assert valid is not None, "a training batch has 'valid'"
        error = (pred - target).abs() if self.loss == "l1" else (pred - target).square()
        loss_3d = masked_mean(error, valid_with_root(valid).unsqueeze(-1))
        return self.log_losses({"loss": loss_3d, "loss_3d": loss_3d}, batch_size=pred.shape[0])
