import numpy as np
import pytest
import torch

from handssl.data.base import DatasetError, check_sample, mirror_sample
from handssl.data.datamodules import collate_samples
from handssl.data.transforms import CropResize, affine_crop_matrix
from handssl.geometry import project


def raw_sample(rng: np.random.Generator, width: int = 160, height: int = 120) -> dict:
    K = np.array([[150.0, 0, 70.0], [0, 155.0, 55.0], [0, 0, 1]], np.float32)
    joints3d = (rng.normal(size=(21, 3)) * [30, 30, 20] + [10, -5, 400]).astype(np.float32)
    joints2d = project(joints3d.astype(np.float64), K.astype(np.float64)).astype(np.float32)
    image = np.zeros((height, width, 3), np.uint8)
    valid = np.ones(21, bool)
    meta = {"dataset": "fake", "subject": None, "sequence": "s", "frame": 3, "camera": 0, "hand": "left"}
    return {"image": image, "joints3d": joints3d, "joints2d": joints2d, "K": K, "valid": valid, "meta": meta}


def test_crop_keeps_2d_equal_to_projection_of_3d():
    rng = np.random.default_rng(1)
    sample = raw_sample(rng)
    out = CropResize(64, margin=0.2)(sample)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    reproj = project(out["joints3d"].double(), out["K"].double())
    assert torch.allclose(reproj, out["joints2d"].double(), atol=1e-3)
    # the joints' box fills the crop minus the margin
    j2 = out["joints2d"]
    assert j2.min() > -0.5 and j2.max() < 63.5
    side = (j2.max(0).values - j2.min(0).values).max()
    assert side == pytest.approx(64 / 1.4, rel=0.02)


def test_crop_moves_pixels_with_the_joints():
    rng = np.random.default_rng(2)
    sample = raw_sample(rng)
    u, v = np.round(sample["joints2d"][8]).astype(int)
    sample["joints2d"][8] = [u, v]
    sample["image"][v - 1 : v + 2, u - 1 : u + 2] = 255
    out = CropResize(64, margin=0.3)(sample)
    img = out["image"][0]
    peak = torch.nonzero(img == img.max())
    centroid = peak.float().mean(0)  # (row, col)
    assert abs(centroid[1] - out["joints2d"][8, 0]) < 1.0
    assert abs(centroid[0] - out["joints2d"][8, 1]) < 1.0


def test_affine_crop_matrix_maps_box_edges_to_pixel_edges():
    A = affine_crop_matrix(np.array([50.0, 40.0]), 20.0, 10)
    left_top = A @ np.array([40.0, 30.0, 1.0])
    right_bottom = A @ np.array([60.0, 50.0, 1.0])
    assert np.allclose(left_top[:2], [-0.5, -0.5]) and np.allclose(right_bottom[:2], [9.5, 9.5])


def test_mirror_is_consistent_and_flips_hand():
    rng = np.random.default_rng(3)
    sample = raw_sample(rng)
    mirrored = mirror_sample(sample)
    reproj = project(mirrored["joints3d"].astype(np.float64), mirrored["K"].astype(np.float64))
    assert np.allclose(reproj, mirrored["joints2d"], atol=1e-3)
    assert np.allclose(mirrored["joints2d"][:, 0], sample["image"].shape[1] - 1 - sample["joints2d"][:, 0])
    assert mirrored["meta"]["hand"] == "right" and sample["meta"]["hand"] == "left"
    twice = mirror_sample(mirrored)
    assert np.allclose(twice["joints3d"], sample["joints3d"]) and twice["meta"]["hand"] == "left"


def test_tensor_image_of_wrong_size_is_a_clear_error():
    rng = np.random.default_rng(4)
    sample = CropResize(32)(raw_sample(rng))
    with pytest.raises(DatasetError, match="image_size=64"):
        CropResize(64)(sample)


@pytest.mark.parametrize("size", [8, 63.5, "64"])
def test_impossible_image_size(size):
    with pytest.raises(ValueError, match="image_size"):
        CropResize(size)


def test_collate_keeps_meta_as_lists_and_none():
    rng = np.random.default_rng(5)
    samples = [CropResize(32)(raw_sample(rng)) for _ in range(3)]
    batch = collate_samples(samples)
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["meta"]["subject"] == [None, None, None] and batch["meta"]["frame"] == [3, 3, 3]


def test_check_sample_rejects_nan_in_valid_joints():
    rng = np.random.default_rng(6)
    sample = raw_sample(rng)
    sample["joints2d"][4] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        check_sample(sample)
    sample["valid"][4] = False
    check_sample(sample)


def test_transformed_dataset_keeps_batched_loading():
    from handssl.data.datamodules import TransformedDataset

    class Batched(torch.utils.data.Dataset):
        def __init__(self):
            self.batched_calls = 0

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return raw_sample(np.random.default_rng(i))

        def __getitems__(self, indices):
            self.batched_calls += 1
            return [self[i] for i in indices]

    inner = Batched()
    loader = torch.utils.data.DataLoader(
        TransformedDataset(inner, CropResize(32)), batch_size=2, collate_fn=collate_samples
    )
    batches = list(loader)
    assert inner.batched_calls == 2 and batches[0]["image"].shape == (2, 3, 32, 32)
