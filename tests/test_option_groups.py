"""Option groups (issue 24, item 2): the optimiser settings as one typed group that the CLI nests.

Checkpoints and shipped weights written with the flat arguments of earlier versions (``lr=`` ...) still load,
with their values in the group; a flat option on the command line stops with one line naming the new key.
"""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

import handssl.pretrained as pretrained
from handssl._lightning_cli import make_cli
from handssl.cli import main
from handssl.models import NVSModule, SemiHandModule, SupervisedModule
from handssl.models.options import EMAOptions, Optimization, upgrade_hparams

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"
NVS_CONF = Path(__file__).parent / "conf" / "nvs_tiny.yaml"
SEMI_CONF = Path(__file__).parent / "conf" / "semihand_tiny.yaml"
TINY = dict(backbone_widths=(8, 8, 8, 8), head_hidden=(16,))
FLAT = {"lr": 0.123, "weight_decay": 0.0, "scheduler": "none", "warmup_steps": 7}


def run(args, tmp_path):
    main([*args, "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"])


def test_each_task_has_its_own_default_group():
    assert SupervisedModule(**TINY).optimization == Optimization(lr=2e-3)
    semi = SemiHandModule(backbone_widths=(8, 16, 32), backbone_blocks=(1, 1, 1), decoder_channels=16)
    assert semi.optimization == Optimization()
    nvs = NVSModule(regime="supervised", encoder_widths=(8, 16), encoder_blocks=(1, 1), pose_hidden=(16,))
    assert nvs.optimization == Optimization(weight_decay=0.0, scheduler="none")
    # A mapping (a checkpoint's hparams, a YAML node read by hand) keeps the task's defaults, as the CLI does.
    nvs = NVSModule(
        regime="supervised",
        encoder_widths=(8, 16),
        encoder_blocks=(1, 1),
        pose_hidden=(16,),
        optimizer={"lr": 0.5},
    )
    assert nvs.optimization == Optimization(lr=0.5, weight_decay=0.0, scheduler="none")


def test_group_validates_its_values():
    with pytest.raises(ValueError, match="lr must be positive"):
        Optimization(lr=0.0)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        Optimization(warmup_steps=-1)
    with pytest.raises(ValueError, match="ema decay must be in"):
        EMAOptions(decay=1.5)
    with pytest.raises(TypeError, match="unknown keys \\['lrr'\\]"):
        SupervisedModule(**TINY, optimizer={"lrr": 1.0})  # type: ignore[arg-type]


def test_cli_nests_the_group_and_keeps_the_task_defaults_of_keys_left_out():
    cli = make_cli(["-c", str(CONF), "--model.init_args.optimizer.lr=0.5"], run=False)
    # supervised_tiny.yaml sets warmup_steps 1; the rest are SupervisedModule's defaults.
    assert cli.model.optimization == Optimization(lr=0.5, warmup_steps=1)
    nvs = make_cli(["-c", str(NVS_CONF), "--model.init_args.optimizer.weight_decay=0.5"], run=False).model
    assert nvs.optimization == Optimization(lr=1e-3, weight_decay=0.5, scheduler="none", warmup_steps=1)
    semi = make_cli(["-c", str(SEMI_CONF), "--model.init_args.ema.decay=0.5"], run=False).model
    assert semi.ema == EMAOptions(decay=0.5) and semi.hparams["ema"]["buffer_mode"] == "ema"


def test_flat_option_names_the_new_key_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(CONF), "--model.init_args.lr=1e-3"], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`lr` moved to `optimizer: {lr: ...}`" in err[0]
    assert set(SupervisedModule.moved_arguments) == {"lr", "weight_decay", "scheduler", "warmup_steps"}
    assert SemiHandModule.moved_arguments["ema_decay"] == "ema: {decay: ...}"
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(SEMI_CONF), "--model.init_args.ema_decay=0.9"], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SemiHandModule: `ema_decay` moved to `ema: {decay: ...}`" in err[0]


def test_hparams_keep_the_group_as_a_plain_dict(tmp_path):
    module = SupervisedModule(**TINY, optimizer=Optimization(lr=0.01))
    assert module.hparams["optimizer"] == {
        "lr": 0.01,
        "weight_decay": 1e-4,
        "scheduler": "cosine",
        "warmup_steps": 50,
    }
    path = tmp_path / "hparams.pt"
    torch.save({"hyper_parameters": dict(module.hparams)}, path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["optimizer"]["lr"] == 0.01


def test_upgrade_moves_flat_arguments_into_the_group():
    assert upgrade_hparams({**FLAT, "dropout": 0.1}) == {"optimizer": FLAT, "dropout": 0.1}
    assert upgrade_hparams({"lr": 0.1, "optimizer": {"lr": 0.2}}) == {"optimizer": {"lr": 0.2}}
    assert upgrade_hparams({"ema_decay": 0.9, "ema_warmup": False, "ema_updates": 3}) == {
        "ema": {"decay": 0.9, "warmup": False},
        "ema_updates": 3,
    }
    new = {"optimizer": {"lr": 0.2}, "dropout": 0.1}
    assert upgrade_hparams(new) == new


def old_checkpoint(tmp_path) -> tuple[Path, SupervisedModule]:
    """A checkpoint as earlier versions wrote it: flat optimiser arguments in its hyper-parameters."""
    module = SupervisedModule(**TINY)
    hparams = {k: v for k, v in module.hparams.items() if k != "optimizer"}
    hparams.update(FLAT, _class_path="handssl.models.SupervisedModule")
    hparams["_instantiator"] = "pytorch_lightning.cli.instantiate_module"
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": pl.__version__,
            "state_dict": module.state_dict(),
            "hyper_parameters": hparams,
        },
        path,
    )
    return path, module


def test_old_checkpoint_loads_with_its_flat_settings(tmp_path):
    path, module = old_checkpoint(tmp_path)
    loaded = SupervisedModule.load_from_checkpoint(path, map_location="cpu")
    assert loaded.optimization == Optimization(**FLAT)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())


def test_old_checkpoint_through_the_cli_keeps_its_settings(tmp_path):
    path, _ = old_checkpoint(tmp_path)
    run(["validate", "-c", str(CONF), "--ckpt_path", str(path), "--run_name", "old"], tmp_path)
    config = yaml.safe_load((tmp_path / "runs" / "old" / "version_0" / "config.yaml").read_text())
    assert config["model"]["init_args"]["optimizer"] == FLAT


@pytest.mark.parametrize("name", pretrained.available())
def test_shipped_weights_written_flat_load_into_the_group(name):
    payload = pretrained._payload(name, "cpu", None)
    stored = payload["hparams"]
    module = pretrained.load(name)
    expected = {key: stored[key] for key in FLAT if key in stored}
    assert {key: getattr(module.optimization, key) for key in expected} == expected
    if isinstance(module, SemiHandModule):
        assert module.ema == EMAOptions(stored["ema_decay"], stored["ema_warmup"], stored["ema_buffer_mode"])
