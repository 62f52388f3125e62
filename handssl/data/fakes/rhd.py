"""A tiny fake copy of RHD (Rendered Hand Pose Dataset) in its exact on-disk format.

Also home of the small helpers the RHD, STB and Dexter+Object builders share: an asymmetric random hand
pose, its placement in front of a camera, and colour-coded joint markers drawn into the images.

Joint markers make the fakes self-checking: every joint is drawn as a 3x3 square whose colour is
:func:`marker_color` of its *canonical* index and hand side, so a test can read the joint identity back
from the pixel under a loader's ``joints2d`` (a wrong joint map, a swapped axis or a wrong camera frame
lands on the wrong colour or on the background).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from handssl.skeleton import FINGER_NAMES, JOINT_NAMES, NUM_JOINTS

__all__ = [
    "BACKGROUND_COLOR",
    "RHD_DEPTH_PLANE",
    "RHD_NATIVE_NAMES",
    "draw_markers",
    "fake_depth_m",
    "make_fake_rhd",
    "marker_color",
    "markers_separated",
    "place_hand",
    "project_pinhole",
    "random_hand_pose",
]

BACKGROUND_COLOR: tuple[int, int, int] = (0, 40, 90)
"""Colour of the fake images' background (never the colour of a marker)."""

MARKER_GREEN = 200
"""Green value of every joint marker."""

RHD_NATIVE_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{finger}_{seg}"
    for finger in FINGER_NAMES
    for seg in (("tip", "ip", "mcp", "cmc") if finger == "thumb" else ("tip", "dip", "pip", "mcp"))
)
"""RHD's per-hand order spelled with canonical names, from the dataset README: wrist, then each finger
thumb..pinky from tip to palm. Written independently of ``handssl.skeleton.RHD_TO_CANONICAL``."""

RHD_DEPTH_PLANE: tuple[float, float, float] = (0.8, 0.004, 0.002)
"""The fake depth maps are the plane ``depth_m = a + b * u + c * v`` with these ``(a, b, c)``."""

# Bone lengths (mm) per finger, base -> tip; deliberately different per finger so mix-ups show.
_BONES_MM = {
    "thumb": (38.0, 33.0, 27.0),
    "index": (44.0, 26.0, 19.0),
    "middle": (48.0, 30.0, 22.0),
    "ring": (45.0, 28.0, 21.0),
    "pinky": (35.0, 21.0, 17.0),
}
# Finger bases (right hand, mm) in a hand frame: fingers point to -y (image up), thumb on +x.
_BASES_MM = {
    "thumb": (24.0, -22.0, -6.0),
    "index": (24.0, -86.0, 0.0),
    "middle": (3.0, -90.0, 0.0),
    "ring": (-17.0, -84.0, 2.0),
    "pinky": (-35.0, -72.0, 4.0),
}


def random_hand_pose(rng: np.random.Generator, side: str = "right") -> np.ndarray:
    """A random, deliberately asymmetric hand pose in canonical order, in a hand-centred frame.

    Fingers have different bone lengths and random flexion, so a wrong joint order, a reversed finger or
    a swapped axis changes the geometry.

    Args:
        rng: Random generator.
        side: ``"right"`` or ``"left"`` (the left hand is the right hand mirrored in ``x``).

    Returns:
        ``(21, 3)`` float64 joints in mm, wrist at the origin.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    joints = np.zeros((NUM_JOINTS, 3))
    for f, finger in enumerate(FINGER_NAMES):
        base = np.asarray(_BASES_MM[finger]) + rng.uniform(-3.0, 3.0, 3)
        direction = np.array([0.55, -0.85, 0.0]) if finger == "thumb" else base / np.linalg.norm(base)
        direction = direction / np.linalg.norm(direction)
        axis = np.cross(direction, [0.0, 0.0, 1.0])
        axis /= np.linalg.norm(axis)
        joints[1 + 4 * f] = base
        point, angle = base, 0.0
        for k, length in enumerate(_BONES_MM[finger]):
            angle += rng.uniform(0.05, 0.4)
            point = point + length * _rotate(direction, axis, angle)
            joints[2 + 4 * f + k] = point
    if side == "left":
        joints[:, 0] *= -1
    return joints


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about the unit ``axis`` (kept local: the fakes do not trust handssl)."""
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1 - np.cos(angle))


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """``Rz @ Ry @ Rx`` with each angle uniform in ``[-max_deg, max_deg]``."""
    R = np.eye(3)
    for axis in np.eye(3):
        angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
        R = np.stack([_rotate(col, axis, angle) for col in np.eye(3)], axis=1) @ R
    return R


def place_hand(
    pose: np.ndarray,
    rng: np.random.Generator,
    K: np.ndarray,
    center_px: Sequence[float],
    depth_mm: float,
    max_tilt_deg: float = 25.0,
) -> np.ndarray:
    """Rotate a hand-centred pose a little and move it so its centroid projects to ``center_px``.

    Args:
        pose: ``(N, 3)`` points in mm around the origin.
        rng: Random generator (for the tilt).
        K: ``(3, 3)`` intrinsics of the camera the pose is placed in front of.
        center_px: ``(u, v)`` pixel where the centroid should project.
        depth_mm: Depth of the centroid.
        max_tilt_deg: Largest rotation about each axis.

    Returns:
        ``(N, 3)`` camera-frame points in mm.
    """
    R = _random_rotation(rng, max_tilt_deg)
    centred = (pose - pose.mean(0)) @ R.T
    u, v = center_px
    y = (v - K[1, 2]) * depth_mm / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y / depth_mm) * depth_mm / K[0, 0]
    return centred + np.array([x, y, depth_mm])


def project_pinhole(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``(N, 3)`` camera-frame points to ``(N, 2)`` pixels (plain pinhole; independent of handssl)."""
    uvw = points @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def marker_color(canonical_index: int, side: str = "right") -> tuple[int, int, int]:
    """RGB of the marker of canonical joint ``canonical_index`` of a ``side`` hand.

    Red encodes the joint (``10 * (index + 1)``), green is always 200, blue is 0 for a left hand and 255
    for a right hand.
    """
    return (10 * (canonical_index + 1), MARKER_GREEN, 0 if side == "left" else 255)


def draw_markers(image: np.ndarray, uv: np.ndarray, canonical_ids: Sequence[int], side: str) -> None:
    """Draw a 3x3 marker of :func:`marker_color` at each rounded pixel of ``uv`` (in place)."""
    h, w = image.shape[:2]
    for (u, v), c in zip(uv, canonical_ids):
        ui, vi = round(float(u)), round(float(v))
        image[max(vi - 1, 0) : min(vi + 2, h), max(ui - 1, 0) : min(ui + 2, w)] = marker_color(c, side)


def markers_separated(uv: np.ndarray, size_wh: tuple[int, int], min_px: int = 3, border: int = 2) -> bool:
    """Whether all rounded pixels of ``uv`` lie inside the image and no two 3x3 markers would overlap."""
    w, h = size_wh
    r = np.rint(uv)
    if not np.isfinite(r).all():
        return False
    if (r[:, 0] < border).any() or (r[:, 0] > w - 1 - border).any():
        return False
    if (r[:, 1] < border).any() or (r[:, 1] > h - 1 - border).any():
        return False
    cheb = np.abs(r[:, None] - r[None]).max(-1)
    np.fill_diagonal(cheb, np.inf)
    return bool(cheb.min() >= min_px)


def fake_depth_m(width: int, height: int) -> np.ndarray:
    """The depth plane (metres) written into every fake RHD depth map, ``(height, width)``."""
    a, b, c = RHD_DEPTH_PLANE
    v, u = np.mgrid[0:height, 0:width]
    return a + b * u + c * v


def _canonical_to_rhd_native(joints: np.ndarray) -> np.ndarray:
    return joints[[JOINT_NAMES.index(name) for name in RHD_NATIVE_NAMES]]


def _draw_mask_discs(mask: np.ndarray, uv: np.ndarray, side: str, radius: int) -> None:
    """Label discs around a hand's joints: palm label at the wrist and bases, finger labels elsewhere."""
    h, w = mask.shape
    offset = 0 if side == "left" else 16
    yy, xx = np.mgrid[0:h, 0:w]
    for c, (u, v) in enumerate(uv):
        finger, segment = divmod(c - 1, 4)
        # Palm label at the wrist and the finger bases; finger labels (tip to palm) elsewhere.
        label = 17 if c == 0 or segment == 0 else 2 + 3 * finger + (3 - segment)
        mask[(xx - u) ** 2 + (yy - v) ** 2 <= radius**2] = label + offset


def make_fake_rhd(
    root: str | Path,
    splits: Sequence[str] = ("training", "evaluation"),
    num_samples: int | dict[str, int] = 3,
    seed: int = 0,
    dominant: Sequence[str] | None = None,
    nan_sample: int | None = None,
) -> Path:
    """Write a tiny RHD copy (``RHD_published_v2`` layout) under ``root``.

    Per split: ``color/%05d.png`` (320x320 RGB with joint markers on a plain background, left-hand
    markers with blue 0, right-hand with blue 255), ``mask/%05d.png`` (320x320 ``L``; 1 = person, label
    discs of both hands, the dominant hand drawn larger), ``depth/%05d.png`` (the plane
    :data:`RHD_DEPTH_PLANE`, 16 bit in R (high) and G (low)), and ``anno_<split>.pickle``
    ``{id: {"xyz": (42, 3) m, "uv_vis": (42, 3), "K": (3, 3)}}`` with ``uv`` the exact projection of
    ``xyz``. Rows 0-20 are the left hand, 21-41 the right, each in RHD's native order.

    Visibility: joints ``2`` (native) of the left hand and ``7`` of the right hand are invisible in every
    sample; every other joint is visible.

    Args:
        root: Folder to write (created); the loader's ``root``.
        splits: Splits to write.
        num_samples: Samples per split (an int, or a dict split -> count).
        seed: Seed; the copy is a deterministic function of the arguments.
        dominant: Per sample, the hand drawn with more mask pixels (``"left"``/``"right"``); default
            alternates, starting with ``"left"``.
        nan_sample: Put a NaN into a visible 3D joint of this sample (in every split) to test error handling.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    size = 320
    for split in splits:
        count = num_samples[split] if isinstance(num_samples, dict) else num_samples
        split_dir = root / split
        for sub in ("color", "mask", "depth"):
            (split_dir / sub).mkdir(parents=True, exist_ok=True)
        annotations = {}
        for i in range(count):
            side_major = dominant[i] if dominant is not None else ("left" if i % 2 == 0 else "right")
            f = rng.uniform(280.0, 320.0)
            K = np.array(
                [[f, 0.0, 159.5 + rng.uniform(-5, 5)], [0.0, f, 159.5 + rng.uniform(-5, 5)], [0, 0, 1]]
            )
            for _ in range(1000):
                left_u, right_u = (90.0, 230.0) if rng.random() < 0.5 else (230.0, 90.0)
                hands = {
                    side: place_hand(
                        random_hand_pose(rng, side), rng, K, (u, rng.uniform(140, 180)), rng.uniform(520, 600)
                    )
                    for side, u in (("left", left_u), ("right", right_u))
                }
                uv = {side: project_pinhole(j, K) for side, j in hands.items()}
                if markers_separated(np.concatenate([uv["left"], uv["right"]]), (size, size), border=12):
                    break
            else:  # pragma: no cover - the pose sampler makes this practically impossible
                raise RuntimeError("could not place two separated hands in the fake RHD image")

            image = np.empty((size, size, 3), np.uint8)
            image[:] = BACKGROUND_COLOR
            mask = np.zeros((size, size), np.uint8)
            mask[20:300, 20:300] = 1
            for side in ("left", "right"):
                draw_markers(image, uv[side], range(NUM_JOINTS), side)
                _draw_mask_discs(mask, uv[side], side, radius=7 if side == side_major else 3)
            # The dominant hand's discs go last so the other hand cannot cover them.
            _draw_mask_discs(mask, uv[side_major], side_major, radius=7)

            xyz = np.concatenate(
                [_canonical_to_rhd_native(hands["left"]), _canonical_to_rhd_native(hands["right"])]
            )
            uv_native = project_pinhole(xyz, K)
            vis = np.ones(42)
            vis[2] = 0
            vis[21 + 7] = 0
            xyz_m = xyz / 1000.0
            if nan_sample == i:
                xyz_m[21 + 5, 1] = np.nan
            annotations[i] = {
                "xyz": xyz_m.astype(np.float32),
                "uv_vis": np.concatenate([uv_native, vis[:, None]], 1).astype(np.float32),
                "K": K.astype(np.float32),
            }

            q = np.rint(fake_depth_m(size, size) / 5.0 * 65535).astype(np.int64)
            depth_rgb = np.stack([q >> 8, q & 255, np.zeros_like(q)], -1).astype(np.uint8)
            name = f"{i:05d}.png"
            Image.fromarray(image).save(split_dir / "color" / name, compress_level=1)
            Image.fromarray(mask).save(split_dir / "mask" / name, compress_level=1)
            Image.fromarray(depth_rgb).save(split_dir / "depth" / name, compress_level=1)
        with open(split_dir / f"anno_{split}.pickle", "wb") as fh:
            pickle.dump(annotations, fh)
    return root
