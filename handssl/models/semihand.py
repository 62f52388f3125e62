"""SemiHandModule: SemiHand (Yang, Chen, Yao, ICCV'21) as a mean-teacher learner, or in the paper's offline rounds.

A 2.5D pose network with a hand-mask head (:class:`~handssl.models.components.pose25d.Pose25DNet`) learns from
labelled (synthetic) and unlabelled (real) images with

* ``L_sup`` on labelled images (after "diversity" augmentation): ``|uv - uv_gt|^2 + lambda_d |d - d_gt|^2``
  plus ``lambda_w |w - w_gt|_1`` on the mask;
* the network step of the paper's Eq. 6, ``1(C <= tau) l(p, p_hat) + l(r, p)``, on the "diversity" copy of
  each unlabelled image, the labels moved by the same transform
  (:mod:`~handssl.models.components.pseudo_labels`: ``p_hat`` the average of original, perturbed and
  biomechanically corrected predictions, ``C`` their spread, ``r = P(p_hat)`` the pseudo-label registered to
  a hand template (:mod:`~handssl.models.components.hand_template`); the ungated ``l(r, p)`` has its own
  weight, ``correction_weight``); labels whose correction refuses them (depth-mirrored, or moved more than
  ``max_correction_mm``) enter neither term;
* ``lambda_c (L_vc + L_cc)``: pose and mask equivariance under "perturbation" and the cross-modal pose <-> mask
  term with stop-gradient on the mask (:mod:`~handssl.models.components.consistency`).

``mode="mean_teacher"``: an EMA copy of the network (the teacher, no gradients, always in eval mode, in the
checkpoint) makes the pseudo-labels and the consistency targets on the fly every step, and is used for
evaluation. ``mode="rounds"`` follows the paper's Alg. 1: every ``epochs_per_round`` epochs the network itself
(in eval mode) recomputes and stores a pseudo-label for every unlabelled image (kept in checkpoints); the
consistency targets are the network's own stop-gradient predictions.

The gate keeps the most confident ``accept_fraction`` of each batch (of the whole set in ``rounds``) unless a
fixed ``threshold`` is given; the accept rate and the error of accepted and rejected labels are logged.

Stage 2 started from a stage-1 checkpoint (``init_checkpoint``) continues its teacher: the student and the
teacher are loaded, and the EMA update count carries on (no second warm-up).

Switches for ablations: ``use_consistency``, ``use_pseudo_labels``, ``use_correction`` (correction inside the
pseudo-labels and Eq. 6's ``l(r, p)``; ``correction_weight: 0`` keeps only the former), ``use_mask``.
With all of them off and ``unlabeled_fraction: 0`` in the data it is the source-only baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from handssl.models.base import BaseHandTask, eval_mode, to_float
from handssl.models.components.ema import EMATeacher, sync_buffers
from handssl.models.components.hand_template import TEMPLATES, BoneLengthTemplate, subject_lengths
from handssl.models.components.lifting import LIFTINGS, Lifter
from handssl.models.components.pose25d import Pose25DNet, PoseNorm
from handssl.models.components.pseudo_label_pass import PseudoLabelRounds, round_rows
from handssl.models.components.pseudo_label_stats import pseudo_label_stash, pseudo_label_statistics
from handssl.models.components.pseudo_labels import PseudoLabeler, PseudoLabels, map_back
from handssl.models.components.semihand_losses import LossOptions, SemiHandLosses
from handssl.skeleton import MIDDLE_MCP, root_relative

MODES = ("mean_teacher", "rounds")


def _default_corrector() -> Any:
    from handssl.biomech import correct

    return correct


class SemiHandModule(BaseHandTask):
    """SemiHand: labelled synthetic + unlabelled real images, pseudo-labels with biomechanical correction.

    Args:
        mode: ``"mean_teacher"`` (EMA teacher makes pseudo-labels every step) or ``"rounds"`` (the paper's
            offline rounds: stored pseudo-labels recomputed every ``epochs_per_round`` epochs).
        backbone_widths: Channels of the ResNet stages.
        backbone_blocks: Basic blocks per stage.
        decoder_channels: Channels of the heatmap decoder.
        output_stride: Input pixels per heatmap cell (4: 16 x 16 maps at 64 px; 2 doubles the step's cost and
            learned no faster per step on SynthHands).
        beta_init: Initial inverse temperature of the heatmap softmax (learned). Sharp from the start, so the
            soft-argmax is a local read-out rather than a centre-biased average of a flat map.
        image_size: Input side in pixels (sets the capsule radii and the ``uv`` unit of the losses).
        root_joint: Root of the relative depth (the paper's: 9, the middle MCP).
        use_consistency: View consistency (pose + mask equivariance) and cross-modal consistency.
        use_pseudo_labels: Confidence-gated pseudo-label loss.
        use_correction: Biomechanical correction inside the pseudo-labels, and Eq. 6's ``l(r, p)``.
        use_mask: Train the mask head and use the mask terms of the consistency losses.
        pose_loss: ``"l1"`` (absolute errors, Sun et al.'s integral loss; default) or ``"l2"`` (the paper's
            squared distance) for ``L_sup``, the pseudo-label loss and the pose consistency; the confidence
            ``C`` stays the paper's squared spread.
        heatmap_weight: Weight of the Gaussian heatmap loss (:func:`~handssl.models.components.pose25d.heatmap_loss`)
            on labelled joints and on accepted pseudo-labels (0: integral regression alone, as the paper).
        heatmap_sigma: Standard deviation of its target Gaussians, in heatmap cells.
        depth_weight: ``lambda_d`` of the pose distance (50 in the paper; ``sqrt`` of it under ``"l1"``).
        mask_weight: ``lambda_w`` of the supervised mask L1 (100 in the paper).
        consistency_weight: ``lambda_c`` (0.1 in the paper).
        cross_modal_weight: Weight of ``L_cc`` inside ``L_cons`` (0 disables it).
        pseudo_label_weight: Weight of the gated pseudo-label loss ``1(C <= tau) l(p, p_hat)``.
        correction_weight: Weight of Eq. 6's ungated ``l(r, p)`` (0 disables it).
        threshold: A fixed confidence threshold ``tau`` on the spread ``C`` (the paper's 1.5), in
            :func:`~handssl.models.components.pose25d.pose_distance` units (64-px pixels^2 plus
            ``depth_weight`` x squared reference-bone units, averaged over joints); ``inf`` accepts every
            label. ``None`` (default): gate by ``accept_fraction``.
        accept_fraction: With ``threshold=None``, accept the most confident this fraction of each batch
            (``rounds``: of the whole unlabelled set). 0 rejects all, 1 accepts all.
        template: Hand template of the correction: ``"mean"`` (labelled hands' mean bone lengths scaled to
            each prediction), ``"subject"`` (the unlabelled sample's own, from its annotation: privileged, the
            paper's assumption) or ``"none"`` (see :mod:`~handssl.models.components.hand_template`).
        ray_tol_px: Joints whose views agree in 2D to within this many 64-px pixels are corrected along their
            camera rays only (``None``: full 3D correction).
        max_correction_mm: Refuse pseudo-labels whose correction moves them more than this (mean per joint).
        mirror_check: Refuse pseudo-labels whose depth-mirrored pose is more plausible.
        lifting: 2.5D -> 3D at evaluation: ``"known"`` root depth and scale from the annotation (the paper's
            protocol) or ``"predicted"`` (Iqbal's root recovery with the template scale).
        pseudo_label_lifting: The same for lifting pseudo-labels before correction; ``"known"`` uses the
            unlabelled images' annotated root depth and scale (the paper's assumption, privileged
            information), ``"predicted"`` uses none.
        template_scale_mm: Reference-bone length of the template hand for ``"predicted"`` lifting (default:
            the :mod:`handssl.kinematics` template's).
        ema_decay: Teacher momentum ``m`` in ``teacher = m teacher + (1 - m) student``.
        ema_warmup: Use ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates (fast early tracking).
        ema_buffer_mode: ``"ema"`` or ``"copy"`` for BatchNorm statistics (see :mod:`..components.ema`).
        eval_network: ``"teacher"`` or ``"student"`` for validation / test (``rounds`` always uses the student).
        unsupervised_start_step: Labelled-only steps before the unsupervised losses start (source pre-training).
        unsupervised_ramp_steps: Linear ramp of the unsupervised weights after the start.
        epochs_per_round: Epochs per pseudo-labelling round (``mode="rounds"``).
        init_checkpoint: A SemiHandModule checkpoint to start from (e.g. a source-only run): its student, its
            teacher (or the student where it has none), its EMA update count and its bone-length template.
        capsule_finger_fraction: Finger capsule radius as a fraction of the image side.
        capsule_palm_fraction: Palm capsule radius as a fraction of the image side.
        cross_modal_size: Resolution of the cross-modal comparison (the mask is area-downsampled, joints and
            radii scaled; ``None``: full).
        lr: Learning rate of AdamW.
        weight_decay: Weight decay of AdamW.
        scheduler: ``"cosine"`` or ``"none"``.
        warmup_steps: Linear warm-up steps.
        eval_protocol: Evaluation protocol name (see :mod:`handssl.metrics.protocols`).
        channels_last: Convolutions in ``channels_last`` memory format (see :class:`BaseHandTask`).
        compile: Compile the student (and the teacher) with ``torch.compile`` (see :class:`BaseHandTask`).
        compile_backend: ``"inductor"`` or ``"aot_eager"``.
    """

    def __init__(
        self,
        mode: Literal["mean_teacher", "rounds"] = "mean_teacher",
        backbone_widths: Sequence[int] = (32, 64, 128, 256),
        backbone_blocks: Sequence[int] = (1, 1, 1, 1),
        decoder_channels: int = 64,
        output_stride: int = 4,
        beta_init: float = 5.0,
        image_size: int = 64,
        root_joint: int = MIDDLE_MCP,
        use_consistency: bool = True,
        use_pseudo_labels: bool = True,
        use_correction: bool = True,
        use_mask: bool = True,
        pose_loss: PoseNorm = "l1",
        heatmap_weight: float = 1.0,
        heatmap_sigma: float = 1.0,
        depth_weight: float = 50.0,
        mask_weight: float = 100.0,
        consistency_weight: float = 0.1,
        cross_modal_weight: float = 1.0,
        pseudo_label_weight: float = 1.0,
        correction_weight: float = 1.0,
        threshold: float | None = None,
        accept_fraction: float = 0.3,
        template: Literal["mean", "subject", "none"] = "mean",
        ray_tol_px: float | None = 1.0,
        max_correction_mm: float | None = 40.0,
        mirror_check: bool = True,
        lifting: Literal["known", "predicted"] = "known",
        pseudo_label_lifting: Literal["known", "predicted"] = "predicted",
        template_scale_mm: float | None = None,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        ema_buffer_mode: Literal["ema", "copy"] = "ema",
        eval_network: Literal["teacher", "student"] = "teacher",
        unsupervised_start_step: int = 0,
        unsupervised_ramp_steps: int = 0,
        epochs_per_round: int = 1,
        init_checkpoint: str | None = None,
        capsule_finger_fraction: float = 0.035,
        capsule_palm_fraction: float = 0.05,
        cross_modal_size: int | None = 32,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: Literal["cosine", "none"] = "cosine",
        warmup_steps: int = 50,
        eval_protocol: str = "synthhands",
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: Literal["inductor", "aot_eager"] = "inductor",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for name, value in (("lifting", lifting), ("pseudo_label_lifting", pseudo_label_lifting)):
            if value not in LIFTINGS:
                raise ValueError(f"{name} must be one of {LIFTINGS}, got {value!r}")
        if eval_network not in ("teacher", "student"):
            raise ValueError(f"eval_network must be 'teacher' or 'student', got {eval_network!r}")
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        if threshold is None and not 0.0 <= accept_fraction <= 1.0:
            raise ValueError(f"accept_fraction must be in [0, 1], got {accept_fraction}")
        self.loss_options = LossOptions(
            pose_loss=pose_loss,
            depth_weight=depth_weight,
            mask_weight=mask_weight,
            heatmap_weight=heatmap_weight,
            heatmap_sigma=heatmap_sigma,
            pseudo_label_weight=pseudo_label_weight,
            correction_weight=correction_weight,
            consistency_weight=consistency_weight,
            cross_modal_weight=cross_modal_weight,
            cross_modal_size=cross_modal_size,
            use_mask=use_mask,
            capsule_finger_fraction=capsule_finger_fraction,
            capsule_palm_fraction=capsule_palm_fraction,
        )
        self.rounds = PseudoLabelRounds(epochs_per_round)  # added as a callback in mode="rounds" only
        self.semi_mode = mode  # not ``self.mode``: that is the monitored metric's direction
        self.template_kind = template  # ``self.template`` is the running bone-length template
        self.lifter = Lifter(root_joint, template_scale_mm)
        self.template_scale_mm = self.lifter.template_scale_mm
        self.backbone_widths = backbone_widths
        self.backbone_blocks = backbone_blocks
        self.decoder_channels = decoder_channels
        self.output_stride = output_stride
        self.beta_init = beta_init
        self.image_size = image_size
        self.uv_unit_px = image_size / 64.0
        self.root_joint = root_joint
        self.use_consistency = use_consistency
        self.use_pseudo_labels = use_pseudo_labels
        self.use_correction = use_correction
        self.threshold = threshold
        self.accept_fraction = accept_fraction
        self.ray_tol_px = ray_tol_px
        self.max_correction_mm = max_correction_mm
        self.mirror_check = mirror_check
        self.lifting = lifting
        self.pseudo_label_lifting = pseudo_label_lifting
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup
        self.ema_buffer_mode = ema_buffer_mode
        self.eval_network = eval_network
        self.unsupervised_start_step = unsupervised_start_step
        self.unsupervised_ramp_steps = unsupervised_ramp_steps
        self.init_checkpoint = init_checkpoint
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            scheduler=scheduler,
            warmup_steps=warmup_steps,
            eval_protocol=eval_protocol,
            channels_last=channels_last,
            compile=compile,
            compile_backend=compile_backend,
        )
        self.round_table: dict[str, Tensor] | None = None
        self.rounds_done = 0
        self.ema_updates = 0
        self.last_momentum: float | None = None
        self.last_pseudo_labels: dict[str, Any] | None = None
        self._last_eval_out: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------------------------------- build
    def configure_models(self) -> None:
        self.student = Pose25DNet(
            widths=self.backbone_widths,
            blocks=self.backbone_blocks,
            decoder_channels=self.decoder_channels,
            output_stride=self.output_stride,
            beta_init=self.beta_init,
        )
        self._init_loaded = False
        self.teacher = (
            EMATeacher(self.student, self.ema_buffer_mode) if self.semi_mode == "mean_teacher" else None
        )
        self.template = BoneLengthTemplate()
        self.pseudo_labeler = PseudoLabeler(
            corrector=_default_corrector() if self.use_correction else None,
            threshold=self.threshold,
            accept_fraction=self.accept_fraction,
            use_correction=self.use_correction,
            depth_weight=self.loss_options.depth_weight,
            uv_unit_px=self.uv_unit_px,
            root=self.root_joint,
            ray_tol_px=self.ray_tol_px,
            max_correction_mm=self.max_correction_mm,
            mirror_check=self.mirror_check,
        )

    def configure_losses(self) -> None:
        self.losses = SemiHandLosses(self.loss_options, self.image_size, self.root_joint)

    def configure_callbacks(self) -> list[pl.Callback]:
        """The offline rounds (:class:`PseudoLabelRounds`) in ``mode="rounds"``: they read the DataModule."""
        return [self.rounds] if self.semi_mode == "rounds" else []

    def compile_targets(self) -> list[torch.nn.Module]:
        """The student and the teacher's network (the teacher's forward is no-grad and in eval mode)."""
        return [self.student] + ([self.teacher.module] if self.teacher is not None else [])

    def setup(self, stage: str) -> None:
        """Load ``init_checkpoint`` into the network (and the teacher) once, when fitting starts.

        Done here rather than in ``__init__`` so that ``load_from_checkpoint`` of a fine-tuned model never needs
        the initial checkpoint; resuming with ``ckpt_path`` restores its own weights after this.
        """
        if stage == "fit" and self.init_checkpoint and not self._init_loaded:
            self._load_init_checkpoint(self.init_checkpoint)
            self._init_loaded = True

    def _load_init_checkpoint(self, path: str) -> None:
        """Student, teacher (or a copy of the student), EMA update count and template of a stage-1 run."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"init_checkpoint not found: {path}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint.get("state_dict", checkpoint)
        part = lambda prefix: {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
        student, teacher = part("student."), part("teacher.")
        if not student:
            raise ValueError(
                f"init_checkpoint {path} holds no 'student.*' weights (not a SemiHandModule checkpoint)"
            )
        self.student.load_state_dict(student)
        extra = checkpoint.get("semihand", {}) if isinstance(checkpoint, dict) else {}
        if self.teacher is not None:
            if teacher:
                self.teacher.load_state_dict(teacher)
                self.ema_updates = int(extra.get("ema_updates", 0))
            else:
                self.teacher.copy_from(self.student)
        self.template.load_state(extra.get("template"))
        rank_zero_info(f"SemiHandModule: network initialised from {path} ({self.ema_updates} EMA updates)")

    # ---------------------------------------------------------------------------------- prediction
    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Student prediction: ``uv`` (B, 21, 2) px, ``depth`` (B, 21), ``mask_logits``, ``heatmaps``."""
        return self.student(image)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The network used for evaluation and prediction."""
        if self.teacher is not None and self.eval_network == "teacher":
            return self.teacher
        return self.student

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

    def health(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """:func:`~handssl.metrics.health.pose25d_health` of network outputs on an annotated batch.

        3D is lifted with the annotated root depth and scale (``"known"``), whatever ``lifting`` says, so that
        depth and size are judged on their own.
        """
        with torch.no_grad(), self.full_precision():
            return self.lifter.health(to_float(out), batch)

    def _log_health(self, stage: str, out: dict[str, Tensor], batch: dict[str, Any]) -> None:
        if "joints2d" not in batch or "K" not in batch:
            return
        for name, value in self.health(out, batch).items():
            if torch.isfinite(value):
                self.log(f"{stage}/health_{name}", value, batch_size=out["uv"].shape[0])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The base task's metrics plus the network's health (``val/health_*``) from the same forward pass."""
        self._evaluate(batch, "val")
        if self._last_eval_out is not None:
            self._log_health("val", self._last_eval_out, batch)
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

    # ------------------------------------------------------------------------------- pseudo-labels
    @torch.no_grad()
    def compute_pseudo_labels(
        self, batch: dict[str, Any], network: torch.nn.Module | None = None
    ) -> tuple[PseudoLabels, dict[str, Tensor]]:
        """Pseudo-labels of a batch of unlabelled items (``image``, ``image_perturbed``, ``perturb_matrix``, ``K``).

        Args:
            batch: Unlabelled batch from :class:`~handssl.data.semi.UnlabeledView`.
            network: The labelling network (default: the teacher, or the network in eval mode for rounds).

        Returns:
            The :class:`PseudoLabels` and the network's outputs on the original images (``uv``, ``depth``,
            ``mask_prob``).
        """
        if network is None:
            network = self.teacher if self.teacher is not None else self.student
        image, perturbed = batch["image"], batch["image_perturbed"]
        b, p = perturbed.shape[:2]
        with eval_mode(self.student) if network is self.student else nullcontext():
            out = to_float(network(torch.cat([image, perturbed.flatten(0, 1)])))
        with self.full_precision():  # lifting and correction (SVD, det) in float32
            uv, depth = out["uv"], out["depth"]
            uv_views = torch.cat(
                [uv[:b, None], map_back(uv[b:].view(b, p, *uv.shape[1:]), batch["perturb_matrix"])], 1
            )
            depth_views = torch.cat([depth[:b, None], depth[b:].view(b, p, -1)], 1)
            root_depth, scale = self.lifter.params(
                uv_views.mean(1),
                depth_views.mean(1),
                batch["K"],
                self.pseudo_label_lifting,
                batch.get("eval_joints3d"),
                batch.get("eval_valid"),
            )
            template = self.correction_template(batch, scale)
            labels = self.pseudo_labeler(uv_views, depth_views, batch["K"], root_depth, scale, template)
        first = {"uv": uv[:b], "depth": depth[:b], "mask_prob": torch.sigmoid(out["mask_logits"][:b])}
        return labels, first

    def correction_template(self, batch: dict[str, Any], scale_mm: Tensor) -> Tensor | None:
        """``(B, 20)`` template bone lengths (mm) for correcting a batch's pseudo-labels (``template``)."""
        if not self.use_correction or self.template_kind == "none":
            return None
        mean = self.template.scaled(scale_mm)
        if self.template_kind == "subject" and "eval_joints3d" in batch:
            return subject_lengths(batch["eval_joints3d"], mean, batch.get("eval_valid"))
        return mean

    def regenerate_pseudo_labels(self) -> None:
        """One round of the paper's Alg. 1 now: a stored pseudo-label for every unlabelled item (``rounds``)."""
        self.rounds.label(self.trainer, self)

    def _labels_and_targets(
        self, unlabeled: dict[str, Any], want: dict[str, bool]
    ) -> tuple[dict[str, Tensor] | None, dict[str, Tensor] | None]:
        """Pseudo-label rows and consistency targets of an unlabelled batch, from the teacher or the rounds.

        The rows hold ``uv``, ``depth``, ``uv_registered``, ``depth_registered``, ``accepted`` and ``refused``.
        """
        if self.semi_mode == "mean_teacher":
            labels, teacher_out = self.compute_pseudo_labels(unlabeled, self.teacher)
            self.last_pseudo_labels = pseudo_label_stash(unlabeled, labels, self.threshold)
            with self.full_precision():
                for name, (value, size) in pseudo_label_statistics(
                    labels, unlabeled, self.root_joint
                ).items():
                    self.log(f"train/{name}", value, batch_size=size)
            return labels.to_dict(), teacher_out
        rows: dict[str, Tensor] | None = None
        target: dict[str, Tensor] | None = None
        if want["pseudo_label"] or want["correction"]:
            if self.round_table is None:  # the unsupervised losses started within an epoch
                self.regenerate_pseudo_labels()
            assert self.round_table is not None, "a round stores its table"
            rows = round_rows(self.round_table, unlabeled["index"], self.device)
        if want["consistency"]:
            with torch.no_grad(), eval_mode(self.student):
                raw = self.student(unlabeled["image"])
            target = {"uv": raw["uv"], "depth": raw["depth"], "mask_prob": torch.sigmoid(raw["mask_logits"])}
        return rows, target

    # ------------------------------------------------------------------------------------ training
    def _unsupervised_factor(self) -> float:
        if self.global_step < self.unsupervised_start_step:
            return 0.0
        if self.unsupervised_ramp_steps <= 0:
            return 1.0
        return min(1.0, (self.global_step - self.unsupervised_start_step + 1) / self.unsupervised_ramp_steps)

    def supervised_losses(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """``L_sup`` of network outputs on a labelled batch (:meth:`SemiHandLosses.supervised`)."""
        return self.losses.supervised(out, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labeled, unlabeled = batch.get("labeled"), batch.get("unlabeled")
        factor = self._unsupervised_factor() if unlabeled is not None else 0.0
        want = {
            "pseudo_label": self.use_pseudo_labels and factor > 0,
            "correction": self.use_correction and self.loss_options.correction_weight > 0 and factor > 0,
            "consistency": self.use_consistency and factor > 0,
        }
        parts: dict[str, Tensor] = {}
        if labeled is not None:
            parts["labeled"] = labeled["image"]
            with self.full_precision():
                self.template.update(labeled["joints3d"], labeled.get("valid"))
        if unlabeled is not None:  # without an unlabelled part ``want`` is all False
            if want["pseudo_label"] or want["correction"]:
                parts["strong"] = unlabeled["image_strong"]
            if want["consistency"]:
                parts["perturbed"] = unlabeled["image_perturbed"][:, 0]
        if not parts:
            raise ValueError("training batch has neither a labeled part nor active unsupervised losses")
        sizes = [x.shape[0] for x in parts.values()]
        merged = self.student(torch.cat(list(parts.values())))
        chunks = {key: value.split(sizes) for key, value in merged.items()}
        outs = {name: {key: chunks[key][i] for key in merged} for i, name in enumerate(parts)}
        losses: dict[str, Tensor] = {}
        total = merged["uv"].new_zeros(())
        if labeled is not None:
            with self.full_precision():
                sup = self.losses.supervised(outs["labeled"], labeled)
            losses.update(sup)
            total = total + sum(sup.values())
            every = getattr(self._trainer, "log_every_n_steps", 1)  # Lightning sets it untyped
            if (self.global_step + 1) % max(1, int(every)) == 0:
                self._log_health("train", outs["labeled"], labeled)
        if unlabeled is not None and any(want.values()):
            rows, target = self._labels_and_targets(unlabeled, want)
            with self.full_precision():
                unsupervised = self.losses.unsupervised(outs, unlabeled, rows, target, want, losses)
            total = total + factor * unsupervised
        losses["loss"] = total
        return self.log_losses(losses, batch_size=sum(sizes))

    def visualization_state(self, stage: Literal["val", "test"] = "val") -> dict[str, Any]:
        """The base task's state plus the latest training pseudo-labels (``pseudo_labels``) and their spread.

        ``pseudo_labels`` holds the first items of the latest unlabelled batch (``image``, ``labels``:
        :class:`PseudoLabels`, ``eval_joints2d``/``eval_joints3d``/``eval_valid``, ``threshold``); ``confidence``
        is their spread ``C``, a cost: kept ``"below"`` ``confidence_threshold`` (``None`` with the fraction gate).
        """
        state = super().visualization_state(stage)
        stash = self.last_pseudo_labels
        if stash is not None:
            threshold = stash.get("threshold")
            state["pseudo_labels"] = stash
            state["confidence"] = stash["labels"].spread
            state["confidence_threshold"] = float(threshold) if threshold is not None else None
            state["confidence_keep"] = "below"
        return state

    # ---------------------------------------------------------------------------------------- EMA
    def current_momentum(self) -> float:
        """Momentum of the next teacher update (``ema_decay``, warmed up over the first updates)."""
        m = self.ema_decay
        if self.ema_warmup:
            m = min(m, (1 + self.ema_updates) / (10 + self.ema_updates))
        return float(m)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.teacher is None:
            return
        sync_buffers(self.student)
        m = self.current_momentum()
        self.teacher.update(self.student, m)
        self.last_momentum = m
        self.ema_updates += 1

    # -------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["semihand"] = {
            "round_table": self.round_table,
            "rounds_done": self.rounds_done,
            "ema_updates": self.ema_updates,
            "template": self.template.state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("semihand", {})
        self.round_table = state.get("round_table")
        self.rounds_done = state.get("rounds_done", 0)
        self.ema_updates = state.get("ema_updates", 0)
        self.template.load_state(state.get("template"))


__all__ = ["SemiHandModule"]
