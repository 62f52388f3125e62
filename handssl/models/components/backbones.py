"""Small ResNet-style backbones written from scratch (no torchvision, no downloaded weights)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def norm_layer(channels: int, kind: str = "batch") -> nn.Module:
    """Normalisation layer by name: ``"batch"``, ``"group"`` (8 groups or fewer) or ``"none"``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'group' or 'none'")


TORCHVISION_SHORTCUT = "downsample"
"""torchvision's name for :class:`BasicBlock`'s projection shortcut (``shortcut`` here)."""


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with a residual connection.

    With ``norm="batch"`` it is torchvision's ``BasicBlock`` (same layers and parameter names) except that the
    projection shortcut is called ``shortcut`` where torchvision says ``downsample``; ``load_state_dict`` reads
    either name (torchvision ResNet checkpoints, and checkpoints that held the perceptual loss's own copy).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (2 halves the resolution).
        norm: Normalisation kind (see :func:`norm_layer`).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(out_channels, norm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(out_channels, norm)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm_layer(out_channels, norm)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        torchvision = prefix + TORCHVISION_SHORTCUT + "."
        for key in [k for k in state_dict if k.startswith(torchvision)]:
            state_dict[prefix + "shortcut." + key[len(torchvision) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ResNetBackbone(nn.Module):
    """A compact ResNet: a stem, then stages of basic blocks, each stage after the first halving resolution.

    With the defaults a 64x64 image gives a ``256 x 4 x 4`` feature map (total stride 16).

    Args:
        in_channels: Image channels.
        widths: Channels of each stage.
        blocks: Basic blocks per stage.
        stem_stride: Stride of the stem convolution (2 for small images, 4 adds a max-pool for large ones).
        norm: Normalisation kind (``"batch"``, ``"group"``, ``"none"``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_stride: int = 2,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(
                f"widths {tuple(widths)} and blocks {tuple(blocks)} must be non-empty and equally long"
            )
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 5, min(stem_stride, 2), 2, bias=False),
            norm_layer(widths[0], norm),
            nn.ReLU(inplace=True),
        ]
        if stem_stride == 4:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages = []
        channels = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(channels, width, stride=1 if i == 0 else 2, norm=norm)]
            layers += [BasicBlock(width, width, norm=norm) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels
        self.stride = stem_stride * 2 ** (len(widths) - 1)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Feature maps after the stem and after every stage (for decoders with skip connections)."""
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` image to the last ``(B, out_channels, H/stride, W/stride)`` feature map."""
        return self.forward_features(x)[-1]


class GlobalPool(nn.Module):
    """Global average pooling to a ``(B, C)`` vector."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
