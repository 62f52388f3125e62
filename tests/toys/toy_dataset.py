"""The README's *Add a dataset* guide, steps 1 and 2, followed once: ``ToyHands`` and its fake copy.

On disk::

    <root>/<split>/annotations.json   [{"image": "000000.png", "K": 3x3, "joints3d_mm": 21x3}, ...]
    <root>/<split>/000000.png ...     RGB images
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from handssl.data.base import DatasetError, HandDataset, Sample, Transform, load_image, require_path
from handssl.data.fakes.panoptic import draw_hand, fake_background, place_hand, random_hand_pose
from handssl.geometry import project
from handssl.skeleton import NUM_JOINTS

TOYHANDS_LAYOUT = """\
<root>/
  train/annotations.json  train/000000.png ...
  test/annotations.json   test/000000.png ..."""

SPLITS = ("train", "test")


class ToyHands(HandDataset):
    """Right hands with camera-frame 3D joints (mm) and intrinsics, one json file per split.

    Args:
        root: The ToyHands folder (see :data:`TOYHANDS_LAYOUT`).
        split: ``"train"`` or ``"test"``.
        transform: Applied to every sample after loading.
        mirror_left: Mirror left hands (ToyHands has none; kept for a uniform interface).
    """

    name = "toyhands"
    eval_protocol = "rhd"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        mirror_left: bool = False,
    ) -> None:
        super().__init__(transform=transform, mirror_left=mirror_left)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = require_path(root, "ToyHands root folder", TOYHANDS_LAYOUT)
        self.split = split
        path = require_path(
            self.root / split / "annotations.json", f"ToyHands {split} annotations", TOYHANDS_LAYOUT
        )
        try:
            self.records: list[dict[str, Any]] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"malformed json file {path}: {err}") from err

    def __len__(self) -> int:
        return len(self.records)

    def load_sample(self, index: int) -> Sample:
        record = self.records[index]
        joints3d = np.asarray(record["joints3d_mm"], dtype=np.float32)
        K = np.asarray(record["K"], dtype=np.float32)
        return {
            "image": load_image(self.root / self.split / record["image"]),
            "joints3d": joints3d,
            "joints2d": project(joints3d, K).astype(np.float32),
            "K": K,
            "valid": np.ones(NUM_JOINTS, dtype=bool),
            "meta": {"dataset": self.name, "split": self.split, "frame": index, "hand": "right"},
        }


def make_fake_toyhands(root: str | Path, num_samples: int = 4, image_size: int = 64, seed: int = 0) -> Path:
    """Write a tiny ToyHands copy (:data:`TOYHANDS_LAYOUT`) under ``root``: drawn hands, exact 2D projections.

    Args:
        root: Output folder (created); the loader's ``root``.
        num_samples: Samples per split.
        image_size: Side of the square images.
        seed: Random seed.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(num_samples):
            focal = 2.0 * image_size
            K = np.array(
                [[focal, 0.0, (image_size - 1) / 2], [0.0, focal, (image_size - 1) / 2], [0.0, 0.0, 1.0]]
            )
            depth_mm = focal * 200.0 / (0.75 * image_size)  # the hand (~200 mm) spans about 3/4 of the image
            joints3d = place_hand(random_hand_pose(rng), rng, (0.0, 0.0, depth_mm))
            image = Image.fromarray(fake_background(image_size, image_size, i))
            draw_hand(image, project(joints3d, K), radius=2)
            name = f"{i:06d}.png"
            image.save(root / split / name)
            records.append({"image": name, "K": K.tolist(), "joints3d_mm": joints3d.tolist()})
        (root / split / "annotations.json").write_text(json.dumps(records))
    return root
