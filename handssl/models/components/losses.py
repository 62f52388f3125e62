"""Image reconstruction losses for novel-view synthesis: L1, SSIM, image gradients, optional perceptual.

Images are ``(B, 3, H, W)`` in ``[0, 1]``. Nothing here downloads weights: the perceptual loss reads a
ResNet-18 checkpoint from a path the user gives (the torchvision ``resnet18`` state-dict layout, e.g. the
file torchvision caches as ``resnet18-f37072fd.pth``), as Rhodin et al.'s ``ImageNetCriterium`` uses an
ImageNet ResNet-18's ``[relu(bn1(conv1)), layer1, layer2]`` features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from handssl.models.components.backbones import TORCHVISION_SHORTCUT, BasicBlock

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRUCTURAL_LOSSES = ("ssim", "gradient", "none")


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    x: Tensor,
    y: Tensor,
    window_size: int = 7,
    sigma: float = 1.5,
    data_range: float = 1.0,
) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image, Gaussian-weighted local statistics.

    Local means, variances and covariance are Gaussian-weighted over ``window_size`` windows without padding
    (only windows inside the image count); ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``.

    Args:
        x: ``(B, C, H, W)`` images.
        y: ``(B, C, H, W)`` images.
        window_size: Side of the Gaussian window (odd, at most the image side).
        sigma: Standard deviation of the window in pixels.
        data_range: Value range ``L`` of the images.

    Returns:
        ``(B,)`` mean SSIM of each image pair (1 for identical images).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if window_size % 2 == 0 or window_size > min(x.shape[-2:]):
        raise ValueError(f"window_size must be odd and at most the image side, got {window_size}")
    channels = x.shape[1]
    window = _gaussian_window(window_size, sigma, channels, x)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def image_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences along width and height: ``(B, C, H, W-1)`` and ``(B, C, H-1, W)``."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def gradient_loss(x: Tensor, y: Tensor) -> Tensor:
    """Mean L1 difference of the image gradients of ``x`` and ``y`` (a structural term without weights)."""
    gx_x, gy_x = image_gradients(x)
    gx_y, gy_y = image_gradients(y)
    return 0.5 * ((gx_x - gx_y).abs().mean() + (gy_x - gy_y).abs().mean())


class ResNet18Features(nn.Module):
    """The first layers of a ResNet-18 (``conv1``, ``bn1``, ``layer1``, ``layer2``), torchvision-named.

    The blocks are :class:`~handssl.models.components.backbones.BasicBlock`, whose projection shortcut is
    ``shortcut`` where torchvision says ``downsample`` (both names load).

    ``forward`` returns Rhodin et al.'s three perceptual levels: ``relu(bn1(conv1(x)))`` at 1/2,
    ``layer1`` at 1/4 (after the max-pool) and ``layer2`` at 1/8.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, stride=2), BasicBlock(128, 128))

    def forward(self, x: Tensor) -> list[Tensor]:
        x0 = F.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        return [x0, x1, x2]


def load_resnet18_features(checkpoint_path: str | Path) -> ResNet18Features:
    """Build :class:`ResNet18Features` and load it from a ResNet-18 state dict on disk (never downloads).

    Args:
        checkpoint_path: A ``.pth`` holding a torchvision-layout ResNet-18 state dict (keys such as
            ``conv1.weight``, ``layer1.0.bn1.running_mean``), or a dict with that under ``"state_dict"``.
            Keys of later layers (``layer3``, ``layer4``, ``fc``) are ignored.

    Raises:
        FileNotFoundError: The path does not exist.
        ValueError: The file is not a state dict, or lacks or mis-shapes a needed parameter.
    """
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"perceptual-loss checkpoint not found: {path}. Point perceptual_checkpoint at a ResNet-18 state "
            "dict on disk (torchvision layout, e.g. resnet18-f37072fd.pth); handssl never downloads weights. "
            "Set perceptual_weight: 0 to train without the perceptual loss."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read perceptual-loss checkpoint {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"perceptual-loss checkpoint {path} does not hold a state dict (got {type(state).__name__})"
        )
    shortcut = f".{TORCHVISION_SHORTCUT}."
    state = {k.replace(shortcut, ".shortcut."): v for k, v in state.items()}
    model = ResNet18Features()
    needed = model.state_dict()
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(
            f"perceptual-loss checkpoint {path} is not a torchvision ResNet-18 state dict: "
            f"missing {len(missing)} keys, e.g. {missing[:3]}"
        )
    wrong = [k for k, v in needed.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"perceptual-loss checkpoint {path}: wrong shapes for {wrong[:3]}")
    model.load_state_dict({k: state[k] for k in needed})
    return model


class PerceptualLoss(nn.Module):
    """Mean over feature levels of the L1 distance between frozen ResNet-18 features of two images.

    Inputs in ``[0, 1]`` are ImageNet-normalised inside. The feature network is frozen
    (``requires_grad=False``) and always in eval mode, so its BatchNorm statistics never move.

    Args:
        checkpoint_path: ResNet-18 state dict on disk (see :func:`load_resnet18_features`).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, checkpoint_path: str | Path) -> None:
        super().__init__()
        self.features = load_resnet18_features(checkpoint_path)
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train()

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx = self.features((x - self.mean) / self.std)
        with torch.no_grad():
            fy = self.features((y - self.mean) / self.std)
        return torch.stack([F.l1_loss(a, b) for a, b in zip(fx, fy)]).mean()


class ReconstructionLoss(nn.Module):
    """Weighted sum of L1, a structural term (SSIM or image gradients) and an optional perceptual term.

    Args:
        l1_weight: Weight of the pixel L1 loss.
        structural: ``"ssim"`` (``1 - SSIM``), ``"gradient"`` (L1 of image gradients) or ``"none"``.
        structural_weight: Weight of the structural term.
        perceptual_checkpoint: Optional path to a ResNet-18 state dict for the perceptual loss.
        perceptual_weight: Weight of the perceptual loss (Rhodin et al.: 2); used only with a checkpoint.
        ssim_window: Gaussian window of SSIM.
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        structural: str = "ssim",
        structural_weight: float = 1.0,
        perceptual_checkpoint: str | None = None,
        perceptual_weight: float = 2.0,
        ssim_window: int = 7,
    ) -> None:
        super().__init__()
        if structural not in STRUCTURAL_LOSSES:
            raise ValueError(f"structural must be one of {STRUCTURAL_LOSSES}, got {structural!r}")
        if min(l1_weight, structural_weight, perceptual_weight) < 0:
            raise ValueError("loss weights must be non-negative")
        self.l1_weight = l1_weight
        self.structural = structural
        self.structural_weight = structural_weight
        self.perceptual_weight = perceptual_weight
        self.ssim_window = ssim_window
        self.perceptual = PerceptualLoss(perceptual_checkpoint) if perceptual_checkpoint else None

    def forward(self, prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Loss terms and their weighted sum under ``"loss"``."""
        terms = {"l1": F.l1_loss(prediction, target)}
        total = self.l1_weight * terms["l1"]
        if self.structural == "ssim":
            terms["ssim"] = 1 - ssim(prediction, target, window_size=self.ssim_window).mean()
            total = total + self.structural_weight * terms["ssim"]
        elif self.structural == "gradient":
            terms["gradient"] = gradient_loss(prediction, target)
            total = total + self.structural_weight * terms["gradient"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(prediction, target)
            total = total + self.perceptual_weight * terms["perceptual"]
        terms["loss"] = total
        return terms


def per_image_l1(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error of each image pair, ``(B,)``."""
    return (prediction - target).abs().flatten(1).mean(1)


__all__: Sequence[str] = [
    "PerceptualLoss",
    "ReconstructionLoss",
    "ResNet18Features",
    "gradient_loss",
    "image_gradients",
    "load_resnet18_features",
    "per_image_l1",
    "ssim",
]
