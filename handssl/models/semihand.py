"""SemiHandModule: SemiHand (Yang, Chen, Yao, ICCV'21) as a mean-teacher learner, or in the paper's offline rounds.

A 2.5D pose network with a hand-mask head learns from labelled (synthetic) and unlabelled (real) images with
``L_sup``, the paper's Eq. 6 ``1(C <= tau) l(p, p_hat) + l(r, p)`` on "diversity" copies of the unlabelled images,
and view and cross-modal consistency (:mod:`~handssl.models.components.semihand_losses`). The pseudo-label
``p_hat`` averages original, perturbed and biomechanically corrected predictions, ``C`` is their spread and ``r``
the label registered to a hand template (:mod:`~handssl.models.components.pseudo_labels`). They come from an EMA
teacher every step (``mode="mean_teacher"``), or from the network itself, stored for the whole unlabelled set
every few epochs (``mode="rounds"``, the paper's Alg. 1, run by the callback
:class:`~handssl.callbacks.pseudo_label_pass.PseudoLabelRounds`). With ``consistency``, ``pseudo_labels`` and
``correction`` off (``enabled: false``) and ``unlabeled_fraction: 0`` in the data it is the source-only
baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from handssl.callbacks.pseudo_label_pass import PseudoLabelRounds
from handssl.models.base import eval_mode, to_float
from handssl.models.components.ema import EMATeacher, load_student_teacher, sync_buffers, warmup_momentum
from handssl.models.components.hand_template import BoneLengthTemplate
from handssl.models.components.lifting import Lifter
from handssl.models.components.pose25d import Pose25DNet, forward_parts
from handssl.models.components.pseudo_label_stats import label_stash, label_statistics, stash_state
from handssl.models.components.pseudo_labels import PseudoLabeler, PseudoLabels, stack_views
from handssl.models.components.semihand_losses import LossOptions, SemiHandLosses, consistency_targets
from handssl.models.options import SEMIHAND_GROUPS, Optimization, moved_arguments, task_default
from handssl.models.pose25d_task import Pose25DTask
from handssl.models.semihand_options import (
    ConsistencyOptions,
    CorrectionOptions,
    EMAOptions,
    PoseLossOptions,
    PseudoLabelOptions,
    UnsupervisedSchedule,
)
from handssl.skeleton import MIDDLE_MCP

STATE = {"round_table": None, "rounds_done": 0, "ema_updates": 0}  # in checkpoints, with the template


def _default_corrector() -> Any:
    from handssl.biomech import correct

    return correct


class SemiHandModule(Pose25DTask):
    """SemiHand: labelled synthetic + unlabelled real images, pseudo-labels with biomechanical correction.

    The losses, the pseudo-labels and the teacher are option groups (:mod:`~handssl.models.semihand_options`),
    each a mapping in YAML whose keys left out keep their defaults, e.g. ``correction: {enabled: false}``.

    Args:
        mode: ``"mean_teacher"`` (an EMA teacher labels every step) or ``"rounds"`` (the paper's offline rounds).
        backbone_widths: Channels of the ResNet stages.
        backbone_blocks: Basic blocks per stage.
        decoder_channels: Channels of the heatmap decoder.
        output_stride: Input pixels per heatmap cell (4: 16 x 16 maps at 64 px; 2 cost twice as much, no better).
        beta_init: Initial inverse temperature of the heatmap softmax (learned; sharp, so the soft-argmax is local).
        image_size: Input side in pixels (sets the capsule radii and the ``uv`` unit of the losses).
        root_joint: Root of the relative depth (the paper's: 9, the middle MCP).
        loss: The pose distance and the supervised terms (:class:`PoseLossOptions`: ``norm``, ``depth_weight``,
            ``heatmap_weight``, ``heatmap_sigma``, ``mask_weight``, ``use_mask``).
        pseudo_labels: The confidence-gated pseudo-label loss (:class:`PseudoLabelOptions`: ``enabled``,
            ``weight``, ``threshold``, ``accept_fraction``, ``lifting``).
        correction: The biomechanical correction and Eq. 6's ``l(r, p)`` (:class:`CorrectionOptions`:
            ``enabled``, ``weight``, ``template``, ``ray_tol_px``, ``max_mm``, ``mirror_check``).
        consistency: View and cross-modal consistency (:class:`ConsistencyOptions`: ``enabled``, ``weight``,
            ``cross_modal_weight``, ``cross_modal_size``, ``capsule_finger_fraction``, ``capsule_palm_fraction``).
        unsupervised: When the unsupervised losses start (:class:`UnsupervisedSchedule`: ``start_step``,
            ``ramp_steps``).
        ema: The teacher's moving average (:class:`EMAOptions`: ``decay``, ``warmup``, ``buffer_mode``).
        lifting: 2.5D -> 3D at evaluation: ``"known"`` root depth and scale (the paper's protocol) or
            ``"predicted"`` (see :mod:`~handssl.models.components.lifting`).
        template_scale_mm: Reference-bone length of the template hand for ``"predicted"`` (default: kinematics').
        eval_network: ``"teacher"`` or ``"student"`` for validation / test (``rounds`` always uses the student).
        epochs_per_round: Epochs per pseudo-labelling round (``mode="rounds"``).
        init_checkpoint: A SemiHandModule checkpoint (e.g. source-only) to continue: networks, EMA count, template.
        optimizer: AdamW and its schedule (:class:`~handssl.models.options.Optimization`; here lr 1e-3, cosine).
        eval_protocol: Evaluation protocol name (see :mod:`handssl.metrics.protocols`).
        channels_last: Convolutions in ``channels_last`` memory format (see :class:`BaseHandTask`).
        compile: Compile the student (and the teacher) with ``torch.compile`` (see :class:`BaseHandTask`).
        compile_backend: ``"inductor"`` or ``"aot_eager"``.
    """

    moved_arguments: ClassVar[Mapping[str, str]] = moved_arguments(*SEMIHAND_GROUPS)
    """Where each flat argument of earlier versions went (``use_correction`` -> ``correction: {enabled: ...}``)."""

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
        loss: PoseLossOptions = PoseLossOptions(),
        pseudo_labels: PseudoLabelOptions = PseudoLabelOptions(),
        correction: CorrectionOptions = CorrectionOptions(),
        consistency: ConsistencyOptions = ConsistencyOptions(),
        unsupervised: UnsupervisedSchedule = UnsupervisedSchedule(),
        ema: EMAOptions = EMAOptions(),
        lifting: Literal["known", "predicted"] = "known",
        template_scale_mm: float | None = None,
        eval_network: Literal["teacher", "student"] = "teacher",
        epochs_per_round: int = 1,
        init_checkpoint: str | None = None,
        optimizer: Optimization = Optimization(),
        eval_protocol: str = "synthhands",
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: Literal["inductor", "aot_eager"] = "inductor",
    ) -> None:
        # A mapping (a checkpoint's hparams) keeps this task's defaults for the keys it leaves out.
        default = partial(task_default, type(self))
        self.loss = PoseLossOptions.of(loss, default("loss"))
        self.pseudo_labels = PseudoLabelOptions.of(pseudo_labels, default("pseudo_labels"))
        self.correction = CorrectionOptions.of(correction, default("correction"))
        self.consistency = ConsistencyOptions.of(consistency, default("consistency"))
        self.unsupervised = UnsupervisedSchedule.of(unsupervised, default("unsupervised"))
        self.ema = EMAOptions.of(ema, default("ema"))
        self.uv_unit_px = image_size / 64.0
        self.pseudo_labeler = PseudoLabeler(
            corrector=_default_corrector() if self.correction.enabled else None,
            threshold=self.pseudo_labels.threshold,
            accept_fraction=self.pseudo_labels.accept_fraction,
            use_correction=self.correction.enabled,
            depth_weight=self.loss.depth_weight,
            uv_unit_px=self.uv_unit_px,
            root=root_joint,
            ray_tol_px=self.correction.ray_tol_px,
            max_correction_mm=self.correction.max_mm,
            mirror_check=self.correction.mirror_check,
        )
        self.rounds = PseudoLabelRounds(epochs_per_round)  # a callback in mode="rounds" only
        self.lifter = Lifter(root_joint, template_scale_mm)
        self.semi_mode = mode  # not ``self.mode``: that is the monitored metric's direction
        self.make_network = partial(
            Pose25DNet,
            widths=backbone_widths,
            blocks=backbone_blocks,
            decoder_channels=decoder_channels,
            output_stride=output_stride,
            beta_init=beta_init,
        )
        self.image_size = image_size
        self.root_joint = root_joint
        self.lifting = lifting
        self.eval_network = eval_network
        self.init_checkpoint = init_checkpoint
        super().__init__(
            optimizer=optimizer,
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

    def configure_models(self) -> None:
        self.student = self.make_network()
        self._init_loaded = False
        self.teacher = (
            EMATeacher(self.student, self.ema.buffer_mode) if self.semi_mode == "mean_teacher" else None
        )
        self.template = BoneLengthTemplate()

    def configure_losses(self) -> None:
        options = LossOptions(self.loss, self.pseudo_labels, self.correction, self.consistency)
        self.loss_options = options
        self.losses = SemiHandLosses(options, self.image_size, self.root_joint)

    def configure_callbacks(self) -> list[pl.Callback]:
        """The offline rounds (:class:`PseudoLabelRounds`, which read the DataModule) in ``mode="rounds"``."""
        return [self.rounds] if self.semi_mode == "rounds" else []

    def compile_targets(self) -> list[torch.nn.Module]:
        """The student and the teacher's network (the teacher's forward is no-grad and in eval mode)."""
        return [self.student] + ([self.teacher.module] if self.teacher is not None else [])

    def setup(self, stage: str) -> None:
        """Load ``init_checkpoint`` when fitting starts (not in ``__init__``: ``load_from_checkpoint`` never needs it).

        Student and teacher come from :func:`load_student_teacher`; resuming with ``ckpt_path`` loads over them.
        """
        if stage != "fit" or not self.init_checkpoint or self._init_loaded:
            return
        path = self.init_checkpoint
        checkpoint, continued = load_student_teacher(path, self.student, self.teacher, "init_checkpoint")
        extra = checkpoint.get("semihand", {}) if isinstance(checkpoint, dict) else {}
        if continued:  # the teacher's EMA warm-up carries on
            self.ema_updates = int(extra.get("ema_updates", 0))
        self.template.load_state(extra.get("template"))
        self._init_loaded = True
        rank_zero_info(f"SemiHandModule: network initialised from {path} ({self.ema_updates} EMA updates)")

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Student prediction: ``uv`` (B, 21, 2) px, ``depth`` (B, 21), ``mask_logits``, ``heatmaps``."""
        return self.student(image)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The network used for evaluation and prediction (``eval_network``; ``rounds`` has only the student)."""
        if self.teacher is not None and self.eval_network == "teacher":
            return self.teacher
        return self.student

    @torch.no_grad()
    def compute_pseudo_labels(
        self, batch: dict[str, Any], network: torch.nn.Module | None = None
    ) -> tuple[PseudoLabels, dict[str, Tensor]]:
        """Pseudo-labels of a batch of unlabelled items (``image``, ``image_perturbed``, ``perturb_matrix``, ``K``).

        Args:
            batch: Unlabelled batch from :class:`~handssl.data.semi.UnlabeledView`.
            network: The labelling network (default: the teacher, or the network in eval mode for rounds).

        Returns:
            The :class:`PseudoLabels` and the original images' consistency targets (``uv``, ``depth``, ``mask_prob``).
        """
        if network is None:
            network = self.teacher if self.teacher is not None else self.student
        image, b = batch["image"], batch["image"].shape[0]
        with eval_mode(self.student) if network is self.student else nullcontext():
            out = to_float(network(torch.cat([image, batch["image_perturbed"].flatten(0, 1)])))
        with self.full_precision():  # lifting and correction (SVD, det) in float32
            uv, depth = stack_views(out["uv"], out["depth"], batch["perturb_matrix"])
            K, joints, valid = batch["K"], batch.get("eval_joints3d"), batch.get("eval_valid")
            root, scale = self.lifter.params(
                uv.mean(1), depth.mean(1), K, self.pseudo_labels.lifting, joints, valid
            )
            labels = self.pseudo_labeler(uv, depth, K, root, scale, self.correction_template(batch, scale))
        return labels, consistency_targets(out, b)

    def correction_template(self, batch: dict[str, Any], scale_mm: Tensor) -> Tensor | None:
        """``(B, 20)`` template bone lengths (mm) for correcting a batch's pseudo-labels (``correction.template``)."""
        kind = self.correction.template if self.correction.enabled else "none"
        return self.template.lengths_for(kind, scale_mm, batch.get("eval_joints3d"), batch.get("eval_valid"))

    def _labels_and_targets(
        self, unlabeled: dict[str, Any], want: dict[str, bool]
    ) -> tuple[dict[str, Tensor] | None, dict[str, Tensor] | None]:
        """Pseudo-label rows (``uv``, ``depth``, ``*_registered``, ``accepted``, ``refused``) and consistency targets."""
        if self.semi_mode == "rounds":
            need_rows = want["pseudo_label"] or want["correction"]
            rows = self.rounds.rows(self, unlabeled["index"]) if need_rows else None
            if not want["consistency"]:
                return rows, None
            with torch.no_grad(), eval_mode(self.student):  # the network's own stop-gradient predictions
                return rows, consistency_targets(self.student(unlabeled["image"]))
        labels, teacher_out = self.compute_pseudo_labels(unlabeled, self.teacher)
        self.last_pseudo_labels = label_stash(unlabeled, labels, self.pseudo_labeler.threshold)
        with self.full_precision():
            for name, (value, size) in label_statistics(labels, unlabeled, self.root_joint).items():
                self.log(f"train/{name}", value, batch_size=size)
        return labels.to_dict(), teacher_out

    def supervised_losses(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """``L_sup`` of network outputs on a labelled batch (:meth:`SemiHandLosses.supervised`)."""
        return self.losses.supervised(out, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labeled, unlabeled = batch.get("labeled"), batch.get("unlabeled")
        factor = self.unsupervised.weight(self.global_step) if unlabeled is not None else 0.0
        want = self.loss_options.wanted(factor)
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
        outs = forward_parts(self.student, parts)
        losses: dict[str, Tensor] = {}
        total = outs[next(iter(parts))]["uv"].new_zeros(())
        if labeled is not None:
            with self.full_precision():
                sup = self.losses.supervised(outs["labeled"], labeled)
            losses.update(sup)
            total = total + sum(sup.values())
            every = getattr(self._trainer, "log_every_n_steps", 1)  # Lightning sets it untyped
            if (self.global_step + 1) % max(1, int(every)) == 0:
                self.log_health("train", outs["labeled"], labeled)
        if unlabeled is not None and any(want.values()):
            rows, target = self._labels_and_targets(unlabeled, want)
            with self.full_precision():
                total = total + factor * self.losses.unsupervised(outs, unlabeled, rows, target, want, losses)
        losses["loss"] = total
        return self.log_losses(losses, batch_size=sum(x.shape[0] for x in parts.values()))

    def visualization_state(self, stage: Literal["val", "test"] = "val") -> dict[str, Any]:
        """The base task's state plus the latest training pseudo-labels and their spread (:func:`stash_state`)."""
        return {**super().visualization_state(stage), **stash_state(self.last_pseudo_labels)}

    def current_momentum(self) -> float:
        """Momentum of the next teacher update (``ema.decay``, warmed up over the first updates)."""
        return warmup_momentum(self.ema.decay, self.ema_updates, self.ema.warmup)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.teacher is not None:
            sync_buffers(self.student)
            self.last_momentum = self.current_momentum()
            self.teacher.update(self.student, self.last_momentum)
            self.ema_updates += 1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = {key: getattr(self, key) for key in STATE}
        checkpoint["semihand"] = {**state, "template": self.template.state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("semihand", {})
        for key, default in STATE.items():
            setattr(self, key, state.get(key, default))
        self.template.load_state(state.get("template"))


__all__ = ["SemiHandModule"]
