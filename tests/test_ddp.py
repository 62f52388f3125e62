"""A real 2-process CPU DDP run through the CLI: fit with validation, test after fit, metrics synced across ranks."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "handssl",
            *args,
            "-c",
            str(CONF),
            "--runs_dir",
            str(cwd / "runs"),
            "--wandb",
            "disabled",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def logged(run_dir: Path, key: str) -> float:
    with open(run_dir / "metrics.csv") as fh:
        values = [row[key] for row in csv.DictReader(fh) if row.get(key)]
    assert values, f"{key} not logged in {run_dir}"
    return float(values[-1])


def run_in_process(*args: str, cwd: Path) -> None:
    """The same command as :func:`run_cli` in this process (a single-process run needs no fresh interpreter)."""
    from handssl.cli import main

    main([*args, "-c", str(CONF), "--runs_dir", str(cwd / "runs"), "--wandb", "disabled"])


@pytest.mark.ddp
def test_ddp_fit_test_after_fit_and_synced_metrics(tmp_path):
    # The README's DDP command: fit, then the test set with the best checkpoint (rank 0 writes the metrics
    # file; a rank-zero-only hook that asked for ``trainer.log_dir`` used to hang rank 0 in a broadcast).
    # 8 training items, batch 2 per rank: one epoch of 2 steps, validated once, at the last step, with the
    # weights the checkpoint holds. 4 validation and 4 test items, 2 per rank: each rank sees half, and the
    # synced sum states must equal one process going through all of them in batches of 2.
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    every = [
        "--data.init_args.batch_size=2",
        "--trainer.limit_val_batches=1.0",
        "--trainer.limit_test_batches=1.0",
    ]
    proc = run_cli("fit", *every, *ddp, "--test_after_fit=true", "--run_name", "ddp_fit", cwd=tmp_path)
    run_dir = tmp_path / "runs" / "ddp_fit" / "version_0"
    assert (run_dir / "config.yaml").exists()
    ckpts = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 1
    assert [p.name for p in (tmp_path / "runs" / "ddp_fit").iterdir()] == ["version_0"]  # one run folder
    assert [p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("test_metrics.json")] == [
        Path("runs/ddp_fit/version_0/test_metrics.json")
    ]
    assert (proc.stdout + proc.stderr).count("handssl: wrote") == 1
    ddp_metrics = json.loads((run_dir / "test_metrics.json").read_text())

    # The same checkpoint validated and tested by one process.
    run_in_process("validate", *every, "--ckpt_path", str(ckpts[0]), "--run_name", "single", cwd=tmp_path)
    single = logged(tmp_path / "runs" / "single" / "version_0", "val/mpjpe")
    assert logged(run_dir, "val/mpjpe") == pytest.approx(single, rel=1e-5)
    run_in_process("test", *every, "--ckpt_path", str(ckpts[0]), "--run_name", "single_test", cwd=tmp_path)
    single_metrics = json.loads(
        (tmp_path / "runs" / "single_test" / "version_0" / "test_metrics.json").read_text()
    )
    assert {"test/mpjpe", "test/pa_mpjpe", "test/synthhands/auc"} <= set(ddp_metrics)
    assert ddp_metrics == pytest.approx(single_metrics, rel=1e-5)
