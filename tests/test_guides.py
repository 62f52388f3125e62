"""The README's *Add a method* and *Add a dataset* guides, followed once each through the command line.

The toy method and dataset live in ``tests/toys`` (standing in for ``handssl/models/heatmap.py`` and
``handssl/data/myhands.py``); the recipes and data configs are the guides' YAML, written into ``tmp_path``.
"""

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from handssl.cli import main
from handssl.data import DatasetError, check_sample
from handssl.data.fakes import make_fake_rhd
from handssl.geometry import project

sys.path.insert(0, str(Path(__file__).parent))

from toys.toy_dataset import ToyHands, make_fake_toyhands
from toys.toy_method import ToyHeatmapModule

REPO = Path(__file__).parents[1]

METHOD_RECIPE = """\
defaults: [../trainer/default.yaml]
model:
  class_path: toys.toy_method.ToyHeatmapModule
  init_args: {optimizer: {lr: 1.0e-3}}
data:
  class_path: handssl.data.HandDataModule
  init_args:
    views: {class_path: handssl.data.SupervisedViews}   # how its batches are made from samples
trainer:
  max_epochs: 4
"""

DATA_CONFIG = """\
data:
  class_path: handssl.data.HandDataModule
  init_args:
    image_size: 64
    train: {class_path: toys.toy_dataset.ToyHands, init_args: {root: data/toyhands, split: train}}
    val:   {class_path: toys.toy_dataset.ToyHands, init_args: {root: data/toyhands, split: test}}
    test:  {class_path: toys.toy_dataset.ToyHands, init_args: {root: data/toyhands, split: test}}
"""

# Two steps of batch 2 at 32 px on CPU, then the test after fit: the guides' commands at smoke-test size.
TINY = [
    "--data.init_args.image_size=32",
    "--data.init_args.batch_size=2",
    "--trainer.max_steps=2",
    "--trainer.accelerator=cpu",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=true",
]


def run(args: list[str], tmp_path: Path) -> None:
    main([*args, "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"])


def finite_column(metrics_csv: Path, column: str) -> list[float]:
    """The logged values of ``column`` in a run's ``metrics.csv`` (empty cells left out)."""
    header, *rows = (line.split(",") for line in metrics_csv.read_text().splitlines())
    index = header.index(column)
    return [float(row[index]) for row in rows if row[index]]


@pytest.fixture
def method_recipe(tmp_path: Path) -> Path:
    """``experiments/model/toy_heatmap.yaml`` of the guide, beside a copy of the trainer default it stacks on."""
    (tmp_path / "experiments" / "model").mkdir(parents=True)
    (tmp_path / "experiments" / "trainer").mkdir()
    shutil.copy(REPO / "experiments" / "trainer" / "default.yaml", tmp_path / "experiments" / "trainer")
    recipe = tmp_path / "experiments" / "model" / "toy_heatmap.yaml"
    recipe.write_text(METHOD_RECIPE)
    return recipe


def test_add_a_method_trains_on_a_single_view_dataset_with_no_further_file(
    tmp_path, monkeypatch, method_recipe
):
    make_fake_rhd(tmp_path / "data" / "RHD", num_samples=4)
    monkeypatch.chdir(tmp_path)  # experiments/data/rhd.yaml reads data/RHD
    run(
        ["fit", "-c", str(method_recipe), "-c", str(REPO / "experiments" / "data" / "rhd.yaml"), *TINY],
        tmp_path,
    )

    run_dir = tmp_path / "runs" / "toy_heatmap+rhd" / "version_0"
    losses = finite_column(run_dir / "metrics.csv", "train/loss")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # The base class evaluated it: validation and the test after fit under the data's protocol.
    assert all(math.isfinite(v) for v in finite_column(run_dir / "metrics.csv", "val/mpjpe"))
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert {"test/mpjpe", "test/pa_mpjpe", "test/rhd/auc"} <= set(metrics)

    # The recipe's trainer default saved the last checkpoint; it reloads with the data's size and protocol.
    model = ToyHeatmapModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.image_size == 32 and model.eval_protocol == "rhd" and model.loss == "l1"
    with torch.no_grad():
        joints = model.eval().predict_joints3d({"image": torch.rand(3, 3, 32, 32)})
    assert joints.shape == (3, 21, 3) and torch.isfinite(joints).all()
    assert torch.equal(joints[:, 0], torch.zeros(3, 3))  # root-relative: the wrist at 0


def test_add_a_method_with_views_of_its_own(tmp_path, monkeypatch, method_recipe):
    # The optional fifth file: the method's views, named by class_path in its recipe.
    make_fake_rhd(tmp_path / "data" / "RHD", num_samples=4)
    monkeypatch.chdir(tmp_path)
    method_recipe.write_text(
        METHOD_RECIPE.replace("handssl.data.SupervisedViews", "toys.toy_views.ToyMirrorViews")
    )
    run(
        ["fit", "-c", str(method_recipe), "-c", str(REPO / "experiments" / "data" / "rhd.yaml"), *TINY],
        tmp_path,
    )
    run_dir = tmp_path / "runs" / "toy_heatmap+rhd" / "version_0"
    losses = finite_column(run_dir / "metrics.csv", "train/loss")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert "test/rhd/auc" in json.loads((run_dir / "test_metrics.json").read_text())


def test_add_a_method_refuses_a_literal_choice_in_one_line(tmp_path, capsys, method_recipe):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(method_recipe), "--model.init_args.loss=l3", *TINY], tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handssl: error: loss: ") and "l3" in err[0]
    with pytest.raises(ValueError, match="loss must be one of"):
        ToyHeatmapModule(loss="l3")  # type: ignore[arg-type]


def test_add_a_dataset_trains_the_supervised_model(tmp_path, monkeypatch):
    root = make_fake_toyhands(tmp_path / "data" / "toyhands", num_samples=4)
    sample = ToyHands(root, split="test").load_sample(0)
    check_sample(sample, where="toyhands test sample 0")  # the contract of a raw sample
    assert sample["image"].dtype.name == "uint8" and sample["image"].shape == (64, 64, 3)
    assert torch.allclose(
        torch.as_tensor(sample["joints2d"]), torch.as_tensor(project(sample["joints3d"], sample["K"]))
    )

    data_config = tmp_path / "toyhands.yaml"
    data_config.write_text(DATA_CONFIG)
    monkeypatch.chdir(tmp_path)  # the data config's data/toyhands
    run(
        ["fit", "-c", str(REPO / "experiments" / "model" / "supervised.yaml"), "-c", str(data_config), *TINY],
        tmp_path,
    )

    run_dir = tmp_path / "runs" / "supervised+toyhands" / "version_0"
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert hparams["eval_protocol"] == "rhd"  # named by ToyHands: the data config has no model key
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert {"test/mpjpe", "test/n_mpjpe", "test/pa_mpjpe", "test/rhd/auc"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["test/mpjpe"] > 0


def test_add_a_dataset_wrong_root_names_the_path_and_the_layout(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=re.escape(f"ToyHands root folder not found: {missing}")):
        ToyHands(missing)
    data_config = tmp_path / "toyhands.yaml"
    data_config.write_text(DATA_CONFIG.replace("data/toyhands", str(missing)))
    with pytest.raises(SystemExit) as exit_info:
        run(
            ["fit", "-c", str(REPO / "experiments" / "model" / "supervised.yaml"), "-c", str(data_config)],
            tmp_path,
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"handssl: error: ToyHands root folder not found: {missing}\nExpected layout:\n<root>/\n" in err
    assert not any((tmp_path / "runs").rglob("*"))  # a failed start leaves no run folder


def test_add_a_dataset_data_check_with_one_dataset_spec_line(tmp_path, monkeypatch, capsys):
    from toys import toy_dataset

    from handssl.data import check

    # The guide's line in handssl/data/check.py names "toyhands:ToyHands" under handssl.data.
    monkeypatch.setitem(sys.modules, "handssl.data.toyhands", toy_dataset)
    monkeypatch.setitem(
        check.DATASETS, "toyhands", check.DatasetSpec("toyhands:ToyHands", "split", ("train", "test"))
    )
    root = make_fake_toyhands(tmp_path / "toyhands", num_samples=3)
    assert check.main(["check", "toyhands", "--root", str(root)]) == 0
    assert check.check_dataset("toyhands", root) == {"train": 3, "test": 3}
    assert check.main(["check", "toyhands", "--root", str(tmp_path / "nowhere")]) == 2
    assert f"ToyHands root folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
