import math

import numpy as np
import pytest
import torch

from handssl.data.augment import (
    applied_matrix,
    augment_sample,
    diversity_pipeline,
    invert_matrix,
    make_pipeline,
    optical_axis_rotation,
    perturbation_pipeline,
    transform_intrinsics,
    transform_points,
)
from handssl.geometry import project

SIZE = 64


def _sample(seed=0):
    g = torch.Generator().manual_seed(seed)
    joints3d = torch.randn(21, 3, generator=g) * 30 + torch.tensor([5.0, -8.0, 400.0])
    K = torch.tensor([[102.4, 0.0, 31.5], [0.0, 102.4, 31.5], [0.0, 0.0, 1.0]])
    image = torch.rand(3, SIZE, SIZE, generator=g)
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 20:40, 25:45] = 1.0
    return {
        "image": image,
        "mask": mask,
        "joints3d": joints3d,
        "joints2d": project(joints3d, K),
        "K": K,
        "valid": torch.ones(21, dtype=torch.bool),
        "depth": torch.ones(1, SIZE, SIZE),
        "meta": {"dataset": "fake"},
    }


@pytest.mark.parametrize("kind", ["perturbation", "diversity"])
def test_augment_invert_round_trip_within_0_01_px(kind):
    pipeline = make_pipeline(kind)
    sample = _sample()
    for seed in range(20):
        out = augment_sample(sample, pipeline, seed=seed)
        back = transform_points(out["joints2d"], invert_matrix(out["transform_matrix"]))
        assert torch.allclose(back, sample["joints2d"], atol=0.01)


def test_perturbation_is_one_of_shift_small_rotation_or_right_angle():
    pipeline = perturbation_pipeline(shift_px=5, rotate_deg=2.0)
    seen = set()
    for seed in range(90):
        pipeline.set_random_seed(seed)
        out = pipeline(image=np.zeros((SIZE, SIZE, 3), np.float32), keypoints=np.zeros((1, 2)))
        assert len(out["applied_transforms"]) == 1
        m = applied_matrix(out["applied_transforms"])
        angle = math.degrees(math.atan2(-m[0, 1], m[0, 0])) % 360
        is_shift = np.allclose(m[:2, :2], np.eye(2))
        if is_shift:
            assert np.all(np.abs(m[:2, 2]) <= 5 + 1e-9)
            assert np.allclose(m[:2, 2], np.round(m[:2, 2]))  # whole pixels
            seen.add("shift")
        elif min(angle, 360 - angle) <= 2.0 + 1e-6:
            seen.add("small")
        else:
            right = [a for a in (90.0, 180.0, 270.0) if abs(angle - a) < 1e-6]
            assert right, angle
            seen.add(right[0])
        assert np.isclose(np.linalg.det(m[:2, :2]), 1.0)
    # Every choice, including each of the three right angles, is drawn (re-seeded per call as in the data).
    assert seen == {"shift", "small", 90.0, 180.0, 270.0}


def test_right_angle_rotation_moves_pixels_exactly():
    # A 90 degree rotation about the centre keeps the pixel grid: image and joints move as rot90.
    pipeline = perturbation_pipeline(shift_px=0, rotate_deg=0.0)
    sample = _sample()
    for seed in range(30):
        out = augment_sample(sample, pipeline, seed=seed)
        m = out["transform_matrix"].double().numpy()
        if np.allclose(m[:2, :2], [[0, 1], [-1, 0]], atol=1e-6):  # x' = y, y' = 63 - x: counter-clockwise
            expected = torch.rot90(sample["image"], k=1, dims=(1, 2))
            assert torch.allclose(out["image"], expected, atol=1e-5)
            u, v = sample["joints2d"][:, 0], sample["joints2d"][:, 1]
            assert torch.allclose(out["joints2d"], torch.stack([v, SIZE - 1 - u], -1), atol=1e-3)
            return
    pytest.fail("no 90 degree rotation drawn in 30 seeds")


def test_labels_follow_the_image_3d_k_and_mask():
    pipeline = diversity_pipeline(rotate_deg=40.0, scale=(0.8, 1.2), p_geometric=1.0)
    sample = _sample(1)
    for seed in range(10):
        out = augment_sample(sample, pipeline, seed=seed)
        # New 3D projected with new K gives new 2D.
        assert torch.allclose(project(out["joints3d"], out["K"]), out["joints2d"], atol=1e-2)
        # Root-relative 3D is only rotated about the optical axis: pairwise distances and z kept.
        assert torch.allclose(
            torch.cdist(out["joints3d"], out["joints3d"]),
            torch.cdist(sample["joints3d"], sample["joints3d"]),
            atol=1e-3,
        )
        assert torch.allclose(out["joints3d"][:, 2], sample["joints3d"][:, 2], atol=1e-3)
        # K stays a pinhole with fx == fy and zero skew.
        assert abs(out["K"][0, 1]) < 1e-3 and abs(out["K"][1, 0]) < 1e-3
        assert torch.isclose(out["K"][0, 0], out["K"][1, 1], atol=1e-3)
        # The mask moved with the same matrix: a mask pixel's image lands on the new mask.
        m = out["transform_matrix"]
        centre = transform_points(torch.tensor([[35.0, 30.0]]), m)[0].round().long()
        if (centre >= 0).all() and (centre < SIZE).all():
            assert out["mask"][0, centre[1], centre[0]] == 1.0
    assert "depth" not in out and out["image"].shape == (3, SIZE, SIZE)
    assert out["in_bounds"].dtype == torch.bool


def test_in_plane_rotation_recovered_as_camera_rotation():
    angle = math.radians(30.0)
    c, s = math.cos(angle), math.sin(angle)
    matrix = np.array([[2 * c, -2 * s, 3.0], [2 * s, 2 * c, -1.0], [0, 0, 1]])
    rz = optical_axis_rotation(matrix)
    assert np.allclose(rz, [[c, -s, 0], [s, c, 0], [0, 0, 1]])
    K = np.array([[100.0, 0, 30], [0, 100.0, 32], [0, 0, 1]])
    new_k = transform_intrinsics(K, matrix)
    assert np.allclose(new_k[:2, :2], 200 * np.eye(2))
    with pytest.raises(ValueError, match="mirror"):
        optical_axis_rotation(np.diag([-1.0, 1.0, 1.0]))


def test_unsupported_geometric_transform_is_refused():
    with pytest.raises(ValueError, match="cannot invert"):
        applied_matrix([("HorizontalFlip", {"shape": (64, 64, 3)})])
    assert np.allclose(applied_matrix([("ColorJitter", {}), ("ToGray", {}), ("Erasing", {})]), np.eye(3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_pipeline("strong")
    with pytest.raises(ValueError, match="scale"):
        diversity_pipeline(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match=">= 0"):
        perturbation_pipeline(shift_px=-1)


def test_seeded_augmentation_is_deterministic():
    pipeline = make_pipeline("diversity")
    sample = _sample()
    a = augment_sample(sample, pipeline, seed=7)
    b = augment_sample(sample, pipeline, seed=7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["transform_matrix"], b["transform_matrix"])
