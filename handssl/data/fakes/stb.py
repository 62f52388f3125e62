"""A tiny fake copy of STB (Stereo Hand Pose Tracking Benchmark) in its exact on-disk format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from scipy.spatial.transform import Rotation

from handssl.data.fakes.rhd import (
    BACKGROUND_COLOR,
    draw_markers,
    markers_separated,
    place_hand,
    project_pinhole,
    random_hand_pose,
)
from handssl.data.stb import (
    BB_BASELINE_MM,
    BB_K,
    SK_COLOR_K,
    SK_DEPTH_TO_COLOR_ROTVEC,
    SK_DEPTH_TO_COLOR_T_MM,
    STB_TEST_SEQUENCES,
    STB_TRAIN_SEQUENCES,
)
from handssl.skeleton import JOINT_NAMES, NUM_JOINTS

__all__ = ["STB_NATIVE_NAMES", "fake_stb_palm", "make_fake_stb"]

STB_NATIVE_NAMES: tuple[str, ...] = ("palm",) + tuple(
    f"{finger}_{seg}"
    for finger in ("pinky", "ring", "middle", "index", "thumb")
    for seg in (("cmc", "mcp", "ip", "tip") if finger == "thumb" else ("mcp", "pip", "dip", "tip"))
)
"""STB's order from its README (palm centre, then little..thumb, each MCP -> tip) spelled with canonical
names (STB's ``thumb_mcp`` occupies the canonical ``thumb_cmc`` slot). Written independently of
``handssl.skeleton.STB_TO_CANONICAL``."""

_SIZE = (640, 480)


def fake_stb_palm(joints: np.ndarray) -> np.ndarray:
    """The fake's palm centre of canonical ``(..., 21, 3)`` joints: mean of the wrist and the four MCPs."""
    return joints[..., [0, 5, 9, 13, 17], :].mean(-2)


def _with_palm(joints: np.ndarray) -> np.ndarray:
    """Canonical joints with the palm centre in slot 0 (STB's convention)."""
    out = joints.copy()
    out[0] = fake_stb_palm(joints)
    return out


def _to_native(joints_with_palm: np.ndarray) -> np.ndarray:
    names = ("palm",) + JOINT_NAMES[1:]
    return joints_with_palm[[names.index(name) for name in STB_NATIVE_NAMES]]


def _place_separated(
    rng: np.random.Generator,
    K: np.ndarray,
    center: tuple[float, float],
    depth: tuple[float, float],
    shifts=(0.0,),
) -> np.ndarray:
    """A left hand (palm in slot 0) whose markers are separated in every view ``X - (shift, 0, 0)``."""
    for _ in range(1000):
        pose = _with_palm(random_hand_pose(rng, "left"))
        placed = place_hand(pose, rng, K, center, rng.uniform(*depth))
        views = [project_pinhole(placed - np.array([s, 0.0, 0.0]), K) for s in shifts]
        if all(markers_separated(uv, _SIZE, border=4) for uv in views):
            return placed
    raise RuntimeError("could not place a separated hand in the fake STB image")  # pragma: no cover


def _save_markers(path: Path, uv: np.ndarray) -> None:
    image = np.empty((_SIZE[1], _SIZE[0], 3), np.uint8)
    image[:] = BACKGROUND_COLOR
    draw_markers(image, uv, range(NUM_JOINTS), "left")
    Image.fromarray(image).save(path, compress_level=1)


def make_fake_stb(
    root: str | Path,
    sequences: Sequence[str] = STB_TEST_SEQUENCES + STB_TRAIN_SEQUENCES,
    num_frames: int | dict[str, int] = 2,
    seed: int = 0,
    layout: str = "images",
    nan_frame: tuple[str, int] | None = None,
) -> Path:
    """Write a tiny STB copy under ``root``.

    ``labels/<seq>_SK.mat`` and ``<seq>_BB.mat`` hold ``handPara`` (``3 x 21 x N``, float64 mm, STB order:
    palm centre, little..thumb, MCP -> tip); SK labels are in the SK *depth* frame (``X_d = R X_c + t``
    from the official extrinsics), BB labels in the left Bumblebee frame. ``SK_color_<i>.png``,
    ``BB_left_<i>.png`` and ``BB_right_<i>.png`` (640x480) show a joint marker
    (:func:`~handssl.data.fakes.rhd.marker_color` of the canonical index, left hand) at the projection of
    every joint; the palm centre (:func:`fake_stb_palm`) carries the marker of slot 0. The hands are left
    hands; SK and BB poses differ.

    Args:
        root: Folder to write (created); the loader's ``root``.
        sequences: Sequence names to write (default: all twelve).
        num_frames: Frames per sequence (an int, or a dict sequence -> count; missing ones get 2).
        seed: Seed; the copy is a deterministic function of the arguments.
        layout: ``"images"`` (``images/<seq>/``, as bihand and Minimal-Hand expect) or ``"flat"``
            (``<seq>/`` directly under ``root``, as hand3d's script expects).
        nan_frame: ``(sequence, frame)`` whose labels (SK and BB) get a NaN, to test error handling.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    if layout not in ("images", "flat"):
        raise ValueError(f"layout must be 'images' or 'flat', got {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    R_sk = Rotation.from_rotvec(SK_DEPTH_TO_COLOR_ROTVEC).as_matrix()
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for seq in sequences:
        count = num_frames.get(seq, 2) if isinstance(num_frames, dict) else num_frames
        image_dir = root / "images" / seq if layout == "images" else root / seq
        image_dir.mkdir(parents=True, exist_ok=True)
        sk_depth_frame, bb_left_frame = [], []
        for i in range(count):
            sk_color = _place_separated(
                rng, SK_COLOR_K, (rng.uniform(260, 380), rng.uniform(200, 280)), (380, 480)
            )
            bb_left = _place_separated(
                rng,
                BB_K,
                (rng.uniform(400, 440), rng.uniform(220, 280)),
                (520, 600),
                shifts=(0.0, BB_BASELINE_MM),
            )
            _save_markers(image_dir / f"SK_color_{i}.png", project_pinhole(sk_color, SK_COLOR_K))
            _save_markers(image_dir / f"BB_left_{i}.png", project_pinhole(bb_left, BB_K))
            bb_right = bb_left - np.array([BB_BASELINE_MM, 0.0, 0.0])
            _save_markers(image_dir / f"BB_right_{i}.png", project_pinhole(bb_right, BB_K))
            sk_depth_frame.append(_to_native(sk_color) @ R_sk.T + SK_DEPTH_TO_COLOR_T_MM)
            bb_left_frame.append(_to_native(bb_left))
        for cam, labels in (("SK", sk_depth_frame), ("BB", bb_left_frame)):
            joints = np.asarray(labels, dtype=np.float64).reshape(count, NUM_JOINTS, 3)
            if nan_frame is not None and nan_frame[0] == seq:
                joints[nan_frame[1], 7, 2] = np.nan
            scipy.io.savemat(root / "labels" / f"{seq}_{cam}.mat", {"handPara": joints.transpose(2, 1, 0)})
    return root
