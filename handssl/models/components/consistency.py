"""SemiHand consistency losses: equivariance under perturbation, and cross-modal pose <-> mask consistency.

* **View consistency** (SemiHand Eq. 10): the pose and mask predicted on a perturbed image ``T(x)`` must
  equal the perturbed prediction on the original, ``T(f(x))``. ``T`` acts on ``uv`` through its 3x3 pixel
  matrix and on masks by warping; root-relative depth is unchanged by in-plane shifts and rotations. The
  target branch is given by the caller (the EMA teacher, or a stop-gradient copy of the network).
* **Cross-modal consistency** (Eqs. 11-14): the 2D pose is drawn as a hand made of capsules (the 20 bones
  plus links between neighbouring finger bases that fill the palm) and compared with the predicted mask,
  with a stop-gradient on the mask: the pose is pulled towards the mask, never the reverse.
  ``L_m2d = |R(uv) - w|_1`` (model to data) and ``L_d2m`` (data to model: mask pixels not covered by any
  capsule, background pixels inside one, each by its distance to the capsule surface).

Deviations from the paper, and why: the paper's hand model has 55 circles whose radii come from an MLP
trained on RHD masks; here the capsules' radii are fixed fractions of the image side (the crops are
normalised to the hand's size), which needs no extra training stage. The paper's renderer is hard and its
gradient path unspecified; here ``R`` is a sigmoid of the signed distance (a soft rasteriser), so
``L_m2d`` has gradients wherever the capsule edge is near.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from handssl.geometry import transform_points
from handssl.metrics.functional import masked_mean
from handssl.models.components.pose25d import PoseNorm, pose_distance
from handssl.skeleton import BONES, MCPS

__all__ = [
    "HAND_CAPSULES",
    "PALM_CAPSULES",
    "capsule_radii",
    "cross_modal_loss",
    "mask_equivariance_loss",
    "pose_equivariance_loss",
    "pose_sdf",
    "render_pose_mask",
    "warp_images",
]

PALM_CAPSULES: tuple[tuple[int, int], ...] = tuple(
    (MCPS[i], MCPS[i + 1]) for i in range(1, len(MCPS) - 1)
) + tuple((0, m) for m in MCPS)
"""Capsules of the palm: wrist to every finger base, and links between neighbouring MCPs (index..pinky)."""

HAND_CAPSULES: tuple[tuple[int, int], ...] = tuple(b for b in BONES if b[0] != 0) + PALM_CAPSULES
"""Every capsule of the hand model: the 15 finger bones beyond the palm, then :data:`PALM_CAPSULES`."""


def capsule_radii(image_size: int, finger_fraction: float = 0.035, palm_fraction: float = 0.05) -> Tensor:
    """Radii in pixels of :data:`HAND_CAPSULES`, as fractions of the image side."""
    n_finger = len(HAND_CAPSULES) - len(PALM_CAPSULES)
    radii = [finger_fraction] * n_finger + [palm_fraction] * len(PALM_CAPSULES)
    return torch.tensor(radii) * image_size


def warp_images(images: Tensor, matrices: Tensor, mode: str = "bilinear") -> tuple[Tensor, Tensor]:
    """Warp images by 3x3 pixel matrices (output pixel ``x'`` samples the input at ``M^-1 x'``).

    Args:
        images: ``(B, C, H, W)``.
        matrices: ``(B, 3, 3)`` original -> warped pixel matrices (pixel centres at integers).
        mode: ``grid_sample`` interpolation.

    Returns:
        The warped images and a ``(B, 1, H, W)`` float mask of output pixels whose source lies inside the input.
    """
    b, _, h, w = images.shape
    inv = torch.linalg.inv(matrices.to(images.dtype))
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=images.dtype, device=images.device),
        torch.arange(w, dtype=images.dtype, device=images.device),
        indexing="ij",
    )
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    src = pix @ inv.transpose(-1, -2)  # (B, HW, 3)
    sx, sy = src[..., 0], src[..., 1]
    inside = ((sx >= -0.5) & (sx <= w - 0.5) & (sy >= -0.5) & (sy <= h - 0.5)).to(images.dtype)
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], -1).view(b, h, w, 2)
    warped = F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return warped, inside.view(b, 1, h, w)


def pose_equivariance_loss(
    uv_perturbed: Tensor,
    depth_perturbed: Tensor,
    uv_target: Tensor,
    depth_target: Tensor,
    matrices: Tensor,
    depth_weight: float = 50.0,
    uv_unit_px: float = 1.0,
    image_size: int | None = None,
    norm: PoseNorm = "l2",
) -> Tensor:
    """``l(f(T x), T(f(x)))``: the prediction on the perturbed image against the transformed target.

    Args:
        uv_perturbed: ``(B, J, 2)`` prediction on the perturbed image (gets gradients).
        depth_perturbed: ``(B, J)``.
        uv_target: ``(B, J, 2)`` prediction on the original image (the caller detaches it).
        depth_target: ``(B, J)``.
        matrices: ``(B, 3, 3)`` perturbation matrices.
        depth_weight: ``lambda_d``.
        uv_unit_px: Pixels per ``uv`` unit.
        image_size: When given, joints whose transformed target leaves the image are ignored.
        norm: ``"l2"`` or ``"l1"`` (see :func:`~handssl.models.components.pose25d.pose_distance`).

    Returns:
        Scalar loss (mean over the batch).
    """
    target = transform_points(uv_target, matrices)
    weight = None
    if image_size is not None:
        weight = ((target >= -0.5) & (target <= image_size - 0.5)).all(-1).to(uv_target.dtype)
    dist = pose_distance(
        uv_perturbed, depth_perturbed, target, depth_target, weight, depth_weight, uv_unit_px, norm
    )
    return dist.mean()


def mask_equivariance_loss(mask_perturbed: Tensor, mask_target: Tensor, matrices: Tensor) -> Tensor:
    """``|w(T x) - T(w(x))|_1`` over the pixels whose source lies inside the original image.

    Args:
        mask_perturbed: ``(B, 1, H, W)`` mask probabilities on the perturbed image (gets gradients).
        mask_target: ``(B, 1, H, W)`` mask probabilities on the original image (the caller detaches it).
        matrices: ``(B, 3, 3)`` perturbation matrices.

    Returns:
        Scalar loss.
    """
    warped, inside = warp_images(mask_target, matrices)
    return masked_mean((mask_perturbed - warped).abs(), inside)


def _segment_sq_distances(
    uv: Tensor, height: int, width: int, capsules: tuple[tuple[int, int], ...]
) -> Tensor:
    """Squared distance from every pixel to every capsule axis, ``(B, H*W, C)`` (x and y kept apart: cheap)."""
    gy, gx = torch.meshgrid(
        torch.arange(height, dtype=uv.dtype, device=uv.device),
        torch.arange(width, dtype=uv.dtype, device=uv.device),
        indexing="ij",
    )
    gx, gy = gx.reshape(1, -1, 1), gy.reshape(1, -1, 1)
    idx_a = torch.tensor([c[0] for c in capsules], device=uv.device)
    idx_b = torch.tensor([c[1] for c in capsules], device=uv.device)
    a, b = uv[:, idx_a], uv[:, idx_b]  # (B, C, 2)
    abx, aby = (b - a).unbind(-1)
    ax, ay = a.unbind(-1)
    length2 = (abx * abx + aby * aby).clamp_min(1e-6).unsqueeze(1)
    px, py = gx - ax.unsqueeze(1), gy - ay.unsqueeze(1)  # (B, HW, C)
    t = ((px * abx.unsqueeze(1) + py * aby.unsqueeze(1)) / length2).clamp(0.0, 1.0)
    dx, dy = px - t * abx.unsqueeze(1), py - t * aby.unsqueeze(1)
    return dx * dx + dy * dy


def pose_sdf(
    uv: Tensor,
    height: int,
    width: int,
    radii: Tensor,
    capsules: tuple[tuple[int, int], ...] = HAND_CAPSULES,
) -> Tensor:
    """Signed distance in pixels from every pixel to the capsule hand, ``min_i(|g - c_i| - r_i)``.

    Args:
        uv: ``(B, J, 2)`` 2D joints in pixels.
        height: Image height.
        width: Image width.
        radii: ``(C,)`` capsule radii in pixels.
        capsules: ``(a, b)`` joint pairs.

    Returns:
        ``(B, 1, H, W)``: negative inside the hand model, positive outside.
    """
    if radii.shape != (len(capsules),):
        raise ValueError(
            f"radii must have one entry per capsule ({len(capsules)}), got shape {tuple(radii.shape)}"
        )
    sq = _segment_sq_distances(uv, height, width, capsules)
    # Capsules sharing a radius: take the smallest squared distance first, one square root per group.
    groups = []
    for radius in torch.unique(radii.detach().cpu()).tolist():
        members = (radii.detach().cpu() == radius).nonzero().flatten().to(uv.device)
        nearest = sq.index_select(-1, members).min(-1).values
        groups.append((nearest + 1e-12).sqrt() - radius)
    sdf = torch.stack(groups, -1).min(-1).values
    return sdf.view(uv.shape[0], 1, height, width)


def render_pose_mask(uv: Tensor, height: int, width: int, radii: Tensor, sharpness_px: float = 0.5) -> Tensor:
    """Soft silhouette of the capsule hand, ``sigmoid(-sdf / sharpness_px)``, ``(B, 1, H, W)`` in ``[0, 1]``."""
    return torch.sigmoid(-pose_sdf(uv, height, width, radii) / sharpness_px)


def cross_modal_loss(
    uv: Tensor,
    mask_prob: Tensor,
    radii: Tensor,
    sharpness_px: float = 0.5,
    uv_unit_px: float = 1.0,
    size: int | None = None,
) -> dict[str, Tensor]:
    """SemiHand's cross-modal consistency between a 2D pose and a mask, with stop-gradient on the mask.

    Args:
        uv: ``(B, J, 2)`` predicted 2D joints (gets gradients).
        mask_prob: ``(B, 1, H, W)`` predicted mask probabilities (detached here, thresholded at 0.5).
        radii: ``(C,)`` capsule radii in pixels of the ``H x W`` image (:func:`capsule_radii`).
        sharpness_px: Edge width of the soft renderer, in pixels of the ``H x W`` image.
        uv_unit_px: Pixels (of the ``H x W`` image) per distance unit of ``L_d2m``.
        size: Compare at this resolution (the mask is area-downsampled, joints and radii scaled; cheaper).

    Returns:
        ``m2d`` (model to data, mean L1 between rendered and predicted masks), ``d2m`` (data to model, mean
        distance in ``uv`` units of the mis-covered pixels) and their sum ``total``.
    """
    _, _, h, w = mask_prob.shape
    target = mask_prob.detach()
    factor = 1.0
    if size is not None and size < max(h, w):
        factor = size / max(h, w)
        h, w = round(h * factor), round(w * factor)
        target = F.interpolate(target, size=(h, w), mode="area")
        uv = (uv + 0.5) * factor - 0.5  # pixel centres at integer coordinates at both resolutions
    target = (target > 0.5).to(uv.dtype)
    sdf = pose_sdf(uv, h, w, radii * factor)
    rendered = torch.sigmoid(-sdf / (sharpness_px * factor))
    m2d = (rendered - target).abs().mean()
    d2m = (target * F.relu(sdf) + (1 - target) * F.relu(-sdf)).mean() / (uv_unit_px * factor)
    return {"m2d": m2d, "d2m": d2m, "total": m2d + d2m}
