"""ONNX export: the exported network computes what the PyTorch model computes."""

import builtins

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from handssl.cli import main
from handssl.export import INSTALL_HINT, ExportError, to_onnx
from handssl.models import SupervisedModule


@pytest.fixture
def checkpoint(tmp_path):
    model = SupervisedModule(backbone_widths=[8, 8, 8, 8], head_hidden=[16])
    # Non-trivial BatchNorm statistics, so eval-mode export is checked against eval-mode PyTorch.
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32) * 2)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
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
