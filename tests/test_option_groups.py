"""Option groups (issue 24, item 2): the optimiser settings, SemiHand's and NVSModule's options as typed groups.

Checkpoints and shipped weights written with the flat arguments of earlier versions (``lr=``, ``use_correction=``,
``decoder_splat=`` ...) still load, with their values in the groups; a flat option on the command line or in a
YAML file stops with one line naming the new key.
"""

import inspect
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

import handssl.pretrained as pretrained
from handssl._lightning_cli import make_cli
from handssl.cli import main
from handssl.models import NVSModule, SemiHandModule, SupervisedModule
from handssl.models.options import (
    FLAT_ARGUMENTS,
    GROUPS,
    NEVER_FLAT,
    NVS_GROUPS,
    SEMIHAND_GROUPS,
    ConsistencyOptions,
    CorrectionOptions,
    DecoderOptions,
    EMAOptions,
    EncoderOptions,
    GeometryOptions,
    Optimization,
    PairOptions,
    PoseHeadOptions,
    PoseLossOptions,
    PoseOptions,
    PseudoLabelOptions,
    SynthesisOptions,
    UnsupervisedSchedule,
    group_keys,
    upgrade_hparams,
)

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"
NVS_CONF = Path(__file__).parent / "conf" / "nvs_tiny.yaml"
SEMI_CONF = Path(__file__).parent / "conf" / "semihand_tiny.yaml"
TINY = dict(backbone_widths=(8, 8, 8, 8), head_hidden=(16,))
SEMI_TINY = dict(backbone_widths=(8, 16, 32), backbone_blocks=(1, 1, 1), decoder_channels=16)
NVS_TINY = dict(
    encoder=EncoderOptions(widths=(8, 16), blocks=(1, 1)), pose_head=PoseHeadOptions(hidden=(16,))
)
FLAT = {"lr": 0.123, "weight_decay": 0.0, "scheduler": "none", "warmup_steps": 7}


def run(args, tmp_path):
    main([*args, "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"])


def test_each_task_has_its_own_default_group():
    assert SupervisedModule(**TINY).optimization == Optimization(lr=2e-3)
    semi = SemiHandModule(backbone_widths=(8, 16, 32), backbone_blocks=(1, 1, 1), decoder_channels=16)
    assert semi.optimization == Optimization()
    nvs = NVSModule(regime="supervised", **NVS_TINY)
    assert nvs.optimization == Optimization(weight_decay=0.0, scheduler="none")
    # A mapping (a checkpoint's hparams, a YAML node read by hand) keeps the task's defaults, as the CLI does.
    nvs = NVSModule(regime="supervised", **NVS_TINY, optimizer={"lr": 0.5})
    assert nvs.optimization == Optimization(lr=0.5, weight_decay=0.0, scheduler="none")


def test_group_validates_its_values():
    with pytest.raises(ValueError, match="lr must be positive"):
        Optimization(lr=0.0)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        Optimization(warmup_steps=-1)
    with pytest.raises(ValueError, match=r"ema\.decay must be in \[0, 1\], got 1\.5"):
        EMAOptions(decay=1.5)
    with pytest.raises(TypeError, match="unknown keys \\['lrr'\\]"):
        SupervisedModule(**TINY, optimizer={"lrr": 1.0})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("group", "values", "message"),
    [
        (PoseLossOptions, {"norm": "huber"}, "loss.norm must be 'l1' or 'l2', got 'huber'"),
        (PoseLossOptions, {"heatmap_sigma": 0.0}, "loss.heatmap_sigma must be positive, got 0.0"),
        (
            PseudoLabelOptions,
            {"accept_fraction": 2},
            "pseudo_labels.accept_fraction must be in [0, 1], got 2",
        ),
        (PseudoLabelOptions, {"threshold": -1.0}, "pseudo_labels.threshold must be >= 0 or null, got -1.0"),
        (PseudoLabelOptions, {"lifting": "oracle"}, "pseudo_labels.lifting must be 'known' or 'predicted'"),
        (CorrectionOptions, {"template": "mano"}, "correction.template must be one of"),
        (CorrectionOptions, {"max_mm": 0.0}, "correction.max_mm must be positive or null, got 0.0"),
        (ConsistencyOptions, {"weight": -0.1}, "consistency.weight must be >= 0, got -0.1"),
        (
            ConsistencyOptions,
            {"cross_modal_size": 0},
            "consistency.cross_modal_size must be positive or null",
        ),
        (UnsupervisedSchedule, {"ramp_steps": -1}, "unsupervised.ramp_steps must be >= 0, got -1"),
    ],
)
def test_semihand_groups_name_a_bad_value_as_the_user_writes_it(group, values, message):
    with pytest.raises(ValueError) as info:
        group(**values)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        SemiHandModule(**SEMI_TINY, **{group.argument: values})


def test_semihand_takes_its_groups_and_keeps_them_whole_in_its_hparams():
    module = SemiHandModule(**SEMI_TINY, correction={"enabled": False}, unsupervised={"start_step": 5})
    assert module.correction == CorrectionOptions(enabled=False)
    assert module.unsupervised == UnsupervisedSchedule(start_step=5)
    assert module.pseudo_labeler.corrector is None and not module.loss_options.wanted(1.0)["correction"]
    # a mapping is stored with the defaults of the keys it leaves out: the checkpoint records every value
    assert module.hparams["correction"] == asdict(CorrectionOptions(enabled=False))
    assert set(module.hparams) >= set(SEMIHAND_GROUPS)
    assert not set(module.hparams) & set(FLAT_ARGUMENTS)


def test_no_task_still_takes_a_flat_argument_that_moved_into_a_group():
    """upgrade_hparams moves every name of FLAT_ARGUMENTS out of any checkpoint: no task may still take one."""
    for task in (SupervisedModule, NVSModule, SemiHandModule):
        assert not set(inspect.signature(task.__init__).parameters) & set(FLAT_ARGUMENTS), task


def test_cli_nests_the_group_and_keeps_the_task_defaults_of_keys_left_out():
    cli = make_cli(["-c", str(CONF), "--model.init_args.optimizer.lr=0.5"], run=False)
    # supervised_tiny.yaml sets warmup_steps 1; the rest are SupervisedModule's defaults.
    assert cli.model.optimization == Optimization(lr=0.5, warmup_steps=1)
    nvs = make_cli(["-c", str(NVS_CONF), "--model.init_args.optimizer.weight_decay=0.5"], run=False).model
    assert nvs.optimization == Optimization(lr=1e-3, weight_decay=0.5, scheduler="none", warmup_steps=1)
    semi = make_cli(["-c", str(SEMI_CONF), "--model.init_args.ema.decay=0.5"], run=False).model
    assert semi.ema == EMAOptions(decay=0.5) and semi.hparams["ema"]["buffer_mode"] == "ema"
    # semihand_tiny.yaml sets correction.enabled and the schedule; a dotted flag changes one key of a group
    flags = ["--model.init_args.correction.template=subject", "--model.init_args.pseudo_labels.threshold=1.5"]
    semi = make_cli(["-c", str(SEMI_CONF), *flags], run=False).model
    assert semi.correction == CorrectionOptions(enabled=False, template="subject")
    assert semi.pseudo_labels == PseudoLabelOptions(threshold=1.5)
    assert semi.unsupervised == UnsupervisedSchedule(0, 0) and semi.hparams["unsupervised"]["ramp_steps"] == 0


def test_a_config_stacked_on_a_recipe_changes_only_the_keys_it_names():
    """semihand_oracle.yaml turns three groups off over semihand_full.yaml; their other keys stay the recipe's."""
    recipe = Path(__file__).parents[1] / "experiments" / "semihand_oracle.yaml"
    model = make_cli(["-c", str(recipe)], run=False).model
    assert model.pseudo_labels == PseudoLabelOptions(enabled=False, accept_fraction=0.3)
    assert model.correction == CorrectionOptions(enabled=False)
    assert model.consistency == ConsistencyOptions(enabled=False, weight=0.1)
    assert model.loss == PoseLossOptions(depth_weight=200.0)
    assert model.unsupervised == UnsupervisedSchedule(start_step=3000, ramp_steps=200)


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


@pytest.mark.parametrize(
    ("flat", "value", "new"),
    [
        ("use_correction", "false", "correction: {enabled: ...}"),
        ("max_correction_mm", "30", "correction: {max_mm: ...}"),
        ("threshold", "1.5", "pseudo_labels: {threshold: ...}"),
        ("pseudo_label_lifting", "known", "pseudo_labels: {lifting: ...}"),
        ("pose_loss", "l2", "loss: {norm: ...}"),
        ("depth_weight", "50", "loss: {depth_weight: ...}"),
        ("use_consistency", "false", "consistency: {enabled: ...}"),
        ("unsupervised_start_step", "0", "unsupervised: {start_step: ...}"),
    ],
)
def test_flat_semihand_option_names_its_group_in_one_line(flat, value, new, tmp_path, capsys):
    assert SemiHandModule.moved_arguments[flat] == new
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(SEMI_CONF), f"--model.init_args.{flat}={value}"], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"SemiHandModule: `{flat}` moved to `{new}`" in err[0], err
    # the same key in a YAML file (a recipe or a run's config.yaml written before the groups)
    old = tmp_path / "old.yaml"
    old.write_text(f"model:\n  init_args:\n    {flat}: {value}\n")
    with pytest.raises(SystemExit):
        run(["fit", "-c", str(SEMI_CONF), "-c", str(old)], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"`{flat}` moved to `{new}`" in err[0], err


def test_every_flat_semihand_argument_has_a_place():
    names = set(SemiHandModule.moved_arguments)
    assert {"use_pseudo_labels", "use_mask", "template", "ray_tol_px", "cross_modal_size"} <= names
    assert len(names) == 32
    assert names == {flat for flat, (argument, _) in FLAT_ARGUMENTS.items() if argument in SEMIHAND_GROUPS}


def test_a_flat_name_stands_for_one_field_and_no_group():
    """upgrade_hparams reads a checkpoint without knowing its task: a flat name may not mean two things."""
    fields = sum(len(group_keys(group)) for group in GROUPS.values())
    assert len(FLAT_ARGUMENTS) == fields - len(NEVER_FLAT)  # the fields added since were never flat
    assert all(pair not in FLAT_ARGUMENTS.values() for pair in NEVER_FLAT)
    assert not set(FLAT_ARGUMENTS) & set(GROUPS)
    assert set(GROUPS) == set(SEMIHAND_GROUPS) | set(NVS_GROUPS)


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
    assert upgrade_hparams({**SEMI_FLAT, "mode": "rounds"}) == {**SEMI_GROUPS, "mode": "rounds"}
    assert upgrade_hparams({"lr": 0.1, "optimizer": {"lr": 0.2}}) == {"optimizer": {"lr": 0.2}}
    assert upgrade_hparams({"ema_decay": 0.9, "ema_warmup": False, "ema_updates": 3}) == {
        "ema": {"decay": 0.9, "warmup": False},
        "ema_updates": 3,
    }
    new = {"optimizer": {"lr": 0.2}, "dropout": 0.1}
    assert upgrade_hparams(new) == new


SEMI_FLAT = {
    "use_correction": False,
    "max_correction_mm": 25.0,
    "threshold": 1.5,
    "accept_fraction": 0.5,
    "pseudo_label_lifting": "known",
    "use_consistency": False,
    "cross_modal_size": None,
    "pose_loss": "l2",
    "depth_weight": 50.0,
    "unsupervised_start_step": 4,
    "unsupervised_ramp_steps": 2,
}
SEMI_GROUPS = {
    "correction": {"enabled": False, "max_mm": 25.0},
    "pseudo_labels": {"threshold": 1.5, "accept_fraction": 0.5, "lifting": "known"},
    "consistency": {"enabled": False, "cross_modal_size": None},
    "loss": {"norm": "l2", "depth_weight": 50.0},
    "unsupervised": {"start_step": 4, "ramp_steps": 2},
}


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


def old_semihand_checkpoint(tmp_path) -> tuple[Path, SemiHandModule]:
    """A SemiHand checkpoint as earlier versions wrote it: every option a flat argument (SEMI_FLAT's, or default)."""
    module = SemiHandModule(**SEMI_TINY, image_size=32)  # semihand_tiny.yaml's data
    hparams = {k: v for k, v in module.hparams.items() if k not in GROUPS}
    for name, (argument, key) in FLAT_ARGUMENTS.items():
        if argument in SEMIHAND_GROUPS:
            hparams[name] = module.hparams[argument][key]
    hparams.update(FLAT, ema_decay=0.9, ema_warmup=False, ema_buffer_mode="copy")
    hparams.update(SEMI_FLAT, _class_path="handssl.models.SemiHandModule")
    hparams["_instantiator"] = "pytorch_lightning.cli.instantiate_module"
    path = tmp_path / "old_semihand.ckpt"
    state = {"pytorch-lightning_version": pl.__version__, "state_dict": module.state_dict()}
    torch.save({**state, "hyper_parameters": hparams}, path)
    return path, module


def test_old_semihand_checkpoint_loads_with_its_flat_settings(tmp_path):
    path, module = old_semihand_checkpoint(tmp_path)
    loaded = SemiHandModule.load_from_checkpoint(path, map_location="cpu")
    assert loaded.ema == EMAOptions(0.9, False, "copy") and loaded.optimization == Optimization(**FLAT)
    for argument, values in SEMI_GROUPS.items():
        assert getattr(loaded, argument) == GROUPS[argument](**values), argument
    assert loaded.pseudo_labeler.corrector is None and loaded.pseudo_labeler.threshold == 1.5
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())
    # and through the CLI, which reads the checkpoint's hyper-parameters into the config
    run(["validate", "-c", str(SEMI_CONF), "--ckpt_path", str(path), "--run_name", "old"], tmp_path)
    config = yaml.safe_load((tmp_path / "runs" / "old" / "version_0" / "config.yaml").read_text())
    init_args = config["model"]["init_args"]
    for argument, values in SEMI_GROUPS.items():
        assert init_args[argument] == asdict(GROUPS[argument](**values)), argument
    assert init_args["ema"] == {"decay": 0.9, "warmup": False, "buffer_mode": "copy"}


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
        moved = {n: where for n, where in FLAT_ARGUMENTS.items() if where[0] in SEMIHAND_GROUPS[1:]}
        assert set(moved) <= set(stored)  # written flat, every SemiHand option
        for name, (argument, key) in moved.items():
            assert getattr(getattr(module, argument), key) == stored[name], name
    if isinstance(module, NVSModule):
        moved = {n: where for n, where in FLAT_ARGUMENTS.items() if where[0] in NVS_GROUPS[1:]}
        written = set(moved) & set(stored)
        assert len(written) >= 20 and "decoder_splat" not in written  # written flat, before the splat existed
        for name, (argument, key) in moved.items():
            value = getattr(getattr(module.options, argument), key)
            assert value == stored.get(name, getattr(GROUPS[argument](), key)), name  # else the default
        assert module.hparams["pose"] == asdict(PoseOptions(weight=0.01))


# ----------------------------------------------------------------------------------------- NVSModule's groups
NVS_FLAT = {
    "encoder_widths": (8, 16),
    "encoder_blocks": (1, 1),
    "decoder_widths": (16, 8),
    "decoder_latent_channels": 8,
    "latent_dropout": 0.1,
    "decoder_splat": True,
    "pose_hidden": (32,),
    "pose_head_rows": "all",
    "swap_probability": 1.0,
    "pose_weight": 0.5,
    "synthesis_warmup_steps": 3,
    "pose_views": "input",
    "structural_loss": "ssim",
    "silhouette_threshold": 0.1,
    "synthesis_items": "unlabeled",
    "point_silhouette_weight": 0.5,
    "own_view_silhouette_weight": 0.25,
}
NVS_GROUPED = {
    "encoder": {"widths": (8, 16), "blocks": (1, 1)},
    "decoder": {"widths": (16, 8), "latent_channels": 8, "dropout": 0.1, "splat": True},
    "pose_head": {"hidden": (32,), "rows": "all"},
    "pairs": {"swap_probability": 1.0},
    "pose": {"weight": 0.5, "start_step": 3, "views": "input"},
    "synthesis": {"structural": "ssim", "silhouette_threshold": 0.1, "items": "unlabeled"},
    "geometry": {"point_silhouette_weight": 0.5, "own_view_weight": 0.25},
}


@pytest.mark.parametrize(
    ("group", "values", "message"),
    [
        (EncoderOptions, {"point_head": "conv"}, "encoder.point_head must be 'linear' or 'pixel_aligned'"),
        (EncoderOptions, {"blocks": (1, 1)}, "encoder.blocks must name one count per width, got (1, 1)"),
        (DecoderOptions, {"widths": ()}, "decoder.widths must be positive sizes, got ()"),
        (DecoderOptions, {"dropout": 1.5}, "decoder.dropout must be in [0, 1], got 1.5"),
        (DecoderOptions, {"mask_from_points": True}, "decoder.mask_from_points gates the mask"),
        (PairOptions, {"swap_probability": 2.0}, "pairs.swap_probability must be in [0, 1], got 2.0"),
        (SynthesisOptions, {"structural": "lpips"}, "synthesis.structural must be one of"),
        (SynthesisOptions, {"silhouette_weight": -1.0}, "synthesis.silhouette_weight must be >= 0, got -1.0"),
        (SynthesisOptions, {"silhouette_threshold": -0.1}, "synthesis.silhouette_threshold must be >= 0"),
        (SynthesisOptions, {"items": "labeled"}, "synthesis.items must be 'all' or 'unlabeled'"),
        (GeometryOptions, {"own_view_weight": -1.0}, "geometry.own_view_weight must be >= 0, got -1.0"),
        (GeometryOptions, {"opacity_weight": -1.0}, "geometry.opacity_weight must be >= 0, got -1.0"),
        (
            EncoderOptions,
            {"opacity": True},
            "encoder.opacity marks the hand's stride-4 cells: set encoder.point_head",
        ),
        (EncoderOptions, {"depth_samples": 0}, "encoder.depth_samples must be >= 1, got 0"),
        (EncoderOptions, {"depth_samples": 2}, "encoder.depth_samples places points along each cell's ray"),
        (PoseHeadOptions, {"rows": "unlabeled"}, "pose_head.rows must be 'labeled' or 'all'"),
        (PoseOptions, {"weight": -0.1}, "pose.weight must be >= 0, got -0.1"),
        (PoseOptions, {"gradient_ratio": 0.0}, "pose.gradient_ratio must be > 0 or null, got 0.0"),
        (PoseOptions, {"start_step": -1}, "pose.start_step must be >= 0, got -1"),
    ],
)
def test_nvs_groups_name_a_bad_value_as_the_user_writes_it(group, values, message):
    with pytest.raises(ValueError) as info:
        group(**values)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        NVSModule(**{**NVS_TINY, group.argument: values})


def test_nvs_takes_its_groups_and_keeps_them_whole_in_its_hparams():
    # the groups as mappings, as a YAML file gives them
    module = NVSModule(regime="pretrained", **{**NVS_TINY, **NVS_GROUPED})
    assert module.options.decoder == DecoderOptions((16, 8), 8, 0.1, splat=True)
    assert module.options.geometry == GeometryOptions(point_silhouette_weight=0.5, own_view_weight=0.25)
    assert module.options.pose == PoseOptions(0.5, None, 3, "input") and module.pose_weight == 0.5
    # the components are built from them
    assert module.decoder is not None and module.decoder.splat and module.silhouette_threshold == 0.1
    geometry = module.latent_geometry
    assert geometry.own_view_weight == 0.25 and geometry.silhouette_threshold == 0.1
    assert (module.pairs.swap_probability, module.pairs.pose_views, module.pairs.pose_head_rows) == (
        1.0,
        "input",
        "all",
    )
    assert module.make_reconstruction().reconstruction.structural == "ssim"
    for argument in NVS_GROUPS[1:]:  # the mappings stored whole, with the defaults of the keys left out
        assert module.hparams[argument] == asdict(GROUPS[argument](**NVS_GROUPED.get(argument, {})))
    assert not set(module.hparams) & set(FLAT_ARGUMENTS)


def test_nvs_cross_group_checks_name_both_keys():
    message = r"^pose\.gradient_ratio needs the semi regime, got regime 'supervised'$"
    with pytest.raises(ValueError, match=message):
        NVSModule(regime="supervised", **NVS_TINY, pose={"gradient_ratio": 0.1})
    message = r"^geometry\.equivariance_weight > 0 compares both views' latents: set pairs\.both_directions$"
    with pytest.raises(ValueError, match=message):
        NVSModule(**NVS_TINY, geometry={"equivariance_weight": 1.0}, pairs={"both_directions": False})
    message = r"^geometry\.opacity_weight > 0 trains the points' opacities: set encoder\.opacity$"
    with pytest.raises(ValueError, match=message):
        NVSModule(**NVS_TINY, geometry={"opacity_weight": 1.0})


def test_cli_nests_the_nvs_groups_and_a_stacked_recipe_changes_only_its_keys(tmp_path):
    flags = [
        "--model.init_args.decoder.splat=true",
        "--model.init_args.geometry.point_silhouette_weight=1.0",
        "--model.init_args.pose.weight=0.5",
    ]
    model = make_cli(["-c", str(NVS_CONF), *flags], run=False).model
    # nvs_tiny.yaml sets the widths of encoder and decoder; the flags one key each of three groups
    assert model.options.decoder == DecoderOptions(widths=[16, 8], latent_channels=8, splat=True)
    assert model.options.encoder == EncoderOptions(widths=[8, 16], blocks=[1, 1])
    assert model.options.geometry == GeometryOptions(point_silhouette_weight=1.0)
    assert model.options.pose == PoseOptions(weight=0.5) and model.hparams["pose"]["views"] == "all"
    # the Panoptic recipe changes the threshold over the recipe it stacks on; the rest stays the recipe's (its
    # model section alone: its data needs CMU Panoptic on disk)
    recipes = Path(__file__).parents[1] / "experiments"
    model = yaml.safe_load((recipes / "nvs_semi_panoptic.yaml").read_text())["model"]
    (tmp_path / "panoptic.yaml").write_text(yaml.safe_dump({"model": model}))
    # nvs_tiny.yaml's two encoder widths and 20 points take Rhodin's linear point head, not the recipe's cells
    (tmp_path / "linear.yaml").write_text(
        "model: {init_args: {encoder: {point_head: linear, opacity: false, depth_samples: 1}, "
        "geometry: {opacity_weight: 0.0}}}\n"
    )
    configs = [
        recipes / "model" / "nvs_semi.yaml",
        NVS_CONF,
        tmp_path / "linear.yaml",
        tmp_path / "panoptic.yaml",
    ]
    panoptic = make_cli([arg for c in configs for arg in ("-c", str(c))], run=False).model
    assert panoptic.options.synthesis == SynthesisOptions(silhouette_threshold=0.1)
    assert panoptic.options.decoder.mask_from_points and tuple(panoptic.options.pose_head.hidden) == (32, 32)
    assert panoptic.options.pose == PoseOptions(weight=0.01) and panoptic.silhouette_threshold == 0.1


@pytest.mark.parametrize(
    ("flat", "value", "new"),
    [
        ("decoder_splat", "true", "decoder: {splat: ...}"),
        ("latent_dropout", "0.1", "decoder: {dropout: ...}"),
        ("encoder_point_head", "pixel_aligned", "encoder: {point_head: ...}"),
        ("pose_hidden", "[64]", "pose_head: {hidden: ...}"),
        ("pose_head_rows", "all", "pose_head: {rows: ...}"),
        ("swap_probability", "1.0", "pairs: {swap_probability: ...}"),
        ("pose_weight", "0.1", "pose: {weight: ...}"),
        ("synthesis_warmup_steps", "5", "pose: {start_step: ...}"),
        ("structural_loss", "ssim", "synthesis: {structural: ...}"),
        ("silhouette_threshold", "0.1", "synthesis: {silhouette_threshold: ...}"),
        ("synthesis_items", "unlabeled", "synthesis: {items: ...}"),
        ("latent_equivariance_weight", "1.0", "geometry: {equivariance_weight: ...}"),
        ("own_view_silhouette_weight", "1.0", "geometry: {own_view_weight: ...}"),
    ],
)
def test_flat_nvs_option_names_its_group_in_one_line(flat, value, new, tmp_path, capsys):
    assert NVSModule.moved_arguments[flat] == new
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(NVS_CONF), f"--model.init_args.{flat}={value}"], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"NVSModule: `{flat}` moved to `{new}`" in err[0], err
    # the same key in a YAML file (a recipe or a run's config.yaml written before the groups)
    old = tmp_path / "old.yaml"
    old.write_text(f"model:\n  init_args:\n    {flat}: {value}\n")
    with pytest.raises(SystemExit):
        run(["fit", "-c", str(NVS_CONF), "-c", str(old)], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"`{flat}` moved to `{new}`" in err[0], err


def test_every_flat_nvs_argument_has_a_place():
    names = set(NVSModule.moved_arguments)
    assert len(names) == 4 + 31  # the optimiser's and the 31 options NVSModule took flat
    assert names == {flat for flat, (argument, _) in FLAT_ARGUMENTS.items() if argument in NVS_GROUPS}
    assert not names & set(SemiHandModule.moved_arguments) - set(SupervisedModule.moved_arguments)


def test_upgrade_moves_flat_nvs_arguments_into_their_groups():
    assert upgrade_hparams({**NVS_FLAT, "regime": "semi", "image_size": 32}) == {
        **NVS_GROUPED,
        "regime": "semi",
        "image_size": 32,
    }
    new = {**NVS_GROUPED, "num_points": 20}
    assert upgrade_hparams(new) == new


def old_nvs_checkpoint(tmp_path) -> tuple[Path, NVSModule]:
    """An NVS checkpoint as earlier versions wrote it: every option a flat argument (NVS_FLAT's, or default)."""
    module = NVSModule(image_size=32, num_points=20, appearance_dim=8, **NVS_GROUPED)  # nvs_tiny.yaml's sizes
    module.pose_head.set_statistics(torch.zeros(21, 3), torch.full((21, 3), 30.0))  # a trained head's
    hparams = {k: v for k, v in module.hparams.items() if k not in GROUPS}
    for name, (argument, key) in FLAT_ARGUMENTS.items():
        if argument in NVS_GROUPS:
            hparams[name] = module.hparams[argument][key]
    hparams.update(FLAT, _class_path="handssl.models.NVSModule")
    hparams["_instantiator"] = "pytorch_lightning.cli.instantiate_module"
    path = tmp_path / "old_nvs.ckpt"
    state = {"pytorch-lightning_version": pl.__version__, "state_dict": module.state_dict()}
    torch.save({**state, "hyper_parameters": hparams}, path)
    return path, module


def test_old_nvs_checkpoint_loads_with_its_flat_settings(tmp_path):
    path, module = old_nvs_checkpoint(tmp_path)
    loaded = NVSModule.load_from_checkpoint(path, map_location="cpu")
    for argument, values in NVS_GROUPED.items():
        assert getattr(loaded.options, argument) == GROUPS[argument](**values), argument
    assert loaded.optimization == Optimization(**FLAT) and loaded.pose_weight == 0.5
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())
    # and through the CLI, which reads the checkpoint's hyper-parameters into the config
    run(["validate", "-c", str(NVS_CONF), "--ckpt_path", str(path), "--run_name", "old"], tmp_path)
    config = yaml.safe_load((tmp_path / "runs" / "old" / "version_0" / "config.yaml").read_text())
    init_args = config["model"]["init_args"]
    for argument, values in NVS_GROUPED.items():
        expected = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # YAML lists
        assert init_args[argument] == {**asdict(GROUPS[argument]()), **expected}, argument


@pytest.mark.parametrize("name", [n for n in pretrained.available() if n.startswith("nvs-")])
def test_shipped_nvs_weights_load_and_predict(name):
    module = pretrained.load(name)
    assert isinstance(module, NVSModule) and module.options.encoder == EncoderOptions()
    with torch.no_grad():
        joints = module.eval().predict_pose(torch.rand(2, 3, 64, 64))
    assert joints.shape == (2, 21, 3) and torch.isfinite(joints).all()


def test_shipped_nvs_weights_written_flat_through_the_cli(tmp_path):
    """``--ckpt_path nvs-semi-synthhands``: the shipped flat options become the run's groups, and it validates."""
    stored = pretrained._payload("nvs-semi-synthhands", "cpu", None)["hparams"]
    args = ["-c", str(NVS_CONF), "--data.init_args.image_size=64", "--trainer.limit_val_batches=1"]
    run(["validate", *args, "--ckpt_path", "nvs-semi-synthhands", "--run_name", "shipped"], tmp_path)
    config = yaml.safe_load((tmp_path / "runs" / "shipped" / "version_0" / "config.yaml").read_text())
    init_args = config["model"]["init_args"]
    for name, (argument, key) in FLAT_ARGUMENTS.items():
        if argument in NVS_GROUPS[1:]:
            value = stored.get(name, getattr(GROUPS[argument](), key))  # a key written later: its default
            assert init_args[argument][key] == (list(value) if isinstance(value, tuple) else value), name
