"""SemiHand pseudo-labels: average of original, perturbed and corrected predictions; confidence from spread.

For one unlabelled image the teacher (or, in the paper's offline rounds, the network itself) predicts the
2.5D pose on the original image and on ``P`` perturbed copies. Each perturbed prediction is mapped back to
the original frame with the inverse of its perturbation matrix (``uv`` through ``M^-1``; the root-relative
depth does not change under in-plane shifts and rotations). Each of these ``V = P + 1`` views is then
corrected to a biomechanically feasible pose (lift to 3D, ``correct``, project back). Then, following the
SemiHand slides ("pseudo-labels (average), confidence (variance), based on original, perturbed and corrected
predictions") and the follow-up's Eq. 8 (``r = (p_R + rho(p_R) + p_F + rho(p_F)) / 4``):

* the pseudo-label ``p_hat`` is the mean of the ``V`` predictions and their ``V`` corrections;
* its spread ``C = mean_s l(s, p_hat)`` with SemiHand's pose distance ``l``
  (:func:`~handssl.models.components.pose25d.pose_distance`) is the paper's confidence measure, a cost
  (**lower is more confident**) that grows when the prediction is unstable under perturbation and when it
  is implausible (far from its correction), the two terms of the paper's Eq. 8; ``confidence = exp(-C)``
  is the same information on a higher-is-better ``(0, 1]`` scale, for plots and exports;
* the pseudo-label loss applies only where ``C <= threshold`` (``tau = 1.5`` in the paper).

Without correction (an ablation) the corrected views are left out of both the mean and the spread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from handssl.data.augment import invert_matrix, transform_points
from handssl.geometry import project
from handssl.models.components.pose25d import lift_25d, pose_distance
from handssl.skeleton import MIDDLE_MCP, ROOT

__all__ = [
    "PseudoLabeler",
    "PseudoLabels",
    "gate",
    "map_back",
    "pseudo_label_errors",
    "pseudo_label_loss",
    "spread",
]

Corrector = Callable[[Tensor], Tensor]
"""Maps ``(N, 21, 3)`` joints in mm to the nearest feasible ``(N, 21, 3)`` (e.g. ``handssl.biomech.correct``)."""


def map_back(uv: Tensor, matrices: Tensor) -> Tensor:
    """Map predictions on perturbed images back to the original frame.

    Args:
        uv: ``(B, P, J, 2)`` pixels of the perturbed images.
        matrices: ``(B, P, 3, 3)`` perturbation matrices (original -> perturbed pixels).

    Returns:
        ``(B, P, J, 2)`` pixels of the original image.
    """
    return transform_points(uv, invert_matrix(matrices.to(uv.dtype)))


def spread(uv_views: Tensor, depth_views: Tensor, uv: Tensor, depth: Tensor, **distance: Any) -> Tensor:
    """Mean pose distance of a set of poses from a reference pose: ``mean_s l(s, p)``.

    Args:
        uv_views: ``(B, S, J, 2)`` poses of the set.
        depth_views: ``(B, S, J)``.
        uv: ``(B, J, 2)`` reference pose (e.g. their mean).
        depth: ``(B, J)``.
        **distance: Keyword arguments of :func:`~handssl.models.components.pose25d.pose_distance`
            (``depth_weight``, ``uv_unit_px``).

    Returns:
        ``(B,)`` spread.
    """
    b, s = uv_views.shape[:2]
    ref_uv = uv.unsqueeze(1).expand_as(uv_views)
    ref_d = depth.unsqueeze(1).expand_as(depth_views)
    dist = pose_distance(
        uv_views.reshape(b * s, *uv_views.shape[2:]),
        depth_views.reshape(b * s, -1),
        ref_uv.reshape(b * s, *uv_views.shape[2:]),
        ref_d.reshape(b * s, -1),
        **distance,
    )
    return dist.view(b, s).mean(1)


def gate(spread: Tensor, threshold: float) -> Tensor:
    """Samples whose spread ``C`` is at most ``threshold`` (the paper's ``1(C <= tau)``); ``inf`` keeps all."""
    return spread <= threshold


@dataclass
class PseudoLabels:
    """Pseudo-labels of a batch of unlabelled images, all in the original image's frame.

    Attributes:
        uv: ``(B, J, 2)`` pseudo-label pixels (the average).
        depth: ``(B, J)`` pseudo-label relative depth (reference-bone units).
        spread: ``(B,)`` the spread ``C`` (the paper's confidence cost; lower is more confident).
        confidence: ``(B,)`` ``exp(-spread)`` in ``(0, 1]`` (higher is more confident).
        accepted: ``(B,)`` bool, ``spread <= threshold``.
        uv_raw: ``(B, J, 2)`` mean of the uncorrected views (the pseudo-label without correction).
        depth_raw: ``(B, J)``.
        uv_corrected: ``(B, J, 2)`` mean of the corrected views (equals ``uv_raw`` without correction).
        depth_corrected: ``(B, J)``.
        joints3d: ``(B, J, 3)`` the pseudo-label lifted to camera-frame mm.
        joints3d_raw: ``(B, J, 3)`` ``uv_raw``/``depth_raw`` lifted.
        correction_shift_mm: ``(B,)`` mean joint displacement from ``joints3d_raw`` to ``joints3d`` (how much
            correction moved the label).
        changed: ``(B,)`` bool, ``correction_shift_mm > changed_tol_mm``.
    """

    uv: Tensor
    depth: Tensor
    spread: Tensor
    confidence: Tensor
    accepted: Tensor
    uv_raw: Tensor
    depth_raw: Tensor
    uv_corrected: Tensor
    depth_corrected: Tensor
    joints3d: Tensor
    joints3d_raw: Tensor
    correction_shift_mm: Tensor
    changed: Tensor

    def detach(self) -> PseudoLabels:
        """A copy with every tensor detached."""
        return PseudoLabels(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def to_dict(self) -> dict[str, Tensor]:
        """The fields as a dict of tensors."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def cat(parts: list[PseudoLabels]) -> PseudoLabels:
        """Concatenate batches of pseudo-labels along the batch dimension."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of PseudoLabels")
        return PseudoLabels(
            **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(PseudoLabels)}
        )


class PseudoLabeler:
    """Turn multi-view 2.5D predictions into averaged, corrected, confidence-gated pseudo-labels.

    Args:
        corrector: Maps ``(N, 21, 3)`` mm joints to feasible ones (``handssl.biomech.correct``); ``None``
            disables correction.
        threshold: Threshold ``tau`` on the spread: labels with ``C > tau`` get no pseudo-label loss.
        use_correction: Include the corrected views (ablation switch).
        depth_weight: ``lambda_d`` of the pose distance.
        uv_unit_px: Pixels per ``uv`` unit of the pose distance (``image_size / 64`` keeps the paper's units).
        root: Root joint of the relative depth.
        changed_tol_mm: A label counts as changed by correction when it moved more than this (mean per joint).
    """

    def __init__(
        self,
        corrector: Corrector | None = None,
        threshold: float = 1.5,
        use_correction: bool = True,
        depth_weight: float = 50.0,
        uv_unit_px: float = 1.0,
        root: int = MIDDLE_MCP,
        changed_tol_mm: float = 1.0,
    ) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 (inf accepts every label), got {threshold}")
        if use_correction and corrector is None:
            raise ValueError("use_correction=True needs a corrector (e.g. handssl.biomech.correct)")
        self.corrector = corrector
        self.threshold = threshold
        self.use_correction = use_correction
        self.depth_weight = depth_weight
        self.uv_unit_px = uv_unit_px
        self.root = root
        self.changed_tol_mm = changed_tol_mm

    def correct_views(
        self, uv: Tensor, depth: Tensor, K: Tensor, root_depth_mm: Tensor, scale_mm: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Correct each view: lift with ``K``, root depth and scale, ``corrector``, project back.

        Args:
            uv: ``(B, V, J, 2)``.
            depth: ``(B, V, J)``.
            K: ``(B, 3, 3)``.
            root_depth_mm: ``(B,)``.
            scale_mm: ``(B,)``.

        Returns:
            Corrected ``uv (B, V, J, 2)`` and ``depth (B, V, J)`` (relative to the corrected root, in units of
            the same ``scale_mm``).
        """
        if self.corrector is None:
            raise ValueError("no corrector configured")
        b, v, j = depth.shape
        rep = lambda x: x.unsqueeze(1).expand(b, v, *x.shape[1:]).reshape(b * v, *x.shape[1:])  # noqa: E731
        k_rep, root_rep, scale_rep = rep(K), rep(root_depth_mm), rep(scale_mm)
        joints = lift_25d(
            uv.reshape(b * v, j, 2), depth.reshape(b * v, j), k_rep, root_rep, scale_rep, self.root
        )
        fixed = self.corrector(joints)
        if fixed.shape != joints.shape:
            raise ValueError(f"corrector returned shape {tuple(fixed.shape)}, expected {tuple(joints.shape)}")
        uv_c = project(fixed, k_rep)
        depth_c = (fixed[..., 2] - fixed[..., self.root : self.root + 1, 2]) / scale_rep.unsqueeze(-1)
        return uv_c.view(b, v, j, 2), depth_c.view(b, v, j)

    @torch.no_grad()
    def __call__(
        self,
        uv_views: Tensor,
        depth_views: Tensor,
        K: Tensor,
        root_depth_mm: Tensor,
        scale_mm: Tensor,
    ) -> PseudoLabels:
        """Pseudo-labels from the views of each image (already mapped back to the original frame).

        Args:
            uv_views: ``(B, V, J, 2)`` predictions in the original frame (view 0: the original image).
            depth_views: ``(B, V, J)`` relative depths.
            K: ``(B, 3, 3)`` intrinsics of the original image.
            root_depth_mm: ``(B,)`` root depth used to lift (known or recovered).
            scale_mm: ``(B,)`` reference-bone length used to lift.

        Returns:
            The :class:`PseudoLabels`.
        """
        if uv_views.ndim != 4 or depth_views.shape != uv_views.shape[:3]:
            raise ValueError(
                f"uv_views must be (B, V, J, 2) and depth_views (B, V, J); got {tuple(uv_views.shape)}, "
                f"{tuple(depth_views.shape)}"
            )
        depth_views = depth_views - depth_views[..., self.root : self.root + 1]
        uv_raw, depth_raw = uv_views.mean(1), depth_views.mean(1)
        if self.use_correction:
            uv_c, depth_c = self.correct_views(uv_views, depth_views, K, root_depth_mm, scale_mm)
            members_uv = torch.cat([uv_views, uv_c], 1)
            members_d = torch.cat([depth_views, depth_c], 1)
            uv_corrected, depth_corrected = uv_c.mean(1), depth_c.mean(1)
        else:
            members_uv, members_d = uv_views, depth_views
            uv_corrected, depth_corrected = uv_raw, depth_raw
        uv, depth = members_uv.mean(1), members_d.mean(1)
        cost = spread(
            members_uv, members_d, uv, depth, depth_weight=self.depth_weight, uv_unit_px=self.uv_unit_px
        )
        joints3d = lift_25d(uv, depth, K, root_depth_mm, scale_mm, self.root)
        joints3d_raw = lift_25d(uv_raw, depth_raw, K, root_depth_mm, scale_mm, self.root)
        shift = (joints3d - joints3d_raw).norm(dim=-1).mean(-1)
        return PseudoLabels(
            uv=uv,
            depth=depth,
            spread=cost,
            confidence=torch.exp(-cost),
            accepted=gate(cost, self.threshold),
            uv_raw=uv_raw,
            depth_raw=depth_raw,
            uv_corrected=uv_corrected,
            depth_corrected=depth_corrected,
            joints3d=joints3d,
            joints3d_raw=joints3d_raw,
            correction_shift_mm=shift,
            changed=shift > self.changed_tol_mm,
        )


def pseudo_label_loss(
    uv: Tensor,
    depth: Tensor,
    label_uv: Tensor,
    label_depth: Tensor,
    matrices: Tensor,
    accepted: Tensor,
    image_size: int,
    depth_weight: float = 50.0,
    uv_unit_px: float = 1.0,
    root: int = MIDDLE_MCP,
) -> Tensor:
    """The gated pseudo-label loss ``mean_b 1(C_b <= tau) l(p_b, T_b(p_hat_b))`` on augmented images.

    Args:
        uv: ``(B, J, 2)`` prediction on the augmented ("diversity") image (gets gradients).
        depth: ``(B, J)`` its relative depth.
        label_uv: ``(B, J, 2)`` pseudo-label in the original frame.
        label_depth: ``(B, J)`` pseudo-label depth (relative to ``root``).
        matrices: ``(B, 3, 3)`` augmentation matrices (original -> augmented pixels); in-plane transforms leave
            the relative depth unchanged.
        accepted: ``(B,)`` bool gate.
        image_size: Image side; joints whose transformed label leaves the image are ignored.
        depth_weight: ``lambda_d``.
        uv_unit_px: Pixels per ``uv`` unit.
        root: Root joint of the relative depth.

    Returns:
        Scalar loss, averaged over the whole batch (rejected samples count as 0, as the indicator does).
    """
    target = transform_points(label_uv, matrices)
    inside = ((target >= -0.5) & (target <= image_size - 0.5)).all(-1).to(uv.dtype)
    rel = depth - depth[:, root : root + 1]
    per_sample = pose_distance(uv, rel, target, label_depth, inside, depth_weight, uv_unit_px)
    return (per_sample * accepted.to(uv.dtype)).mean()


def pseudo_label_errors(
    labels: PseudoLabels, joints3d: Tensor, valid: Tensor, root: int = ROOT
) -> dict[str, Tensor]:
    """Root-relative 3D error (mm, per sample) of the pseudo-labels against ground truth.

    Args:
        labels: The pseudo-labels.
        joints3d: ``(B, J, 3)`` ground-truth camera-frame joints (mm).
        valid: ``(B, J)`` annotated joints.
        root: Joint the poses are made relative to.

    Returns:
        ``error_final`` (the pseudo-label), ``error_raw`` (without correction), both ``(B,)``; NaN for samples
        without a valid root or joints.
    """
    valid = valid.bool() & valid[:, root : root + 1].bool()
    target = torch.nan_to_num(joints3d - joints3d[:, root : root + 1])
    out = {}
    for name, pred in (("error_final", labels.joints3d), ("error_raw", labels.joints3d_raw)):
        err = ((pred - pred[:, root : root + 1]) - target).norm(dim=-1)
        count = valid.sum(-1)
        total = torch.where(valid, err, torch.zeros_like(err)).sum(-1)
        out[name] = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
    return out
