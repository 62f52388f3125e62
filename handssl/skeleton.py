"""The canonical 21-joint hand skeleton and the index maps from dataset-native orders.

Canonical order (OpenPose / CMU Panoptic / FreiHAND): ``0`` wrist; thumb ``1-4``; index ``5-8``;
middle ``9-12``; ring ``13-16``; pinky ``17-20``; each finger from base to tip. Every handssl
dataset, model and metric uses this order; datasets convert with the maps below
(``canonical = native[MAP]``, a gather).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from numpy import ndarray
    from torch import Tensor

_Mask = TypeVar("_Mask", "Tensor", "ndarray")

NUM_JOINTS = 21
"""Number of hand joints in the canonical skeleton."""

FINGER_NAMES: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
"""Finger names in canonical order."""

FINGERS: dict[str, tuple[int, int, int, int]] = {
    name: (1 + 4 * i, 2 + 4 * i, 3 + 4 * i, 4 + 4 * i) for i, name in enumerate(FINGER_NAMES)
}
"""Canonical joint indices of each finger, base to tip."""

_SEGMENT_NAMES = {
    "thumb": ("cmc", "mcp", "ip", "tip"),
    "index": ("mcp", "pip", "dip", "tip"),
    "middle": ("mcp", "pip", "dip", "tip"),
    "ring": ("mcp", "pip", "dip", "tip"),
    "pinky": ("mcp", "pip", "dip", "tip"),
}

JOINT_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{finger}_{segment}" for finger in FINGER_NAMES for segment in _SEGMENT_NAMES[finger]
)
"""The 21 canonical joint names, e.g. ``"wrist"``, ``"thumb_cmc"``, ``"index_tip"``."""

PARENTS: tuple[int, ...] = (-1,) + tuple(
    0 if j == 0 else FINGERS[finger][j - 1] for finger in FINGER_NAMES for j in range(4)
)
"""Parent of each canonical joint; ``PARENTS[0] == -1`` (the wrist is the root)."""

BONES: tuple[tuple[int, int], ...] = tuple((PARENTS[c], c) for c in range(1, NUM_JOINTS))
"""The 20 ``(parent, child)`` bones in canonical order."""

TIPS: tuple[int, ...] = tuple(FINGERS[f][3] for f in FINGER_NAMES)
"""Canonical fingertip indices (thumb, index, middle, ring, pinky): ``(4, 8, 12, 16, 20)``."""

MCPS: tuple[int, ...] = tuple(FINGERS[f][0] for f in FINGER_NAMES)
"""Canonical finger base indices (thumb CMC, then the four MCPs): ``(1, 5, 9, 13, 17)``."""

ROOT = 0
"""Canonical root joint (the wrist)."""

MIDDLE_MCP = 9
"""Canonical index of the middle-finger MCP, the usual reference for palm frames and bone scale."""

REFERENCE_BONE: tuple[int, int] = (9, 10)
"""Middle MCP -> PIP, the reference bone of the STB and FreiHAND protocols."""

# Native index stored at each canonical slot (``canonical = native[MAP]``), from the datasets' own readers (RHD:
# Zimmermann & Brox's hand3d; STB: the order of its released labels). Both maps are involutions.
RHD_TO_CANONICAL: tuple[int, ...] = (0, 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13, 20, 19, 18, 17)
"""RHD per-hand order (wrist, then each finger tip->MCP) to canonical."""

STB_TO_CANONICAL: tuple[int, ...] = (0, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4)
"""STB order (palm, then little->thumb, each MCP->tip) to canonical. Slot 0 holds STB's palm centre."""

IDENTITY: tuple[int, ...] = tuple(range(NUM_JOINTS))
"""FreiHAND, Panoptic and the CMU HandDB sets are already canonical."""

DEXTER_OBJECT_TIPS: tuple[int, ...] = TIPS
"""Canonical slots of Dexter+Object's five annotated fingertips (thumb, index, middle, ring, little)."""

# Colour per finger for plots (wrist grey, then thumb..pinky), shared by every drawing helper.
FINGER_COLORS: tuple[str, ...] = ("#e6194b", "#f58231", "#3cb44b", "#4363d8", "#911eb4")
WRIST_COLOR = "#808080"


def joint_color(joint: int) -> str:
    """Plot colour of a canonical joint (the colour of its finger; the wrist is grey)."""
    return WRIST_COLOR if joint == 0 else FINGER_COLORS[(joint - 1) // 4]


def finger_of(joint: int) -> str | None:
    """Name of the finger a canonical joint belongs to, ``None`` for the wrist."""
    return None if joint == 0 else FINGER_NAMES[(joint - 1) // 4]


def root_relative(joints: Any, root: int = ROOT, joint_axis: int = -2) -> Any:
    """``joints`` minus their root joint: the root-relative pose (numpy or torch; the root becomes 0).

    Args:
        joints: ``(..., J, D)`` joints; with ``joint_axis=-1``, ``(..., J)`` per-joint values such as depths.
        root: Index of the root joint (canonical :data:`ROOT`, the wrist).
        joint_axis: The joints' axis, counted from the end (``-2`` or ``-1``).

    Returns:
        An array or tensor of the shape of ``joints``.
    """
    if joint_axis >= 0:
        raise ValueError(f"root_relative: joint_axis counts from the end (-2, -1), got {joint_axis}")
    index = (Ellipsis, slice(root, root + 1)) + (slice(None),) * (-1 - joint_axis)
    return joints - joints[index]


def valid_with_root(valid: _Mask, root: int = ROOT, joint_axis: int = -1) -> _Mask:
    """Joint validity for root-relative use: a joint counts only where the root joint is valid too.

    Root-relative joints (:func:`root_relative`) are meaningless where the root is not annotated, so every
    root-relative loss and metric masks with ``valid & valid[root]``.

    Args:
        valid: ``(..., J)`` boolean mask (numpy or torch); with ``joint_axis=-2``, ``(..., J, D)``.
        root: Index of the root joint (canonical :data:`ROOT`, the wrist).
        joint_axis: The joints' axis, counted from the end (``-1`` or ``-2``).

    Returns:
        A mask of the shape and type of ``valid``: all False for samples whose root is invalid, else ``valid``.
    """
    if joint_axis >= 0:
        raise ValueError(f"valid_with_root: joint_axis counts from the end (-1, -2), got {joint_axis}")
    index = (Ellipsis, slice(root, root + 1)) + (slice(None),) * (-1 - joint_axis)
    return valid & valid[index]
