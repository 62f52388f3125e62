"""NVSModule: geometry-aware novel-view synthesis for 3D hand pose, in three training regimes.

Rhodin et al., "Unsupervised Geometry-Aware Representation for 3D Human Pose Estimation" (ECCV'18, and its
public code ``hrhodin/UnsupervisedGeometryAwareRepresentationLearning``) learn a 3D latent ``L3D`` by
re-rendering camera *i*'s image as camera *j* sees it; Müller et al. adapt it to hands and train it jointly
with the pose head. The regimes:

``supervised``
    image -> encoder -> pose head, on labeled items only; no decoder is built.
``pretrained``
    ``stage: 1`` synthesis on all frames without labels (encoder + decoder); ``stage: 2`` starts from stage
    1's checkpoint (``pretrained_checkpoint``, read when a fit begins), freezes encoder and decoder (weights
    and BatchNorm statistics) and trains the pose head on the labeled subset. A stage 2 network loaded from
    its own checkpoint or shipped weights never needs stage 1's file: its state dict holds those parts.
``semi``
    encoder, decoder and pose head optimised together: synthesis loss on every item, pose loss (weighted by
    ``pose.weight``, from step ``pose.start_step``, synthesis only before) on the labeled items that
    :class:`~handssl.data.multiview.MultiViewDataModule` oversamples into every batch.

A step encodes, renders and scores :class:`~handssl.data.multiview.MultiViewPairs` items as
:class:`~handssl.models.components.nvs_pairs.PairTraining` says; synthesis is supervised by the pixel losses on
the composite plus label-free silhouette terms (:mod:`handssl.models.components.nvs_losses`). The pose head's
statistics and the regime's labelled share come from the DataModule through the
:class:`~handssl.callbacks.pose_statistics.PoseStatistics` callback; inference and evaluation are
:class:`~handssl.models.nvs_task.NVSTask`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from handssl.callbacks.pose_statistics import PoseStatistics
from handssl.models.base import check_batch, to_float
from handssl.models.components.gradient_balance import PoseGradientBalance, gradient_norms
from handssl.models.components.nvs import (
    NVSDecoder,
    NVSEncoder,
    PoseHead,
    composite,
    latent_points,
    load_modules,
)
from handssl.models.components.nvs_geometry import LatentGeometry
from handssl.models.components.nvs_losses import SynthesisLoss
from handssl.models.components.nvs_pairs import IMAGE_KEYS, Encoded, PairTraining
from handssl.models.nvs_options import (
    DecoderOptions,
    EncoderOptions,
    GeometryOptions,
    NVSOptions,
    PairOptions,
    PoseHeadOptions,
    PoseOptions,
    SynthesisOptions,
)
from handssl.models.nvs_task import NVSTask
from handssl.models.options import NVS_GROUPS, Optimization, moved_arguments


class NVSModule(NVSTask):
    """Geometry-aware novel-view synthesis learner with a pose head (regimes supervised | pretrained | semi).

    The networks, the training pairs and the losses are option groups (:mod:`~handssl.models.nvs_options`),
    each a mapping in YAML whose keys left out keep their defaults, e.g. ``decoder: {splat: true}``; the module
    keeps them as :attr:`options`.

    Args:
        regime: ``"supervised"``, ``"pretrained"`` or ``"semi"`` (see the module docstring).
        stage: Stage of the pretrained regime: ``1`` synthesis, ``2`` pose head on the frozen encoder.
        pretrained_checkpoint: Stage 1's checkpoint; stage 2 loads encoder and decoder from it when a fit
            starts from scratch (not when a state dict gave them: a resumed run, fine-tuning shipped weights).
        image_size: Side of the square input and output images in pixels.
        num_points: Points ``N`` of the 3D latent ``L3D``. ``None`` (default): the point head's own count,
            200 with the linear head (Rhodin et al.), ``depth_samples x (image_size / 4)^2`` with
            ``"pixel_aligned"``, which then follows ``image_size``.
        appearance_dim: Size of the appearance vector (Rhodin et al.: 128; 16 here, a small code leaves the
            pose to ``L3D``).
        encoder: The encoder (:class:`~handssl.models.nvs_options.EncoderOptions`: ``widths``, ``blocks``,
            ``point_head``, ``opacity``, ``depth_samples``).
        decoder: The decoder (:class:`~handssl.models.nvs_options.DecoderOptions`: ``widths``,
            ``latent_channels``, ``dropout``, ``normalize_mask``, ``splat``, ``mask_from_points``).
        pairs: What a training step renders (:class:`~handssl.models.nvs_options.PairOptions`:
            ``swap_probability``, ``appearance_swap``, ``both_directions``).
        synthesis: The synthesis loss and the silhouette (:class:`~handssl.models.nvs_options.SynthesisOptions`:
            ``l1_weight``, ``structural``, ``structural_weight``, ``perceptual_checkpoint``, ``perceptual_weight``,
            ``foreground_weight``, ``silhouette_weight``, ``silhouette_threshold``, ``items``).
        geometry: Label-free terms on the latent (:class:`~handssl.models.nvs_options.GeometryOptions`:
            ``equivariance_weight``, ``point_silhouette_weight``, ``own_view_weight``, ``opacity_weight``,
            ``hull_weight``; all 0, off; ``side``).
        pose_head: The pose MLP (:class:`~handssl.models.nvs_options.PoseHeadOptions`: ``hidden``, ``dropout``,
            ``rows``).
        pose: The pose loss (:class:`~handssl.models.nvs_options.PoseOptions`: ``weight``, ``gradient_ratio``,
            ``start_step``, ``views``).
        optimizer: AdamW and its schedule (:class:`~handssl.models.options.Optimization`); here lr 1e-3 (Rhodin
            et al.: Adam, 1e-3), weight decay 0 and ``scheduler: none`` (constant, as Rhodin et al.).
        eval_protocol: Evaluation protocol name (see :mod:`handssl.metrics.protocols`).
        channels_last: Convolutions in ``channels_last`` memory format (see :class:`BaseHandTask`).
        compile: Compile encoder, decoder and pose head with ``torch.compile`` (see :class:`BaseHandTask`).
        compile_backend: ``"inductor"`` or ``"aot_eager"``.
    """

    moved_arguments: ClassVar[Mapping[str, str]] = moved_arguments(*NVS_GROUPS)
    """Where each flat argument of earlier versions went (``decoder_splat`` -> ``decoder: {splat: ...}``)."""

    def __init__(
        self,
        regime: Literal["supervised", "pretrained", "semi"] = "semi",
        stage: Literal[1, 2] = 1,
        pretrained_checkpoint: str | None = None,
        image_size: int = 64,
        num_points: int | None = None,
        appearance_dim: int = 16,
        encoder: EncoderOptions = EncoderOptions(),
        decoder: DecoderOptions = DecoderOptions(),
        pairs: PairOptions = PairOptions(),
        synthesis: SynthesisOptions = SynthesisOptions(),
        geometry: GeometryOptions = GeometryOptions(),
        pose_head: PoseHeadOptions = PoseHeadOptions(),
        pose: PoseOptions = PoseOptions(),
        optimizer: Optimization = Optimization(weight_decay=0.0, scheduler="none"),
        eval_protocol: str = "synthhands",
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: Literal["inductor", "aot_eager"] = "inductor",
    ) -> None:
        # A mapping (a checkpoint's hparams) keeps this task's defaults for the keys it leaves out.
        self.options = o = NVSOptions.of(
            type(self),
            encoder=encoder,
            decoder=decoder,
            pairs=pairs,
            synthesis=synthesis,
            geometry=geometry,
            pose_head=pose_head,
            pose=pose,
        )
        if o.pose.gradient_ratio is not None and regime != "semi":
            raise ValueError(f"pose.gradient_ratio needs the semi regime, got regime {regime!r}")
        threshold = o.synthesis.silhouette_threshold
        self.latent_geometry = LatentGeometry(**asdict(o.geometry), silhouette_threshold=threshold)
        self.pairs = PairTraining(
            **asdict(o.pairs),
            pose_views=o.pose.views,
            pose_head_rows=o.pose_head.rows,
            synthesis_items=o.synthesis.items,
        )
        # The groups' keys are the components' arguments.
        num_points = latent_points(image_size, o.encoder.point_head, o.encoder.depth_samples, num_points)
        sizes = (image_size, num_points, appearance_dim)
        self.make_encoder = partial(NVSEncoder, *sizes, **asdict(o.encoder))
        point_dim = 4 if o.encoder.opacity else 3
        self.make_decoder = partial(NVSDecoder, *sizes, **asdict(o.decoder), point_dim=point_dim)
        head = o.pose_head
        self.make_pose_head = partial(PoseHead, num_points, head.hidden, head.dropout, point_dim=point_dim)
        loss = {key: value for key, value in asdict(o.synthesis).items() if key != "items"}
        self.make_reconstruction = partial(SynthesisLoss, **loss)
        self.regime = regime
        self.stage = stage if regime == "pretrained" else None
        self.pretrained_checkpoint = pretrained_checkpoint
        # Stage 2's encoder and decoder come from stage 1 unless a state dict gives them (load_state_dict).
        self.needs_stage1 = self.stage == 2
        self.pose_weight = o.pose.weight  # PoseGradientBalance re-measures it with pose.gradient_ratio
        self.silhouette_threshold = threshold
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
        """:class:`PoseStatistics` (from the DataModule) and, with ``pose.gradient_ratio``, the gradient balance."""
        ratio = self.options.pose.gradient_ratio
        return [PoseStatistics()] + ([PoseGradientBalance(ratio)] if ratio is not None else [])

    def load_pretrained(self, path: str | Path) -> None:
        """Load encoder and decoder weights (and BatchNorm statistics) from stage 1's checkpoint."""
        load_modules(path, {"encoder": self.encoder, "decoder": self.decoder})
        self.needs_stage1 = False

    def setup(self, stage: str) -> None:
        """Stage 2 of a fit from scratch: stage 1's encoder and decoder from ``pretrained_checkpoint``.

        Lightning restores a resumed run's checkpoint after this hook, which then replaces them again.

        Raises:
            ValueError: Stage 2 without ``pretrained_checkpoint``.
        """
        if stage == "fit" and self.needs_stage1:
            if not self.pretrained_checkpoint:
                raise ValueError(
                    "stage 2 of the pretrained regime trains the pose head on stage 1's frozen encoder: "
                    "set pretrained_checkpoint to stage 1's checkpoint"
                )
            self.load_pretrained(self.pretrained_checkpoint)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """:meth:`torch.nn.Module.load_state_dict`; a state dict with the encoder also gives stage 2 its stage 1."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if any(key.startswith("encoder.") for key in state_dict):
            self.needs_stage1 = False
        return result

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
                "synthesis.items 'unlabeled' needs unlabeled items in every batch: labeled_share < 1"
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
        return not (self.regime == "semi" and self.global_step < self.options.pose.start_step)

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

        Measures the balance that ``pose.weight`` sets (:func:`gradient_norms`); the weights are not changed.
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
