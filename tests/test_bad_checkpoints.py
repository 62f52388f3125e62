"""A damaged, empty or missing checkpoint is one ``handssl: error:`` line (exit 2) in fit, test, predict and export."""

from pathlib import Path

import pytest

from handssl.cli import main

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"
REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def good_checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def damaged(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    return path  # "missing": never written


EXPECTED = {
    "truncated": "cannot be read",
    "empty": "is empty (0 bytes)",
    "text": "cannot be read",
    "missing": "checkpoint not found",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("command", ["fit", "test", "predict", "export"])
def test_bad_checkpoint_is_one_line_and_leaves_no_run_folder(
    tmp_path, capsys, good_checkpoint, kind, command
):
    ckpt = damaged(kind, good_checkpoint, tmp_path)
    runs = tmp_path / "runs"
    if command == "export":
        args = ["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "m.onnx")]
    elif command == "predict":
        args = ["predict", "-c", str(REPO / "experiments" / "predict_images.yaml")]
        args += ["--data.init_args.root", str(tmp_path), "--ckpt_path", str(ckpt), "--runs_dir", str(runs)]
    else:
        args = [command, "-c", str(CONF), "--ckpt_path", str(ckpt), "--runs_dir", str(runs)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--wandb", "disabled"] if command != "export" else args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("handssl: error: "), err
    assert EXPECTED[kind] in err[0] and str(ckpt) in err[0]
    assert not runs.exists() or not list(runs.rglob("version_*"))
    assert not (tmp_path / "m.onnx").exists()
