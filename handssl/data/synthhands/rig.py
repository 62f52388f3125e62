"""The calibrated multi-camera rig of the SynthHands world: cameras on a dome around the hand.

World frame: ``z`` up, the hand moves within roughly ±60 mm of the origin. Every camera is an OpenCV
camera (``x_cam = R @ x_world + t``) that looks (up to a small jitter) at the origin with image-down along
world ``-z``. The rig is a pure function of its arguments: the same seed gives the same cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from handssl.geometry import CropCamera, axis_angle_to_matrix, camera_center, crop_camera, look_at_rotation

__all__ = ["Rig", "make_rig"]


@dataclass(frozen=True)
class Rig:
    """A calibrated camera rig (float64 tensors; all cameras share one sensor size).

    Attributes:
        K: ``(C, 3, 3)`` intrinsics of the full sensor images.
        R: ``(C, 3, 3)`` world-to-camera rotations.
        t: ``(C, 3)`` world-to-camera translations in mm.
        image_size_px: Side of the square full sensor image in pixels.
    """

    K: Tensor
    R: Tensor
    t: Tensor
    image_size_px: int

    def __len__(self) -> int:
        return int(self.K.shape[0])

    @property
    def num_cameras(self) -> int:
        """Number of cameras ``C``."""
        return len(self)

    @property
    def centers(self) -> Tensor:
        """``(C, 3)`` camera centres in world mm."""
        return camera_center(self.R, self.t)

    def crop_cameras(
        self, cameras: Tensor, center_world: Tensor, size_px: int, extent_mm: Tensor | float
    ) -> CropCamera:
        """Crop cameras of the given rig cameras looking at ``center_world`` (float64, batched).

        Args:
            cameras: ``(N,)`` integer camera indices.
            center_world: ``(N, 3)`` world points (mm) to centre, one per crop.
            size_px: Side of the square crop image in pixels.
            extent_mm: Side of the square (at the centre's depth) that the crop covers, in mm: one for
                every crop, or ``(N,)`` float64, one per crop.

        Returns:
            The batched :class:`~handssl.geometry.CropCamera` (``(N, ...)`` float64 tensors).
        """
        cameras = torch.as_tensor(cameras, dtype=torch.long)
        center_world = torch.as_tensor(center_world, dtype=torch.float64)
        return crop_camera(
            self.K[cameras], self.R[cameras], self.t[cameras], center_world, size_px, extent_mm=extent_mm
        )


def make_rig(
    num_cameras: int = 8,
    radius_mm: float = 600.0,
    fov_deg: float = 60.0,
    image_size_px: int = 1024,
    elevation_range_deg: tuple[float, float] = (-25.0, 70.0),
    position_jitter_mm: float = 20.0,
    rotation_jitter_deg: float = 3.0,
    seed: int = 0,
) -> Rig:
    """Place ``num_cameras`` cameras on a dome around the origin, deterministically from ``seed``.

    Cameras are spread evenly by area over the elevation band (a Fibonacci spiral: equal steps in
    ``sin(elevation)``, golden-angle steps in azimuth), then their centres and orientations are jittered.

    Args:
        num_cameras: Number of cameras (at least 1).
        radius_mm: Distance of the cameras from the origin in mm (at least 250, so the hand and the
            forearm stay well in front of every camera).
        fov_deg: Horizontal (= vertical) field of view of the full sensor image, in degrees (in ``(0, 150)``).
        image_size_px: Side of the square full sensor image in pixels.
        elevation_range_deg: Lowest and highest camera elevation above the horizontal plane, in degrees
            (within ``[-89, 89]``; negative values put cameras below the hand).
        position_jitter_mm: Standard deviation of the random offset of each camera centre, in mm.
        rotation_jitter_deg: Standard deviation of the random rotation of each camera about a random
            axis, in degrees (the cameras then look slightly off the origin).
        seed: Random seed of the azimuth offset and the jitter.

    Returns:
        The :class:`Rig`.

    Raises:
        ValueError: For an impossible camera count, radius, field of view, elevation band or jitter.
    """
    if not isinstance(num_cameras, int) or isinstance(num_cameras, bool) or num_cameras < 1:
        raise ValueError(f"num_cameras must be a positive int, got {num_cameras!r}")
    if not radius_mm >= 250.0:
        raise ValueError(f"radius_mm must be at least 250 mm (hand plus forearm), got {radius_mm}")
    if not 0.0 < fov_deg < 150.0:
        raise ValueError(f"fov_deg must be in (0, 150) degrees, got {fov_deg}")
    if not isinstance(image_size_px, int) or image_size_px < 16:
        raise ValueError(f"image_size_px must be an int >= 16, got {image_size_px!r}")
    low, high = elevation_range_deg
    if not -89.0 <= low <= high <= 89.0:
        raise ValueError(
            f"elevation_range_deg must satisfy -89 <= low <= high <= 89, got {elevation_range_deg}"
        )
    if position_jitter_mm < 0 or rotation_jitter_deg < 0:
        raise ValueError(
            f"jitters must be >= 0, got position_jitter_mm={position_jitter_mm}, "
            f"rotation_jitter_deg={rotation_jitter_deg}"
        )
    rng = np.random.default_rng([int(seed), 0x816])
    golden_angle = math.pi * (3.0 - math.sqrt(5.0))
    azimuth0 = rng.uniform(0.0, 2.0 * math.pi)
    sin_low, sin_high = math.sin(math.radians(low)), math.sin(math.radians(high))
    centers = np.empty((num_cameras, 3))
    for k in range(num_cameras):
        sin_elev = sin_low + (k + 0.5) / num_cameras * (sin_high - sin_low)
        cos_elev = math.sqrt(max(0.0, 1.0 - sin_elev**2))
        azimuth = azimuth0 + k * golden_angle
        centers[k] = radius_mm * np.array(
            [cos_elev * math.cos(azimuth), cos_elev * math.sin(azimuth), sin_elev]
        )
    centers += rng.normal(0.0, position_jitter_mm, size=(num_cameras, 3))
    jitter = rng.normal(0.0, math.radians(rotation_jitter_deg), size=(num_cameras, 3)) / math.sqrt(3.0)

    centers_t = torch.from_numpy(centers)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    R = axis_angle_to_matrix(torch.from_numpy(jitter)) @ look_at_rotation(-centers_t, up)
    t = -(R @ centers_t.unsqueeze(-1)).squeeze(-1)
    focal = (image_size_px / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    K = torch.zeros(num_cameras, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = K[:, 1, 1] = focal
    K[:, 0, 2] = K[:, 1, 2] = (image_size_px - 1) / 2.0
    K[:, 2, 2] = 1.0
    return Rig(K=K, R=R, t=t, image_size_px=image_size_px)
