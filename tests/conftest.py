"""Test-wide settings: no network, quiet wandb, one thread per worker, deterministic seeds; the tests' trainer."""

import importlib.util
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# One thread in every process the tests start too (CLI runs, DDP ranks, scripts, notebook kernels): with
# ``pytest -n 2`` both cores are busy already, and a second intra-op thread per process only waits for a core
# (a 2-thread subprocess ran up to 10x slower than a 1-thread one next to the other worker).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Give back one intra-op thread after a test that changed it (a script's ``--threads``), for the next test."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


QUIET_TRAINER = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
"""What every test trainer shares: CPU, and no logger, checkpoints, progress bar or model summary."""


def quiet_trainer(**kwargs):
    """``pl.Trainer`` with :data:`QUIET_TRAINER`, overridden and extended by ``kwargs`` (``from conftest import``).

    A test that passes a ``ModelCheckpoint`` callback also passes ``enable_checkpointing=True``.
    """
    import pytorch_lightning as pl  # here, so that tests without a trainer do not import Lightning

    return pl.Trainer(**{**QUIET_TRAINER, **kwargs})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of one step of ``conf/supervised_tiny.yaml`` through the CLI (shared by the CLI tests)."""
    from handssl.cli import main

    runs = tmp_path_factory.mktemp("tiny_checkpoint") / "runs"
    conf = Path(__file__).parent / "conf" / "supervised_tiny.yaml"
    main(["fit", "-c", str(conf), "--trainer.max_steps=1", "--runs_dir", str(runs), "--wandb", "disabled"])
    (ckpt,) = runs.glob("supervised_tiny/version_0/checkpoints/*.ckpt")
    return ckpt


REPO = Path(__file__).resolve().parents[1]
TINY_NVS = {
    "image_size": 32,
    "num_points": 20,
    "appearance_dim": 8,
    "encoder": {"widths": [8, 16], "blocks": [1, 1]},
    "decoder": {"widths": [16, 8], "latent_channels": 8},
    "pose_head": {"hidden": [32, 32]},
}
"""A small NVSModule's sizes (Rhodin's linear point head), for tests that save and reload one."""


def load_script(relative: str) -> Any:
    """A script of the repository (``experiments/tools/ship_weights.py``) imported as a module."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
