"""experiments/studies/bench_nvs.py's loading: a checkpoint written by ``handssl fit`` or by stage 2."""

from __future__ import annotations

import torch
from conftest import TINY_NVS as TINY
from conftest import load_script

from handssl.models import NVSModule


def test_load_module_reads_a_cli_checkpoint_and_a_stage_2_one(tmp_path):
    torch.manual_seed(0)
    trained = NVSModule(regime="pretrained", stage=1, **TINY)
    # LightningCLI writes the model's class as _class_path beside its arguments
    hparams = {**TINY, "regime": "pretrained", "stage": 1, "_class_path": "handssl.models.NVSModule"}
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": hparams}, path)
    loaded = load_script("experiments/studies/bench_nvs.py").load_module(path)
    assert not loaded.training and loaded.decoder is not None
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # stage 2 names stage 1's file, which need not exist any more: its weights are all in its own file
    stage2 = {**hparams, "stage": 2, "pretrained_checkpoint": str(tmp_path / "gone.ckpt")}
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": stage2}, tmp_path / "stage2.ckpt")
    loaded = load_script("experiments/studies/bench_nvs.py").load_module(tmp_path / "stage2.ckpt")
    assert loaded.stage == 2 and not loaded.needs_stage1
    assert torch.equal(loaded.pose_head.mean, trained.pose_head.mean)
