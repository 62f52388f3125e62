"""PoseVisualizationCallback: a short real training with an offline WandbLogger, read back from disk."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import quiet_trainer
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from handssl.callbacks.wandb_viz import (
    GT_COLOR,
    PRED_COLOR,
    PoseVisualizationCallback,
    collect_visualization,
    skeleton_scene,
)
from handssl.data.datamodules import SupervisedDataModule
from handssl.data.synthhands.single_view import SynthHands
from handssl.data.synthhands.world import SynthHandsWorld
from handssl.geometry import project
from handssl.models.options import Optimization
from handssl.models.supervised import SupervisedModule
from handssl.skeleton import BONES

IMAGE_SIZE = 32


class HookedModule(SupervisedModule):
    """The supervised baseline plus the visualisation hook, exposing a confidence per sample."""

    hook_calls = 0

    def visualization_outputs(self, batch):
        type(self).hook_calls += 1
        joints3d, joints2d = self(batch["image"])
        confidence = torch.linspace(0.0, 1.0, batch["image"].shape[0])
        return {
            "joints3d": joints3d,
            "joints2d": joints2d,
            "confidence": confidence,
            "confidence_threshold": 0.5,
        }


def tiny_module(cls=HookedModule):
    return cls(
        backbone_widths=(8, 16),
        backbone_blocks=(1, 1),
        head_hidden=(32,),
        optimizer=Optimization(lr=2e-3, warmup_steps=0, scheduler="none"),
    )


def tiny_data():
    world = SynthHandsWorld(image_size=IMAGE_SIZE)
    kwargs = dict(world=world, num_subjects=1, sequences_per_subject=1, frames_per_sequence=4)
    return SupervisedDataModule(
        train=SynthHands(split="train", **kwargs),
        val=SynthHands(split="val", **kwargs),
        image_size=IMAGE_SIZE,
        batch_size=4,
    )


def read_wandb_records(path: Path) -> list:
    """Records of an offline run file: wandb's LevelDB-style log (7-byte headers, 32 KiB blocks) of protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, "not a wandb run file"
    block, position, parts, records = 32768, 7, [], []
    while position + 7 <= len(data):
        space = block - position % block
        if space < 7:  # block trailer padding
            position += space
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding up to the next block
            position += space
            continue
        parts.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def wait_for_exit_record(path: Path, timeout_s: float = 60.0) -> list:
    """The run file's records once wandb's service has written the final ``exit`` record (it flushes after finish)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_wandb_records(path) if path.stat().st_size >= 7 else []
        if any(r.HasField("exit") for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def trainer(logger, callback, max_steps):
    return quiet_trainer(
        max_steps=max_steps,
        val_check_interval=1,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        logger=logger,
        callbacks=[callback],
        devices=1,
    )


def test_offline_run_holds_the_logged_media(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb

    config = tmp_path / "config.yaml"
    config.write_text("model:\n  class_path: handssl.models.SupervisedModule\n  init_args:\n    lr: 0.002\n")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="handssl-test")
    callback = PoseVisualizationCallback(
        every_n_validations=2, num_images=3, num_scenes=1, config_path=str(config)
    )
    HookedModule.hook_calls = 0
    try:
        # Validation after every training batch: validations 0 and 1 at steps 1 and 2; only 0 is logged.
        trainer(logger, callback, max_steps=2).fit(tiny_module(), tiny_data())
    finally:
        wandb.finish()
    assert callback.validations_seen == 2  # the sanity check is not counted
    assert HookedModule.hook_calls == 1  # validation 1 draws nothing

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    files = run_dir / "files"
    media = files / "media"
    grids = sorted((media / "images" / "viz").glob("skeletons_2d_*.png"))
    assert len(grids) == 1
    assert len(list((media / "images" / "viz").glob("skeletons_3d_*.png"))) == 1
    assert len(list((media / "images" / "viz").glob("pck_curve_*.png"))) == 1
    assert len(list((media / "images" / "viz").glob("confidence_histogram_*.png"))) == 1
    scenes = sorted((media / "object3D").rglob("*.pts.json"))
    assert len(scenes) == 1  # num_scenes=1
    scene = json.loads(scenes[0].read_text())
    assert scene["type"] == "lidar/beta"
    assert len(scene["points"]) == 42 and len(scene["vectors"]) == 40
    tables = sorted((media / "table").rglob("*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["threshold_mm", "pck"]
    thresholds = [row[0] for row in table["data"]]
    np.testing.assert_allclose(thresholds, np.linspace(20.0, 50.0, 20))  # the synthhands protocol's grid
    assert all(0.0 <= row[1] <= 1.0 for row in table["data"])

    # Offline runs keep history, summary and config as protobuf records in run-<id>.wandb (what `wandb sync` uploads).
    records = wait_for_exit_record(next(run_dir.glob("run-*.wandb")))
    history = [
        {_item_key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    logged = [row for row in history if any(k.startswith("viz/") for k in row)]
    assert len(logged) == 1
    for key in (
        "viz/skeletons_2d/path",
        "viz/skeletons_3d/path",
        "viz/skeleton_3d_0/path",
        "viz/pck_curve/path",
        "viz/pck_table/path",
        "viz/confidence_histogram/path",
    ):
        assert all((files / row[key]).is_file() for row in logged), key
    assert logged[0]["viz/skeleton_3d_0/_type"] == "object3D-file"
    assert logged[0]["viz/confidence/_type"] == "histogram"
    assert [row["trainer/global_step"] for row in logged] == [1]
    summary_keys = {_item_key(i) for r in records if r.HasField("summary") for i in r.summary.update}
    assert {"viz/skeletons_2d/path", "viz/pck_table/path", "viz/confidence/_type"} <= summary_keys
    run_config = {
        _item_key(i): json.loads(i.value_json)
        for r in records
        if r.HasField("config")
        for i in r.config.update
    }
    assert run_config["handssl_config"]["model"]["init_args"]["lr"] == 0.002
    assert (files / "handssl_config.yaml").read_text() == config.read_text()


def test_does_nothing_without_a_wandb_logger(tmp_path):
    callback = PoseVisualizationCallback()
    HookedModule.hook_calls = 0
    trainer(CSVLogger(str(tmp_path)), callback, max_steps=1).fit(tiny_module(), tiny_data())
    assert callback.validations_seen == 1
    assert HookedModule.hook_calls == 0


def _batch():
    data = SynthHands(
        split="val",
        world=SynthHandsWorld(image_size=IMAGE_SIZE),
        num_subjects=1,
        sequences_per_subject=1,
        frames_per_sequence=2,
    )
    samples = [data[0], data[1]]
    return {
        key: torch.stack([s[key] for s in samples]) for key in ("image", "joints3d", "joints2d", "K", "valid")
    }


class PerfectModule(torch.nn.Module):
    """Predicts the ground truth, root-relative (what BaseHandTask.predict_joints3d returns)."""

    def predict_joints3d(self, batch):
        return batch["joints3d"] - batch["joints3d"][:, :1]


def test_fallback_projects_the_root_relative_prediction_at_the_ground_truth_root():
    batch = _batch()
    out = collect_visualization(PerfectModule(), batch, max_samples=1)
    assert out["image"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected_2d = project(batch["joints3d"][:1], batch["K"][:1])
    torch.testing.assert_close(out["pred_joints2d"], expected_2d, atol=1e-3, rtol=0)
    torch.testing.assert_close(out["pred_joints3d"], out["gt_joints3d"])
    assert torch.all(out["gt_joints3d"][:, 0] == 0)
    assert "confidence" not in out


def test_normalised_images_are_rescaled_for_display():
    batch = _batch()
    batch["image"] = (batch["image"] - 0.5) / 0.25  # mean/std normalised: outside [0, 1]
    out = collect_visualization(PerfectModule(), batch)
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    assert torch.isclose(out["image"][0].min(), torch.tensor(0.0)) and torch.isclose(
        out["image"][0].max(), torch.tensor(1.0)
    )


def test_confidence_comes_from_the_tasks_visualization_state():
    class Labels:  # PseudoLabels: spread is the paper's cost C, confidence = exp(-C)
        spread = torch.tensor([0.5, 2.0, 1.0])
        confidence = torch.exp(-spread)

    stash = {"labels": Labels(), "threshold": 1.5}

    class SemiLike(PerfectModule):
        def visualization_state(self, stage="val"):
            return {"confidence": Labels.spread, "confidence_threshold": 1.5, "confidence_keep": "below"}

    out = collect_visualization(SemiLike(), _batch())
    assert out["confidence_keep"] == "below" and out["confidence_threshold"] == 1.5
    torch.testing.assert_close(out["confidence"], Labels.spread)
    # The same stash as an attribute, without the method, shows nothing: callbacks do not reach into attributes.
    bare = PerfectModule()
    bare.last_pseudo_labels = stash
    assert "confidence" not in collect_visualization(bare, _batch())


def test_multi_view_batches_need_the_hook():
    batch = _batch()
    batch["image"] = batch["image"][:, None]
    with pytest.raises(ValueError, match="visualization_outputs"):
        collect_visualization(PerfectModule(), batch)


def test_skeleton_scene_puts_image_up_up_and_colours_gt_and_prediction():
    gt = torch.zeros(21, 3)
    gt[:, 1] = -torch.arange(21.0)  # OpenCV y down: joints rise up the image
    gt[:, 2] = 500.0
    pred = gt + torch.tensor([10.0, 0.0, 0.0])
    valid = torch.ones(21, dtype=torch.bool)
    valid[20] = False
    scene = skeleton_scene(pred.numpy(), gt.numpy(), valid.numpy())
    points = scene["points"]
    assert points.shape == (20 + 21, 6)
    gt_points, pred_points = points[:20], points[20:]
    np.testing.assert_allclose(
        gt_points[:, :3], np.stack([np.zeros(20), np.full(20, 500.0), np.arange(20.0)], -1)
    )
    np.testing.assert_allclose(pred_points[:, 0], 10.0)
    assert (gt_points[:, 3:] == GT_COLOR).all() and (pred_points[:, 3:] == PRED_COLOR).all()
    # The invalid tip drops its bone from the ground truth only.
    assert len(scene["vectors"]) == (len(BONES) - 1) + len(BONES)
    assert scene["vectors"][0]["start"] == [0.0, 500.0, 0.0]


@pytest.mark.parametrize(
    "kwargs", [{"every_n_validations": 0}, {"num_images": 0}, {"num_scenes": -1}, {"prefix": "a/b"}]
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        PoseVisualizationCallback(**kwargs)


def test_config_path_must_exist(tmp_path):
    callback = PoseVisualizationCallback(config_path=str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        callback._config_file(None)


def test_state_dict_round_trip():
    callback = PoseVisualizationCallback()
    callback.validations_seen = 5
    other = PoseVisualizationCallback()
    other.load_state_dict(callback.state_dict())
    assert other.validations_seen == 5


class NoPoseModule(torch.nn.Module):
    """Like NVS synthesis pre-training: no pose head statistics yet, so no pose prediction."""

    def predict_joints3d(self, batch):
        raise RuntimeError("the pose head has no training statistics yet")


def test_a_task_without_pose_predictions_warns_once_and_logs_nothing(tmp_path):
    from types import SimpleNamespace

    logger = WandbLogger(offline=True, save_dir=str(tmp_path))  # the run starts only when used
    trainer = SimpleNamespace(sanity_checking=False, loggers=[logger], is_global_zero=True, global_step=0)
    callback = PoseVisualizationCallback(log_config=False)
    module = NoPoseModule()
    batch = _batch()
    callback.on_validation_epoch_start(trainer, module)
    assert callback._active
    with pytest.warns(UserWarning, match="no pose panels"):
        callback.on_validation_batch_end(trainer, module, None, batch, 0)
    assert not callback._active and callback._collected == []
    callback.on_validation_epoch_end(trainer, module)
    assert callback.validations_seen == 1
    assert logger._experiment is None  # nothing was logged, so no run was started


def test_semihand_module_is_drawn_without_a_hook():
    from handssl.models.semihand import SemiHandModule

    module = SemiHandModule(
        backbone_widths=(8, 16), backbone_blocks=(1, 1), decoder_channels=8, image_size=IMAGE_SIZE
    )
    module.eval()
    batch = _batch()
    out = collect_visualization(module, batch)
    assert out["pred_joints3d"].shape == (2, 21, 3) and out["pred_joints2d"].shape == (2, 21, 2)
    assert torch.all(out["pred_joints3d"][:, 0] == 0)
    assert torch.isfinite(out["pred_joints2d"]).all()
    # The 2D panel shows the 3D prediction placed at the ground-truth wrist: its wrist lands on the true wrist.
    torch.testing.assert_close(out["pred_joints2d"][:, 0], batch["joints2d"][:, 0], atol=1e-3, rtol=0)
