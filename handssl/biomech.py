"""Biomechanical feasibility of hand poses: measurements, violations, correction and soft losses.

Everything is measured with the kinematic model of :mod:`handssl.kinematics` and judged against its
single limits table (:data:`handssl.kinematics.JOINT_LIMITS`, :data:`handssl.kinematics.BONE_LENGTH_LIMITS`).
Poses are ``(..., 21, 3)`` canonical right-hand joints in mm; every function is batched and vectorised
(no Python loop over poses) and runs on any device.

* :func:`bone_lengths`, :func:`joint_angles`: the pose's bone lengths and (flexion, abduction, twist).
* :func:`violations`, :func:`is_feasible`: how far each angle and bone length lies outside its range.
* :func:`correct`: a feasible pose close to the input (the label-correction step of SemiHand-style
  pseudo-labelling, with KLBR-style angle rectification): the palm is made feasible and registered rigidly
  onto the input palm, bone lengths are set to a template's or clamped into their ranges, joint angles are
  clamped into their limits, and the fingers are re-posed along the kinematic chain. A feasible pose comes
  back unchanged and ``correct(correct(x)) == correct(x)``.
* :func:`bone_length_loss`, :func:`joint_angle_loss`: differentiable interval hinge losses after Spurr et
  al., ECCV'20 ("Weakly supervised 3D hand pose estimation via biomechanical constraints"), zero (with zero
  gradient) inside the limits, usable as regularisers on predicted 3D poses.

Caveats: the twist of a nearly straight finger is unobservable (see :mod:`handssl.kinematics`), so its
measured value is noisy there; :func:`joint_angle_loss` down-weights it by how bent the finger is. The
absolute bone-length ranges assume metric poses; for scale-normalised poses use ``relative=True``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from handssl.geometry import similarity_procrustes
from handssl.kinematics import (
    NUM_BONES,
    bone_length_range_tensor,
    bone_lengths_of,
    bone_ratio_range_tensor,
    bone_rotation,
    dot3,
    finger_twist,
    forward_kinematics,
    hand_frame,
    inverse_kinematics,
    inverse_kinematics_and_bend,
    limits_tensor,
    norm3,
    swing_angles,
    template_frames,
)
from handssl.skeleton import BONES, MCPS, NUM_JOINTS, REFERENCE_BONE

__all__ = [
    "Violations",
    "bone_length_loss",
    "bone_lengths",
    "correct",
    "interval_hinge",
    "is_feasible",
    "joint_angle_loss",
    "joint_angles",
    "violations",
]

Reduction = Literal["mean", "sum", "none"]

_PALM_ROWS = tuple(4 * finger for finger in range(5))  # angle rows of the palm bones
_LEVEL1_ROWS = tuple(4 * finger + 1 for finger in range(5))  # rows whose twist is measured
# A finger this bent (the bend measure of kinematics.finger_twist, about 0.5 sin(b) for one bend b, so
# b of about 12°) has a fully trusted twist in the angle loss; straighter fingers weigh it down linearly.
_TWIST_TRUST_BEND = 0.1


def interval_hinge(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``max(low - x, 0) + max(x - high, 0)``: 0 inside ``[low, high]``, the distance to it outside."""
    return (low - x).clamp_min(0) + (x - high).clamp_min(0)


def bone_lengths(joints: Tensor) -> Tensor:
    """Lengths of the 20 bones, ``(..., 20)`` mm in ``skeleton.BONES`` order."""
    return bone_lengths_of(joints)


def joint_angles(joints: Tensor) -> Tensor:
    """(flexion, abduction, twist) per bone in radians, ``(..., 20, 3)`` (conventions: :mod:`handssl.kinematics`)."""
    return inverse_kinematics(joints).angles


class Violations(NamedTuple):
    """How far a pose lies outside the limits (0 where inside).

    Attributes:
        angles_rad: ``(..., 20, 3)`` excess of each (flexion, abduction, twist) over its range, radians.
        bone_lengths_mm: ``(..., 20)`` excess of each bone length over its range, mm.
    """

    angles_rad: Tensor
    bone_lengths_mm: Tensor


def violations(joints: Tensor) -> Violations:
    """Per-angle and per-bone violations of the limits table.

    Args:
        joints: ``(..., 21, 3)`` canonical right-hand joints in mm.

    Returns:
        The :class:`Violations`.
    """
    params = inverse_kinematics(joints)
    limits = limits_tensor(joints.dtype, joints.device)
    ranges = bone_length_range_tensor(joints.dtype, joints.device)
    return Violations(
        angles_rad=interval_hinge(params.angles, limits[..., 0], limits[..., 1]),
        bone_lengths_mm=interval_hinge(params.bone_lengths, ranges[:, 0], ranges[:, 1]),
    )


def is_feasible(joints: Tensor, tol_deg: float = 0.5, tol_mm: float = 0.5) -> Tensor:
    """Whether each pose satisfies every angle limit and bone-length range, up to tolerances.

    Args:
        joints: ``(..., 21, 3)`` canonical right-hand joints in mm.
        tol_deg: Largest allowed angle violation in degrees.
        tol_mm: Largest allowed bone-length violation in mm.

    Returns:
        ``(...)`` bool tensor.
    """
    if tol_deg < 0 or tol_mm < 0:
        raise ValueError(f"tolerances must be non-negative, got tol_deg={tol_deg}, tol_mm={tol_mm}")
    found = violations(joints)
    angle_ok = found.angles_rad.flatten(-2).amax(-1) <= torch.deg2rad(torch.tensor(tol_deg)).item()
    length_ok = found.bone_lengths_mm.amax(-1) <= tol_mm
    return angle_ok & length_ok


def _template_parts(
    template: Tensor, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Bone lengths ``(..., 20)`` and, for a joints template, its palm-bone (flexion, abduction) ``(..., 5, 2)``."""
    template = template.to(dtype=dtype, device=device)
    if template.shape[-2:] == (NUM_JOINTS, 3):
        params = inverse_kinematics(template)
        return params.bone_lengths, params.angles[..., list(_PALM_ROWS), :2]
    if template.shape[-1:] == (NUM_BONES,):
        return template, None
    raise ValueError(
        f"template must be bone lengths (..., {NUM_BONES}) or joints (..., {NUM_JOINTS}, 3), "
        f"got shape {tuple(template.shape)}"
    )


def correct(joints: Tensor, template: Tensor | None = None, reaim: bool = True) -> Tensor:
    """A feasible pose near ``joints``: a fast, one-pass projection onto the limits table.

    1. The palm is made feasible — its bone lengths and shape angles clamped into their ranges, or taken
       from ``template`` — and registered rigidly (least squares, no scale) onto the input palm (the wrist
       and the five finger bases).
    2. Each finger is re-posed along its chain, base to tip, as in SemiHand's greedy registration with
       KLBR-style rectification (semihand_method.md §3.1-3.2): the bone is aimed from the *corrected*
       parent at the input child (so errors do not pile up towards the tips), its angles are clamped into
       their limits (the finger's flexion plane and twist are estimated from the input finger), and its
       length is the template's, else the input's reach along the clamped direction, clamped into range.

    With ``reaim=False`` step 2 keeps the input's own joint angles instead (forward kinematics of the
    clamped inverse-kinematics parameters), which carries base errors out to the fingertips.

    A feasible pose comes back unchanged (to rounding) and the result is a fixed point:
    ``correct(correct(x, t), t) == correct(x, t)``.

    Args:
        joints: ``(..., 21, 3)`` canonical right-hand joints in mm.
        template: Optional hand template: bone lengths ``(..., 20)`` mm, or template joints ``(..., 21, 3)``
            (bone lengths and palm shape are taken from them). Its lengths are used as given (not clamped).
            Broadcasts against ``joints``.
        reaim: Aim each bone at the input child from the corrected parent (default) or keep the input's
            joint angles.

    Returns:
        ``(..., 21, 3)`` corrected joints, same dtype and device as ``joints``.
    """
    hand = hand_frame(joints)  # also checks the shape
    dtype, device = joints.dtype, joints.device
    limits = limits_tensor(dtype, device)
    ranges = bone_length_range_tensor(dtype, device)
    palm_frames, neutral = template_frames(dtype, device)

    # The palm in hand coordinates: the input's wrist at the origin, its hand frame as the axes.
    wrist = joints[..., 0, :]
    input_bases = (joints[..., list(MCPS), :] - wrist.unsqueeze(-2)) @ hand
    norms = norm3(input_bases).unsqueeze(-1)
    palm_angles = torch.stack(
        swing_angles(torch.einsum("...kj,kjl->...kl", input_bases / norms.clamp_min(1e-9), palm_frames)), -1
    )
    lengths = None  # (..., 5, 4) when fixed by the template
    if template is not None:
        template_lengths, template_palm = _template_parts(template, dtype, device)
        lengths = template_lengths.unflatten(-1, (5, 4))
        palm_lengths = lengths[..., 0]
        if template_palm is not None:
            palm_angles = template_palm
    else:
        palm_ranges = ranges[list(_PALM_ROWS)]
        palm_lengths = norms.squeeze(-1).clamp(palm_ranges[:, 0], palm_ranges[:, 1])
    palm_limits = limits[list(_PALM_ROWS), :2]
    palm_angles = palm_angles.clamp(palm_limits[..., 0], palm_limits[..., 1])
    batch = torch.broadcast_shapes(joints.shape[:-2], palm_lengths.shape[:-1], palm_angles.shape[:-2])
    palm_angles = palm_angles.expand(*batch, 5, 2)
    zeros = torch.zeros_like(palm_angles[..., 0])

    # Palm: the feasible shape, registered rigidly onto the input palm.
    palm_bone_frames = torch.einsum(
        "kij,...kjl->...kil", palm_frames, bone_rotation(palm_angles[..., 0], palm_angles[..., 1], zeros)
    )
    bases = palm_bone_frames[..., :, 1] * palm_lengths.unsqueeze(-1)
    source = torch.cat([torch.zeros_like(bases[..., :1, :]), bases], dim=-2)
    target = torch.cat([torch.zeros_like(input_bases[..., :1, :]), input_bases], dim=-2).expand_as(source)
    _, rotation, _ = similarity_procrustes(source, target)
    shift = target.mean(-2) - (rotation @ source.mean(-2).unsqueeze(-1)).squeeze(-1)
    to_world = hand @ rotation  # corrected hand coordinates -> world
    origin = wrist + (hand @ shift.unsqueeze(-1)).squeeze(-1)
    if reaim:
        # Walk each chain from its registered base towards the input joints, in world coordinates.
        chain_frames = torch.einsum("...kij,kjl->...kil", palm_bone_frames, neutral)
        frame = torch.einsum("...ij,...kjl->...kil", to_world, chain_frames)
        world_bases = bases @ to_world.transpose(-1, -2) + origin.unsqueeze(-2)
        chain_lengths = None if lengths is None else lengths[..., 1:].expand(*batch, 5, 3)
        targets = joints[..., 1:, :].unflatten(-2, (5, 4))
        fingers = _walk_fingers(frame, world_bases, targets, chain_lengths, limits, ranges)
        return torch.cat([origin.unsqueeze(-2), fingers], dim=-2)
    params = inverse_kinematics(joints)
    angles = params.angles.expand(*batch, NUM_BONES, 3).clone()
    angles[..., list(_PALM_ROWS), :2] = palm_angles
    angles = angles.clamp(limits[..., 0], limits[..., 1])
    if lengths is None:
        lengths = params.bone_lengths.clamp(ranges[:, 0], ranges[:, 1]).unflatten(-1, (5, 4))
        lengths = torch.cat([palm_lengths.unsqueeze(-1), lengths[..., 1:]], dim=-1)
    posed = forward_kinematics(angles, lengths.flatten(-2))
    return posed @ to_world.transpose(-1, -2) + origin.unsqueeze(-2)


def _walk_fingers(
    frame: Tensor,
    bases: Tensor,
    targets: Tensor,
    chain_lengths: Tensor | None,
    limits: Tensor,
    ranges: Tensor,
) -> Tensor:
    """Re-pose the five chains from their bases towards ``targets``, clamping every angle on the way.

    Args:
        frame: ``(..., 5, 3, 3)`` reference frames of the first chain bones.
        bases: ``(..., 5, 3)`` finger bases.
        targets: ``(..., 5, 4, 3)`` input finger joints (base, then the three to re-pose).
        chain_lengths: ``(..., 5, 3)`` fixed bone lengths, or ``None`` for each bone's clamped reach.
        limits: ``(20, 3, 2)`` angle limits.
        ranges: ``(20, 2)`` bone-length ranges.

    Returns:
        ``(..., 20, 3)`` finger joints (bases included), canonical order without the wrist.
    """
    # Frames are kept as their three axes and rotated with bone_rotation's closed form spelled out:
    # for tiny matrices this is several times faster than batched matmuls.
    finger_limits = limits.unflatten(0, (5, 4))
    finger_ranges = ranges.unflatten(0, (5, 4))
    x, y, z = frame.unbind(-1)
    parent = bases
    out = [parent]
    for level in (1, 2, 3):
        reach = targets[..., level, :] - parent
        direction = reach / norm3(reach).clamp_min(1e-9).unsqueeze(-1)
        local = torch.stack([dot3(direction, x), dot3(direction, y), dot3(direction, z)], dim=-1)
        flexion, abduction = swing_angles(local)
        level_limits = finger_limits[:, level]
        flexion = flexion.clamp(level_limits[:, 0, 0], level_limits[:, 0, 1])
        abduction = abduction.clamp(level_limits[:, 1, 0], level_limits[:, 1, 1])
        cf, sf = torch.cos(flexion).unsqueeze(-1), torch.sin(flexion).unsqueeze(-1)
        ca, sa = torch.cos(abduction).unsqueeze(-1), torch.sin(abduction).unsqueeze(-1)
        # Columns of frame @ bone_rotation(f, a, 0).
        y_new = sa * x + ca * (cf * y + sf * z)
        if level < 3:
            x, z = ca * x - sa * (cf * y + sf * z), cf * z - sf * y
            y = y_new
            if level == 1:  # turn the first bone about its axis by the finger's (clamped) twist
                twist, _ = finger_twist(parent, targets[..., 1:, :], x, z)
                twist = twist.clamp(level_limits[:, 2, 0], level_limits[:, 2, 1])
                ct, st = torch.cos(twist).unsqueeze(-1), torch.sin(twist).unsqueeze(-1)
                x, z = ct * x - st * z, st * x + ct * z
        if chain_lengths is not None:
            length = chain_lengths[..., level - 1]
        else:
            length = dot3(reach, y_new).clamp(finger_ranges[:, level, 0], finger_ranges[:, level, 1])
        parent = parent + length.unsqueeze(-1) * y_new
        out.append(parent)
    return torch.stack(out, dim=-2).flatten(-3, -2)


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def bone_length_loss(joints: Tensor, relative: bool = False, reduction: Reduction = "mean") -> Tensor:
    """Interval hinge loss on the 20 bone lengths (Spurr et al. ECCV'20, ``L_BL``).

    Args:
        joints: ``(..., 21, 3)`` canonical joints (mm unless ``relative``).
        relative: Judge lengths divided by the reference bone (middle MCP -> PIP) against the ratio
            ranges, for poses with unknown or normalised scale; otherwise absolute lengths in mm.
        reduction: ``"mean"`` over poses and bones, ``"sum"``, or ``"none"`` for ``(..., 20)``.

    Returns:
        The loss (mm, or reference-bone units when ``relative``); 0 with zero gradient inside the ranges.
    """
    lengths = bone_lengths_of(joints)
    if relative:
        reference = lengths[..., BONES.index(REFERENCE_BONE)].unsqueeze(-1)
        lengths = lengths / reference.clamp_min(1e-9)
        ranges = bone_ratio_range_tensor(joints.dtype, joints.device)
    else:
        ranges = bone_length_range_tensor(joints.dtype, joints.device)
    return _reduce(interval_hinge(lengths, ranges[:, 0], ranges[:, 1]), reduction)


def joint_angle_loss(joints: Tensor, reduction: Reduction = "mean", tolerance_rad: float = 1e-4) -> Tensor:
    """Interval hinge loss on the joint angles (after Spurr et al. ECCV'20, ``L_A``), in radians.

    Flexion, abduction and twist of every bone are penalised by their distance outside the limits table.
    The finger-base twist is unobservable for a straight finger, so its term is weighted by how bent the
    finger is (full weight from about 12° of bend; the weight carries no gradient).

    Args:
        joints: ``(..., 21, 3)`` canonical right-hand joints (any scale).
        reduction: ``"mean"`` over poses and the 20 x 3 angles, ``"sum"``, or ``"none"`` for ``(..., 20, 3)``.
        tolerance_rad: Every range is widened by this much on both sides, so that the zero-width ranges
            (hinge abduction and twist, frame-defining palm angles) do not turn rounding noise into
            gradients.

    Returns:
        The loss in radians; 0 with zero gradient inside the limits.
    """
    params, bend = inverse_kinematics_and_bend(joints)
    limits = limits_tensor(joints.dtype, joints.device)
    excess = interval_hinge(params.angles, limits[..., 0] - tolerance_rad, limits[..., 1] + tolerance_rad)
    weight = torch.ones_like(excess)
    weight[..., list(_LEVEL1_ROWS), 2] = (bend.detach() / _TWIST_TRUST_BEND).clamp(max=1.0)
    return _reduce(excess * weight, reduction)
