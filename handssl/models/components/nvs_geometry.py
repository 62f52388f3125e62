"""Label-free losses on the NVS 3D latent itself, not on the decoder's output.

Rhodin et al. (ECCV'18) check the latent only through the decoder: the rotated points must render the other
view. At CPU budgets the decoder learns to draw the hand from the appearance vector and the target camera's
background and ignores the latent (``experiments/tools/nvs_latent_use.py``), so its rotation cannot matter.
Two direct terms make the point cloud itself carry geometry:

* **equivariance** (:func:`~handssl.models.components.nvs_losses.latent_equivariance`, after Worrall et al.
  ICCV'17): the latents of the two views agree up to ``R_ij``;
* **point silhouette** (:func:`point_silhouette_chamfer`): the rotated points, projected orthographically into
  the view they render, lie inside that view's label-free silhouette (``|I - bg| > t``) and cover it: a 2D
  Chamfer distance between the projected points and the silhouette's pixels, as in projection-supervised point
  clouds (Insafutdinov & Dosovitskiy, NeurIPS'18; Navaneet et al., "CAPNet", AAAI'19). Rows that render another
  view make the points' depth matter, so several views carve a visual hull. It assumes crops of one metric
  extent in every view (the world's ``crop: fixed``), so that ``[-1, 1]`` is the same size in every view.
* **own-view silhouette**: the same distance for every encoded image's un-rotated points against its own
  silhouette, on every step whatever the rows render, so that where a point lies in its own view is pinned and
  the other views' silhouettes move its depth, not its place in the image.
* **opacity** (with the encoder's ``opacity``): a binary cross-entropy between each encoded image's point
  opacities and its own silhouette's cells (:func:`silhouette_cells`), so that the points of the hand's cells are
  opaque and the background's transparent. The point-silhouette distance then asks only the opaque points to lie
  on the other view's silhouette (a pixel-aligned latent has a point on every cell, background included).
* **hull**: with items of more than two views (``hull_images``), the point-silhouette distance of each encoded
  view's points rotated into every further view: several silhouettes carve a visual hull (Laurentini, TPAMI'94),
  which pins the points' depth where one other view leaves it free along that view's rays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from handssl.models.components.nvs_losses import latent_equivariance, silhouette_target
from handssl.models.components.nvs_rendering import cell_centres, point_opacity, rotate_points

__all__ = ["LATENT_WEIGHTS", "LatentGeometry", "opacity_bce", "point_silhouette_chamfer", "silhouette_cells"]

LATENT_WEIGHTS: tuple[str, ...] = (
    "equivariance_weight",
    "point_silhouette_weight",
    "own_view_weight",
    "opacity_weight",
    "hull_weight",
)
"""The weights of the latent terms, as :class:`LatentGeometry` and NVSModule's ``geometry`` group name them."""


def silhouette_cells(silhouette: Tensor, side: int) -> Tensor:
    """``(B, side * side)`` bool: the cells of a ``(B, 1, H, W)`` silhouette a quarter of which is foreground.

    A quarter, so that a finger one cell wide stays. Cells are in row-major order (``y`` then ``x``), as the
    pixel-aligned encoder's points are.
    """
    return (F.adaptive_avg_pool2d(silhouette.float(), side) >= 0.25).flatten(1)


def opacity_bce(points: Tensor, silhouette: Tensor) -> Tensor:
    """Binary cross-entropy of pixel-aligned points' opacities against their own image's silhouette cells.

    Args:
        points: ``(B, samples x cells^2, 4)`` points of the pixel-aligned encoder with opacities: one per
            stride-4 cell of the image (``cells = W / 4``) in row-major order, layer by layer for several depth
            samples, which share their cell's opacity (the first layer's is scored).
        silhouette: ``(B, 1, H, W)`` ``{0, 1}`` silhouette of the encoded image.
    """
    if points.dim() != 3 or points.shape[-1] != 4:
        raise ValueError(f"opacity_bce needs points with opacities (B, N, 4), got {tuple(points.shape)}")
    cells = silhouette.shape[-1] // 4
    if cells < 1 or points.shape[1] % (cells * cells):
        raise ValueError(
            f"opacity_bce needs a point per stride-4 cell of the {silhouette.shape[-1]}-px image "
            f"({cells}^2 per depth sample), got {points.shape[1]} points"
        )
    target = silhouette_cells(silhouette, cells).float()
    opacity = points[:, : cells * cells, 3].float()
    return F.binary_cross_entropy(opacity.clamp(1e-4, 1 - 1e-4), target)


def point_silhouette_chamfer(points: Tensor, silhouette: Tensor, side: int = 16) -> Tensor:
    """2D Chamfer distance between orthographically projected points and a silhouette's pixels.

    Points project to their ``(x, y)`` on ``[-1, 1]^2`` (``x`` right, ``y`` down, the crop's extent); the
    silhouette is pooled to ``side x side`` cells (a cell counts when a quarter of it is foreground, so that
    a finger one cell wide stays), whose centres
    span the same square. ``containment`` is the mean over points of the squared distance to the nearest
    silhouette cell, ``coverage`` the mean over silhouette cells of the squared distance to the nearest point.
    Items whose silhouette is empty are skipped. Points with opacities count by them: ``containment`` is the mean
    weighted by the opacity (which gets no gradient here: the points move, the opacity stays the silhouette's),
    and ``coverage`` reaches for the nearest point of opacity >= 1/2 (any point when an item has none).

    Args:
        points: ``(B, N, 3)`` points in the rendered view's frame (rotated ``L3D``), or ``(B, N, 4)`` with
            opacities.
        silhouette: ``(B, 1, H, W)`` ``{0, 1}`` silhouette of the rendered view.
        side: Cells per side of the pooled silhouette.

    Returns:
        Scalar ``containment + coverage`` (0 when every point is on the silhouette and every cell holds a
        point), averaged over the items with a silhouette.
    """
    if points.dim() != 3 or points.shape[-1] not in (3, 4):
        raise ValueError(f"points must be (B, N, 3) or (B, N, 4) with opacities, got {tuple(points.shape)}")
    if silhouette.dim() != 4 or silhouette.shape[:2] != (points.shape[0], 1):
        raise ValueError(f"silhouette must be ({points.shape[0]}, 1, H, W), got {tuple(silhouette.shape)}")
    cells = silhouette_cells(silhouette, side)  # (B, side*side)
    keep = cells.any(1)
    if not bool(keep.any()):
        return points.sum() * 0.0
    axis = cell_centres(side, points.device)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).view(-1, 2)  # (side*side, (x, y))
    projected = points[keep][..., :2].float()
    opacity = point_opacity(points[keep]).detach().float()  # (B', N)
    cells = cells[keep]
    with torch.no_grad():  # only the nearest pairs carry gradient, so find them without building a graph
        dx, dy = ((projected[..., k, None] - axis).pow(2) for k in (0, 1))  # (B', N, side) each
        # cells off the silhouette are pushed far away; the push is the same for every point, so the nearest
        # point of a silhouette cell is unchanged (off-silhouette cells' coverage is masked out below)
        far = (~cells).float().view(-1, 1, side, side) * 1e6
        distance = (dy[..., :, None] + dx[..., None, :] + far).flatten(2)  # (B', N, side*side)
        nearest_cell = distance.argmin(2)  # (B', N)
        # likewise transparent points: a silhouette cell reaches for the nearest opaque point
        nearest_point = (distance + (opacity < 0.5).float()[..., None] * 1e6).argmin(1)  # (B', side*side)
    weight = opacity / opacity.sum(1, keepdim=True).clamp_min(1e-6)
    containment = ((projected - grid[nearest_cell]).pow(2).sum(-1) * weight).sum(1)
    reached = projected.gather(1, nearest_point[..., None].expand(-1, -1, 2))  # (B', side*side, 2)
    coverage = ((grid - reached).pow(2).sum(-1) * cells).sum(1) / cells.sum(1)
    return (containment + coverage).mean()


@dataclass(frozen=True)
class LatentGeometry:
    """Weights of the direct latent terms (0 disables a term; validated on creation).

    NVSModule builds it from its ``geometry`` group (:class:`~handssl.models.nvs_options.GeometryOptions`, the
    same field names) and ``synthesis.silhouette_threshold``.

    Attributes:
        equivariance_weight: Weight of ``|R_ij L_i - L_j|^2`` on normalised point sets (needs both views).
        point_silhouette_weight: Weight of :func:`point_silhouette_chamfer` on every rendered row.
        silhouette_threshold: Background-subtraction threshold of the silhouette.
        side: Cells per side of the pooled silhouette.
        own_view_weight: Weight of :func:`point_silhouette_chamfer` of each encoded view's un-rotated points
            against its own silhouette.
        opacity_weight: Weight of :func:`opacity_bce` of each encoded view's opacities against its own
            silhouette (needs points with opacities).
        hull_weight: Weight of :func:`point_silhouette_chamfer` of each encoded view's points rotated into each
            of the batch's further views (``hull_images``, ``R_i_hull``, ``R_j_hull``).
    """

    equivariance_weight: float = 0.0
    point_silhouette_weight: float = 0.0
    silhouette_threshold: float = 0.02
    side: int = 16
    own_view_weight: float = 0.0
    opacity_weight: float = 0.0
    hull_weight: float = 0.0

    def __post_init__(self) -> None:
        # named as NVSModule's options (its geometry group), which the error reaches
        for key in LATENT_WEIGHTS:
            if (value := getattr(self, key)) < 0:
                raise ValueError(f"geometry.{key} must be >= 0, got {value}")
        if self.side < 2:
            raise ValueError(f"point silhouette side must be >= 2, got {self.side}")

    @property
    def active(self) -> bool:
        """Whether any term is on."""
        return max(getattr(self, key) for key in LATENT_WEIGHTS) > 0

    def __call__(
        self, batch: dict[str, Any], encoded: dict[str, tuple[Tensor, Tensor]], rows: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The active terms and their weighted sum under ``"latent_geometry"``.

        Args:
            batch: The pairs (``R_ij``).
            encoded: Encoded images by name (``"i"``, ``"j"``: ``(L3D, appearance)``).
            rows: The decoder's rows (:meth:`~handssl.models.components.nvs_pairs.PairTraining.synthesis_rows`):
                rotated ``points``, ``target`` and ``background``.
        """
        terms: dict[str, Tensor] = {}
        total = rows["points"].new_zeros(())
        if self.equivariance_weight > 0:
            if "j" not in encoded:
                raise ValueError(
                    "geometry.equivariance_weight > 0 compares both views' latents: set pairs.both_directions"
                )
            terms["latent_equivariance"] = latent_equivariance(
                encoded["i"][0], encoded["j"][0], batch["R_ij"]
            )
            total = total + self.equivariance_weight * terms["latent_equivariance"]
        if self.point_silhouette_weight > 0:
            silhouette = silhouette_target(rows["target"], rows["background"], self.silhouette_threshold)
            terms["point_silhouette"] = point_silhouette_chamfer(rows["points"], silhouette, self.side)
            total = total + self.point_silhouette_weight * terms["point_silhouette"]
        own = {  # each encoded view's points and its own silhouette
            name: (
                encoded[name][0],
                silhouette_target(batch[image], batch[background], self.silhouette_threshold),
            )
            for name, image, background in (("i", "image", "background_input"), ("j", "target", "background"))
            if name in encoded and (self.own_view_weight > 0 or self.opacity_weight > 0)
        }
        if self.own_view_weight > 0:
            terms["own_view_silhouette"] = torch.stack(
                [
                    point_silhouette_chamfer(points, silhouette, self.side)
                    for points, silhouette in own.values()
                ]
            ).mean()
            total = total + self.own_view_weight * terms["own_view_silhouette"]
        if self.opacity_weight > 0:
            terms["opacity"] = torch.stack(
                [opacity_bce(points, silhouette) for points, silhouette in own.values()]
            ).mean()
            total = total + self.opacity_weight * terms["opacity"]
        if self.hull_weight > 0:
            terms["hull_silhouette"] = self.hull(batch, encoded)
            total = total + self.hull_weight * terms["hull_silhouette"]
        terms["latent_geometry"] = total
        return terms

    def hull(self, batch: dict[str, Any], encoded: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """Mean point-silhouette distance of the encoded views' points in every further view of the batch."""
        if "hull_images" not in batch:
            raise ValueError(
                "geometry.hull_weight > 0 checks the latent against the frame's further views, but the training "
                "items have two views: set the data's views multi_view_arguments: {train: {num_views: 4}}"
            )
        images, backgrounds = batch["hull_images"], batch["hull_backgrounds"]  # (B, V - 2, 3, H, W)
        views = images.shape[1]
        silhouettes = silhouette_target(
            images.flatten(0, 1), backgrounds.flatten(0, 1), self.silhouette_threshold
        )  # (B (V - 2), 1, H, W), item-major
        distances = []
        for name, rotations in (("i", "R_i_hull"), ("j", "R_j_hull")):
            if name not in encoded:
                continue
            points = encoded[name][0].repeat_interleave(views, 0)  # item-major, as the silhouettes
            turned = rotate_points(points, batch[rotations].flatten(0, 1).to(points.dtype))
            distances.append(point_silhouette_chamfer(turned, silhouettes, self.side))
        return torch.stack(distances).mean()
