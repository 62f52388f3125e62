from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer
from test_multiview_datamodule import FakeMultiView

from handssl.data.multiview import MultiViewDataModule
from handssl.models.nvs import NVSModule
from handssl.models.options import Optimization

TINY = {
    "image_size": 32,
    "num_points": 20,
    "appearance_dim": 8,
    "encoder": {"widths": (8, 16), "blocks": (1, 1)},
    "decoder": {"widths": (16, 8), "latent_channels": 8},
    "pose_head": {"hidden": (32, 32)},
    "optimizer": Optimization(lr=1e-2, weight_decay=0.0, scheduler="none"),
}

SHARE = {"supervised": 1.0, "pretrained1": 0.0, "pretrained2": 1.0, "semi": 0.5}


def tiny_module(regime: str, **kwargs) -> NVSModule:
    """A tiny NVSModule; a group given as a mapping changes only the keys it names of TINY's."""
    merged = dict(TINY)
    for key, value in kwargs.items():
        base = merged.get(key)
        merged[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
    return NVSModule(regime=regime, **merged)


def datamodule(share: float, batch_size: int = 4) -> MultiViewDataModule:
    return MultiViewDataModule(
        train=FakeMultiView(16),
        val=FakeMultiView(4),
        test=FakeMultiView(4),
        label_fraction=0.25,
        labeled_share=share,
        batch_size=batch_size,
    )


def fit(module: NVSModule, share: float, steps: int = 2) -> pl.Trainer:
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule(share))
    return trainer


def snapshot(module: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    return {} if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> dict[str, bool]:
    after = module.state_dict()
    return {k: not torch.equal(before[k], after[k]) for k in before}


def params_changed(before: dict, module: torch.nn.Module) -> bool:
    names = {n for n, _ in module.named_parameters()}
    flags = changed(before, module)
    return all(flags[n] for n in names)


def stage1_checkpoint(tmp_path) -> str:
    stage1 = tiny_module("pretrained", stage=1)
    fit(stage1, SHARE["pretrained1"])
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": stage1.state_dict()}, path)
    return str(path)


def test_supervised_trains_encoder_and_head_and_has_no_decoder():
    module = tiny_module("supervised")
    assert module.decoder is None and module.reconstruction is None
    enc, head = snapshot(module.encoder), snapshot(module.pose_head)
    trainer = fit(module, SHARE["supervised"])
    assert params_changed(enc, module.encoder) and params_changed(head, module.pose_head)
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.parameters()}  # encoder + head, nothing else exists
    with pytest.raises(RuntimeError, match="no decoder"):
        module.synthesize(torch.rand(1, 3, 32, 32), torch.eye(3))


def test_pretrained_stage1_trains_synthesis_only(tmp_path):
    module = tiny_module("pretrained", stage=1)
    enc, dec, head = snapshot(module.encoder), snapshot(module.decoder), snapshot(module.pose_head)
    fit(module, SHARE["pretrained1"])
    assert params_changed(enc, module.encoder) and params_changed(dec, module.decoder)
    assert not any(changed(head, module.pose_head).values())  # weights and BatchNorm statistics
    assert not bool(module.pose_head.has_statistics)
    assert module.monitor == "val/synthesis_l1"


def test_pretrained_stage2_freezes_encoder_and_decoder(tmp_path):
    path = stage1_checkpoint(tmp_path)
    stage1_state = torch.load(path)["state_dict"]
    module = tiny_module("pretrained", stage=2, pretrained_checkpoint=path)
    assert module.needs_stage1  # stage 1's file is read when a fit starts, not when the module is built
    head = snapshot(module.pose_head)
    trainer = fit(module, SHARE["pretrained2"], steps=3)
    for name, value in module.state_dict().items():
        if name.startswith(("encoder.", "decoder.")):  # loaded, then frozen: weights and BatchNorm statistics
            assert torch.equal(value, stage1_state[name]), name
    assert params_changed(head, module.pose_head)
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.pose_head.parameters()}
    module.train()
    assert not module.encoder.training and module.pose_head.training


def test_stage2_loads_and_fine_tunes_without_stage1s_file(tmp_path):
    path = stage1_checkpoint(tmp_path)
    module = tiny_module("pretrained", stage=2, pretrained_checkpoint=path)
    trainer = fit(module, SHARE["pretrained2"], steps=2)
    trainer.save_checkpoint(tmp_path / "stage2.ckpt")
    Path(path).unlink()  # its weights are all in stage 2's own checkpoint
    loaded = NVSModule.load_from_checkpoint(tmp_path / "stage2.ckpt", map_location="cpu")
    assert loaded.stage == 2 and not loaded.needs_stage1
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    tuned = tiny_module("pretrained", stage=2, pretrained_checkpoint=path)
    tuned.load_state_dict(module.state_dict())  # as fine-tuning shipped weights does
    fit(tuned, SHARE["pretrained2"], steps=1)  # stage 1's file, gone, is not read
    for key, value in module.encoder.state_dict().items():
        assert torch.equal(tuned.encoder.state_dict()[key], value), key


def test_semi_trains_everything():
    # every synthesis term on, so each is logged
    module = tiny_module("semi", synthesis={"structural": "ssim"})
    enc, dec, head = snapshot(module.encoder), snapshot(module.decoder), snapshot(module.pose_head)
    dm_share = SHARE["semi"]
    trainer = fit(module, dm_share)
    assert params_changed(enc, module.encoder) and params_changed(dec, module.decoder)
    assert params_changed(head, module.pose_head)
    assert trainer.callback_metrics["train/labeled_share"] == pytest.approx(0.5)
    for key in (
        "train/l1",
        "train/ssim",
        "train/foreground_l1",
        "train/silhouette",
        "train/synthesis",
        "train/pose",
        "train/loss",
    ):
        assert key in trainer.callback_metrics


def test_pose_statistics_come_from_the_datamodule():
    module = tiny_module("supervised")
    dm = datamodule(1.0)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    mean, std = dm.pose_statistics()
    assert torch.allclose(module.pose_head.mean, mean)
    assert torch.allclose(module.pose_head.std, std.clamp_min(1.0))


def test_regime_and_labeled_share_must_agree():
    with pytest.raises(ValueError, match=r"labeled_share: 1\.0"):
        fit(tiny_module("supervised"), 0.5, steps=1)
    with pytest.raises(ValueError, match=r"labeled_share: 0\.0"):
        fit(tiny_module("pretrained", stage=1), 0.5, steps=1)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="regime must be one of"):
        tiny_module("unsupervised")
    share = SHARE["pretrained2"]
    with pytest.raises(ValueError, match="set pretrained_checkpoint"):
        fit(tiny_module("pretrained", stage=2), share, steps=1)
    with pytest.raises(FileNotFoundError, match="pretrained_checkpoint not found"):
        fit(tiny_module("pretrained", stage=2, pretrained_checkpoint=str(tmp_path / "nope.ckpt")), share, 1)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": tiny_module("pretrained", num_points=10).state_dict()}, path)
    with pytest.raises(ValueError, match="does not match this model's architecture"):
        fit(tiny_module("pretrained", stage=2, pretrained_checkpoint=str(path)), share, steps=1)
    with pytest.raises(RuntimeError, match="no training statistics"):
        tiny_module("semi").predict_pose(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"^decoder\.mask_from_points .* set decoder\.splat too$"):
        tiny_module("pretrained", decoder={"mask_from_points": True})


class T2MultiView(FakeMultiView):
    """FakeMultiView whose appearance images carry joints (``joints3d_t2``), as SynthHandsMultiView's do."""

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["joints3d_t2"] = item["joints3d"].flip(1) * 0.9
        return item


def t2_datamodule(share: float, batch_size: int = 4) -> MultiViewDataModule:
    return MultiViewDataModule(
        train=T2MultiView(16),
        val=T2MultiView(4),
        test=T2MultiView(4),
        label_fraction=0.25,
        labeled_share=share,
        batch_size=batch_size,
    )


@pytest.mark.parametrize("swap", [0.0, 1.0])
def test_training_rows_use_both_views_both_directions_and_leak_free_appearance(swap):
    module = tiny_module("semi", pairs={"swap_probability": swap}, decoder={"dropout": 0.0}).eval()
    batch = next(iter(t2_datamodule(0.5).train_dataloader()))
    size = batch["image"].shape[0]
    with torch.no_grad():
        encoded = module._encode_training(batch, pose=True)
        rows = module.synthesis_rows(batch, encoded)
        points_i, _ = module.encoder(batch["image"])
        points_j, _ = module.encoder(batch["target"])
        _, app_t2 = module.encoder(batch["image_t2"])
        _, app_t2_j = module.encoder(batch["image_t2_j"])
    assert set(encoded) == {"i", "j", "t2", "t2_j"}  # one pass over all four images (Rhodin's rows)
    assert rows["points"].shape[0] == 2 * size  # both directions rendered
    for k in range(2 * size):  # every appearance comes from one of the pair's t' images
        a = rows["appearance"][k]
        assert torch.allclose(a, app_t2[k % size], atol=1e-4) or torch.allclose(
            a, app_t2_j[k % size], atol=1e-4
        )
    R = batch["R_ij"]
    first, second = slice(0, size), slice(size, 2 * size)
    if swap:
        assert torch.equal(rows["target"][first], batch["target"])
        assert torch.equal(rows["background"][first], batch["background"])
        assert torch.allclose(rows["points"][first], points_i @ R.transpose(-1, -2), atol=1e-4)
        assert torch.equal(rows["target"][second], batch["image"])  # j -> i
        assert torch.equal(rows["background"][second], batch["background_input"])
        assert torch.allclose(rows["points"][second], points_j @ R, atol=1e-4)  # R_ji = R_ij^T
    else:
        assert torch.equal(rows["target"][first], batch["image"])
        assert torch.equal(rows["background"][first], batch["background_input"])
        assert torch.allclose(rows["points"][first], points_i, atol=1e-4)
        assert torch.equal(rows["target"][second], batch["target"])
        assert torch.allclose(rows["points"][second], points_j, atol=1e-4)
    one_way = tiny_module("semi", pairs={"both_directions": False}, pose={"views": "input"}).eval()
    with torch.no_grad():
        assert (
            one_way.synthesis_rows(batch, one_way._encode_training(batch, pose=True))["points"].shape[0]
            == size
        )


def test_pose_loss_covers_every_labeled_encoded_image():
    batch = next(iter(t2_datamodule(0.5).train_dataloader()))
    for views, expected in (("all", {"i", "j", "t2", "t2_j"}), ("input", {"i"})):
        module = tiny_module("supervised", pose={"views": views})
        assert set(module.pairs.images_to_encode(batch, module.uses_synthesis, pose=True)) == expected
    module = tiny_module("semi", pose={"views": "all"}).eval()
    module.pose_head.set_statistics(torch.zeros(21, 3), torch.full((21, 3), 30.0))
    with torch.no_grad():
        encoded = module._encode_training(batch, pose=True)
        base = module._pose_loss(batch, encoded)
        moved = dict(batch, joints3d_t2_j=batch["joints3d_t2_j"] * 1.5)
        assert module._pose_loss(moved, encoded) != base  # the appearance images' labels count
        hidden = dict(batch, labeled=torch.zeros_like(batch["labeled"]))
        assert module._pose_loss(hidden, encoded) == 0  # nothing labeled: no pose loss
    assert torch.isnan(batch["joints3d_t2"][~batch["labeled"]]).all()  # hidden outside the labeled slots


def test_synthesis_on_unlabeled_items_ignores_the_labeled_ones():
    batch = next(iter(t2_datamodule(0.5).train_dataloader()))
    labeled = batch["labeled"].bool()
    assert labeled.any() and (~labeled).any()
    repainted = {k: batch[k].clone() for k in ("image", "target", "image_t2", "image_t2_j")}
    for image in repainted.values():
        image[labeled] = 1.0 - image[labeled]
    repainted = dict(batch, **repainted)
    losses = {}
    for items in ("all", "unlabeled"):
        module = tiny_module("semi", synthesis={"items": items}, decoder={"dropout": 0.0}).eval()
        for name, b in (("base", batch), ("repainted", repainted)):
            torch.manual_seed(0)  # the same swaps and appearance picks for both batches
            with torch.no_grad():
                losses[items, name] = module._synthesis_losses(b, module._encode_training(b, pose=False))
    unlabeled_only = [losses["unlabeled", n]["synthesis"] for n in ("base", "repainted")]
    assert torch.allclose(*unlabeled_only, atol=1e-6)  # the labelled items take no part
    assert not torch.allclose(losses["all", "base"]["synthesis"], losses["all", "repainted"]["synthesis"])
    with pytest.raises(ValueError, match=r"synthesis\.items must be 'all' or 'unlabeled'"):
        tiny_module("semi", synthesis={"items": "labeled"})


def test_recipe_defaults():
    module = NVSModule(regime="semi")
    hp = module.hparams
    assert hp.pose["weight"] == pytest.approx(0.01) and tuple(hp.decoder["widths"]) == (64, 32, 16)
    assert tuple(hp.pose_head["hidden"]) == (512, 512) and hp.decoder["latent_channels"] == 16
    assert hp.appearance_dim <= 16 and hp.optimizer["scheduler"] == "none" and hp.pairs["both_directions"]
    assert hp.decoder["normalize_mask"] and hp.synthesis["silhouette_weight"] > 0
    assert hp.synthesis["foreground_weight"] > 0
    assert module.decoder.normalize_mask


def test_constant_learning_rate_by_default():
    module = NVSModule(regime="semi", **{k: v for k, v in TINY.items() if k != "optimizer"})
    assert module.optimization == Optimization(lr=1e-3, weight_decay=0.0, scheduler="none")
    trainer = fit(module, SHARE["semi"], steps=3)
    assert not trainer.lr_scheduler_configs
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)


def test_synthesis_warmup_keeps_the_pose_loss_out():
    module = tiny_module("semi", pose={"start_step": 2})
    head = snapshot(module.pose_head)
    trainer = fit(module, SHARE["semi"], steps=2)
    flags = changed(head, module.pose_head)
    assert not any(
        v for k, v in flags.items() if k.startswith("mlp.")
    )  # never ran: no gradient, no BN update
    assert "train/pose" not in trainer.callback_metrics and "train/synthesis" in trainer.callback_metrics
    module = tiny_module("semi", pose={"start_step": 1})
    head = snapshot(module.pose_head)
    trainer = fit(module, SHARE["semi"], steps=2)
    assert params_changed(head, module.pose_head) and "train/pose" in trainer.callback_metrics


def test_pose_weight_scales_the_encoder_gradient():
    batch = next(iter(t2_datamodule(0.5).train_dataloader()))
    norms = {}
    for weight in (1.0, 0.1):
        torch.manual_seed(0)
        module = tiny_module(
            "semi", pose={"weight": weight}, decoder={"dropout": 0.0}, pairs={"swap_probability": 1.0}
        )
        module.pose_head.set_statistics(torch.zeros(21, 3), torch.full((21, 3), 30.0))
        torch.manual_seed(1)
        norms[weight] = module.encoder_gradient_norms(batch)
    assert norms[1.0]["synthesis"] > 0 and norms[1.0]["pose"] > 0
    assert norms[0.1]["pose"] == pytest.approx(0.1 * norms[1.0]["pose"], rel=1e-3)
    assert norms[0.1]["synthesis"] == pytest.approx(norms[1.0]["synthesis"], rel=1e-3)


def test_statistics_need_a_multiview_datamodule_not_a_lookalike():
    class Lookalike(pl.LightningDataModule):
        labeled_share = 1.0

        def pose_statistics(self):  # duck typing must not pick this up
            raise AssertionError("NVSModule asked a non-MultiViewDataModule for statistics")

        def train_dataloader(self):
            return datamodule(1.0).train_dataloader()

    module = tiny_module("supervised")
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    with pytest.raises(ValueError, match="set_statistics"):
        trainer.fit(module, datamodule=Lookalike())
    module.pose_head.set_statistics(torch.zeros(21, 3), torch.full((21, 3), 30.0))
    trainer.fit(module, datamodule=Lookalike())  # statistics given explicitly: fine


def test_api_shapes_and_turntable():
    module = tiny_module("semi").eval()
    image = torch.rand(2, 3, 32, 32)
    points, appearance = module.encode(image)
    assert points.shape == (2, 20, 3) and appearance.shape == (2, 8)
    layers = module.synthesize(image, torch.eye(3), return_layers=True)
    assert layers["image"].shape == (2, 3, 32, 32) and layers["mask"].shape == (2, 1, 32, 32)
    table = module.turntable(image, num_views=4)
    assert table.shape == (2, 4, 3, 32, 32)
    assert torch.allclose(table[:, 0], module.synthesize(image, torch.eye(3)), atol=1e-5)
    module.pose_head.set_statistics(torch.zeros(21, 3), torch.full((21, 3), 30.0))
    pose = module.predict_pose(image)
    assert pose.shape == (2, 21, 3) and torch.equal(pose[:, 0], torch.zeros(2, 3))


def test_validation_logs_synthesis_and_pose_metrics(tmp_path):
    trainer = quiet_trainer()
    semi = tiny_module("semi")
    semi.pose_head.set_statistics(torch.zeros(21, 3), torch.full((21, 3), 30.0))
    metrics = trainer.validate(semi, datamodule=datamodule(0.5), verbose=False)[0]
    for key in ("val/synthesis_l1", "val/copy_input_l1", "val/mpjpe", "val/n_mpjpe", "val/pa_mpjpe"):
        assert key in metrics
    for key in (
        "synthesis_l1_hand",
        "copy_input_l1_hand",
        "background_l1_hand",
        "mask_iou",
        "mean_latent_l1_hand",
    ):
        assert f"val/{key}" in metrics
    stage1 = trainer.validate(tiny_module("pretrained", stage=1), datamodule=datamodule(0.0), verbose=False)[
        0
    ]
    assert "val/synthesis_l1" in stage1 and "val/mpjpe" not in stage1


def test_visualization_panels_and_wandb_only_logging():
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from handssl.callbacks.nvs_viz import NVSVisualization, nvs_panels

    module = tiny_module("semi").train()
    batch = next(iter(datamodule(0.5).train_dataloader()))
    panels = nvs_panels(module, batch, num_samples=2, turntable_views=3)
    assert module.training  # mode restored
    images = panels["images"]
    assert images.shape == (2, 6, 3, 32, 32)
    assert torch.allclose(images[:, 0], batch["image"][:2]) and torch.allclose(
        images[:, 1], batch["target"][:2]
    )
    assert panels["grid"].dtype.name == "uint8" and panels["grid"].shape[2] == 3
    assert panels["points"].shape == (20, 3)
    assert nvs_panels(tiny_module("supervised"), batch, 2)["images"].shape == (2, 1, 3, 32, 32)

    wandb_logger = MagicMock(spec=WandbLogger)
    callback = NVSVisualization(every_n_steps=5, num_samples=2, turntable_views=2)
    trainer = SimpleNamespace(global_step=3, is_global_zero=True, loggers=[wandb_logger])
    callback.on_train_batch_end(trainer, module, None, batch, 0)
    assert not wandb_logger.experiment.log.called  # not a multiple of 5
    trainer.global_step = 5
    callback.on_train_batch_end(trainer, module, None, batch, 0)
    payload = wandb_logger.experiment.log.call_args[0][0]
    assert {"nvs/grid", "nvs/latent_points", "trainer/global_step"} <= set(payload)
    callback.on_train_batch_end(trainer, module, None, batch, 1)  # same step again: no duplicate
    assert wandb_logger.experiment.log.call_count == 1
    trainer = SimpleNamespace(global_step=10, is_global_zero=True, loggers=[MagicMock(spec=CSVLogger)])
    callback.on_train_batch_end(trainer, module, None, batch, 0)  # no wandb logger: silently nothing
    trainer = SimpleNamespace(global_step=10, is_global_zero=False, loggers=[wandb_logger])
    callback.on_train_batch_end(trainer, module, None, batch, 0)
    assert wandb_logger.experiment.log.call_count == 1


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(p.name for p in EXPERIMENTS.glob("nvs_*.yaml"))


@pytest.fixture(scope="module")
def fake_panoptic_root(tmp_path_factory):
    from handssl.data.fakes import make_fake_panoptic

    root = tmp_path_factory.mktemp("nvs_cli")
    sequences = ("171204_pose1", "171204_pose2", "171204_pose3")
    make_fake_panoptic(root / "data" / "panoptic", sequences=sequences, num_frames=6)
    return root


REGIMES = ("nvs_supervised", "nvs_pretrained", "nvs_pretrained_stage2", "nvs_semi")
# The model configs on the one data config per dataset, as the README composes them (-c model -c data).
COMPOSED = [
    ("model/nvs_supervised.yaml", "data/panoptic.yaml"),
    *[(f"model/{regime}.yaml", "data/synthhands.yaml") for regime in REGIMES if regime != "nvs_supervised"],
]


def test_every_nvs_config_is_covered():
    assert len(CONFIGS) == 8, CONFIGS
    for stem in REGIMES:
        assert f"{stem}.yaml" in CONFIGS and f"{stem}_panoptic.yaml" in CONFIGS
        assert (EXPERIMENTS / "model" / f"{stem}.yaml").is_file()


# One experiment and one composition run by default (about 5 s each: the CLI parse dominates); the rest with
# `pytest -m slow`.
@pytest.mark.parametrize(
    "configs",
    [
        pytest.param(
            [c] if isinstance(c, str) else list(c),
            marks=() if c in ("nvs_semi.yaml", COMPOSED[0]) else pytest.mark.slow,
            id="+".join(Path(x).stem for x in ([c] if isinstance(c, str) else c)),
        )
        for c in [*CONFIGS, *COMPOSED]
    ],
)
def test_config_fast_dev_run(configs, fake_panoptic_root, monkeypatch):
    from handssl.cli import main

    monkeypatch.chdir(fake_panoptic_root)  # the Panoptic configs' data/panoptic is the fake copy
    config = Path(configs[0]).name
    args = [
        "fit",
        *(arg for c in configs for arg in ("-c", str(EXPERIMENTS / c))),
        "--trainer.fast_dev_run=true",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--data.init_args.batch_size=2",
        "--data.init_args.views.init_args.statistics_items=2",
        f"--runs_dir={fake_panoptic_root / 'runs'}",
        "--wandb=disabled",
    ]
    if "stage2" in config:
        stage1 = NVSModule(regime="pretrained", stage=1)  # the configs' architecture defaults
        path = fake_panoptic_root / f"{config}.stage1.ckpt"
        torch.save({"state_dict": stage1.state_dict()}, path)
        args.append(f"--model.init_args.pretrained_checkpoint={path}")
    main(args)


DDP_SCRIPT = """
import json, sys
import pytorch_lightning as pl
import torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_multiview_datamodule import FakeMultiView
from handssl.data.multiview import MultiViewDataModule
from handssl.models.nvs import NVSModule
from handssl.models.options import Optimization

class Check(pl.Callback):
    shares = []
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.shares.append(int(batch["labeled"].sum()))
        self.indices = batch["meta"]["index"]

    def on_train_end(self, trainer, module):
        flat = torch.cat([p.detach().flatten() for p in module.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        indices = torch.tensor(self.indices)
        seen = [torch.zeros_like(indices) for _ in range(2)]
        dist.all_gather(seen, indices)
        if trainer.is_global_zero:
            json.dump({{"shares": self.shares, "same_params": bool(torch.equal(*gathered)),
                        "world": trainer.world_size, "batches": [s.tolist() for s in seen],
                        "val": float(trainer.callback_metrics["val/mpjpe"])}}, open({out!r}, "w"))

module = NVSModule(regime="semi", image_size=32, num_points=20, appearance_dim=8,
                   encoder={{"widths": (8, 16), "blocks": (1, 1)}}, decoder={{"widths": (16, 8), "latent_channels": 8}},
                   pose_head={{"hidden": (32,)}}, optimizer=Optimization(weight_decay=0.0, scheduler="none"))
dm = MultiViewDataModule(train=FakeMultiView(16), val=FakeMultiView(4), test=FakeMultiView(4),
                         label_fraction=0.25, labeled_share=0.5, batch_size=4)
trainer = pl.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=2, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, val_check_interval=2, limit_val_batches=1, callbacks=[Check()])
trainer.fit(module, datamodule=dm)
"""


@pytest.mark.ddp
def test_two_process_cpu_ddp(tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp.json"
    script = tmp_path / "ddp_nvs.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world"] == 2
    assert report["shares"] == [2, 2]  # every batch on rank 0 carries the configured 2 labeled items
    assert report["same_params"]  # gradients were averaged: both ranks hold the same weights
    a, b = report["batches"]
    unlabeled_a, unlabeled_b = set(a[:2]), set(b[:2])
    assert not unlabeled_a & unlabeled_b  # the ranks see different shards of the stream
    assert report["val"] > 0


def resolved_yaml(config: str) -> dict:
    """The experiment's config files (its ``defaults`` expanded, as the CLI does) merged as plain dicts."""
    import yaml

    from handssl._lightning_cli import expand_config_defaults

    def merge(into: dict, new: dict) -> dict:
        for key, value in new.items():
            key = key.rstrip("+")
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
        return into

    argv = expand_config_defaults(["-c", str(EXPERIMENTS / config)])
    merged: dict = {}
    for source in argv[1::2]:
        merge(merged, yaml.safe_load(source if "\n" in source else Path(source).read_text()))
    return merged


def labeled_per_step(config: str) -> tuple[int, int]:
    data = resolved_yaml(config)["data"]["init_args"]
    batch, share = data["batch_size"], data["views"]["init_args"]["labeled_share"]
    return round(batch * share), batch - round(batch * share)


@pytest.mark.parametrize("suffix", ["", "_panoptic"])
def test_configs_give_every_regime_the_same_labeled_items_per_step(suffix):
    supervised = labeled_per_step(f"nvs_supervised{suffix}.yaml")
    semi = labeled_per_step(f"nvs_semi{suffix}.yaml")
    stage2 = labeled_per_step(f"nvs_pretrained_stage2{suffix}.yaml")
    stage1 = labeled_per_step(f"nvs_pretrained{suffix}.yaml")
    assert supervised[0] == semi[0] == stage2[0] == 16  # labeled items per step
    assert supervised[1] == stage2[1] == 0 and semi[1] == 16 and stage1 == (0, 16)


def test_pose_head_batch_norm_sees_only_the_labeled_rows():
    batch = next(iter(t2_datamodule(0.5).train_dataloader()))
    labeled = batch["labeled"].bool()
    assert labeled.sum() >= 2 and (~labeled).any()
    # unlabelled images change: their rows may move the head's BatchNorm statistics, never with "labeled"
    repainted = dict(batch, image=torch.where(labeled.view(-1, 1, 1, 1), batch["image"], 1 - batch["image"]))
    for rows, same in (("labeled", True), ("all", False)):
        module = tiny_module("semi", pose={"views": "input"}, pose_head={"rows": rows, "dropout": 0.0})
        module.pose_head.set_statistics(torch.zeros(21, 3), torch.full((21, 3), 30.0))
        module.train()
        module.encoder.eval()  # the encoder's own BatchNorm mixes rows too: hold it, test the head's
        with torch.no_grad():
            losses = [module._pose_loss(b, module._encode_training(b, pose=True)) for b in (batch, repainted)]
        assert torch.allclose(*losses) == same, rows
    with pytest.raises(ValueError, match=r"pose_head\.rows must be 'labeled' or 'all'"):
        tiny_module("semi", pose_head={"rows": "unlabeled"})


def assert_term_joins_the_synthesis_loss(batch: dict, option: str, weight: float, term: str) -> None:
    """With ``geometry.<option>`` at ``weight`` the synthesis loss is the one without it plus weight x the term (> 0)."""
    losses = {}
    for value in (0.0, weight):
        torch.manual_seed(0)
        module = tiny_module("pretrained", geometry={option: value}, decoder={"dropout": 0.0})
        torch.manual_seed(1)
        losses[value] = module.training_losses(batch)
    assert term not in losses[0.0] and float(losses[weight][term]) > 0
    assert float(losses[weight]["synthesis"]) == pytest.approx(
        float(losses[0.0]["synthesis"] + weight * losses[weight][term]), rel=1e-5
    )


def test_latent_equivariance_joins_the_synthesis_loss():
    batch = next(iter(t2_datamodule(0.0).train_dataloader()))
    assert_term_joins_the_synthesis_loss(batch, "equivariance_weight", 2.0, "latent_equivariance")
    with pytest.raises(ValueError, match=r"set pairs\.both_directions$"):
        tiny_module("pretrained", geometry={"equivariance_weight": 1.0}, pairs={"both_directions": False})
    with pytest.raises(ValueError, match=r"^geometry\.equivariance_weight must be >= 0, got -1\.0$"):
        tiny_module("pretrained", geometry={"equivariance_weight": -1.0})


def test_point_silhouette_joins_the_synthesis_loss():
    batch = next(iter(t2_datamodule(0.0).train_dataloader()))
    assert_term_joins_the_synthesis_loss(batch, "point_silhouette_weight", 0.5, "point_silhouette")
    with pytest.raises(ValueError, match=r"^geometry\.point_silhouette_weight must be >= 0"):
        tiny_module("pretrained", geometry={"point_silhouette_weight": -1.0})


def test_balanced_weight_hand_computed_and_smoothed():
    from handssl.models.components.gradient_balance import balanced_weight

    assert balanced_weight(2.0, 8.0, 0.1, None, 0.8) == pytest.approx(0.025)
    # geometric smoothing: 0.8 of log(previous) and 0.2 of log(measured)
    assert balanced_weight(2.0, 8.0, 0.1, 1.0, 0.8) == pytest.approx(0.025**0.2)
    assert balanced_weight(0.0, 8.0, 0.1, 0.5, 0.8) == 0.5  # nothing to balance: keep the weight
    assert balanced_weight(2.0, float("nan"), 0.1, None, 0.8) is None


def test_pose_gradient_ratio_sets_the_measured_balance_and_survives_a_checkpoint():
    from handssl.models.components.gradient_balance import PoseGradientBalance

    torch.manual_seed(0)
    module = tiny_module("semi", pose={"weight": 123.0, "gradient_ratio": 0.05}, decoder={"dropout": 0.0})
    trainer = fit(module, SHARE["semi"], steps=1)
    (balance,) = [c for c in trainer.callbacks if isinstance(c, PoseGradientBalance)]
    assert balance.ratio == 0.05 and module.pose_weight == balance.weight != 123.0
    # measured again on a batch, the encoder's weighted pose gradient is near 5 % of its synthesis gradient
    batch = next(iter(datamodule(0.5).train_dataloader()))
    torch.manual_seed(3)
    norms = module.encoder_gradient_norms(batch)
    assert 0.01 < norms["pose"] / norms["synthesis"] < 0.25
    restored = PoseGradientBalance(0.05)
    restored.load_state_dict(balance.state_dict())
    assert restored.weight == balance.weight
    with pytest.raises(ValueError, match=r"^pose\.gradient_ratio needs the semi regime"):
        tiny_module("supervised", pose={"gradient_ratio": 0.1})
    with pytest.raises(ValueError, match="ratio must be > 0"):
        PoseGradientBalance(0.0)


def test_geometry_group_reaches_the_latent_terms():
    module = tiny_module("pretrained", geometry={"point_silhouette_weight": 2.0, "side": 32})
    assert module.latent_geometry.side == 32 and module.latent_geometry.point_silhouette_weight == 2.0
    assert module.latent_geometry.silhouette_threshold == module.options.synthesis.silhouette_threshold
    with pytest.raises(ValueError, match=r"^geometry\.side must be >= 2, got 1$"):
        tiny_module("pretrained", geometry={"side": 1})


def test_opacity_latent_trains_end_to_end_with_its_term():
    """Pixel-aligned points with opacities: 4 columns through rotation, decoder, latent terms and pose head."""
    batch = next(iter(t2_datamodule(0.5).train_dataloader()))
    cells = TINY["image_size"] // 4
    module = tiny_module(
        "semi",
        num_points=cells * cells,
        encoder={"widths": (8, 16, 16), "blocks": (1, 1, 1), "point_head": "pixel_aligned", "opacity": True},
        decoder={"splat": True, "mask_from_points": True},
        geometry={"opacity_weight": 0.5, "point_silhouette_weight": 1.0},
    )
    assert module.decoder is not None and module.decoder.point_dim == 4
    torch.manual_seed(1)
    losses = module.training_losses(batch)
    assert {"opacity", "point_silhouette", "pose"} <= set(losses)
    assert torch.isfinite(losses["loss"]) and float(losses["opacity"]) > 0
    losses["loss"].backward()
    last = module.encoder.to_points[-1].weight.grad
    assert last is not None and float(last[3].abs().sum()) > 0  # the opacity channel learns
    module.eval()
    assert module.pose_head(module.encoder(batch["image"])[0]).shape == (batch["image"].shape[0], 21, 3)


def test_hull_term_joins_training_on_items_of_four_views():
    data = MultiViewDataModule(
        train=FakeMultiView(16, num_views=4),
        val=FakeMultiView(4),
        test=FakeMultiView(4),
        label_fraction=0.25,
        labeled_share=0.0,
        batch_size=4,
    )
    batch = next(iter(data.train_dataloader()))
    assert batch["hull_images"].shape[:2] == (4, 2) and batch["R_i_hull"].shape == (4, 2, 3, 3)
    assert_term_joins_the_synthesis_loss(batch, "hull_weight", 0.5, "hull_silhouette")
    two_views = next(iter(datamodule(0.0).train_dataloader()))
    with pytest.raises(ValueError, match=r"^geometry\.hull_weight > 0 checks the latent"):
        tiny_module("pretrained", geometry={"hull_weight": 0.5}).training_losses(two_views)
