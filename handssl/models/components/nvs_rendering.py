"""Point-latent helpers of novel-view synthesis: rotate points, splat them, composite, turntable rotations.

Tensors in, tensors out, no parameters; :mod:`~handssl.models.components.nvs` re-exports them.

A point set is ``(B, N, 3)`` (``x, y, z``) or ``(B, N, 4)``, whose fourth column is each point's opacity in
``[0, 1]`` (:func:`point_opacity`): the encoder's ``opacity`` option marks which points are the hand, so that
the points of background pixels neither draw nor have to lie on the hand in another view.
"""

from __future__ import annotations

import torch
from torch import Tensor

from handssl.geometry import rotation_about_axis


def rotate_points(points: Tensor, R: Tensor) -> Tensor:
    """Rotate point sets: ``p' = R @ p`` for every point; an opacity column is kept as it is.

    Args:
        points: ``(B, N, 3)`` points (``L3D``), one point per row, or ``(B, N, 4)`` with opacities.
        R: ``(B, 3, 3)`` or ``(3, 3)`` rotations (e.g. ``R_ij = R_j @ R_i.T`` from camera *i* to *j*).

    Returns:
        Rotated points, shaped as ``points``.
    """
    if points.shape[-1] not in (3, 4):
        raise ValueError(f"points must be (B, N, 3) or (B, N, 4) with opacities, got {tuple(points.shape)}")
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must be (B, 3, 3) or (3, 3), got {tuple(R.shape)}")
    if R.dim() == 3 and R.shape[0] != points.shape[0]:
        raise ValueError(f"R holds {R.shape[0]} rotations for a batch of {points.shape[0]} point sets")
    rotated = points[..., :3] @ R.to(points.dtype).transpose(-1, -2)
    return torch.cat([rotated, points[..., 3:]], -1) if points.shape[-1] == 4 else rotated


def point_opacity(points: Tensor) -> Tensor:
    """``(B, N)`` opacity of every point: the fourth column of ``(B, N, 4)`` points, ones for ``(B, N, 3)``."""
    if points.shape[-1] == 4:
        return points[..., 3]
    return points.new_ones(points.shape[:-1])


def composite(foreground: Tensor, mask: Tensor, background: Tensor) -> Tensor:
    """Alpha-blend ``mask * foreground + (1 - mask) * background``; all ``(B, C, H, W)`` (mask ``C = 1``)."""
    return mask * foreground + (1 - mask) * background


def cell_centres(side: int, device: torch.device | None = None) -> Tensor:
    """``(side,)`` centres of ``side`` equal cells spanning ``[-1, 1]`` (the crop's extent), as pixels are.

    The coordinates a ``side x side`` pooled image's cells stand for: ``-1 + (2 k + 1) / side``.
    """
    return (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side * 2.0 - 1.0


def splat_points(points: Tensor, side: int, sigma: float = 0.15) -> Tensor:
    """Orthographic Gaussian splats of point sets on a ``side x side`` grid over ``[-1, 1]^2``: occupancy and depth.

    The image plane is the camera's ``x`` (right) and ``y`` (down), and the grid's cells are the crop's equal
    cells (:func:`cell_centres`), as its pixels are; each point adds its opacity times
    ``exp(-|grid - (x, y)|^2 / (2 sigma^2))`` to the occupancy channel and that weight times its ``z`` to the
    depth channel (then divided by the occupancy). Differentiable in the points, so the encoder learns to place
    them where the hand is.

    Args:
        points: ``(B, N, 3)`` points (a rotated ``L3D``), or ``(B, N, 4)`` with opacities.
        side: Grid side in cells.
        sigma: Splat radius in the grid's ``[-1, 1]`` units.

    Returns:
        ``(B, 2, side, side)``: occupancy (point count per cell, smoothed) and mean depth.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    axis = cell_centres(side, points.device).to(points.dtype)

    def gaussian(coordinate: Tensor) -> Tensor:  # (B, N) -> (B, N, side)
        exponent = (axis - coordinate[..., None]) ** 2 / (2 * sigma**2)
        # far tails become exact zeros: their exp would be subnormal floats, which make CPU kernels crawl
        return torch.where(exponent < 40.0, torch.exp(-exponent.clamp(max=40.0)), 0.0)

    # the Gaussian is separable, so the (side x side) sum over points is one batched matrix product
    along_x, along_y = gaussian(points[..., 0]), gaussian(points[..., 1]) * point_opacity(points)[..., None]
    occupancy = along_y.transpose(1, 2) @ along_x  # (B, side (y), side (x))
    depth = (along_y * points[..., 2, None]).transpose(1, 2) @ along_x / (occupancy + 1e-3)
    return torch.stack([occupancy, depth], dim=1)


def turntable_rotations(num_views: int, axis: str = "y", degrees: float = 360.0) -> Tensor:
    """Rotations about a camera axis for a turntable of novel views.

    Args:
        num_views: Number of views.
        axis: Camera axis to turn about (``"y"`` points down the image, so ``"y"`` spins the hand left-right).
        degrees: Total angle; views are evenly spaced in ``[0, degrees)``.

    Returns:
        ``(num_views, 3, 3)`` rotation matrices, the first one the identity.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    angles = torch.arange(num_views, dtype=torch.float32) * (degrees / num_views) * torch.pi / 180.0
    return torch.stack([rotation_about_axis(axis, a) for a in angles])
