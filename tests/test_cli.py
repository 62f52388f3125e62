import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from handssl.cli import main
from handssl.data.fakes import make_fake_rhd
from handssl.models import SupervisedModule
from handssl.models.base import NonFiniteError, check_batch
from handssl.models.options import Optimization

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"
REPO = Path(__file__).parents[1]


def run(args, tmp_path):
    main([*args, "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"])


def test_fast_dev_run_quickstart_config(tmp_path):
    overrides = [
        "--trainer.fast_dev_run=true",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=4",
        "--test_after_fit=true",
    ]
    for split in ("train", "val", "test"):
        overrides += [
            f"--data.init_args.{split}.init_args.num_subjects=1",
            f"--data.init_args.{split}.init_args.sequences_per_subject=1",
            f"--data.init_args.{split}.init_args.frames_per_sequence=4",
            f"--data.init_args.{split}.init_args.chunk_size=4",
        ]
    run(["fit", "-c", str(REPO / "experiments" / "quickstart.yaml"), *overrides], tmp_path)
    # A smoke run keeps to its own folder: no checkpoint (quickstart's ModelCheckpoint has save_last), no
    # version folder mixed up with real runs; only the test after fit's metrics.
    files = sorted(p.relative_to(tmp_path / "runs") for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert files == [Path("quickstart/fast_dev_run/test_metrics.json")]


def test_fit_twice_in_one_folder_then_test_writes_metrics(tmp_path):
    run(["fit", "-c", str(CONF)], tmp_path)
    run(["fit", "-c", str(CONF)], tmp_path)  # a second run must not trip over the first one's config.yaml
    runs = sorted((tmp_path / "runs" / "supervised_tiny").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for r in runs:
        config = (r / "config.yaml").read_text()
        assert "SupervisedModule" in config and "image_size: 32" in config  # resolved interpolation
    ckpt = next((runs[0] / "checkpoints").glob("*.ckpt"))
    run(["test", "-c", str(CONF), "--ckpt_path", str(ckpt), "--run_name", "evaluated"], tmp_path)
    metrics = json.loads((tmp_path / "runs" / "evaluated" / "version_0" / "test_metrics.json").read_text())
    assert {"test/mpjpe", "test/n_mpjpe", "test/pa_mpjpe", "test/synthhands/auc"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert 0 < metrics["test/mpjpe"] < 1000


def test_print_config_resolves_interpolation(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(CONF), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "${" not in out and "image_size: 32" in out and "class_path: handssl.data.SynthHands" in out


def test_help_lists_every_command_without_warnings(capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: handssl")
    for command in ("fit", "validate", "test", "predict", "export", "data check"):
        assert f"\n  {command} " in out
    # LightningCLI warned on every command that ``args`` and ``sys.argv`` were both given.
    assert not [w for w in caught if "args parameter" in str(w.message)]


def test_short_class_names_for_models_data_modules_and_datasets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "-c",
                str(CONF),
                "--model=SemiHandModule",
                "--data=SupervisedDataModule",
                "--data.init_args.test=RHD",
                "--data.init_args.test.init_args.root=/nowhere",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: handssl.models.SemiHandModule" in out
    assert "class_path: handssl.data.SupervisedDataModule" in out
    assert "class_path: handssl.data.RHD" in out


def test_bad_choice_is_one_clear_line(tmp_path, capsys, monkeypatch):
    args = ["test", "-c", str(CONF), "--model.init_args.eval_protocol=stbb"]
    with pytest.raises(SystemExit) as exit_info:
        run(args, tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Does not validate" not in err
    assert err.strip().splitlines()[-1] == (
        "handssl: error: unknown evaluation protocol 'stbb'; valid names: dexter_object, freihand, rhd, stb, synthhands"
    )
    monkeypatch.setenv("HANDSSL_DEBUG", "1")
    with pytest.raises(ValueError, match="stbb"):
        run(args, tmp_path)


def test_wandb_run_has_no_false_log_dir_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            main(["fit", "-c", str(CONF), "--runs_dir", str(tmp_path / "runs"), "--wandb", "offline"])
        finally:
            wandb.finish()
    run_dir = tmp_path / "runs" / "supervised_tiny" / "version_0"
    assert (run_dir / "metrics.csv").exists() and list((run_dir / "wandb").glob("offline-run-*"))
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]


def test_unknown_config_key_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(CONF), "--model.init_args.no_such_option=3"], tmp_path)
    assert exit_info.value.code != 0
    assert "no_such_option" in capsys.readouterr().err


def test_wrong_dataset_root_gives_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(
            [
                "test",
                "-c",
                str(CONF),
                "--data.init_args.test=handssl.data.RHD",
                f"--data.init_args.test.init_args.root={tmp_path / 'nowhere'}",
                "--data.init_args.test.init_args.split=evaluation",
            ],
            tmp_path,
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "not found" in err and "Traceback" not in err


def test_real_dataset_through_the_cli(tmp_path):
    root = make_fake_rhd(tmp_path / "RHD")
    run(
        [
            "test",
            "-c",
            str(CONF),
            "--run_name",
            "rhd",
            "--data.init_args.test=handssl.data.RHD",
            f"--data.init_args.test.init_args.root={root}",
            "--data.init_args.test.init_args.split=evaluation",
            "--model.init_args.eval_protocol=rhd",
        ],
        tmp_path,
    )
    metrics = json.loads((tmp_path / "runs" / "rhd" / "version_0" / "test_metrics.json").read_text())
    assert "test/rhd/auc" in metrics


def test_data_check_subcommand(tmp_path):
    root = make_fake_rhd(tmp_path / "RHD")
    proc = subprocess.run(
        [sys.executable, "-m", "handssl", "data", "check", "rhd", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "training" in proc.stdout and "evaluation" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "handssl", "data", "check", "rhd", "--root", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "missing" in (proc.stdout + proc.stderr)


def test_nan_in_a_batch_is_named():
    batch = {
        "image": torch.rand(3, 3, 32, 32),
        "joints3d": torch.randn(3, 21, 3),
        "joints2d": torch.rand(3, 21, 2),
        "valid": torch.ones(3, 21, dtype=torch.bool),
        "meta": {"dataset": ["a", "b", "c"], "frame": [0, 1, 2]},
    }
    check_batch(batch)
    batch["joints3d"][1, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"joints3d.*samples \[1\].*frame=1"):
        check_batch(batch)
    batch["valid"][1, 5] = False  # missing annotations may be NaN
    check_batch(batch)
    batch["image"][2, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"image.*\[2\]"):
        check_batch(batch)


def test_non_finite_loss_stops_training():
    model = SupervisedModule(backbone_widths=(8, 8, 8, 8), head_hidden=(8,))
    model.log = lambda *a, **k: None
    batch = {
        "image": torch.rand(2, 3, 32, 32),
        "joints3d": torch.randn(2, 21, 3),
        "joints2d": torch.rand(2, 21, 2),
        "valid": torch.ones(2, 21, dtype=torch.bool),
    }
    healthy_forward = model.forward
    model.forward = lambda image: (
        torch.full((2, 21, 3), float("nan")),
        torch.zeros(2, 21, 2),
    )  # diverged weights
    with pytest.raises(NonFiniteError, match="not finite at step"):
        model.training_step(batch, 0)
    model.forward = healthy_forward
    assert torch.isfinite(model.training_step(batch, 0))
    batch["joints3d"][0, 3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="joints3d"):
        model.training_step(batch, 0)


def test_predict_writes_predictions_of_the_checkpoint(tmp_path):
    from handssl.data import SupervisedDataModule, SynthHands, SynthHandsWorld

    run(["fit", "-c", str(CONF)], tmp_path)
    ckpt = next((tmp_path / "runs" / "supervised_tiny" / "version_0" / "checkpoints").glob("*.ckpt"))
    run(["predict", "-c", str(CONF), "--ckpt_path", str(ckpt), "--run_name", "pred"], tmp_path)
    preds = torch.load(tmp_path / "runs" / "pred" / "version_0" / "predictions.pt")
    # The tiny config's test split (predict defaults to it): 4 items, in dataset order.
    assert preds["index"].tolist() == [0, 1, 2, 3]
    assert preds["joints3d"].shape == (4, 21, 3) and preds["joints3d"].dtype == torch.float32
    assert preds["meta"]["dataset"] == ["synthhands"] * 4 and preds["meta"]["frame"] == [0, 1, 2, 3]
    # The same numbers as the checkpoint's model run by hand on the same items.
    model = SupervisedModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    test = SynthHands(
        split="test",
        world=SynthHandsWorld(image_size=32),
        num_subjects=1,
        sequences_per_subject=1,
        frames_per_sequence=4,
        chunk_size=4,
    )
    data = SupervisedDataModule(image_size=32, batch_size=4, test=test)
    data.setup("predict")
    (batch,) = list(data.predict_dataloader())
    with torch.no_grad():
        expected = model.predict_joints3d(batch)
    assert torch.allclose(preds["joints3d"], expected, atol=1e-5)
    assert not torch.allclose(expected, torch.zeros_like(expected))
    # predictions.jsonl: one line per item with its id, 2D joints in image pixels, root-relative and
    # camera-frame 3D joints (the labels give the root here).
    lines = (tmp_path / "runs" / "pred" / "version_0" / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [f"synthhands/{i}" for i in range(4)]
    with torch.no_grad():
        expected3d, expected2d = model(batch["image"])
    for i, row in enumerate(rows):
        assert np.asarray(row["joints2d"]).shape == (21, 2)
        assert np.allclose(row["joints2d"], expected2d[i].numpy(), atol=1e-3)
        assert np.allclose(row["joints3d"], expected3d[i].numpy(), atol=1e-3)
        root = batch["joints3d"][i, 0].numpy()
        assert np.allclose(row["joints3d_camera"], expected3d[i].numpy() + root, atol=1e-3)
        assert "confidence" not in row


def test_choices_are_literals_shown_in_help_and_rejected_at_parse_time(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(CONF), "--model.help", "SupervisedModule"])
    assert exit_info.value.code == 0
    assert "--model.optimizer.scheduler {cosine,none}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(CONF), "--model.init_args.optimizer.scheduler=cosin"], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handssl: error: ")  # not jsonargparse's 60-line report
    assert "Expected a typing.Literal['cosine', 'none']. Got value: cosin" in err[0]
    assert not (tmp_path / "runs").exists()  # rejected before anything was built or written
    # Direct Python use keeps its clear ValueError.
    with pytest.raises(ValueError, match="scheduler must be 'cosine' or 'none'"):
        SupervisedModule(optimizer=Optimization(scheduler="cosin"))


@pytest.mark.parametrize("option", ["--optimizer=Adam", "--lr_scheduler", "--optimizer.lr=0.1"])
def test_optimizer_and_lr_scheduler_are_refused_in_one_line(tmp_path, capsys, option):
    args = ["fit", "-c", str(CONF), *option.split(" ")]
    if option == "--lr_scheduler":
        args.append("StepLR")
    with pytest.raises(SystemExit) as exit_info:
        run(args, tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handssl: error: --")
    assert "is not supported" in err[0] and "--model.init_args.optimizer.lr" in err[0]


def test_top_level_help_is_fast_and_imports_no_lightning():
    code = (
        "import sys, time; t = time.perf_counter(); sys.argv = ['handssl', '--help']\n"
        "from handssl.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print('LIGHTNING' if 'pytorch_lightning' in sys.modules else 'LIGHT', time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    verdict, seconds = out.strip().splitlines()[-1].split()
    assert verdict == "LIGHT" and float(seconds) < 3.0
    assert "data check" in out and "export" in out


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("--trainer.max_steps=abc", "trainer.max_steps: Expected a <class 'int'>. Got value: abc"),
        ("--no_such_option", "unrecognized arguments: --no_such_option"),
    ],
)
def test_parse_errors_are_one_line(tmp_path, capsys, arg, expected):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(CONF), arg], tmp_path)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"handssl: error: {expected}"]


def test_a_moved_synthhands_argument_names_its_new_place(tmp_path, capsys):
    # A run's config.yaml from before the datasets took a world: flat world arguments on a dataset.
    old = CONF.read_text().replace("{split: val, world: *world,", "{split: val, style: real,")
    assert old != CONF.read_text()
    config = tmp_path / "old.yaml"
    config.write_text(old)
    moved = "SynthHands: `style` moved to `world: {class_path: handssl.data.SynthHandsWorld, init_args: {style: ...}}`"
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(config)], tmp_path)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"handssl: error: {config}: data.init_args.val.init_args.style: {moved}"
    ]
    with pytest.raises(SystemExit):
        run(["fit", "-c", str(CONF), "--data.init_args.train.init_args.seed=3"], tmp_path)
    assert capsys.readouterr().err.strip().splitlines() == [
        "handssl: error: --data.init_args.train.init_args.seed: SynthHands: `seed` moved to "
        "`world: {class_path: handssl.data.SynthHandsWorld, init_args: {seed: ...}}`"
    ]


# ------------------------------------------------------------------------------------ composed configs
EXPERIMENTS = REPO / "experiments"


def _configs(argv):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-c"]


def test_config_defaults_expand_before_the_file_in_order(tmp_path):
    import yaml

    from handssl._lightning_cli import ConfigError, expand_config_defaults

    (tmp_path / "sub").mkdir()
    base = tmp_path / "sub" / "base.yaml"
    base.write_text("trainer:\n  max_steps: 1\n  log_every_n_steps: 1\n")
    (tmp_path / "sub" / "mid.yaml").write_text("defaults: [base.yaml]\ntrainer:\n  max_steps: 2\n")
    top = tmp_path / "top.yaml"
    top.write_text("defaults: [sub/mid.yaml]\nmodel:\n  init_args: {lr: 0.5}\n")
    argv = expand_config_defaults(["fit", "-c", str(top), "--trainer.max_steps=3"])
    assert argv[0] == "fit" and argv[-1] == "--trainer.max_steps=3"  # options still override every file
    configs = _configs(argv)
    assert configs[0] == str(base)  # a file without defaults is passed on as it is
    # Then each including file's own keys (without `defaults`), innermost first: later ones override.
    assert [yaml.safe_load(c) for c in configs[1:]] == [
        {"trainer": {"max_steps": 2}},
        {"model": {"init_args": {"lr": 0.5}}},
    ]
    (tmp_path / "missing.yaml").write_text("defaults: [nowhere.yaml]\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: defaults names nowhere\.yaml"):
        expand_config_defaults(["-c", str(tmp_path / "missing.yaml")])
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        expand_config_defaults(["-c", str(tmp_path / "a.yaml")])
    (tmp_path / "bad.yaml").write_text("defaults: {model: x.yaml}\n")
    with pytest.raises(ConfigError, match="must be a list of config files"):
        expand_config_defaults(["-c", str(tmp_path / "bad.yaml")])


@pytest.mark.parametrize(
    "experiment, expected",
    [
        ("quickstart.yaml", ["SupervisedModule", "data/synthhands.yaml", "overrides"]),
        ("semihand_full.yaml", ["SemiHandModule", "data/synthhands_synthetic_to_real.yaml"]),
        ("semihand_full_rhd_stb.yaml", ["SemiHandModule", "data/rhd_to_stb.yaml", "overrides"]),
        ("nvs_semi_panoptic.yaml", ["NVSModule", "data/panoptic.yaml", "overrides"]),
    ],
)
def test_experiments_are_compositions_of_model_data_and_trainer_configs(experiment, expected):
    import yaml

    from handssl._lightning_cli import expand_config_defaults

    def source(config):  # a file passed on as it is, or the own keys of a file with defaults
        if "\n" not in config:
            return Path(config).resolve().relative_to(EXPERIMENTS.resolve()).as_posix()
        content = yaml.safe_load(config)
        return (
            content["model"]["class_path"].rsplit(".", 1)[-1]
            if "class_path" in content.get("model", {})
            else "overrides"
        )

    sources = [
        source(c) for c in _configs(expand_config_defaults(["fit", "-c", str(EXPERIMENTS / experiment)]))
    ]
    # Every model config stacks on the default trainer; the data config follows; the experiment's own keys last.
    assert sources == ["trainer/default.yaml", *expected]


def test_data_configs_hold_no_model_keys_and_write_image_size_once():
    import yaml

    for path in sorted((EXPERIMENTS / "data").glob("*.yaml")):
        text = path.read_text()
        config = yaml.safe_load(text)
        assert set(config) == {"data"}, path.name  # no model / trainer keys: they stack on any model config
        # an overlay (synthhands_fixed_crop.yaml) changes a few keys of a full data config, never image_size
        if "class_path" not in config["data"]:
            assert "image_size" not in text, path.name
            continue
        # image_size once, on the DataModule; the datasets interpolate it (and the model is linked to it).
        assert len(re.findall(r"image_size: \d+", text)) == 1, path.name
        assert config["data"]["init_args"]["image_size"] == 64, path.name


def test_unrelated_data_modules_in_one_command_are_one_line(tmp_path, capsys):
    # The earlier DataModules (configs written before issue 24) still may not be mixed.
    model, data = tmp_path / "model.yaml", tmp_path / "data.yaml"
    model.write_text("data:\n  class_path: handssl.data.SemiSupervisedDataModule\n")
    data.write_text("data:\n  class_path: handssl.data.MultiViewDataModule\n")
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(model), "-c", str(data)], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.yaml trains on SemiSupervisedDataModule" in err[0]
    assert "data.yaml gives a MultiViewDataModule" in err[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (
            "semihand",
            "rhd",
            "SemiHandViews: no unlabeled dataset configured but unlabeled_fraction 0.5 > 0: use a data config "
            "with data.init_args.unlabeled (e.g. experiments/data/rhd_to_stb.yaml) or unlabeled_fraction 0 "
            "(source only)",
        ),
        (
            "nvs_semi",
            "rhd",
            "NVSPairs reads multi-view items, but data.init_args.train is RHD, which has no multi-view form "
            "(no multi_view()); use a dataset with one (handssl.data.SynthHands, handssl.data.Panoptic) or a "
            "multi-view dataset",
        ),
    ],
)
def test_a_method_on_data_its_views_cannot_use_is_one_line(
    fake_data_root, tmp_path, monkeypatch, capsys, model, data, message
):
    monkeypatch.chdir(fake_data_root)
    model_config, data_config = EXPERIMENTS / "model" / f"{model}.yaml", EXPERIMENTS / "data" / f"{data}.yaml"
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(model_config), "-c", str(data_config)], tmp_path)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"handssl: error: {message}"]
    assert not (tmp_path / "runs").exists()


def test_one_data_config_serves_every_method_whose_views_fit(fake_data_root, tmp_path, monkeypatch):
    from handssl._lightning_cli import make_cli

    monkeypatch.chdir(fake_data_root)
    data = EXPERIMENTS / "data" / "rhd.yaml"
    for model, views in (("supervised", "SupervisedViews"), ("semihand_source_only", "SemiHandViews")):
        cli = make_cli(["-c", str(EXPERIMENTS / "model" / f"{model}.yaml"), "-c", str(data)], run=False)
        dm = cli.datamodule
        assert type(dm).__name__ == "HandDataModule" and type(dm.views).__name__ == views
        assert type(dm.datasets["train"]).__name__ == "RHD" and dm.datasets["unlabeled"] is None


TINY_SYNTHHANDS = [
    f"--data.init_args.{split}.init_args.{key}={value}"
    for split in ("train", "val", "test")
    for key, value in (("num_subjects", 1), ("sequences_per_subject", 2), ("frames_per_sequence", 2))
]


@pytest.mark.parametrize(
    "model, views, dataset",
    [
        ("supervised", "SupervisedViews", "SynthHands"),
        ("semihand_source_only", "SemiHandViews", "SynthHands"),
        ("nvs_semi", "NVSPairs", "SynthHandsMultiView"),
    ],
)
def test_the_one_synthhands_data_config_serves_single_and_multi_view_methods(model, views, dataset):
    from handssl._lightning_cli import make_cli

    data = EXPERIMENTS / "data" / "synthhands.yaml"
    args = ["-c", str(EXPERIMENTS / "model" / f"{model}.yaml"), "-c", str(data), "--trainer.logger=false"]
    dm = make_cli([*args, *TINY_SYNTHHANDS, "--data.init_args.batch_size=2"], run=False).datamodule
    dm.setup("fit")
    assert type(dm.views).__name__ == views
    for split in ("train", "val", "test"):
        items = dm.datasets[split]
        assert type(items).__name__ == dataset and items.split == split and len(items) == 4
        assert (items.num_subjects, items.sequences_per_subject, items.frames_per_sequence) == (1, 2, 2)
    assert dm.datasets["predict"] is dm.datasets["test"]
    assert dm.train_dataloader() is not None  # each method builds its training loader on it


def test_nvs_pairs_read_a_single_view_dataset_through_its_multi_view_form():
    from torch.utils.data import ConcatDataset

    from handssl.data import NVSPairs, SynthHands, SynthHandsMultiView, SynthHandsWorld

    world = SynthHandsWorld(image_size=32)
    single = SynthHands("val", world=world, num_subjects=2, sequences_per_subject=2, frames_per_sequence=3)
    views = NVSPairs(multi_view_arguments={"val": {"frames_per_sequence": 2}})
    adapted = views.adapt({"val": single, "test": ConcatDataset([single]), "unlabeled": single}, 32)
    form = adapted["val"]
    assert isinstance(form, SynthHandsMultiView) and form.world is world and form.num_views == 2
    assert (form.split, form.num_subjects, form.sequences_per_subject, form.frames_per_sequence) == (
        "val",
        2,
        2,
        2,
    )
    assert isinstance(adapted["test"].datasets[0], SynthHandsMultiView)
    assert adapted["test"].datasets[0].frames_per_sequence == 3
    assert adapted["unlabeled"] is single  # NVS reads no unlabelled set; check() names it if given
    given = SynthHandsMultiView("val", world=world, num_subjects=1, frames_per_sequence=2)
    assert views.adapt({"val": given}, 32)["val"] is given  # multi-view datasets are used as named
    with pytest.raises(ValueError, match="multi_view_arguments: unknown split"):
        NVSPairs(multi_view_arguments={"validation": {}})


def test_a_dataset_without_a_multi_view_form_is_one_line():
    from torch.utils.data import TensorDataset

    dataset = TensorDataset(torch.zeros(2))
    with pytest.raises(ValueError) as error:
        from handssl.data import NVSPairs

        NVSPairs().adapt({"train": dataset}, 64)
    assert str(error.value).count("\n") == 0
    assert "data.init_args.train is TensorDataset, which has no multi-view form" in str(error.value)


def test_an_option_of_the_earlier_data_modules_names_its_new_place(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(
            ["fit", "-c", str(EXPERIMENTS / "semihand_full.yaml"), "--data.init_args.unlabeled_fraction=0"],
            tmp_path,
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "handssl: error: --data.init_args.unlabeled_fraction: HandDataModule: `unlabeled_fraction` moved to "
        "`views: {class_path: handssl.data.SemiHandViews, init_args: {unlabeled_fraction: ...}}`"
    ]


def test_data_eval_protocol_is_the_test_sets():
    from handssl._lightning_cli import data_eval_protocol

    def spec(name):
        return {"class_path": f"handssl.data.{name}", "init_args": {"root": "x"}}

    assert data_eval_protocol({"init_args": {"test": spec("STB"), "val": spec("RHD")}}) == "stb"
    assert data_eval_protocol({"init_args": {"test": [spec("DexterObject")], "val": None}}) == "dexter_object"
    assert data_eval_protocol({"init_args": {"test": None, "val": spec("FreiHAND")}}) == "freihand"
    assert data_eval_protocol({"init_args": {"test": spec("RHD")}}) == "rhd"
    # Datasets that name no protocol of their own, and the SynthHands defaults: root-relative wrist MPJPE.
    assert data_eval_protocol({"init_args": {"test": spec("PanopticMultiView")}}) == "synthhands"
    assert (
        data_eval_protocol({"class_path": "handssl.data.SupervisedDataModule", "init_args": {}})
        == "synthhands"
    )


@pytest.fixture(scope="module")
def fake_data_root(tmp_path_factory):
    from handssl.data.fakes import make_fake_stb

    root = tmp_path_factory.mktemp("composed")
    make_fake_rhd(root / "data" / "RHD", num_samples=4)
    make_fake_stb(root / "data" / "STB", num_frames=1)
    return root


def test_model_and_data_configs_compose_with_linked_image_size_and_protocol(
    fake_data_root, tmp_path, monkeypatch
):
    from handssl._lightning_cli import make_cli

    monkeypatch.chdir(fake_data_root)  # the data configs' data/RHD, data/STB are the fakes
    model, data = EXPERIMENTS / "model" / "semihand.yaml", EXPERIMENTS / "data" / "rhd_to_stb.yaml"
    common = ["--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"]
    cli = make_cli(["-c", str(model), "-c", str(data), "--data.init_args.image_size=48", *common], run=False)
    hp = cli.model.hparams
    assert type(cli.model).__name__ == "SemiHandModule"
    assert hp.unsupervised == {"start_step": 3000, "ramp_steps": 200}  # the model file
    assert hp.image_size == 48 and cli.datamodule.image_size == 48  # one value, set on the data, linked
    assert hp.eval_protocol == "stb"  # named by the STB test set, not written in any config
    dm = cli.datamodule
    assert type(dm).__name__ == "HandDataModule" and dm.views.unlabeled_fraction == 0.5  # the model file
    assert type(dm.datasets["train"]).__name__ == "RHD" and type(dm.datasets["test"]).__name__ == "STB"
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert "PseudoLabelExport" in names and "ModelCheckpoint" in names  # model file + trainer/default.yaml
    assert cli.trainer.max_steps == 6000
    # An explicit protocol still wins over the data's.
    cli = make_cli(
        ["-c", str(model), "-c", str(data), "--model.init_args.eval_protocol=rhd", *common], run=False
    )
    assert cli.model.hparams.eval_protocol == "rhd" and cli.model.hparams.image_size == 64


def test_model_image_size_against_the_data_is_one_line(tmp_path, capsys):
    model, data = EXPERIMENTS / "model" / "nvs_semi.yaml", EXPERIMENTS / "data" / "synthhands.yaml"
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(model), "-c", str(data), "--model.init_args.image_size=32"], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "handssl: error: model.init_args.image_size 32 (from a config or the command line) differs from "
        "data.init_args.image_size 64: the model's image_size follows the data's, so set "
        "--data.init_args.image_size=32"
    ]
    # A checkpoint trained at another size than the data's: the same line, naming the checkpoint.
    ckpt = tmp_path / "nvs32.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "handssl.models.NVSModule", "image_size": 32}}, ckpt)
    with pytest.raises(SystemExit) as exit_info:
        run(["test", "-c", str(model), "-c", str(data), "--ckpt_path", str(ckpt)], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_size 32 (from the checkpoint's hyper-parameters)" in err[0]


@pytest.mark.parametrize(
    ("model", "data", "views", "option", "value"),
    [
        (
            "SupervisedModule",
            "SupervisedDataModule: {crop_margin: 0.5}",
            "SupervisedViews",
            "crop_margin",
            0.5,
        ),
        (
            "SemiHandModule",
            "SemiSupervisedDataModule: {unlabeled_fraction: 0.25, augment_on: batch}",
            "SemiHandViews",
            "unlabeled_fraction",
            0.25,
        ),
        (
            "NVSModule",
            "MultiViewDataModule: {labeled_subjects: 1, labeled_share: 0.5}",
            "NVSPairs",
            "labeled_subjects",
            1,
        ),
    ],
)
def test_configs_written_before_the_views_still_load(tmp_path, model, data, views, option, value):
    # A run's config.yaml from before issue 24 names one of the earlier DataModules with its flat options.
    from handssl._lightning_cli import make_cli

    name, init_args = data.split(": ", 1)
    config = tmp_path / "old.yaml"
    config.write_text(
        f"model: {{class_path: handssl.models.{model}}}\n"
        f"data: {{class_path: handssl.data.{name}, init_args: {init_args}}}\n"
    )
    dm = make_cli(["-c", str(config), "--trainer.logger=false"], run=False).datamodule
    assert type(dm).__name__ == name and type(dm.views).__name__ == views
    assert getattr(dm.views, option) == value
