"""Camera geometry: OpenCV pinhole cameras with distortion, crop cameras, rotations, Procrustes, 2D affines.

Conventions (the single source of truth for the whole library):

* 3D points in millimetres, 2D points in pixels; pixel centres at integer coordinates.
* World to camera: ``x_cam = R @ x_world + t`` (OpenCV). ``K`` is 3x3.
* Distortion ``[k1, k2, p1, p2, k3]`` is OpenCV's model (the CMU Panoptic toolbox uses the same).
* Batched: every function broadcasts over leading dimensions, ``points`` are ``(..., N, 3)`` or
  ``(..., N, 2)`` and matrices ``(..., 3, 3)``.

Every function takes torch tensors; numpy arrays are accepted too and the result is then numpy
(float64 maths internally when the input is float64).

2D image-plane matrices (:func:`transform_points`, :func:`invert_matrix`, :func:`optical_axis_rotation`,
:func:`transform_intrinsics`) are 3x3 homogeneous pixel maps ``x' = M @ [x, y, 1]``; the data layer's crops and
augmentations (:mod:`handssl.data.augment`) record them and the models map predictions back through them, both
from here, so that neither layer imports the other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar, overload

import numpy as np
import torch
from torch import Tensor

#: A torch tensor or a numpy array, the two kinds every function takes (and returns as given).
Array = TypeVar("Array", Tensor, np.ndarray)

__all__ = [
    "CropCamera",
    "axis_angle_to_matrix",
    "camera_center",
    "camera_to_world",
    "crop_camera",
    "distort",
    "look_at_rotation",
    "matrix_to_axis_angle",
    "procrustes_align",
    "project",
    "project_world",
    "relative_rotation",
    "similarity_procrustes",
    "undistort",
    "unproject",
    "world_to_camera",
]


def _numpy_compatible(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a torch function take numpy arrays: convert in, convert every tensor out back to numpy.

    The decorated body only ever sees tensors (its annotations say so); the ``@overload`` stubs in front of it
    state the public torch-in-torch-out and numpy-in-numpy-out signatures.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        uses_numpy = any(isinstance(a, np.ndarray) for a in (*args, *kwargs.values()))
        if not uses_numpy:
            return fn(*args, **kwargs)
        args = tuple(
            torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args
        )
        kwargs = {
            k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in kwargs.items()
        }
        out = fn(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.numpy() if isinstance(o, Tensor) else o for o in out)
        return out.numpy() if isinstance(out, Tensor) else out

    return wrapper


def _as_like(x: Any, ref: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)


@overload
def world_to_camera(points: Tensor, R: Tensor, t: Tensor) -> Tensor: ...
@overload
def world_to_camera(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray: ...


@_numpy_compatible
def world_to_camera(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Map world points into a camera frame, ``x_cam = R @ x_world + t``.

    Args:
        points: ``(..., N, 3)`` world points in mm.
        R: ``(..., 3, 3)`` world-to-camera rotation.
        t: ``(..., 3)`` world-to-camera translation in mm.

    Returns:
        ``(..., N, 3)`` camera-frame points in mm.
    """
    return points @ R.transpose(-1, -2) + t.unsqueeze(-2)


@overload
def camera_to_world(points: Tensor, R: Tensor, t: Tensor) -> Tensor: ...
@overload
def camera_to_world(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray: ...


@_numpy_compatible
def camera_to_world(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Inverse of :func:`world_to_camera`: ``x_world = R.T @ (x_cam - t)``."""
    return (points - t.unsqueeze(-2)) @ R


@overload
def camera_center(R: Tensor, t: Tensor) -> Tensor: ...
@overload
def camera_center(R: np.ndarray, t: np.ndarray) -> np.ndarray: ...


@_numpy_compatible
def camera_center(R: Tensor, t: Tensor) -> Tensor:
    """Camera centre in world coordinates, ``-R.T @ t``; ``(..., 3)``."""
    return -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)


@overload
def distort(xy: Tensor, dist: Tensor) -> Tensor: ...
@overload
def distort(xy: np.ndarray, dist: np.ndarray) -> np.ndarray: ...


@_numpy_compatible
def distort(xy: Tensor, dist: Tensor) -> Tensor:
    """Apply OpenCV distortion ``[k1, k2, p1, p2, k3]`` to normalised image coordinates.

    Args:
        xy: ``(..., N, 2)`` normalised coordinates ``(x/z, y/z)``.
        dist: ``(..., 5)`` distortion coefficients (shorter vectors are zero-padded).

    Returns:
        ``(..., N, 2)`` distorted normalised coordinates.
    """
    dist = _pad_dist(dist, xy)
    k1, k2, p1, p2, k3 = (dist[..., i : i + 1] for i in range(5))
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([xd, yd], dim=-1)


@overload
def undistort(xy_distorted: Tensor, dist: Tensor, iterations: int = 20) -> Tensor: ...
@overload
def undistort(xy_distorted: np.ndarray, dist: np.ndarray, iterations: int = 20) -> np.ndarray: ...


@_numpy_compatible
def undistort(xy_distorted: Tensor, dist: Tensor, iterations: int = 20) -> Tensor:
    """Invert :func:`distort` by fixed-point iteration (OpenCV's ``undistortPoints`` scheme).

    Args:
        xy_distorted: ``(..., N, 2)`` distorted normalised coordinates.
        dist: ``(..., 5)`` distortion coefficients.
        iterations: Fixed-point iterations; 20 reach sub-micro-pixel accuracy for typical lenses.

    Returns:
        ``(..., N, 2)`` undistorted normalised coordinates.
    """
    dist = _pad_dist(dist, xy_distorted)
    k1, k2, p1, p2, k3 = (dist[..., i : i + 1] for i in range(5))
    x0, y0 = xy_distorted[..., 0], xy_distorted[..., 1]
    x, y = x0.clone(), y0.clone()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (x0 - dx) / radial
        y = (y0 - dy) / radial
    return torch.stack([x, y], dim=-1)


def _pad_dist(dist: Tensor, ref: Tensor) -> Tensor:
    dist = _as_like(dist, ref)
    if dist.shape[-1] < 5:
        pad = torch.zeros(*dist.shape[:-1], 5 - dist.shape[-1], dtype=dist.dtype, device=dist.device)
        dist = torch.cat([dist, pad], dim=-1)
    return dist


@overload
def project(points: Tensor, K: Tensor, dist: Tensor | None = None, eps: float = 1e-6) -> Tensor: ...
@overload
def project(
    points: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None, eps: float = 1e-6
) -> np.ndarray: ...


@_numpy_compatible
def project(points: Tensor, K: Tensor, dist: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Project camera-frame 3D points to pixels, with optional OpenCV distortion.

    Args:
        points: ``(..., N, 3)`` camera-frame points in mm (``z > 0`` in front of the camera).
        K: ``(..., 3, 3)`` intrinsics.
        dist: Optional ``(..., 5)`` distortion ``[k1, k2, p1, p2, k3]``.
        eps: Smallest depth used in the division (points behind the camera still give finite pixels).

    Returns:
        ``(..., N, 2)`` pixel coordinates.
    """
    K = _as_like(K, points)
    z = points[..., 2:3]
    z = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    xy = points[..., :2] / z
    if dist is not None:
        xy = distort(xy, dist)
    u = K[..., 0:1, 0] * xy[..., 0] + K[..., 0:1, 1] * xy[..., 1] + K[..., 0:1, 2]
    v = K[..., 1:2, 1] * xy[..., 1] + K[..., 1:2, 2]
    return torch.stack([u, v], dim=-1)


@overload
def project_world(points: Tensor, K: Tensor, R: Tensor, t: Tensor, dist: Tensor | None = None) -> Tensor: ...
@overload
def project_world(
    points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, dist: np.ndarray | None = None
) -> np.ndarray: ...


@_numpy_compatible
def project_world(points: Tensor, K: Tensor, R: Tensor, t: Tensor, dist: Tensor | None = None) -> Tensor:
    """Project world points through a full camera ``(K, R, t, dist)``; ``(..., N, 2)`` pixels."""
    return project(world_to_camera(points, R, t), K, dist)


@overload
def unproject(uv: Tensor, depth: Tensor, K: Tensor, dist: Tensor | None = None) -> Tensor: ...
@overload
def unproject(
    uv: np.ndarray, depth: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None
) -> np.ndarray: ...


@_numpy_compatible
def unproject(uv: Tensor, depth: Tensor, K: Tensor, dist: Tensor | None = None) -> Tensor:
    """Lift pixels with known depth back to camera-frame 3D points (inverse of :func:`project`).

    Args:
        uv: ``(..., N, 2)`` pixel coordinates.
        depth: ``(..., N)`` depth ``z`` in mm of each point in the camera frame.
        K: ``(..., 3, 3)`` intrinsics.
        dist: Optional ``(..., 5)`` distortion; undistorted iteratively.

    Returns:
        ``(..., N, 3)`` camera-frame points in mm.
    """
    K = _as_like(K, uv)
    depth = _as_like(depth, uv)
    fx, fy = K[..., 0:1, 0], K[..., 1:2, 1]
    skew, cx, cy = K[..., 0:1, 1], K[..., 0:1, 2], K[..., 1:2, 2]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - skew * y) / fx
    xy = torch.stack([x, y], dim=-1)
    if dist is not None:
        xy = undistort(xy, dist)
    return torch.cat([xy * depth.unsqueeze(-1), depth.unsqueeze(-1)], dim=-1)


@overload
def relative_rotation(R_i: Tensor, R_j: Tensor) -> Tensor: ...
@overload
def relative_rotation(R_i: np.ndarray, R_j: np.ndarray) -> np.ndarray: ...


@_numpy_compatible
def relative_rotation(R_i: Tensor, R_j: Tensor) -> Tensor:
    """Rotation taking camera *i*'s frame to camera *j*'s frame: ``R_ij = R_j @ R_i.T``.

    A direction ``d_i`` in camera *i* coordinates is ``R_ij @ d_i`` in camera *j* coordinates.
    """
    return R_j @ R_i.transpose(-1, -2)


@overload
def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor: ...
@overload
def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray: ...


@_numpy_compatible
def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula: ``(..., 3)`` axis-angle (radians) to ``(..., 3, 3)`` rotation matrices."""
    theta = axis_angle.norm(dim=-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    k = axis_angle / axis_angle.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    zero = torch.zeros_like(k[..., 0])
    kx = torch.stack(
        [
            torch.stack([zero, -k[..., 2], k[..., 1]], -1),
            torch.stack([k[..., 2], zero, -k[..., 0]], -1),
            torch.stack([-k[..., 1], k[..., 0], zero], -1),
        ],
        -2,
    )
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(kx)
    return eye + torch.sin(theta) * kx + (1 - torch.cos(theta)) * (kx @ kx)


@overload
def matrix_to_axis_angle(R: Tensor) -> Tensor: ...
@overload
def matrix_to_axis_angle(R: np.ndarray) -> np.ndarray: ...


@_numpy_compatible
def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Inverse of :func:`axis_angle_to_matrix`: ``(..., 3, 3)`` rotations to ``(..., 3)`` axis-angle.

    Accurate at every angle, in float32 too: the rotation goes through a unit quaternion built with
    Shepperd's branch choice (from the largest of ``|w|, |x|, |y|, |z|``, so nothing is divided by a
    vanishing number near 0 or pi), and the angle comes from ``atan2`` rather than ``acos``.

    Args:
        R: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` axis times angle, with the angle in ``[0, pi]``.
    """
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s01, s02, s12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    # 4 q_i^2 for (w, x, y, z), then row i = 4 q_i * (w, x, y, z).
    q_sq4 = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    ).clamp_min(0.0)
    rows = torch.stack(
        [
            torch.stack([q_sq4[..., 0], d21, d02, d10], -1),
            torch.stack([d21, q_sq4[..., 1], s01, s02], -1),
            torch.stack([d02, s01, q_sq4[..., 2], s12], -1),
            torch.stack([d10, s02, s12, q_sq4[..., 3]], -1),
        ],
        -2,
    )  # (..., 4, 4)
    # Divide row i by 4 |q_i| (= 2 sqrt(q_sq4_i)); the floor keeps unused rows finite (and gradients too).
    candidates = rows / (2 * q_sq4.clamp_min(0.01).sqrt()).unsqueeze(-1)
    best = q_sq4.argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = torch.where(q[..., :1] < 0, -q, q)  # w >= 0: angle in [0, pi]
    w, v = q[..., 0], q[..., 1:]
    n = v.norm(dim=-1)
    angle = 2 * torch.atan2(n, w)
    # angle / n, with its series 2/w * (1 - n^2 / (3 w^2)) where n is tiny (then w ~ 1).
    small = n < 1e-4
    ratio = torch.where(
        small,
        2 / w.clamp_min(1e-12) * (1 - (n / w.clamp_min(1e-12)) ** 2 / 3),
        angle / torch.where(small, torch.ones_like(n), n),
    )
    return v * ratio.unsqueeze(-1)


@overload
def look_at_rotation(direction: Tensor, up: Tensor | None = None) -> Tensor: ...
@overload
def look_at_rotation(direction: np.ndarray, up: np.ndarray | None = None) -> np.ndarray: ...


@_numpy_compatible
def look_at_rotation(direction: Tensor, up: Tensor | None = None) -> Tensor:
    """World-to-camera rotation of a camera whose optical axis (+z) points along ``direction``.

    The camera's +y axis (image down) is aligned as well as possible with ``-up``; ``up`` defaults
    to ``-y`` (OpenCV's image-up in a y-down world), falling back to ``+z`` when ``direction`` is parallel to it.

    Args:
        direction: ``(..., 3)`` viewing direction in the frame the rotation is expressed in.
        up: Optional ``(..., 3)`` up vector.

    Returns:
        ``(..., 3, 3)`` rotation ``R`` with ``R @ direction`` along ``+z``.
    """
    z = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if up is None:
        up = torch.tensor([0.0, -1.0, 0.0], dtype=z.dtype, device=z.device).expand_as(z)
    up = _as_like(up, z).expand_as(z)
    alt = torch.tensor([0.0, 0.0, 1.0], dtype=z.dtype, device=z.device).expand_as(z)
    parallel = (torch.cross(up, z, dim=-1).norm(dim=-1, keepdim=True) < 1e-6).expand_as(z)
    up = torch.where(parallel, alt, up)
    x = torch.cross(-up, z, dim=-1)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=-2)


@dataclass
class CropCamera(Generic[Array]):
    """A virtual camera that shares a real camera's centre but looks straight at a target.

    ``CropCamera[Tensor]`` or ``CropCamera[np.ndarray]``: :func:`crop_camera` returns the kind it was given.

    Attributes:
        K: ``(..., 3, 3)`` intrinsics of the crop image.
        R: ``(..., 3, 3)`` world-to-crop-camera rotation (``R_rot @ R_original``).
        t: ``(..., 3)`` world-to-crop-camera translation (``R_rot @ t_original``).
        R_rot: ``(..., 3, 3)`` rotation from the original camera frame to the crop camera frame.
        homography: ``(..., 3, 3)`` maps original (undistorted) pixels to crop pixels,
            ``K_crop @ R_rot @ K^-1``; use it with ``cv2.warpPerspective``.
    """

    K: Array
    R: Array
    t: Array
    R_rot: Array
    homography: Array


@overload
def crop_camera(
    K: Tensor,
    R: Tensor,
    t: Tensor,
    center_world: Tensor,
    size_px: int,
    extent_mm: float | Tensor = 250.0,
) -> CropCamera[Tensor]: ...
@overload
def crop_camera(
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    center_world: np.ndarray,
    size_px: int,
    extent_mm: float = 250.0,
) -> CropCamera[np.ndarray]: ...


def crop_camera(
    K: Tensor | np.ndarray,
    R: Tensor | np.ndarray,
    t: Tensor | np.ndarray,
    center_world: Tensor | np.ndarray,
    size_px: int,
    extent_mm: float | Tensor = 250.0,
) -> CropCamera[Tensor] | CropCamera[np.ndarray]:
    """Build the crop camera that looks at ``center_world`` and fits ``extent_mm`` into ``size_px``.

    Crops of different real cameras made this way are related by pure rotations
    (:func:`relative_rotation` of their ``R``), which novel-view synthesis relies on.

    Args:
        K: ``(..., 3, 3)`` original intrinsics.
        R: ``(..., 3, 3)`` original world-to-camera rotation.
        t: ``(..., 3)`` original world-to-camera translation in mm.
        center_world: ``(..., 3)`` point to centre in the crop (e.g. the hand's centre), mm.
        size_px: Side of the square crop in pixels.
        extent_mm: Side of the square, at the target's depth, that the crop covers (mm): one for all
            crops, or a ``(...)`` tensor of one per crop (torch inputs).

    Returns:
        The :class:`CropCamera`; numpy in, numpy out.
    """
    is_numpy = isinstance(K, np.ndarray)
    K_, R_, t_, c = (
        torch.as_tensor(np.asarray(a) if isinstance(a, np.ndarray) else a) for a in (K, R, t, center_world)
    )
    c_cam = (R_ @ c.unsqueeze(-1)).squeeze(-1) + t_
    R_rot = look_at_rotation(c_cam)
    depth = c_cam.norm(dim=-1)
    focal = size_px * depth / extent_mm
    K_crop = torch.zeros_like(K_)
    K_crop[..., 0, 0] = focal
    K_crop[..., 1, 1] = focal
    K_crop[..., 0, 2] = (size_px - 1) / 2
    K_crop[..., 1, 2] = (size_px - 1) / 2
    K_crop[..., 2, 2] = 1.0
    H = K_crop @ R_rot @ torch.linalg.inv(K_)
    out = CropCamera(
        K=K_crop, R=R_rot @ R_, t=(R_rot @ t_.unsqueeze(-1)).squeeze(-1), R_rot=R_rot, homography=H
    )
    if is_numpy:
        return CropCamera(**{f.name: getattr(out, f.name).numpy() for f in fields(out)})
    return out


@overload
def similarity_procrustes(
    source: Tensor, target: Tensor, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def similarity_procrustes(
    source: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@_numpy_compatible
def similarity_procrustes(
    source: Tensor, target: Tensor, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity transform (Umeyama) with ``det(R) = +1``.

    Finds ``s, R, t`` minimising ``sum_i valid_i * ||s R source_i + t - target_i||^2``.

    Args:
        source: ``(..., N, 3)`` points to align.
        target: ``(..., N, 3)`` reference points.
        valid: Optional ``(..., N)`` bool mask of points used in the fit (at least 3 per item).

    Returns:
        ``(scale (...,), R (..., 3, 3), t (..., 3))``.
    """
    if valid is None:
        w = torch.ones(source.shape[:-1], dtype=source.dtype, device=source.device)
    else:
        w = _as_like(valid, source)
    w = w.unsqueeze(-1)
    n = w.sum(-2, keepdim=True).clamp_min(1e-12)
    mu_s = (w * source).sum(-2, keepdim=True) / n
    mu_t = (w * target).sum(-2, keepdim=True) / n
    xs, xt = source - mu_s, target - mu_t
    cov = (w * xt).transpose(-1, -2) @ xs / n  # (..., 3, 3): target x source
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.ones_like(S)
    D[..., -1] = d
    R = U @ torch.diag_embed(D) @ Vh
    var_s = ((w * xs * xs).sum((-1, -2)) / n.squeeze(-1).squeeze(-1)).clamp_min(1e-12)
    scale = (S * D).sum(-1) / var_s
    t = mu_t.squeeze(-2) - scale.unsqueeze(-1) * (R @ mu_s.squeeze(-2).unsqueeze(-1)).squeeze(-1)
    return scale, R, t


@overload
def procrustes_align(source: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor: ...
@overload
def procrustes_align(
    source: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray: ...


@_numpy_compatible
def procrustes_align(source: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Align ``source`` to ``target`` by :func:`similarity_procrustes` fitted on the valid points; ``(..., N, 3)``.

    Every point of ``source`` is transformed; only valid ones enter the fit, and invalid ones may be NaN in
    either input (they are zeroed for the fit, since ``NaN * 0`` is NaN).
    """
    fit_source, fit_target = source, target
    if valid is not None:
        keep = torch.as_tensor(valid, device=source.device).bool().unsqueeze(-1)
        fit_source = torch.where(keep, source, torch.zeros_like(source))
        fit_target = torch.where(keep, target, torch.zeros_like(target))
    s, R, t = similarity_procrustes(fit_source, fit_target, valid)
    return s[..., None, None] * (source @ R.transpose(-1, -2)) + t.unsqueeze(-2)


def rotation_about_axis(axis: str, angle_rad: float | Tensor) -> Tensor:
    """Rotation matrix about a coordinate axis ``"x"``, ``"y"`` or ``"z"`` by ``angle_rad``."""
    a = torch.as_tensor(angle_rad, dtype=torch.float32)
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rows = {
        "x": ((one, zero, zero), (zero, c, -s), (zero, s, c)),
        "y": ((c, zero, s), (zero, one, zero), (-s, zero, c)),
        "z": ((c, -s, zero), (s, c, zero), (zero, zero, one)),
    }[axis]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


__all__ += ["rotation_about_axis"]


# ------------------------------------------------------------------------- 2D image-plane matrices
# 3x3 homogeneous pixel matrices ``M`` (``x' = M @ [x, y, 1]``): crops, resizes and the augmentations of
# :mod:`handssl.data.augment` record theirs, and the models map predictions back through them.


@overload
def invert_matrix(matrix: Tensor) -> Tensor: ...
@overload
def invert_matrix(matrix: np.ndarray) -> np.ndarray: ...


def invert_matrix(matrix: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Inverse of a (batch of) 3x3 image-plane matrix; torch in, torch out; numpy in, numpy out."""
    if isinstance(matrix, Tensor):
        return torch.linalg.inv(matrix)
    return np.linalg.inv(np.asarray(matrix))


@overload
def transform_points(points: Tensor, matrix: Tensor | np.ndarray) -> Tensor: ...
@overload
def transform_points(points: np.ndarray, matrix: Tensor | np.ndarray) -> np.ndarray: ...


def transform_points(points: Tensor | np.ndarray, matrix: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Apply 3x3 pixel matrices to 2D points: ``(..., N, 2)`` points, ``(..., 3, 3)`` matrices."""
    if isinstance(points, Tensor):
        matrix = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
        return points @ matrix[..., :2, :2].transpose(-1, -2) + matrix[..., None, :2, 2]
    matrix = np.asarray(matrix)
    return points @ np.swapaxes(matrix[..., :2, :2], -1, -2) + matrix[..., None, :2, 2]


@overload
def optical_axis_rotation(matrix: Tensor) -> Tensor: ...
@overload
def optical_axis_rotation(matrix: np.ndarray) -> np.ndarray: ...


def optical_axis_rotation(matrix: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """The camera rotation about its optical axis that an image-plane matrix applies, ``(..., 3, 3)``.

    The rotation part of the 2x2 block (its polar factor; for a similarity ``s R2`` this is ``R2``).

    Raises:
        ValueError: When the matrix mirrors or collapses the image (determinant <= 0).
    """
    m = torch.as_tensor(matrix if isinstance(matrix, Tensor) else np.asarray(matrix), dtype=torch.float64)
    block = m[..., :2, :2]
    if (torch.linalg.det(block) <= 0).any():
        raise ValueError("the augmentation mirrors or collapses the image; flips are not supported")
    u, _, vh = torch.linalg.svd(block)
    r2 = u @ vh
    rz = torch.zeros(*m.shape[:-2], 3, 3, dtype=torch.float64)
    rz[..., :2, :2] = r2
    rz[..., 2, 2] = 1.0
    if not isinstance(matrix, Tensor):
        return rz.numpy()
    return rz.to(dtype=matrix.dtype, device=matrix.device)


@overload
def transform_intrinsics(K: Tensor, matrix: Tensor | np.ndarray) -> Tensor: ...
@overload
def transform_intrinsics(K: np.ndarray, matrix: Tensor | np.ndarray) -> np.ndarray: ...


def transform_intrinsics(K: Tensor | np.ndarray, matrix: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """New intrinsics ``M @ K @ Rz^T`` of an image warped by the similarity ``M``.

    ``M``'s 2x2 block ``s R2`` is the image of a camera rotation ``Rz`` about the optical axis
    (:func:`optical_axis_rotation`) plus a change of intrinsics, so camera-frame 3D points become ``Rz @ X``;
    projecting them with the new ``K`` reproduces ``M``'s 2D points exactly when ``fx == fy`` and the skew is 0.
    """
    rz = optical_axis_rotation(matrix)
    if isinstance(K, Tensor):
        m = torch.as_tensor(matrix, dtype=K.dtype, device=K.device)
        return m @ K @ torch.as_tensor(rz, dtype=K.dtype, device=K.device).transpose(-1, -2)
    return np.asarray(matrix) @ np.asarray(K) @ np.swapaxes(rz, -1, -2)


__all__ += ["invert_matrix", "optical_axis_rotation", "transform_intrinsics", "transform_points"]
