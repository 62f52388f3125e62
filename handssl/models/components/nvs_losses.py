"""Label-free silhouette supervision for novel-view synthesis (NVS) with a predicted foreground mask.

The decoder of :class:`~handssl.models.components.nvs.NVSDecoder` predicts a foreground and a mask that are
blended over the target camera's background. With a loss on the composite alone, "mask = 0" (show the
background) is an attractor: most pixels are background, and the composite there is already right. Two
remedies:

* a **silhouette target from background subtraction** (:func:`silhouette_target`): where the target image
  differs from its camera's background by more than a threshold, something (hand, sleeve, object) is in
  front. No label is needed, only the per-view background that Rhodin et al. (ECCV'18) feed the decoder. A
  binary cross-entropy on the predicted mask (:func:`silhouette_bce`) and an L1 averaged over the
  silhouette's pixels only (:func:`foreground_l1`, so a small hand weighs as much as the large background)
  pull the decoder towards drawing the hand;
* the mask is divided by its per-image maximum (:func:`normalize_mask_max`), as ``scale_mask_max_to_1`` in
  Rhodin et al.'s CVPR'19 "Neural Scene Decomposition" code: every rendering then holds at least one fully
  opaque pixel.

Threshold: the SynthHands ``"synthetic"`` style is a clean render over its background (0.02 separates them,
IoU ~0.999 with the true mask). The ``"real"`` styles add sensor noise (sigma ~0.02-0.05) to the image but not
to the background; use a threshold of about 0.15 there, or a background estimated from noisy frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from handssl.models.components.losses import ReconstructionLoss

EPS = 1e-4


def silhouette_target(image: Tensor, background: Tensor, threshold: float = 0.02) -> Tensor:
    """``(B, 1, H, W)`` float mask, 1 where any channel of ``|image - background|`` exceeds ``threshold``.

    Args:
        image: ``(B, 3, H, W)`` images in ``[0, 1]``.
        background: ``(B, 3, H, W)`` the same cameras' backgrounds.
        threshold: Smallest per-channel difference that counts as foreground.
    """
    if image.shape != background.shape:
        raise ValueError(f"image {tuple(image.shape)} and background {tuple(background.shape)} differ")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return ((image - background).abs().amax(1, keepdim=True) > threshold).to(image.dtype)


def normalize_mask_max(mask: Tensor, floor: float = EPS) -> Tensor:
    """Divide each ``(1, H, W)`` mask of a ``(B, 1, H, W)`` batch by its maximum (NSD ``scale_mask_max_to_1``)."""
    peak = mask.flatten(1).amax(1).clamp_min(floor)
    return mask / peak.view(-1, *([1] * (mask.dim() - 1)))


def silhouette_bce(mask: Tensor, silhouette: Tensor) -> Tensor:
    """Binary cross-entropy of a predicted mask in ``(0, 1]`` against a ``{0, 1}`` silhouette."""
    return F.binary_cross_entropy(mask.clamp(EPS, 1 - EPS), silhouette)


def foreground_l1(prediction: Tensor, target: Tensor, silhouette: Tensor) -> Tensor:
    """L1 over each image's silhouette pixels, divided by their count, averaged over images with any.

    ``(B, C, H, W)`` prediction and target, ``(B, 1, H, W)`` silhouette; 0 (with a graph) when no image has one.
    """
    weight = silhouette.expand_as(target)
    per_image = ((prediction - target).abs() * weight).flatten(1).sum(1)
    count = weight.flatten(1).sum(1)
    has = count > 0
    if not bool(has.any()):
        return prediction.sum() * 0.0
    return (per_image[has] / count[has]).mean()


def mask_iou(mask: Tensor, silhouette: Tensor, threshold: float = 0.5) -> Tensor:
    """Per-image IoU ``(B,)`` of ``mask > threshold`` with a ``{0, 1}`` silhouette (1 when both are empty)."""
    pred = (mask > threshold).flatten(1)
    true = silhouette.flatten(1) > 0.5
    inter = (pred & true).sum(1).float()
    union = (pred | true).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def mean_colour_blob(target: Tensor, silhouette: Tensor, background: Tensor) -> Tensor:
    """The trivial rendering: the true silhouette filled with the batch's mean hand colour, over the background.

    A decoder that draws a hand-coloured blob where the hand is, with no shape inside it, scores this.
    """
    weight = silhouette.expand_as(target)
    colour = (target * weight).sum((0, 2, 3)) / weight.sum((0, 2, 3)).clamp_min(1.0)
    return background * (1 - silhouette) + colour.view(1, -1, 1, 1) * silhouette


def latent_equivariance(points_i: Tensor, points_j: Tensor, R_ij: Tensor) -> Tensor:
    """How far the rotated latent of view *i* is from the latent of view *j*: ``|R_ij L_i - L_j|^2``.

    A 3D latent that carries geometry is equivariant to the camera rotation (Worrall et al., "Interpretable
    transformations with encoder-decoder networks", ICCV'17; Rhodin et al.'s latent is rotated by ``R_ij`` on
    the same assumption, but only the decoder's output checks it). Each point set is centred and scaled to unit
    RMS first, so shrinking or translating the latent cannot lower the loss and the only constant minimum
    (every point at one place) is excluded.

    Args:
        points_i: ``(B, N, 3)`` latent points of view *i* (a fourth, opacity column is ignored).
        points_j: ``(B, N, 3)`` latent points of view *j* of the same instant.
        R_ij: ``(B, 3, 3)`` rotation from camera *i* to camera *j*.

    Returns:
        Scalar mean squared distance per coordinate of the normalised point sets (0 for an exactly equivariant
        latent; about 2 for unrelated ones).
    """
    if points_i.shape != points_j.shape:
        raise ValueError(f"points_i {tuple(points_i.shape)} and points_j {tuple(points_j.shape)} differ")

    def normalised(points: Tensor) -> Tensor:
        centred = points - points.mean(1, keepdim=True)
        rms = centred.pow(2).sum(-1).mean(1).sqrt().clamp_min(EPS)
        return centred / rms[:, None, None]

    # the positions only: opacities, where the latent has them, do not turn
    rotated = normalised(points_i[..., :3].float()) @ R_ij.float().transpose(-1, -2)
    return (rotated - normalised(points_j[..., :3].float())).pow(2).sum(-1).mean()


def rotation_controls(
    render: Callable[[Tensor], dict[str, Tensor]],
    R: Tensor,
    target: Tensor,
    silhouette: Tensor,
    background: Tensor,
    render_mean_latent: Callable[[Tensor], dict[str, Tensor]] | None = None,
) -> dict[str, Tensor]:
    """Does the latent's rotation predict the other view? Hand-pixel L1 with the true and with wrong rotations.

    A latent that carries geometry renders the target view better with the true ``R_ij`` than with the
    identity (the input's own view) or with another item's rotation (a plausible but wrong view); a turning
    blob renders all three alike. The trivial blob (:func:`mean_colour_blob`) is the floor a silhouette-only
    decoder reaches.

    Args:
        render: ``R (B, 3, 3) -> {"image": (B, 3, H, W), "mask": (B, 1, H, W)}`` of one encoded batch.
        R: ``(B, 3, 3)`` true rotations from the input's camera to the target's (``B >= 2``).
        target: ``(B, 3, H, W)`` target views.
        silhouette: ``(B, 1, H, W)`` hand pixels of the targets.
        background: ``(B, 3, H, W)`` the target cameras' backgrounds.
        render_mean_latent: Optional ``render`` of the batch's mean latent in place of each item's (with its
            own appearance): a decoder that draws the hand from the appearance vector scores the same with it.

    Returns:
        ``synthesis_l1_hand`` (true rotation), ``identity_l1_hand``, ``other_rotation_l1_hand`` (each item
        rendered with the next item's rotation), ``blob_l1_hand``, ``mask_iou`` (true rotation's mask) and,
        with ``render_mean_latent``, ``mean_latent_l1_hand`` (true rotation).
    """
    if R.shape[0] < 2:
        raise ValueError("rotation_controls needs a batch of at least 2 items (another item's rotation)")
    true = render(R)
    identity = torch.eye(3, dtype=R.dtype, device=R.device).expand_as(R)
    values = {
        "synthesis_l1_hand": foreground_l1(true["image"], target, silhouette),
        "identity_l1_hand": foreground_l1(render(identity)["image"], target, silhouette),
        "other_rotation_l1_hand": foreground_l1(render(R.roll(1, 0))["image"], target, silhouette),
        "blob_l1_hand": foreground_l1(mean_colour_blob(target, silhouette, background), target, silhouette),
        "mask_iou": mask_iou(true["mask"], silhouette).mean(),
    }
    if render_mean_latent is not None:
        values["mean_latent_l1_hand"] = foreground_l1(render_mean_latent(R)["image"], target, silhouette)
    return values


class SynthesisLoss(nn.Module):
    """Reconstruction of the composite plus the label-free silhouette terms.

    ``loss = reconstruction(composite, target) + foreground_weight * foreground_l1
    + silhouette_weight * silhouette_bce``, with the silhouette from :func:`silhouette_target` of the target
    and its camera's background.

    Args:
        l1_weight, structural, structural_weight, perceptual_checkpoint, perceptual_weight: Passed to
            :class:`~handssl.models.components.losses.ReconstructionLoss`.
        foreground_weight: Weight of the L1 over the target's silhouette pixels (0 disables it).
        silhouette_weight: Weight of the BCE between the predicted mask and the silhouette (0 disables it).
        silhouette_threshold: Background-subtraction threshold (0.02 for clean renders; see module docstring).
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        structural: str = "ssim",
        structural_weight: float = 1.0,
        perceptual_checkpoint: str | None = None,
        perceptual_weight: float = 2.0,
        foreground_weight: float = 1.0,
        silhouette_weight: float = 1.0,
        silhouette_threshold: float = 0.02,
    ) -> None:
        super().__init__()
        if min(foreground_weight, silhouette_weight) < 0:
            raise ValueError("foreground_weight and silhouette_weight must be non-negative")
        if silhouette_threshold < 0:
            raise ValueError(f"silhouette_threshold must be >= 0, got {silhouette_threshold}")
        self.reconstruction = ReconstructionLoss(
            l1_weight, structural, structural_weight, perceptual_checkpoint, perceptual_weight
        )
        self.foreground_weight = foreground_weight
        self.silhouette_weight = silhouette_weight
        self.silhouette_threshold = silhouette_threshold

    def forward(
        self, composite: Tensor, mask: Tensor, target: Tensor, background: Tensor
    ) -> dict[str, Tensor]:
        """Terms and their weighted sum under ``"loss"``.

        Args:
            composite: ``(B, 3, H, W)`` rendered image (foreground blended over ``background``).
            mask: ``(B, 1, H, W)`` predicted mask.
            target: ``(B, 3, H, W)`` image to reproduce.
            background: ``(B, 3, H, W)`` the target camera's background.
        """
        terms = self.reconstruction(composite, target)
        total = terms["loss"]
        if self.foreground_weight > 0 or self.silhouette_weight > 0:
            silhouette = silhouette_target(target, background, self.silhouette_threshold)
            if self.foreground_weight > 0:
                terms["foreground_l1"] = foreground_l1(composite, target, silhouette)
                total = total + self.foreground_weight * terms["foreground_l1"]
            if self.silhouette_weight > 0:
                terms["silhouette"] = silhouette_bce(mask, silhouette)
                total = total + self.silhouette_weight * terms["silhouette"]
        terms["loss"] = total
        return terms


__all__: Sequence[str] = [
    "SynthesisLoss",
    "foreground_l1",
    "latent_equivariance",
    "mask_iou",
    "normalize_mask_max",
    "silhouette_bce",
    "silhouette_target",
]
