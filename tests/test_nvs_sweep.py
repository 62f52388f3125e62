"""The pure parts of experiments/studies/nvs_sweep.py (issue 21's NVS sweep): seed plans, commands, table and gates."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "studies" / "nvs_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("nvs_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("nvs_sweep", module)  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_seeds_per_k_parses_tokens_and_one_string(sweep):
    assert sweep.parse_seeds_per_k(["1:0,1,2", "2:0,1"]) == {1: [0, 1, 2], 2: [0, 1]}
    assert sweep.parse_seeds_per_k("1:0,1,2 2:0,1") == {1: [0, 1, 2], 2: [0, 1]}
    for bad in (["1"], ["0:1"], ["x:1"], ["1:"], ["1:0,0"], ["1:0", "1:1"], ["1:a"]):
        with pytest.raises(ValueError):
            sweep.parse_seeds_per_k(bad)


def test_seed_plan_defaults_to_the_issue_and_lets_entries_win(sweep):
    assert sweep.seed_plan([1, 2]) == {1: [0, 1, 2], 2: [0, 1]}
    assert sweep.seed_plan([1, 2, 4]) == {1: [0, 1, 2], 2: [0, 1], 4: [0, 1, 2]}
    assert sweep.seed_plan([1, 2], seeds="5") == {1: [5], 2: [5]}
    assert sweep.seed_plan([1, 2], seeds_per_k=["1:3"]) == {1: [3], 2: [0, 1]}
    assert sweep.seed_plan([1, 2], seeds="7", seeds_per_k=["2:8,9"]) == {1: [7], 2: [8, 9]}


def test_parse_args_takes_extra_options_that_start_with_dashes(sweep, tmp_path):
    args = sweep.parse_args(
        ["--extra", "--model.init_args.geometry.equivariance_weight=1.0", "--out", str(tmp_path / "o")]
    )
    assert args.extra == "--model.init_args.geometry.equivariance_weight=1.0"
    assert args.plan == {1: [0, 1, 2], 2: [0, 1]}
    assert args.work_dir == (Path("runs") / "o").resolve()
    quick = sweep.parse_args(["--quick", "--out", str(tmp_path / "q")])
    assert quick.plan == {1: [0]} and quick.minutes < 1


def test_labelled_subjects_change_with_the_seed_and_nest(sweep):
    first = {seed: sweep.labeled_subjects(1, seed) for seed in range(3)}
    assert len(set(map(tuple, first.values()))) > 1  # the seed moves the labelled subject
    for seed in range(3):
        assert set(first[seed]) <= set(sweep.labeled_subjects(2, seed))


def test_budget_splits_the_pretrained_row(sweep):
    args = sweep.parse_args(["--minutes", "20", "--stage2-share", "0.2"])
    assert sweep.budget_seconds(args, "supervised") == sweep.budget_seconds(args, "semi") == 1200
    assert sweep.budget_seconds(args, "stage1") == 960 and sweep.budget_seconds(args, "stage2") == 240
    assert sweep.duration(1200) == "00:00:20:00" and sweep.duration(90061) == "01:01:01:01"
    assert sweep.duration(0.2) == "00:00:00:01"


def option(command, name):
    (found,) = [c.split("=", 1)[1] for c in command if c.startswith(f"{name}=")]
    return found


def test_each_row_runs_its_recipe_with_only_the_named_options(sweep, tmp_path):
    extra = "--model.init_args.geometry.equivariance_weight=1.0"
    args = sweep.parse_args(
        ["--extra", extra, "--extra-all", "--trainer.accelerator=cpu", "--work-dir", str(tmp_path / "w")]
    )
    supervised = sweep.fit_command(args, "supervised", 2, 1)
    assert supervised[:4] == ["handssl", "fit", "-c", "experiments/nvs_supervised.yaml"]
    assert option(supervised, "--data.init_args.views.init_args.labeled_subjects") == "2"
    assert option(supervised, "--seed_everything") == option(supervised, "--data.init_args.seed") == "1"
    assert option(supervised, "--trainer.max_time") == "00:00:20:00"
    assert option(supervised, "--trainer.max_steps") == "-1"
    assert option(supervised, "--trainer.val_check_interval") == "00:00:01:00"
    assert option(supervised, "--trainer.limit_val_batches") == "1.0"
    assert option(supervised, "--run_name") == "supervised_k2_seed1"
    assert "--trainer.accelerator=cpu" in supervised and extra not in supervised  # --extra: decoder runs only

    stage1 = sweep.fit_command(args, "stage1", None, 1)
    assert stage1[2:5] == ["-c", "experiments/nvs_pretrained.yaml", "--trainer.callbacks.dirpath=null"]
    assert not any(c.startswith("--data.init_args.views.init_args.labeled_subjects") for c in stage1)
    assert stage1.index("--trainer.callbacks.dirpath=null") < stage1.index(
        "--trainer.callbacks+=nvs_sweep.TrainClock"
    )
    assert option(stage1, "--trainer.max_time") == "00:00:16:00" and extra in stage1

    ckpt = tmp_path / "w" / "stage1_seed1" / "version_0" / "checkpoints" / "stage1.ckpt"
    stage2 = sweep.fit_command(args, "stage2", 2, 1, ckpt)
    assert stage2[3] == "experiments/nvs_pretrained_stage2.yaml"
    assert option(stage2, "--model.init_args.pretrained_checkpoint") == str(ckpt)
    assert option(stage2, "--trainer.max_time") == "00:00:04:00" and extra in stage2

    semi = sweep.fit_command(args, "semi", 1, 0)
    assert semi[3] == "experiments/nvs_semi.yaml" and extra in semi
    assert option(semi, "--trainer.max_time") == "00:00:20:00"

    test = sweep.test_command(args, "stage2", 2, 1, tmp_path / "last.ckpt", ckpt)
    assert test[:4] == ["handssl", "test", "-c", "experiments/nvs_pretrained_stage2.yaml"]
    assert option(test, "--ckpt_path") == str(tmp_path / "last.ckpt")
    assert option(test, "--model.init_args.pretrained_checkpoint") == str(ckpt)
    assert not any(c.startswith("--trainer.max_time") for c in test)
    assert sweep.shell(args, semi).startswith(
        "PYTHONPATH=experiments/studies OMP_NUM_THREADS=2 handssl fit -c "
    )


def test_read_metrics_keeps_the_validation_rows(sweep, tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train/loss,time/train_min,val/n_mpjpe,val/mpjpe\n"
        "0,24,1.5,,,\n"
        "0,50,,1.0,80.0,90.0\n"
        "0,99,,2.0,70.0,85.0\n"
    )
    curve, final = sweep.read_metrics(path)
    assert curve == [(1.0, 80.0), (2.0, 70.0)]
    assert final == {"step": 99.0, "val/n_mpjpe": 70.0, "val/mpjpe": 85.0}


def row(regime, k, seed, n_mpjpe, val, minutes, curve=(), l1=None):
    out = {
        "regime": regime,
        "k": str(k),
        "seed": str(seed),
        "test_n_mpjpe": str(n_mpjpe),
        "test_mpjpe": str(n_mpjpe + 10),
        "val_n_mpjpe": str(val),
        "train_min": str(minutes),
        "steps": "100",
        "curve": json.dumps([list(p) for p in curve]),
    }
    if l1 is not None:
        true, identity, other, copy, background = l1
        out.update(
            synthesis_l1_hand=str(true),
            identity_l1_hand=str(identity),
            other_rotation_l1_hand=str(other),
            copy_input_l1_hand=str(copy),
            background_l1_hand=str(background),
            mask_iou="0.5",
        )
    return out


ROWS = [
    row("supervised", 1, 0, 100.0, 100.0, 20.0),
    row("supervised", 1, 1, 120.0, 100.0, 20.0),
    row("pretrained", 1, 0, 80.0, 75.0, 20.0, [(17.0, 80.0), (20.0, 75.0)], (0.1, 0.2, 0.2, 0.2, 0.3)),
    row("pretrained", 1, 1, 90.0, 85.0, 20.0, [(20.0, 85.0)], (0.1, 0.2, 0.2, 0.2, 0.3)),
    row("semi", 1, 0, 70.0, 70.0, 20.0, [(5.0, 90.0), (10.0, 74.0), (20.0, 70.0)], (0.1, 0.1, 0.2, 0.2, 0.3)),
    row("semi", 1, 1, 75.0, 72.0, 20.0, [(4.0, 84.0), (20.0, 72.0)], (0.1, 0.1, 0.2, 0.2, 0.3)),
    row("supervised", 2, 0, 90.0, 90.0, 20.0),
    row("semi", 2, 0, 85.0, 86.0, 20.0, [(20.0, 86.0)]),
    row("pretrained", 2, 0, 80.0, 80.0, 20.0, [(20.0, 80.0)]),
]


def gate(text, name):
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_gates_from_hand_made_rows(sweep):
    text = sweep.gates(ROWS)
    # k = 1: supervised 110, pretrained 85, semi 72.5 (means over seeds); per seed 80/100, 90/120 (SD 0.035)
    assert gate(text, "pretrained / supervised test N-MPJPE, k=1")[1:] == [
        f"{85 / 110:.3f}",
        "s0 0.800, s1 0.750 (SD 0.035)",
        "<= 0.85",
        "yes",
    ]
    assert gate(text, "semi / supervised test N-MPJPE, k=1")[1] == f"{72.5 / 110:.3f}"
    assert gate(text, "semi / supervised test N-MPJPE, k=1")[2].startswith("s0 0.700, s1 0.625 (SD ")
    assert gate(text, "semi / pretrained test N-MPJPE, k=1")[1:4:2] == [f"{72.5 / 85:.3f}", "<= 1.0"]
    # seed 0 reaches 75 at 10 of 20 min (0.5), seed 1 reaches 85 at 4 of 20 (0.2): mean 0.35
    name = "semi minutes to pretrained's final val N-MPJPE / pretrained's minutes, k=1 (mean of seeds)"
    assert gate(text, name)[1:] == ["0.350", "s0 0.500, s1 0.200 (SD 0.212)", "<= 0.7", "yes"]
    # geometry: semi's true rotation is no better than the identity (1.0), pretrained's is 0.5
    assert gate(text, "semi true-rotation hand L1 / identity, k=1")[1:] == [
        "1.000",
        "s0 1.000, s1 1.000 (SD 0.000)",
        "<= 0.8",
        "no",
    ]
    assert gate(text, "pretrained true-rotation hand L1 / identity, k=1")[-1] == "yes"
    assert gate(text, "semi true-rotation hand L1 / background-only, k=1")[1] == "0.333"
    # k = 2: semi never reaches pretrained's 80; pretrained 80/90 = 0.889 fails; no decoder controls
    assert gate(text, name.replace("k=1", "k=2"))[1:] == ["never", "s0 never", "<= 0.7", "no"]
    assert gate(text, "pretrained / supervised test N-MPJPE, k=2")[2:] == ["s0 0.889", "<= 0.85", "no"]
    assert gate(text, "semi true-rotation hand L1 / identity, k=2")[1:] == ["not measured", "", "<= 0.8", ""]


def test_reports_write_the_table_the_gates_and_a_panel_of_curves_per_k(sweep, tmp_path):
    from PIL import Image

    sweep.write_reports(tmp_path, ROWS)
    assert (tmp_path / "table.md").read_text() == sweep.summary(ROWS)
    assert (tmp_path / "gates.md").read_text() == sweep.gates(ROWS)
    image = Image.open(tmp_path / "curves.png")
    assert image.width > 1.6 * image.height  # two panels side by side, k = 1 and k = 2
    assert len(set(image.convert("L").getdata())) > 10  # lines and labels drawn, not a blank canvas


def test_time_ratio_needs_a_pretrained_row_of_the_same_seed(sweep):
    rows = [r for r in ROWS if not (r["regime"] == "pretrained" and r["seed"] == "1")]
    assert sweep.time_ratios(rows, 1) == {0: 0.5}
    assert sweep.reach_minutes([(1.0, 9.0)], 8.0) == math.inf


def test_table_has_mean_and_sd_per_regime_and_k(sweep):
    lines = sweep.summary(ROWS).splitlines()
    (supervised,) = [line for line in lines if line.startswith("| supervised | 1 |")]
    cells = [c.strip() for c in supervised.strip("|").split("|")]
    assert cells[2] == "2" and cells[3] == "110.0 ± 14.1" and cells[4] == "120.0 ± 14.1"
    (semi,) = [line for line in lines if line.startswith("| semi | 1 |")]
    cells = [c.strip() for c in semi.strip("|").split("|")]
    assert cells[9:14] == [
        "1.000 ± 0.000",
        "0.500 ± 0.000",
        "0.500 ± 0.000",
        "0.333 ± 0.000",
        "0.500 ± 0.000",
    ]
    (single,) = [line for line in lines if line.startswith("| semi | 2 |")]
    assert "| 85.0 |" in single  # one seed: no SD
