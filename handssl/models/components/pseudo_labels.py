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

This module holds the labels and the labeller; the views, spread and gate live in
:mod:`~handssl.models.components.pseudo_label_views`, the loss and the scoring in
:mod:`~handssl.models.components.pseudo_label_loss`; every name is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from handssl.geometry import project, unproject
from handssl.models.components.pose25d import lift_25d
from handssl.models.components.pseudo_label_loss import (
    pseudo_label_errors,
    pseudo_label_loss,
    transformed_label,
)
from handssl.models.components.pseudo_label_views import gate, map_back, spread, stack_views
from handssl.skeleton import MIDDLE_MCP

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
