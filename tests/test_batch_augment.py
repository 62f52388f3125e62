"""Batched torch augmentations (handssl.data.batch_augment) and SemiSupervisedDataModule(augment_on="batch")."""

from __future__ import annotations

import math

import pytest
import torch

from handssl.data import batch_augment as ba
from handssl.geometry import project, transform_points


def _dot_images(points: torch.Tensor, size: int = 32) -> torch.Tensor:
    """One bright Gaussian dot per image at ``points`` ``(B, 2)`` px."""
    ys, xs = torch.meshgrid(torch.arange(size.__float__()), torch.arange(size.__float__()), indexing="ij")
    d2 = (xs[None] - points[:, 0, None, None]) ** 2 + (ys[None] - points[:, 1, None, None]) ** 2
    return torch.exp(-d2 / 2.0)[:, None].expand(-1, 3, -1, -1).contiguous()


def _peak(images: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre of each image's first channel, ``(B, 2)`` px."""
    w = images[:, 0].clamp_min(0) ** 4
    h, wd = w.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(wd)), indexing="ij")
    total = w.sum((-1, -2))
    return torch.stack([(w * xs).sum((-1, -2)) / total, (w * ys).sum((-1, -2)) / total], -1)


def test_warp_moves_pixels_where_the_matrix_moves_points() -> None:
    torch.manual_seed(0)
    points = torch.tensor([[12.0, 10.0], [16.0, 20.0], [20.0, 14.0]])
    images = _dot_images(points)
    matrices = ba.similarity_matrices(
        torch.tensor([0.4, -1.0, math.pi / 2], dtype=torch.float64),
        torch.tensor([1.0, 0.9, 1.1], dtype=torch.float64),
        torch.tensor([[2.0, -1.0], [0.0, 3.0], [-2.0, 0.0]], dtype=torch.float64),
        (32, 32),
    )
    moved = transform_points(points.double()[:, None], matrices)[:, 0].float()
    assert torch.allclose(_peak(ba.warp(images, matrices)), moved, atol=0.15)


def test_right_angle_rotation_is_exact_and_centre_fixed() -> None:
    m = ba.similarity_matrices(
        torch.tensor([math.pi / 2], dtype=torch.float64), torch.ones(1, dtype=torch.float64),
        torch.zeros(1, 2, dtype=torch.float64), (8, 8),
    )  # fmt: skip
    image = torch.arange(64.0).view(1, 1, 8, 8)
    # 90 degrees counter-clockwise on screen, as torch.rot90 over (H, W)
    assert torch.allclose(ba.warp(image, m), torch.rot90(image, 1, (2, 3)), atol=1e-4)
    centre = torch.tensor([[[3.5, 3.5]]], dtype=torch.float64)
    assert torch.allclose(transform_points(centre, m), centre)


def test_perturbation_draws_exactly_one_kind() -> None:
    torch.manual_seed(1)
    m = ba.perturbation_matrices(3000, (64, 64), ba.PerturbationOptions(shift_px=5, rotate_deg=2.0))
    angle = torch.atan2(m[:, 0, 1], m[:, 0, 0]).abs()
    shift = transform_points(torch.tensor([[[31.5, 31.5]]], dtype=torch.float64), m)[:, 0] - 31.5
    shifted = shift.abs().sum(-1) > 1e-9
    small = (angle > 1e-9) & (angle <= math.radians(2.0) + 1e-9)
    right = angle > math.radians(80)
    assert not (shifted & (angle > 1e-9)).any()  # never both
    assert (shift.abs() <= 5).all()
    # OneOf weights 1 : 1 : 1/3 x 3
    assert abs(shifted.float().mean() - 1 / 3) < 0.04
    assert abs(small.float().mean() - 1 / 3) < 0.04
    assert abs(right.float().mean() - 1 / 3) < 0.04


def test_labels_follow_the_geometry_exactly() -> None:
    torch.manual_seed(2)
    b = 16
    K = torch.tensor([[80.0, 0, 31.5], [0, 80.0, 31.5], [0, 0, 1]]).expand(b, 3, 3).contiguous()
    joints3d = torch.randn(b, 21, 3) * 30 + torch.tensor([0.0, 0.0, 400.0])
    batch = {
        "image": torch.rand(b, 3, 64, 64),
        "mask": torch.rand(b, 1, 64, 64),
        "K": K,
        "joints3d": joints3d,
        "joints2d": project(joints3d, K),
    }
    out = ba.augment_labeled_batch(batch, ba.DiversityOptions(p_geometric=1.0))
    assert torch.allclose(project(out["joints3d"], out["K"]), out["joints2d"], atol=1e-2)
    assert torch.allclose(
        out["joints2d"], transform_points(batch["joints2d"], out["transform_matrix"]), atol=1e-3
    )
    # root-relative 3D is rotated, never scaled
    rel = lambda j: (j - j[:, :1]).norm(dim=-1)  # noqa: E731
    assert torch.allclose(rel(out["joints3d"]), rel(joints3d), atol=1e-3)
    assert not torch.allclose(out["joints2d"], batch["joints2d"])
    assert out["image"].shape == batch["image"].shape and out["mask"].shape == batch["mask"].shape
    assert out["in_bounds"].dtype == torch.bool and out["in_bounds"].shape == (b, 21)


def test_unlabeled_copies_and_their_matrices() -> None:
    torch.manual_seed(3)
    points = torch.tensor([[20.0, 24.0], [40.0, 30.0]])
    images = torch.nn.functional.interpolate(_dot_images(points / 2), scale_factor=2.0, mode="bilinear")
    K = torch.eye(3).expand(2, 3, 3).contiguous()
    out = ba.augment_unlabeled_batch(
        {"image": images, "K": K}, 3, ba.PerturbationOptions(), ba.DiversityOptions(p_color=0, p_erase=0)
    )
    assert out["image_perturbed"].shape == (2, 3, 3, 64, 64) and out["perturb_matrix"].shape == (2, 3, 3, 3)
    expected = transform_points(points[:, None], out["perturb_matrix"].transpose(0, 1))[..., 0, :]
    peaks = torch.stack([_peak(out["image_perturbed"][:, p]) for p in range(3)])
    assert (peaks - expected).norm(dim=-1).max() < 1.0
    strong = transform_points(points[:, None], out["strong_matrix"])[:, 0]
    inside = ((strong > 4) & (strong < 60)).all(-1)
    assert ((_peak(out["image_strong"]) - strong).norm(dim=-1)[inside] < 1.0).all()
    assert torch.allclose(out["K_strong"][:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(2, 3))


def test_photometric_parts() -> None:
    torch.manual_seed(4)
    images = torch.rand(4, 3, 32, 32) * 0.6 + 0.2
    same = ba.color_jitter(images, torch.ones(4), torch.ones(4), torch.ones(4), torch.zeros(4))
    assert torch.allclose(same, images, atol=1e-5)
    brighter = ba.color_jitter(images, torch.full((4,), 1.2), torch.ones(4), torch.ones(4), torch.zeros(4))
    assert (brighter.mean() > images.mean() * 1.1).item()
    hue = ba.color_jitter(images, torch.ones(4), torch.ones(4), torch.ones(4), torch.full((4,), 0.25))
    luma = lambda x: 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # noqa: E731
    assert not torch.allclose(hue, images, atol=1e-2) and torch.allclose(luma(hue), luma(images), atol=0.05)
    blurred = ba.gaussian_blur(images, torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64))
    assert torch.allclose(blurred.mean((1, 2, 3)), images.mean((1, 2, 3)), atol=0.02)
    roughness = (blurred[..., 1:] - blurred[..., :-1]).abs().mean((1, 2, 3))
    assert (roughness[1:] < roughness[:-1]).all()  # more sigma, smoother
    smooth = ba.gaussian_blur(images, torch.full((4,), 2.0, dtype=torch.float64))
    q = torch.tensor([100, 95, 50, 10])
    errors = (ba.jpeg_round_trip(smooth, q) - smooth).abs().mean((1, 2, 3))
    assert errors[0] < 0.02 and (errors[1:] >= errors[:-1] - 1e-4).all() and errors[-1] > errors[0] * 2
    erased = ba.random_erasing(
        torch.ones(2, 3, 32, 32), torch.tensor([0.1, 0.1], dtype=torch.float64),
        torch.ones(2, dtype=torch.float64), torch.full((2, 2), 0.5, dtype=torch.float64),
    )  # fmt: skip
    assert torch.allclose(1 - erased[:, 0].mean((-1, -2)), torch.full((2,), 0.1), atol=0.03)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="scale"):
        ba.DiversityOptions(scale=(1.2, 1.0))
    with pytest.raises(ValueError, match="jpeg_quality"):
        ba.DiversityOptions(jpeg_quality=(0, 90))
    with pytest.raises(ValueError, match="shift_px"):
        ba.PerturbationOptions(shift_px=-1)


def test_datamodule_batch_mode_gives_the_workers_batch_layout() -> None:
    from handssl.data import SemiSupervisedDataModule, SynthHands, SynthHandsWorld
    from handssl.data.synthhands.world import Style

    def module(augment_on: str) -> SemiSupervisedDataModule:
        def make(style: Style) -> SynthHands:
            return SynthHands(
                split="train", world=SynthHandsWorld(style=style, image_size=32), num_subjects=1
            )

        return SemiSupervisedDataModule(
            labeled=[make("synthetic")],
            unlabeled=[make("real")],
            image_size=32,
            batch_size=8,
            augment_on=augment_on,  # type: ignore[arg-type]
            diversity={"p_blur": 0.5, "p_noise": 0.5, "p_jpeg": 0.5, "scale": [0.9, 1.1]},
        )

    batches = {}
    for mode in ("workers", "batch"):
        dm = module(mode)
        dm.setup("fit")
        raw = next(iter(dm.train_dataloader()))
        raw = raw[0] if isinstance(raw, tuple) else raw
        batches[mode] = dm.on_after_batch_transfer(raw, 0)
    for part in ("labeled", "unlabeled"):
        workers, batch = batches["workers"][part], batches["batch"][part]
        assert set(workers) == set(batch), part
        for key, value in workers.items():
            if isinstance(value, torch.Tensor):
                assert batch[key].shape == value.shape and batch[key].dtype == value.dtype, (part, key)
    labeled = batches["batch"]["labeled"]
    assert torch.allclose(project(labeled["joints3d"], labeled["K"]), labeled["joints2d"], atol=0.05)
    with pytest.raises(ValueError, match="augment_on"):
        module("gpu")
