"""Health of a 2.5D pose network: does it localise in 2D, learn depth, keep the hand's size, commit to a cell?

MPJPE alone hides *why* a 2.5D network fails. These diagnostics separate the failure modes that matter for
SemiHand-style pseudo-labels: a flat heatmap (low ``heatmap_peak``: the soft-argmax is a centre-biased average),
a flat hand (``depth_corr`` near 0: the depth head predicts the mean), a shrunken hand (``bone_ratio`` < 1: the
L2-optimal hedge of a poor localiser), and which axis carries the error (``error_x_mm``, ``error_y_mm``,
``error_z_mm``). :class:`~handssl.models.SemiHandModule` logs them at every validation (``val/health_*``) and
on its labelled training batches (``train/health_*``); ``experiments/tools/health25d.py`` prints them for any
checkpoint or shipped name.
"""

from __future__ import annotations

from torch import Tensor

from handssl.metrics.functional import masked_mean
from handssl.skeleton import BONES, MIDDLE_MCP, root_relative

__all__ = ["HEALTH_KEYS", "pose25d_health"]

HEALTH_KEYS: tuple[str, ...] = (
    "error_2d_px",
    "depth_corr",
    "bone_ratio",
    "heatmap_peak",
    "error_x_mm",
    "error_y_mm",
    "error_z_mm",
)
"""The diagnostics :func:`pose25d_health` returns, in the order tables print them."""


def _pearson(x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    """Weighted Pearson correlation of two equally shaped tensors over every weighted entry."""
    mx, my = masked_mean(x, weight), masked_mean(y, weight)
    cov = masked_mean((x - mx) * (y - my), weight)
    vx, vy = masked_mean((x - mx) ** 2, weight), masked_mean((y - my) ** 2, weight)
    return cov / (vx * vy).clamp_min(1e-12).sqrt()


def pose25d_health(
    uv: Tensor,
    heatmaps: Tensor,
    joints3d_pred: Tensor,
    joints2d: Tensor,
    joints3d: Tensor,
    valid: Tensor,
    root: int = MIDDLE_MCP,
) -> dict[str, Tensor]:
    """Diagnostics of a batch of 2.5D predictions against the annotation.

    Args:
        uv: ``(B, J, 2)`` predicted 2D joints, pixels of the network input.
        heatmaps: ``(B, J, h, w)`` predicted softmax heatmaps.
        joints3d_pred: ``(B, J, 3)`` camera-frame 3D joints lifted from the prediction (mm; with the known
            root depth and scale, the paper's protocol, so that size and depth are judged on their own).
        joints2d: ``(B, J, 2)`` annotated 2D joints, same pixels.
        joints3d: ``(B, J, 3)`` annotated camera-frame 3D joints (mm).
        valid: ``(B, J)`` annotated joints.
        root: Root of the relative depth.

    Returns:
        Scalars (see :data:`HEALTH_KEYS`): ``error_2d_px`` mean 2D distance; ``depth_corr`` Pearson correlation
        of predicted and true root-relative depth over the batch's non-root joints; ``bone_ratio`` mean
        predicted over mean true bone length (3D, over the 20 bones); ``heatmap_peak`` mean of each joint's
        largest heatmap probability; ``error_{x,y,z}_mm`` mean absolute root-relative error per camera axis.
    """
    valid = valid.bool()
    ok2d = valid & joints2d.isfinite().all(-1)
    ok3d = valid & valid[:, root : root + 1] & joints3d.isfinite().all(-1)
    target = joints3d.nan_to_num()
    pred_rel = root_relative(joints3d_pred, root)
    true_rel = root_relative(target, root)
    not_root = ok3d.clone()
    not_root[:, root] = False
    axis_error = (pred_rel - true_rel).abs()
    parents, children = zip(*BONES)
    bone_ok = ok3d[:, list(parents)] & ok3d[:, list(children)]
    bone_pred = (joints3d_pred[:, list(parents)] - joints3d_pred[:, list(children)]).norm(dim=-1)
    bone_true = (target[:, list(parents)] - target[:, list(children)]).norm(dim=-1)
    return {
        "error_2d_px": masked_mean((uv - joints2d.nan_to_num()).norm(dim=-1), ok2d, empty=float("nan")),
        "depth_corr": _pearson(pred_rel[..., 2], true_rel[..., 2], not_root),
        "bone_ratio": masked_mean(bone_pred, bone_ok, empty=float("nan"))
        / masked_mean(bone_true, bone_ok, empty=float("nan")),
        "heatmap_peak": heatmaps.flatten(2).amax(-1).mean(),
        "error_x_mm": masked_mean(axis_error[..., 0], ok3d, empty=float("nan")),
        "error_y_mm": masked_mean(axis_error[..., 1], ok3d, empty=float("nan")),
        "error_z_mm": masked_mean(axis_error[..., 2], ok3d, empty=float("nan")),
    }
