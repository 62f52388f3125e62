"""Run folders: one per run even when runs start together, the same one when a run resumes, none left by a failure."""

import csv
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import handssl.run_dirs as run_dirs
from handssl.run_dirs import allocate_version, checkpoint_run_version, drop_rows_from_step, is_disposable

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"


def test_concurrent_allocations_get_distinct_versions(tmp_path, monkeypatch):
    # Every caller lists the folder before any of them creates one: the race two runs started together have.
    barrier = threading.Barrier(6)
    listing = run_dirs.existing_versions

    def stale_listing(root):
        found = listing(root)
        barrier.wait(timeout=10)
        return found

    monkeypatch.setattr(run_dirs, "existing_versions", stale_listing)
    got: list[int] = []
    threads = [
        threading.Thread(target=lambda: got.append(allocate_version(tmp_path / "conc"))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(6))
    assert sorted(p.name for p in (tmp_path / "conc").iterdir()) == [f"version_{i}" for i in range(6)]


def test_checkpoint_run_version_only_for_this_runs_folders(tmp_path):
    root = tmp_path / "runs" / "a"
    ckpt = root / "version_3" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert checkpoint_run_version(ckpt, root) == 3
    assert checkpoint_run_version(ckpt, tmp_path / "runs" / "b") is None
    assert checkpoint_run_version(tmp_path / "missing.ckpt", root) is None
    outside = tmp_path / "last.ckpt"
    outside.write_bytes(b"x")
    assert checkpoint_run_version(outside, root) is None


def test_drop_rows_from_step(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.9\n0,2,0.8\n0,3,0.7\n")
    assert drop_rows_from_step(path, 2) == 2
    assert [r["step"] for r in csv.DictReader(path.open())] == ["0", "1"]


def test_is_disposable(tmp_path):
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    (run / "wandb" / "offline-run-x").mkdir(parents=True)
    (run / "wandb" / "offline-run-x" / "run.wandb").write_bytes(b"x")
    assert is_disposable(run)
    (run / "metrics.csv").write_text("step\n0\n")
    assert not is_disposable(run)


def fit(tmp_path, *extra, name="r"):
    from handssl.cli import main

    main(
        [
            "fit",
            "-c",
            str(CONF),
            "--runs_dir",
            str(tmp_path / "runs"),
            "--wandb",
            "disabled",
            "--run_name",
            name,
            *extra,
        ]
    )


CHECKPOINTS = [
    "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
    "--trainer.callbacks.every_n_train_steps=2",
    "--trainer.callbacks.save_top_k=-1",
    "--trainer.callbacks.filename={step}",
]


def train_steps(metrics: Path) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader(metrics.open()) if r.get("train/loss")]


def test_a_resumed_run_continues_in_its_own_run_folder(tmp_path, caplog):
    fit(tmp_path, "--trainer.max_steps=4", *CHECKPOINTS)
    run = tmp_path / "runs" / "r" / "version_0"
    assert train_steps(run / "metrics.csv") == [0, 1, 2, 3]
    # Pre-empted after step 2 (the rows of steps 2 and 3 were written after that checkpoint), resumed to 6.
    fit(
        tmp_path,
        "--trainer.max_steps=6",
        *CHECKPOINTS,
        "--ckpt_path",
        str(run / "checkpoints" / "step=2.ckpt"),
    )
    assert [p.name for p in (tmp_path / "runs" / "r").iterdir()] == ["version_0"]
    assert train_steps(run / "metrics.csv") == [0, 1, 2, 3, 4, 5]  # continued, each step once
    assert "step=6.ckpt" in {p.name for p in (run / "checkpoints").iterdir()}
    assert "resuming in the checkpoint's run folder" in caplog.text


def test_a_checkpoint_from_elsewhere_resumes_in_a_new_folder_and_says_so(tmp_path, caplog):
    fit(tmp_path, "--trainer.max_steps=2", *CHECKPOINTS, name="first")
    ckpt = tmp_path / "copy.ckpt"
    ckpt.write_bytes((tmp_path / "runs" / "first" / "version_0" / "checkpoints" / "step=2.ckpt").read_bytes())
    fit(tmp_path, "--trainer.max_steps=3", "--ckpt_path", str(ckpt), name="first")
    assert sorted(p.name for p in (tmp_path / "runs" / "first").iterdir()) == ["version_0", "version_1"]
    assert f"resuming from {ckpt} in a new run folder" in caplog.text


def test_two_runs_started_together_get_their_own_folders(tmp_path):
    command = [sys.executable, "-m", "handssl", "fit", "-c", str(CONF), "--runs_dir", str(tmp_path / "runs")]
    command += ["--wandb", "disabled", "--run_name", "conc", "--trainer.max_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [*command, "--seed_everything", str(seed)], env=env, stderr=subprocess.PIPE, text=True
        )
        for seed in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "runs" / "conc").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    seeds = sorted(
        next(line for line in (r / "config.yaml").read_text().splitlines() if "seed_everything" in line)
        for r in runs
    )
    assert seeds == ["seed_everything: 1", "seed_everything: 2"]


def test_unwritable_runs_dir_is_one_line_and_leaves_nothing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    from handssl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(CONF), "--runs_dir", str(blocker / "runs"), "--wandb", "disabled"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"handssl: error: --runs_dir: cannot create a run folder in {blocker}/runs/supervised_tiny: Not a directory"
    ]
