"""Mixed precision (``bf16-mixed``), ``channels_last`` and ``torch.compile`` for the three tasks, on CPU."""

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from handssl.models import NVSModule, SemiHandModule, SupervisedModule
from handssl.models.base import to_float
from handssl.models.options import Optimization, PseudoLabelOptions

sys.path.insert(0, str(Path(__file__).parent))
from conftest import quiet_trainer
from test_nvs_module import TINY as NVS_TINY
from test_nvs_module import datamodule as nvs_datamodule
from test_semi_datamodule import make_datamodule as semi_datamodule

TASKS = ("supervised", "nvs", "semihand")
CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"


class FakeSupervised(torch.utils.data.Dataset):
    """Noise images with seeded camera-frame joints and their projection (supervised batches)."""

    def __init__(self, length: int = 16, size: int = 32) -> None:
        self.length, self.size = length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        joints3d = torch.randn(21, 3, generator=g) * 30 + torch.tensor([0.0, 0.0, 500.0])
        joints2d = joints3d[:, :2] / joints3d[:, 2:] * 60.0 + self.size / 2
        return {
            "image": torch.rand(3, self.size, self.size, generator=g),
            "joints3d": joints3d,
            "joints2d": joints2d,
            "K": torch.tensor([[60.0, 0, self.size / 2], [0, 60.0, self.size / 2], [0, 0, 1]]),
            "valid": torch.ones(21, dtype=torch.bool),
        }


class SupervisedFakeData(pl.LightningDataModule):
    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(FakeSupervised(16), batch_size=4)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(FakeSupervised(4), batch_size=4)


def make_task(task: str, **kwargs) -> pl.LightningModule:
    if task == "supervised":
        options = dict(
            backbone_widths=(8, 16, 16, 32),
            head_hidden=(32,),
            optimizer=Optimization(lr=2e-3, scheduler="none"),
            dropout=0.0,
        )
        return SupervisedModule(**{**options, **kwargs})
    if task == "nvs":
        decoder = {**NVS_TINY["decoder"], "dropout": 0.0}
        pose_head = {**NVS_TINY["pose_head"], "dropout": 0.0}
        return NVSModule(regime="semi", **{**NVS_TINY, "decoder": decoder, "pose_head": pose_head, **kwargs})
    # The real biomechanical correction (SVD and det inside) and every loss term on.
    options = dict(
        backbone_widths=(8, 16, 32),
        backbone_blocks=(1, 1, 1),
        decoder_channels=16,
        optimizer=Optimization(warmup_steps=0),
    )
    return SemiHandModule(
        **{**options, "pseudo_labels": PseudoLabelOptions(threshold=float("inf")), **kwargs}
    )


def make_data(task: str) -> pl.LightningDataModule:
    if task == "supervised":
        return SupervisedFakeData()
    if task == "nvs":
        return nvs_datamodule(0.5)
    return semi_datamodule()


def first_batch(task: str, module: pl.LightningModule) -> dict:
    data = make_data(task)
    data.setup("fit")
    if task == "nvs":  # the pose head's statistics come from the DataModule in setup
        mean, std = data.pose_statistics()
        module.pose_head.set_statistics(mean, std)
    batch = next(iter(data.train_dataloader()))
    return batch[0] if isinstance(batch, tuple) else batch


def step_losses(module: pl.LightningModule, batch: dict, autocast: bool) -> dict[str, torch.Tensor]:
    """The logged loss terms of one training step (same random draws every call)."""
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, torch.as_tensor(value).detach())
    module.train()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = module.training_step(batch, 0)
    logged["train/loss"] = loss.detach()
    return logged


def trainer(**kwargs) -> pl.Trainer:
    return quiet_trainer(**{"max_steps": 2, "num_sanity_val_steps": 0, "limit_val_batches": 1, **kwargs})


# ------------------------------------------------------------------------------------------ mixed precision
@pytest.mark.parametrize("task", TASKS)
def test_bf16_mixed_fit_and_validate_every_task(task):
    module = make_task(task)
    before = {k: v.clone() for k, v in module.state_dict().items() if v.is_floating_point()}
    run = trainer(precision="bf16-mixed")
    data = make_data(task)
    run.fit(module, datamodule=data)
    assert run.global_step == 2
    loss = run.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and loss > 0
    after = module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())  # master weights
    metrics = run.validate(module, datamodule=data, verbose=False)[0]
    if task != "nvs" or module.stage != 1:
        assert torch.isfinite(torch.tensor(metrics["val/pa_mpjpe"]))


@pytest.mark.parametrize("task", TASKS)
def test_bf16_losses_match_float32_and_outputs_stay_float32(task):
    module = make_task(task)
    batch = first_batch(task, module)
    full = step_losses(module, batch, autocast=False)
    mixed = step_losses(module, batch, autocast=True)
    assert mixed.keys() == full.keys()
    for name, value in full.items():
        assert mixed[name].dtype == torch.float32, name
        if name.startswith("train/pl_") or name == "train/accept_rate":
            continue  # pseudo-label statistics gate on thresholds; the losses themselves are compared
        assert torch.allclose(mixed[name], value, rtol=0.02, atol=1e-3), (name, mixed[name], value)
    # The network outputs the losses see are float32 under autocast (soft-argmax, joints, images).
    image = batch["labeled"]["image"] if task == "semihand" else batch["image"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        if task == "supervised":
            outputs = module(image)
        elif task == "nvs":
            outputs = (module.predict_pose(image), module.synthesize(image, batch["R_ij"]))
        else:
            outputs = tuple(module(image).values())
    assert all(out.dtype == torch.float32 for out in outputs)


def test_to_float_casts_nested_half_tensors_only():
    value = {"a": torch.ones(2, dtype=torch.bfloat16), "b": [torch.ones(1, dtype=torch.float16)]}
    value["c"] = (torch.ones(1, dtype=torch.long), torch.ones(1, dtype=torch.float64), "text")
    out = to_float(value)
    assert out["a"].dtype == torch.float32 and out["b"][0].dtype == torch.float32
    assert out["c"][0].dtype == torch.long and out["c"][1].dtype == torch.float64 and out["c"][2] == "text"


# ------------------------------------------------------------------------------------------- channels_last
def conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.ndim == 4 and p.shape[-1] > 1]


@pytest.mark.parametrize("task", TASKS)
def test_channels_last_gives_the_same_step_and_stays_channels_last(task):
    plain = make_task(task)
    fast = make_task(task, channels_last=True)
    fast.load_state_dict(plain.state_dict())  # copies into the channels_last tensors, keeping their format
    weights = conv_weights(fast)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(plain))
    batch = first_batch(task, plain)
    first_batch(task, fast)  # same pose statistics
    expected, got = step_losses(plain, batch, False), step_losses(fast, batch, False)
    for name, value in expected.items():
        assert torch.allclose(got[name], value, rtol=1e-4, atol=1e-5), (name, got[name], value)
    trainer().fit(fast, datamodule=make_data(task))  # the optimiser keeps the format
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(fast))
    # A channels_last checkpoint loads into a plain model.
    plain.load_state_dict(fast.state_dict())


# ------------------------------------------------------------------------------------------------ compile
@pytest.mark.parametrize("task", TASKS)
def test_compile_keeps_state_dict_keys_and_the_step(task):
    torch._dynamo.reset()
    plain = make_task(task)
    compiled = make_task(task, compile=True, compile_backend="aot_eager")
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay interchangeable
    compiled.load_state_dict(plain.state_dict())
    targets = compiled.compile_targets()
    assert targets and all(m._compiled_call_impl is not None for m in targets)
    batch = first_batch(task, plain)
    first_batch(task, compiled)
    expected = step_losses(plain, batch, False)
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got = step_losses(compiled, batch, False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before  # dynamo really traced
    for name, value in expected.items():
        assert torch.allclose(got[name], value, rtol=1e-4, atol=1e-5), (name, got[name], value)


def test_compile_backend_is_checked():
    with pytest.raises(ValueError, match="compile_backend must be one of"):
        make_task("supervised", compile=True, compile_backend="tensorrt")


@pytest.mark.slow
def test_compile_with_inductor_trains_on_cpu():
    torch._dynamo.reset()
    module = make_task("supervised", compile=True)
    run = trainer(max_steps=3, limit_val_batches=0)
    run.fit(module, datamodule=make_data("supervised"))
    assert torch.isfinite(run.callback_metrics["train/loss"])


# ----------------------------------------------------------------------------------------------------- CLI
def test_cli_bf16_channels_last(tmp_path):
    from handssl.cli import main

    main(
        [
            "fit",
            "-c",
            str(CONF),
            "--trainer.precision",
            "bf16-mixed",
            "--model.init_args.channels_last",
            "true",
            "--runs_dir",
            str(tmp_path / "runs"),
            "--wandb",
            "disabled",
        ]
    )
    config = (tmp_path / "runs" / "supervised_tiny" / "version_0" / "config.yaml").read_text()
    assert "precision: bf16-mixed" in config and "channels_last: true" in config
