"""SynthHands rendered in the training step (``render_on="device"``) equals the DataLoader workers' rendering.

On a CPU-only machine the "device" is the CPU: the same batched render path, run in
``on_after_batch_transfer`` instead of in the DataLoader, must give the same batch (pixels, geometry, labels,
meta) as the cached worker path.
"""

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer

from handssl.data import (
    MultiViewDataModule,
    SemiSupervisedDataModule,
    SupervisedDataModule,
    SynthHands,
    SynthHandsMultiView,
    SynthHandsWorld,
)
from handssl.data.synthhands.deferred import RENDER_REQUEST, decode_keys, encode_key
from handssl.models import SupervisedModule
from handssl.models.options import Optimization

SIZE = 32


def single_view(style: str = "real") -> SynthHands:
    return SynthHands(
        "train",
        world=SynthHandsWorld(style=style, image_size=SIZE),
        num_subjects=2,
        sequences_per_subject=1,
        frames_per_sequence=8,
    )


def multi_view(style: str = "real_object") -> SynthHandsMultiView:
    return SynthHandsMultiView(
        "train",
        world=SynthHandsWorld(style=style, image_size=SIZE),
        num_subjects=2,
        sequences_per_subject=2,
        frames_per_sequence=4,
    )


def assert_same_batch(device_batch: dict, worker_batch: dict) -> None:
    assert device_batch.keys() == worker_batch.keys()
    for key, expected in worker_batch.items():
        got = device_batch[key]
        if key == "meta":
            assert got == expected
            continue
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, equal_nan=True, msg=key)


def first_batches(make_datamodule) -> tuple[dict, dict, dict]:
    """(requests, the device-rendered batch, the workers' batch) of the first training batch."""
    workers = make_datamodule("workers")
    deferred = make_datamodule("device")
    requests = next(iter(deferred.train_dataloader()))
    rendered = deferred.on_after_batch_transfer(requests, 0)
    return requests, rendered, next(iter(workers.train_dataloader()))


def test_supervised_device_rendering_equals_the_workers():
    def make(render_on: str) -> SupervisedDataModule:
        return SupervisedDataModule(train=single_view(), image_size=SIZE, batch_size=6, render_on=render_on)

    requests, rendered, expected = first_batches(make)
    assert list(requests) == [RENDER_REQUEST] and requests[RENDER_REQUEST].shape == (6, 4)
    assert_same_batch(rendered, expected)
    assert rendered["image"].std() > 0.05  # real pixels, not an empty frame
    assert rendered["mask"].sum() > 0


def test_multiview_device_rendering_equals_the_workers():
    def make(render_on: str) -> MultiViewDataModule:
        return MultiViewDataModule(
            train=multi_view(), labeled_subjects=1, labeled_share=0.5, batch_size=4, render_on=render_on
        )

    requests, rendered, expected = first_batches(make)
    keys = decode_keys(requests[RENDER_REQUEST])
    assert all(isinstance(k, tuple) and len(k) == 3 for k in keys)  # (index, labels visible, epoch)
    assert_same_batch(rendered, expected)
    assert rendered["labeled"].sum() == 2 and torch.isnan(rendered["joints3d"][~rendered["labeled"]]).all()
    assert not torch.equal(rendered["image"], rendered["target"])  # two cameras


def make_semi(render_on: str, labeled=None) -> SemiSupervisedDataModule:
    return SemiSupervisedDataModule(
        labeled=[labeled if labeled is not None else single_view("synthetic")],
        unlabeled=[single_view("real"), single_view("real_object")],  # a concatenation: both re-targeted
        image_size=SIZE,
        batch_size=6,
        render_on=render_on,
    )


def test_semi_device_rendering_equals_the_workers():
    # Augmentation seeds come from torch's generator in the main process: the same draws on both paths.
    torch.manual_seed(0)
    expected, _, _ = next(iter(make_semi("workers").train_dataloader()))
    deferred = make_semi("device")
    requests, _, _ = next(iter(deferred.train_dataloader()))
    assert {part: list(batch) for part, batch in requests.items()} == {
        "labeled": [RENDER_REQUEST],
        "unlabeled": [RENDER_REQUEST],
    }
    torch.manual_seed(0)
    rendered = deferred.on_after_batch_transfer(requests, 0)
    assert rendered.keys() == expected.keys()
    for part in expected:
        assert_same_batch(rendered[part], expected[part])
    assert rendered["labeled"]["image"].std() > 0.05 and rendered["unlabeled"]["image_perturbed"].std() > 0.05
    assert rendered["labeled"]["has_mask"].all()


def test_semi_device_rendering_keeps_other_datasets_in_the_workers():
    class NotSynthHands(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int) -> dict:
            return single_view("synthetic")[index]

    data = make_semi("device", labeled=NotSynthHands())
    batch, _, _ = next(iter(data.train_dataloader()))
    assert "image" in batch["labeled"] and list(batch["unlabeled"]) == [RENDER_REQUEST]
    rendered = data.on_after_batch_transfer(batch, 0)
    assert rendered["labeled"] is batch["labeled"] and "image_perturbed" in rendered["unlabeled"]

    only_other = SemiSupervisedDataModule(
        labeled=[NotSynthHands()], unlabeled=[NotSynthHands()], image_size=SIZE, render_on="device"
    )
    with pytest.raises(ValueError, match="no training set holds SynthHands"):
        only_other.train_dataloader()


def test_request_keys_round_trip():
    keys = [7, (3, 1, 2), (5, 0), (0,)]
    assert decode_keys(torch.stack([encode_key(k) for k in keys])) == keys
    with pytest.raises(ValueError, match="at most 3 ints"):
        encode_key((1, 2, 3, 4))


def test_fit_with_device_rendering_gives_the_same_weights():
    def fit(render_on: str) -> dict:
        pl.seed_everything(0, verbose=False)
        module = SupervisedModule(
            backbone_widths=(8, 8, 16, 16),
            head_hidden=(16,),
            optimizer=Optimization(lr=2e-3, scheduler="none"),
        )
        data = SupervisedDataModule(
            train=single_view("synthetic"), image_size=SIZE, batch_size=4, render_on=render_on
        )
        trainer = quiet_trainer(max_steps=3)
        trainer.fit(module, datamodule=data)
        return module.state_dict()

    device, workers = fit("device"), fit("workers")
    for name, value in workers.items():
        torch.testing.assert_close(device[name], value, rtol=0, atol=0, msg=name)


def test_bad_render_on_is_one_clear_error():
    with pytest.raises(ValueError, match="render_on must be one of"):
        SupervisedDataModule(train=single_view(), image_size=SIZE, render_on="gpu")
    with pytest.raises(ValueError, match="render_on must be one of"):
        MultiViewDataModule(train=multi_view(), labeled_subjects=1, render_on="cuda")
    with pytest.raises(ValueError, match="render_on must be one of"):
        SemiSupervisedDataModule(image_size=SIZE, render_on="gpu")

    class NotSynthHands(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> dict:
            return {"image": torch.zeros(3, SIZE, SIZE)}

    data = SupervisedDataModule(train=NotSynthHands(), image_size=SIZE, batch_size=2, render_on="device")
    with pytest.raises(ValueError, match="no SynthHands inside; use render_on='workers'"):
        data.train_dataloader()
