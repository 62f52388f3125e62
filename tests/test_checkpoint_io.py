"""Checkpoint writes that never leave a partial file: failures, kills, full disks, through the CLI too."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import handssl.checkpoint_io as checkpoint_io
from handssl.checkpoint_io import (
    TMP_MARK,
    AtomicCheckpointIO,
    CheckpointSaveError,
    atomic_write_checkpoint,
    remove_stale_temporaries,
)

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"


def disk_full_after(nbytes: int):
    """A ``torch.save`` that writes ``nbytes`` bytes, then fails as a full disk does."""

    def save(obj, file):
        file.write(b"x" * nbytes)
        raise OSError(28, "No space left on device")

    return save


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_write_checkpoint({"step": 1}, path)
    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full_after(1000))
    with pytest.raises(
        CheckpointSaveError, match=r"cannot save checkpoint .*last\.ckpt: No space left on device"
    ):
        atomic_write_checkpoint({"step": 2}, path)
    assert torch.load(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_plugin_writes_through_the_atomic_writer(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(checkpoint_io, "atomic_write_checkpoint", lambda c, p: calls.append(p))
    AtomicCheckpointIO().save_checkpoint({"a": 1}, tmp_path / "x.ckpt")
    assert calls == [tmp_path / "x.ckpt"]


def test_a_write_killed_midway_keeps_the_previous_file_and_the_next_write_cleans_up(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_write_checkpoint({"step": 1}, path)
    # A child process that blocks in the middle of writing (after part of the file is on disk) until killed.
    script = textwrap.dedent(
        f"""
        import time, torch
        from handssl.checkpoint_io import atomic_write_checkpoint
        class Slow:
            def __reduce__(self):
                time.sleep(60)
                return (int, (0,))
        atomic_write_checkpoint({{"big": torch.zeros(100_000), "slow": Slow()}}, {str(path)!r})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(f".*{TMP_MARK}*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob(f".*{TMP_MARK}*")), "the child never started writing"
        time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert torch.load(path) == {"step": 1}  # the kill left the good checkpoint as it was
    orphans = list(tmp_path.glob(f".*{TMP_MARK}*"))
    assert len(orphans) == 1
    atomic_write_checkpoint({"step": 2}, path)  # the next write removes the dead writer's temporary file
    assert torch.load(path) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    mine = tmp_path / f".a.ckpt.{TMP_MARK}-{os.getpid()}-abcd"
    mine.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == []
    assert mine.exists()


def test_cli_full_disk_during_a_save_is_one_line_and_keeps_the_earlier_checkpoints(
    tmp_path, monkeypatch, capsys
):
    from handssl.cli import main

    real_save = torch.save
    saves = []

    def save(obj, file):  # the third checkpoint write runs out of space
        saves.append(file)
        if len(saves) == 3:
            return disk_full_after(500)(obj, file)
        return real_save(obj, file)

    monkeypatch.setattr(checkpoint_io.torch, "save", save)
    args = ["fit", "-c", str(CONF), "--trainer.max_steps=4", "--runs_dir", str(tmp_path / "runs")]
    args += ["--wandb", "disabled", "--run_name", "full"]
    args += ["--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint"]
    args += ["--trainer.callbacks.every_n_train_steps=1", "--trainer.callbacks.save_top_k=-1"]
    args += ["--trainer.callbacks.filename={step}"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handssl: error: cannot save checkpoint "), err
    assert "No space left on device" in err[0]
    folder = tmp_path / "runs" / "full" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step=1.ckpt", "step=2.ckpt"]
    assert torch.load(folder / "step=2.ckpt", weights_only=False)["global_step"] == 2
