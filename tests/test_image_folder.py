"""Own images: ImageFolder (with and without boxes), its crops, and ``handssl predict`` on a folder."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handssl.callbacks import PredictionWriter
from handssl.cli import main
from handssl.data import ImageFolder
from handssl.data.base import DatasetError
from handssl.data.transforms import CropResize

REPO = Path(__file__).parents[1]
CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"


def write_image(
    path: Path, size_wh: tuple[int, int], red_box: tuple[int, int, int, int] | None = None
) -> None:
    w, h = size_wh
    image = np.full((h, w, 3), 40, dtype=np.uint8)
    if red_box is not None:
        x0, y0, x1, y1 = red_box
        image[y0:y1, x0:x1] = (255, 0, 0)
    Image.fromarray(image).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    write_image(root / "a_wide.png", (120, 60), red_box=(30, 0, 90, 60))  # centred square = the red square
    write_image(root / "b_box.jpg", (100, 100), red_box=(10, 20, 40, 50))
    write_image(root / "c_left.png", (80, 80), red_box=(50, 10, 70, 30))
    (root / "notes.txt").write_text("not an image")
    return root


def test_without_boxes_the_centred_square_is_the_hand(folder):
    data = ImageFolder(folder)
    assert [p.name for p in data.files] == ["a_wide.png", "b_box.jpg", "c_left.png"]
    sample = data[0]
    assert sample["image"].shape == (60, 120, 3) and sample["image"].dtype == np.uint8
    assert sample["box"].tolist() == [30, 0, 90, 60]
    assert not sample["valid"].any() and np.isnan(sample["joints3d"]).all()
    assert sample["K"].tolist() == [[120, 0, 59.5], [0, 120, 29.5], [0, 0, 1]]
    assert sample["meta"]["box_source"] == "center" and sample["meta"]["calibrated"] is False
    # The default crop frames the box with the margin: the red square fills the middle 2/3 of the crop.
    out = CropResize(image_size=48, margin=0.25)(sample)
    image = out["image"]
    assert image.shape == (3, 48, 48)
    assert torch.allclose(out["box"], torch.tensor([7.5, 7.5, 39.5, 39.5]), atol=1e-4)
    red = (image[0] > 0.9) & (image[1] < 0.1)
    assert red[10:38, 10:38].all() and not red[:6].any() and not red[:, :6].any()


def test_boxes_hands_and_intrinsics_from_json(folder):
    K = [[200.0, 0.0, 50.0], [0.0, 200.0, 50.0], [0.0, 0.0, 1.0]]
    (folder / "boxes.json").write_text(
        json.dumps(
            {
                "b_box.jpg": {"box": [10, 20, 40, 50], "K": K},
                "c_left.png": {"box": [50, 10, 70, 30], "hand": "left"},
            }
        )
    )
    data = ImageFolder(folder, boxes="boxes.json", mirror_left=True)
    b = data[1]
    assert b["box"].tolist() == [10, 20, 40, 50] and b["K"].tolist() == K and b["meta"]["calibrated"] is True
    out = CropResize(image_size=32, margin=0.0)(b)
    red = (out["image"][0] > 0.7) & (out["image"][1] < 0.3)
    assert red[2:30, 2:30].all()  # the box is the crop (JPEG blurs the edges)
    left = data[2]
    assert left["meta"]["mirrored"] is True and left["meta"]["hand"] == "right"
    assert left["box"].tolist() == [9, 10, 29, 30]  # u -> 79 - u
    assert (left["image"][10:30, 10:29] == (255, 0, 0)).all()
    assert not ImageFolder(folder, boxes="boxes.json")[2]["meta"]["mirrored"]


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ({"missing.png": [0, 0, 1, 1]}, "'missing.png' is not an image"),
        ({"b_box.jpg": [0, 0, 1]}, "box must be [x0, y0, x1, y1]"),
        ({"b_box.jpg": {"box": [0, 0, 5, 5], "hand": "both"}}, "hand must be 'left' or 'right'"),
    ],
)
def test_bad_boxes_file_is_named(folder, boxes, message):
    (folder / "boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(DatasetError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ImageFolder(folder, boxes=folder / "boxes.json")


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        ImageFolder(tmp_path / "empty")


def test_writer_maps_2d_joints_back_to_the_original_image_and_unmirrors():
    writer = PredictionWriter()
    # Crop: original pixels -> input pixels, scale 0.5 and shift (-10, -20).
    A = torch.tensor([[0.5, 0.0, -10.0], [0.0, 0.5, -20.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    joints2d = torch.rand(2, 21, 2) * 32
    joints3d = torch.randn(2, 21, 3)
    meta = {"mirrored": [False, True], "image_width": [100, 100]}
    prediction = {"joints3d": joints3d, "joints2d": joints2d, "meta": meta}
    writer.write_on_batch_end(None, None, prediction, [0, 1], {"crop": A}, 0, 0)
    rows = writer._rows
    expected = (joints2d + torch.tensor([10.0, 20.0])) * 2
    assert torch.allclose(rows[0]["joints2d_image"], expected[0], atol=1e-4)
    assert torch.allclose(rows[0]["joints3d"], joints3d[0])
    flipped = expected[1].clone()
    flipped[:, 0] = 99 - flipped[:, 0]
    assert torch.allclose(rows[1]["joints2d_image"], flipped, atol=1e-4)
    assert torch.allclose(rows[1]["joints3d"][:, 0], -joints3d[1][:, 0])
    assert torch.allclose(rows[1]["joints2d"], joints2d[1])  # the network input's frame is kept


def test_semihand_predict_step_gives_2d_camera_frame_and_confidence():
    from handssl.models import SemiHandModule

    model = SemiHandModule().eval()
    K = torch.tensor([[60.0, 0.0, 31.5], [0.0, 60.0, 31.5], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    with torch.no_grad():
        out = model.predict_step({"image": torch.rand(2, 3, 64, 64), "K": K}, 0)
    assert out["joints2d"].shape == (2, 21, 2) and out["confidence"].shape == (2, 21)
    assert ((out["confidence"] > 0) & (out["confidence"] <= 1)).all()
    rel = out["joints3d_camera"] - out["joints3d_camera"][:, :1]
    assert torch.allclose(out["joints3d"], rel, atol=1e-4)
    # The camera-frame joints project onto the predicted 2D joints.
    uvw = out["joints3d_camera"] @ K[0].T
    assert torch.allclose(uvw[..., :2] / uvw[..., 2:], out["joints2d"], atol=1e-2)
    # The writer keeps them, mirrors them back with the rest, and writes them as JSON lines.
    writer = PredictionWriter()
    meta = {"mirrored": [False, True], "path": ["a.png", "b.png"]}
    writer.write_on_batch_end(None, None, {**out, "meta": meta}, [0, 1], {}, 0, 0)
    row = writer._rows[1]
    assert torch.allclose(row["joints3d_camera"][:, 0], -out["joints3d_camera"][1, :, 0])
    from handssl.callbacks.predictions import _json_row

    line = json.loads(json.dumps(_json_row(writer._rows[0])))
    assert line["path"] == "a.png" and np.asarray(line["joints3d_camera"]).shape == (21, 3)
    assert np.asarray(line["confidence"]).shape == (21,)


def run(args, tmp_path):
    main([*args, "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"])


def test_predict_on_a_folder_through_the_cli(tmp_path, folder, capsys):
    run(["fit", "-c", str(CONF)], tmp_path)
    ckpt = next((tmp_path / "runs" / "supervised_tiny" / "version_0" / "checkpoints").glob("*.ckpt"))
    config = REPO / "experiments" / "predict_images.yaml"
    # The form: the config alone, the model rebuilt from the checkpoint, overlays on request.
    args = ["predict", "-c", str(config), "--ckpt_path", str(ckpt), "--data.init_args.image_size", "32"]
    run([*args, "--data.init_args.root", str(folder), "--overlays", "true"], tmp_path)
    run_dir = tmp_path / "runs" / "predict_images" / "version_0"
    preds = torch.load(run_dir / "predictions.pt")
    assert preds["meta"]["path"] == ["a_wide.png", "b_box.jpg", "c_left.png"]
    assert preds["joints3d"].shape == (3, 21, 3) and torch.isfinite(preds["joints3d"]).all()
    assert preds["crop"].shape == (3, 3, 3)
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["a_wide.png", "b_box.jpg", "c_left.png"]
    for i, row in enumerate(rows):
        assert np.allclose(row["joints2d"], preds["joints2d_image"][i].numpy(), atol=1e-3)
        assert np.allclose(row["joints3d"], preds["joints3d"][i].numpy(), atol=1e-3)
        assert row["calibrated"] is False and "joints3d_camera" not in row  # no K, no root depth
    # Overlays: one PNG per image at the original image's size.
    for name, size in (("a_wide.png", (120, 60)), ("b_box.png", (100, 100)), ("c_left.png", (80, 80))):
        assert Image.open(run_dir / "overlays" / name).size == size
    # After a training config (which sets image_size): the same numbers.
    overlay_args = ["predict", "-c", str(CONF), "-c", str(config), "--ckpt_path", str(ckpt)]
    run([*overlay_args, f"--data.init_args.root={folder}"], tmp_path)
    # (a run of several config files is named by their stems joined by "+")
    again = torch.load(tmp_path / "runs" / "supervised_tiny+predict_images" / "version_0" / "predictions.pt")
    assert torch.allclose(again["joints3d"], preds["joints3d"], atol=1e-5)
    # The short form works too, and an empty folder is one line with exit code 2.
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run(
            [
                "predict",
                "-c",
                str(CONF),
                "--ckpt_path",
                str(ckpt),
                "--data.init_args.predict=ImageFolder",
                f"--data.init_args.predict.init_args.root={tmp_path / 'empty'}",
            ],
            tmp_path,
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("handssl: error: no images") and "Traceback" not in "".join(err)
