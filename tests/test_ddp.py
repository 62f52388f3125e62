"""Real 2-process CPU DDP runs through the CLI: fit, test after fit and validation, with metrics synced across ranks."""

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


@pytest.mark.ddp
def test_ddp_fit_test_after_fit_and_synced_metrics(tmp_path):
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    # 4 validation items, batch 2 per rank: each rank sees half; synced sum states must equal one process.
    val = ["--data.init_args.batch_size=2", "--trainer.limit_val_batches=1.0"]
    run_cli("validate", *val, "--run_name", "single", cwd=tmp_path)
    run_cli("validate", *val, *ddp, "--run_name", "ddp", cwd=tmp_path)
    single = logged(tmp_path / "runs" / "single" / "version_0", "val/mpjpe")
    both = logged(tmp_path / "runs" / "ddp" / "version_0", "val/mpjpe")
    assert both == pytest.approx(single, rel=1e-5)

    # The README's DDP command: fit, then the test set with the best checkpoint (rank 0 writes the metrics
    # file; a rank-zero-only hook that asked for ``trainer.log_dir`` used to hang rank 0 in a broadcast).
    proc = run_cli("fit", *ddp, "--test_after_fit=true", "--run_name", "ddp_fit", cwd=tmp_path)
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
    # 4 test items, 2 per rank: the synced test metrics equal one process testing the same checkpoint.
    run_cli("test", "--ckpt_path", str(ckpts[0]), "--run_name", "single_test", cwd=tmp_path)
    single_metrics = json.loads(
        (tmp_path / "runs" / "single_test" / "version_0" / "test_metrics.json").read_text()
    )
    assert {"test/mpjpe", "test/pa_mpjpe", "test/synthhands/auc"} <= set(ddp_metrics)
    assert ddp_metrics == pytest.approx(single_metrics, rel=1e-5)
