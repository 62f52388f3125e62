"""experiments/tools/ship_weights.py nvs ships the supervised, pretrained and semi rows of nvs_sweep.py."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_NVS, load_script

import handssl.pretrained as pretrained
from handssl.models import NVSModule

REPO = Path(__file__).parents[1]
TINY = TINY_NVS
#: Test N-MPJPE of seeds 0, 1, 2 per regime, and the seed nearest the regime's mean.
ERRORS = {"supervised": (50.0, 60.0, 58.0), "pretrained": (40.0, 44.0, 49.0), "semi": (33.0, 30.0, 38.0)}
NEAREST = {"supervised": 2, "pretrained": 1, "semi": 0}  # means 56, 44.33, 33.67
RECIPES = {
    "supervised": "experiments/nvs_supervised.yaml",
    "pretrained": "experiments/nvs_pretrained_stage2.yaml",
    "semi": "experiments/nvs_semi.yaml",
}


def ship_weights():
    return load_script("experiments/tools/ship_weights.py")


#: The test world of the runs' config.yaml, as handssl fit writes it (the semi runs have none).
WORLD = {
    "crop": "fixed",
    "crop_extent_mm": 240.0,
    "crop_margin": 1.25,
    "image_size": 32,
    "style": "synthetic",
}


def save_run(folder, module, config: bool = True):
    """A run folder: the final weights as Lightning saves them, and ``config.yaml`` beside ``checkpoints/``."""
    folder.mkdir(parents=True)
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save(checkpoint, folder / "last.ckpt")
    if config:
        world = {"class_path": "handssl.data.SynthHandsWorld", "init_args": {**WORLD, "fov_deg": 60.0}}
        test = {"class_path": "handssl.data.SynthHands", "init_args": {"split": "test", "world": world}}
        data = {"class_path": "handssl.data.HandDataModule", "init_args": {"test": test}}
        (folder.parent / "config.yaml").write_text(yaml.safe_dump({"data": data}))


def fake_sweep(tmp_path):
    """rows.csv (nvs_sweep's header and commands) and the runs' last.ckpt; the modules of the runs by row."""
    ship = ship_weights()
    sweep = ship.nvs_sweep()
    out, work = tmp_path / "results", tmp_path / "runs"
    args = sweep.parse_args(["--out", str(out), "--work-dir", str(work)])
    stage1 = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": NVSModule(regime="pretrained", stage=1, **TINY).state_dict()}, stage1)
    modules = {}
    rows = []
    for regime, errors in ERRORS.items():
        run = "stage2" if regime == "pretrained" else regime
        for seed, error in enumerate(errors):
            torch.manual_seed(seed)
            extra = {"stage": 2, "pretrained_checkpoint": str(stage1)} if run == "stage2" else {}
            module = NVSModule(regime=regime, **extra, **TINY)
            modules[regime, seed] = module
            folder = work / sweep.run_name(run, 1, seed)
            save_run(folder / "version_0" / "checkpoints", module, config=regime != "semi")
            if regime == "supervised" and seed == NEAREST[regime]:
                # a later run of the same name, which the row never scored: the row's command names version_0
                save_run(folder / "version_1" / "checkpoints", NVSModule(regime=regime, **TINY))
            ckpt = folder / "version_0" / "checkpoints" / "last.ckpt"
            commands = [sweep.fit_command(args, run, 1, seed, stage1 if run == "stage2" else None)]
            if run == "stage2":
                commands.insert(0, sweep.fit_command(args, "stage1", None, seed))
            commands.append(sweep.test_command(args, run, 1, seed, ckpt, stage1 if run == "stage2" else None))
            controls = (
                {key: 0.1 + 0.01 * i for i, key in enumerate(sweep.CONTROLS)}
                if regime != "supervised"
                else {}
            )
            rows.append(
                {
                    "regime": regime,
                    "k": 1,
                    "seed": seed,
                    "labeled": str(seed + 3),
                    "test_n_mpjpe": error,
                    "test_mpjpe": error + 20.0,
                    "test_pa_mpjpe": error / 2,
                    "val_n_mpjpe": error - 1.0,
                    "train_min": 20.0 + seed,
                    "val_min": 1.5,
                    "steps": 1000 + seed,
                    "wall_min": 22.0,
                    **controls,
                    "curve": json.dumps([[1.0, error + 30.0], [20.0 + seed, error - 1.0]]),
                    "settings": sweep.settings(args),
                    "command": " && ".join(sweep.shell(args, c) for c in commands),
                }
            )
    stage1.unlink()  # shipped weights never need stage 1's file
    return ship, out, work, rows, modules


def write_rows(path, rows, fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_ship_nvs_ships_the_seed_nearest_each_row_mean_from_its_final_weights(tmp_path, monkeypatch):
    ship, results, work, rows, modules = fake_sweep(tmp_path)
    write_rows(results / "rows.csv", rows, ship.nvs_sweep().FIELDS)
    shipped = tmp_path / "shipped"
    argv = ["nvs", "--results", str(results / "rows.csv"), "--run-dir", str(work), "--out", str(shipped)]
    monkeypatch.setattr(sys, "argv", ["experiments/tools/ship_weights.py", *argv])
    ship.main(argv)
    for regime, name in ship.NVS.items():
        assert (shipped / f"{name}.pt").is_file() and (shipped / f"{name}.json").is_file()
        meta = json.loads((shipped / f"{name}.json").read_text())
        seed = NEAREST[regime]
        row = next(r for r in rows if r["regime"] == regime and r["seed"] == seed)
        assert meta["seed"] == seed and meta["k"] == 1 and meta["steps"] == 1000 + seed
        assert meta["metrics"]["n_mpjpe"] == row["test_n_mpjpe"] == ERRORS[regime][seed]
        assert (
            meta["metrics"]["mpjpe"] == row["test_mpjpe"]
            and meta["metrics"]["pa_mpjpe"] == row["test_pa_mpjpe"]
        )
        assert ("synthesis_l1_hand" in meta["metrics"]) == (regime != "supervised")
        assert meta["row_n_mpjpe"]["seeds"] == 3
        assert meta["row_n_mpjpe"]["mean"] == pytest.approx(sum(ERRORS[regime]) / 3)
        assert meta["validation_curve"] == {
            "columns": ["train_min", "val_n_mpjpe"],
            "points": json.loads(row["curve"]),
        }
        assert meta["trained_by"] == row["command"] and meta["recipe"] == RECIPES[regime]
        assert (
            meta["command"]
            == f"{row['command']} && python experiments/tools/ship_weights.py {' '.join(argv)}"
        )
        assert meta.get("world") == (None if regime == "semi" else WORLD)  # the crops it expects
        assert "labels of 1 of 32 subjects" in meta["trained_on"] and "no real image" in meta["trained_on"]
        loaded = pretrained.load(name, weights_dir=shipped)
        assert isinstance(loaded, NVSModule) and loaded.regime == regime
        for key, value in modules[regime, seed].state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)
    pre = json.loads((shipped / "nvs-pretrained-synthhands.json").read_text())
    assert pre["recipe"] in pre["trained_by"] and "experiments/nvs_pretrained.yaml" in pre["trained_by"]
    # The pretrained network is stage 2's, built without stage 1's file, also from the checkpoint the CLI reads.
    assert pretrained.load("nvs-pretrained-synthhands", weights_dir=shipped).stage == 2
    path = pretrained.lightning_checkpoint(
        "nvs-pretrained-synthhands", tmp_path / "cache", weights_dir=shipped
    )
    rebuilt = NVSModule.load_from_checkpoint(path, map_location="cpu")
    assert rebuilt.stage == 2 and rebuilt.decoder is not None
    for key, value in modules["pretrained", 1].state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_ship_nvs_missing_rows_and_checkpoints_are_one_line(tmp_path):
    ship, results, work, rows, _ = fake_sweep(tmp_path)
    fields = ship.nvs_sweep().FIELDS
    csv_path = results / "rows.csv"
    base = ["nvs", "--results", str(csv_path), "--run-dir", str(work), "--out", str(tmp_path / "shipped")]
    write_rows(csv_path, [r for r in rows if r["regime"] != "pretrained"], fields)
    with pytest.raises(
        SystemExit, match=r"has no pretrained row at k=1 yet \(run python experiments/studies/"
    ):
        ship.main(base)
    write_rows(csv_path, rows, fields)
    with pytest.raises(
        SystemExit, match=r"has no supervised row at k=2 yet .*--subjects 2 --regimes supervised"
    ):
        ship.main([*base, "--subjects", "2"])
    shutil.rmtree(work / "semi_k1_seed0")
    with pytest.raises(SystemExit) as error:
        ship.main(base)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"checkpoint not found: {work / 'semi_k1_seed0'}/version_0/checkpoints/last.ckpt ("
    )
    assert "row semi k=1 seed=0 scored it on test" in message
    untested = [dict(r, command=r["command"].split(" && ")[0]) for r in rows]
    write_rows(csv_path, untested, fields)
    with pytest.raises(SystemExit, match=r"row supervised k=1 seed=2: its command names no --ckpt_path"):
        ship.main(base)
    with pytest.raises(SystemExit, match="results file not found"):
        ship.main(["nvs", "--results", str(tmp_path / "nope.csv"), "--run-dir", str(work)])
