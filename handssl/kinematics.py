"""Kinematic hand model: forward and inverse kinematics, the rest template and THE limits table.

Everything here is pure torch, batched over leading dimensions, float32 or float64, and differentiable
almost everywhere. Joints are in the canonical order of :mod:`handssl.skeleton`, millimetres. The model is
a **right** hand (mirror left hands first, e.g. with :func:`handssl.data.base.mirror_sample`).

Frames
------
*Hand frame* (columns of ``global_rot``, see :func:`hand_frame`): origin at the wrist, ``y`` from the
wrist to the middle MCP (distal), ``z`` the palm normal pointing out of the palm (palmar) – the normal of
the plane (wrist, index MCP, middle MCP) –, ``x = y x z`` towards the thumb (radial). World joints are
``root_mm + global_rot @ joint_hand``; ``root_mm`` is the wrist.

Every bone ``b`` (``skeleton.BONES[b] = (parent, child)``) carries a frame ``F_b`` whose ``y`` axis runs
along the bone; ``z`` is the bone's flexion side (palmar) and ``x = y x z``. ``F_b = F_ref @ R(f, a, t)``
with ``R(f, a, t) = Rx(f) @ Rz(-a) @ Ry(t)``, where ``F_ref`` is the frame the bone rotates from:

* palm bones (wrist -> thumb CMC / finger MCPs, ``level 0``): the template metacarpal frame in the hand
  frame; their angles say how the palm's shape deviates from the template;
* first chain bone (``level 1``, rotation at the thumb CMC / finger MCP): the palm bone's frame followed
  by a fixed *neutral* offset (so zero angles give a flat hand with slightly fanned, straight fingers and
  an extended, half-pronated thumb);
* ``levels 2, 3`` (finger PIP / DIP, thumb MCP / IP): the previous bone's frame.

Angles ``(..., 20, 3)`` in radians, row ``b`` for bone ``b`` (``BONES`` order, so ``4 * finger + level``):

* column 0 **flexion** ``f``: rotation about the reference ``x``; positive bends the bone towards the
  reference ``z`` (palm side, i.e. curls the finger), negative is extension / hyper-extension.
* column 1 **abduction** ``a``: deviation out of the reference flexion (y-z) plane; positive towards the
  reference ``x``, i.e. towards the thumb (radial) for the four fingers, away from the palm plane and
  index finger for the thumb.
* column 2 **twist** ``t``: rotation about the bone's own axis (right-hand rule about ``y``: positive
  turns the flexion side ``z`` towards ``x``, i.e. radially for the fingers); it moves nothing by itself
  and only turns the flexion plane of the bones after it.

The bone direction in its reference frame is ``(sin a, cos a cos f, cos a sin f)``, so
``a = asin(d_x)`` and ``f = atan2(d_z, d_y)``.

Inverse kinematics (:func:`inverse_kinematics`) gives, for any 21 joints, parameters whose forward
kinematics reproduces the joints exactly (up to rounding: ~1e-9 mm in float64, ~1e-4 mm in float32).
What joint positions cannot tell apart is fixed by convention:

* the hand frame comes from the wrist, index MCP and middle MCP, so the middle palm bone's angles and the
  index palm bone's flexion are 0 by construction (their limits are ``[0, 0]``);
* palm bones and levels 2-3 have twist 0 (never observable: only the directions of later bones are);
* the level-1 twist is the rotation, about the first chain bone, of the finger's flexion plane (normal:
  see :func:`finger_twist`), in ``(-pi/2, pi/2]``; it tends to 0 smoothly as the finger straightens,
  where it is unobservable.

In the limits table the hinge joints (finger PIP/DIP, thumb MCP/IP) have zero abduction and twist, so an
in-limit pose has planar fingers and the inverse kinematics gives back its angles (up to the twist of a
straight finger): ``IK(FK(angles))`` stays inside the limits, which makes :func:`handssl.biomech.correct`
idempotent.

The limits table (:data:`JOINT_LIMITS`, :data:`BONE_LENGTH_LIMITS`, as tensors :func:`limits_tensor`,
:func:`bone_length_range_tensor`, :func:`bone_ratio_range_tensor`) is the single source of truth for
both the SynthHands pose sampler and :mod:`handssl.biomech`; every row names its source.

The rest template (:func:`rest_pose`, :func:`template_bone_lengths`) is a mean adult right hand: wrist ->
middle MCP 80 mm, middle finger 45 / 28 / 23 mm (the reference bone, middle MCP -> PIP, is 45 mm), hand
length 176 mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from handssl.skeleton import BONES, FINGER_NAMES, JOINT_NAMES, MCPS, NUM_JOINTS, REFERENCE_BONE

__all__ = [
    "BONE_LENGTH_LIMITS",
    "JOINT_LIMITS",
    "NUM_BONES",
    "BoneLengthLimit",
    "HandParams",
    "JointLimit",
    "bone_length_range_tensor",
    "bone_lengths_of",
    "bone_ratio_range_tensor",
    "bone_rotation",
    "dot3",
    "finger_twist",
    "forward_kinematics",
    "hand_frame",
    "inverse_kinematics",
    "inverse_kinematics_and_bend",
    "limits_tensor",
    "norm3",
    "palm_parameters",
    "rest_pose",
    "swing_angles",
    "template_bone_lengths",
    "template_frames",
]

NUM_BONES = len(BONES)
"""Number of bones (and rows of the angle tensor): 20."""

_EPS = 1e-9
# Weight of the neutral direction in the flexion-plane normal: makes the level-1 twist go to 0 smoothly as
# the finger straightens (bends below ~1e-6 rad), far below any bend that matters but above rounding noise.
_TWIST_PRIOR = 1e-6
_TWIST_PRIOR_F64 = 1e-10

# ---------------------------------------------------------------------------------------------------
# Rest template (right hand, hand frame: x radial, y distal, z palmar; mm). Mean adult proportions:
# wrist -> middle MCP 80 mm, middle finger 45 / 28 / 23 mm, hand length ~176 mm.
# ---------------------------------------------------------------------------------------------------

_PALM_BASES_MM: dict[str, tuple[float, float, float]] = {
    "thumb": (26.0, 23.0, 12.0),  # thumb CMC keypoint, on the carpus, radial and palmar of the wrist
    "index": (22.0, 78.0, 0.0),  # index and middle MCPs define the hand frame: z must be 0
    "middle": (0.0, 80.0, 0.0),
    "ring": (-18.0, 74.0, 4.0),  # ring and little MCPs sit a little palmar (transverse metacarpal arch)
    "pinky": (-34.0, 65.0, 8.0),
}
_CHAIN_LENGTHS_MM: dict[str, tuple[float, float, float]] = {
    "thumb": (42.0, 32.0, 28.0),
    "index": (42.0, 25.0, 22.0),
    "middle": (45.0, 28.0, 23.0),
    "ring": (42.0, 27.0, 22.0),
    "pinky": (34.0, 20.0, 20.0),
}
# Rest direction of each straight finger, degrees from the hand's y axis towards radial (+x), in the palm
# plane: a relaxed flat hand with the fingers slightly fanned.
_FINGER_FAN_DEG: dict[str, float] = {"index": 6.0, "middle": 0.0, "ring": -6.0, "pinky": -14.0}
# Thumb rest direction (extended, radial-distal, a little palmar) and pronation of its flexion side from
# the palm normal towards the fingers (the thumb pad faces the index finger).
_THUMB_REST_DIRECTION = (0.62, 0.74, 0.26)
_THUMB_PRONATION_DEG = 60.0


# ---------------------------------------------------------------------------------------------------
# The limits table: the single source of truth for the SynthHands pose sampler and handssl.biomech.
# ---------------------------------------------------------------------------------------------------

_KLBR = "semihand_method.md §3.2 (KLBR: Chen 2021 thesis, Table 6.1)"
_ANATOMY = "standard clinical range of motion (AAOS / AMA Guides active ranges)"
_HINGE = (
    "model: hinge joint (flexion only); KLBR allows 4° of abduction/twist, Spurr et al. ECCV'20 "
    "constrain only flexion/abduction — here exact hinges so that in-limit fingers are planar"
)
_FRAME = "model: defines the hand frame (wrist, index MCP, middle MCP), so it is 0 by construction"
_PALM = (
    "this library: palm-shape spread around the template (2nd/3rd metacarpals rigid, 4th/5th CMC "
    "flex ~10-15°/20-30° in cupping; standard anatomy)"
)


@dataclass(frozen=True)
class JointLimit:
    """Limits of one row of the angle tensor: the rotation of bone ``bone`` in its reference frame.

    Attributes:
        bone: Bone index in :data:`handssl.skeleton.BONES` (= row of the angle tensor).
        name: Joint where the rotation happens, e.g. ``"index_mcp"``; ``"<finger>_palm"`` for palm bones.
        flexion_deg: ``(min, max)`` flexion in degrees; ``-min`` is the allowed extension.
        abduction_deg: ``(min, max)`` abduction in degrees (positive radial / towards reference x).
        twist_deg: ``(min, max)`` twist about the bone in degrees.
        source: Where the values come from.
    """

    bone: int
    name: str
    flexion_deg: tuple[float, float]
    abduction_deg: tuple[float, float]
    twist_deg: tuple[float, float]
    source: str


@dataclass(frozen=True)
class BoneLengthLimit:
    """Template length and admissible range of one bone.

    Attributes:
        bone: Bone index in :data:`handssl.skeleton.BONES`.
        name: ``"<parent>-<child>"`` joint names.
        template_mm: Length in the mean adult template hand.
        range_mm: ``(min, max)`` absolute length in mm.
        ratio_range: ``(min, max)`` length divided by the reference bone (middle MCP -> PIP).
        source: Where the values come from.
    """

    bone: int
    name: str
    template_mm: float
    range_mm: tuple[float, float]
    ratio_range: tuple[float, float]
    source: str


def _joint_limits() -> tuple[JointLimit, ...]:
    zero = (0.0, 0.0)
    rows: list[JointLimit] = []
    for finger_index, finger in enumerate(FINGER_NAMES):
        bone = 4 * finger_index
        if finger == "thumb":
            levels = [
                ("thumb_palm", (-10.0, 10.0), (-10.0, 10.0), zero, _PALM),
                ("thumb_cmc", (-20.0, 45.0), (-30.0, 30.0), (-20.0, 20.0), f"{_KLBR}: thumb base 45/45/30/20; extension narrowed to 20° from the (extended) neutral"),
                ("thumb_mcp", (-10.0, 60.0), zero, zero, f"flexion/extension {_ANATOMY} (0-60°/10°); {_HINGE}"),
                ("thumb_ip", (-15.0, 80.0), zero, zero, f"flexion/extension {_ANATOMY} (0-80°/15°); {_HINGE}"),
            ]  # fmt: skip
        else:
            palm = {
                "index": ((0.0, 0.0), (-5.0, 5.0), f"flexion: {_FRAME}; abduction: {_PALM}"),
                "middle": (zero, zero, _FRAME),
                "ring": ((-5.0, 10.0), (-5.0, 5.0), _PALM),
                "pinky": ((-5.0, 20.0), (-8.0, 8.0), _PALM),
            }[finger]
            levels = [
                (f"{finger}_palm", palm[0], palm[1], zero, palm[2]),
                (f"{finger}_mcp", (-45.0, 90.0), (-30.0, 30.0), (-20.0, 20.0), f"{_KLBR}: MCP flexion 90, extension 45, ab/adduction 30, twist 20"),
                (f"{finger}_pip", (-10.0, 110.0), zero, zero, f"flexion {_ANATOMY} (100-110°; KLBR allows 135), extension {_KLBR} (10°); {_HINGE}"),
                (f"{finger}_dip", (-30.0, 90.0), zero, zero, f"flexion {_KLBR} and {_ANATOMY} (90°), hyper-extension {_ANATOMY} (passive 20-30°; KLBR allows 45); {_HINGE}"),
            ]  # fmt: skip
        for level, (name, flexion, abduction, twist, source) in enumerate(levels):
            rows.append(JointLimit(bone + level, name, flexion, abduction, twist, source))
    return tuple(rows)


JOINT_LIMITS: tuple[JointLimit, ...] = _joint_limits()
"""The 20 angle limits, row ``b`` for bone ``b`` (see the module docstring for the angle conventions)."""

_LENGTH_SCALE_RANGE = (0.7, 1.35)
_RATIO_SCALE_RANGE = (0.8, 1.25)
_LENGTH_SOURCE = (
    "this library: mean adult template (hand anthropometry) x [0.7, 1.35] (adult hand-size spread of about "
    "±15 % times per-bone proportion and annotation spread of about ±15 %); ratios to the reference bone: "
    "template ratio x [0.8, 1.25]"
)


def _template_lengths_list() -> list[float]:
    lengths = []
    for finger in FINGER_NAMES:
        lengths.append(math.sqrt(sum(c * c for c in _PALM_BASES_MM[finger])))
        lengths.extend(_CHAIN_LENGTHS_MM[finger])
    return lengths


def _bone_length_limits() -> tuple[BoneLengthLimit, ...]:
    lengths = _template_lengths_list()
    reference = lengths[BONES.index(REFERENCE_BONE)]
    rows = []
    for bone, (parent, child) in enumerate(BONES):
        length = lengths[bone]
        ratio = length / reference
        ratio_range = (
            (1.0, 1.0) if (parent, child) == REFERENCE_BONE else tuple(ratio * s for s in _RATIO_SCALE_RANGE)
        )
        rows.append(
            BoneLengthLimit(
                bone=bone,
                name=f"{JOINT_NAMES[parent]}-{JOINT_NAMES[child]}",
                template_mm=length,
                range_mm=(length * _LENGTH_SCALE_RANGE[0], length * _LENGTH_SCALE_RANGE[1]),
                ratio_range=ratio_range,  # type: ignore[arg-type]
                source=_LENGTH_SOURCE,
            )
        )
    return tuple(rows)


BONE_LENGTH_LIMITS: tuple[BoneLengthLimit, ...] = _bone_length_limits()
"""Template length and admissible ranges of the 20 bones, in ``BONES`` order."""


_TABLES_F64: dict[str, Tensor] = {
    "limits": torch.deg2rad(
        torch.tensor(
            [[row.flexion_deg, row.abduction_deg, row.twist_deg] for row in JOINT_LIMITS], dtype=torch.float64
        )
    ),
    "length_range": torch.tensor([row.range_mm for row in BONE_LENGTH_LIMITS], dtype=torch.float64),
    "ratio_range": torch.tensor([row.ratio_range for row in BONE_LENGTH_LIMITS], dtype=torch.float64),
    "template_lengths": torch.tensor([row.template_mm for row in BONE_LENGTH_LIMITS], dtype=torch.float64),
}
_TABLE_CACHE: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}


def _table(name: str, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """A cached copy of one limits table in ``dtype`` on ``device`` (read-only: callers must not modify it)."""
    key = (name, dtype, torch.device("cpu" if device is None else device))
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = _TABLES_F64[name].to(dtype=dtype, device=key[2])
    return _TABLE_CACHE[key]


def limits_tensor(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The angle limits as a ``(20, 3, 2)`` tensor: ``[bone, (flexion, abduction, twist), (min, max)]``, radians."""
    return _table("limits", dtype, device).clone()


def bone_length_range_tensor(
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Admissible absolute bone lengths, ``(20, 2)`` ``(min, max)`` in mm."""
    return _table("length_range", dtype, device).clone()


def bone_ratio_range_tensor(
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Admissible bone lengths relative to the reference bone (middle MCP -> PIP), ``(20, 2)``."""
    return _table("ratio_range", dtype, device).clone()


def template_bone_lengths(
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Bone lengths of the mean adult template hand, ``(20,)`` mm in ``BONES`` order."""
    return _table("template_lengths", dtype, device).clone()


# ---------------------------------------------------------------------------------------------------
# Rotations and template frames
# ---------------------------------------------------------------------------------------------------


def bone_rotation(flexion: Tensor, abduction: Tensor, twist: Tensor) -> Tensor:
    """``R(f, a, t) = Rx(f) @ Rz(-a) @ Ry(t)``, the rotation of a bone in its reference frame.

    Args:
        flexion: ``(...)`` flexion in radians.
        abduction: ``(...)`` abduction in radians.
        twist: ``(...)`` twist in radians.

    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    cf, sf = torch.cos(flexion), torch.sin(flexion)
    ca, sa = torch.cos(abduction), torch.sin(abduction)
    ct, st = torch.cos(twist), torch.sin(twist)
    sa_ct, sa_st = sa * ct, sa * st
    entries = (
        ca * ct, sa, ca * st,
        sf * st - cf * sa_ct, cf * ca, -cf * sa_st - sf * ct,
        -sf * sa_ct - cf * st, sf * ca, cf * ct - sf * sa_st,
    )  # fmt: skip
    return torch.stack(entries, -1).unflatten(-1, (3, 3))


def _frame_from_y_and_z(y: Tensor, z_hint: Tensor) -> Tensor:
    """Right-handed frame (columns x, y, z) with ``y`` given and ``z`` as close as possible to ``z_hint``."""
    y = y / y.norm(dim=-1, keepdim=True)
    z = z_hint - (z_hint * y).sum(-1, keepdim=True) * y
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(y, z, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def _template_frames() -> tuple[Tensor, Tensor]:
    """Palm-bone rest frames ``M`` and neutral offsets ``N`` (both ``(5, 3, 3)``, float64)."""
    z_axis = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    palm_frames, chain_frames = [], []
    for finger in FINGER_NAMES:
        base = torch.tensor(_PALM_BASES_MM[finger], dtype=torch.float64)
        palm_frames.append(_frame_from_y_and_z(base, z_axis))
        if finger == "thumb":
            y = torch.tensor(_THUMB_REST_DIRECTION, dtype=torch.float64)
            flat = _frame_from_y_and_z(y, z_axis)
            angle = math.radians(_THUMB_PRONATION_DEG)
            z = math.cos(angle) * flat[:, 2] - math.sin(angle) * flat[:, 0]
            chain_frames.append(_frame_from_y_and_z(y, z))
        else:
            fan = math.radians(_FINGER_FAN_DEG[finger])
            y = torch.tensor([math.sin(fan), math.cos(fan), 0.0], dtype=torch.float64)
            chain_frames.append(_frame_from_y_and_z(y, z_axis))
    palm = torch.stack(palm_frames)
    chain = torch.stack(chain_frames)
    return palm, palm.transpose(-1, -2) @ chain


_PALM_FRAMES_F64, _NEUTRAL_OFFSETS_F64 = _template_frames()
_TEMPLATE_CACHE: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def template_frames(
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """The template's palm-bone rest frames and the fingers' neutral offsets, ``(5, 3, 3)`` each.

    Finger ``k``'s palm-bone frame in hand coordinates is ``palm[k] @ R(row 0)``; the reference frame of its
    first chain bone is that frame times ``neutral[k]``.
    """
    return _template(dtype, torch.device("cpu" if device is None else device))


def _template(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    key = (dtype, device)
    if key not in _TEMPLATE_CACHE:
        _TEMPLATE_CACHE[key] = (
            _PALM_FRAMES_F64.to(dtype=dtype, device=device),
            _NEUTRAL_OFFSETS_F64.to(dtype=dtype, device=device),
        )
    return _TEMPLATE_CACHE[key]


# ---------------------------------------------------------------------------------------------------
# Forward / inverse kinematics
# ---------------------------------------------------------------------------------------------------


@dataclass
class HandParams:
    """Parameters of the kinematic hand model (see the module docstring for every convention).

    Attributes:
        global_rot: ``(..., 3, 3)`` hand-to-world rotation (columns: the hand's x, y, z axes).
        root_mm: ``(..., 3)`` wrist position in mm.
        angles: ``(..., 20, 3)`` (flexion, abduction, twist) per bone in radians.
        bone_lengths: ``(..., 20)`` mm in ``BONES`` order.
    """

    global_rot: Tensor
    root_mm: Tensor
    angles: Tensor
    bone_lengths: Tensor


def _check_shape(name: str, x: Tensor, tail: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < len(tail) or tuple(x.shape[x.dim() - len(tail) :]) != tail:
        raise ValueError(f"{name} must have shape (..., {', '.join(map(str, tail))}), got {tuple(x.shape)}")


def forward_kinematics(
    angles: Tensor,
    bone_lengths: Tensor,
    global_rot: Tensor | None = None,
    root_mm: Tensor | None = None,
) -> Tensor:
    """Joint positions of the kinematic hand model.

    Args:
        angles: ``(..., 20, 3)`` (flexion, abduction, twist) per bone, radians.
        bone_lengths: ``(..., 20)`` bone lengths in mm, ``BONES`` order.
        global_rot: Optional ``(..., 3, 3)`` hand-to-world rotation; identity by default.
        root_mm: Optional ``(..., 3)`` wrist position in mm; the origin by default.

    Returns:
        ``(..., 21, 3)`` joints in mm, canonical order; leading dimensions broadcast.
    """
    _check_shape("angles", angles, (NUM_BONES, 3))
    _check_shape("bone_lengths", bone_lengths, (NUM_BONES,))
    dtype, device = angles.dtype, angles.device
    bone_lengths = bone_lengths.to(dtype)
    shapes = [angles.shape[:-2], bone_lengths.shape[:-1]]
    if global_rot is not None:
        _check_shape("global_rot", global_rot, (3, 3))
        shapes.append(global_rot.shape[:-2])
    if root_mm is not None:
        _check_shape("root_mm", root_mm, (3,))
        shapes.append(root_mm.shape[:-1])
    batch = torch.broadcast_shapes(*shapes)

    palm_frames, neutral = _template(dtype, device)
    rotations = bone_rotation(angles[..., 0], angles[..., 1], angles[..., 2])  # (..., 20, 3, 3)
    rotations = rotations.reshape(*angles.shape[:-2], 5, 4, 3, 3)
    lengths = bone_lengths.reshape(*bone_lengths.shape[:-1], 5, 4)

    frame = palm_frames @ rotations[..., 0, :, :]  # palm-bone frames in hand coordinates, (..., 5, 3, 3)
    directions = [frame[..., :, 1]]
    frame = frame @ neutral
    for level in (1, 2, 3):
        frame = frame @ rotations[..., level, :, :]
        directions.append(frame[..., :, 1])
    steps = torch.stack(directions, dim=-2) * lengths.unsqueeze(-1)  # (..., 5, 4, 3) hand frame
    finger_joints = steps.cumsum(dim=-2).reshape(*steps.shape[:-3], 20, 3)
    joints = torch.cat([torch.zeros_like(finger_joints[..., :1, :]), finger_joints], dim=-2)
    joints = joints.expand(*batch, NUM_JOINTS, 3)
    if global_rot is not None:
        joints = joints @ global_rot.to(dtype).transpose(-1, -2)
    if root_mm is not None:
        joints = joints + root_mm.to(dtype).unsqueeze(-2)
    return joints


def rest_pose(
    bone_lengths: Tensor | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Joints of the zero-angle pose in the hand frame (wrist at the origin).

    Args:
        bone_lengths: Optional ``(..., 20)`` bone lengths in mm; the template's by default.
        dtype: Dtype when ``bone_lengths`` is not given.
        device: Device when ``bone_lengths`` is not given.

    Returns:
        ``(..., 21, 3)`` joints in mm.
    """
    if bone_lengths is None:
        bone_lengths = template_bone_lengths(dtype, device)
    _check_shape("bone_lengths", bone_lengths, (NUM_BONES,))
    angles = torch.zeros(
        *bone_lengths.shape[:-1], NUM_BONES, 3, dtype=bone_lengths.dtype, device=bone_lengths.device
    )
    return forward_kinematics(angles, bone_lengths)


def dot3(a: Tensor, b: Tensor) -> Tensor:
    """Dot product over a last dimension of size 3, ``(...)`` (spelled out: much faster than a reduction)."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def norm3(v: Tensor) -> Tensor:
    """Euclidean norm over a last dimension of size 3, ``(...)``."""
    return dot3(v, v).sqrt()


def _unit(v: Tensor) -> tuple[Tensor, Tensor]:
    norm = norm3(v)
    return v / norm.clamp_min(_EPS).unsqueeze(-1), norm


def hand_frame(joints: Tensor) -> Tensor:
    """The hand frame of a pose: ``y`` wrist -> middle MCP, ``z`` palmar normal of (wrist, index MCP, middle MCP).

    Args:
        joints: ``(..., 21, 3)`` canonical joints.

    Returns:
        ``(..., 3, 3)`` rotation whose columns are the hand's x (radial), y (distal), z (palmar) axes.
    """
    _check_shape("joints", joints, (NUM_JOINTS, 3))
    wrist = joints[..., 0, :]
    y, _ = _unit(joints[..., MCPS[2], :] - wrist)
    z, _ = _unit(torch.linalg.cross(joints[..., MCPS[1], :] - wrist, y, dim=-1))
    x = torch.linalg.cross(y, z, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def bone_lengths_of(joints: Tensor) -> Tensor:
    """Lengths of the 20 bones of ``(..., 21, 3)`` joints, ``(..., 20)`` in the joints' unit."""
    _check_shape("joints", joints, (NUM_JOINTS, 3))
    parents, children = zip(*BONES)
    return norm3(joints[..., list(children), :] - joints[..., list(parents), :])


def swing_angles(direction_local: Tensor) -> tuple[Tensor, Tensor]:
    """Flexion and abduction of a unit bone direction ``(..., 3)`` given in its reference frame.

    The inverse of ``bone_rotation(f, a, t) @ [0, 1, 0] = (sin a, cos a cos f, cos a sin f)``:
    ``f = atan2(d_z, d_y)``, ``a = asin(d_x)``. Returns ``(flexion, abduction)`` in radians, ``(...)`` each.
    """
    flexion = torch.atan2(direction_local[..., 2], direction_local[..., 1])
    abduction = torch.asin(direction_local[..., 0].clamp(-1.0, 1.0))
    return flexion, abduction


def _local(frame: Tensor, vector: Tensor) -> Tensor:
    """Coordinates of ``vector (..., 3)`` in ``frame (..., 3, 3)`` (columns = axes)."""
    return (frame.transpose(-1, -2) @ vector.unsqueeze(-1)).squeeze(-1)


def palm_parameters(joints: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The palm part of :func:`inverse_kinematics`: hand frame, palm-bone angles and palm-bone lengths.

    Args:
        joints: ``(..., 21, 3)`` canonical joints in mm (a right hand).

    Returns:
        ``hand (..., 3, 3)`` (:func:`hand_frame`), ``angles (..., 5, 2)`` (flexion, abduction) of the five
        palm bones (wrist -> thumb CMC / finger MCPs) in their template frames, and their ``lengths (..., 5)``.
    """
    hand = hand_frame(joints)
    palm_frames, _ = _template(joints.dtype, joints.device)
    bases = joints[..., list(MCPS), :] - joints[..., :1, :]
    directions, lengths = _unit(bases)
    local = (directions.unsqueeze(-2) @ (hand.unsqueeze(-3) @ palm_frames)).squeeze(-2)
    flexion, abduction = swing_angles(local)
    return hand, torch.stack([flexion, abduction], dim=-1), lengths


def finger_twist(base: Tensor, chain: Tensor, axis_x: Tensor, axis_z: Tensor) -> tuple[Tensor, Tensor]:
    """Twist of a finger's first chain bone: how its flexion plane is turned about the bone.

    The flexion plane's normal is estimated from the chain's points relative to the base (scale-free: divided
    by the chain length) as the sum of the pairwise cross products, each oriented towards the untwisted
    frame's ``x``; the twist is the angle of that normal from ``x`` about the bone, in ``(-pi/2, pi/2]`` for
    in-limit fingers. A tiny prior towards ``x`` makes it go to 0 smoothly as the finger straightens.

    Args:
        base: ``(..., 3)`` finger base (MCP, thumb CMC).
        chain: ``(..., 3, 3)`` the finger's next three joints (e.g. PIP, DIP, tip).
        axis_x: ``(..., 3)`` x axis of the first chain bone's frame with zero twist.
        axis_z: ``(..., 3)`` z axis of that frame.

    Returns:
        ``(twist, bend)``, ``(...)`` each: twist in radians; bend = the normal's length before the prior
        (0 for a straight finger; about ``0.5 sin(b)`` for a single bend ``b`` at the PIP).
    """
    p0, p1, p2 = (chain[..., i, :] - base for i in range(3))
    chain_length = norm3(p0) + norm3(p1 - p0) + norm3(p2 - p1)
    scale = 1.0 / chain_length.clamp_min(_EPS).unsqueeze(-1)
    p0, p1, p2 = p0 * scale, p1 * scale, p2 * scale
    normal = torch.zeros_like(base)
    for a, b in ((p0, p1), (p0, p2), (p1, p2)):
        cross = torch.linalg.cross(a, b, dim=-1)
        normal = normal + torch.sign(dot3(cross, axis_x)).unsqueeze(-1) * cross
    bend = norm3(normal)
    prior = _TWIST_PRIOR_F64 if base.dtype == torch.float64 else _TWIST_PRIOR
    normal = normal + prior * axis_x
    twist = torch.atan2(-dot3(normal, axis_z), dot3(normal, axis_x))
    return twist, bend


def inverse_kinematics_and_bend(joints: Tensor) -> tuple[HandParams, Tensor]:
    """:func:`inverse_kinematics` plus how well each finger's base twist is observed.

    Args:
        joints: ``(..., 21, 3)`` canonical joints in mm (a right hand).

    Returns:
        The :class:`HandParams` and the ``(..., 5)`` per-finger bend of :func:`finger_twist` (0 for a
        straight finger, whose twist is unobservable).
    """
    _check_shape("joints", joints, (NUM_JOINTS, 3))
    palm_frames, neutral = _template(joints.dtype, joints.device)
    hand, palm_angles, palm_lengths = palm_parameters(joints)
    flexion0, abduction0 = palm_angles.unbind(-1)
    zeros = torch.zeros_like(flexion0)
    reference = hand.unsqueeze(-3) @ palm_frames @ bone_rotation(flexion0, abduction0, zeros) @ neutral

    finger_joints = joints[..., 1:, :].reshape(*joints.shape[:-2], 5, 4, 3)
    directions, lengths = _unit(finger_joints[..., 1:, :] - finger_joints[..., :-1, :])  # (..., 5, 3, ...)
    lengths = torch.cat([palm_lengths.unsqueeze(-1), lengths], dim=-1)
    flexion1, abduction1 = swing_angles(_local(reference, directions[..., 0, :]))
    untwisted = reference @ bone_rotation(flexion1, abduction1, zeros)
    twist1, bend = finger_twist(
        finger_joints[..., 0, :], finger_joints[..., 1:, :], untwisted[..., :, 0], untwisted[..., :, 2]
    )
    d2, d3 = directions[..., 1, :], directions[..., 2, :]
    frame1 = reference @ bone_rotation(flexion1, abduction1, twist1)

    flexion2, abduction2 = swing_angles(_local(frame1, d2))
    frame2 = frame1 @ bone_rotation(flexion2, abduction2, zeros)
    flexion3, abduction3 = swing_angles(_local(frame2, d3))

    flexion = torch.stack([flexion0, flexion1, flexion2, flexion3], dim=-1)
    abduction = torch.stack([abduction0, abduction1, abduction2, abduction3], dim=-1)
    twist = torch.stack([zeros, twist1, zeros, zeros], dim=-1)
    angles = torch.stack([flexion, abduction, twist], dim=-1).reshape(*joints.shape[:-2], NUM_BONES, 3)
    params = HandParams(
        global_rot=hand,
        root_mm=joints[..., 0, :],
        angles=angles,
        bone_lengths=lengths.reshape(*joints.shape[:-2], NUM_BONES),
    )
    return params, bend


def inverse_kinematics(joints: Tensor) -> HandParams:
    """Model parameters of a pose, such that forward kinematics of them gives back ``joints``.

    Exact for any 21 joints without coincident points (the angles absorb whatever the pose does, in or
    outside the limits); for poses made by :func:`forward_kinematics` from in-limit angles it returns
    those angles, except the level-1 twist of a straight finger, which is unobservable and comes back 0.

    Args:
        joints: ``(..., 21, 3)`` canonical joints in mm (a right hand).

    Returns:
        The :class:`HandParams`; ``root_mm`` is the wrist, ``global_rot`` is :func:`hand_frame`.
    """
    return inverse_kinematics_and_bend(joints)[0]
