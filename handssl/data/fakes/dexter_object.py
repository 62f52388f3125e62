"""A tiny fake copy of Dexter+Object in the on-disk format the public loaders read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from handssl.data.dexter_object import (
    DEXTER_OBJECT_SEQUENCES,
    DO_COLOR_K,
    DO_DEPTH_K,
    DO_DEPTH_TO_COLOR,
    DO_MISSING_VALUE,
)
from handssl.data.fakes.rhd import (
    BACKGROUND_COLOR,
    draw_markers,
    markers_separated,
    place_hand,
    project_pinhole,
    random_hand_pose,
)
from handssl.skeleton import TIPS

__all__ = ["make_fake_dexter_object"]

_SIZE = (640, 480)


def make_fake_dexter_object(
    root: str | Path,
    sequences: Sequence[str] = DEXTER_OBJECT_SEQUENCES,
    num_frames: int | dict[str, int] = 2,
    seed: int = 0,
    name_pattern: str = "{:05d}.png",
    missing_tips: Sequence[tuple[str, int, int]] = (("Grasp1", 1, 2),),
) -> Path:
    """Write a tiny Dexter+Object copy under ``root`` (``root/data/<seq>/...``).

    Per sequence: ``color/<name>`` (640x480 RGB; each fingertip drawn as a marker of
    :func:`~handssl.data.fakes.rhd.marker_color` of its canonical index, left hand), ``depth/<name>``
    (320x240 16-bit, constant), ``annotations/<seq>3D.txt`` (``x, y, z;`` x5 per line, mm, in the depth
    frame with ``x`` and ``y`` flipped, so that ``T_depth->colour @ (-x, -y, z, 1)`` is the colour-frame
    tip) and ``annotations/<seq>2D.txt`` (``u, v;`` x5 in depth-image pixels). Tips listed in
    ``missing_tips`` are written as ``32001, 32001, 32001`` (and ``32001, 32001`` in 2D).

    Args:
        root: Folder to write (created); the loader's ``root``.
        sequences: Sequence names (default: all six).
        num_frames: Frames per sequence (an int, or a dict sequence -> count; missing ones get 2).
        seed: Seed; the copy is a deterministic function of the arguments.
        name_pattern: Image file name format of the frame number (e.g. ``"{}.png"`` for unpadded names).
        missing_tips: ``(sequence, frame, tip)`` triples (tip 0 = thumb .. 4 = little) without annotation.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    A, t = DO_DEPTH_TO_COLOR[:, :3], DO_DEPTH_TO_COLOR[:, 3]
    A_inv = np.linalg.inv(A)
    for seq in sequences:
        count = num_frames.get(seq, 2) if isinstance(num_frames, dict) else num_frames
        seq_dir = root / "data" / seq
        for sub in ("color", "depth", "annotations"):
            (seq_dir / sub).mkdir(parents=True, exist_ok=True)
        lines_3d, lines_2d = [], []
        for i in range(count):
            for _ in range(1000):
                tips_color = place_hand(
                    random_hand_pose(rng, "left"), rng, DO_COLOR_K, (400.0, 300.0), 450.0
                )[list(TIPS)]
                uv = project_pinhole(tips_color, DO_COLOR_K)
                if markers_separated(uv, _SIZE, border=4):
                    break
            else:  # pragma: no cover
                raise RuntimeError("could not place separated fingertips in the fake D+O image")
            image = np.empty((_SIZE[1], _SIZE[0], 3), np.uint8)
            image[:] = BACKGROUND_COLOR
            draw_markers(image, uv, TIPS, "left")
            name = name_pattern.format(i)
            Image.fromarray(image).save(seq_dir / "color" / name, compress_level=1)
            Image.fromarray(np.full((240, 320), 600, np.uint16)).save(seq_dir / "depth" / name)

            tips_depth = (tips_color - t) @ A_inv.T  # the depth camera's (OpenCV) frame
            raw = tips_depth * np.array([-1.0, -1.0, 1.0])
            uv_depth = project_pinhole(tips_depth, DO_DEPTH_K)
            for s, f, tip in missing_tips:
                if s == seq and f == i:
                    raw[tip] = DO_MISSING_VALUE
                    uv_depth[tip] = DO_MISSING_VALUE
            lines_3d.append("".join(f"{x:.4f}, {y:.4f}, {z:.4f};" for x, y, z in raw) + "\n")
            lines_2d.append("".join(f"{u:.4f}, {v:.4f};" for u, v in uv_depth) + "\n")
        (seq_dir / "annotations" / f"{seq}3D.txt").write_text("".join(lines_3d))
        (seq_dir / "annotations" / f"{seq}2D.txt").write_text("".join(lines_2d))
    return root
