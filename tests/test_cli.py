import json
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
    from handssl.data import SupervisedDataModule, SynthHands

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
        image_size=32,
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
    assert "--model.scheduler {cosine,none}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(CONF), "--model.init_args.scheduler=cosin"], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handssl: error: ")  # not jsonargparse's 60-line report
    assert "Expected a typing.Literal['cosine', 'none']. Got value: cosin" in err[0]
    assert not (tmp_path / "runs").exists()  # rejected before anything was built or written
    # Direct Python use keeps its clear ValueError.
    with pytest.raises(ValueError, match="scheduler must be 'cosine' or 'none'"):
        SupervisedModule(scheduler="cosin")


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
    assert "is not supported" in err[0] and "--model.init_args.lr" in err[0]


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
