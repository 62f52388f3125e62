"""NVSTask: what a geometry-aware novel-view-synthesis network does once trained, and how it is evaluated.

The network (:mod:`~handssl.models.components.nvs`) is an encoder from an image to a 3D latent ``L3D`` and an
appearance vector, a decoder that renders ``L3D`` rotated into another camera, and a pose head on ``L3D``. The
task encodes, synthesises novel views (one rotation, several of one latent, a turntable) and predicts the pose;
validation and test score view *i* -> *j* synthesis against its controls (the input copied, the background,
the identity and another item's rotation) and, where the pose head is trained, the pose.
:class:`~handssl.models.NVSModule` trains it in three regimes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal, overload

import torch
from torch import Tensor

from handssl.models.base import BaseHandTask, to_float
from handssl.models.components.losses import per_image_l1
from handssl.models.components.nvs import (
    NVSDecoder,
    NVSEncoder,
    PoseHead,
    composite,
    rotate_points,
    turntable_rotations,
)
from handssl.models.components.nvs_losses import foreground_l1, rotation_controls, silhouette_target

__all__ = ["NVSTask"]


class NVSTask(BaseHandTask):
    """A :class:`BaseHandTask` whose network is an NVS ``encoder``, ``decoder`` (``None``: pose only) and ``pose_head``.

    Subclasses build the three in ``configure_models``, set ``silhouette_threshold`` (the label-free hand
    pixels of the evaluation, where a batch has no ``target_mask``) before ``super().__init__`` and may
    override :attr:`evaluates_pose`.
    """

    encoder: NVSEncoder
    decoder: NVSDecoder | None
    pose_head: PoseHead
    silhouette_threshold: float

    @property
    def evaluates_pose(self) -> bool:
        """Whether validation and test score the pose (not before the pose head is trained)."""
        return True

    def encode(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` image to ``(L3D (B, N, 3) in the image's camera frame, appearance (B, A))``."""
        return self.encoder(image)

    def _require_decoder(self) -> NVSDecoder:
        if self.decoder is None:
            raise RuntimeError("the supervised regime builds no decoder, so it cannot synthesise views")
        return self.decoder

    @overload
    def synthesize(
        self,
        image: Tensor,
        R: Tensor,
        background: Tensor | None = None,
        appearance_image: Tensor | None = None,
        return_layers: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def synthesize(
        self,
        image: Tensor,
        R: Tensor,
        background: Tensor | None = None,
        appearance_image: Tensor | None = None,
        *,
        return_layers: Literal[True],
    ) -> dict[str, Tensor]: ...

    @overload
    def synthesize(
        self,
        image: Tensor,
        R: Tensor,
        background: Tensor | None = None,
        appearance_image: Tensor | None = None,
        return_layers: bool = False,
    ) -> Tensor | dict[str, Tensor]: ...

    def synthesize(
        self,
        image: Tensor,
        R: Tensor,
        background: Tensor | None = None,
        appearance_image: Tensor | None = None,
        return_layers: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Render ``image`` as seen after rotating its 3D latent by ``R`` (a novel view).

        Args:
            image: ``(B, 3, H, W)`` input images in ``[0, 1]``.
            R: ``(3, 3)`` or ``(B, 3, 3)`` rotation from the input camera's frame to the novel camera's frame
                (``R_ij = R_j R_i^T`` for a real camera *j*; e.g. :func:`turntable_rotations` for a turntable).
            background: ``(B, 3, H, W)`` background of the novel view; mid-grey when omitted.
            appearance_image: Optional images whose appearance vectors replace the input's.
            return_layers: Also return the foreground and the mask.

        Returns:
            ``(B, 3, H, W)`` composited images, or a dict with ``image``, ``foreground`` and ``mask``.
        """
        decoder = self._require_decoder()
        points, appearance = self.encoder(image)
        if appearance_image is not None:
            appearance = self.encoder(appearance_image)[1]
        if background is None:
            background = torch.full_like(image, 0.5)
        foreground, mask = to_float(decoder.layers(rotate_points(points, R), appearance))
        out = composite(foreground, mask, background)
        if return_layers:
            return {"image": out, "foreground": foreground, "mask": mask}
        return out

    def renderer(self, image: Tensor, background: Tensor) -> Callable[..., dict[str, Tensor]]:
        """Encode ``image`` once; the returned function renders it rotated by any ``R`` (``image`` and ``mask``).

        For comparing rotations of one latent (:func:`~handssl.models.components.nvs_losses.rotation_controls`).
        ``render(R, latent="mean")`` renders every item from the batch's mean ``L3D`` (with its own appearance):
        what the decoder draws without the item's geometry.
        """
        decoder = self._require_decoder()
        points, appearance = self.encoder(image)

        def render(R: Tensor, latent: Literal["own", "mean"] = "own") -> dict[str, Tensor]:
            used = points.mean(0, keepdim=True).expand_as(points) if latent == "mean" else points
            foreground, mask = to_float(decoder.layers(rotate_points(used, R), appearance))
            return {"image": composite(foreground, mask, background), "mask": mask}

        return render

    def turntable(self, image: Tensor, num_views: int = 8, background: Tensor | None = None) -> Tensor:
        """Novel views around the camera's y axis: ``(B, num_views, 3, H, W)``, the first the input's view."""
        decoder = self._require_decoder()
        points, appearance = self.encoder(image)
        if background is None:
            background = torch.full_like(image, 0.5)
        views = [
            decoder(rotate_points(points, R.to(points)), appearance, background)
            for R in turntable_rotations(num_views)
        ]
        return torch.stack(views, dim=1)

    def predict_pose(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` image to root-relative joints ``(B, 21, 3)`` in mm, in the image's camera frame."""
        if not bool(self.pose_head.has_statistics):
            raise RuntimeError(
                "the pose head has no training statistics yet: train it (supervised, semi or pretrained stage 2)"
            )
        points, _ = self.encoder(image)
        return self.pose_head.to_joints(self.pose_head(points).float())

    def predict_joints3d(self, batch: dict[str, Any]) -> Tensor:
        return self.predict_pose(batch["image"])

    def _evaluate_pairs(self, batch: dict[str, Any], stage: str) -> None:
        """Synthesis metrics of ``i -> j`` with their copy and geometry controls, and the pose metrics."""
        size = batch["image"].shape[0]
        if self.decoder is not None:
            target, background = batch["target"], batch["background"]
            render = self.renderer(batch["image"], background)
            # Hand pixels: the dataset's mask when it has one, else the label-free silhouette.
            if "target_mask" in batch:
                hand = (batch["target_mask"] > 0.5).to(target.dtype)
            else:
                hand = silhouette_target(target, background, self.silhouette_threshold)
            values = {
                "synthesis_l1": per_image_l1(render(batch["R_ij"])["image"], target).mean(),
                "copy_input_l1": per_image_l1(batch["image"], target).mean(),
                "background_l1": per_image_l1(background, target).mean(),
                "copy_input_l1_hand": foreground_l1(batch["image"], target, hand),
                "background_l1_hand": foreground_l1(background, target, hand),
            }
            if size > 1:  # the geometry controls: identity and another item's rotation
                mean_latent = partial(render, latent="mean")
                values.update(rotation_controls(render, batch["R_ij"], target, hand, background, mean_latent))
            else:
                values["synthesis_l1_hand"] = foreground_l1(render(batch["R_ij"])["image"], target, hand)
            for name, value in values.items():
                self.log(f"{stage}/{name}", value, batch_size=size, sync_dist=True)
        if self.evaluates_pose:
            self._evaluate(batch, stage)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_pairs(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_pairs(batch, "test")
