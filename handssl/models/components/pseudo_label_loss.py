"""The gated pseudo-label loss on augmented images, and the pseudo-labels' errors against ground truth.

See :mod:`~handssl.models.components.pseudo_labels` for the method; it re-exports these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from handssl.geometry import transform_points
from handssl.metrics.functional import masked_mean
from handssl.models.components.pose25d import PoseNorm, encode_25d, lift_25d, pose_distance
from handssl.skeleton import MIDDLE_MCP, REFERENCE_BONE, ROOT, root_relative

if TYPE_CHECKING:
    from handssl.models.components.pseudo_labels import PseudoLabels


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
