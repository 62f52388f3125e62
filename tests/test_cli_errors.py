"""Bad configs and commands end in one ``handssl: error:`` line naming the file, line or key (exit code 2)."""

from pathlib import Path

import pytest
import torch

from handssl.cli import main

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"
REPO = Path(__file__).parents[1]


def one_line(tmp_path, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("handssl: error: "), err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # nothing left behind
    return err[0].removeprefix("handssl: error: ")


def test_interpolation_to_a_missing_key_names_the_key(tmp_path, capsys):
    got = one_line(
        tmp_path, capsys, "fit", "-c", str(CONF), "--model.init_args.optimizer.lr=${model.init_args.nope}"
    )
    assert (
        got
        == "model.init_args.optimizer.lr: interpolation ${model.init_args.nope} names a key that is not in the config"
    )


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 2\n  callbacks: [a, b\nmodel: {}\n")
    got = one_line(tmp_path, capsys, "fit", "-c", str(CONF), "-c", str(bad))
    assert got.startswith(f"{bad}:4:6: YAML syntax error: ") and "flow sequence" in got, got


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_config_on_a_cpu_machine(tmp_path, capsys):
    got = one_line(
        tmp_path, capsys, "fit", "-c", str(CONF), "-c", str(REPO / "experiments" / "trainer" / "gpu.yaml")
    )
    assert got.startswith("trainer: No supported gpu backend found!") and "--trainer.accelerator=cpu" in got


def test_predict_without_a_checkpoint(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    predict = ["predict", "-c", str(REPO / "experiments" / "predict_images.yaml")]
    got = one_line(tmp_path, capsys, *predict, "--data.init_args.root", str(tmp_path / "imgs"))
    assert got.startswith("predict needs --ckpt_path")


def test_freihand_annotation_file_holding_an_empty_list_is_named(tmp_path, capsys):
    from handssl.data.check import main as check

    (tmp_path / "training" / "rgb").mkdir(parents=True)
    (tmp_path / "training_K.json").write_text("[]")
    (tmp_path / "training_xyz.json").write_text("[]")
    assert check(["freihand", "--root", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert f"{tmp_path / 'training_K.json'} is an empty list" in out.out + out.err
    assert "cannot reshape" not in out.out + out.err


def test_unknown_option_names_the_file_and_full_key(tmp_path, capsys):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  init_args:\n    lrr: 0.1\n")
    got = one_line(tmp_path, capsys, "fit", "-c", str(CONF), "-c", str(extra))
    assert got == f"{extra}: model.init_args.lrr: Option 'lrr' is not accepted"
    got = one_line(tmp_path, capsys, "fit", "-c", str(CONF), "--model.init_args.lrr=0.1")
    assert got == "--model.init_args.lrr: Option 'lrr' is not accepted"
