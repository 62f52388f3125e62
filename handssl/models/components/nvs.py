"""Geometry-aware novel-view synthesis components (Rhodin et al. ECCV'18; Müller et al. for hands).

An :class:`NVSEncoder` maps an image to a 3D latent ``L3D`` (``N`` points x 3, in the camera frame of the
image) and an appearance vector. :func:`rotate_points` turns ``L3D`` into another camera's frame with the
relative crop-camera rotation ``R_ij``. The :class:`NVSDecoder` renders the target view from the rotated
points and an appearance vector: it predicts a foreground and a mask that :func:`composite` blends over
the target camera's background, so the latent need not encode the background (the NSD-style mask of
Rhodin et al. CVPR'19; the ECCV'18 code fed the background as a skip connection instead). The
:class:`PoseHead` maps the un-rotated ``L3D`` to 21 root-relative joints, normalised by the training
mean and standard deviation.

All modules are plain ``nn.Module``s: tensors in, tensors out. This module holds the encoder and the
decoder; the parameter-free point helpers live in :mod:`~handssl.models.components.nvs_rendering` and the
pose head and checkpoint loading in :mod:`~handssl.models.components.nvs_pose_head`, both re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from handssl.data.multiview import pose_statistics as pose_statistics  # re-export; the data layer owns it
from handssl.models.components.backbones import ResNetBackbone, norm_layer
from handssl.models.components.nvs_losses import normalize_mask_max
from handssl.models.components.nvs_pose_head import PoseHead as PoseHead
from handssl.models.components.nvs_pose_head import load_modules as load_modules
from handssl.models.components.nvs_pose_head import load_state_dict_file as load_state_dict_file
from handssl.models.components.nvs_rendering import cell_centres
from handssl.models.components.nvs_rendering import composite as composite
from handssl.models.components.nvs_rendering import rotate_points as rotate_points
from handssl.models.components.nvs_rendering import splat_points as splat_points
from handssl.models.components.nvs_rendering import turntable_rotations as turntable_rotations

POINT_HEADS: tuple[str, ...] = ("linear", "pixel_aligned")
"""How :class:`NVSEncoder` reads its points off the features."""

FIRST_STEP = 0.08
"""Initial step between a pixel-aligned cell's depth samples, in crop half-widths (10 mm in a 240 mm crop)."""

MASK_FLOOR = 1e-4
"""Smallest mask value (as in NSD's ``1e-4 + (1 - 1e-4) * sigmoid``): keeps the background gradient alive."""


LINEAR_POINTS = 200
"""Points of the linear head's latent when none are given (Rhodin et al.'s ``L3D``)."""


def latent_points(
    image_size: int, point_head: str = "linear", depth_samples: int = 1, num_points: int | None = None
) -> int:
    """Points ``N`` of the latent: ``num_points`` when given, else the point head's own count.

    ``"pixel_aligned"`` places ``depth_samples`` points on each stride-4 cell, ``depth_samples x
    (image_size / 4)^2``, so the count follows the image size; ``"linear"`` takes :data:`LINEAR_POINTS`.
    """
    if num_points is not None:
        return num_points
    if point_head == "pixel_aligned":
        return depth_samples * (image_size // 4) ** 2
    return LINEAR_POINTS


class NVSEncoder(nn.Module):
    """Image to a 3D latent of ``num_points`` points and an appearance vector.

    A :class:`~handssl.models.components.backbones.ResNetBackbone` gives a ``C x h x w`` map; a 1x1
    convolution reduces it, and a linear layer on the flattened map (which keeps the spatial layout, unlike
    global pooling) outputs ``[appearance | L3D]``; consecutive triplets of the ``L3D`` part are points,
    as in Rhodin et al.'s ``latent_3d.view(B, -1, 3)``.

    Args:
        image_size: Side of the square input image in pixels.
        num_points: Points ``N`` of the 3D latent.
        appearance_dim: Size of the appearance vector.
        widths: Channels of the backbone stages.
        blocks: Basic blocks per backbone stage.
        reduce_channels: Channels after the 1x1 reduction, before flattening.
        norm: Normalisation kind of the backbone.
        point_head: How the points are read off the features. ``"linear"`` (Rhodin et al.): the linear layer
            outputs every point's coordinates. ``"pixel_aligned"``: one point per cell of the stride-4 feature
            map (``num_points = (image_size / 4)^2``), placed at that cell's centre plus a predicted offset,
            with a predicted depth, from the cell's features and the upsampled deeper ones (a feature
            pyramid): the points start where the image is and only learn where to move and how deep they lie,
            as in depth-based view synthesis (SynSin, Wiles et al. CVPR'20), instead of a linear layer on a
            4 x 4 map learning every coordinate from scratch.
        opacity: Also predict each point's opacity in ``[0, 1]`` (needs ``"pixel_aligned"``), as a fourth
            column of ``L3D`` (``(B, N, 4)``): which cells show the hand. Every cell has a point, most of them on
            the background; an opacity lets the splat, the decoder's points mask and the point-silhouette terms
            count the hand's points only, where without it the background's points must land on the hand in
            another view too and scatter in depth. Trained by ``geometry.opacity_weight`` against the image's
            own label-free silhouette, and by the rendering.
        depth_samples: With ``"pixel_aligned"``: points per cell along its ray (``num_points = depth_samples x
            (image_size / 4)^2``, ordered layer by layer). The first lies at the cell's predicted depth, each
            next one a predicted positive step behind it (starting at about 10 mm): the cell's ray through the
            hand's volume, not only its visible surface, so that a rotation can show the hand's far side (a
            layered depth image, Shade et al. SIGGRAPH'98; with exact depths, splatting the visible surface
            alone bounds the true / identity hand L1 at about 0.9, three samples 10 mm apart at about 0.75:
            ``experiments/tools/nvs_depth_oracle.py``). The samples share the cell's offset and opacity.
    """

    cell_centres: Tensor

    def __init__(
        self,
        image_size: int = 64,
        num_points: int = 200,
        appearance_dim: int = 64,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 1, 1),
        reduce_channels: int = 64,
        norm: str = "batch",
        point_head: Literal["linear", "pixel_aligned"] = "linear",
        opacity: bool = False,
        depth_samples: int = 1,
    ) -> None:
        super().__init__()
        if point_head not in POINT_HEADS:
            raise ValueError(f"point_head must be one of {POINT_HEADS}, got {point_head!r}")
        if depth_samples < 1:
            raise ValueError(f"depth_samples must be >= 1, got {depth_samples}")
        if depth_samples > 1 and point_head != "pixel_aligned":
            raise ValueError(
                "depth_samples places points along each cell's ray: it needs point_head 'pixel_aligned'"
            )
        if opacity and point_head != "pixel_aligned":
            raise ValueError(
                "opacity marks which stride-4 cells show the hand: it needs point_head 'pixel_aligned'"
            )
        if num_points < 1 or appearance_dim < 1:
            raise ValueError(
                f"num_points and appearance_dim must be >= 1, got {num_points}, {appearance_dim}"
            )
        self.backbone = ResNetBackbone(widths=widths, blocks=blocks, norm=norm)
        if image_size % self.backbone.stride:
            raise ValueError(
                f"image_size {image_size} must be a multiple of the backbone stride {self.backbone.stride}"
            )
        side = image_size // self.backbone.stride
        self.image_size = image_size
        self.num_points = num_points
        self.appearance_dim = appearance_dim
        self.point_head = point_head
        self.opacity = opacity
        self.depth_samples = depth_samples
        self.point_dim = 4 if opacity else 3
        """Columns of a point: ``x, y, z`` and, with ``opacity``, its opacity."""
        self.reduce = nn.Sequential(
            nn.Conv2d(self.backbone.out_channels, reduce_channels, 1, bias=False),
            norm_layer(reduce_channels, norm),
            nn.ReLU(inplace=True),
        )
        linear_points = num_points if point_head == "linear" else 0
        self.fc = nn.Linear(reduce_channels * side * side, appearance_dim + 3 * linear_points)
        if point_head == "pixel_aligned":
            if len(widths) < 3:
                raise ValueError(
                    "point_head 'pixel_aligned' reads the stride-4 stage: give >= 3 encoder widths"
                )
            cells = image_size // 4
            if num_points != depth_samples * cells * cells:
                raise ValueError(
                    f"point_head 'pixel_aligned' places depth_samples points per stride-4 cell: num_points must "
                    f"be {depth_samples} x (image_size / 4)^2 = {depth_samples * cells * cells} at image_size "
                    f"{image_size}, got {num_points}"
                )
            pyramid = sum(widths[1:])  # the stride-4 stage and every deeper one, upsampled to it
            self.to_points = nn.Sequential(
                nn.Conv2d(pyramid, reduce_channels, 3, padding=1, bias=False),
                norm_layer(reduce_channels, norm),
                nn.ReLU(inplace=True),
                # per cell: x, y offsets, depth, [opacity,] then one step behind per further depth sample
                nn.Conv2d(reduce_channels, self.point_dim + depth_samples - 1, 1),
            )
            last = cast(nn.Conv2d, self.to_points[-1])
            nn.init.zeros_(last.weight)  # every point starts at its cell's centre, depth 0 (opacity 1/2)
            bias = cast(Tensor, last.bias)  # the layer has a bias
            nn.init.zeros_(bias)
            with torch.no_grad():  # steps start at FIRST_STEP behind (softplus(bias) = FIRST_STEP)
                bias[self.point_dim :] = math.log(math.expm1(FIRST_STEP))
            axis = cell_centres(cells)
            y, x = torch.meshgrid(axis, axis, indexing="ij")
            self.register_buffer("cell_centres", torch.stack([x, y, torch.zeros_like(x)], -1).view(-1, 3))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` image to ``(L3D (B, N, point_dim), appearance (B, appearance_dim))``."""
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"encoder built for {self.image_size}x{self.image_size} images, got {tuple(image.shape[-2:])}"
            )
        features = self.backbone.forward_features(image)
        latent = self.fc(torch.flatten(self.reduce(features[-1]), 1))
        appearance = latent[:, : self.appearance_dim]
        if self.point_head == "linear":
            return latent[:, self.appearance_dim :].reshape(-1, self.num_points, 3), appearance
        finest = features[2]  # after the stem and the first two stages: stride 4
        pyramid = [finest] + [
            F.interpolate(f, size=finest.shape[-2:], mode="bilinear", align_corners=False)
            for f in features[3:]
        ]
        out = self.to_points(torch.cat(pyramid, 1)).flatten(2).transpose(1, 2)  # (B, cells^2, channels)
        points = self.cell_centres + out[..., :3]
        if self.opacity:
            points = torch.cat([points, torch.sigmoid(out[..., 3:4])], -1)
        if (
            self.depth_samples > 1
        ):  # each further sample a positive step behind the one before, layer by layer
            behind = torch.cumsum(F.softplus(out[..., self.point_dim :]), -1)  # (B, cells^2, samples - 1)
            layers = [points] + [
                torch.cat([points[..., :2], points[..., 2:3] + behind[..., k : k + 1], points[..., 3:]], -1)
                for k in range(self.depth_samples - 1)
            ]
            points = torch.cat(layers, 1)
        return points, appearance


class UpBlock(nn.Module):
    """Bilinear x2 upsampling, Conv3x3 + norm + ReLU, Conv3x3 + ReLU (Rhodin's ``unetUpNoSKip``)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            norm_layer(out_channels, norm),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class NVSDecoder(nn.Module):
    """Render an image from (rotated) ``L3D`` and an appearance vector, composited over a background.

    ``L3D`` goes through ``Linear -> Dropout -> ReLU`` to a ``latent_channels x s x s`` map
    (``s = image_size / 2**len(widths)``), the appearance vector is tiled over it and concatenated, and
    bilinear up-blocks bring it to full resolution, where a 1x1 convolution predicts an RGB foreground
    (sigmoid, in ``[0, 1]``) and a mask ``1e-4 + (1 - 1e-4) * sigmoid``.

    Args:
        image_size: Side of the output image in pixels.
        num_points: Points ``N`` of the 3D latent.
        appearance_dim: Size of the appearance vector.
        latent_channels: Channels of the map the points are lifted to.
        widths: Output channels of each up-block (each doubles the resolution).
        dropout: Dropout on the lifted latent (Rhodin et al.: 0.3).
        norm: Normalisation kind in the up-blocks.
        normalize_mask: Divide each mask by its maximum (NSD's ``scale_mask_max_to_1``), so every rendering
            holds a fully opaque pixel and "show only the background" stops being an easy minimum.
        splat: Also feed the decoder the points' orthographic splats (:func:`splat_points`: occupancy and
            depth, drawn at half the image size and pooled or upsampled to the input of every up-block and
            of the output layer), so that the rendering depends on where the rotated points project, at every
            scale, not only on what a linear layer makes of their coordinates (a departure from Rhodin et
            al., whose decoder sees the points through the linear layer alone).
        mask_from_points: Gate the predicted mask by the splat's coverage ``1 - exp(-occupancy)`` at full
            resolution (needs ``splat``): the decoder can only draw the hand where the rotated points project,
            so its silhouette is the points' silhouette and the rotation must move it (as differentiable point
            rendering does, Insafutdinov & Dosovitskiy NeurIPS'18), instead of a blob the decoder paints
            wherever it likes.
        point_dim: Columns of a point (3, or 4 with the encoder's opacities, which then weigh the splat).
    """

    def __init__(
        self,
        image_size: int = 64,
        num_points: int = 200,
        appearance_dim: int = 64,
        latent_channels: int = 64,
        widths: Sequence[int] = (128, 64, 32),
        dropout: float = 0.3,
        norm: str = "batch",
        normalize_mask: bool = False,
        splat: bool = False,
        mask_from_points: bool = False,
        point_dim: int = 3,
    ) -> None:
        super().__init__()
        if point_dim not in (3, 4):
            raise ValueError(f"point_dim must be 3 (x, y, z) or 4 (and opacity), got {point_dim}")
        if mask_from_points and not splat:
            raise ValueError(
                "mask_from_points gates the mask by the points' splat: set splat (decoder.splat) too"
            )
        if not widths:
            raise ValueError("widths must name at least one up-block")
        factor = 2 ** len(widths)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} must be a multiple of 2**len(widths) = {factor}")
        self.image_size = image_size
        self.num_points = num_points
        self.point_dim = point_dim
        self.appearance_dim = appearance_dim
        self.side = image_size // factor
        self.latent_channels = latent_channels
        self.normalize_mask = normalize_mask
        self.splat = splat
        self.mask_from_points = mask_from_points
        self.from_latent = nn.Sequential(
            nn.Linear(point_dim * num_points, latent_channels * self.side * self.side),
            nn.Dropout(dropout),
            nn.ReLU(inplace=True),
        )
        blocks = []
        extra = 2 if splat else 0  # the splat's occupancy and depth join the input of every stage
        channels = latent_channels + appearance_dim
        for width in widths:
            blocks.append(UpBlock(channels + extra, width, norm))
            channels = width
        self.up = nn.Sequential(*blocks)
        self.to_output = nn.Conv2d(channels + extra, 4, 1)

    def layers(self, points: Tensor, appearance: Tensor) -> tuple[Tensor, Tensor]:
        """Foreground ``(B, 3, H, W)`` in ``[0, 1]`` and mask ``(B, 1, H, W)`` in ``(0, 1]``."""
        if points.shape[1:] != (self.num_points, self.point_dim):
            raise ValueError(
                f"points must be (B, {self.num_points}, {self.point_dim}), got {tuple(points.shape)}"
            )
        if appearance.shape[1:] != (self.appearance_dim,):
            raise ValueError(f"appearance must be (B, {self.appearance_dim}), got {tuple(appearance.shape)}")
        lifted = self.from_latent(points.flatten(1)).view(-1, self.latent_channels, self.side, self.side)
        tiled = appearance[:, :, None, None].expand(-1, -1, self.side, self.side)
        x = torch.cat([lifted, tiled], dim=1)
        if self.splat:
            drawn = splat_points(points, self.image_size // 2, sigma=4.0 / self.image_size)  # ~ one cell
            for block in self.up:
                x = block(torch.cat([x, F.interpolate(drawn, size=x.shape[-2:], mode="area")], dim=1))
            full = F.interpolate(drawn, size=x.shape[-2:], mode="bilinear", align_corners=False)
            out = self.to_output(torch.cat([x, full], dim=1))
        else:
            out = self.to_output(self.up(x))
        foreground = torch.sigmoid(out[:, :3])
        opacity = torch.sigmoid(out[:, 3:])
        if self.mask_from_points:
            opacity = opacity * -torch.expm1(-full[:, :1].clamp_min(0.0))  # coverage of the projected points
        mask = MASK_FLOOR + (1 - MASK_FLOOR) * opacity
        if self.normalize_mask:
            mask = normalize_mask_max(mask)
        return foreground, mask

    def forward(self, points: Tensor, appearance: Tensor, background: Tensor) -> Tensor:
        """Composited ``(B, 3, H, W)`` image of ``points`` with ``appearance`` over ``background``."""
        foreground, mask = self.layers(points, appearance)
        return composite(foreground, mask, background)
