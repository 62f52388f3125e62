"""SemiHand's loss terms, from the network's outputs, the batch, and the pseudo-labels and consistency targets.

:class:`SemiHandLosses` computes, with the weights and switches of a :class:`LossOptions`,

* ``L_sup`` on labelled images: ``|uv - uv_gt| + lambda_d |d - d_gt|`` (squared or absolute, ``pose_loss``),
  a Gaussian heatmap loss and ``lambda_w |w - w_gt|_1`` on the mask;
* on the "diversity" copy of each unlabelled image, the labels moved by the same transform: the gated
  pseudo-label loss ``1(C <= tau) l(p, p_hat)`` (plus the heatmap loss on accepted labels) and Eq. 6's
  ungated ``l(r, p)`` towards the corrected label (:mod:`~handssl.models.components.pseudo_labels`); labels
  whose correction refuses them (depth-mirrored, or moved more than ``max_correction_mm``) enter neither;
* ``lambda_c (L_vc + L_cc)``: pose and mask equivariance under the first perturbation and the cross-modal
  pose <-> mask term (:mod:`~handssl.models.components.consistency`).

Every term is logged under its name in the ``losses`` dict the methods fill; the caller runs them in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from handssl.metrics.functional import masked_mean
from handssl.models.components.consistency import (
    capsule_radii,
    cross_modal_loss,
    mask_equivariance_loss,
    pose_equivariance_loss,
)
from handssl.models.components.pose25d import PoseNorm, encode_25d, heatmap_loss, joint_error
from handssl.models.components.pseudo_labels import pseudo_label_loss, transformed_label
from handssl.skeleton import MIDDLE_MCP, REFERENCE_BONE, root_relative

__all__ = ["LossOptions", "SemiHandLosses", "consistency_targets", "unsupervised_weight"]


def unsupervised_weight(step: int, start: int, ramp_steps: int) -> float:
    """Weight of the unsupervised losses at ``step``: 0 before ``start``, then a linear ramp over ``ramp_steps``."""
    if step < start:
        return 0.0
    return 1.0 if ramp_steps <= 0 else min(1.0, (step - start + 1) / ramp_steps)


def consistency_targets(out: dict[str, Tensor], count: int | None = None) -> dict[str, Tensor]:
    """The consistency targets of network outputs (the first ``count`` items): ``uv``, ``depth``, ``mask_prob``."""
    return {
        "uv": out["uv"][:count],
        "depth": out["depth"][:count],
        "mask_prob": torch.sigmoid(out["mask_logits"][:count]),
    }


@dataclass(frozen=True)
class LossOptions:
    """The weights and switches of SemiHand's losses (validated on creation).

    Attributes:
        pose_loss: ``"l1"`` (absolute errors, Sun et al.'s integral loss) or ``"l2"`` (the paper's squared
            distance) for ``L_sup``, the pseudo-label loss and the pose consistency; the confidence ``C`` of the
            pseudo-labels stays the paper's squared spread.
        depth_weight: ``lambda_d``.
        mask_weight: ``lambda_w``.
        heatmap_weight: Weight of the Gaussian heatmap loss (:func:`~handssl.models.components.pose25d.heatmap_loss`)
            on labelled joints and on accepted pseudo-labels (0: integral regression alone, as the paper).
        heatmap_sigma: Standard deviation of its target Gaussians, in heatmap cells.
        pseudo_label_weight: Weight of the gated pseudo-label loss.
        correction_weight: Weight of Eq. 6's ``l(r, p)``.
        consistency_weight: ``lambda_c``.
        cross_modal_weight: Weight of ``L_cc`` inside ``L_cons`` (0 disables it).
        cross_modal_size: Resolution of the cross-modal comparison (``None``: full).
        use_mask: Train the mask head and use the mask terms of the consistency.
        capsule_finger_fraction: Finger capsule radius as a fraction of the image side.
        capsule_palm_fraction: Palm capsule radius as a fraction of the image side.
        use_pseudo_labels: The gated pseudo-label loss.
        use_correction: Eq. 6's ``l(r, p)`` (with ``correction_weight > 0``).
        use_consistency: The view and cross-modal consistency.
    """

    pose_loss: PoseNorm = "l1"
    depth_weight: float = 50.0
    mask_weight: float = 100.0
    heatmap_weight: float = 1.0
    heatmap_sigma: float = 1.0
    pseudo_label_weight: float = 1.0
    correction_weight: float = 1.0
    consistency_weight: float = 0.1
    cross_modal_weight: float = 1.0
    cross_modal_size: int | None = 32
    use_mask: bool = True
    capsule_finger_fraction: float = 0.035
    capsule_palm_fraction: float = 0.05
    use_pseudo_labels: bool = True
    use_correction: bool = True
    use_consistency: bool = True

    def __post_init__(self) -> None:
        if self.pose_loss not in ("l1", "l2"):
            raise ValueError(f"pose_loss must be 'l1' or 'l2', got {self.pose_loss!r}")
        if self.heatmap_weight < 0 or self.heatmap_sigma <= 0:
            raise ValueError(
                f"heatmap_weight must be >= 0 and heatmap_sigma > 0, got {self.heatmap_weight}, "
                f"{self.heatmap_sigma}"
            )

    def wanted(self, weight: float) -> dict[str, bool]:
        """Which unsupervised terms a step computes, at unsupervised weight ``weight``."""
        return {
            "pseudo_label": self.use_pseudo_labels and weight > 0,
            "correction": self.use_correction and self.correction_weight > 0 and weight > 0,
            "consistency": self.use_consistency and weight > 0,
        }


class SemiHandLosses(nn.Module):
    """The weighted loss terms of :class:`~handssl.models.SemiHandModule` (see the module docstring).

    Args:
        options: Weights and switches.
        image_size: Input side in pixels (the ``uv`` unit is ``image_size / 64`` pixels, the paper's maps).
        root: Root joint of the relative depth.
    """

    capsule_radii: Tensor

    def __init__(self, options: LossOptions, image_size: int = 64, root: int = MIDDLE_MCP) -> None:
        super().__init__()
        self.options = options
        self.image_size = image_size
        self.uv_unit_px = image_size / 64.0
        self.root = root
        radii = capsule_radii(image_size, options.capsule_finger_fraction, options.capsule_palm_fraction)
        self.register_buffer("capsule_radii", radii, persistent=False)

    def stride(self, out: dict[str, Tensor]) -> int:
        """Input pixels per heatmap cell of network outputs ``out``."""
        return self.image_size // out["heatmaps"].shape[-1]

    def supervised(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """``L_sup``: 2D (64-px units), depth (``lambda_d``, bone units), heatmap and mask (``lambda_w`` x L1).

        2D and depth errors are squared or absolute (``pose_loss``); the heatmap term (``heatmap_weight``)
        pulls each labelled joint's map towards a Gaussian at its annotated ``uv``.
        """
        o = self.options
        valid = batch["valid"].bool()
        joints2d, joints3d = batch["joints2d"], batch["joints3d"]
        valid2d = valid & torch.isfinite(joints2d).all(-1) & batch.get("in_bounds", valid).bool()
        depth_gt, _, _ = encode_25d(torch.nan_to_num(joints3d), self.root, REFERENCE_BONE)
        needed = [self.root, *REFERENCE_BONE]
        valid3d = valid & valid[:, needed].all(-1, keepdim=True) & torch.isfinite(joints3d).all(-1)
        depth = root_relative(out["depth"], self.root, joint_axis=-1)
        uv_error = (out["uv"] - torch.nan_to_num(joints2d)) / self.uv_unit_px
        depth_error = (depth - torch.nan_to_num(depth_gt)).unsqueeze(-1)
        losses = {
            "sup_2d": masked_mean(joint_error(uv_error, o.pose_loss), valid2d),
            "sup_depth": masked_mean(joint_error(depth_error, o.pose_loss, o.depth_weight), valid3d),
        }
        if o.heatmap_weight > 0:
            losses["sup_heatmap"] = o.heatmap_weight * heatmap_loss(
                out["log_heatmaps"], joints2d, valid2d, self.stride(out), o.heatmap_sigma
            )
        if o.use_mask:
            has_mask = batch.get(
                "has_mask", torch.ones(valid.shape[0], dtype=torch.bool, device=valid.device)
            ).bool()
            per_sample = (torch.sigmoid(out["mask_logits"]) - batch["mask"]).abs().flatten(1).mean(1)
            losses["sup_mask"] = o.mask_weight * masked_mean(per_sample, has_mask)
        return losses

    def unsupervised(
        self,
        outs: dict[str, dict[str, Tensor]],
        unlabeled: dict[str, Any],
        rows: dict[str, Tensor] | None,
        target: dict[str, Tensor] | None,
        want: dict[str, bool],
        losses: dict[str, Tensor],
    ) -> Tensor:
        """The weighted sum of the gated pseudo-label loss, Eq. 6's ``l(r, p)`` and ``lambda_c L_cons``.

        Args:
            outs: Network outputs by part: ``strong`` (the diversity copies), ``perturbed`` and any other.
            unlabeled: The unlabelled batch (``strong_matrix``, ``perturb_matrix``).
            rows: Pseudo-label rows (``uv``, ``depth``, ``uv_registered``, ``depth_registered``, ``accepted``,
                ``refused``) when a label term is wanted.
            target: Consistency targets (``uv``, ``depth``, ``mask_prob``) when the consistency is wanted.
            want: Which of ``pseudo_label``, ``correction`` and ``consistency`` to compute.
            losses: Filled with every term.
        """
        o = self.options
        label_loss = lambda uv, depth, keep: pseudo_label_loss(  # noqa: E731
            outs["strong"]["uv"],
            outs["strong"]["depth"],
            uv,
            depth,
            unlabeled["strong_matrix"],
            keep,
            self.image_size,
            o.depth_weight,
            self.uv_unit_px,
            self.root,
            o.pose_loss,
        )
        total = outs[next(iter(outs))]["uv"].new_zeros(())
        if want["pseudo_label"]:
            assert rows is not None, "the caller gives pseudo-label rows when they are wanted"
            losses["pseudo_label"] = label_loss(rows["uv"], rows["depth"], rows["accepted"])
            losses["accept_rate"] = rows["accepted"].float().mean().detach()
            total = total + o.pseudo_label_weight * losses["pseudo_label"]
            if o.heatmap_weight > 0:  # accepted labels supervise the maps as annotations do
                label_uv, inside = transformed_label(rows["uv"], unlabeled["strong_matrix"], self.image_size)
                strong = outs["strong"]
                # mean over accepted joints times the accepted share: rejected items count as 0, as in
                # the gated pose term
                losses["pseudo_label_heatmap"] = rows["accepted"].float().mean() * heatmap_loss(
                    strong["log_heatmaps"],
                    label_uv,
                    inside & rows["accepted"].bool().unsqueeze(-1),
                    self.stride(strong),
                    o.heatmap_sigma,
                )
                total = total + o.pseudo_label_weight * o.heatmap_weight * losses["pseudo_label_heatmap"]
        if want["correction"]:  # Eq. 6's l(r, p): ungated, but never towards a refused correction
            assert rows is not None, "the caller gives pseudo-label rows when they are wanted"
            usable = ~rows["refused"].bool()
            losses["correction"] = label_loss(rows["uv_registered"], rows["depth_registered"], usable)
            total = total + o.correction_weight * losses["correction"]
        if want["consistency"]:
            assert target is not None, "the caller gives consistency targets when they are wanted"
            total = total + o.consistency_weight * self.consistency(outs, unlabeled, target, losses)
        return total

    def consistency(
        self,
        outs: dict[str, dict[str, Tensor]],
        unlabeled: dict[str, Any],
        target: dict[str, Tensor],
        losses: dict[str, Tensor],
    ) -> Tensor:
        """``L_vc`` (pose and mask equivariance under the first perturbation) and ``L_cc`` (cross-modal)."""
        o = self.options
        r = self.root
        pert = outs["perturbed"]
        matrix = unlabeled["perturb_matrix"][:, 0]
        cons = losses["consistency_pose"] = pose_equivariance_loss(
            pert["uv"],
            pert["depth"] - pert["depth"][:, r : r + 1],
            target["uv"],
            target["depth"] - target["depth"][:, r : r + 1],
            matrix,
            o.depth_weight,
            self.uv_unit_px,
            self.image_size,
            o.pose_loss,
        )
        if not o.use_mask:
            return cons
        losses["consistency_mask"] = mask_equivariance_loss(
            torch.sigmoid(pert["mask_logits"]), target["mask_prob"], matrix
        )
        cons = cons + losses["consistency_mask"]
        if o.cross_modal_weight > 0:
            cc = [
                cross_modal_loss(
                    out["uv"],
                    torch.sigmoid(out["mask_logits"]),
                    self.capsule_radii,
                    uv_unit_px=self.uv_unit_px,
                    size=o.cross_modal_size,
                )["total"]
                for out in outs.values()
            ]
            losses["cross_modal"] = torch.stack(cc).mean()
            cons = cons + o.cross_modal_weight * losses["cross_modal"]
        return cons
