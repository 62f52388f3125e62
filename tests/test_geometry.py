import cv2
import numpy as np
import pytest
import torch

from handssl import geometry as g

DIST = torch.tensor([0.12, -0.07, 0.002, -0.0015, 0.02], dtype=torch.float64)
K = torch.tensor([[520.0, 0.0, 318.0], [0.0, 515.0, 242.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def random_points(n=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [80.0, 60.0, 40.0]
    ) + torch.tensor([0.0, 0.0, 700.0])


def test_projection_matches_opencv_with_distortion():
    pts = random_points()
    ours = g.project(pts, K, DIST)
    ref, _ = cv2.projectPoints(pts.numpy(), np.zeros(3), np.zeros(3), K.numpy(), DIST.numpy())
    assert np.abs(ours.numpy() - ref[:, 0]).max() < 1e-9


def test_project_unproject_round_trip_with_distortion():
    pts = random_points(seed=1)
    uv = g.project(pts, K, DIST)
    back = g.unproject(uv, pts[:, 2], K, DIST)
    assert torch.allclose(back, pts, atol=1e-6)


def test_world_camera_round_trip_and_center():
    R = g.axis_angle_to_matrix(torch.tensor([0.3, -0.2, 0.9], dtype=torch.float64))
    t = torch.tensor([10.0, -40.0, 900.0], dtype=torch.float64)
    pts = random_points(seed=2)
    cam = g.world_to_camera(pts, R, t)
    assert torch.allclose(g.camera_to_world(cam, R, t), pts, atol=1e-9)
    # the camera centre maps to the camera-frame origin
    centre = g.camera_center(R, t)
    assert torch.allclose(
        g.world_to_camera(centre[None], R, t), torch.zeros(1, 3, dtype=torch.float64), atol=1e-9
    )


def test_relative_rotation_maps_camera_i_to_camera_j():
    Ri = g.axis_angle_to_matrix(torch.tensor([0.1, 0.5, -0.3], dtype=torch.float64))
    Rj = g.axis_angle_to_matrix(torch.tensor([-0.7, 0.2, 0.4], dtype=torch.float64))
    d_world = torch.tensor([0.3, -0.4, 0.866], dtype=torch.float64)
    Rij = g.relative_rotation(Ri, Rj)
    assert torch.allclose(Rij @ (Ri @ d_world), Rj @ d_world, atol=1e-12)
    assert torch.allclose(g.relative_rotation(Rj, Ri), Rij.T, atol=1e-12)


def test_axis_angle_round_trip_including_near_pi():
    aa = torch.tensor(
        [[0.2, -0.1, 0.05], [0.0, 0.0, 1e-9], [np.pi - 1e-4, 0.0, 0.0], [0.0, 2.0, 1.0]], dtype=torch.float64
    )
    R = g.axis_angle_to_matrix(aa)
    assert torch.allclose(
        R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(4, 3, 3), atol=1e-12
    )
    back = g.matrix_to_axis_angle(R)
    assert torch.allclose(g.axis_angle_to_matrix(back), R, atol=1e-6)


def _geodesic(Ra, Rb):
    """Angle (float64) of the rotation between two batches of rotation matrices."""
    M = Ra.double().transpose(-1, -2) @ Rb.double()
    cos = (M.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    sin = torch.stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1
    )
    return torch.atan2(sin.norm(dim=-1) / 2, cos)


@pytest.mark.parametrize("regime", ["near_pi", "near_zero", "uniform"])
def test_matrix_to_axis_angle_is_accurate_at_every_angle_in_float32(regime):
    gen = torch.Generator().manual_seed(0)
    n = 4000
    axis = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    angle = {"near_pi": np.pi - 1e-3 * u, "near_zero": 1e-3 * u, "uniform": np.pi * u}[regime]
    angle[:2] = {"near_pi": np.pi, "near_zero": 0.0, "uniform": np.pi / 2}[regime]  # the exact ends too
    aa = axis * angle[:, None]
    R_true = g.axis_angle_to_matrix(aa)
    R = R_true.float()
    back = g.matrix_to_axis_angle(R)
    assert back.dtype == torch.float32 and torch.isfinite(back).all()
    # The recovered rotation is the true one up to float32 rounding of R (the old acos version was off by
    # up to 3 rad near pi).
    assert _geodesic(g.axis_angle_to_matrix(back.double()), R_true).max() < 1e-5
    assert (back.double().norm(dim=-1) - angle).abs().max() < 1e-5
    assert (g.axis_angle_to_matrix(back) - R).abs().max() < 1e-5
    if regime != "near_pi":  # away from pi the axis-angle itself is unique
        assert torch.allclose(back.double(), aa, atol=1e-5)


def test_matrix_to_axis_angle_numpy_batches_and_finite_gradients():
    aa = np.array([[0.0, 0.0, 0.0], [np.pi, 0.0, 0.0], [0.3, 0.2, 0.1], [1e-6, 0.0, 0.0]], dtype=np.float32)
    R = g.axis_angle_to_matrix(aa)
    back = g.matrix_to_axis_angle(R)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32 and back.shape == (4, 3)
    assert g.matrix_to_axis_angle(np.broadcast_to(R, (2, 4, 3, 3))).shape == (2, 4, 3)
    assert np.allclose(np.abs(back), np.abs(aa), atol=1e-6)
    R_t = torch.from_numpy(R).requires_grad_()
    g.matrix_to_axis_angle(R_t).sum().backward()
    assert torch.isfinite(R_t.grad).all()


def test_procrustes_recovers_known_similarity():
    src = random_points(21, seed=3)
    R = g.axis_angle_to_matrix(torch.tensor([0.4, 1.1, -0.6], dtype=torch.float64))
    t = torch.tensor([5.0, -30.0, 12.0], dtype=torch.float64)
    tgt = 1.7 * src @ R.T + t
    s, R_est, t_est = g.similarity_procrustes(src, tgt)
    assert s.item() == pytest.approx(1.7, abs=1e-9)
    assert torch.allclose(R_est, R, atol=1e-9) and torch.allclose(t_est, t, atol=1e-6)
    assert torch.allclose(g.procrustes_align(src, tgt), tgt, atol=1e-6)


def test_procrustes_ignores_invalid_points_and_never_reflects():
    src = random_points(21, seed=4)
    tgt = src.clone()
    tgt[3] += 500.0  # an outlier that is masked out
    valid = torch.ones(21, dtype=torch.bool)
    valid[3] = False
    s, R, _ = g.similarity_procrustes(src, tgt, valid)
    assert s.item() == pytest.approx(1.0, abs=1e-9) and torch.allclose(
        R, torch.eye(3, dtype=torch.float64), atol=1e-9
    )
    mirrored = src * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    _, R_m, _ = g.similarity_procrustes(src, mirrored)
    assert torch.linalg.det(R_m).item() == pytest.approx(1.0, abs=1e-9)


def test_crop_cameras_of_two_views_differ_by_a_pure_rotation():
    centre = torch.tensor([20.0, -10.0, 30.0], dtype=torch.float64)
    cams = []
    for aa, t in (([0.1, 0.2, 0.0], [0.0, 0.0, 800.0]), ([0.2, -1.2, 0.1], [50.0, 20.0, 700.0])):
        R = g.axis_angle_to_matrix(torch.tensor(aa, dtype=torch.float64))
        cams.append(g.crop_camera(K, R, torch.tensor(t, dtype=torch.float64), centre, size_px=64))
    for cam in cams:  # the target lands in the crop centre and the optical axis passes through it
        uv = g.project_world(centre[None], cam.K, cam.R, cam.t)
        assert torch.allclose(uv, torch.full((1, 2), 31.5, dtype=torch.float64), atol=1e-9)
    pts = random_points(10, seed=5) * 0.1
    Rij = g.relative_rotation(cams[0].R, cams[1].R)
    ci = g.world_to_camera(pts, cams[0].R, cams[0].t) - g.world_to_camera(centre[None], cams[0].R, cams[0].t)
    cj = g.world_to_camera(pts, cams[1].R, cams[1].t) - g.world_to_camera(centre[None], cams[1].R, cams[1].t)
    assert torch.allclose(ci @ Rij.T, cj, atol=1e-9)


def test_crop_homography_maps_original_pixels_to_crop_pixels():
    R = g.axis_angle_to_matrix(torch.tensor([0.05, 0.3, 0.0], dtype=torch.float64))
    t = torch.tensor([0.0, 0.0, 800.0], dtype=torch.float64)
    cam = g.crop_camera(K, R, t, torch.tensor([30.0, 0.0, 0.0], dtype=torch.float64), 128)
    pts = random_points(5, seed=6) * 0.05
    uv = g.project_world(pts, K, R, t)
    uv_crop = g.project_world(pts, cam.K, cam.R, cam.t)
    h = torch.cat([uv, torch.ones(5, 1, dtype=torch.float64)], 1) @ cam.homography.T
    assert torch.allclose(h[:, :2] / h[:, 2:], uv_crop, atol=1e-6)


def test_numpy_in_numpy_out():
    out = g.project(random_points().numpy(), K.numpy(), DIST.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (50, 2)


def test_image_plane_matrices_round_trip_and_match_projection():
    # A similarity M (rotation 30 deg, scale 1.5, shift): the points map through M and back through its inverse,
    # torch and numpy alike, and projecting Rz @ X with the new K lands exactly on M's 2D points.
    c, s = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
    M = np.array([[1.5 * c, -1.5 * s, 4.0], [1.5 * s, 1.5 * c, -2.0], [0.0, 0.0, 1.0]])
    pts = random_points(seed=3)
    uv = g.project(pts, K)
    moved = g.transform_points(uv, torch.as_tensor(M))
    assert not torch.allclose(moved, uv, atol=1.0)
    assert torch.allclose(g.transform_points(moved, g.invert_matrix(torch.as_tensor(M))), uv, atol=1e-9)
    assert np.allclose(g.transform_points(uv.numpy(), M), moved.numpy())
    square_k = K.clone()
    square_k[1, 1] = square_k[0, 0]  # fx == fy, as every handssl crop camera
    rz = torch.as_tensor(g.optical_axis_rotation(M))
    new_k = g.transform_intrinsics(square_k, M)
    expected = g.transform_points(g.project(pts, square_k), torch.as_tensor(M))
    assert torch.allclose(g.project(pts @ rz.T, new_k), expected, atol=1e-6)
    # ... and the new K is again a pinhole camera: no skew, fx == fy scaled by 1.5, the shifted centre.
    assert abs(new_k[0, 1]) < 1e-9 and abs(new_k[1, 0]) < 1e-9
    assert torch.allclose(new_k[0, 0], 1.5 * square_k[0, 0]) and torch.allclose(new_k[1, 1], new_k[0, 0])
    with pytest.raises(ValueError, match="mirror"):
        g.optical_axis_rotation(np.diag([-1.0, 1.0, 1.0]))


def test_data_and_models_layers_meet_only_in_shared_modules():
    # The 2D-matrix helpers live in handssl.geometry (handssl.data.augment re-exports them): the models import
    # nothing from handssl.data.augment and the data layer nothing from handssl.models.
    import ast
    from pathlib import Path

    from handssl.data import augment

    assert augment.transform_points is g.transform_points and augment.invert_matrix is g.invert_matrix
    package = Path(g.__file__).parent

    def imports(path):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                yield node.module
            elif isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)

    bad = [
        f"{path.relative_to(package)}: {module}"
        for layer, forbidden in (("models", "handssl.data.augment"), ("data", "handssl.models"))
        for path in sorted((package / layer).rglob("*.py"))
        for module in imports(path)
        if module == forbidden or module.startswith(forbidden + ".")
    ]
    assert bad == []
