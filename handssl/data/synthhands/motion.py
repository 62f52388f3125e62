"""SynthHands subjects and their temporally smooth, natural hand motion.

Everything is a pure function of its arguments: a subject of ``(seed, index)``, a frame's pose of
``(seed, subject, sequence, frame)``. Any frame can be evaluated alone (no state is carried from frame to
frame), which is what lets the dataset render frames in any order, in any worker.

Motion model
------------
* **Hand pose**: a schedule of keyframes (one every :data:`KEYFRAME_SPACING` frames on average, each
  jittered by up to 30 %), each a gesture from :data:`GESTURES` — power grasp, thumb-index pinch,
  counting one to five, spread, fist, point, relaxed — with a small random perturbation. Between two
  keyframes the hand holds the first pose for a random part of the interval, then moves to the next with
  a smoothstep ease (zero velocity at both ends). Small smooth noise (sums of slow sinusoids) rides on
  top, and the result is clamped into :data:`handssl.kinematics.JOINT_LIMITS` at every frame.
* **Global motion**: the hand orientation is a per-sequence random rotation followed by a steady spin
  about the world's vertical axis (z up) and slow swings about two other axes, so a sequence shows the
  palm, the back, both sides and the fingertips; the hand centre (the middle MCP) wanders smoothly within
  about ±35 mm of the origin on each axis.

Keyframe ``k`` of a sequence draws its gesture, timing and perturbation from a generator seeded with a
hash of ``(seed, subject.index, sequence, k)``; the global trajectory and the noise from one seeded with
``(seed, subject.index, sequence)``.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from handssl.geometry import axis_angle_to_matrix
from handssl.kinematics import (
    NUM_BONES,
    bone_length_range_tensor,
    forward_kinematics,
    limits_tensor,
    rest_pose,
    template_bone_lengths,
)
from handssl.skeleton import FINGER_NAMES, MIDDLE_MCP

__all__ = [
    "GESTURES",
    "KEYFRAME_SPACING",
    "HandPose",
    "Subject",
    "gesture_angles",
    "make_subject",
    "sequence_joints",
    "sequence_pose",
]

KEYFRAME_SPACING = 40
"""Mean number of frames between two keyframes (at 30 fps, 1.3 s)."""

_KEYFRAME_JITTER = 0.3  # keyframe times are k * spacing + U(-0.3, 0.3) * spacing
_HOLD_FRACTION = (0.1, 0.45)  # part of each interval spent holding the keyframe pose

# Gestures, in degrees. Fingers: (MCP flexion, MCP abduction, PIP flexion, DIP flexion); thumb:
# (CMC flexion, CMC abduction, CMC twist, MCP flexion, IP flexion); palm: (ring, little) palm-bone
# flexion (cupping). Angle conventions: handssl.kinematics.
_Finger = tuple[float, float, float, float]
_Thumb = tuple[float, float, float, float, float]

_EXTENDED: dict[str, _Finger] = {
    "index": (0.0, 4.0, 2.0, 2.0),
    "middle": (0.0, 0.0, 2.0, 2.0),
    "ring": (2.0, -3.0, 2.0, 2.0),
    "pinky": (4.0, -6.0, 2.0, 2.0),
}
_CURLED: dict[str, _Finger] = {
    "index": (80.0, -4.0, 95.0, 55.0),
    "middle": (85.0, 0.0, 100.0, 55.0),
    "ring": (85.0, 3.0, 100.0, 55.0),
    "pinky": (85.0, 8.0, 95.0, 50.0),
}
_THUMB_TUCKED: _Thumb = (17.0, -7.0, 14.0, 59.0, 57.0)  # over the curled middle phalanges
_THUMB_EXTENDED: _Thumb = (-10.0, 0.0, 0.0, 0.0, 5.0)


def _gesture(
    fingers: dict[str, _Finger], thumb: _Thumb, palm: tuple[float, float] = (0.0, 0.0)
) -> tuple[dict[str, _Finger], _Thumb, tuple[float, float]]:
    return fingers, thumb, palm


def _count(n: int) -> tuple[dict[str, _Finger], _Thumb, tuple[float, float]]:
    order = ("index", "middle", "ring", "pinky")
    fingers = {f: _EXTENDED[f] if i < n else _CURLED[f] for i, f in enumerate(order)}
    thumb = _THUMB_EXTENDED if n >= 5 else _THUMB_TUCKED
    return _gesture(fingers, thumb, (4.0, 8.0) if n < 4 else (0.0, 0.0))


_GESTURE_TABLE: dict[str, tuple[dict[str, _Finger], _Thumb, tuple[float, float]]] = {
    "relaxed": _gesture(
        {
            "index": (15.0, 2.0, 20.0, 10.0),
            "middle": (18.0, 0.0, 25.0, 12.0),
            "ring": (22.0, -2.0, 28.0, 14.0),
            "pinky": (25.0, -4.0, 30.0, 15.0),
        },
        (0.0, 0.0, 0.0, 10.0, 10.0),
        (2.0, 4.0),
    ),
    "spread": _gesture(
        {
            "index": (-5.0, 16.0, 0.0, 0.0),
            "middle": (-5.0, 2.0, 0.0, 0.0),
            "ring": (-5.0, -10.0, 0.0, 0.0),
            "pinky": (-5.0, -20.0, 0.0, 0.0),
        },
        (-20.0, -15.0, 0.0, 0.0, 0.0),
        (-3.0, -3.0),
    ),
    "fist": _gesture(_CURLED, _THUMB_TUCKED, (6.0, 14.0)),
    "grasp": _gesture(
        {
            "index": (45.0, 0.0, 60.0, 30.0),
            "middle": (48.0, 0.0, 62.0, 32.0),
            "ring": (50.0, 0.0, 62.0, 32.0),
            "pinky": (52.0, 0.0, 60.0, 30.0),
        },
        (22.0, 4.0, 4.0, 24.0, 21.0),
        (5.0, 10.0),
    ),
    "pinch": _gesture(
        {
            "index": (42.0, 1.0, 47.0, 26.0),
            "middle": (25.0, 0.0, 35.0, 15.0),
            "ring": (25.0, -2.0, 35.0, 15.0),
            "pinky": (25.0, -4.0, 35.0, 15.0),
        },
        (28.0, 6.0, 8.0, 13.0, 24.0),
        (3.0, 6.0),
    ),
    "point": _gesture({**_CURLED, "index": _EXTENDED["index"]}, _THUMB_TUCKED, (4.0, 8.0)),
    **{f"count_{n}": _count(n) for n in range(1, 6)},
}

GESTURES: tuple[str, ...] = tuple(_GESTURE_TABLE)
"""Names of the keyframe gestures."""

# How often each gesture is drawn as a keyframe (relative; the five counting poses share a weight of 2).
_GESTURE_WEIGHTS = torch.tensor(
    [
        {"relaxed": 2.0, "spread": 1.5, "fist": 1.5, "grasp": 1.5, "pinch": 1.5, "point": 1.0}.get(name, 0.4)
        for name in GESTURES
    ],
    dtype=torch.float64,
)

_PERTURB_STD_DEG = (6.0, 3.0, 3.0)  # per keyframe: flexion, abduction, twist
_NOISE_AMPLITUDE_DEG = (2.5, 1.2, 1.2)  # smooth per-frame noise: flexion, abduction, twist
_NOISE_PERIOD_FRAMES = (25.0, 90.0)


def gesture_angles(
    name: str, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Joint angles of a named gesture, ``(20, 3)`` radians (see :mod:`handssl.kinematics`).

    Args:
        name: One of :data:`GESTURES`.
        dtype: Output dtype.
        device: Output device.
    """
    if name not in _GESTURE_TABLE:
        raise ValueError(f"unknown gesture {name!r}; expected one of {', '.join(GESTURES)}")
    fingers, thumb, palm = _GESTURE_TABLE[name]
    angles = torch.zeros(NUM_BONES, 3, dtype=torch.float64)
    angles[1] = torch.tensor(thumb[:3], dtype=torch.float64)
    angles[2, 0], angles[3, 0] = thumb[3], thumb[4]
    for finger, (mcp_flexion, mcp_abduction, pip, dip) in fingers.items():
        base = 4 * FINGER_NAMES.index(finger)
        angles[base + 1, 0], angles[base + 1, 1] = mcp_flexion, mcp_abduction
        angles[base + 2, 0], angles[base + 3, 0] = pip, dip
    angles[4 * FINGER_NAMES.index("ring"), 0] = palm[0]
    angles[4 * FINGER_NAMES.index("pinky"), 0] = palm[1]
    return torch.deg2rad(angles).to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------
# Subjects
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Subject:
    """One synthetic person: hand proportions and colours.

    Attributes:
        index: Subject number.
        bone_lengths: ``(20,)`` float32 bone lengths in mm, ``skeleton.BONES`` order: the template's times
            a subject scale times per-finger and per-bone variations, inside the limits table's ranges.
        skin_rgb: ``(3,)`` float32 skin colour in ``[0, 1]``.
        sleeve_rgb: ``(3,)`` float32 sleeve colour in ``[0, 1]``.
        finger_radius_mm: Radius of the index finger's proximal phalanx (scaled with the hand).
    """

    index: int
    bone_lengths: Tensor
    skin_rgb: Tensor
    sleeve_rgb: Tensor
    finger_radius_mm: float


_SCALE_RANGE = (0.86, 1.14)
_FINGER_VARIATION = 0.05
_BONE_VARIATION = 0.04
_FINGER_RADIUS_MM = 8.5
# Skin tones from very light to very dark (sRGB in [0, 1]); a subject interpolates between neighbours.
_SKIN_TONES = torch.tensor(
    [
        [0.96, 0.83, 0.74],
        [0.90, 0.72, 0.60],
        [0.78, 0.57, 0.42],
        [0.63, 0.43, 0.29],
        [0.45, 0.30, 0.20],
        [0.30, 0.19, 0.13],
    ],
    dtype=torch.float64,
)


def _generator(*key: int | str) -> torch.Generator:
    """A CPU generator seeded with a stable hash of ``key`` (independent of PYTHONHASHSEED and platform)."""
    digest = hashlib.blake2b(repr(("handssl.synthhands", *key)).encode(), digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return generator


def _uniform(generator: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def make_subject(seed: int, index: int) -> Subject:
    """The subject ``index`` of the world ``seed`` (a pure function of both).

    Args:
        seed: World seed.
        index: Subject number.

    Returns:
        The :class:`Subject`.
    """
    generator = _generator("subject", int(seed), int(index))
    scale = _uniform(generator, *_SCALE_RANGE, 1)
    finger = _uniform(generator, 1 - _FINGER_VARIATION, 1 + _FINGER_VARIATION, 5).repeat_interleave(4)
    bone = _uniform(generator, 1 - _BONE_VARIATION, 1 + _BONE_VARIATION, NUM_BONES)
    lengths = template_bone_lengths(torch.float64) * scale * finger * bone
    limits = bone_length_range_tensor(torch.float64)
    lengths = lengths.clamp(limits[:, 0], limits[:, 1])

    tone = _uniform(generator, 0.0, 1.0, 1).item() * (len(_SKIN_TONES) - 1)
    low = min(int(tone), len(_SKIN_TONES) - 2)
    skin = torch.lerp(_SKIN_TONES[low], _SKIN_TONES[low + 1], tone - low)
    skin = (skin + _uniform(generator, -0.02, 0.02, 3)).clamp(0.0, 1.0)
    hue, saturation, value = (
        _uniform(generator, lo, hi, 1).item() for lo, hi in ((0, 1), (0.2, 0.9), (0.15, 0.9))
    )
    sleeve = torch.tensor(colorsys.hsv_to_rgb(hue, saturation, value), dtype=torch.float64)
    radius = _FINGER_RADIUS_MM * scale.item() * _uniform(generator, 0.93, 1.07, 1).item()
    return Subject(
        index=int(index),
        bone_lengths=lengths.float(),
        skin_rgb=skin.float(),
        sleeve_rgb=sleeve.float(),
        finger_radius_mm=float(radius),
    )


# ---------------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------------


@dataclass
class HandPose:
    """Poses of one sequence at some frames, with the kinematic parameters that made them (float32).

    Attributes:
        angles: ``(F, 20, 3)`` joint angles in radians (see :mod:`handssl.kinematics`).
        global_rot: ``(F, 3, 3)`` hand-to-world rotations.
        root_mm: ``(F, 3)`` wrist positions in mm, world frame.
        bone_lengths: ``(20,)`` the subject's bone lengths in mm.
        joints: ``(F, 21, 3)`` world-frame joints in mm.
    """

    angles: Tensor
    global_rot: Tensor
    root_mm: Tensor
    bone_lengths: Tensor
    joints: Tensor


def _frames_tensor(frames: Tensor | list[int]) -> Tensor:
    if isinstance(frames, Tensor):
        if frames.dtype.is_floating_point or frames.dtype.is_complex or frames.dtype == torch.bool:
            raise ValueError(f"frames must hold integers, got dtype {frames.dtype}")
        if frames.dim() != 1:
            raise ValueError(f"frames must be one-dimensional, got shape {tuple(frames.shape)}")
        return frames.to(torch.int64).cpu()
    values = list(frames)
    if not all(isinstance(f, int) and not isinstance(f, bool) for f in values):
        raise ValueError(f"frames must be a list of ints, got {values!r}")
    return torch.tensor(values, dtype=torch.int64)


def _keyframe(seed: int, subject: int, sequence: int, k: int) -> tuple[float, float, Tensor]:
    """Time, hold fraction and perturbed in-limit angles (float64 radians) of keyframe ``k``."""
    generator = _generator("keyframe", seed, subject, sequence, k)
    time = KEYFRAME_SPACING * (k + _uniform(generator, -_KEYFRAME_JITTER, _KEYFRAME_JITTER, 1).item())
    hold = _uniform(generator, *_HOLD_FRACTION, 1).item()
    name = GESTURES[int(torch.multinomial(_GESTURE_WEIGHTS, 1, generator=generator))]
    std = torch.deg2rad(torch.tensor(_PERTURB_STD_DEG, dtype=torch.float64))
    noise = torch.randn(NUM_BONES, 3, generator=generator, dtype=torch.float64) * std
    limits = limits_tensor(torch.float64)
    angles = (gesture_angles(name, torch.float64) + noise).clamp(limits[..., 0], limits[..., 1])
    return time, hold, angles


def _smoothstep(x: Tensor) -> Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _keyframe_angles(seed: int, subject: int, sequence: int, frames: Tensor) -> Tensor:
    """Interpolated keyframe angles ``(F, 20, 3)`` float64 at integer ``frames``."""
    first = torch.div(frames, KEYFRAME_SPACING, rounding_mode="floor")
    candidates = first.unsqueeze(-1) + torch.arange(-1, 3)  # (F, 4): the segment start is among the first 3
    needed = torch.unique(candidates)
    table = [_keyframe(seed, subject, sequence, int(k)) for k in needed]
    times = torch.tensor([t for t, _, _ in table], dtype=torch.float64)
    holds = torch.tensor([h for _, h, _ in table], dtype=torch.float64)
    angles = torch.stack([a for _, _, a in table])
    slots = torch.searchsorted(needed, candidates)  # (F, 4) rows of the table
    t = frames.to(torch.float64)
    started = times[slots[:, :3]] <= t.unsqueeze(-1)
    start = slots.gather(1, (started.sum(-1, keepdim=True) - 1).clamp_min(0)).squeeze(-1)
    end = start + 1
    t0, t1 = times[start], times[end]
    hold_end = t0 + holds[start] * (t1 - t0)
    weight = _smoothstep((t - hold_end) / (t1 - hold_end)).view(-1, 1, 1)
    return torch.lerp(angles[start], angles[end], weight)


@dataclass(frozen=True)
class _Trajectory:
    base: Tensor  # (3, 3) initial orientation
    spin: float  # rad / frame about world z
    swings: Tensor  # (2, 3): amplitude rad, angular frequency rad/frame, phase
    drift: Tensor  # (3, 3): per axis amplitude mm, angular frequency rad/frame, phase
    noise: Tensor  # (2, 20, 3, 3): per component and angle, amplitude rad, angular frequency, phase


def _trajectory(seed: int, subject: int, sequence: int) -> _Trajectory:
    generator = _generator("trajectory", seed, subject, sequence)
    # Uniform random initial orientation: axis-angle from a normalised Gaussian quaternion.
    quaternion = torch.randn(4, generator=generator, dtype=torch.float64)
    quaternion = quaternion / quaternion.norm()
    if quaternion[0] < 0:
        quaternion = -quaternion
    angle = 2 * torch.acos(quaternion[0].clamp(-1.0, 1.0))
    axis = quaternion[1:] / quaternion[1:].norm().clamp_min(1e-12)
    base = axis_angle_to_matrix(axis * angle)
    turn_frames = _uniform(generator, 180.0, 420.0, 1).item()
    spin = (2 * math.pi / turn_frames) * (1 if torch.rand(1, generator=generator).item() < 0.5 else -1)
    swings = torch.stack(
        [
            _uniform(generator, 0.8, 1.6, 2),  # amplitudes: ±45-90°
            2 * math.pi / _uniform(generator, 150.0, 330.0, 2),
            _uniform(generator, 0.0, 2 * math.pi, 2),
        ],
        dim=-1,
    )
    drift = torch.stack(
        [
            _uniform(generator, 10.0, 35.0, 3),
            2 * math.pi / _uniform(generator, 120.0, 360.0, 3),
            _uniform(generator, 0.0, 2 * math.pi, 3),
        ],
        dim=-1,
    )
    amplitude = torch.deg2rad(torch.tensor(_NOISE_AMPLITUDE_DEG, dtype=torch.float64)) / 2
    noise = torch.stack(
        [
            amplitude * _uniform(generator, 0.5, 1.0, 2, NUM_BONES, 3),
            2 * math.pi / _uniform(generator, *_NOISE_PERIOD_FRAMES, 2, NUM_BONES, 3),
            _uniform(generator, 0.0, 2 * math.pi, 2, NUM_BONES, 3),
        ],
        dim=-1,
    )
    return _Trajectory(base=base, spin=spin, swings=swings, drift=drift, noise=noise)


def _sinusoids(params: Tensor, t: Tensor) -> Tensor:
    """``amplitude * sin(frequency * t + phase)`` for ``params (..., 3)`` at times ``t (F,)``: ``(F, ...)``."""
    shape = (-1,) + (1,) * (params.dim() - 1)
    return params[..., 0] * torch.sin(params[..., 1] * t.view(shape) + params[..., 2])


def _axis_rotation(axis: int, angle: Tensor) -> Tensor:
    vector = torch.zeros(*angle.shape, 3, dtype=angle.dtype)
    vector[..., axis] = angle
    return axis_angle_to_matrix(vector)


def sequence_pose(seed: int, subject: Subject, sequence: int, frames: Tensor | list[int]) -> HandPose:
    """Poses and kinematic parameters of one sequence at the given frames (a pure function of the arguments).

    Args:
        seed: World seed.
        subject: The performing subject (its ``index`` seeds the motion, its bone lengths shape the hand).
        sequence: Sequence number.
        frames: ``(F,)`` integer frame numbers, in any order; each is evaluated on its own.

    Returns:
        The :class:`HandPose` (float32).
    """
    frames = _frames_tensor(frames)
    seed, index, sequence = int(seed), int(subject.index), int(sequence)
    t = frames.to(torch.float64)
    trajectory = _trajectory(seed, index, sequence)
    limits = limits_tensor(torch.float64)

    angles = _keyframe_angles(seed, index, sequence, frames)
    noise = _sinusoids(trajectory.noise, t).sum(1)  # (F, 20, 3)
    movable = (limits[..., 1] > limits[..., 0]).to(torch.float64)
    angles = (angles + noise * movable).clamp(limits[..., 0], limits[..., 1])

    swings = _sinusoids(trajectory.swings, t)  # (F, 2)
    global_rot = (
        _axis_rotation(2, trajectory.spin * t)
        @ _axis_rotation(0, swings[:, 0])
        @ _axis_rotation(1, swings[:, 1])
        @ trajectory.base
    )
    lengths = subject.bone_lengths.to(torch.float64)
    centre_in_hand = rest_pose(lengths)[MIDDLE_MCP]
    centre = _sinusoids(trajectory.drift, t)  # (F, 3)
    root = centre - (global_rot @ centre_in_hand)
    joints = forward_kinematics(angles, lengths, global_rot, root)
    return HandPose(
        angles=angles.float(),
        global_rot=global_rot.float(),
        root_mm=root.float(),
        bone_lengths=subject.bone_lengths.float().clone(),
        joints=joints.float(),
    )


def sequence_joints(seed: int, subject: Subject, sequence: int, frames: Tensor | list[int]) -> Tensor:
    """World-frame joints of one sequence at the given frames.

    A pure function of the arguments: any frame can be evaluated alone, in any order, with the same
    result; consecutive frames are close (the motion is smooth).

    Args:
        seed: World seed.
        subject: The performing subject.
        sequence: Sequence number.
        frames: ``(F,)`` integer frame numbers.

    Returns:
        ``(F, 21, 3)`` float32 joints in mm (world frame, z up, hand near the origin).
    """
    return sequence_pose(seed, subject, sequence, frames).joints
