"""Supervised baseline: one image -> root-relative 3D joints (and 2D joints), a small ResNet + MLP head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from handssl.metrics.functional import masked_mean
from handssl.models.base import BaseHandTask, check_batch, to_float, valid_joints
from handssl.models.components.backbones import GlobalPool, ResNetBackbone
from handssl.models.components.heads import JointRegressionHead
from handssl.models.options import Optimization
from handssl.skeleton import root_relative, valid_with_root


def masked_l1(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean L1 distance over the joints where ``valid`` is True (0 when none is)."""
    return masked_mean((pred - torch.nan_to_num(target)).abs(), valid.unsqueeze(-1))


class SupervisedModule(BaseHandTask):
    """Regress root-relative 3D joints and 2D joints from one image (the supervised baseline).

    Args:
        backbone_widths: Channels of the ResNet stages.
        backbone_blocks: Basic blocks per stage.
        head_hidden: Hidden sizes of the regression MLP.
        dropout: Dropout in the MLP.
        joint_scale_mm: Unit of the 3D output layer in mm.
        loss_2d_weight: Weight of the 2D loss (2D measured in image-side units, 3D in units of ``joint_scale_mm``).
        optimizer: AdamW and its schedule (:class:`~handssl.models.options.Optimization`; here lr 2e-3, cosine).
        eval_protocol: Evaluation protocol name (see :mod:`handssl.metrics.protocols`).
        channels_last: Convolutions in ``channels_last`` memory format (see :class:`BaseHandTask`).
        compile: Compile backbone and head with ``torch.compile`` (see :class:`BaseHandTask`).
        compile_backend: ``"inductor"`` or ``"aot_eager"``.
    """

    def __init__(
        self,
        backbone_widths: Sequence[int] = (16, 32, 64, 128),
        backbone_blocks: Sequence[int] = (1, 1, 1, 1),
        head_hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        joint_scale_mm: float = 100.0,
        loss_2d_weight: float = 1.0,
        optimizer: Optimization = Optimization(lr=2e-3),
        eval_protocol: str = "synthhands",
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: Literal["inductor", "aot_eager"] = "inductor",
    ) -> None:
        self.backbone_widths = backbone_widths
        self.backbone_blocks = backbone_blocks
        self.head_hidden = head_hidden
        self.dropout = dropout
        self.joint_scale_mm = joint_scale_mm
        self.loss_2d_weight = loss_2d_weight
        super().__init__(
            optimizer=optimizer,
            eval_protocol=eval_protocol,
            channels_last=channels_last,
            compile=compile,
            compile_backend=compile_backend,
        )

    def configure_models(self) -> None:
        self.backbone = ResNetBackbone(widths=self.backbone_widths, blocks=self.backbone_blocks)
        self.pool = GlobalPool()
        self.head = JointRegressionHead(
            self.backbone.out_channels, self.head_hidden, self.dropout, self.joint_scale_mm
        )

    def compile_targets(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` image to ``(joints3d_rel (B, 21, 3) mm, joints2d (B, 21, 2) px)``, float32."""
        joints3d, joints2d_unit = to_float(self.head(self.pool(self.backbone(image))))
        size = torch.tensor([image.shape[-1], image.shape[-2]], dtype=torch.float32, device=image.device)
        return joints3d, joints2d_unit * size - 0.5

    def predict_joints3d(self, batch: dict[str, Any]) -> Tensor:
        return self(batch["image"])[0]

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Root-relative ``joints3d`` (mm) and ``joints2d`` (pixels of the network input) of one batch."""
        joints3d, joints2d = self(batch["image"])
        return {"joints3d": joints3d, "joints2d": joints2d, "meta": batch.get("meta")}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        check_batch(batch, "training batch")
        image, valid = batch["image"], batch["valid"].bool()
        pred3d, pred2d = self(image)
        target3d = root_relative(batch["joints3d"])
        valid3d = valid_joints(batch, "joints3d")
        assert valid3d is not None, "valid_joints returns a mask: the batch has 'valid'"
        valid3d = valid_with_root(valid3d)
        scale = self.joint_scale_mm
        side = float(image.shape[-1])
        with self.full_precision():
            losses = {
                "loss_3d": masked_l1(pred3d / scale, target3d / scale, valid3d),
                "loss_2d": masked_l1(pred2d / side, batch["joints2d"] / side, valid),
            }
        losses["loss"] = losses["loss_3d"] + self.loss_2d_weight * losses["loss_2d"]
        return self.log_losses(losses, batch_size=image.shape[0])
