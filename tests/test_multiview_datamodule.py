from collections import Counter

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer
from lightning_fabric.utilities.data import _replace_dunder_methods
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from handssl.data.multiview import (
    LabeledShareBatchSampler,
    MultiViewDataModule,
    MultiViewPairs,
    labeled_subset,
)
from handssl.geometry import rotation_about_axis


class FakeMultiView(Dataset):
    """Tiny stand-in with SynthHandsMultiView's keys: two cameras turned about y, noise images.

    View v of item i sits at ``angle = 0.3 * i + 0.7 * v`` rad; joints are seeded per item.
    """

    def __init__(self, length: int = 24, image_size: int = 32, num_views: int = 2) -> None:
        self.length = length
        self.image_size = image_size
        self.num_views = num_views

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def angle(index: int, view: int) -> float:
        return 0.3 * index + 0.7 * view

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        g = torch.Generator().manual_seed(index)
        views, size = self.num_views, self.image_size
        world = torch.randn(21, 3, generator=g) * 40
        R = torch.stack([rotation_about_axis("y", self.angle(index, v)) for v in range(views)])
        t = torch.tensor([0.0, 0.0, 500.0]).expand(views, 3).clone()
        joints3d = world @ R.transpose(-1, -2) + t[:, None]
        K = torch.tensor([[100.0, 0, size / 2], [0, 100.0, size / 2], [0, 0, 1]]).expand(views, 3, 3).clone()
        joints2d = joints3d[..., :2] / joints3d[..., 2:] * 100.0 + size / 2
        return {
            "image": torch.rand(views, 3, size, size, generator=g),
            "background": torch.full((views, 3, size, size), 0.0) + torch.arange(views).view(views, 1, 1, 1),
            "image_t2": torch.rand(views, 3, size, size, generator=g),
            "mask": torch.zeros(views, 1, size, size),
            "joints3d": joints3d,
            "joints2d": joints2d,
            "K": K,
            "R": R,
            "t": t,
            "valid": torch.ones(views, 21, dtype=torch.bool),
            "joints3d_world": world,
            "meta": {"dataset": "fake", "subject": 0, "sequence": 0, "frame": index, "cameras": [0, 1]},
        }


def fake_datamodule(**kwargs) -> MultiViewDataModule:
    options = {"batch_size": 8, "label_fraction": 0.25, "labeled_share": 0.25}
    options.update(kwargs)
    return MultiViewDataModule(
        train=FakeMultiView(24), val=FakeMultiView(8), test=FakeMultiView(8), **options
    )


def test_labeled_subset_is_deterministic_and_sized():
    a = labeled_subset(1000, label_fraction=0.05, seed=3)
    assert len(a) == 50 and torch.equal(a, labeled_subset(1000, label_fraction=0.05, seed=3))
    assert torch.equal(a, a.sort().values) and len(a.unique()) == 50
    assert not torch.equal(a, labeled_subset(1000, label_fraction=0.05, seed=4))
    assert len(labeled_subset(1000, label_fraction=0.0001)) == 1  # a positive fraction keeps one item
    assert len(labeled_subset(1000, label_fraction=0.0)) == 0
    assert len(labeled_subset(1000, num_labeled=7)) == 7
    assert torch.equal(labeled_subset(10, label_fraction=1.0), torch.arange(10))
    with pytest.raises(ValueError, match="exactly one"):
        labeled_subset(10, label_fraction=0.5, num_labeled=3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        labeled_subset(10, label_fraction=1.5)
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        labeled_subset(10, num_labeled=11)


def test_pairs_hold_the_right_views_and_rotation():
    data = FakeMultiView(6)
    pairs = MultiViewPairs(data, labeled=[2])
    item = pairs[2]
    raw = data[2]
    assert torch.equal(item["image"], raw["image"][0]) and torch.equal(item["target"], raw["image"][1])
    assert torch.equal(item["background"], raw["background"][1])  # target camera's background
    assert torch.equal(item["background_input"], raw["background"][0])
    assert torch.equal(item["image_t2"], raw["image_t2"][0])
    # both cameras turn about y, so R_ij is the turn by the angle difference (0.7 rad)
    assert torch.allclose(item["R_ij"], rotation_about_axis("y", 0.7), atol=1e-6)
    # R_ij maps view i's camera-frame joints to view j's (both share the translation here)
    t = torch.tensor([0.0, 0.0, 500.0])
    moved = (raw["joints3d"][0] - t) @ item["R_ij"].T + t
    assert torch.allclose(moved, raw["joints3d"][1], atol=1e-3)
    assert bool(item["labeled"]) and torch.equal(item["joints3d"], raw["joints3d"][0])
    assert item["valid"].all()


def test_items_of_more_views_keep_the_pair_and_add_the_others_as_hull_views():
    data = FakeMultiView(6, num_views=4)
    pairs = MultiViewPairs(data)
    two = MultiViewPairs(FakeMultiView(6))[2]
    item, raw = pairs[2], data[2]
    assert {k for k in two if k != "meta"} < {k for k in item if k != "meta"}  # the pair is unchanged
    assert torch.equal(item["image"], two["image"]) and torch.equal(item["R_ij"], two["R_ij"])
    assert torch.equal(item["hull_images"], raw["image"][2:])
    assert torch.equal(item["hull_backgrounds"], raw["background"][2:])
    for k, view in enumerate(
        (2, 3)
    ):  # view v turns 0.7 v rad about y: i (view 0) -> v is 0.7 v, j (1) -> v is 0.7 (v - 1)
        assert torch.allclose(item["R_i_hull"][k], rotation_about_axis("y", 0.7 * view), atol=1e-6)
        assert torch.allclose(item["R_j_hull"][k], rotation_about_axis("y", 0.7 * (view - 1)), atol=1e-6)
    odd = pairs[3]  # i and j swap on odd items; the further views stay 2 and 3
    assert torch.allclose(odd["R_i_hull"][0], rotation_about_axis("y", 0.7), atol=1e-6)
    assert "hull_images" not in two


def test_nvs_pairs_take_more_views_for_one_split():
    from handssl.data import NVSPairs

    class SingleView(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> dict:
            raise AssertionError("the check reads no item")

        def multi_view(self, **arguments) -> dict:
            return arguments  # type: ignore[return-value]

    views = NVSPairs(multi_view_arguments={"train": {"num_views": 4}})
    assert views.multi_view_form("train", SingleView(), 32) == {"num_views": 4, "image_size": 32}
    assert views.multi_view_form("val", SingleView(), 32) == {"num_views": 2, "image_size": 32}
    with pytest.raises(
        ValueError, match=r"^multi_view_arguments\.train\.num_views must be >= 2 \(a pair\), got 1$"
    ):
        NVSPairs(multi_view_arguments={"train": {"num_views": 1}}).multi_view_form("train", SingleView(), 32)


def test_odd_items_synthesise_the_other_direction():
    data = FakeMultiView(6)
    item, raw = MultiViewPairs(data)[3], data[3]
    assert torch.equal(item["image"], raw["image"][1]) and torch.equal(item["target"], raw["image"][0])
    assert torch.equal(item["background"], raw["background"][0])
    assert torch.equal(item["joints3d"], raw["joints3d"][1])
    assert torch.allclose(item["R_ij"], rotation_about_axis("y", -0.7), atol=1e-6)


def test_pairs_hide_labels_outside_the_labeled_subset():
    pairs = MultiViewPairs(FakeMultiView(6), labeled=[2])
    hidden = pairs[3]
    assert not bool(hidden["labeled"]) and not hidden["valid"].any()
    assert torch.isnan(hidden["joints3d"]).all() and torch.isnan(hidden["joints2d"]).all()
    # a labeled item drawn into an unlabeled slot shows no labels either
    assert not bool(pairs[(2, False)]["labeled"]) and torch.isnan(pairs[(2, False)]["joints3d"]).all()
    assert bool(pairs[(2, True)]["labeled"])
    with pytest.raises(IndexError, match="not in the labeled subset"):
        pairs[(3, True)]
    assert bool(MultiViewPairs(FakeMultiView(6))[4]["labeled"])  # no subset: everything labeled


def test_pairs_reject_single_view_and_missing_keys():
    with pytest.raises(ValueError, match="pairs need 2"):
        MultiViewPairs(FakeMultiView(2, num_views=1))[0]

    class NoBackground(FakeMultiView):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            del item["background"]
            return item

    with pytest.raises(KeyError, match="background"):
        MultiViewPairs(NoBackground(2))[0]


def test_batch_sampler_gives_the_configured_labeled_share_and_oversamples():
    labeled = [3, 11, 17]
    sampler = LabeledShareBatchSampler(
        list(range(40)), batch_size=8, drop_last=True, labeled_indices=labeled, labeled_per_batch=2, seed=1
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == 40 // 6
    for batch in batches:
        assert len(batch) == 8
        slots = [visible for _, visible, _ in batch]
        assert slots.count(True) == 2
        assert all(index in labeled for index, visible, _ in batch if visible)
    stream = [index for batch in batches for index, visible, _ in batch if not visible]
    assert stream == list(range(36))  # unlabeled slots walk the stream in order, each item once
    counts = Counter(index for batch in batches for index, visible, _ in batch if visible)
    assert set(counts) == set(labeled)
    assert max(counts.values()) - min(counts.values()) <= 1  # reshuffled cycles: balanced oversampling


def test_batch_sampler_all_labeled_and_no_labeled():
    full = LabeledShareBatchSampler(list(range(20)), 4, True, labeled_indices=[1, 2], labeled_per_batch=4)
    batches = list(full)
    assert len(batches) == len(full) == 5
    assert all(visible and index in (1, 2) for b in batches for index, visible, _ in b)
    none = LabeledShareBatchSampler(list(range(10)), 4, False, labeled_indices=[], labeled_per_batch=0)
    batches = list(none)
    assert len(batches) == len(none) == 3 and len(batches[-1]) == 2
    assert not any(visible for b in batches for _, visible, _ in b)
    with pytest.raises(ValueError, match="non-empty labeled subset"):
        LabeledShareBatchSampler(list(range(10)), 4, True, labeled_indices=[], labeled_per_batch=1)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        LabeledShareBatchSampler(list(range(10)), 4, True, labeled_indices=[1], labeled_per_batch=5)


def test_batch_sampler_shards_like_ddp():
    labeled = list(range(0, 48, 8))
    epochs = {}
    for rank in (0, 1):
        shard = DistributedSampler(range(48), num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler = LabeledShareBatchSampler(
            shard, 8, True, labeled_indices=labeled, labeled_per_batch=4, seed=0
        )
        epochs[rank] = list(sampler)
        assert all(sum(v for _, v, _ in b) == 4 for b in epochs[rank])
    unlabeled = [{i for b in epochs[r] for i, v, _ in b if not v} for r in (0, 1)]
    assert not unlabeled[0] & unlabeled[1] and len(unlabeled[0] | unlabeled[1]) == 48
    draws = [[i for b in epochs[r] for i, v, _ in b if v] for r in (0, 1)]
    assert draws[0] != draws[1]  # each rank draws its own labeled order


def test_lightning_can_inject_a_distributed_sampler():
    dm = fake_datamodule()
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    shard = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=True)
    new = _update_dataloader(loader, shard)
    assert isinstance(new.batch_sampler, LabeledShareBatchSampler)
    assert new.batch_sampler.sampler is shard and new.batch_sampler.labeled_per_batch == 2
    batch = next(iter(new))
    assert int(batch["labeled"].sum()) == 2


def test_datamodule_batches_and_statistics():
    dm = fake_datamodule()
    assert torch.equal(dm.labeled_indices, labeled_subset(24, label_fraction=0.25, seed=0))
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 24 // 6
    for batch in batches:
        assert batch["image"].shape == (8, 3, 32, 32) and batch["R_ij"].shape == (8, 3, 3)
        assert int(batch["labeled"].sum()) == 2
        assert torch.isnan(batch["joints3d"][~batch["labeled"]]).all()
    val = next(iter(dm.val_dataloader()))
    assert val["labeled"].all() and val["valid"].all()

    mean, std = dm.pose_statistics()
    joints = torch.cat([FakeMultiView(24)[i]["joints3d"] for i in dm.labeled_indices.tolist()])
    rel = joints - joints[:, :1]
    assert torch.allclose(mean, rel.mean(0), atol=1e-3)
    assert torch.allclose(std, rel.std(0, unbiased=False), atol=1e-3)


def test_datamodule_argument_errors():
    with pytest.raises(ValueError, match="rounds to no labeled item"):
        fake_datamodule(labeled_share=0.01)
    with pytest.raises(ValueError, match="fully labeled"):
        fake_datamodule(labeled_share=0.99)
    with pytest.raises(ValueError, match=r"labeled_share must be in \[0, 1\]"):
        fake_datamodule(labeled_share=2.0)
    dm = fake_datamodule(label_fraction=0.0)
    with pytest.raises(ValueError, match="labeled subset is empty"):
        dm.train_dataloader()
    dm = MultiViewDataModule(train=FakeMultiView(4), labeled_share=0.0)
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match="no test dataset"):
        dm.test_dataloader()


class SubjectMultiView(FakeMultiView):
    """FakeMultiView whose items belong to ``length // 4`` subjects and vary by epoch."""

    epoch_items = True

    def item_subjects(self) -> list[int]:
        return [index // 4 for index in range(self.length)]

    def __getitem__(self, key):
        index, epoch = key
        item = super().__getitem__(index)
        item["image_t2"].fill_(epoch)  # so a test can see which epoch an item was made for
        return item


def test_labeled_subjects_label_whole_subjects_deterministically():
    dm = MultiViewDataModule(train=SubjectMultiView(24), labeled_subjects=2, labeled_share=0.25, batch_size=8)
    labeled = dm.labeled_indices.tolist()
    subjects = {index // 4 for index in labeled}
    assert len(subjects) == 2 and labeled == sorted(i for i in range(24) if i // 4 in subjects)
    again = MultiViewDataModule(
        train=SubjectMultiView(24), labeled_subjects=2, labeled_share=0.25, batch_size=8
    )
    assert again.labeled_indices.tolist() == labeled
    other = MultiViewDataModule(
        train=SubjectMultiView(24), labeled_subjects=2, labeled_share=0.25, batch_size=8, seed=5
    )
    assert {i // 4 for i in other.labeled_indices.tolist()} != subjects or len(subjects) == 6
    with pytest.raises(ValueError, match=r"labeled_subjects must be in \[0, 6\]"):
        MultiViewDataModule(train=SubjectMultiView(24), labeled_subjects=7, batch_size=8).labeled_indices
    with pytest.raises(ValueError, match="item_subjects"):
        MultiViewDataModule(train=FakeMultiView(24), labeled_subjects=1, batch_size=8).labeled_indices


def test_training_keys_carry_the_epoch_to_epoch_dependent_datasets():
    dm = MultiViewDataModule(train=SubjectMultiView(24), labeled_subjects=2, labeled_share=0.25, batch_size=8)
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(3)
    batch = next(iter(loader))
    assert (batch["image_t2"] == 3).all()
    assert {epoch for _, _, epoch in next(iter(loader.batch_sampler))} == {3}
    pairs = MultiViewPairs(SubjectMultiView(8))
    assert (pairs[(2, True, 4)]["image_t2"] == 4).all() and (pairs[2]["image_t2"] == 0).all()


class T2FakeMultiView(FakeMultiView):
    """FakeMultiView whose appearance images carry joints (``joints3d_t2``), as SynthHandsMultiView's do."""

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["joints3d_t2"] = item["joints3d"] * 2.0
        return item


@pytest.mark.parametrize("index", [2, 3])
def test_pairs_carry_the_second_direction_and_the_appearance_labels(index):
    item = T2FakeMultiView(8)[index]
    i, j = (0, 1) if index % 2 == 0 else (1, 0)
    pairs = MultiViewPairs(T2FakeMultiView(8), labeled=[index])
    pair = pairs[index]
    assert torch.equal(pair["image_t2_j"], item["image_t2"][j])
    assert torch.equal(pair["joints3d_j"], item["joints3d"][j]) and pair["valid_j"].all()
    assert torch.equal(pair["joints3d_t2"], item["joints3d_t2"][i])
    assert torch.equal(pair["joints3d_t2_j"], item["joints3d_t2"][j])
    assert torch.equal(pair["input_mask"], item["mask"][i])
    hidden = pairs[(index + 1) % 8]  # not labeled: every label of every view hidden
    for key in ("joints3d", "joints3d_j", "joints3d_t2", "joints3d_t2_j"):
        assert torch.isnan(hidden[key]).all(), key
    assert not hidden["valid_j"].any()
    assert "joints3d_t2" not in MultiViewPairs(FakeMultiView(4))[0]  # only when the dataset has them


def test_data_layer_imports_nothing_from_models():
    import subprocess
    import sys

    code = (
        "import sys, handssl.data.multiview as m, handssl.data.semi, handssl.data.views; "
        "bad = sorted(n for n in sys.modules if n.startswith('handssl.models')); "
        "assert not bad, bad; print(m.pose_statistics.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "handssl.data.views.nvs"


class _MultiViewRecorder(pl.LightningModule):
    """Records a fingerprint of every training batch (items, labelled slots) and one global-RNG draw."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, tuple] = {}

    def training_step(self, batch, batch_idx):
        frames = tuple(int(f) for f in batch["meta"]["frame"]) if "meta" in batch else ()
        self.seen[self.global_step] = (
            float(batch["image"].double().sum()),
            tuple(batch["labeled"].tolist()),
            frames,
            torch.rand(()).item(),
        )
        return (self.w - 1) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _multiview_run(tmp_path, name, ckpt_path=None):
    pl.seed_everything(0)
    model = _MultiViewRecorder()
    trainer = quiet_trainer(
        max_steps=8,
        devices=1,
        limit_val_batches=0,
        callbacks=[
            ModelCheckpoint(dirpath=tmp_path / name, every_n_train_steps=2, save_top_k=-1, filename="{step}")
        ],
        enable_checkpointing=True,
    )
    # 24 items, 6 unlabelled + 2 labelled a batch: 4 batches an epoch.
    trainer.fit(model, datamodule=fake_datamodule(), ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("step", [2, 4, 6], ids=["mid-epoch-0", "end-of-epoch-0", "mid-epoch-1"])
def test_mid_epoch_resume_sees_the_same_batches(tmp_path, recwarn, step):
    straight = _multiview_run(tmp_path, "straight")
    assert sorted(straight.seen) == list(range(8))
    assert straight.seen[0][2] != straight.seen[4][2]  # the epochs' orders differ
    ckpt = tmp_path / "straight" / f"step={step}.ckpt"
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert [(s["epoch"], s["batches"]) for s in state] == [{2: (0, 2), 4: (0, 4), 6: (1, 2)}[step]]
    resumed = _multiview_run(tmp_path, "resumed", ckpt_path=ckpt)
    assert not [w for w in recwarn if "not resumable" in str(w.message)]
    assert sorted(resumed.seen) == list(range(step, 8))
    assert {k: straight.seen[k] for k in resumed.seen} == resumed.seen


def same_batch(a: dict, b: dict) -> bool:
    """Equal keys, ``meta`` and tensors (NaN where NaN)."""
    if a.keys() != b.keys() or a.get("meta") != b.get("meta"):
        return False
    tensors = [k for k in a if isinstance(a[k], torch.Tensor)]
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape for k in tensors) and all(
        torch.equal(a[k].nan_to_num(-1e9), b[k].nan_to_num(-1e9)) for k in tensors
    )


def test_the_generic_data_module_with_nvs_pairs_is_the_earlier_one():
    from handssl.data import HandDataModule, NVSPairs

    options = {"label_fraction": 0.25, "labeled_share": 0.25}
    datasets = {"train": FakeMultiView(24), "val": FakeMultiView(8), "test": FakeMultiView(8)}
    new = HandDataModule(**datasets, views=NVSPairs(**options), batch_size=8)
    old = MultiViewDataModule(**datasets, batch_size=8, **options)
    assert torch.equal(new.views.labeled_indices(new), old.labeled_indices)
    assert all(torch.equal(a, b) for a, b in zip(new.views.pose_statistics(new), old.pose_statistics()))
    pairs = list(zip(new.train_dataloader(), old.train_dataloader()))
    assert len(pairs) == 4 and all(same_batch(a, b) for a, b in pairs)  # 24 items, 6 unlabelled slots
    assert same_batch(next(iter(new.val_dataloader())), next(iter(old.val_dataloader())))


def test_nvs_pairs_refuse_single_view_data_in_one_line():
    from handssl.data import HandDataModule, NVSPairs

    class SingleView(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> dict:
            raise AssertionError("the check reads no item")

    with pytest.raises(
        ValueError,
        match=r"^NVSPairs reads multi-view items, but data.init_args.train is SingleView, which has no "
        r"multi-view form \(no multi_view\(\)\); use a dataset with one",
    ):
        HandDataModule(train=SingleView(), views=NVSPairs())
