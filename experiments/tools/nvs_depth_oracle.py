"""What would a pixel-aligned point latent with exact depth render? An upper bound with no network.

For validation pairs of SynthHands multi-view with fixed crops, each hand cell of view *i* (the stride-4 cells of
the pixel-aligned encoder whose label-free silhouette covers a quarter) becomes a 3D point at its cell centre with
the rendered depth map's depth there (the exact visible surface, which no network is given). The points are moved
into view *j* exactly (perspective, about the hand centre both crops look at), splatted as the decoder's
``mask_from_points`` does (coverage ``1 - exp(-occupancy)``), and the target's own mean hand colour is filled into
that coverage over the target's background. The hand-pixel L1 of that drawing with the true rotation, the identity
and another item's rotation says how far a renderer whose silhouette is its points' could get (issue 21's geometry
gate wants true <= 0.8 x identity and x other). ``ortho_*`` rows do the same in the crop's normalised units with
the orthographic rotation the network uses (``rotate_points``), and ``oracle_*`` rows fill exact silhouettes
(as ``nvs_latent_use.py``).

    python experiments/tools/nvs_depth_oracle.py --pairs 128
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor
from torch.nn import functional as F

from handssl.data import SynthHandsMultiView, SynthHandsWorld
from handssl.geometry import relative_rotation
from handssl.models.components.nvs import composite, rotate_points, splat_points
from handssl.models.components.nvs_geometry import silhouette_cells
from handssl.models.components.nvs_losses import foreground_l1, mask_iou, silhouette_target
from handssl.models.components.nvs_rendering import cell_centres


def validation_views(image_size: int, pairs: int, crop_extent_mm: float) -> dict[str, Tensor]:
    """Views 0 and 1 of ``pairs`` validation items spread over the validation subjects (fixed crops)."""
    world = SynthHandsWorld(image_size=image_size, crop="fixed", crop_extent_mm=crop_extent_mm)
    dataset = SynthHandsMultiView(split="val", world=world, sequences_per_subject=2, frames_per_sequence=16)
    step = max(1, len(dataset) // pairs)
    items = [dataset[k] for k in range(0, len(dataset), step)][:pairs]
    return {
        k: torch.stack([torch.as_tensor(item[k]) for item in items])
        for k in ("image", "background", "depth", "K", "R")
    }


def cell_points(
    depth: Tensor, K: Tensor, silhouette: Tensor, cells: int, crop_extent_mm: float
) -> dict[str, Tensor]:
    """3D points of a view's hand cells: ``camera`` (mm, perspective) and ``normalised`` (crop units, (B, N, 4))."""
    size = depth.shape[-1]
    hand = silhouette_cells(silhouette, cells)  # (B, cells^2)
    foreground = (depth > 0).float()
    cell_depth = F.avg_pool2d(depth * foreground, size // cells) / F.avg_pool2d(
        foreground, size // cells
    ).clamp_min(1e-6)
    z = cell_depth.flatten(1)  # (B, cells^2) mm
    axis = cell_centres(cells)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    xn, yn = x.reshape(-1), y.reshape(-1)  # normalised image coordinates of the cell centres
    u = (xn + 1) * size / 2  # pixels
    v = (yn + 1) * size / 2
    fx, fy, cx, cy = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None]
    camera = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], -1)  # (B, N, 3)
    centre_depth = crop_extent_mm * fx[:, 0] / size  # the crop covers crop_extent_mm at the centre's depth
    half = crop_extent_mm / 2
    normalised = torch.stack([xn.expand_as(z), yn.expand_as(z), (z - centre_depth[:, None]) / half], -1)
    opacity = (hand & (z > 0)).float()
    return {
        "camera": camera,
        "centre_depth": centre_depth,
        "normalised": torch.cat([normalised, opacity[..., None]], -1),
        "opacity": opacity,
    }


def project(
    points: Tensor, opacity: Tensor, R: Tensor, centre_i: Tensor, centre_j: Tensor, K_j: Tensor, size: int
) -> Tensor:
    """Exact move of camera-frame points of view i into view j (about the hand centre), as normalised (B, N, 4)."""
    c_i = torch.stack([torch.zeros_like(centre_i), torch.zeros_like(centre_i), centre_i], -1)[:, None]
    c_j = torch.stack([torch.zeros_like(centre_j), torch.zeros_like(centre_j), centre_j], -1)[:, None]
    moved = (points - c_i) @ R.transpose(-1, -2) + c_j
    u = K_j[:, 0, 0, None] * moved[..., 0] / moved[..., 2] + K_j[:, 0, 2, None]
    v = K_j[:, 1, 1, None] * moved[..., 1] / moved[..., 2] + K_j[:, 1, 2, None]
    return torch.stack([u / size * 2 - 1, v / size * 2 - 1, moved[..., 2] * 0, opacity], -1)


def coverage(points: Tensor, size: int, sigma_cells: float = 1.0) -> Tensor:
    """The decoder's ``mask_from_points`` coverage at full resolution: splat at half size, upsampled.

    ``sigma_cells`` scales the decoder's splat radius (``4 / size``, about one of its half-size cells).
    """
    drawn = splat_points(points, size // 2, sigma=sigma_cells * 4.0 / size)
    full = F.interpolate(drawn, size=(size, size), mode="bilinear", align_corners=False)
    return -torch.expm1(-full[:, :1].clamp_min(0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=128, help="validation pairs")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--cells", type=int, default=16, help="cells per side (the pixel-aligned grid)")
    parser.add_argument("--crop-extent-mm", type=float, default=240.0)
    parser.add_argument("--threshold", type=float, default=0.02, help="silhouette threshold")
    parser.add_argument("--sigma-cells", type=float, default=1.0, help="splat radius / the decoder's")
    parser.add_argument(
        "--thickness-mm",
        type=float,
        nargs="*",
        default=[],
        help="also place each cell's point this much deeper (a crude back surface: a hand is 15-30 mm thick)",
    )
    args = parser.parse_args()
    size = args.image_size
    views = validation_views(size, args.pairs, args.crop_extent_mm)
    image_i, image_j = views["image"][:, 0], views["image"][:, 1]
    bg_i, bg_j = views["background"][:, 0], views["background"][:, 1]
    hand_i = silhouette_target(image_i, bg_i, args.threshold)
    hand_j = silhouette_target(image_j, bg_j, args.threshold)
    R = relative_rotation(views["R"][:, 0], views["R"][:, 1]).float()
    K_i, K_j = views["K"][:, 0].float(), views["K"][:, 1].float()
    points = cell_points(views["depth"][:, 0].float(), K_i, hand_i, args.cells, args.crop_extent_mm)
    if args.thickness_mm:  # copies of every point pushed back along its ray by each thickness
        layers = [points]
        for extra in args.thickness_mm:
            deeper = views["depth"][:, 0].float() + extra * (views["depth"][:, 0] > 0).float()
            layers.append(cell_points(deeper, K_i, hand_i, args.cells, args.crop_extent_mm))
        points = {
            key: torch.cat([layer[key] for layer in layers], 1) if key != "centre_depth" else points[key]
            for key in points
        }
    centre_j = args.crop_extent_mm * K_j[:, 0, 0] / size
    colour = (image_j * hand_j).sum((2, 3), keepdim=True) / hand_j.sum((2, 3), keepdim=True).clamp_min(1)

    def score(mask: Tensor) -> tuple[float, float]:
        drawn = composite(colour.expand_as(image_j), mask, bg_j)
        return float(foreground_l1(drawn, image_j, hand_j)), float(mask_iou(mask, hand_j).mean())

    exact = {
        "true_rotation": project(
            points["camera"], points["opacity"], R, points["centre_depth"], centre_j, K_j, size
        ),
        "identity": points["normalised"],
        "other_rotation": project(
            points["camera"], points["opacity"], R.roll(1, 0), points["centre_depth"], centre_j, K_j, size
        ),
    }
    ortho = {
        "true_rotation": rotate_points(points["normalised"], R),
        "identity": points["normalised"],
        "other_rotation": rotate_points(points["normalised"], R.roll(1, 0)),
    }
    rows: dict[str, tuple[float, float]] = {}
    for family, moved in (("exact", exact), ("ortho", ortho)):
        for name, latent in moved.items():
            rows[f"{family}_{name}"] = score(coverage(latent, size, args.sigma_cells))
    for name, silhouette in (("true", hand_j), ("input_view", hand_i), ("other_item", hand_j.roll(1, 0))):
        rows[f"oracle_{name}_silhouette"] = score(silhouette)
    for name, (l1, iou) in rows.items():
        print(f"{name:32s} hand L1 {l1:.3f}  mask IoU {iou:.3f}")
    for family in ("exact", "ortho"):
        true = rows[f"{family}_true_rotation"][0]
        print(
            f"{family}: true / identity {true / rows[f'{family}_identity'][0]:.2f}, "
            f"true / other {true / rows[f'{family}_other_rotation'][0]:.2f}"
        )


if __name__ == "__main__":
    main()
