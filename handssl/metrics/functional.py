"""Batched 3D pose errors and the alignments evaluation protocols compose.

Every function takes ``pred`` and ``target`` as ``(B, J, D)`` tensors (``D = 3`` and millimetres for 3D
poses; the plain errors and PCK also work on ``D = 2`` pixels) and an optional ``valid (B, J)`` bool mask
of annotated joints. Errors are averaged over valid joints only, pooled over the batch. No function aligns
anything unless its name says so: ``mpjpe`` compares the coordinates it is given.

``target`` may hold NaN at joints marked invalid (the dataset contract puts NaN where a joint is not
annotated); NaN or inf at a *valid* target joint raises ``ValueError``. NaN in ``pred`` is not an input
error (a diverging model), so it propagates into the result.

PCK and AUC follow hand3d's ``EvalUtil`` (Zimmermann & Brox 2017, ``utils/general.py``): per keypoint,
``PCK_k(t)`` is the share of that keypoint's valid samples with error ``<= t``; the curve is the mean of
``PCK_k`` over the keypoints that have data, and the AUC is the trapezoid area under each keypoint's curve
divided by the threshold range, averaged over the same keypoints. When visibility differs between keypoints
this is not the same as pooling all distances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from handssl.geometry import procrustes_align
from handssl.skeleton import root_relative

__all__ = [
    "MIN_PROCRUSTES_JOINTS",
    "align_centroid_and_scale",
    "align_procrustes",
    "align_root",
    "align_root_and_scale",
    "align_scale",
    "auc_from_curve",
    "check_pose_inputs",
    "error_sum_and_count",
    "joint_errors",
    "masked_mean",
    "mpjpe",
    "n_mpjpe",
    "pa_mpjpe",
    "pck_auc",
    "pck_curve",
    "pck_from_hits",
    "pck_hits",
    "pck_thresholds",
    "procrustes_valid",
]

MIN_PROCRUSTES_JOINTS = 3
"""Fewest valid joints a similarity fit needs; through fewer points it is exact and the error a meaningless 0."""


def check_pose_inputs(pred: Tensor, target: Tensor, valid: Tensor | None, where: str) -> Tensor:
    """Check a ``(pred, target, valid)`` triple and return ``valid`` as a ``(B, J)`` bool tensor.

    Args:
        pred: ``(B, J, D)`` predicted joints.
        target: ``(B, J, D)`` ground truth, finite wherever ``valid`` is True.
        valid: Optional ``(B, J)`` mask (anything ``torch.as_tensor`` takes); all True when omitted.
        where: Name of the caller, put at the start of error messages.

    Raises:
        ValueError: Shapes disagree, or ``target`` is NaN/inf at a valid joint.
    """
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"{where}: pred and target must be torch tensors, got {type(pred).__name__} and {type(target).__name__}"
        )
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(
            f"{where}: pred and target must both be (B, J, D) with the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)} (add a batch dimension with pose[None] for a single pose)"
        )
    if valid is None:
        valid = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
    else:
        valid = torch.as_tensor(valid, device=pred.device)
        if valid.shape != pred.shape[:2]:
            raise ValueError(
                f"{where}: valid must be (B, J) = {tuple(pred.shape[:2])} like pred's first two dimensions, "
                f"got {tuple(valid.shape)}"
            )
        valid = valid.bool()
    if not bool(torch.isfinite(target).all(-1)[valid].all()):
        raise ValueError(
            f"{where}: target has NaN or inf at joints marked valid; mark unannotated joints False in `valid`"
        )
    return valid


def _zero_invalid(points: Tensor, valid: Tensor) -> Tensor:
    """Put zeros at invalid joints so NaN placeholders cannot leak into weighted sums (NaN * 0 is NaN)."""
    return torch.where(valid.unsqueeze(-1), points, torch.zeros_like(points))


def joint_errors(pred: Tensor, target: Tensor) -> Tensor:
    """Euclidean distance of every joint, ``(B, J)``, in the units of the inputs.

    Args:
        pred: ``(B, J, D)`` predicted joints.
        target: ``(B, J, D)`` ground-truth joints.

    Returns:
        ``(B, J)`` distances; NaN wherever either input is NaN (mask them with ``valid`` downstream).
    """
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(
            f"joint_errors: pred and target must have the same (..., J, D) shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    return torch.linalg.vector_norm(pred - target, dim=-1)


def error_sum_and_count(errors: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of ``errors`` over valid entries and the number of valid entries (the DDP-safe metric state).

    Args:
        errors: ``(B, J)`` per-joint errors (NaN allowed where ``valid`` is False).
        valid: ``(B, J)`` bool mask.

    Returns:
        ``(sum, count)`` as 0-dim tensors; ``sum / count`` is the mean over valid joints.
    """
    total = torch.where(valid, errors, torch.zeros_like(errors)).sum()
    return total, valid.sum()


def masked_mean(
    values: Tensor,
    weight: Tensor,
    dim: int | tuple[int, ...] | None = None,
    empty: float = 0.0,
) -> Tensor:
    """Mean of ``values`` weighted by ``weight`` over ``dim`` (every dimension when ``None``).

    The one masked mean of handssl: metrics (``empty=nan``) and losses (``empty=0``, which keeps the graph, as
    DDP wants) use it.

    Args:
        values: Tensor to average.
        weight: Bool mask or non-negative weights that broadcast to ``values`` (e.g. a ``(B, J, 1)`` joint mask
            over ``(B, J, D)`` coordinates, which then averages over joints and coordinates). Entries with zero
            weight never count, even NaN ones.
        dim: Dimension(s) to reduce.
        empty: The result where the total weight is zero.

    Returns:
        ``sum(weight * values) / sum(weight)`` over ``dim``.
    """
    weight = torch.broadcast_to(weight.to(values.dtype), values.shape)
    weighted = torch.where(weight != 0, values * weight, torch.zeros_like(values))
    if dim is None:
        total, count = weighted.sum(), weight.sum()
    else:
        total, count = weighted.sum(dim), weight.sum(dim)
    mean = total / count.clamp_min(torch.finfo(count.dtype).tiny)
    return torch.where(count > 0, mean, torch.full_like(mean, empty))


def mpjpe(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean per-joint position error over valid joints, pooled over the batch; no alignment.

    Args:
        pred: ``(B, J, D)`` predicted joints (mm for 3D).
        target: ``(B, J, D)`` ground truth.
        valid: Optional ``(B, J)`` bool mask of annotated joints; all joints when omitted.

    Returns:
        0-dim tensor; NaN when no joint is valid.
    """
    valid = check_pose_inputs(pred, target, valid, "mpjpe")
    return masked_mean(joint_errors(pred, target), valid, empty=float("nan"))


def align_scale(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Scale each predicted pose by the least-squares factor ``s = Σ<p, g> / Σ<p, p>`` over valid joints.

    This is the N-MPJPE normalisation of Rhodin et al. (CVPR 2018); it fixes scale only, so apply it to
    root-relative poses when translation should not matter.

    Args:
        pred: ``(B, J, D)`` predicted joints.
        target: ``(B, J, D)`` ground truth.
        valid: Optional ``(B, J)`` bool mask of joints used in the fit.

    Returns:
        ``(B, J, D)`` scaled prediction (every joint scaled, the fit uses valid ones only).
    """
    valid = check_pose_inputs(pred, target, valid, "align_scale")
    p, g = _zero_invalid(pred, valid), _zero_invalid(target, valid)
    numerator = (p * g).sum(dim=(-1, -2))
    denominator = (p * p).sum(dim=(-1, -2)).clamp_min(torch.finfo(p.dtype).tiny)
    return pred * (numerator / denominator)[:, None, None]


def n_mpjpe(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """MPJPE after the per-sample least-squares scale of :func:`align_scale` (Rhodin et al., N-MPJPE).

    Args:
        pred: ``(B, J, D)`` predicted joints (mm for 3D).
        target: ``(B, J, D)`` ground truth.
        valid: Optional ``(B, J)`` bool mask of annotated joints.

    Returns:
        0-dim tensor; NaN when no joint is valid.
    """
    valid = check_pose_inputs(pred, target, valid, "n_mpjpe")
    return masked_mean(joint_errors(align_scale(pred, target, valid), target), valid, empty=float("nan"))


def align_procrustes(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Align each predicted pose to its target by a similarity transform fitted on valid joints.

    Rotation (``det = +1``, reflections are not allowed), translation and scale come from
    :func:`handssl.geometry.procrustes_align` (Umeyama); this adds the input checks, and NaN for a sample
    whose prediction is not finite at a valid joint. Note the official FreiHAND ``eval.py`` uses
    ``scipy.linalg.orthogonal_procrustes``, which does allow reflections.

    Args:
        pred: ``(B, J, 3)`` predicted joints.
        target: ``(B, J, 3)`` ground truth.
        valid: Optional ``(B, J)`` bool mask of joints used in the fit (at least 3 for a meaningful fit).

    Returns:
        ``(B, J, 3)`` aligned prediction; every joint is transformed, the fit uses valid joints only.
    """
    valid = check_pose_inputs(pred, target, valid, "align_procrustes")
    if pred.shape[-1] != 3:
        raise ValueError(f"align_procrustes: needs 3D joints (B, J, 3), got {tuple(pred.shape)}")
    # A non-finite prediction would make the SVD raise; fit on nothing instead and return NaN for that sample.
    broken = ~(torch.isfinite(pred).all(-1) | ~valid).all(-1)
    aligned = procrustes_align(pred, target, valid & ~broken[:, None])
    return torch.where(broken[:, None, None], torch.full_like(aligned, float("nan")), aligned)


def pa_mpjpe(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """MPJPE after per-sample similarity Procrustes alignment (:func:`align_procrustes`).

    Samples with fewer than :data:`MIN_PROCRUSTES_JOINTS` valid joints are left out: a similarity fit
    through one or two points is exact, so they would report a meaningless zero.

    Args:
        pred: ``(B, J, 3)`` predicted joints (mm).
        target: ``(B, J, 3)`` ground truth.
        valid: Optional ``(B, J)`` bool mask of annotated joints.

    Returns:
        0-dim tensor; NaN when no sample has enough valid joints.
    """
    valid = check_pose_inputs(pred, target, valid, "pa_mpjpe")
    aligned = align_procrustes(pred, target, valid)
    return masked_mean(joint_errors(aligned, target), procrustes_valid(valid), empty=float("nan"))


def procrustes_valid(valid: Tensor) -> Tensor:
    """``valid`` with the samples that have fewer than :data:`MIN_PROCRUSTES_JOINTS` valid joints cleared."""
    return valid & (valid.sum(-1, keepdim=True) >= MIN_PROCRUSTES_JOINTS)


def align_root(joints: Tensor, root: int = 0) -> Tensor:
    """Make poses root-relative: subtract joint ``root`` from every joint.

    Args:
        joints: ``(..., J, D)`` joints.
        root: Index of the root joint (canonical 0 is the wrist).

    Returns:
        ``(..., J, D)`` root-relative joints (the root itself becomes 0).
    """
    if not -joints.shape[-2] <= root < joints.shape[-2]:
        raise ValueError(f"align_root: root {root} is out of range for {joints.shape[-2]} joints")
    return root_relative(joints, root)


def align_root_and_scale(
    pred: Tensor,
    target: Tensor,
    root: int = 0,
    ref_bone: tuple[int, int] = (9, 10),
) -> tuple[Tensor, Tensor]:
    """Make both poses root-relative and scale the prediction so its reference bone matches the target's.

    This is the STB-style alignment (hand3d ``eval_full.py``: prediction times the ground-truth length of the
    middle MCP-PIP bone). Both the root and the bone's joints must be annotated in ``target``; a NaN there
    makes the whole sample NaN.

    Args:
        pred: ``(B, J, D)`` predicted joints.
        target: ``(B, J, D)`` ground truth.
        root: Root joint index.
        ref_bone: ``(a, b)`` joint indices whose distance sets the scale (canonical ``(9, 10)`` = middle MCP-PIP).

    Returns:
        ``(pred_aligned, target_aligned)``, both ``(B, J, D)`` and root-relative.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"align_root_and_scale: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    a, b = ref_bone
    num_joints = pred.shape[-2]
    if not (0 <= a < num_joints and 0 <= b < num_joints) or a == b:
        raise ValueError(
            f"align_root_and_scale: ref_bone {ref_bone} must be two different joint indices below {num_joints}"
        )
    pred_bone = joint_errors(pred[..., a, :], pred[..., b, :])
    target_bone = joint_errors(target[..., a, :], target[..., b, :])
    scale = target_bone / pred_bone.clamp_min(torch.finfo(pred.dtype).tiny)
    return align_root(pred, root) * scale[..., None, None], align_root(target, root)


def align_centroid_and_scale(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Dexter+Object alignment: match the valid-joint centroids and the mean distance to the centroid.

    Minimal-Hand ``utils/align.py``: translate the prediction so its centroid over valid joints equals the
    target's, and scale it about that centroid by ``mean ||g - c_g|| / mean ||p - c_p||`` (over valid joints).

    Args:
        pred: ``(B, J, D)`` predicted joints.
        target: ``(B, J, D)`` ground truth.
        valid: Optional ``(B, J)`` bool mask of joints used in the fit (at least 2 for a scale).

    Returns:
        ``(B, J, D)`` aligned prediction.
    """
    valid = check_pose_inputs(pred, target, valid, "align_centroid_and_scale")
    weights = valid.to(pred.dtype).unsqueeze(-1)
    count = weights.sum(-2, keepdim=True).clamp_min(1.0)
    p, g = _zero_invalid(pred, valid), _zero_invalid(target, valid)
    centroid_pred = p.sum(-2, keepdim=True) / count
    centroid_target = g.sum(-2, keepdim=True) / count
    spread_pred = (joint_errors(p, centroid_pred.expand_as(p)) * weights[..., 0]).sum(-1) / count[..., 0, 0]
    spread_target = (joint_errors(g, centroid_target.expand_as(g)) * weights[..., 0]).sum(-1) / count[
        ..., 0, 0
    ]
    scale = spread_target / spread_pred.clamp_min(torch.finfo(pred.dtype).tiny)
    return (pred - centroid_pred) * scale[:, None, None] + centroid_target


def pck_thresholds(low: float = 20.0, high: float = 50.0, steps: int = 20) -> Tensor:
    """``linspace(low, high, steps)`` thresholds (``EvalUtil.get_measures``), float64, after checking them.

    Args:
        low: Smallest threshold (mm for 3D, px for 2D).
        high: Largest threshold; must exceed ``low``.
        steps: Number of thresholds; at least 2 so the curve has an area.
    """
    if steps < 2:
        raise ValueError(f"PCK needs at least 2 threshold steps for an AUC, got steps={steps}")
    if not high > low:
        raise ValueError(f"PCK threshold range must have high > low, got low={low}, high={high}")
    return torch.linspace(float(low), float(high), int(steps), dtype=torch.float64)


def _as_thresholds(thresholds: Sequence[float] | Tensor) -> Tensor:
    thr = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if thr.numel() < 1 or not bool(torch.isfinite(thr).all()):
        raise ValueError(f"PCK thresholds must be a non-empty sequence of finite numbers, got {thresholds!r}")
    if thr.numel() > 1 and not bool((thr[1:] > thr[:-1]).all()):
        raise ValueError(f"PCK thresholds must be strictly increasing, got {thr.tolist()}")
    return thr


def pck_hits(errors: Tensor, valid: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """Per-keypoint hit counts at each threshold and per-keypoint valid counts (the PCK metric state).

    Args:
        errors: ``(B, J)`` per-joint errors.
        valid: ``(B, J)`` bool mask.
        thresholds: ``(T,)`` thresholds; a hit is ``error <= threshold``.

    Returns:
        ``(hits (J, T), counts (J,))`` as int64 tensors.
    """
    thresholds = thresholds.to(device=errors.device, dtype=torch.float64)
    below = errors.to(torch.float64).unsqueeze(-1) <= thresholds  # (B, J, T); NaN errors never hit
    hits = (below & valid.unsqueeze(-1)).sum(0)
    return hits, valid.sum(0)


def auc_from_curve(curve: Tensor, thresholds: Tensor) -> Tensor:
    """Normalised area under a PCK curve: ``trapezoid(curve, thresholds) / (thresholds[-1] - thresholds[0])``.

    Args:
        curve: ``(..., T)`` PCK values in ``[0, 1]``.
        thresholds: ``(T,)`` increasing thresholds, ``T >= 2``.
    """
    if thresholds.numel() < 2:
        raise ValueError("an AUC needs at least 2 thresholds")
    thresholds = thresholds.to(curve)
    return torch.trapezoid(curve, thresholds, dim=-1) / (thresholds[-1] - thresholds[0])


def pck_from_hits(hits: Tensor, counts: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """PCK curve and AUC from :func:`pck_hits` counts, averaged over keypoints that have data (EvalUtil).

    Args:
        hits: ``(J, T)`` hit counts.
        counts: ``(J,)`` valid counts.
        thresholds: ``(T,)`` thresholds.

    Returns:
        ``(curve (T,), auc ())`` in float64; NaN when no keypoint has data. With a single threshold the AUC
        is NaN.
    """
    has_data = counts > 0
    per_keypoint = hits[has_data].to(torch.float64) / counts[has_data, None].to(torch.float64)
    curve = per_keypoint.mean(0) if per_keypoint.shape[0] else torch.full_like(thresholds, float("nan"))
    if thresholds.numel() < 2:
        return curve, torch.tensor(float("nan"), dtype=torch.float64, device=curve.device)
    auc_per_keypoint = auc_from_curve(per_keypoint, thresholds)
    auc = auc_per_keypoint.mean() if per_keypoint.shape[0] else curve.new_tensor(float("nan"))
    return curve, auc


def pck_curve(
    pred: Tensor,
    target: Tensor,
    thresholds: Sequence[float] | Tensor,
    valid: Tensor | None = None,
) -> Tensor:
    """PCK at each threshold, per keypoint over its valid samples, averaged over keypoints with data.

    Args:
        pred: ``(B, J, D)`` predicted joints.
        target: ``(B, J, D)`` ground truth.
        thresholds: Increasing thresholds in the units of the inputs; a hit is ``error <= threshold``.
        valid: Optional ``(B, J)`` bool mask of annotated joints.

    Returns:
        ``(T,)`` float64 curve with values in ``[0, 1]``; NaN when no keypoint has data.
    """
    valid = check_pose_inputs(pred, target, valid, "pck_curve")
    thr = _as_thresholds(thresholds).to(pred.device)
    hits, counts = pck_hits(joint_errors(pred, target), valid, thr)
    return pck_from_hits(hits, counts, thr)[0]


def pck_auc(
    pred: Tensor,
    target: Tensor,
    low: float = 20.0,
    high: float = 50.0,
    steps: int = 20,
    valid: Tensor | None = None,
) -> Tensor:
    """Area under the PCK curve over ``linspace(low, high, steps)``, normalised to ``[0, 1]`` (EvalUtil).

    Per keypoint the trapezoid area under its PCK curve divided by ``high - low``, averaged over keypoints
    that have valid data.

    Args:
        pred: ``(B, J, D)`` predicted joints.
        target: ``(B, J, D)`` ground truth.
        low: Smallest threshold (mm for 3D).
        high: Largest threshold.
        steps: Number of thresholds (at least 2).
        valid: Optional ``(B, J)`` bool mask of annotated joints.

    Returns:
        0-dim float64 tensor; NaN when no keypoint has data.
    """
    valid = check_pose_inputs(pred, target, valid, "pck_auc")
    thr = pck_thresholds(low, high, steps).to(pred.device)
    hits, counts = pck_hits(joint_errors(pred, target), valid, thr)
    return pck_from_hits(hits, counts, thr)[1]
