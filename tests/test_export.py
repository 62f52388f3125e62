"""ONNX export: the exported network computes what the PyTorch model computes."""

import builtins

import numpy as np
import pytest
import torch
from conftest import quiet_trainer

from handssl.cli import main
from handssl.export import INSTALL_HINT, ExportError, to_onnx
from handssl.models import SupervisedModule
from handssl.models.options import Optimization


@pytest.fixture
def checkpoint(tmp_path):
    model = SupervisedModule(backbone_widths=[8, 8, 8, 8], head_hidden=[16])
    # Non-trivial BatchNorm statistics, so eval-mode export is checked against eval-mode PyTorch.
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32) * 2)
    trainer = quiet_trainer()
    trainer.strategy.connect(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["hyper_parameters"]["_class_path"] = "handssl.models.SupervisedModule"  # what LightningCLI records
    torch.save(ckpt, path)
    return path, model.eval()


def test_onnxruntime_matches_torch(tmp_path, checkpoint, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ckpt, model = checkpoint
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(ckpt), "--output", str(out), "--image_size", "32"])
    assert exit_info.value.code == 0 and "wrote" in capsys.readouterr().out
    session = ort.InferenceSession(str(out))
    for batch in (1, 5):  # the batch axis is dynamic
        image = torch.rand(batch, 3, 32, 32)
        (got,) = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            expected = model.predict_joints3d({"image": image}).numpy()
        assert got.shape == (batch, 21, 3)
        assert np.abs(got - expected).max() <= 1e-4
        assert np.abs(expected).max() > 1.0  # not a trivially zero output


def test_missing_onnx_is_one_clear_line(tmp_path, checkpoint, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx":
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ExportError, match="handssl\\[export\\]"):
        to_onnx(checkpoint[1], tmp_path / "m.onnx", image_size=32)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(checkpoint[0]), "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"handssl: error: {INSTALL_HINT}"


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("handssl: error: checkpoint not found")


def _tiny_nvs():
    from handssl.models import NVSModule

    model = NVSModule(
        regime="supervised",
        encoder={"widths": (8, 16), "blocks": (1, 1)},
        decoder={"widths": (16, 8), "latent_channels": 8},
        pose_head={"hidden": (32, 32)},
        optimizer=Optimization(weight_decay=0.0, scheduler="none"),
    )
    model.pose_head.set_statistics(torch.randn(21, 3) * 20, torch.full((21, 3), 30.0))
    return model


def _tiny_semihand():
    from handssl.models import SemiHandModule

    model = SemiHandModule()
    # An untrained network puts all 21 joints within ~0.01 px of each other, where the root depth (a
    # quadratic in the bone's 2D length) amplifies float32 rounding ~1e4 times (torch float32 vs float64
    # differ by 0.2 mm); sharper heatmaps spread the joints as a trained network does.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("heatmap.weight"):
                param.mul_(300)
    return model


@pytest.mark.parametrize("make", [_tiny_nvs, _tiny_semihand], ids=["nvs", "semihand"])
def test_every_task_exports_and_onnxruntime_matches_torch(tmp_path, make):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from handssl.export import example_inputs

    model = make()
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.predict_joints3d(example_inputs(model, 8, 64))
    model.eval()
    path = to_onnx(model, tmp_path / "model.onnx", image_size=64)
    session = ort.InferenceSession(str(path))
    for batch in (1, 3):
        inputs = example_inputs(model, batch, 64)
        (got,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            expected = model.predict_joints3d(inputs).numpy()
        assert got.shape == (batch, 21, 3)
        # SemiHand's root depth (a quadratic solve) amplifies float32 rounding: with the sharp 32 x 32 maps
        # of the default network, ~5e-4 mm on ~125 mm (4e-6 relative; torch float32 itself is that far from
        # float64), so there the bound is 1e-5 relative to the output's scale (at least 100 mm).
        tol = 1e-4 if make is _tiny_nvs else 1e-5 * max(100.0, np.abs(expected).max())
        assert np.abs(got - expected).max() <= tol
        assert np.abs(expected).max() > 1.0


def test_untrained_nvs_pose_head_is_one_clear_line(tmp_path):
    pytest.importorskip("onnx")
    model = _tiny_nvs()
    model.pose_head.has_statistics.fill_(False)
    with pytest.raises(
        ExportError, match="cannot export NVSModule: the pose head has no training statistics"
    ):
        to_onnx(model, tmp_path / "model.onnx", image_size=32)


def test_format_onnx_is_accepted(tmp_path, checkpoint, capsys):
    pytest.importorskip("onnx")
    ckpt, _ = checkpoint
    out = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(ckpt), "--format", "onnx", "--output", str(out)])
    assert exit_info.value.code == 0 and out.is_file()
