"""A shipped name works wherever a checkpoint does: ``--ckpt_path semihand-synthhands`` (issue 22, item 1)."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import handssl.pretrained as pretrained
from handssl.cli import main

NAME = "semihand-synthhands"
pytestmark = pytest.mark.skipif(NAME not in pretrained.available(), reason=f"{NAME} is not shipped")

SYNTH = {
    "num_subjects": 1,
    "sequences_per_subject": 1,
    "frames_per_sequence": 4,
    "chunk_size": 4,
}
TINY_SEMI = {
    "seed_everything": 0,
    "trainer": {
        "max_steps": 1,
        "accelerator": "cpu",
        "devices": 1,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "log_every_n_steps": 1,
    },
    "model": {"class_path": "handssl.models.SemiHandModule"},
    "data": {
        "class_path": "handssl.data.SemiSupervisedDataModule",
        "init_args": {
            "image_size": 64,
            "batch_size": 4,
            "unlabeled_fraction": 0.5,
            **{
                split: [
                    {
                        "class_path": "handssl.data.SynthHands",
                        "init_args": {
                            "split": which,
                            "world": {
                                "class_path": "handssl.data.SynthHandsWorld",
                                "init_args": {"style": style, "image_size": 64},
                            },
                            **SYNTH,
                        },
                    }
                ]
                for split, which, style in (
                    ("labeled", "train", "synthetic"),
                    ("unlabeled", "train", "real"),
                    ("val", "val", "real"),
                    ("test", "test", "real"),
                )
            },
        },
    },
}


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One materialised checkpoint for the whole module, in a temporary cache."""
    folder = tmp_path_factory.mktemp("cache")
    old = os.environ.get("HANDSSL_CACHE")
    os.environ["HANDSSL_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("HANDSSL_CACHE")
    else:
        os.environ["HANDSSL_CACHE"] = old


def run(args, tmp_path):
    main([*args, "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"])


@pytest.fixture
def semi_config(tmp_path) -> Path:
    path = tmp_path / "semi_tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SEMI))
    return path


def test_materialised_checkpoint_is_written_once_and_holds_the_shipped_weights(tmp_path, cache, monkeypatch):
    path = pretrained.lightning_checkpoint(NAME)
    assert path.parent == cache / "checkpoints" and path.suffix == ".ckpt"
    assert pretrained.info(NAME)["sha256"].startswith(path.stem.rsplit("-", 1)[1])
    mtime = path.stat().st_mtime_ns
    assert pretrained.lightning_checkpoint(NAME) == path and path.stat().st_mtime_ns == mtime
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["_class_path"] == "handssl.models.SemiHandModule"
    assert "optimizer_states" not in checkpoint  # nothing to resume: fine-tuning starts afresh
    model = pretrained.load(NAME)
    for key, value in model.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][key], value), key
    # An unwritable cache falls back to the temporary folder.
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    fallback = pretrained.lightning_checkpoint(NAME, cache=blocked)
    assert fallback.is_file() and blocked not in fallback.parents
    # Nowhere to write: one line naming both places.
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(blocked))
    with pytest.raises(pretrained.PretrainedError, match="cannot write the checkpoint") as info:
        pretrained.lightning_checkpoint(NAME, cache=blocked / "sub")
    assert "\n" not in str(info.value) and str(info.value).count(str(blocked)) == 2


def test_resolve_ckpt_path_keeps_files_and_lightning_values_and_names_the_shipped_ones(tmp_path):
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"x")
    assert pretrained.resolve_ckpt_path(str(ckpt)) == str(ckpt)
    assert pretrained.resolve_ckpt_path(None) is None
    for value in ("last", "best", "hpc", "s3://bucket/a.ckpt"):
        assert pretrained.resolve_ckpt_path(value) == value
    assert Path(pretrained.resolve_ckpt_path(NAME)).is_file()
    with pytest.raises(pretrained.PretrainedError) as info:
        pretrained.resolve_ckpt_path("semihand-nope")
    message = str(info.value)
    assert "\n" not in message and "'semihand-nope'" in message
    assert all(name in message for name in pretrained.available())


def test_predict_on_a_folder_with_a_shipped_name(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(120, 80), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    config = Path(__file__).parents[1] / "experiments" / "predict_images.yaml"
    run(["predict", "-c", str(config), "--data.init_args.root", str(photos), "--ckpt_path", NAME], tmp_path)
    run_dir = tmp_path / "runs" / "predict_images" / "version_0"
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["p0.png", "p1.png"]
    assert all(np.isfinite(np.asarray(r["joints3d"], dtype=float)).all() for r in rows)
    assert all(len(r["confidence"]) == 21 for r in rows)  # a SemiHand network was rebuilt
    # The saved config keeps the name (rerunnable anywhere), not the cache path.
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["ckpt_path"] == NAME


def test_validate_and_test_with_a_shipped_name(tmp_path, semi_config):
    run(["validate", "-c", str(semi_config), "--ckpt_path", NAME, "--run_name", "val"], tmp_path)
    run(["test", "-c", str(semi_config), "--ckpt_path", NAME, "--run_name", "test"], tmp_path)
    metrics = json.loads((tmp_path / "runs" / "test" / "version_0" / "test_metrics.json").read_text())
    # The shipped network, not a fresh one: real-style test hands at SynthHands' scale (a fresh network is
    # hundreds of mm off).
    assert 0 < metrics["test/mpjpe"] < 90


def test_fit_fine_tunes_from_the_shipped_weights_without_resuming(tmp_path, semi_config):
    run(["fit", "-c", str(semi_config), "--ckpt_path", NAME, "--run_name", "tune"], tmp_path)
    ckpt = next((tmp_path / "runs" / "tune" / "version_0" / "checkpoints").glob("*.ckpt"))
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["global_step"] == 1  # one step from step 0, with a fresh optimizer
    shipped = pretrained.load(NAME)
    lr = shipped.optimization.lr
    for key, value in shipped.named_parameters():
        # One AdamW step moves a weight by at most about lr (a fresh network differs by ~0.1 or more).
        assert (checkpoint["state_dict"][key] - value).abs().max() <= 1.01 * lr, key
    assert checkpoint["semihand"]["ema_updates"] == shipped.ema_updates + 1


def test_unknown_name_is_one_line_listing_the_shipped_names(tmp_path, semi_config, capsys):
    for args in (
        ["test", "-c", str(semi_config), "--ckpt_path", "semihand-nope"],
        ["export", "--ckpt_path", "semihand-nope", "--output", str(tmp_path / "m.onnx")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            run(args, tmp_path) if args[0] != "export" else main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("handssl: error: checkpoint not found: 'semihand-nope'")
        assert NAME in err[0]


def test_export_a_shipped_name(tmp_path, capsys):
    pytest.importorskip("onnx")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", NAME, "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 0
    assert (tmp_path / "m.onnx").stat().st_size > 100_000
    assert "K (B, 3, 3)" in capsys.readouterr().out
