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
* the gate: by default the most confident ``accept_fraction`` of each batch (a quantile of ``C``), or a fixed
  ``threshold`` on ``C`` in the pose-distance units (``tau = 1.5`` in the paper, where it is 64-px pixels^2
  plus ``lambda_d`` times squared reference-bone units, averaged over joints: agreement to about 1 px and
  5 mm, which on SynthHands' real style accepted almost no label).

The correction (SemiHand, Yang, Chen, Yao, ICCV 2021, Sec. 3.2: "pose registration" of a hand template) takes a
per-sample template of bone lengths (the paper assumes the template is known). Two measured refinements:

* ``ray_tol_px``: joints whose 2D position agrees across the views to within this many ``uv`` units are
  corrected only along their camera ray (the 2D is kept, only the depth moves): with exact 2D, a full 3D
  correction moves joints by 0.4-1.5 px, and correcting along rays gave 8.4 mm against 11.5 mm.
* refusal: correction makes depth-mirrored poses (front/back confusion) worse, not better. A label is
  ``refused`` (never used as a pseudo-label, nor as ``r`` in Eq. 6) when its correction moves it by more than
  ``max_correction_mm`` on average, or when the depth-mirrored pose is more plausible (needs a smaller
  correction) than the pose itself (``mirror_check``).

``r = P(p_hat)`` (``uv_registered``, ``depth_registered``) is the correction of the pseudo-label itself, the
target of Eq. 6's ungated term ``l(r, p)``.

Without correction (an ablation) the corrected views are left out of both the mean and the spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from handssl.geometry import invert_matrix, project, transform_points, unproject
from handssl.metrics.functional import masked_mean
from handssl.models.components.pose25d import PoseNorm, encode_25d, lift_25d, pose_distance
from handssl.skeleton import MIDDLE_MCP, REFERENCE_BONE, ROOT, root_relative

__all__ = [
    "PseudoLabeler",
    "PseudoLabels",
    "gate",
    "map_back",
    "onto_rays",
    "pseudo_label_errors",
    "pseudo_label_loss",
    "spread",
    "stack_views",
    "transformed_label",
]

Corrector = Callable[..., Tensor]
"""Maps ``(N, 21, 3)`` joints in mm to the nearest feasible ``(N, 21, 3)`` (e.g. ``handssl.biomech.correct``).

Called as ``corrector(joints)``, or ``corrector(joints, template=lengths)`` with ``(N, 20)`` bone lengths (mm)
when a template is given."""


def map_back(uv: Tensor, matrices: Tensor) -> Tensor:
    """Map predictions on perturbed images back to the original frame.

    Args:
        uv: ``(B, P, J, 2)`` pixels of the perturbed images.
        matrices: ``(B, P, 3, 3)`` perturbation matrices (original -> perturbed pixels).

    Returns:
        ``(B, P, J, 2)`` pixels of the original image.
    """
    return transform_points(uv, invert_matrix(matrices.to(uv.dtype)))


def stack_views(uv: Tensor, depth: Tensor, matrices: Tensor) -> tuple[Tensor, Tensor]:
    """The views of each image from one pass over ``B`` originals followed by their ``B x P`` perturbed copies.

    Args:
        uv: ``(B + B P, J, 2)`` predictions, the originals first, then each original's ``P`` copies in turn.
        depth: ``(B + B P, J)`` relative depths, in the same order.
        matrices: ``(B, P, 3, 3)`` perturbation matrices (original -> perturbed pixels).

    Returns:
        ``(B, V, J, 2)`` and ``(B, V, J)`` with ``V = P + 1``, view 0 the original, the others mapped back.
    """
    b, p = matrices.shape[:2]
    uv_views = torch.cat([uv[:b, None], map_back(uv[b:].view(b, p, *uv.shape[1:]), matrices)], 1)
    return uv_views, torch.cat([depth[:b, None], depth[b:].view(b, p, -1)], 1)


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


def gate(
    spread: Tensor,
    threshold: float | None = None,
    accept_fraction: float | None = None,
    eligible: Tensor | None = None,
) -> Tensor:
    """Which samples pass the confidence gate (lower spread ``C`` is more confident).

    Args:
        spread: ``(N,)`` the spread ``C``.
        threshold: A fixed ``tau``: keep ``C <= tau`` (the paper's ``1(C <= tau)``; ``inf`` keeps all).
        accept_fraction: Used when ``threshold`` is ``None``: keep the ``ceil(q N)`` most confident samples of
            the ``N`` given (a per-batch quantile of ``C``; ``0`` keeps none, ``1`` all).
        eligible: Optional ``(N,)`` bool; ineligible samples (e.g. refused by the correction) never pass and
            do not take a place in the quantile.

    Returns:
        ``(N,)`` bool.
    """
    ok = torch.ones_like(spread, dtype=torch.bool) if eligible is None else eligible.bool()
    ok = ok & torch.isfinite(spread)
    if threshold is not None:
        return ok & (spread <= threshold)
    if accept_fraction is None:
        raise ValueError("gate needs a threshold or an accept_fraction")
    if not 0.0 <= accept_fraction <= 1.0:
        raise ValueError(f"accept_fraction must be in [0, 1], got {accept_fraction}")
    keep = math.ceil(accept_fraction * spread.numel() - 1e-9)
    if keep <= 0:
        return torch.zeros_like(ok)
    order = torch.where(ok, spread, torch.full_like(spread, float("inf"))).argsort(stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return ok & (rank < keep)


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
        uv_registered: ``(B, J, 2)`` ``r = P(p_hat)``, the correction of the pseudo-label (equals ``uv``
            without correction).
        depth_registered: ``(B, J)``.
        implausibility_mm: ``(B,)`` mean joint displacement of correcting the uncorrected label (0 without
            correction).
        mirrored: ``(B,)`` bool, the depth-mirrored label needs less correction than the label.
        refused: ``(B,)`` bool, never used: ``mirrored`` or moved more than ``max_correction_mm``.
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
    uv_registered: Tensor
    depth_registered: Tensor
    implausibility_mm: Tensor
    mirrored: Tensor
    refused: Tensor

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
        threshold: A fixed ``tau`` on the spread (labels with ``C > tau`` get no pseudo-label loss), in the
            units of :func:`~handssl.models.components.pose25d.pose_distance`; ``None`` (default) gates by
            ``accept_fraction`` instead.
        accept_fraction: Keep the most confident this fraction of each batch (when ``threshold`` is ``None``).
        use_correction: Include the corrected views (ablation switch).
        depth_weight: ``lambda_d`` of the pose distance.
        uv_unit_px: Pixels per ``uv`` unit of the pose distance (``image_size / 64`` keeps the paper's units).
        root: Root joint of the relative depth.
        changed_tol_mm: A label counts as changed by correction when it moved more than this (mean per joint).
        ray_tol_px: Joints whose ``uv`` agrees across the views to within this (root-mean-square distance
            from their mean, in ``uv`` units) are corrected along their camera ray only; ``None`` corrects
            every joint in 3D.
        max_correction_mm: Refuse labels whose correction moves them by more than this (mean per joint);
            ``None``: no bound.
        mirror_check: Refuse labels whose depth-mirrored pose needs less correction than the label itself.
    """

    def __init__(
        self,
        corrector: Corrector | None = None,
        threshold: float | None = None,
        accept_fraction: float | None = 0.3,
        use_correction: bool = True,
        depth_weight: float = 50.0,
        uv_unit_px: float = 1.0,
        root: int = MIDDLE_MCP,
        changed_tol_mm: float = 1.0,
        ray_tol_px: float | None = None,
        max_correction_mm: float | None = None,
        mirror_check: bool = False,
    ) -> None:
        if threshold is not None and threshold < 0:
            raise ValueError(f"threshold must be >= 0 (inf accepts every label), got {threshold}")
        if threshold is None and (accept_fraction is None or not 0.0 <= accept_fraction <= 1.0):
            raise ValueError(
                f"accept_fraction must be in [0, 1] when threshold is None, got {accept_fraction}"
            )
        if use_correction and corrector is None:
            raise ValueError("use_correction=True needs a corrector (e.g. handssl.biomech.correct)")
        self.corrector = corrector
        self.threshold = threshold
        self.accept_fraction = accept_fraction
        self.use_correction = use_correction
        self.depth_weight = depth_weight
        self.uv_unit_px = uv_unit_px
        self.root = root
        self.changed_tol_mm = changed_tol_mm
        self.ray_tol_px = ray_tol_px
        self.max_correction_mm = max_correction_mm
        self.mirror_check = mirror_check

    def _correct(self, joints: Tensor, template: Tensor | None) -> Tensor:
        if self.corrector is None:
            raise ValueError("no corrector configured")
        fixed = self.corrector(joints) if template is None else self.corrector(joints, template=template)
        if fixed.shape != joints.shape:
            raise ValueError(f"corrector returned shape {tuple(fixed.shape)}, expected {tuple(joints.shape)}")
        return fixed

    def correct_views(
        self,
        uv: Tensor,
        depth: Tensor,
        K: Tensor,
        root_depth_mm: Tensor,
        scale_mm: Tensor,
        template: Tensor | None = None,
        on_ray: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Correct each view: lift with ``K``, root depth and scale, ``corrector``, project back.

        Args:
            uv: ``(B, V, J, 2)``.
            depth: ``(B, V, J)``.
            K: ``(B, 3, 3)``.
            root_depth_mm: ``(B,)``.
            scale_mm: ``(B,)``.
            template: Optional ``(B, 20)`` bone lengths (mm) of each sample's hand template.
            on_ray: Optional ``(B, J)`` bool: joints corrected along their camera ray only (their ``uv`` kept).

        Returns:
            Corrected ``uv (B, V, J, 2)`` and ``depth (B, V, J)`` (relative to the corrected root, in units of
            the same ``scale_mm``).
        """
        b, v, j = depth.shape
        rep = lambda x: x.unsqueeze(1).expand(b, v, *x.shape[1:]).reshape(b * v, *x.shape[1:])  # noqa: E731
        k_rep, root_rep, scale_rep = rep(K), rep(root_depth_mm), rep(scale_mm)
        flat_uv = uv.reshape(b * v, j, 2)
        joints = lift_25d(flat_uv, depth.reshape(b * v, j), k_rep, root_rep, scale_rep, self.root)
        fixed = self._correct(joints, None if template is None else rep(template))
        if on_ray is not None:
            fixed = torch.where(rep(on_ray).unsqueeze(-1), onto_rays(fixed, flat_uv, k_rep), fixed)
        uv_c = project(fixed, k_rep)
        depth_c = (fixed[..., 2] - fixed[..., self.root : self.root + 1, 2]) / scale_rep.unsqueeze(-1)
        return uv_c.view(b, v, j, 2), depth_c.view(b, v, j)

    def ray_joints(self, uv_views: Tensor) -> Tensor | None:
        """``(B, J)`` joints whose 2D is confident (views agree within ``ray_tol_px``); ``None`` when disabled."""
        if self.ray_tol_px is None:
            return None
        rms = (uv_views - uv_views.mean(1, keepdim=True)).div(self.uv_unit_px).pow(2).sum(-1).mean(1).sqrt()
        return rms <= self.ray_tol_px

    @torch.no_grad()
    def __call__(
        self,
        uv_views: Tensor,
        depth_views: Tensor,
        K: Tensor,
        root_depth_mm: Tensor,
        scale_mm: Tensor,
        template: Tensor | None = None,
    ) -> PseudoLabels:
        """Pseudo-labels from the views of each image (already mapped back to the original frame).

        Args:
            uv_views: ``(B, V, J, 2)`` predictions in the original frame (view 0: the original image).
            depth_views: ``(B, V, J)`` relative depths.
            K: ``(B, 3, 3)`` intrinsics of the original image.
            root_depth_mm: ``(B,)`` root depth used to lift (known or recovered).
            scale_mm: ``(B,)`` reference-bone length used to lift.
            template: Optional ``(B, 20)`` template bone lengths (mm) for the corrector.

        Returns:
            The :class:`PseudoLabels`.
        """
        if uv_views.ndim != 4 or depth_views.shape != uv_views.shape[:3]:
            raise ValueError(
                f"uv_views must be (B, V, J, 2) and depth_views (B, V, J); got {tuple(uv_views.shape)}, "
                f"{tuple(depth_views.shape)}"
            )
        b = uv_views.shape[0]
        depth_views = depth_views - depth_views[..., self.root : self.root + 1]
        uv_raw, depth_raw = uv_views.mean(1), depth_views.mean(1)
        lift = lambda u, d: lift_25d(u, d, K, root_depth_mm, scale_mm, self.root)  # noqa: E731
        joints3d_raw = lift(uv_raw, depth_raw)
        no = torch.zeros(b, dtype=torch.bool, device=uv_views.device)
        implausibility, mirrored = torch.zeros_like(root_depth_mm), no
        if self.use_correction:
            on_ray = self.ray_joints(uv_views)
            uv_c, depth_c = self.correct_views(
                uv_views, depth_views, K, root_depth_mm, scale_mm, template, on_ray
            )
            members_uv = torch.cat([uv_views, uv_c], 1)
            members_d = torch.cat([depth_views, depth_c], 1)
            uv_corrected, depth_corrected = uv_c.mean(1), depth_c.mean(1)
            implausibility, mirrored = self._plausibility(
                uv_raw, depth_raw, K, root_depth_mm, scale_mm, template
            )
        else:
            members_uv, members_d = uv_views, depth_views
            uv_corrected, depth_corrected = uv_raw, depth_raw
        uv, depth = members_uv.mean(1), members_d.mean(1)
        if self.use_correction:
            uv_r, depth_r = self.correct_views(
                uv[:, None], depth[:, None], K, root_depth_mm, scale_mm, template, on_ray
            )
            uv_r, depth_r = uv_r[:, 0], depth_r[:, 0]
        else:
            uv_r, depth_r = uv, depth
        cost = spread(
            members_uv, members_d, uv, depth, depth_weight=self.depth_weight, uv_unit_px=self.uv_unit_px
        )
        joints3d = lift(uv, depth)
        shift = (joints3d - joints3d_raw).norm(dim=-1).mean(-1)
        refused = mirrored.clone()
        if self.use_correction and self.max_correction_mm is not None:
            refused |= implausibility > self.max_correction_mm
        return PseudoLabels(
            uv=uv,
            depth=depth,
            spread=cost,
            confidence=torch.exp(-cost),
            accepted=gate(cost, self.threshold, self.accept_fraction, eligible=~refused),
            uv_raw=uv_raw,
            depth_raw=depth_raw,
            uv_corrected=uv_corrected,
            depth_corrected=depth_corrected,
            joints3d=joints3d,
            joints3d_raw=joints3d_raw,
            correction_shift_mm=shift,
            changed=shift > self.changed_tol_mm,
            uv_registered=uv_r,
            depth_registered=depth_r,
            implausibility_mm=implausibility,
            mirrored=mirrored,
            refused=refused,
        )

    def _plausibility(
        self,
        uv: Tensor,
        depth: Tensor,
        K: Tensor,
        root_depth_mm: Tensor,
        scale_mm: Tensor,
        template: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Correction displacement (mm, mean per joint) of the label and whether its depth mirror needs less.

        Both poses are corrected in one batched call (in 3D, no ray constraint).
        """
        b = uv.shape[0]
        signs = (1.0, -1.0) if self.mirror_check else (1.0,)
        poses = torch.cat([lift_25d(uv, s * depth, K, root_depth_mm, scale_mm, self.root) for s in signs])
        fixed = self._correct(poses, None if template is None else template.repeat(len(signs), 1))
        moved = (fixed - poses).norm(dim=-1).mean(-1).view(len(signs), b)
        mirrored = moved[1] < moved[0] if self.mirror_check else torch.zeros_like(moved[0], dtype=torch.bool)
        return moved[0], mirrored


def onto_rays(joints: Tensor, uv: Tensor, K: Tensor) -> Tensor:
    """The points of the camera rays through ``uv`` nearest to ``joints`` (keeps the 2D, moves the depth).

    Args:
        joints: ``(B, J, 3)`` camera-frame points (mm).
        uv: ``(B, J, 2)`` pixels defining the rays.
        K: ``(B, 3, 3)`` intrinsics.

    Returns:
        ``(B, J, 3)`` points that project exactly onto ``uv``.
    """
    rays = unproject(uv, torch.ones_like(uv[..., 0]), K)
    t = (rays * joints).sum(-1, keepdim=True) / (rays * rays).sum(-1, keepdim=True)
    return rays * t.clamp_min(1e-6)


def transformed_label(label_uv: Tensor, matrices: Tensor, image_size: int) -> tuple[Tensor, Tensor]:
    """Pseudo-label joints moved into the augmented image, and which of them land inside it.

    Args:
        label_uv: ``(B, J, 2)`` pseudo-label in the original frame.
        matrices: ``(B, 3, 3)`` augmentation matrices (original -> augmented pixels).
        image_size: Image side.

    Returns:
        ``(B, J, 2)`` joints in augmented pixels and a ``(B, J)`` bool mask of those inside the image.
    """
    target = transform_points(label_uv, matrices)
    inside = ((target >= -0.5) & (target <= image_size - 0.5)).all(-1)
    return target, inside


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
    norm: PoseNorm = "l2",
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
        norm: ``"l2"`` or ``"l1"`` (see :func:`~handssl.models.components.pose25d.pose_distance`).

    Returns:
        Scalar loss, averaged over the whole batch (rejected samples count as 0, as the indicator does).
    """
    target, inside = transformed_label(label_uv, matrices, image_size)
    rel = root_relative(depth, root, joint_axis=-1)
    per_sample = pose_distance(
        uv, rel, target, label_depth, inside.to(uv.dtype), depth_weight, uv_unit_px, norm
    )
    return (per_sample * accepted.to(uv.dtype)).mean()


def pseudo_label_errors(
    labels: PseudoLabels,
    joints3d: Tensor,
    valid: Tensor,
    root: int = ROOT,
    K: Tensor | None = None,
    depth_root: int = MIDDLE_MCP,
) -> dict[str, Tensor]:
    """Root-relative 3D error (mm, per sample) of the pseudo-labels against ground truth.

    ``error_final`` / ``error_raw`` score the labels as lifted in training (root depth and scale as
    SemiHand's ``pseudo_labels.lifting`` gave them: with ``"predicted"`` a wrong hand size or distance counts).
    The student never sees that lifting: it learns the 2.5D label (``uv`` and relative depth). With ``K``, the
    2.5D labels are also lifted with the annotated root depth and scale, as the evaluation protocol lifts
    predictions, and scored as ``error_final_known`` / ``error_raw_known``: the quality of what the student
    trains on. Scoring only; the annotation never reaches a label.

    Args:
        labels: The pseudo-labels.
        joints3d: ``(B, J, 3)`` ground-truth camera-frame joints (mm).
        valid: ``(B, J)`` annotated joints.
        root: Joint the poses are made relative to.
        K: ``(B, 3, 3)`` intrinsics of the labels' image (adds the ``*_known`` errors).
        depth_root: Root joint of the labels' relative depth.

    Returns:
        ``error_final`` (the pseudo-label), ``error_raw`` (without correction), both ``(B,)``, plus
        ``error_final_known`` and ``error_raw_known`` with ``K``; NaN for samples without a valid root or joints.
    """
    valid = valid.bool() & valid[:, root : root + 1].bool()
    target = torch.nan_to_num(root_relative(joints3d, root))
    poses = {"error_final": labels.joints3d, "error_raw": labels.joints3d_raw}
    if K is not None:
        _, root_depth, scale = encode_25d(torch.nan_to_num(joints3d), depth_root, REFERENCE_BONE)
        for name, uv, depth in (
            ("error_final_known", labels.uv, labels.depth),
            ("error_raw_known", labels.uv_raw, labels.depth_raw),
        ):
            poses[name] = lift_25d(uv, depth, K, root_depth, scale, depth_root)
    out = {}
    for name, pred in poses.items():
        err = (root_relative(pred, root) - target).norm(dim=-1)
        out[name] = masked_mean(err, valid, dim=-1, empty=float("nan"))
    return out
