"""Inputs checked where they enter: boxes, intrinsics, boxes files, the export's input size and output path."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handssl.cli import main
from handssl.data.base import DatasetError
from handssl.data.image_folder import ImageFolder, annotation_entry

PREDICT = Path(__file__).parents[1] / "experiments" / "predict_images.yaml"


def folder(tmp_path: Path, boxes: dict | None = None, raw: bytes | None = None) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(np.zeros((100, 120, 3), dtype=np.uint8)).save(root / "a.png")  # 120 x 100 pixels
    if boxes is not None:
        (root / "boxes.json").write_text(json.dumps(boxes))
    if raw is not None:
        (root / "boxes.json").write_bytes(raw)
    return root


@pytest.mark.parametrize(
    "box",
    [[0, 0, 1e30, 1e30], [-200, -200, 30, 30], [100, 80, 400, 300]],
    ids=["huge", "mostly-negative", "mostly-beyond"],
)
def test_a_box_mostly_outside_the_image_is_refused_naming_file_and_image(tmp_path, box):
    root = folder(tmp_path, {"a.png": box})
    with pytest.raises(
        DatasetError,
        match=r"boxes file .*boxes\.json, 'a\.png': box .* lies mostly outside the image \(120x100",
    ):
        ImageFolder(root, boxes="boxes.json")


def test_a_box_sticking_out_a_little_is_kept(tmp_path):
    root = folder(tmp_path, {"a.png": [-10, 20, 60, 90]})  # 86 % inside: a hand at the border
    sample = ImageFolder(root, boxes="boxes.json")[0]
    assert sample["box"].tolist() == [-10, 20, 60, 90]


@pytest.mark.parametrize(
    "K",
    [
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[-500, 0, 60], [0, 500, 50], [0, 0, 1]],
        [[500, 0, 60], [0, 500, 50], [0, 0, 0]],
    ],
    ids=["all-zero", "negative-focal", "bad-last-row"],
)
def test_intrinsics_must_be_a_camera(K):
    with pytest.raises(DatasetError, match=r"where: K must be camera intrinsics .* fx, fy > 0"):
        annotation_entry({"K": K}, "where")


def test_a_boxes_file_that_is_not_utf8_names_the_file(tmp_path):
    root = folder(tmp_path, raw=b'{"a.png": [1, 2, 3, 4], "\xff\xfe": 1}')
    with pytest.raises(DatasetError, match=r"boxes file .*boxes\.json is not UTF-8 text"):
        ImageFolder(root, boxes="boxes.json")


def test_cli_box_outside_is_one_line_before_predicting(tmp_path, capsys, shipped_cache):
    root = folder(tmp_path, {"a.png": [0, 0, 1e30, 1e30]})
    args = ["predict", "-c", str(PREDICT), "--data.init_args.root", str(root)]
    args += ["--data.init_args.boxes", "boxes.json", "--ckpt_path", "semihand-synthhands"]
    args += ["--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "boxes.json, 'a.png': box" in err[0] and "mostly outside" in err[0], err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("version_*"))


@pytest.fixture
def shipped_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDSSL_CACHE", str(tmp_path / "cache"))


def export(*args: str) -> int:
    from handssl.export import main as export_main

    return export_main(["--ckpt_path", "semihand-synthhands", *args])


def test_export_image_size_must_match_the_network(tmp_path, capsys, shipped_cache):
    pytest.importorskip("onnx")
    assert export("--output", str(tmp_path / "m.onnx"), "--image_size", "128") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "handssl: error: --image_size 128 differs from the 64-pixel crops SemiHandModule was trained on: "
        "use --image_size 64 (or leave it out)"
    ]
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_export_unwritable_output_is_one_line(tmp_path, capsys, shipped_cache, where):
    pytest.importorskip("onnx")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    output = tmp_path if where == "a folder" else blocker / "m.onnx"
    assert export("--output", str(output)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"handssl: error: --output {output}"), err


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("x", "expected a box [x0, y0, x1, y1] or an object, got str"),
        (5, "expected a box [x0, y0, x1, y1] or an object, got int"),
        (["a", 1, 2, 3], "box must be [x0, y0, x1, y1]"),
    ],
    ids=["string", "number", "non-numeric box"],
)
def test_a_malformed_boxes_entry_names_the_file_and_the_image(tmp_path, entry, says):
    root = folder(tmp_path, {"a.png": entry})
    with pytest.raises(DatasetError) as info:
        ImageFolder(root, boxes="boxes.json")
    assert str(info.value).startswith(f"boxes file {root / 'boxes.json'}, 'a.png': {says}")
