"""How an NVS training step uses a batch of multi-view pairs: what it encodes, what it renders, what the pose loss sees.

A :class:`~handssl.data.multiview.MultiViewPairs` item holds views *i* and *j* at time *t* (``image``,
``target``) and, like Rhodin et al.'s rows ``[t:A, t:B, t':C, t':D]``, the same subject's appearance images at
*t'* (``image_t2``, ``image_t2_j``: another sequence, so they cannot leak the pose at *t*). :class:`PairTraining`
(built from the options of :class:`~handssl.models.NVSModule` that shape a step: its ``pairs`` group,
``pose.views``, ``pose_head.rows`` and ``synthesis.items``) names the images one encoder pass
covers (:meth:`~PairTraining.images_to_encode`), builds the decoder's rows (:meth:`~PairTraining.synthesis_rows`:
both directions, each a view swap with probability ``swap_probability`` and plain auto-encoding otherwise,
with the appearance of a random one of the two *t'* images) and the pose loss over every encoded image whose
labels are visible (:meth:`~PairTraining.pose_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from handssl.metrics.functional import masked_mean
from handssl.models.components.nvs import PoseHead, rotate_points
from handssl.skeleton import root_relative, valid_with_root

__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "Encoded", "PairTraining"]

IMAGE_KEYS = {"i": "image", "j": "target", "t2": "image_t2", "t2_j": "image_t2_j"}
"""Batch key of each image one training step may encode (view i and j at t, their appearance images at t')."""
LABEL_KEYS = {
    "i": ("joints3d", "valid"),
    "j": ("joints3d_j", "valid_j"),
    "t2": ("joints3d_t2", None),
    "t2_j": ("joints3d_t2_j", None),
}
"""Joints and validity keys of each encoded image (``None``: valid where finite)."""

Encoded = dict[str, tuple[Tensor, Tensor]]
"""Encoded images by name (:data:`IMAGE_KEYS`): ``(L3D (B, N, 3), appearance (B, A))``."""


@dataclass(frozen=True)
class PairTraining:
    """The options that shape an NVS training step on multi-view pairs (validated on creation).

    Attributes:
        swap_probability: Chance that a training direction renders the other view rather than auto-encoding.
        appearance_swap: Take the appearance vector from the appearance images (``image_t2``, ``image_t2_j``).
        both_directions: Render ``j -> i`` as well as ``i -> j``.
        pose_views: ``"all"``: the pose loss covers every encoded image with visible labels; ``"input"``: view i.
        pose_head_rows: ``"labeled"``: the pose head runs on the rows its loss counts (its BatchNorm statistics
            then match evaluation), or on ``"all"`` encoded images; all when fewer than two are labelled.
        synthesis_items: ``"all"`` or ``"unlabeled"``: the items the synthesis loss covers.
    """

    swap_probability: float = 0.8
    appearance_swap: bool = True
    both_directions: bool = True
    pose_views: Literal["input", "all"] = "all"
    pose_head_rows: Literal["labeled", "all"] = "labeled"
    synthesis_items: Literal["all", "unlabeled"] = "all"

    def __post_init__(self) -> None:
        if not 0.0 <= self.swap_probability <= 1.0:
            raise ValueError(f"swap_probability must be in [0, 1], got {self.swap_probability}")

    def images_to_encode(self, batch: dict[str, Any], synthesis: bool, pose: bool) -> list[str]:
        """Names (:data:`IMAGE_KEYS`) of the images a step encodes, with the synthesis and/or the pose loss."""
        names = ["i"]
        pose_all = pose and self.pose_views == "all"
        if (synthesis and self.both_directions) or pose_all:
            names.append("j")
        if (synthesis and self.appearance_swap) or (pose_all and "joints3d_t2" in batch):
            names += ["t2", "t2_j"] if "image_t2_j" in batch else ["t2"]
        return names

    def synthesis_rows(self, batch: dict[str, Any], encoded: Encoded) -> dict[str, Tensor]:
        """What the decoder renders in a training step: ``points`` (rotated), ``appearance``, ``background``, ``target``.

        Rows ``i -> j`` (or ``i -> i``) for every pair, then ``j -> i`` (or ``j -> j``) with
        ``both_directions``; each row swaps views with probability ``swap_probability``. The appearance is
        that of a random one of the pair's appearance images (``appearance_swap``) or the input's own.
        """
        image, target = batch["image"], batch["target"]
        size = image.shape[0]
        eye = torch.eye(3, dtype=image.dtype, device=image.device).expand(size, 3, 3)
        R_ij = batch["R_ij"].to(image.dtype)
        directions = [("i", R_ij, target, batch["background"], image, batch["background_input"])]
        if self.both_directions:
            directions.append(
                ("j", R_ij.transpose(-1, -2), image, batch["background_input"], target, batch["background"])
            )
        t2 = [n for n in ("t2", "t2_j") if n in encoded]
        rows: dict[str, list[Tensor]] = {"points": [], "appearance": [], "background": [], "target": []}
        for name, R, swap_target, swap_bg, own_target, own_bg in directions:
            swap = torch.rand(size, device=image.device) < self.swap_probability
            pick = swap[:, None, None, None]
            points = encoded[name][0]
            rows["points"].append(rotate_points(points, torch.where(swap[:, None, None], R, eye)))
            rows["target"].append(torch.where(pick, swap_target, own_target))
            rows["background"].append(torch.where(pick, swap_bg, own_bg))
            if self.appearance_swap and t2:
                appearance = encoded[t2[0]][1]
                if len(t2) == 2:
                    other = torch.rand(size, device=image.device) < 0.5
                    appearance = torch.where(other[:, None], encoded[t2[1]][1], appearance)
            else:
                appearance = encoded[name][1]
            rows["appearance"].append(appearance)
        return {key: torch.cat(value) for key, value in rows.items()}

    def synthesis_items_of(
        self, batch: dict[str, Any], encoded: Encoded, with_pose: bool
    ) -> tuple[dict[str, Any], Encoded]:
        """The batch and encodings the synthesis loss covers.

        All of them, or with ``synthesis_items="unlabeled"`` and a pose loss those of the unlabelled items, where
        the batch has any.
        """
        if self.synthesis_items != "unlabeled" or not with_pose:
            return batch, encoded
        keep = ~batch["labeled"].bool()
        if not bool(keep.any()):
            return batch, encoded
        size = keep.shape[0]
        batch = {
            k: v[keep] if isinstance(v, Tensor) and v.shape[:1] == (size,) else v for k, v in batch.items()
        }
        return batch, {n: (points[keep], appearance[keep]) for n, (points, appearance) in encoded.items()}

    def pose_loss(self, pose_head: PoseHead, batch: dict[str, Any], encoded: Encoded) -> Tensor:
        """Mean squared error of the normalised pose over the labelled joints of every counted encoded image.

        Zero when no joint is labelled, keeping the graph (DDP wants every parameter used).
        """
        labeled = batch["labeled"].bool()[:, None]
        points, targets, valids = [], [], []
        for name, (points_n, _) in encoded.items():
            joints_key, valid_key = LABEL_KEYS[name]
            if joints_key not in batch or (name != "i" and self.pose_views != "all"):
                continue
            joints = batch[joints_key]
            valid = torch.isfinite(joints).all(-1)
            if valid_key is not None:
                valid = valid & batch[valid_key].bool()
            valid = valid & labeled
            valid = valid_with_root(valid)
            points.append(points_n)
            targets.append(pose_head.normalize(root_relative(joints)))
            valids.append(valid)
        inputs, target, valid = torch.cat(points), torch.cat(targets), torch.cat(valids)
        rows = valid.any(-1)
        if self.pose_head_rows == "labeled" and int(rows.sum()) >= 2:
            # BatchNorm statistics from the rows the loss counts, as at evaluation (every row is a hand)
            inputs, target, valid = inputs[rows], target[rows], valid[rows]
        pred = pose_head(inputs).float()
        with torch.autocast(pred.device.type, enabled=False):
            squared = (pred - torch.nan_to_num(target)) ** 2
            return masked_mean(squared, valid.unsqueeze(-1))
