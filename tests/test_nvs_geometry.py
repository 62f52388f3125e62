"""The direct latent terms of NVS: the projected points' Chamfer distance to a silhouette."""

from __future__ import annotations

import math

import pytest
import torch

from handssl.geometry import rotation_about_axis
from handssl.models.components.nvs import rotate_points
from handssl.models.components.nvs_geometry import (
    LatentGeometry,
    opacity_bce,
    point_silhouette_chamfer,
    silhouette_cells,
)


def square_silhouette(side: int = 32, half: float = 0.5) -> torch.Tensor:
    """``(1, 1, side, side)`` silhouette of the square ``|x|, |y| <= half`` on ``[-1, 1]^2``."""
    axis = (torch.arange(side) + 0.5) / side * 2 - 1
    inside = (axis.abs() <= half)[:, None] & (axis.abs() <= half)[None, :]
    return inside.float()[None, None]


def filled_square(count: int = 16, half: float = 0.5) -> torch.Tensor:
    """``(1, count**2, 3)`` points on a regular grid filling the square, at depth 0."""
    axis = torch.linspace(-half, half, count)
    x, y = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([x, y, torch.zeros_like(x)], -1).view(1, -1, 3)


def test_chamfer_is_small_when_points_fill_the_silhouette_and_grows_when_they_leave_it():
    silhouette = square_silhouette()
    inside = point_silhouette_chamfer(filled_square(), silhouette)
    shifted = filled_square() + torch.tensor([0.6, 0.0, 0.0])
    clustered = filled_square() * 0.1
    assert float(inside) < 0.01
    assert float(point_silhouette_chamfer(shifted, silhouette)) > 10 * float(inside)
    # all points inside but bunched in the centre: contained, yet the square is not covered
    assert float(point_silhouette_chamfer(clustered, silhouette)) > 10 * float(inside)


def test_chamfer_sees_depth_through_a_rotation():
    """A slab in the image plane projects onto a line after a quarter turn about y; a tilted one does not."""
    slab = filled_square()
    tilted = slab.clone()
    tilted[..., 2] = -tilted[..., 0]  # same x-y layout, depth z = -x: a quarter turn shows a square again
    quarter = rotation_about_axis("y", math.pi / 2).to(slab.dtype)
    silhouette = square_silhouette()
    assert float(point_silhouette_chamfer(rotate_points(slab, quarter), silhouette)) > 5 * float(
        point_silhouette_chamfer(rotate_points(tilted, quarter), silhouette)
    )


def test_chamfer_skips_empty_silhouettes_and_passes_gradients():
    points = filled_square().repeat(2, 1, 1).requires_grad_(True)
    silhouettes = torch.cat([square_silhouette(), torch.zeros(1, 1, 32, 32)])
    value = point_silhouette_chamfer(points + 0.3, silhouettes)
    assert float(value.detach()) == pytest.approx(
        float(point_silhouette_chamfer(points[:1].detach() + 0.3, silhouettes[:1]))
    )
    value.backward()
    assert points.grad is not None and float(points.grad[0].abs().sum()) > 0
    assert float(points.grad[1].abs().sum()) == 0
    assert float(point_silhouette_chamfer(points, torch.zeros(2, 1, 32, 32))) == 0.0


def test_chamfer_refuses_wrong_shapes():
    with pytest.raises(ValueError, match="points must be"):
        point_silhouette_chamfer(torch.zeros(2, 5, 2), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="silhouette must be"):
        point_silhouette_chamfer(torch.zeros(2, 5, 3), torch.zeros(3, 1, 8, 8))


def test_latent_geometry_weights_and_validation():
    assert not LatentGeometry().active
    with pytest.raises(ValueError, match=r"^geometry\.point_silhouette_weight must be >= 0"):
        LatentGeometry(point_silhouette_weight=-1.0)
    geometry = LatentGeometry(point_silhouette_weight=2.0)
    image = torch.zeros(1, 3, 32, 32)
    target = image.clone()
    target[..., 8:24, 8:24] = 1.0
    rows = {"points": filled_square() + 0.4, "target": target, "background": image}
    terms = geometry({}, {}, rows)
    assert float(terms["latent_geometry"]) == pytest.approx(2.0 * float(terms["point_silhouette"]))
    assert float(terms["point_silhouette"]) > 0


def test_own_view_term_pins_each_encoded_views_points_to_its_own_silhouette():
    background = torch.zeros(1, 3, 32, 32)
    image = background.clone()
    image[..., 8:24, 8:24] = 1.0  # view i: the square |x|, |y| <= 0.5
    target = background.clone()
    target[..., 0:8, 0:8] = 1.0  # view j shows something else; the own-view term must not look at it for i
    batch = {"image": image, "background_input": background, "target": image, "background": background}
    rows = {"points": filled_square(), "target": target, "background": background}
    geometry = LatentGeometry(own_view_weight=3.0)
    assert geometry.active
    on = geometry(batch, {"i": (filled_square(), torch.zeros(1, 4))}, rows)
    off = geometry(batch, {"i": (filled_square() + 0.6, torch.zeros(1, 4))}, rows)
    assert "point_silhouette" not in on  # the rendered rows' term is off
    assert float(on["own_view_silhouette"]) < 0.01 < float(off["own_view_silhouette"])
    assert float(off["latent_geometry"]) == pytest.approx(3.0 * float(off["own_view_silhouette"]))
    # with both views encoded it averages them: view j's points on j's own silhouette (here the same square)
    both = geometry(batch, {"i": (filled_square(), None), "j": (filled_square() + 0.6, None)}, rows)  # type: ignore[dict-item]
    assert float(both["own_view_silhouette"]) == pytest.approx(
        (float(on["own_view_silhouette"]) + float(off["own_view_silhouette"])) / 2, rel=1e-4
    )
    with pytest.raises(ValueError, match=r"^geometry\.own_view_weight must be >= 0"):
        LatentGeometry(own_view_weight=-0.5)


def with_opacity(points: torch.Tensor, opacity: float) -> torch.Tensor:
    return torch.cat([points, torch.full_like(points[..., :1], opacity)], -1)


def test_chamfer_counts_only_opaque_points():
    silhouette = square_silhouette()
    inside = with_opacity(filled_square(), 1.0)
    stray = with_opacity(
        filled_square() + torch.tensor([0.8, 0.8, 0.0]), 0.0
    )  # background points, off the hand
    clean = float(point_silhouette_chamfer(inside, silhouette))
    assert float(point_silhouette_chamfer(torch.cat([inside, stray], 1), silhouette)) == pytest.approx(clean)
    # the same stray points made opaque must land on the hand: the distance grows
    visible = with_opacity(stray[..., :3], 1.0)
    assert float(point_silhouette_chamfer(torch.cat([inside, visible], 1), silhouette)) > 10 * clean
    # the opacity gets no gradient from the distance: the points move, not their opacity
    moving = torch.cat([inside, visible], 1).requires_grad_(True)
    point_silhouette_chamfer(moving, silhouette).backward()
    assert moving.grad is not None and float(moving.grad[..., 3].abs().sum()) == 0
    assert float(moving.grad[..., :2].abs().sum()) > 0


def test_opacity_bce_prefers_the_opacities_of_the_own_silhouette():
    silhouette = square_silhouette(32, half=0.5)
    cells = silhouette_cells(silhouette, 8).float()  # (1, 64): the pixel-aligned grid of a 32-px image
    assert int(cells.sum()) == 16  # the square's 4 x 4 central cells
    points = torch.zeros(1, 64, 4)
    points[..., 3] = cells
    right = float(opacity_bce(points, silhouette))
    points[..., 3] = 1 - cells
    assert right < 0.01 < float(opacity_bce(points, silhouette))
    with pytest.raises(ValueError, match="with opacities"):
        opacity_bce(points[..., :3], silhouette)
    with pytest.raises(ValueError, match="a point per stride-4 cell of the 32-px image"):
        opacity_bce(points[:, :60], silhouette)
    # depth samples share their cell's opacity: the first layer's is scored
    layered = torch.cat([points, torch.zeros_like(points)], 1)
    assert float(opacity_bce(layered, silhouette)) == pytest.approx(float(opacity_bce(points, silhouette)))


def test_latent_geometry_opacity_term_averages_the_encoded_views():
    background = torch.zeros(1, 3, 32, 32)
    image = background.clone()
    image[..., 8:24, 8:24] = 1.0
    batch = {"image": image, "background_input": background, "target": image, "background": background}
    cells = silhouette_cells(silhouette_of(image), 8).float()
    good = torch.zeros(1, 64, 4)
    good[..., 3] = cells
    bad = good.clone()
    bad[..., 3] = 1 - cells
    rows = {"points": filled_square(), "target": image, "background": background}
    geometry = LatentGeometry(opacity_weight=2.0)
    assert geometry.active
    one = geometry(batch, {"i": (good, None), "j": (bad, None)}, rows)  # type: ignore[dict-item]
    expected = (
        float(opacity_bce(good, silhouette_of(image))) + float(opacity_bce(bad, silhouette_of(image)))
    ) / 2
    assert float(one["opacity"]) == pytest.approx(expected, rel=1e-5)
    assert float(one["latent_geometry"]) == pytest.approx(2.0 * expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"^geometry\.opacity_weight must be >= 0"):
        LatentGeometry(opacity_weight=-1.0)


def silhouette_of(image: torch.Tensor) -> torch.Tensor:
    return (image.amax(1, keepdim=True) > 0.02).float()


def test_hull_term_sees_depth_through_the_further_views():
    """A quarter turn about y shows a tilted square as a square and a flat one as a line: the hull tells them apart."""
    background = torch.zeros(1, 1, 3, 32, 32)
    hull = background.clone()
    hull[..., 8:24, 8:24] = 1.0  # the further view sees the square |x|, |y| <= 0.5
    quarter = rotation_about_axis("y", math.pi / 2)
    batch = {
        "hull_images": hull,
        "hull_backgrounds": background,
        "R_i_hull": quarter[None, None],
        "R_j_hull": quarter[None, None],
    }
    flat = filled_square()
    tilted = flat.clone()
    tilted[..., 2] = -tilted[..., 0]
    geometry = LatentGeometry(hull_weight=2.0)
    assert geometry.active
    rows = {"points": flat, "target": background[0], "background": background[0]}
    flat_terms = geometry(batch, {"i": (flat, None)}, rows)  # type: ignore[dict-item]
    tilted_terms = geometry(batch, {"i": (tilted, None)}, rows)  # type: ignore[dict-item]
    assert float(flat_terms["hull_silhouette"]) > 5 * float(tilted_terms["hull_silhouette"])
    assert float(flat_terms["latent_geometry"]) == pytest.approx(2.0 * float(flat_terms["hull_silhouette"]))
    both = geometry(batch, {"i": (flat, None), "j": (tilted, None)}, rows)  # type: ignore[dict-item]
    assert float(both["hull_silhouette"]) == pytest.approx(
        (float(flat_terms["hull_silhouette"]) + float(tilted_terms["hull_silhouette"])) / 2, rel=1e-5
    )
    with pytest.raises(ValueError, match=r"^geometry\.hull_weight > 0 checks the latent .*num_views: 4"):
        geometry({}, {"i": (flat, None)}, rows)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"^geometry\.hull_weight must be >= 0"):
        LatentGeometry(hull_weight=-1.0)
