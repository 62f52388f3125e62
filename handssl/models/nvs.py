"""NVSModule: geometry-aware novel-view synthesis for 3D hand pose, in three training regimes.

Rhodin et al., "Unsupervised Geometry-Aware Representation for 3D Human Pose Estimation" (ECCV'18, and its
public code ``hrhodin/UnsupervisedGeometryAwareRepresentationLearning``) learn a 3D latent ``L3D`` by
re-rendering camera *i*'s image as camera *j* sees it; Müller et al. adapt it to hands and train it jointly
with the pose head. The regimes:

``supervised``
    image -> encoder -> pose head, on labeled items only; no decoder is built.
``pretrained``
    ``stage: 1`` synthesis on all frames without labels (encoder + decoder); ``stage: 2`` loads stage 1's
    checkpoint (``pretrained_checkpoint``), freezes encoder and decoder (weights and BatchNorm statistics)
    and trains the pose head on the labeled subset.
``semi``
    encoder, decoder and pose head optimised together: synthesis loss on every item, pose loss (weighted by
    ``pose_weight``, after ``synthesis_warmup_steps`` synthesis-only steps) on the labeled items that
    :class:`~handssl.data.multiview.MultiViewDataModule` oversamples into every batch.

A step encodes, renders and scores :class:`~handssl.data.multiview.MultiViewPairs` items as
:class:`~handssl.models.components.nvs_pairs.PairTraining` says; synthesis is supervised by the pixel losses on
the composite plus label-free silhouette terms (:mod:`handssl.models.components.nvs_losses`). The pose head's
statistics and the regime's labelled share come from the DataModule through the
:class:`~handssl.callbacks.pose_statistics.PoseStatistics` callback; inference and evaluation are
:class:`~handssl.models.nvs_task.NVSTask`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from handssl.callbacks.pose_statistics import PoseStatistics
from handssl.models.base import check_batch, to_float
from handssl.models.components.gradient_balance import PoseGradientBalance, gradient_norms
from handssl.models.components.nvs import NVSDecoder, NVSEncoder, PoseHead, composite, load_modules
from handssl.models.components.nvs_geometry import LatentGeometry
from handssl.models.components.nvs_losses import SynthesisLoss
from handssl.models.components.nvs_pairs import IMAGE_KEYS, Encoded, PairTraining
from handssl.models.nvs_task import NVSTask
from handssl.models.options import Optimization


class NVSModule(NVSTask):
    """Geometry-aware novel-view synthesis learner with a pose head (regimes supervised | pretrained | semi).

    Args:
        regime: ``"supervised"``, ``"pretrained"`` or ``"semi"`` (see the module docstring).
        stage: Stage of the pretrained regime: ``1`` synthesis, ``2`` pose head on the frozen encoder.
        pretrained_checkpoint: Stage 1's checkpoint; required by stage 2 (encoder and decoder are loaded).
        image_size: Side of the square input and output images in pixels.
        num_points: Points ``N`` of the 3D latent ``L3D`` (Rhodin et al.: 200).
        appearance_dim: Size of the appearance vector (Rhodin et al.: 128; 16 here, a small code leaves the
            pose to ``L3D``).
        encoder_widths: Channels of the encoder's ResNet stages.
        encoder_blocks: Basic blocks per encoder stage.
        encoder_point_head: ``"linear"`` (Rhodin et al.) or ``"pixel_aligned"``: one point per stride-4 cell,
            moved and given a depth by a small convolutional head (``num_points = (image_size / 4)^2``; see
            :class:`~handssl.models.components.nvs.NVSEncoder`).
        decoder_widths: Channels of the decoder's up-blocks (each doubles the resolution).
        decoder_latent_channels: Channels of the map ``L3D`` is lifted to at the decoder's lowest resolution.
        decoder_splat: Also give the decoder the rotated points' splats (:func:`~handssl.models.components.nvs.splat_points`).
        decoder_mask_from_points: Gate the decoder's mask by the splat's coverage, so that the hand is drawn only
            where the rotated points project (needs ``decoder_splat``; see :class:`NVSDecoder`).
        latent_dropout: Dropout on the lifted latent in the decoder (Rhodin et al.: 0.3).
        pose_hidden: Hidden sizes of the pose MLP (Rhodin et al.: two of 2048; 512-512 gave the same supervised
            N-MPJPE at 1 labelled subject, 75.3 against 75.0 mm, in a network small enough to ship).
        pose_dropout: Dropout in the pose MLP (Rhodin et al.: 0.5).
        pose_head_rows: The rows the pose head runs on in training: ``"labeled"`` (default), so that its
            BatchNorm statistics come from the rows its loss counts, or ``"all"`` (every encoded image, the
            unlabelled ones only shifting the statistics; semi's MPJPE 88.8 against its N-MPJPE 66.1 at 1
            labelled subject showed the train/eval mismatch). Falls back to all rows when fewer than two are
            labelled (BatchNorm needs two).
        swap_probability: Chance that a training direction renders the other view rather than auto-encoding
            (Rhodin et al.: 1/2; 0.8 wastes less of the decoder on auto-encoding).
        appearance_swap: Take the appearance vector from the appearance images (``image_t2``, ``image_t2_j``)
            in training.
        both_directions: Render ``j -> i`` as well as ``i -> j`` in training (Rhodin et al. render every
            encoded view).
        pose_views: ``"all"``: the pose loss covers every encoded image with visible labels (views i and j,
            and the appearance images when the batch has ``joints3d_t2``); ``"input"``: view i only.
        pose_weight: Weight of the pose loss next to the synthesis loss (semi regime). With AdamW it only sets
            how hard the pose loss pulls the shared encoder (:meth:`encoder_gradient_norms` measures that).
        pose_gradient_ratio: Semi regime: when set, ``pose_weight`` is re-measured every 50 steps so that the
            encoder's pose gradient is this share of its synthesis gradient (:class:`PoseGradientBalance`);
            ``pose_weight`` then holds for the first 50 steps only.
        synthesis_warmup_steps: Semi regime: optimizer steps of synthesis only before the pose loss joins.
        synthesis_items: Semi regime: the items the synthesis loss covers. ``"all"``; or ``"unlabeled"``, so
            that the labelled subjects, which the batch sampler puts into ``labeled_share`` of every batch,
            weigh no more in the synthesis loss than in stage 1 of the pretrained regime.
        normalize_mask: Divide each predicted mask by its maximum (NSD's ``scale_mask_max_to_1``).
        foreground_weight: Weight of the L1 over the target's silhouette pixels (hand-normalised L1).
        silhouette_weight: Weight of the BCE between the predicted mask and the label-free silhouette.
        silhouette_threshold: Background-subtraction threshold of the silhouette, ``|I - bg| > t`` (0.02
            for the clean ``"synthetic"`` SynthHands style; about 0.15 for the noisy ``"real"`` styles).
        l1_weight: Weight of the pixel L1 loss.
        latent_equivariance_weight: Weight of :func:`~handssl.models.components.nvs_losses.latent_equivariance`,
            ``|R_ij L_i - L_j|^2`` over the pair's two encoded views (needs ``both_directions``): a direct
            signal that rotating the latent by ``R_ij`` gives the other view's latent (a departure from Rhodin
            et al., who check the rotation only through the decoder's output).
        point_silhouette_weight: Weight of the rotated points' projected Chamfer distance to the rendered view's
            silhouette (:mod:`~handssl.models.components.nvs_geometry`; wants the world's ``crop: fixed``).
        own_view_silhouette_weight: Weight of the same distance for each encoded view's un-rotated points to its
            own silhouette, every step: it pins where the points lie in their own image, so the other views move
            their depth.
        structural_loss: ``"ssim"``, ``"gradient"`` or ``"none"``. ``"none"`` by measurement: at 1 labelled subject
            SSIM left the test N-MPJPE unchanged (68.5 against 68.4 mm) and made the synthesized hand pixels
            worse (L1 0.152 against 0.139) and steps 14 % slower.
        structural_weight: Weight of the structural loss.
        perceptual_checkpoint: Optional ResNet-18 state dict on disk for a perceptual loss (never downloaded).
        perceptual_weight: Weight of the perceptual loss (Rhodin et al.: 2).
        optimizer: AdamW and its schedule (:class:`~handssl.models.options.Optimization`); here lr 1e-3 (Rhodin
            et al.: Adam, 1e-3), weight decay 0 and ``scheduler: none`` (constant, as Rhodin et al.).
        eval_protocol: Evaluation protocol name (see :mod:`handssl.metrics.protocols`).
        channels_last: Convolutions in ``channels_last`` memory format (see :class:`BaseHandTask`).
        compile: Compile encoder, decoder and pose head with ``torch.compile`` (see :class:`BaseHandTask`).
        compile_backend: ``"inductor"`` or ``"aot_eager"``.
    """

    def __init__(
        self,
        regime: Literal["supervised", "pretrained", "semi"] = "semi",
        stage: Literal[1, 2] = 1,
        pretrained_checkpoint: str | None = None,
        image_size: int = 64,
        num_points: int = 200,
        appearance_dim: int = 16,
        encoder_widths: Sequence[int] = (16, 32, 64, 128),
        encoder_blocks: Sequence[int] = (1, 1, 1, 1),
        encoder_point_head: Literal["linear", "pixel_aligned"] = "linear",
        decoder_widths: Sequence[int] = (64, 32, 16),
        decoder_latent_channels: int = 16,
        decoder_splat: bool = False,
        decoder_mask_from_points: bool = False,
        latent_dropout: float = 0.3,
        pose_hidden: Sequence[int] = (512, 512),
        pose_dropout: float = 0.5,
        pose_head_rows: Literal["labeled", "all"] = "labeled",
        swap_probability: float = 0.8,
        appearance_swap: bool = True,
        both_directions: bool = True,
        pose_views: Literal["input", "all"] = "all",
        pose_weight: float = 0.01,
        pose_gradient_ratio: float | None = None,
        synthesis_warmup_steps: int = 0,
        synthesis_items: Literal["all", "unlabeled"] = "all",
        normalize_mask: bool = True,
        foreground_weight: float = 1.0,
        silhouette_weight: float = 1.0,
        silhouette_threshold: float = 0.02,
        l1_weight: float = 1.0,
        latent_equivariance_weight: float = 0.0,
        point_silhouette_weight: float = 0.0,
        own_view_silhouette_weight: float = 0.0,
        structural_loss: Literal["ssim", "gradient", "none"] = "none",
        structural_weight: float = 1.0,
        perceptual_checkpoint: str | None = None,
        perceptual_weight: float = 2.0,
        optimizer: Optimization = Optimization(weight_decay=0.0, scheduler="none"),
        eval_protocol: str = "synthhands",
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: Literal["inductor", "aot_eager"] = "inductor",
    ) -> None:
        if regime == "pretrained" and stage == 2 and not pretrained_checkpoint:
            raise ValueError(
                "stage 2 of the pretrained regime trains the pose head on stage 1's frozen encoder: "
                "set pretrained_checkpoint to stage 1's checkpoint"
            )
        if synthesis_warmup_steps < 0:
            raise ValueError(f"synthesis_warmup_steps must be >= 0, got {synthesis_warmup_steps}")
        if pose_weight < 0:
            raise ValueError(f"pose_weight must be >= 0, got {pose_weight}")
        if pose_gradient_ratio is not None and (regime != "semi" or not pose_gradient_ratio > 0):
            raise ValueError(
                f"pose_gradient_ratio needs the semi regime and a value > 0, got {pose_gradient_ratio}"
            )
        if decoder_mask_from_points and not decoder_splat:
            raise ValueError(
                "decoder_mask_from_points gates the mask by the points' splat: set decoder_splat too"
            )
        self.latent_geometry = LatentGeometry(
            latent_equivariance_weight,
            point_silhouette_weight,
            silhouette_threshold,
            own_view_weight=own_view_silhouette_weight,
        )
        if latent_equivariance_weight > 0 and not both_directions:
            raise ValueError(
                "latent_equivariance_weight > 0 compares both views' latents: set both_directions"
            )
        self.pairs = PairTraining(
            swap_probability=swap_probability,
            appearance_swap=appearance_swap,
            both_directions=both_directions,
            pose_views=pose_views,
            pose_head_rows=pose_head_rows,
            synthesis_items=synthesis_items,
        )
        self.make_encoder = partial(
            NVSEncoder,
            image_size,
            num_points,
            appearance_dim,
            encoder_widths,
            encoder_blocks,
            point_head=encoder_point_head,
        )
        self.make_decoder = partial(
            NVSDecoder,
            image_size,
            num_points,
            appearance_dim,
            decoder_latent_channels,
            decoder_widths,
            latent_dropout,
            normalize_mask=normalize_mask,
            splat=decoder_splat,
            mask_from_points=decoder_mask_from_points,
        )
        self.make_pose_head = partial(PoseHead, num_points, pose_hidden, pose_dropout)
        self.make_reconstruction = partial(
            SynthesisLoss,
            l1_weight,
            structural_loss,
            structural_weight,
            perceptual_checkpoint,
            perceptual_weight,
            foreground_weight=foreground_weight,
            silhouette_weight=silhouette_weight,
            silhouette_threshold=silhouette_threshold,
        )
        self.regime = regime
        self.stage = stage if regime == "pretrained" else None
        self.pretrained_checkpoint = pretrained_checkpoint
        self.pose_weight = pose_weight
        self.pose_gradient_ratio = pose_gradient_ratio
        self.synthesis_warmup_steps = synthesis_warmup_steps
        self.silhouette_threshold = silhouette_threshold
        super().__init__(
            optimizer=optimizer,
            eval_protocol=eval_protocol,
            channels_last=channels_last,
            compile=compile,
            compile_backend=compile_backend,
        )

    @property
    def uses_synthesis(self) -> bool:
        """Whether training optimises the synthesis loss (semi, pretrained stage 1)."""
        return self.regime == "semi" or self.stage == 1

    @property
    def uses_pose(self) -> bool:
        """Whether training optimises the pose loss (supervised, semi, pretrained stage 2)."""
        return self.regime in ("supervised", "semi") or self.stage == 2

    @property
    def evaluates_pose(self) -> bool:
        """Whether validation and test score the pose: not in stage 1, which trains no pose head."""
        return self.stage != 1

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """Modules kept frozen (no gradient, eval mode) in this regime."""
        if self.stage == 1:
            return [self.pose_head]
        if self.stage == 2:
            return [self.encoder, self._require_decoder()]
        return []

    @property
    def monitor(self) -> str:  # type: ignore[override]
        """Validation quantity to monitor for checkpoints: synthesis L1 in stage 1, MPJPE otherwise."""
        return "val/synthesis_l1" if self.stage == 1 else "val/mpjpe"

    def configure_models(self) -> None:
        self.encoder = self.make_encoder()
        self.decoder: NVSDecoder | None = self.make_decoder() if self.regime != "supervised" else None
        self.pose_head = self.make_pose_head()
        if self.stage == 2:
            assert self.pretrained_checkpoint, "__init__ refuses stage 2 without pretrained_checkpoint"
            self.load_pretrained(self.pretrained_checkpoint)
        for module in self.frozen_modules:
            module.requires_grad_(False)
            module.eval()

    def compile_targets(self) -> list[nn.Module]:
        """Encoder, the decoder's parts (training calls ``decoder.layers``, not its ``forward``), pose head."""
        targets: list[nn.Module] = [self.encoder, self.pose_head]
        if self.decoder is not None:
            targets += [self.decoder.from_latent, self.decoder.up, self.decoder.to_output]
        return targets

    def configure_losses(self) -> None:
        self.reconstruction: SynthesisLoss | None = (
            self.make_reconstruction() if self.uses_synthesis else None
        )

    def configure_callbacks(self) -> list[pl.Callback]:
        """:class:`PoseStatistics` (from the DataModule) and, with ``pose_gradient_ratio``, the gradient balance."""
        ratio = self.pose_gradient_ratio
        return [PoseStatistics()] + ([PoseGradientBalance(ratio)] if ratio is not None else [])

    def load_pretrained(self, path: str | Path) -> None:
        """Load encoder and decoder weights (and BatchNorm statistics) from stage 1's checkpoint."""
        load_modules(path, {"encoder": self.encoder, "decoder": self.decoder})

    def train(self, mode: bool = True) -> NVSModule:
        """Switch train/eval mode, keeping the frozen parts of this regime in eval mode."""
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    def check_labeled_share(self, share: float) -> None:
        """Refuse a DataModule whose share of labelled items per batch does not fit the regime."""
        name = self.regime if self.stage is None else f"pretrained stage {self.stage}"
        if self.uses_pose and not self.uses_synthesis and share != 1.0:
            raise ValueError(f"the {name} regime trains on labeled items only: set data labeled_share: 1.0")
        if self.stage == 1 and share != 0.0:
            raise ValueError("stage 1 of the pretrained regime uses no labels: set data labeled_share: 0.0")
        if self.regime == "semi" and share == 0.0:
            raise ValueError("the semi regime needs labeled items in every batch: set data labeled_share > 0")
        if self.regime == "semi" and self.pairs.synthesis_items == "unlabeled" and share == 1.0:
            raise ValueError(
                "synthesis_items 'unlabeled' needs unlabeled items in every batch: labeled_share < 1"
            )

    def _require_reconstruction(self) -> SynthesisLoss:
        if self.reconstruction is None:
            raise RuntimeError(f"the {self.regime} regime builds no synthesis loss (it trains the pose only)")
        return self.reconstruction

    @property
    def pose_active(self) -> bool:
        """Whether the pose loss counts at the current step (off during the semi regime's warm-up)."""
        if not self.uses_pose:
            return False
        return not (self.regime == "semi" and self.global_step < self.synthesis_warmup_steps)

    def _encode_training(self, batch: dict[str, Any], pose: bool) -> Encoded:
        """One encoder pass over every image the step needs (:meth:`PairTraining.images_to_encode`)."""
        names = self.pairs.images_to_encode(batch, self.uses_synthesis, pose)
        size = batch["image"].shape[0]
        images = torch.cat([batch[IMAGE_KEYS[n]] for n in names])
        with torch.no_grad() if self.stage == 2 else nullcontext():  # stage 2: the encoder is frozen
            points, appearance = self.encoder(images)
        return {
            n: (points[k * size : (k + 1) * size], appearance[k * size : (k + 1) * size])
            for k, n in enumerate(names)
        }

    def synthesis_rows(self, batch: dict[str, Any], encoded: Encoded) -> dict[str, Tensor]:
        """What the decoder renders in a training step (:meth:`PairTraining.synthesis_rows`)."""
        return self.pairs.synthesis_rows(batch, encoded)

    def _synthesis_losses(self, batch: dict[str, Any], encoded: Encoded) -> dict[str, Tensor]:
        batch, encoded = self.pairs.synthesis_items_of(batch, encoded, self.uses_pose)
        rows = self.pairs.synthesis_rows(batch, encoded)
        foreground, mask = to_float(self._require_decoder().layers(rows["points"], rows["appearance"]))
        with self.full_precision():  # the perceptual network, when there is one, runs in float32 too
            rendered = composite(foreground, mask, rows["background"])
            terms = self._require_reconstruction()(rendered, mask, rows["target"], rows["background"])
        terms["synthesis"] = terms.pop("loss")
        if self.latent_geometry.active:
            terms.update(self.latent_geometry(batch, encoded, rows))
            terms["synthesis"] = terms["synthesis"] + terms.pop("latent_geometry")
        return terms

    def _pose_loss(self, batch: dict[str, Any], encoded: Encoded) -> Tensor:
        return self.pairs.pose_loss(self.pose_head, batch, encoded)

    def training_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of one training step and their weighted sum under ``"loss"``."""
        pose = self.pose_active
        encoded = self._encode_training(batch, pose)
        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=batch["image"].device)
        if self.uses_synthesis:
            losses.update(self._synthesis_losses(batch, encoded))
            total = total + losses["synthesis"]
        if pose:
            losses["pose"] = self._pose_loss(batch, encoded)
            weight = self.pose_weight if self.uses_synthesis else 1.0
            total = total + weight * losses["pose"]
        losses["loss"] = total
        return losses

    def encoder_gradient_norms(self, batch: dict[str, Any]) -> dict[str, float]:
        """L2 norms of the encoder's gradient from the weighted pose loss and from the synthesis loss (semi).

        Measures the balance that ``pose_weight`` sets (:func:`gradient_norms`); the weights are not changed.
        """
        if self.regime != "semi":
            raise ValueError("encoder_gradient_norms compares the semi regime's two losses")
        encoded = self._encode_training(batch, pose=True)
        terms = {
            "synthesis": self._synthesis_losses(batch, encoded)["synthesis"],
            "pose": self.pose_weight * self._pose_loss(batch, encoded),
        }
        return gradient_norms(terms, self.encoder.parameters())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        check_batch(batch, "training batch")
        losses = self.training_losses(batch)
        size = batch["image"].shape[0]
        self.log("train/labeled_share", batch["labeled"].float().mean(), batch_size=size)
        return self.log_losses(losses, batch_size=size)


__all__ = ["NVSModule"]
