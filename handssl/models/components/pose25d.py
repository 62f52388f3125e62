"""2.5D hand pose network (Iqbal et al. ECCV'18 integral regression) with a hand-mask head, and 2.5D <-> 3D.

The 2.5D pose of a hand is ``(uv, d)``: ``uv`` ``(B, 21, 2)`` pixel coordinates of the input image and ``d``
``(B, 21)`` depth relative to a root joint, in units of a reference bone length (the hand's scale), so
that ``Z_j = Z_root + scale_mm * (d_j - d_root)``.

The network (:class:`Pose25DNet`) predicts per joint a 2D heatmap ``h_uv`` and a latent depth map ``h_d``;
with ``P = softmax(beta * h_uv)`` (``beta`` learnable) ``uv = sum_g g P(g)`` and ``d = sum_g h_d(g) P(g)``
(SemiHand supp. Eq. 1). A third head predicts the hand mask.

3D comes back with :func:`lift_25d` from ``K``, the root depth and the scale: either the known ones (the
paper's protocol, "global hand scale and hand root position are known") or predicted ones
(:func:`recover_root_depth`, Iqbal's closed form from one bone of known length, with a template scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from handssl.geometry import unproject
from handssl.metrics.functional import masked_mean
from handssl.models.components.backbones import ResNetBackbone, norm_layer
from handssl.skeleton import MIDDLE_MCP, NUM_JOINTS, REFERENCE_BONE, ROOT, root_relative

__all__ = [
    "Pose25DNet",
    "PoseNorm",
    "encode_25d",
    "forward_parts",
    "gaussian_heatmaps",
    "heatmap_loss",
    "joint_error",
    "lift_25d",
    "pose_distance",
    "recover_root_depth",
    "soft_argmax_2d",
]

PoseNorm = Literal["l2", "l1"]
"""Error of a pose distance: squared (SemiHand's ``l``) or absolute (Sun et al.'s integral L1)."""


def soft_argmax_2d(logits: Tensor, beta: Tensor | float, stride: int) -> tuple[Tensor, Tensor]:
    """Differentiable argmax of heatmaps, in input-image pixels.

    Heatmap cell ``(i, j)`` at output stride ``s`` covers input pixels ``s*j .. s*j + s - 1`` and sits at
    their centre ``s*j + (s - 1) / 2`` (pixel centres at integer coordinates).

    Args:
        logits: ``(B, J, h, w)`` heatmap logits.
        beta: Inverse temperature of the softmax.
        stride: Input pixels per heatmap cell.

    Returns:
        ``uv (B, J, 2)`` in input pixels and the probabilities ``(B, J, h, w)``.
    """
    b, j, h, w = logits.shape
    probs = F.softmax(beta * logits.flatten(2), dim=-1).view(b, j, h, w)
    xs = torch.arange(w, dtype=logits.dtype, device=logits.device) * stride + (stride - 1) / 2
    ys = torch.arange(h, dtype=logits.dtype, device=logits.device) * stride + (stride - 1) / 2
    u = (probs.sum(2) * xs).sum(-1)
    v = (probs.sum(3) * ys).sum(-1)
    return torch.stack([u, v], dim=-1), probs


class _ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            norm_layer(out_channels, norm),
            nn.ReLU(inplace=True),
        )


class Pose25DNet(nn.Module):
    """Backbone -> top-down decoder -> 2.5D pose (soft-argmax heatmaps + latent depth) and hand mask.

    Args:
        num_joints: Number of joints.
        widths: Channels of the backbone stages (stem stride 2; each stage after the first halves the size).
        blocks: Basic blocks per backbone stage.
        decoder_channels: Channels of the top-down decoder.
        output_stride: Input pixels per heatmap cell (2, 4, 8, ...; at most the backbone's stride).
        norm: Normalisation kind of backbone and decoder (``"batch"``, ``"group"``, ``"none"``).
        beta_init: Initial softmax inverse temperature ``beta`` (learned, kept positive).
    """

    def __init__(
        self,
        num_joints: int = NUM_JOINTS,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 1, 1),
        decoder_channels: int = 64,
        output_stride: int = 4,
        norm: str = "batch",
        beta_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(widths=widths, blocks=blocks, stem_stride=2, norm=norm)
        strides = [2] + [2 * 2**i for i in range(len(widths))]  # stem, then each stage
        channels = [widths[0], *widths]
        deepest = strides[-1]
        if output_stride < 2 or output_stride > deepest or output_stride & (output_stride - 1):
            raise ValueError(f"output_stride must be a power of two in [2, {deepest}], got {output_stride}")
        if beta_init <= 0:
            raise ValueError(f"beta_init must be positive, got {beta_init}")
        self.num_joints = num_joints
        self.output_stride = output_stride
        # Top-down path from the deepest map; one lateral skip (the last map at that stride) per halving.
        self.top = nn.Conv2d(channels[-1], decoder_channels, 1)
        targets = []
        stride = deepest // 2
        while stride >= output_stride:
            targets.append(stride)
            stride //= 2
        self.skip_indices = [max(i for i, s in enumerate(strides) if s == t) for t in targets]
        self.laterals = nn.ModuleList(nn.Conv2d(channels[i], decoder_channels, 1) for i in self.skip_indices)
        self.smooth = nn.ModuleList(
            _ConvBNReLU(decoder_channels, decoder_channels, norm) for _ in self.skip_indices
        )
        self.head = _ConvBNReLU(decoder_channels, decoder_channels, norm)
        self.heatmap = nn.Conv2d(decoder_channels, num_joints, 1)
        self.depth = nn.Conv2d(decoder_channels, num_joints, 1)
        self.mask = nn.Conv2d(decoder_channels, 1, 1)
        self._beta_raw = nn.Parameter(torch.tensor(float(beta_init)).expm1().log())

    @property
    def beta(self) -> Tensor:
        """The softmax inverse temperature (softplus of a free parameter)."""
        return F.softplus(self._beta_raw)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Predict the 2.5D pose and the mask.

        Args:
            image: ``(B, 3, H, W)`` images in ``[0, 1]`` (H and W divisible by the backbone's stride).

        Returns:
            ``uv`` ``(B, J, 2)`` input pixels, ``depth`` ``(B, J)`` root-relative depth in reference-bone units
            (relative to whichever joint the targets used as root), ``mask_logits`` ``(B, 1, H, W)``,
            ``heatmaps`` ``(B, J, h, w)`` softmax probabilities and ``log_heatmaps`` their logarithms (computed
            stably, for :func:`heatmap_loss`).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        feats = self.backbone.forward_features(image)
        x = self.top(feats[-1])
        for idx, lateral, smooth in zip(self.skip_indices, self.laterals, self.smooth):
            skip = feats[idx]
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = smooth(x + lateral(skip))
        x = self.head(x)
        stride = image.shape[-1] // x.shape[-1]
        # The heads' outputs in float32 (they are half precision under mixed-precision autocast): the
        # soft-argmax needs float32 to place a joint to a fraction of a pixel.
        logits = self.heatmap(x).float()
        uv, probs = soft_argmax_2d(logits, self.beta, stride)
        depth = (self.depth(x).float() * probs).flatten(2).sum(-1)
        log_probs = F.log_softmax(self.beta * logits.flatten(2), dim=-1).view_as(probs)
        mask_logits = F.interpolate(self.mask(x), size=image.shape[-2:], mode="bilinear", align_corners=False)
        mask_logits = mask_logits.float()
        return {
            "uv": uv,
            "depth": depth,
            "mask_logits": mask_logits,
            "heatmaps": probs,
            "log_heatmaps": log_probs,
        }


def forward_parts(network: nn.Module, parts: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Network outputs of several batches from one pass over them all (BatchNorm sees them together), by name."""
    sizes = [x.shape[0] for x in parts.values()]
    merged = network(torch.cat(list(parts.values())))
    chunks = {key: value.split(sizes) for key, value in merged.items()}
    return {name: {key: chunks[key][i] for key in merged} for i, name in enumerate(parts)}


def encode_25d(
    joints3d: Tensor,
    root: int = MIDDLE_MCP,
    reference_bone: tuple[int, int] = REFERENCE_BONE,
) -> tuple[Tensor, Tensor, Tensor]:
    """Root-relative, scale-normalised depth of camera-frame 3D joints (the ``d`` of the 2.5D pose).

    Args:
        joints3d: ``(..., 21, 3)`` camera-frame joints in mm.
        root: Canonical root joint of the relative depth.
        reference_bone: ``(a, b)`` canonical joints whose distance is the scale.

    Returns:
        ``depth (..., 21)`` in reference-bone units, ``root_depth_mm (...)`` and ``scale_mm (...)``.
    """
    a, b = reference_bone
    scale = (joints3d[..., a, :] - joints3d[..., b, :]).norm(dim=-1)
    root_depth = joints3d[..., root, 2]
    depth = (joints3d[..., 2] - root_depth.unsqueeze(-1)) / scale.clamp_min(1e-6).unsqueeze(-1)
    return depth, root_depth, scale


def lift_25d(
    uv: Tensor,
    depth: Tensor,
    K: Tensor,
    root_depth_mm: Tensor,
    scale_mm: Tensor,
    root: int = MIDDLE_MCP,
) -> Tensor:
    """Lift a 2.5D pose to camera-frame 3D: ``Z_j = Z_root + scale * (d_j - d_root)``, then unproject.

    Args:
        uv: ``(B, J, 2)`` pixels.
        depth: ``(B, J)`` relative depth in reference-bone units.
        K: ``(B, 3, 3)`` intrinsics of the image ``uv`` lives in.
        root_depth_mm: ``(B,)`` depth of the root joint in mm.
        scale_mm: ``(B,)`` reference-bone length in mm.
        root: Root joint of ``depth``.

    Returns:
        ``(B, J, 3)`` camera-frame joints in mm.
    """
    rel = root_relative(depth, root, joint_axis=-1)
    z = root_depth_mm.unsqueeze(-1) + scale_mm.unsqueeze(-1) * rel
    return unproject(uv, z, K)


def recover_root_depth(
    uv: Tensor,
    depth: Tensor,
    K: Tensor,
    bone: tuple[int, int] = (ROOT, MIDDLE_MCP),
    bone_length: Tensor | float = 1.0,
    root: int = MIDDLE_MCP,
) -> Tensor:
    """Root depth, in reference-bone units, that gives ``bone`` its known length (Iqbal et al. ECCV'18).

    With normalised image coordinates ``x_j = K^-1 [u, v, 1]`` and ``Z_j = Z_r + d_j``, the bone ``(n, m)`` has
    length ``C`` when ``a Z_r^2 + b Z_r + c = 0`` with ``a = |x_n - x_m|^2``,
    ``b = 2 (x_n - x_m) . (x_n d_n - x_m d_m)``, ``c = |x_n d_n - x_m d_m|^2 + (d_n - d_m)^2 - C^2`` (x, y
    parts); the larger root is taken (the hand in front of the camera), with the discriminant clamped at 0.

    Args:
        uv: ``(B, J, 2)`` pixels.
        depth: ``(B, J)`` relative depth in reference-bone units.
        K: ``(B, 3, 3)`` intrinsics.
        bone: ``(n, m)`` joints of the bone of known length.
        bone_length: Its length in reference-bone units (scalar or ``(B,)``).
        root: Root joint of ``depth``.

    Returns:
        ``(B,)`` root depth in reference-bone units (multiply by the scale in mm for millimetres).
    """
    # K^-1 [u, v, 1] in closed form (intrinsics are upper triangular): unlike linalg.solve it exports to ONNX.
    rays = unproject(uv, torch.ones_like(uv[..., 0]), K)[..., :2]
    d = root_relative(depth, root, joint_axis=-1)
    n, m = bone
    xn, xm = rays[:, n], rays[:, m]
    dn, dm = d[:, n], d[:, m]
    diff = xn - xm
    cross = xn * dn.unsqueeze(-1) - xm * dm.unsqueeze(-1)
    length = torch.as_tensor(bone_length, dtype=uv.dtype, device=uv.device)
    a = (diff * diff).sum(-1).clamp_min(1e-12)
    b = 2 * (diff * cross).sum(-1)
    c = (cross * cross).sum(-1) + (dn - dm) ** 2 - length**2
    disc = (b * b - 4 * a * c).clamp_min(0.0)
    return (-b + disc.sqrt()) / (2 * a)


def joint_error(error: Tensor, norm: PoseNorm = "l2", weight: float = 1.0) -> Tensor:
    """``weight |e|^2`` (``"l2"``) or ``sqrt(weight) |e|_1`` (``"l1"``) of per-joint errors ``(..., D)``.

    One ``weight`` serves both norms: an error costs the same under either as an error of ``sqrt(weight)``
    times its size with weight 1.
    """
    if norm == "l2":
        return weight * error.pow(2).sum(-1)
    if norm == "l1":
        return math.sqrt(weight) * error.abs().sum(-1)
    raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")


def pose_distance(
    uv_a: Tensor,
    depth_a: Tensor,
    uv_b: Tensor,
    depth_b: Tensor,
    weight: Tensor | None = None,
    depth_weight: float = 50.0,
    uv_unit_px: float = 1.0,
    norm: PoseNorm = "l2",
) -> Tensor:
    """SemiHand's pose distance ``l(p1, p2) = |uv1 - uv2|^2 + lambda_d |d1 - d2|^2``, per sample.

    Averaged over joints (weighted by ``weight``), with ``uv`` measured in units of ``uv_unit_px`` pixels (the
    paper works on 64 px maps: pass ``image_size / 64`` to keep its units at any resolution) and ``d`` in
    reference-bone units.

    ``norm="l1"`` is the absolute-error version ``|du| + |dv| + sqrt(lambda_d) |d1 - d2|`` (Sun et al. ECCV'18:
    an L1 integral loss learns faster and ends better than L2, which pulls towards the conditional mean).
    ``sqrt(lambda_d)`` keeps one ``lambda_d`` for both: a depth error costs what a 2D error of the same
    size in ``uv`` units costs under either norm.

    Args:
        uv_a: ``(B, J, 2)`` pixels.
        depth_a: ``(B, J)`` relative depth.
        uv_b: ``(B, J, 2)`` pixels.
        depth_b: ``(B, J)`` relative depth.
        weight: Optional ``(B, J)`` joint weights (e.g. validity); samples with zero total weight give 0.
        depth_weight: ``lambda_d`` (50 in the paper).
        uv_unit_px: Pixels per ``uv`` unit.
        norm: ``"l2"`` (squared errors, the paper's) or ``"l1"`` (absolute errors).

    Returns:
        ``(B,)`` distances.
    """
    duv = (uv_a - uv_b) / uv_unit_px
    dd = (depth_a - depth_b).unsqueeze(-1)
    per_joint = joint_error(duv, norm) + joint_error(dd, norm, depth_weight)
    if weight is None:
        return per_joint.mean(-1)
    return masked_mean(per_joint, weight, dim=-1)


def gaussian_heatmaps(uv: Tensor, height: int, width: int, stride: int, sigma_cells: float = 1.0) -> Tensor:
    """Normalised Gaussian target distributions centred on ``uv``, on the heatmap grid of :func:`soft_argmax_2d`.

    Args:
        uv: ``(B, J, 2)`` target joints in input pixels (non-finite entries give a uniform map; mask them out).
        height: Heatmap rows.
        width: Heatmap columns.
        stride: Input pixels per heatmap cell.
        sigma_cells: Standard deviation of the Gaussian in heatmap cells.

    Returns:
        ``(B, J, height, width)`` maps that sum to 1 over each joint's cells.
    """
    if sigma_cells <= 0:
        raise ValueError(f"sigma_cells must be positive, got {sigma_cells}")
    xs = torch.arange(width, dtype=uv.dtype, device=uv.device) * stride + (stride - 1) / 2
    ys = torch.arange(height, dtype=uv.dtype, device=uv.device) * stride + (stride - 1) / 2
    sigma = sigma_cells * stride
    uv = torch.nan_to_num(uv)
    gx = -((xs - uv[..., 0:1]) ** 2) / (2 * sigma**2)  # (B, J, w)
    gy = -((ys - uv[..., 1:2]) ** 2) / (2 * sigma**2)  # (B, J, h)
    logits = gy.unsqueeze(-1) + gx.unsqueeze(-2)
    return F.softmax(logits.flatten(2), dim=-1).view_as(logits)


def heatmap_loss(
    log_heatmaps: Tensor, uv: Tensor, weight: Tensor, stride: int, sigma_cells: float = 1.0
) -> Tensor:
    """Cross-entropy of the predicted heatmaps to Gaussians at ``uv``, averaged over the weighted joints.

    The supervision integral regression lacks (Iqbal et al. ECCV'18 train their latent heatmaps only
    through the soft-argmax; Sun et al. note its slow convergence): without it the softmax maps stay flat,
    the soft-argmax is biased towards the map centre, and the depth read-out ``sum_g h_d(g) P(g)`` is a global
    average instead of a local one. The target's own entropy is subtracted, so a perfect map scores 0 (a KL
    divergence, with the cross-entropy's gradients).

    Args:
        log_heatmaps: ``(B, J, h, w)`` log-probabilities of the predicted maps.
        uv: ``(B, J, 2)`` target joints in input pixels.
        weight: ``(B, J)`` joint weights (0 for invalid or unaccepted joints).
        stride: Input pixels per heatmap cell.
        sigma_cells: Standard deviation of the target Gaussian, in cells.

    Returns:
        Scalar loss in nats (0 when every weight is 0).
    """
    h, w = log_heatmaps.shape[-2:]
    target = gaussian_heatmaps(uv.to(log_heatmaps.dtype), h, w, stride, sigma_cells)
    per_joint = (target * (target.clamp_min(1e-12).log() - log_heatmaps)).flatten(2).sum(-1)
    return masked_mean(per_joint, weight.to(per_joint.dtype))
