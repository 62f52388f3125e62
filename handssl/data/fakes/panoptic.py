"""A tiny fake CMU Panoptic sequence (calibration json, hdHand3d jsons, hdImgs jpgs) in the real format.

Also home of the small hand generator and drawing helpers the other fake builders share
(:func:`random_hand_pose`, :func:`draw_hand`): an anatomically ordered, asymmetric canonical hand so that a
wrong joint map or a swapped axis shows up in the tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from handssl.geometry import axis_angle_to_matrix, look_at_rotation, project, world_to_camera
from handssl.skeleton import BONES, FINGER_NAMES, FINGERS, NUM_JOINTS, joint_color

__all__ = ["draw_hand", "fake_background", "make_fake_panoptic", "random_hand_pose"]

# Right hand in a local frame (mm): x towards the thumb, y along the fingers, z out of the back of the hand.
_FINGER_BASES_MM = {
    "thumb": (22.0, 22.0, -8.0),
    "index": (24.0, 88.0, 0.0),
    "middle": (4.0, 92.0, 0.0),
    "ring": (-15.0, 87.0, 0.0),
    "pinky": (-32.0, 78.0, 0.0),
}
_BONE_LENGTHS_MM = {
    "thumb": (38.0, 32.0, 27.0),
    "index": (42.0, 25.0, 21.0),
    "middle": (46.0, 28.0, 23.0),
    "ring": (43.0, 26.0, 21.0),
    "pinky": (34.0, 20.0, 18.0),
}
_FINGER_DIRECTIONS = {
    "thumb": (0.75, 0.6, -0.25),
    "index": (0.12, 1.0, 0.0),
    "middle": (0.0, 1.0, 0.0),
    "ring": (-0.1, 1.0, 0.0),
    "pinky": (-0.22, 1.0, 0.0),
}


def random_hand_pose(rng: np.random.Generator, side: str = "right") -> np.ndarray:
    """A random, anatomically ordered hand in canonical joint order, in a hand-local frame (mm).

    Fingers have different lengths and random flexion, so the pose has no symmetry a wrong joint map could
    hide behind. The wrist is at the origin; a left hand is the mirror image (``x -> -x``) of a right hand.

    Args:
        rng: Random generator.
        side: ``"right"`` or ``"left"``.

    Returns:
        ``(21, 3)`` float64 joints in mm.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    joints = np.zeros((NUM_JOINTS, 3))
    for finger in FINGER_NAMES:
        indices = FINGERS[finger]
        direction = np.asarray(_FINGER_DIRECTIONS[finger], dtype=float)
        direction /= np.linalg.norm(direction)
        axis = np.cross(direction, [0.0, 0.0, -1.0])
        axis /= np.linalg.norm(axis)
        point = np.asarray(_FINGER_BASES_MM[finger])
        joints[indices[0]] = point
        angle = 0.0
        for joint, length in zip(indices[1:], _BONE_LENGTHS_MM[finger]):
            angle += rng.uniform(0.05, 0.6)
            bend = axis_angle_to_matrix(axis * angle)
            point = point + length * (bend @ direction)
            joints[joint] = point
    if side == "left":
        joints[:, 0] *= -1
    return joints


def place_hand(local_mm: np.ndarray, rng: np.random.Generator, center_mm: Sequence[float]) -> np.ndarray:
    """Rotate a hand-local pose randomly and move its joint centroid to ``center_mm``; ``(21, 3)``."""
    rotation = axis_angle_to_matrix(rng.normal(size=3) * 1.2)
    rotated = local_mm @ rotation.T
    return rotated - rotated.mean(0) + np.asarray(center_mm, dtype=float)


def fake_background(width: int, height: int, camera: int) -> np.ndarray:
    """A static, camera-specific textured background (smooth gradients plus a checker); ``uint8 (H, W, 3)``."""
    v, u = np.indices((height, width), dtype=float)
    red = 70 + 40 * np.sin(u / 17.0 + camera)
    green = 90 + 30 * np.cos(v / 11.0 - 0.7 * camera)
    blue = 60 + 60 * (((u // 16) + (v // 16) + camera) % 2)
    return np.stack([red, green, blue], -1).clip(0, 255).astype(np.uint8)


def draw_hand(image: Image.Image, joints2d: np.ndarray, radius: int = 3) -> None:
    """Draw a skeleton (bones and joint discs in each finger's colour) into a PIL image, in place."""
    draw = ImageDraw.Draw(image)
    for parent, child in BONES:
        (u0, v0), (u1, v1) = joints2d[parent], joints2d[child]
        draw.line([(u0, v0), (u1, v1)], fill=joint_color(child), width=max(1, radius - 1))
    for joint, (u, v) in enumerate(joints2d):
        draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=joint_color(joint))


def _hd_camera(node: int, center_cm: np.ndarray, target_cm: np.ndarray, focal: float, size: tuple[int, int]):
    width, height = size
    rotation = look_at_rotation(target_cm - center_cm)
    translation_cm = -rotation @ center_cm
    K = np.array(
        [[focal, 0.0, (width - 1) / 2 + 3.0 * node], [0.0, focal * 1.01, (height - 1) / 2 - 2.0], [0, 0, 1]]
    )
    # Strong enough that ignoring any single coefficient moves the hand by more than a pixel.
    dist = np.array([-0.28 + 0.01 * node, 0.12, 0.012 - 0.001 * node, -0.009, 0.02])
    return {
        "name": f"00_{node:02d}",
        "type": "hd",
        "resolution": [width, height],
        "panel": 0,
        "node": node,
        "K": K.tolist(),
        "distCoef": dist.tolist(),
        "R": rotation.tolist(),
        "t": translation_cm.reshape(3, 1).tolist(),
    }


def make_fake_panoptic(
    root: str | Path,
    sequences: Sequence[str] = ("171204_pose1_sample",),
    num_frames: int = 4,
    nodes: Sequence[int] = (0, 3, 7),
    image_size: tuple[int, int] = (320, 240),
    first_frame: int = 0,
    missing_right_frames: Sequence[int] = (),
    low_score_frames: Sequence[int] = (),
    nan_frames: Sequence[int] = (),
    seed: int = 0,
) -> Path:
    """Write a tiny fake CMU Panoptic copy: per sequence a calibration, hand jsons and HD jpgs.

    Layout (as the panoptic-toolbox scripts produce it)::

        <root>/<seq>/calibration_<seq>.json            HD cameras (panel 0) + one VGA camera, t in cm
        <root>/<seq>/hdHand3d/handRecon3D_hd%08d.json  one person, right and left hands, landmarks in cm
        <root>/<seq>/hdImgs/00_XX/00_XX_%08d.jpg       static per-camera background + the drawn hand

    The cameras sit on a ring about 1 m from the hand and aim 28 cm beside it, so the hand lands off-centre
    where the (non-zero, OpenCV-model) distortion matters. The hand moves between frames, so the temporal
    median of a camera's frames is its background.

    Args:
        root: Output folder (created).
        sequences: Sequence names.
        num_frames: HD frames per sequence.
        nodes: HD camera nodes (panel 0).
        image_size: ``(width, height)`` of the HD images.
        first_frame: HD index of the first frame (frames are consecutive).
        missing_right_frames: Frame positions (0-based) whose json has no ``right_hand``.
        low_score_frames: Frame positions whose right hand has a mean ``averageScore`` of 0.0005.
        nan_frames: Frame positions whose right-hand landmarks contain a NaN.
        seed: Random seed (the output is deterministic given the arguments).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    width, height = image_size
    for seq_index, seq in enumerate(sequences):
        rng = np.random.default_rng([seed, seq_index])
        seq_dir = root / seq
        (seq_dir / "hdHand3d").mkdir(parents=True, exist_ok=True)
        hand_center_cm = np.array([10.0, -110.0, 5.0])
        cameras = []
        for k, node in enumerate(nodes):
            azimuth = 2 * np.pi * k / max(len(nodes), 1) + 0.3
            center = hand_center_cm + np.array([100 * np.cos(azimuth), -20.0 + 5 * k, 100 * np.sin(azimuth)])
            aim_offset = 28.0 * np.array([-np.sin(azimuth), 0.0, np.cos(azimuth)])
            cameras.append(_hd_camera(node, center, hand_center_cm + aim_offset, 300.0, image_size))
        vga = dict(_hd_camera(1, hand_center_cm + [0.0, -30.0, 120.0], hand_center_cm, 120.0, (160, 120)))
        vga.update(name="01_01", type="vga", panel=1, node=1)
        calibration = {"calibDataSource": seq, "cameras": [*cameras[:1], vga, *cameras[1:]]}
        (seq_dir / f"calibration_{seq}.json").write_text(json.dumps(calibration))

        backgrounds = [fake_background(width, height, k) for k in range(len(nodes))]
        for position in range(num_frames):
            frame = first_frame + position
            offset_cm = np.array([8.0 * np.cos(2.1 * position), 6.0 * np.sin(1.3 * position), 4.0 * position])
            right_cm = place_hand(random_hand_pose(rng, "right"), rng, (hand_center_cm + offset_cm) * 10) / 10
            left_cm = place_hand(random_hand_pose(rng, "left"), rng, (hand_center_cm + offset_cm) * 10) / 10
            left_cm += np.array([0.0, 0.0, 30.0])  # the left hand is away, out of most views
            person: dict = {"id": 0}
            if position not in missing_right_frames:
                right = right_cm.copy()
                if position in nan_frames:
                    right[7, 1] = np.nan
                score = 0.0005 if position in low_score_frames else 0.6
                person["right_hand"] = _hand_json(right, score, len(nodes))
            person["left_hand"] = _hand_json(left_cm, 0.5, len(nodes))
            hand_file = seq_dir / "hdHand3d" / f"handRecon3D_hd{frame:08d}.json"
            hand_file.write_text(json.dumps({"version": 0.7, "people": [person]}))

            for k, cam in enumerate(cameras):
                image = Image.fromarray(backgrounds[k])
                K, dist = np.asarray(cam["K"]), np.asarray(cam["distCoef"])
                R, t_mm = np.asarray(cam["R"]), np.asarray(cam["t"]).reshape(3) * 10
                for hand_cm in (right_cm, left_cm):
                    hand_cam = world_to_camera(hand_cm * 10, R, t_mm)
                    if (hand_cam[:, 2] > 100).all():
                        draw_hand(image, project(hand_cam, K, dist))
                folder = seq_dir / "hdImgs" / cam["name"]
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{cam['name']}_{frame:08d}.jpg", quality=95)
    return root


def _hand_json(landmarks_cm: np.ndarray, score: float, num_cameras: int) -> dict:
    return {
        "landmarks": [float(x) for x in landmarks_cm.reshape(-1)],
        "averageScore": [score] * NUM_JOINTS,
        "averageReproError": [1.5] * NUM_JOINTS,
        "visibility": [list(range(num_cameras))] * NUM_JOINTS,
    }
