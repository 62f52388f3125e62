"""SemiHand's "perturbation" and "diversity" augmentations, batched in torch on whichever device holds the batch.

The same transforms and options as the albumentations pipelines of :mod:`handssl.data.augment`, drawn per item
but applied to a whole ``(B, C, H, W)`` batch at once (no numpy round trip, no per-item Python): on 2 CPU cores the
per-item pipelines cost more than the network's step, which made steps, the first lever of the 2.5D network,
scarce. :class:`~handssl.data.views.SemiHandViews` runs them in the DataModule's ``on_after_batch_transfer``
with ``augment_on="batch"``.

Geometry is one similarity matrix ``M`` per image (original pixels -> augmented pixels, pixel centres at integer
coordinates, about the image centre), and labels follow it as in :func:`~handssl.data.augment.augment_sample`:
``joints2d`` through ``M``, camera-frame ``joints3d`` rotated by the optical-axis rotation ``Rz`` of ``M``, and
``K`` becomes ``M @ K @ Rz^T``. Differences from albumentations (same distributions of parameters otherwise):
colour jitter applies brightness, contrast, saturation, hue in this fixed order (albumentations shuffles it), hue
is a rotation of the chroma plane (YIQ) rather than an HSV shift, masks are warped bilinearly (soft edges), and
the JPEG round trip is the codec's lossy part (4:2:0 chroma subsampling and 8 x 8 DCT quantisation with the
standard tables scaled to the quality), without its rounding to 8-bit.

Random draws come from torch's global CPU generator (whose state handssl's resumable loaders checkpoint), so a
resumed run draws what the uninterrupted run drew; only the images move to their device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from handssl.geometry import optical_axis_rotation, transform_intrinsics, transform_points

__all__ = [
    "DiversityOptions",
    "PerturbationOptions",
    "augment_labeled_batch",
    "augment_unlabeled_batch",
    "color_jitter",
    "diversity",
    "gaussian_blur",
    "jpeg_round_trip",
    "perturbation_matrices",
    "random_erasing",
    "similarity_matrices",
    "warp",
]


@dataclass(frozen=True)
class PerturbationOptions:
    """Options of the weak "perturbation" (see :func:`~handssl.data.augment.perturbation_pipeline`)."""

    shift_px: int = 5
    rotate_deg: float = 2.0
    right_angles: bool = True

    def __post_init__(self) -> None:
        if self.shift_px < 0 or self.rotate_deg < 0:
            raise ValueError(f"shift_px and rotate_deg must be >= 0, got {self.shift_px}, {self.rotate_deg}")


@dataclass(frozen=True)
class DiversityOptions:
    """Options of the strong "diversity" augmentation (see :func:`~handssl.data.augment.diversity_pipeline`)."""

    rotate_deg: float = 30.0
    scale: tuple[float, float] = (0.85, 1.1)
    translate_fraction: float = 0.1
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05
    p_color: float = 0.8
    p_gray: float = 0.1
    p_geometric: float = 0.9
    p_erase: float = 0.3
    erase_area: tuple[float, float] = (0.02, 0.15)
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    p_noise: float = 0.0
    noise_std: tuple[float, float] = (0.01, 0.05)
    p_jpeg: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        if self.scale[0] <= 0 or self.scale[0] > self.scale[1]:
            raise ValueError(f"scale must be an increasing pair of positive factors, got {self.scale}")
        if not 0 <= self.translate_fraction < 0.5:
            raise ValueError(f"translate_fraction must be in [0, 0.5), got {self.translate_fraction}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be an increasing pair in [1, 100], got {self.jpeg_quality}")


# ---------------------------------------------------------------------------------------------- draws
def _uniform(n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, dtype=torch.float64)


def _coin(n: int, p: float) -> Tensor:
    return torch.rand(n, dtype=torch.float64) < p


def similarity_matrices(angle_rad: Tensor, scale: Tensor, shift_px: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, 3, 3)`` float64 matrices: rotate by ``angle`` and zoom by ``scale`` about the centre, then shift.

    Args:
        angle_rad: ``(B,)`` angles, counter-clockwise as seen on screen (OpenCV's and albumentations' sign).
        scale: ``(B,)`` zoom factors.
        shift_px: ``(B, 2)`` shifts in pixels.
        size: ``(height, width)`` of the images.
    """
    height, width = size
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    cos, sin = torch.cos(angle_rad) * scale, torch.sin(angle_rad) * scale
    m = torch.zeros(angle_rad.shape[0], 3, 3, dtype=torch.float64)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, sin, -sin, cos
    m[:, :2, 2] = centre - (m[:, :2, :2] @ centre) + shift_px.to(torch.float64)
    m[:, 2, 2] = 1.0
    return m


def perturbation_matrices(n: int, size: tuple[int, int], options: PerturbationOptions) -> Tensor:
    """``(n, 3, 3)`` matrices of exactly one shift, small rotation or right-angle rotation each.

    The choice weights are albumentations' ``OneOf`` weights in
    :func:`~handssl.data.augment.perturbation_pipeline`: shift 1, small rotation 1, each right angle 1/3.
    """
    weights = [1.0, 1.0] + ([1 / 3] * 3 if options.right_angles else [])
    choice = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True)
    angle = torch.zeros(n, dtype=torch.float64)
    shift = torch.zeros(n, 2, dtype=torch.float64)
    small = math.radians(options.rotate_deg)
    shift_draw = torch.randint(-options.shift_px, options.shift_px + 1, (n, 2)).to(torch.float64)
    angle_draw = _uniform(n, -small, small)
    shift = torch.where((choice == 0)[:, None], shift_draw, shift)
    angle = torch.where(choice == 1, angle_draw, angle)
    for k, right in enumerate((90.0, 180.0, 270.0), start=2):
        angle = torch.where(choice == k, torch.full_like(angle, math.radians(right)), angle)
    return similarity_matrices(angle, torch.ones(n, dtype=torch.float64), shift, size)


def _geometric_matrices(n: int, size: tuple[int, int], options: DiversityOptions) -> Tensor:
    height, width = size
    angle = _uniform(n, -math.radians(options.rotate_deg), math.radians(options.rotate_deg))
    scale = _uniform(n, *options.scale)
    t = options.translate_fraction
    shift = torch.stack([_uniform(n, -t, t) * width, _uniform(n, -t, t) * height], -1)
    m = similarity_matrices(angle, scale, shift, size)
    keep = ~_coin(n, options.p_geometric)
    m[keep] = torch.eye(3, dtype=torch.float64)
    return m


# ---------------------------------------------------------------------------------------------- pixels
def warp(images: Tensor, matrices: Tensor, mode: str = "bilinear") -> Tensor:
    """Warp ``(B, C, H, W)`` images by ``(B, 3, 3)`` pixel matrices (original -> warped); outside is 0."""
    b, _, h, w = images.shape
    inverse = torch.linalg.inv(matrices.to(torch.float64)).to(images.device, torch.float32)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=images.device, dtype=torch.float32),
        torch.arange(w, device=images.device, dtype=torch.float32),
        indexing="ij",
    )
    grid = torch.stack([xs, ys], -1).reshape(1, h * w, 2).expand(b, -1, -1)
    source = transform_points(grid, inverse)
    scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=images.device)
    normalised = (source * scale - 1).reshape(b, h, w, 2)
    return F.grid_sample(
        images, normalised.to(images.dtype), mode=mode, padding_mode="zeros", align_corners=True
    )


_LUMA = (0.299, 0.587, 0.114)


def _gray(images: Tensor) -> Tensor:
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def color_jitter(
    images: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor
) -> Tensor:
    """Brightness, contrast, saturation (factors, ``(B,)``) and hue (turns, ``(B,)``) of RGB images in [0, 1]."""
    view = lambda x: x.to(images.device, images.dtype).view(-1, 1, 1, 1)  # noqa: E731
    out = (images * view(brightness)).clamp(0, 1)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * view(contrast) + mean).clamp(0, 1)
    gray = _gray(out)
    out = ((out - gray) * view(saturation) + gray).clamp(0, 1)
    # hue: rotate the chroma plane of YIQ by the hue turn
    rgb_to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", rgb_to_yiq, out)
    theta = view(hue) * (2 * math.pi)
    i, q = yiq[:, 1:2], yiq[:, 2:3]
    yiq = torch.cat(
        [
            yiq[:, :1],
            i * torch.cos(theta) - q * torch.sin(theta),
            i * torch.sin(theta) + q * torch.cos(theta),
        ],
        1,
    )
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(rgb_to_yiq), yiq).clamp(0, 1)


def random_erasing(images: Tensor, area: Tensor, aspect: Tensor, centre: Tensor) -> Tensor:
    """Zero one rectangle per image: ``area`` (fraction of the image), ``aspect`` (h / w), ``centre`` in [0, 1]^2."""
    _, _, h, w = images.shape
    rect_h = (area * h * w * aspect).sqrt().clamp(max=h)
    rect_w = (area * h * w / aspect).sqrt().clamp(max=w)
    cy = centre[:, 1] * (h - rect_h) + rect_h / 2
    cx = centre[:, 0] * (w - rect_w) + rect_w / 2
    ys = torch.arange(h, dtype=torch.float64)[None, :, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, None, :] + 0.5
    inside = ((ys - cy[:, None, None]).abs() <= rect_h[:, None, None] / 2) & (
        (xs - cx[:, None, None]).abs() <= rect_w[:, None, None] / 2
    )
    return images * (~inside).to(images.device, images.dtype).unsqueeze(1)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` (px, ``(B,)``) per image; reflected borders."""
    b, c, h, w = images.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    kernel = (kernel / kernel.sum(-1, keepdim=True)).to(images.device, images.dtype)
    weight = kernel.repeat_interleave(c, 0)  # (B * C, K)
    x = F.pad(images.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, weight[:, None, None, :], groups=b * c)
    x = F.conv2d(x, weight[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


_JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55), (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62), (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)  # fmt: skip
_JPEG_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99), (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99), *([(99,) * 8] * 4),
)  # fmt: skip


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device, dtype)


def _quantise_blocks(channel: Tensor, table: Tensor) -> Tensor:
    """DCT, quantise by ``table`` (``(B, 8, 8)``, values of 0..255 pixels) and invert, on 8 x 8 blocks."""
    b, h, w = channel.shape
    ph, pw = (-h) % 8, (-w) % 8
    x = F.pad(channel[:, None], (0, pw, 0, ph), mode="replicate")[:, 0] * 255 - 128
    blocks = x.reshape(b, (h + ph) // 8, 8, (w + pw) // 8, 8).permute(0, 1, 3, 2, 4)
    d = _dct_matrix(channel.device, channel.dtype)
    coeffs = d @ blocks @ d.T
    q = table[:, None, None]
    blocks = d.T @ (torch.round(coeffs / q) * q) @ d
    x = blocks.permute(0, 1, 3, 2, 4).reshape(b, h + ph, w + pw)[:, :h, :w]
    return (x + 128) / 255


def jpeg_round_trip(images: Tensor, quality: Tensor) -> Tensor:
    """The lossy part of a baseline JPEG (4:2:0 chroma, standard tables at ``quality``, ``(B,)``) of RGB in [0, 1]."""
    q = quality.to(torch.float64).clamp(1, 100)
    factor = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    tables = []
    for base in (_JPEG_LUMA, _JPEG_CHROMA):
        t = torch.tensor(base, dtype=torch.float64)[None] * factor[:, None, None]
        tables.append(((t + 50) // 100).clamp(1, 255).to(images.device, images.dtype))
    to_ycc = images.new_tensor(
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
    )
    ycc = torch.einsum("ij,bjhw->bihw", to_ycc, images)
    y = _quantise_blocks(ycc[:, 0], tables[0])
    h, w = images.shape[-2:]
    chroma = F.avg_pool2d(ycc[:, 1:] + 0.5, 2, ceil_mode=True)
    chroma = torch.stack([_quantise_blocks(chroma[:, i], tables[1]) for i in range(2)], 1)
    chroma = F.interpolate(chroma, scale_factor=2, mode="nearest")[..., :h, :w] - 0.5
    out = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_ycc), torch.cat([y[:, None], chroma], 1))
    return out.clamp(0, 1)


def _where(selected: Tensor, changed: Tensor, images: Tensor) -> Tensor:
    return torch.where(selected.to(images.device).view(-1, 1, 1, 1), changed, images)


def diversity(
    images: Tensor, options: DiversityOptions, masks: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The "diversity" augmentation of a batch: colour, gray, geometry, erasing, blur, noise, JPEG (in this order).

    Args:
        images: ``(B, 3, H, W)`` RGB in [0, 1].
        options: The options.
        masks: Optional ``(B, 1, H, W)`` masks that follow the geometry.

    Returns:
        The augmented images, masks (or ``None``) and ``(B, 3, 3)`` float64 matrices (original -> augmented px).
    """
    n, _, h, w = images.shape
    o = options
    jitter = _coin(n, o.p_color)
    if jitter.any():
        brightness, contrast, saturation = (
            _uniform(n, max(0.0, 1 - s), 1 + s) for s in (o.brightness, o.contrast, o.saturation)
        )
        changed = color_jitter(images, brightness, contrast, saturation, _uniform(n, -o.hue, o.hue))
        images = _where(jitter, changed, images)
    gray = _coin(n, o.p_gray)
    if gray.any():
        images = _where(gray, _gray(images).expand_as(images), images)
    matrices = _geometric_matrices(n, (h, w), o)
    images = warp(images, matrices)
    if masks is not None:
        masks = warp(masks, matrices)
    erase = _coin(n, o.p_erase)
    if erase.any():
        area = _uniform(n, *o.erase_area)
        aspect = torch.exp(_uniform(n, math.log(0.3), math.log(3.3)))
        changed = random_erasing(images, area, aspect, torch.rand(n, 2, dtype=torch.float64))
        images = _where(erase, changed, images)
    blur = _coin(n, o.p_blur)
    if blur.any():
        images = _where(blur, gaussian_blur(images, _uniform(n, *o.blur_sigma)), images)
    noise = _coin(n, o.p_noise)
    if noise.any():
        std = _uniform(n, *o.noise_std).to(images.device, images.dtype).view(-1, 1, 1, 1)
        noisy = (images + std * torch.randn(images.shape).to(images.device, images.dtype)).clamp(0, 1)
        images = _where(noise, noisy, images)
    jpeg = _coin(n, o.p_jpeg)
    if jpeg.any():
        quality = torch.randint(o.jpeg_quality[0], o.jpeg_quality[1] + 1, (n,))
        images = _where(jpeg, jpeg_round_trip(images, quality), images)
    return images, masks, matrices


# ---------------------------------------------------------------------------------------------- labels
def _in_bounds(joints2d: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = size
    finite = torch.isfinite(joints2d).all(-1)
    x, y = joints2d[..., 0], joints2d[..., 1]
    return finite & (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def augment_labeled_batch(batch: dict[str, Any], options: DiversityOptions) -> dict[str, Any]:
    """Apply "diversity" to a labelled batch and move its labels (``joints2d``, ``joints3d``, ``K``) along.

    Sets ``image``, ``mask``, ``joints2d``, ``joints3d``, ``K``, ``in_bounds`` and ``transform_matrix`` as
    :func:`~handssl.data.augment.augment_sample` does per item.
    """
    images = batch["image"]
    out = dict(batch)
    masks = batch.get("mask")
    out["image"], warped, matrices = diversity(
        images, options, masks.to(images.dtype) if masks is not None else None
    )
    if warped is not None:
        out["mask"] = warped.to(masks.dtype) if masks is not None else warped
    device = images.device
    m = matrices.to(device, torch.float32)
    rz = optical_axis_rotation(matrices).to(device, torch.float32)
    out["joints2d"] = transform_points(batch["joints2d"], m)
    out["K"] = transform_intrinsics(batch["K"], matrices)
    if "joints3d" in batch:
        out["joints3d"] = batch["joints3d"] @ rz.transpose(-1, -2)
    out["in_bounds"] = _in_bounds(out["joints2d"], tuple(images.shape[-2:]))
    out["transform_matrix"] = m
    return out


def augment_unlabeled_batch(
    batch: dict[str, Any],
    num_perturbations: int,
    perturbation: PerturbationOptions,
    options: DiversityOptions | None,
) -> dict[str, Any]:
    """Add the ``P`` perturbed copies and the "diversity" copy of an unlabelled batch, with their matrices.

    Sets ``image_perturbed`` ``(B, P, 3, H, W)``, ``perturb_matrix`` ``(B, P, 3, 3)`` and, with ``options``,
    ``image_strong``, ``strong_matrix`` and ``K_strong``, as :class:`~handssl.data.semi.UnlabeledView` does per item.
    """
    images = batch["image"]
    b, c, h, w = images.shape
    out = dict(batch)
    matrices = perturbation_matrices(b * num_perturbations, (h, w), perturbation)
    repeated = images.repeat_interleave(num_perturbations, 0)
    out["image_perturbed"] = warp(repeated, matrices).view(b, num_perturbations, c, h, w)
    out["perturb_matrix"] = matrices.to(images.device, torch.float32).view(b, num_perturbations, 3, 3)
    if options is not None:
        strong, _, m64 = diversity(images, options)
        m = m64.to(images.device, torch.float32)
        out["image_strong"] = strong
        out["strong_matrix"] = m
        out["K_strong"] = transform_intrinsics(batch["K"], m64)
    return out
