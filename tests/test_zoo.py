"""The model zoo: shipped metadata says how to reproduce each network (issue 22, item 4) and ``handssl models``."""

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script

import handssl.pretrained as pretrained

REPO = Path(__file__).parents[1]


def ship_weights():
    return load_script("experiments/tools/ship_weights.py")


def current_path(recipe: str) -> str:
    """Where a recorded recipe is now: networks shipped before issue 24 record a study script at its old place,
    ``experiments/<script>.py``; it moved to ``experiments/studies/`` or ``experiments/tools/`` (the recorded
    metadata is history and is not rewritten; YAML recipes did not move)."""
    if (REPO / recipe).is_file():
        return recipe
    head, name = recipe.rsplit("/", 1)
    if head == "experiments" and name.endswith(".py"):
        for folder in ("studies", "tools"):
            if (REPO / head / folder / name).is_file():
                return f"{head}/{folder}/{name}"
    return recipe


@pytest.mark.parametrize("name", pretrained.available())
def test_every_shipped_network_names_its_recipe_command_and_seed(name):
    meta = pretrained.info(name)
    assert meta["recipe"].startswith("experiments/") and (REPO / current_path(meta["recipe"])).is_file()
    assert meta["command"] == f"{meta['trained_by']} && {meta['ship_command']}"
    assert meta["recipe"] in meta["trained_by"]
    assert isinstance(meta["seed"], int)


def test_recipe_and_seed_are_read_from_the_command_and_the_results(tmp_path):
    ship = ship_weights()
    assert (
        ship.recipe_of("python experiments/studies/label_sweep.py --subjects 1")
        == "experiments/studies/label_sweep.py"
    )
    assert (
        ship.recipe_of("handssl fit -c experiments/semihand_full.yaml --x 1")
        == "experiments/semihand_full.yaml"
    )
    assert ship.recipe_of("python train.py") is None
    chain = "handssl fit -c experiments/semihand_source_only.yaml && handssl fit -c experiments/semihand_full.yaml"
    assert ship.recipe_of(chain) == "experiments/semihand_full.yaml"  # the last stage's recipe
    assert ship.seed_of(Path("experiments/results/semihand_ablation/semihand_ablation_real_seed1.csv")) == 1
    (tmp_path / "args.json").write_text(json.dumps({"seed": "7"}))
    assert ship.seed_of(tmp_path / "rows.jsonl") == 7
    assert ship.seed_of(tmp_path / "other" / "rows.jsonl") is None


def test_ship_weights_ships_the_seed_nearest_the_row_mean_with_its_recipe_and_command(tmp_path, monkeypatch):
    from handssl.models import SemiHandModule

    ship = ship_weights()
    work = tmp_path / "runs"
    results = tmp_path / "rows.csv"
    fields = ["row", "seed", "mpjpe", "pa_mpjpe", "auc", "steps", "minutes", "command"]
    modules = {}
    with results.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for row in ("source_only", "full", "oracle"):
            recipe = "semihand_oracle.yaml" if row == "oracle" else "semihand_full.yaml"
            for seed, error in ((0, 50.0), (1, 60.0), (2, 58.0)):  # mean 56: seed 2 is nearest
                module = SemiHandModule(backbone_widths=(8, 8, 8, 8), decoder_channels=8)
                modules[row, seed] = module
                folder = work / f"{row}_seed{seed}" / "version_0" / "checkpoints"
                folder.mkdir(parents=True)
                checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
                torch.save(checkpoint, folder / "final.ckpt")
                command = f"handssl fit -c experiments/{recipe} --seed_everything={seed}"
                writer.writerow([row, seed, error, 27.0, 0.3, 6000, 25.0, command])
    argv = ["semihand", "--run-dir", str(work), "--results", str(results), "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", ["experiments/tools/ship_weights.py", *argv])
    ship.main(argv)
    meta = json.loads((tmp_path / "out" / "semihand-synthhands.json").read_text())
    assert meta["seed"] == 2 and meta["recipe"] == "experiments/semihand_full.yaml"
    assert meta["row_mpjpe"]["seeds"] == 3 and abs(meta["row_mpjpe"]["mean"] - 56.0) < 1e-9
    assert meta["command"] == (
        "handssl fit -c experiments/semihand_full.yaml --seed_everything=2 && "
        f"python experiments/tools/ship_weights.py {' '.join(argv)}"
    )
    oracle = json.loads((tmp_path / "out" / "semihand-oracle-synthhands.json").read_text())
    assert oracle["recipe"] == "experiments/semihand_oracle.yaml"
    # The metadata still describes the file beside it: the weights load (the chosen seed's) and are checked.
    loaded = pretrained.load("semihand-synthhands", weights_dir=tmp_path / "out")
    for key, value in modules["full", 2].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_readme_model_table_is_the_output_of_handssl_models_markdown(capsys):
    from handssl.cli import main
    from handssl.zoo import readme_table

    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--markdown"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out.strip("\n")
    assert readme_table(REPO / "README.md") == printed, (
        "README's model table is stale: run `handssl models --update_readme README.md`"
    )
    for name in pretrained.available():
        meta = pretrained.info(name)
        line = next(row for row in printed.splitlines() if row.startswith(f"| `{name}` |"))
        for value in (meta["sha256"], meta["recipe"], meta["command"], f"seed {meta['seed']}"):
            assert value in line, (name, value)
        assert f"MPJPE {meta['metrics']['mpjpe']:.1f} mm" in line


def test_a_missing_field_is_a_dash(tmp_path, capsys):
    from handssl.zoo import MISSING, describe, main, markdown_table

    (tmp_path / "bare.pt").write_bytes(b"")
    (tmp_path / "bare.json").write_text(json.dumps({"class": "SemiHandModule", "metrics": {"mpjpe": 50.0}}))
    row = describe("bare", tmp_path)
    assert row["task"] == "3D pose from 2.5D heatmaps (SemiHand)"
    assert row["test metrics"] == f"MPJPE 50.0 mm (seed {MISSING})"
    for column in ("trained on", "input", "recipe", "command", "size", "SHA-256"):
        assert row[column] == MISSING, column
    assert markdown_table(tmp_path).splitlines()[-1].count(MISSING) == 7  # six columns and the seed
    assert main(["--weights_dir", str(tmp_path)]) == 0
    assert "bare  (3D pose from 2.5D heatmaps (SemiHand); —; —)" in capsys.readouterr().out
    (tmp_path / "bare.json").write_text("{}")
    assert set(describe("bare", tmp_path).values()) == {"bare", MISSING}


def test_models_in_the_top_level_help_and_bad_options_are_one_line(tmp_path, capsys):
    from handssl.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "\n  models " in capsys.readouterr().out
    for args, expected in (
        (["models", "--markdwon"], "handssl: error: models: unrecognized arguments: --markdwon"),
        (["models", "--weights_dir", str(tmp_path / "nope")], "is not a folder"),
        (["models", "--update_readme", str(tmp_path / "x.md")], "handssl: error: "),
    ):
        if args[1] == "--update_readme":
            (tmp_path / "x.md").write_text("no markers here\n")
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err


def test_update_readme_rewrites_only_the_block_between_the_markers(tmp_path):
    from handssl.zoo import MARKERS, markdown_table, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{MARKERS[0]}\nold table\n{MARKERS[1]}\n\nafter\n")
    assert update_readme(readme) is True
    assert readme.read_text() == f"# x\n\nbefore\n\n{MARKERS[0]}\n{markdown_table()}\n{MARKERS[1]}\n\nafter\n"
    assert update_readme(readme) is False


def test_readme_try_it_section_names_a_shipped_network_and_says_what_it_was_trained_on():
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Try it on your own photos")
    assert start < readme.index("## Two commands")  # near the top
    section = readme[start : readme.index("\n## ", start + 1)]
    command = next(line for line in section.splitlines() if line.startswith("handssl predict "))
    args = command.split()
    assert (REPO / args[args.index("-c") + 1]).is_file()
    assert args[args.index("--ckpt_path") + 1] in pretrained.available()
    assert "--overlays true" in command and "overlays/" in section and "handssl.infer(" in section
    assert "SynthHands only" in section and "no real image" in section and "poor accuracy" in section
    for key in ("joints2d", "joints3d", "joints3d_camera", "confidence", "calibrated"):
        assert f"| `{key}` |" in section
    for name in pretrained.available():
        assert "no real image" in pretrained.info(name)["trained_on"]
