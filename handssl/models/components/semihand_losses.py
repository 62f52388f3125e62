"""SemiHand's loss terms, from the network's outputs, the batch, and the pseudo-labels and consistency targets.

:class:`SemiHandLosses` computes, with the weights and switches of a :class:`LossOptions`,

* ``L_sup`` on labelled images: ``|uv - uv_gt| + lambda_d |d - d_gt|`` (squared or absolute, ``loss.norm``),
  a Gaussian heatmap loss and ``lambda_w |w - w_gt|_1`` on the mask;
* on the "diversity" copy of each unlabelled image, the labels moved by the same transform: the gated
  pseudo-label loss ``1(C <= tau) l(p, p_hat)`` (plus the heatmap loss on accepted labels) and Eq. 6's
  ungated ``l(r, p)`` towards the corrected label (:mod:`~handssl.models.components.pseudo_labels`); labels
  whose correction refuses them (depth-mirrored, or moved more than ``correction.max_mm``) enter neither;
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
from handssl.models.components.pose25d import encode_25d, heatmap_loss, joint_error
from handssl.models.components.pseudo_labels import pseudo_label_loss, transformed_label
from handssl.models.semihand_options import (
    ConsistencyOptions,
    CorrectionOptions,
    PoseLossOptions,
    PseudoLabelOptions,
)
from handssl.skeleton import MIDDLE_MCP, REFERENCE_BONE, root_relative

__all__ = ["LossOptions", "SemiHandLosses", "consistency_targets"]


def consistency_targets(out: dict[str, Tensor], count: int | None = None) -> dict[str, Tensor]:
    """The consistency targets of network outputs (the first ``count`` items): ``uv``, ``depth``, ``mask_prob``."""
    return {
        "uv": out["uv"][:count],
        "depth": out["depth"][:count],
        "mask_prob": torch.sigmoid(out["mask_logits"][:count]),
    }


@dataclass(frozen=True)
class LossOptions:
    """SemiHand's option groups that weigh and switch its losses (each validated where it is made).

    Attributes:
        loss: The pose distance and the supervised heads' terms (:class:`~handssl.models.options.PoseLossOptions`).
        pseudo_labels: The gated pseudo-label loss (:class:`~handssl.models.options.PseudoLabelOptions`).
        correction: Eq. 6's ``l(r, p)`` (:class:`~handssl.models.options.CorrectionOptions`).
        consistency: ``lambda_c L_cons`` (:class:`~handssl.models.options.ConsistencyOptions`).
    """

    loss: PoseLossOptions
    pseudo_labels: PseudoLabelOptions
    correction: CorrectionOptions
    consistency: ConsistencyOptions

    def wanted(self, weight: float) -> dict[str, bool]:
        """Which unsupervised terms a step computes, at unsupervised weight ``weight``."""
        correction = self.correction
        return {
            "pseudo_label": self.pseudo_labels.enabled and weight > 0,
            "correction": correction.enabled and correction.weight > 0 and weight > 0,
            "consistency": self.consistency.enabled and weight > 0,
        }


class SemiHandLosses(nn.Module):
    """The weighted loss terms of :class:`~handssl.models.SemiHandModule` (see the module docstring).

    Args:
        options: SemiHand's option groups that weigh and switch the terms.
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
        cons = options.consistency
        radii = capsule_radii(image_size, cons.capsule_finger_fraction, cons.capsule_palm_fraction)
        self.register_buffer("capsule_radii", radii, persistent=False)

    def stride(self, out: dict[str, Tensor]) -> int:
        """Input pixels per heatmap cell of network outputs ``out``."""
        return self.image_size // out["heatmaps"].shape[-1]

    def supervised(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """``L_sup``: 2D (64-px units), depth (``lambda_d``, bone units), heatmap and mask (``lambda_w`` x L1).

        2D and depth errors are squared or absolute (``loss.norm``); the heatmap term (``loss.heatmap_weight``)
        pulls each labelled joint's map towards a Gaussian at its annotated ``uv``.
        """
        o = self.options.loss
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
            "sup_2d": masked_mean(joint_error(uv_error, o.norm), valid2d),
            "sup_depth": masked_mean(joint_error(depth_error, o.norm, o.depth_weight), valid3d),
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
        o, label_weight = self.options.loss, self.options.pseudo_labels.weight
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
            o.norm,
        )
        total = outs[next(iter(outs))]["uv"].new_zeros(())
        if want["pseudo_label"]:
            assert rows is not None, "the caller gives pseudo-label rows when they are wanted"
            losses["pseudo_label"] = label_loss(rows["uv"], rows["depth"], rows["accepted"])
            losses["accept_rate"] = rows["accepted"].float().mean().detach()
            total = total + label_weight * losses["pseudo_label"]
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
                total = total + label_weight * o.heatmap_weight * losses["pseudo_label_heatmap"]
        if want["correction"]:  # Eq. 6's l(r, p): ungated, but never towards a refused correction
            assert rows is not None, "the caller gives pseudo-label rows when they are wanted"
            usable = ~rows["refused"].bool()
            losses["correction"] = label_loss(rows["uv_registered"], rows["depth_registered"], usable)
            total = total + self.options.correction.weight * losses["correction"]
        if want["consistency"]:
            assert target is not None, "the caller gives consistency targets when they are wanted"
            total = total + self.options.consistency.weight * self.consistency(
                outs, unlabeled, target, losses
            )
        return total

    def consistency(
        self,
        outs: dict[str, dict[str, Tensor]],
        unlabeled: dict[str, Any],
        target: dict[str, Tensor],
        losses: dict[str, Tensor],
    ) -> Tensor:
        """``L_vc`` (pose and mask equivariance under the first perturbation) and ``L_cc`` (cross-modal)."""
        o, cons_options = self.options.loss, self.options.consistency
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
            o.norm,
        )
        if not o.use_mask:
            return cons
        losses["consistency_mask"] = mask_equivariance_loss(
            torch.sigmoid(pert["mask_logits"]), target["mask_prob"], matrix
        )
        cons = cons + losses["consistency_mask"]
        if cons_options.cross_modal_weight > 0:
            cc = [
                cross_modal_loss(
                    out["uv"],
                    torch.sigmoid(out["mask_logits"]),
                    self.capsule_radii,
                    uv_unit_px=self.uv_unit_px,
                    size=cons_options.cross_modal_size,
                )["total"]
                for out in outs.values()
            ]
            losses["cross_modal"] = torch.stack(cc).mean()
            cons = cons + cons_options.cross_modal_weight * losses["cross_modal"]
        return cons
