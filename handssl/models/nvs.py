"""NVSModule: geometry-aware novel-view synthesis for 3D hand pose, in three training regimes.

Rhodin et al. (ECCV'18) learn a 3D latent ``L3D`` by re-rendering camera *i*'s image as camera *j* sees it;
Müller et al. adapt it to hands and train it jointly with the pose head. The regimes:

``supervised``
    image -> encoder -> pose head, on labeled items only; no decoder is built.
``pretrained``
    ``stage: 1`` synthesis on all frames without labels (encoder + decoder); ``stage: 2`` loads stage 1's
    checkpoint (``pretrained_checkpoint``), freezes encoder and decoder (weights and BatchNorm statistics)
    and trains the pose head on the labeled subset.
``semi``
    encoder, decoder and pose head optimised together: synthesis loss on every item, pose loss on the labeled
    items that :class:`~handssl.data.multiview.MultiViewDataModule` oversamples into every batch.

Batches are :class:`~handssl.data.multiview.MultiViewPairs` items. In training, each pair is a view swap
``i -> j`` with probability ``swap_probability`` and plain auto-encoding ``i -> i`` otherwise (Rhodin et al.:
1/2), and the appearance vector comes from ``image_t2``, another frame of the same sequence and camera. In
evaluation the swap is always ``i -> j`` with the input's own appearance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from handssl.models.base import BaseHandTask, check_batch
from handssl.models.components.losses import ReconstructionLoss, per_image_l1
from handssl.models.components.nvs import (
    NVSDecoder,
    NVSEncoder,
    PoseHead,
    composite,
    rotate_points,
    turntable_rotations,
)
from handssl.skeleton import ROOT

REGIMES = ("supervised", "pretrained", "semi")


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean squared error over the joints with ``weight`` 1 (0 when none; keeps the graph for DDP)."""
    w = weight.unsqueeze(-1).to(pred.dtype)
    return (((pred - torch.nan_to_num(target)) ** 2) * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a Lightning checkpoint (``state_dict`` inside) or a plain state dict from disk."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained_checkpoint not found: {path} (give the checkpoint that stage 1 of the pretrained "
            "regime wrote, e.g. experiments/nvs_pretrained.yaml's ModelCheckpoint dirpath)"
        )
    # Lightning checkpoints pickle hyper-parameters too; the file is the user's own training output.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (got {type(state).__name__})")
    return state


class NVSModule(BaseHandTask):
    """Geometry-aware novel-view synthesis learner with a pose head (regimes supervised | pretrained | semi).

    Args:
        regime: ``"supervised"``, ``"pretrained"`` or ``"semi"`` (see the module docstring).
        stage: Stage of the pretrained regime: ``1`` synthesis, ``2`` pose head on the frozen encoder.
        pretrained_checkpoint: Stage 1's checkpoint; required by stage 2 (encoder and decoder are loaded).
        image_size: Side of the square input and output images in pixels.
        num_points: Points ``N`` of the 3D latent ``L3D`` (Rhodin et al.: 200).
        appearance_dim: Size of the appearance vector (Rhodin et al.: 128).
        encoder_widths: Channels of the encoder's ResNet stages.
        encoder_blocks: Basic blocks per encoder stage.
        decoder_widths: Channels of the decoder's up-blocks (each doubles the resolution).
        decoder_latent_channels: Channels of the map ``L3D`` is lifted to at the decoder's lowest resolution.
        latent_dropout: Dropout on the lifted latent in the decoder (Rhodin et al.: 0.3).
        pose_hidden: Hidden sizes of the pose MLP (Rhodin et al.: two of 2048).
        pose_dropout: Dropout in the pose MLP (Rhodin et al.: 0.5).
        swap_probability: Chance that a training pair renders the other view rather than auto-encoding.
        appearance_swap: Take the appearance vector from ``image_t2`` (another frame) in training.
        pose_weight: Weight of the pose loss next to the synthesis loss (semi regime).
        l1_weight: Weight of the pixel L1 loss.
        structural_loss: ``"ssim"``, ``"gradient"`` or ``"none"``.
        structural_weight: Weight of the structural loss.
        perceptual_checkpoint: Optional ResNet-18 state dict on disk for a perceptual loss (never downloaded).
        perceptual_weight: Weight of the perceptual loss (Rhodin et al.: 2).
        lr: Learning rate of AdamW (Rhodin et al.: Adam, 1e-3).
        weight_decay: Weight decay of AdamW.
        scheduler: ``"cosine"`` or ``"none"`` (Rhodin et al.: constant).
        warmup_steps: Linear warm-up steps of the cosine schedule.
        eval_protocol: Evaluation protocol name (see :mod:`handssl.metrics.protocols`).
    """

    def __init__(
        self,
        regime: str = "semi",
        stage: int = 1,
        pretrained_checkpoint: str | None = None,
        image_size: int = 64,
        num_points: int = 200,
        appearance_dim: int = 64,
        encoder_widths: Sequence[int] = (16, 32, 64, 128),
        encoder_blocks: Sequence[int] = (1, 1, 1, 1),
        decoder_widths: Sequence[int] = (32, 16, 8),
        decoder_latent_channels: int = 64,
        latent_dropout: float = 0.3,
        pose_hidden: Sequence[int] = (2048, 2048),
        pose_dropout: float = 0.5,
        swap_probability: float = 0.5,
        appearance_swap: bool = True,
        pose_weight: float = 1.0,
        l1_weight: float = 1.0,
        structural_loss: str = "ssim",
        structural_weight: float = 1.0,
        perceptual_checkpoint: str | None = None,
        perceptual_weight: float = 2.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str = "cosine",
        warmup_steps: int = 50,
        eval_protocol: str = "synthhands",
    ) -> None:
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (synthesis) or 2 (pose head), got {stage}")
        if regime == "pretrained" and stage == 2 and not pretrained_checkpoint:
            raise ValueError(
                "stage 2 of the pretrained regime trains the pose head on stage 1's frozen encoder: "
                "set pretrained_checkpoint to stage 1's checkpoint"
            )
        if not 0.0 <= swap_probability <= 1.0:
            raise ValueError(f"swap_probability must be in [0, 1], got {swap_probability}")
        self.regime = regime
        self.stage = stage if regime == "pretrained" else None
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            scheduler=scheduler,
            warmup_steps=warmup_steps,
            eval_protocol=eval_protocol,
        )

    # --------------------------------------------------------------------------------- regime flags
    @property
    def uses_synthesis(self) -> bool:
        """Whether training optimises the synthesis loss (semi, pretrained stage 1)."""
        return self.regime == "semi" or self.stage == 1

    @property
    def uses_pose(self) -> bool:
        """Whether training optimises the pose loss (supervised, semi, pretrained stage 2)."""
        return self.regime in ("supervised", "semi") or self.stage == 2

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """Modules kept frozen (no gradient, eval mode) in this regime."""
        if self.stage == 1:
            return [self.pose_head]
        if self.stage == 2:
            return [self.encoder, self.decoder]
        return []

    @property
    def monitor(self) -> str:  # type: ignore[override]
        """Validation quantity to monitor for checkpoints: synthesis L1 in stage 1, MPJPE otherwise."""
        return "val/synthesis_l1" if self.stage == 1 else "val/mpjpe"

    # ---------------------------------------------------------------------------------- components
    def configure_models(self) -> None:
        hp = self.hparams
        self.encoder = NVSEncoder(
            hp.image_size, hp.num_points, hp.appearance_dim, hp.encoder_widths, hp.encoder_blocks
        )
        self.decoder: NVSDecoder | None = None
        if self.regime != "supervised":
            self.decoder = NVSDecoder(
                hp.image_size,
                hp.num_points,
                hp.appearance_dim,
                hp.decoder_latent_channels,
                hp.decoder_widths,
                hp.latent_dropout,
            )
        self.pose_head = PoseHead(hp.num_points, hp.pose_hidden, hp.pose_dropout)
        if self.stage == 2:
            self.load_pretrained(hp.pretrained_checkpoint)
        for module in self.frozen_modules:
            module.requires_grad_(False)
            module.eval()

    def configure_losses(self) -> None:
        hp = self.hparams
        self.reconstruction = None
        if self.uses_synthesis:
            self.reconstruction = ReconstructionLoss(
                hp.l1_weight,
                hp.structural_loss,
                hp.structural_weight,
                hp.perceptual_checkpoint,
                hp.perceptual_weight,
            )

    def load_pretrained(self, path: str | Path) -> None:
        """Load encoder and decoder weights (and BatchNorm statistics) from stage 1's checkpoint."""
        state = load_state_dict_file(path)
        for name, module in (("encoder", self.encoder), ("decoder", self.decoder)):
            if module is None:
                continue
            prefix = f"{name}."
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not part:
                raise ValueError(f"{path} holds no {name} weights (keys starting with {prefix!r})")
            own = module.state_dict()
            mismatch = [k for k in own if k not in part or tuple(part[k].shape) != tuple(own[k].shape)]
            if mismatch:
                raise ValueError(
                    f"{path}: the {name} does not match this model's architecture ({len(mismatch)} missing or "
                    f"mis-shaped tensors, e.g. {mismatch[:3]}); use the same image_size, num_points, "
                    "appearance_dim and widths as stage 1"
                )
            module.load_state_dict(part)

    def train(self, mode: bool = True) -> NVSModule:
        """Switch train/eval mode, keeping the frozen parts of this regime in eval mode."""
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        share = getattr(datamodule, "labeled_share", None)
        if share is not None:
            self._check_labeled_share(float(share))
        if self.uses_pose and not bool(self.pose_head.has_statistics):
            if not hasattr(datamodule, "pose_statistics"):
                raise ValueError(
                    "the pose head needs the labeled training set's pose mean and std: use "
                    "handssl.data.MultiViewDataModule, or call module.pose_head.set_statistics(mean, std) first"
                )
            mean, std = datamodule.pose_statistics()
            self.pose_head.set_statistics(mean.to(self.device), std.to(self.device))

    def _check_labeled_share(self, share: float) -> None:
        name = self.regime if self.stage is None else f"pretrained stage {self.stage}"
        if self.uses_pose and not self.uses_synthesis and share != 1.0:
            raise ValueError(f"the {name} regime trains on labeled items only: set data labeled_share: 1.0")
        if self.stage == 1 and share != 0.0:
            raise ValueError("stage 1 of the pretrained regime uses no labels: set data labeled_share: 0.0")
        if self.regime == "semi" and share == 0.0:
            raise ValueError("the semi regime needs labeled items in every batch: set data labeled_share > 0")

    # ------------------------------------------------------------------------------------------ API
    def encode(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` image to ``(L3D (B, N, 3) in the image's camera frame, appearance (B, A))``."""
        return self.encoder(image)

    def _require_decoder(self) -> NVSDecoder:
        if self.decoder is None:
            raise RuntimeError("the supervised regime builds no decoder, so it cannot synthesise views")
        return self.decoder

    def synthesize(
        self,
        image: Tensor,
        R: Tensor,
        background: Tensor | None = None,
        appearance_image: Tensor | None = None,
        return_layers: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Render ``image`` as seen after rotating its 3D latent by ``R`` (a novel view).

        Args:
            image: ``(B, 3, H, W)`` input images in ``[0, 1]``.
            R: ``(3, 3)`` or ``(B, 3, 3)`` rotation from the input camera's frame to the novel camera's frame
                (``R_ij = R_j R_i^T`` for a real camera *j*; e.g. :func:`turntable_rotations` for a turntable).
            background: ``(B, 3, H, W)`` background of the novel view; mid-grey when omitted.
            appearance_image: Optional images whose appearance vectors replace the input's.
            return_layers: Also return the foreground and the mask.

        Returns:
            ``(B, 3, H, W)`` composited images, or a dict with ``image``, ``foreground`` and ``mask``.
        """
        decoder = self._require_decoder()
        points, appearance = self.encoder(image)
        if appearance_image is not None:
            appearance = self.encoder(appearance_image)[1]
        if background is None:
            background = torch.full_like(image, 0.5)
        foreground, mask = decoder.layers(rotate_points(points, R), appearance)
        out = composite(foreground, mask, background)
        if return_layers:
            return {"image": out, "foreground": foreground, "mask": mask}
        return out

    def turntable(self, image: Tensor, num_views: int = 8, background: Tensor | None = None) -> Tensor:
        """Novel views around the camera's y axis: ``(B, num_views, 3, H, W)``, the first the input's view."""
        decoder = self._require_decoder()
        points, appearance = self.encoder(image)
        if background is None:
            background = torch.full_like(image, 0.5)
        views = [
            decoder(rotate_points(points, R.to(points)), appearance, background)
            for R in turntable_rotations(num_views)
        ]
        return torch.stack(views, dim=1)

    def predict_pose(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` image to root-relative joints ``(B, 21, 3)`` in mm, in the image's camera frame."""
        if not bool(self.pose_head.has_statistics):
            raise RuntimeError(
                "the pose head has no training statistics yet: train it (supervised, semi or pretrained stage 2)"
            )
        points, _ = self.encoder(image)
        return self.pose_head.to_joints(self.pose_head(points))

    def predict_joints3d(self, batch: dict[str, Any]) -> Tensor:
        return self.predict_pose(batch["image"])

    # ------------------------------------------------------------------------------------- training
    def _synthesis_losses(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        image = batch["image"]
        size = image.shape[0]
        if self.hparams.appearance_swap:
            points, appearance = self.encoder(torch.cat([image, batch["image_t2"]]))
            points, appearance = points[:size], appearance[size:]
        else:
            points, appearance = self.encoder(image)
        swap = torch.rand(size, device=image.device) < self.hparams.swap_probability
        eye = torch.eye(3, dtype=image.dtype, device=image.device).expand(size, 3, 3)
        R = torch.where(swap[:, None, None], batch["R_ij"].to(image.dtype), eye)
        pick = swap[:, None, None, None]
        target = torch.where(pick, batch["target"], image)
        background = torch.where(pick, batch["background"], batch["background_input"])
        rendered = self._require_decoder()(rotate_points(points, R), appearance, background)
        terms = self.reconstruction(rendered, target)
        terms["synthesis"] = terms.pop("loss")
        return points, terms

    def _pose_loss(self, batch: dict[str, Any], points: Tensor | None) -> Tensor:
        if points is None:
            if self.stage == 2:
                with torch.no_grad():
                    points = self.encoder(batch["image"])[0]
            else:
                points = self.encoder(batch["image"])[0]
        joints = batch["joints3d"]
        valid = batch["valid"].bool() & batch["labeled"].bool()[:, None]
        valid = valid & valid[:, ROOT : ROOT + 1]
        target = self.pose_head.normalize(joints - joints[:, ROOT : ROOT + 1])
        # The head runs on every item (BatchNorm statistics over the whole batch); only labeled ones count.
        return masked_mse(self.pose_head(points), target, valid)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        check_batch(batch, "training batch")
        losses: dict[str, Tensor] = {}
        points = None
        total = torch.zeros((), device=self.device)
        if self.uses_synthesis:
            points, terms = self._synthesis_losses(batch)
            losses.update(terms)
            total = total + terms["synthesis"]
        if self.uses_pose:
            losses["pose"] = self._pose_loss(batch, points)
            total = total + self.hparams.pose_weight * losses["pose"]
        losses["loss"] = total
        size = batch["image"].shape[0]
        self.log("train/labeled_share", batch["labeled"].float().mean(), batch_size=size)
        return self.log_losses(losses, batch_size=size)

    # ----------------------------------------------------------------------------------- evaluation
    def _evaluate_pairs(self, batch: dict[str, Any], stage: str) -> None:
        size = batch["image"].shape[0]
        if self.decoder is not None:
            rendered = self.synthesize(batch["image"], batch["R_ij"], batch["background"])
            self.log(
                f"{stage}/synthesis_l1",
                per_image_l1(rendered, batch["target"]).mean(),
                batch_size=size,
                sync_dist=True,
            )
            self.log(
                f"{stage}/copy_input_l1",
                per_image_l1(batch["image"], batch["target"]).mean(),
                batch_size=size,
                sync_dist=True,
            )
        if self.stage != 1:
            self._evaluate(batch, stage)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_pairs(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_pairs(batch, "test")
