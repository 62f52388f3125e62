import numpy as np
import pytest
import torch
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from torch.utils.data import Dataset

from handssl.data.augment import invert_matrix, transform_points
from handssl.data.semi import LabeledView, SemiSupervisedDataModule, UnlabeledView
from handssl.geometry import axis_angle_to_matrix, project
from handssl.kinematics import rest_pose
from handssl.models.components.consistency import capsule_radii, render_pose_mask

SIZE = 64


class FakeHands(Dataset):
    """Tiny deterministic hand images: a capsule silhouette of a rotated template hand over noise.

    ``numpy_images=True`` returns full-size uint8 numpy images (like the real datasets, before the crop).
    """

    def __init__(self, n=12, seed=0, style="synthetic", numpy_images=False, with_mask=True):
        self.n, self.seed, self.style = n, seed, style
        self.numpy_images, self.with_mask = numpy_images, with_mask
        self.rest = rest_pose()

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if not 0 <= index < self.n:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1000 + index)
        rot = axis_angle_to_matrix(torch.randn(3, generator=g) * 0.6 + torch.tensor([0.0, 0.0, 3.0]))
        joints = (self.rest - self.rest[9]) @ rot.T + torch.tensor([0.0, 0.0, 450.0])
        joints = joints + torch.randn(3, generator=g) * torch.tensor([5.0, 5.0, 20.0])
        size = 96 if self.numpy_images else SIZE
        focal = size * 450.0 / 260.0
        K = torch.tensor([[focal, 0.0, (size - 1) / 2], [0.0, focal, (size - 1) / 2], [0.0, 0.0, 1.0]])
        uv = project(joints, K)
        mask = render_pose_mask(uv[None], size, size, capsule_radii(size), 0.5)[0]
        colour = torch.tensor([0.9, 0.7, 0.6] if self.style == "synthetic" else [0.6, 0.45, 0.35]).view(
            3, 1, 1
        )
        background = torch.rand(3, size, size, generator=g) * (0.2 if self.style == "synthetic" else 0.6)
        image = mask * colour + (1 - mask) * background
        sample = {
            "joints3d": joints,
            "joints2d": uv,
            "K": K,
            "valid": torch.ones(21, dtype=torch.bool),
            "meta": {"dataset": "fake", "index": index, "style": self.style},
        }
        if self.numpy_images:
            sample["image"] = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            if self.with_mask:
                sample["mask"] = (mask[0].numpy() > 0.5).astype(np.uint8)
        else:
            sample["image"] = image
            if self.with_mask:
                sample["mask"] = (mask > 0.5).float()
        return sample


def make_datamodule(**kwargs):
    options = dict(
        labeled=[FakeHands(12, seed=1)],
        unlabeled=[FakeHands(8, seed=2, style="real")],
        val=[FakeHands(4, seed=3, style="real")],
        test=[FakeHands(4, seed=4, style="real")],
        batch_size=8,
        unlabeled_fraction=0.25,
        num_perturbations=2,
    )
    options.update(kwargs)
    return SemiSupervisedDataModule(**options)


def test_batches_mix_labeled_and_unlabeled_at_the_ratio():
    dm = make_datamodule()
    assert dm.split_batch_size() == (6, 2)
    loader = dm.train_dataloader()
    assert isinstance(loader, CombinedLoader) and loader._mode == "max_size_cycle"
    batch, _, _ = next(iter(loader))
    lab, unl = batch["labeled"], batch["unlabeled"]
    assert lab["image"].shape == (6, 3, SIZE, SIZE) and unl["image"].shape == (2, 3, SIZE, SIZE)
    assert unl["image_perturbed"].shape == (2, 2, 3, SIZE, SIZE)
    assert unl["perturb_matrix"].shape == (2, 2, 3, 3) and unl["strong_matrix"].shape == (2, 3, 3)
    assert unl["image_strong"].shape == (2, 3, SIZE, SIZE)
    # Unlabelled annotations are only present as eval_* keys, never under the label keys.
    assert "joints3d" not in unl and "joints2d" not in unl and "eval_joints3d" in unl
    assert lab["mask"].shape == (6, 1, SIZE, SIZE) and lab["has_mask"].all()
    # Labelled items are augmented with their labels moved along: 2D = projection of 3D with the new K.
    assert torch.allclose(project(lab["joints3d"], lab["K"]), lab["joints2d"], atol=0.05)


def test_max_size_cycle_epoch_length_and_only_one_part():
    dm = make_datamodule(batch_size=4, unlabeled_fraction=0.5)  # 12 labelled / 2 = 6 batches, 8 / 2 = 4
    loader = dm.train_dataloader()
    batches = list(iter(loader))
    assert len(batches) == 6
    indices = torch.cat([b[0]["unlabeled"]["index"] for b in batches])
    assert set(indices.tolist()) == set(range(8))  # the shorter loader cycles
    only_labeled = make_datamodule(unlabeled_fraction=0.0).train_dataloader()
    assert set(next(iter(only_labeled))[0]) == {"labeled"}
    only_unlabeled = make_datamodule(unlabeled_fraction=1.0).train_dataloader()
    assert set(next(iter(only_unlabeled))[0]) == {"unlabeled"}


def test_unlabeled_perturbations_invert_to_the_original():
    view = UnlabeledView(FakeHands(3, seed=5), SIZE, num_perturbations=3, deterministic=True)
    item = view[1]
    uv = project(item["eval_joints3d"], item["K"])
    for p in range(3):
        moved = transform_points(uv, item["perturb_matrix"][p])
        assert torch.allclose(
            transform_points(moved, invert_matrix(item["perturb_matrix"][p])), uv, atol=1e-3
        )
    # Deterministic mode: the same copies every time; items differ from each other.
    again = view[1]
    assert torch.equal(item["image_perturbed"], again["image_perturbed"])
    assert torch.equal(item["strong_matrix"], again["strong_matrix"])
    assert not torch.equal(view[2]["perturb_matrix"], item["perturb_matrix"]) or not torch.equal(
        view[2]["image"], item["image"]
    )


def test_pseudo_label_loader_shards_cover_every_item_once():
    dm = make_datamodule(eval_batch_size=3)
    full = torch.cat([b["index"] for b in dm.pseudo_label_dataloader()])
    assert full.tolist() == list(range(8))
    shards = [
        torch.cat([b["index"] for b in dm.pseudo_label_dataloader(rank=r, world_size=2)]) for r in range(2)
    ]
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(shards[0].tolist() + shards[1].tolist()) == list(range(8))


def test_numpy_datasets_are_cropped_and_mask_filled_in():
    view = LabeledView(FakeHands(2, numpy_images=True, with_mask=False), SIZE, augment=False)
    item = view[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert not item["has_mask"] and item["mask"].shape == (1, SIZE, SIZE)
    assert torch.allclose(project(item["joints3d"], item["K"]), item["joints2d"], atol=0.05)
    assert (item["joints2d"] > 0).all() and (item["joints2d"] < SIZE - 1).all()


def test_eval_loaders_and_errors():
    dm = make_datamodule()
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and "joints3d" in batch
    assert next(iter(dm.test_dataloader()))["image"].shape[0] == 4
    with pytest.raises(ValueError, match="unlabeled_fraction"):
        make_datamodule(unlabeled_fraction=1.5)
    with pytest.raises(ValueError, match="no unlabeled dataset"):
        SemiSupervisedDataModule(
            labeled=[FakeHands(4)], unlabeled=None, val=[FakeHands(2)], unlabeled_fraction=0.5
        )
    with pytest.raises(ValueError, match="num_perturbations"):
        make_datamodule(num_perturbations=0)


def test_the_generic_data_module_with_semihand_views_is_the_earlier_one():
    from handssl.data import HandDataModule, SemiHandViews

    datasets = dict(
        unlabeled=[FakeHands(8, seed=2, style="real")],
        val=[FakeHands(4, seed=3, style="real")],
        test=[FakeHands(4, seed=4, style="real")],
    )
    views = SemiHandViews(unlabeled_fraction=0.25, augment_on="batch")
    new = HandDataModule(train=[FakeHands(12, seed=1)], views=views, batch_size=8, **datasets)
    old = make_datamodule(augment_on="batch", **datasets)
    for (new_batch, *_), (old_batch, *_) in zip(new.train_dataloader(), old.train_dataloader()):
        torch.manual_seed(0)
        a = new.on_after_batch_transfer(new_batch, 0)
        torch.manual_seed(0)
        b = old.on_after_batch_transfer(old_batch, 0)
        assert a.keys() == b.keys() == {"labeled", "unlabeled"}
        for part in a:
            assert a[part]["meta"] == b[part]["meta"]
            for key, value in a[part].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, b[part][key]), (part, key)
    assert new.num_unlabeled == old.num_unlabeled == 8
    assert len(new.pseudo_label_dataloader(0, 2).dataset) == len(old.pseudo_label_dataloader(0, 2).dataset)
