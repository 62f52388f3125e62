"""handssl.infer: the same numbers as ``handssl predict``, every input form, and one clear line per bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import handssl
import handssl.pretrained as pretrained
from handssl.cli import main
from handssl.data import ImageFolder
from handssl.data.base import DatasetError

NAME = "semihand-synthhands"
REPO = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(NAME not in pretrained.available(), reason=f"{NAME} is not shipped")


def hand_like_image(w: int, h: int, seed: int) -> np.ndarray:
    """Noise with a skin-coloured blob: any content will do, but not a symmetric one (mirroring must show)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    image[h // 4 : h // 2, w // 3 : w // 2] = (220, 170, 140)
    return image


@pytest.fixture(scope="module")
def task():
    return pretrained.load(NAME)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i, (w, h) in enumerate([(120, 80), (64, 64), (90, 140)]):
        Image.fromarray(hand_like_image(w, h, i)).save(root / f"p{i}.png")
    K = [[150.0, 0.0, 44.5], [0.0, 150.0, 69.5], [0.0, 0.0, 1.0]]
    boxes = {
        "p0.png": [20, 5, 80, 70],
        "p1.png": {"hand": "left"},
        "p2.png": {"box": [10, 30, 70, 100], "K": K},
    }
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


def test_infer_gives_the_numbers_of_handssl_predict(tmp_path, folder, monkeypatch):
    monkeypatch.setenv("HANDSSL_CACHE", str(tmp_path / "cache"))
    config = REPO / "experiments" / "predict_images.yaml"
    args = ["predict", "-c", str(config), "--ckpt_path", NAME, "--data.init_args.root", str(folder)]
    args += ["--data.init_args.boxes", "boxes.json", "--data.init_args.mirror_left", "true"]
    main([*args, "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"])
    run_dir = tmp_path / "runs" / "predict_images" / "version_0"
    tensors = torch.load(run_dir / "predictions.pt")
    lines = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]

    results = handssl.infer(folder, model=NAME, boxes=folder / "boxes.json")  # one batch, as predict's
    assert [r["path"] for r in results] == [str(folder / f"p{i}.png") for i in range(3)]
    assert tensors["meta"]["mirrored"] == [False, True, False]  # the left hand went through the mirror
    for i, (result, line) in enumerate(zip(results, lines, strict=True)):
        assert set(result) - {"path"} == set(line) - {"path"}
        assert result["joints2d"].shape == (21, 2) and result["joints2d"].dtype == np.float32
        assert result["joints3d"].shape == (21, 3) and result["confidence"].shape == (21,)
        np.testing.assert_array_equal(result["joints2d"], tensors["joints2d_image"][i])
        np.testing.assert_array_equal(result["joints3d"], tensors["joints3d"][i])
        np.testing.assert_array_equal(result["confidence"], tensors["confidence"][i])
        for key in ("joints2d", "joints3d", "joints3d_camera", "confidence"):
            if key in line:
                np.testing.assert_allclose(result[key], line[key], atol=2e-4)
        assert result["calibrated"] is line["calibrated"] is (i == 2)


def test_every_input_form_gives_the_same_numbers(tmp_path, folder, task):
    arrays = [np.asarray(Image.open(folder / f"p{i}.png")) for i in range(3)]
    files = [folder / f"p{i}.png" for i in range(3)]
    box = [20, 5, 80, 70]
    reference = handssl.infer(folder, model=task, boxes={"p0.png": box})
    assert reference[1]["calibrated"] is False
    forms = {
        "one file": (handssl.infer(files[0], model=task, boxes={"p0.png": box}), [0]),
        "files, boxes by path": (handssl.infer(files, model=task, boxes={str(files[0]): box}), [0, 1, 2]),
        "one array": (handssl.infer(arrays[0], model=task, boxes=[box]), [0]),
        "arrays": (handssl.infer(arrays, model=task, boxes=[box, None, None], batch_size=1), [0, 1, 2]),
        "a 4-D batch": (handssl.infer(np.stack([arrays[1]] * 2), model=task), [1, 1]),
        "mixed": (handssl.infer([files[0], arrays[1]], model=task, boxes=[box, None]), [0, 1]),
    }
    for form, (results, which) in forms.items():
        assert len(results) == len(which), form
        for result, i in zip(results, which, strict=True):
            # Up to float rounding: convolutions may sum in another order for another batch size.
            close = {"rtol": 1e-5, "atol": 1e-3, "err_msg": form}
            np.testing.assert_allclose(result["joints3d"], reference[i]["joints3d"], **close)
            np.testing.assert_allclose(result["joints2d"], reference[i]["joints2d"], **close)
            assert ("path" in result) is (
                form in ("one file", "files, boxes by path") or (form == "mixed" and i == 0)
            )
    # The box matters: without it the centred square of p0 is cropped.
    unboxed = handssl.infer(files[0], model=task)
    assert np.abs(unboxed[0]["joints2d"] - reference[0]["joints2d"]).max() > 1.0


def test_a_left_hand_is_predicted_as_the_mirrored_right_hand(task):
    image = hand_like_image(96, 72, 5)
    w = image.shape[1]
    box = [20, 10, 70, 60]
    mirrored_box = [w - 1 - box[2], box[1], w - 1 - box[0], box[3]]
    right = handssl.infer(image, model=task, boxes=[box], hands=["right"])[0]
    left = handssl.infer(image[:, ::-1], model=task, boxes=[mirrored_box], hands=["left"])[0]
    np.testing.assert_allclose(left["joints2d"][:, 0], w - 1 - right["joints2d"][:, 0], atol=1e-3)
    np.testing.assert_allclose(left["joints2d"][:, 1], right["joints2d"][:, 1], atol=1e-3)
    np.testing.assert_allclose(left["joints3d"] * [-1, 1, 1], right["joints3d"], atol=1e-3)


def test_a_model_without_2d_joints_returns_none_for_them():
    name = "nvs-supervised-synthhands"
    if name not in pretrained.available():
        pytest.skip(f"{name} is not shipped")
    result = handssl.infer(hand_like_image(64, 64, 0), model=name)[0]
    assert result["joints2d"] is None and result["joints3d"].shape == (21, 3)
    assert "confidence" not in result and "joints3d_camera" not in result


def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return path


ARRAY = hand_like_image(40, 30, 0)
BAD = {
    "unknown name": (
        lambda tmp: {"images": ARRAY, "model": "semihand-nope"},
        r"'semihand-nope'.*semihand-synthhands",
    ),
    "unreadable image": (
        lambda tmp: {"images": _corrupt(tmp)},
        r"corrupt or truncated image file: .*broken\.png",
    ),
    "missing image": (
        lambda tmp: {"images": tmp / "nope.jpg"},
        r"image file or folder not found: .*nope\.jpg",
    ),
    "empty folder": (lambda tmp: {"images": tmp}, r"no images \(\.png"),
    "box outside the image": (
        lambda tmp: {"images": ARRAY, "boxes": [[50, 40, 90, 80]]},
        r"image 0: box \[50\.0, 40\.0, 90\.0, 80\.0\] lies outside the image \(40x30 pixels\)",
    ),
    "malformed box": (
        lambda tmp: {"images": ARRAY, "boxes": [[10, 10, 5, 20]]},
        r"box must be \[x0, y0, x1, y1\]",
    ),
    "wrong shape": (
        lambda tmp: {"images": ARRAY[..., :1]},
        r"uint8 RGB of shape \(H, W, 3\), got uint8 of shape",
    ),
    "wrong dtype": (lambda tmp: {"images": ARRAY / 255.0}, r"got float64 of shape \(30, 40, 3\)"),
    "bad hand": (
        lambda tmp: {"images": ARRAY, "hands": ["both"]},
        r"hand must be 'left' or 'right', got 'both'",
    ),
    "too few boxes": (
        lambda tmp: {"images": [ARRAY, ARRAY], "boxes": [None]},
        r"boxes: 1 entries for 2 images",
    ),
    "box for no file": (
        lambda tmp: {"images": ARRAY, "boxes": {"a.jpg": [0, 0, 9, 9]}},
        r"'a\.jpg' names none",
    ),
    "not an image": (
        lambda tmp: {"images": [3]},
        r"image 0: expected a file path or a uint8 HxWx3 array, got int",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_clear_line(tmp_path, task, case):
    make, pattern = BAD[case]
    kwargs = make(tmp_path)
    kwargs.setdefault("model", task)
    with pytest.raises(handssl.InferError, match=pattern) as info:
        handssl.infer(**kwargs)
    assert "\n" not in str(info.value)


def test_image_folder_refuses_a_box_outside_its_image(tmp_path):
    Image.fromarray(ARRAY).save(tmp_path / "a.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [-30, 0, -1, 10]}))
    with pytest.raises(DatasetError, match=r"'a\.png': box .* lies outside the image \(40x30 pixels\)"):
        ImageFolder(tmp_path, boxes="boxes.json")[0]
    # A box that only crosses the border is a hand at the edge: fine.
    (tmp_path / "boxes.json").write_text(json.dumps({"a.png": [-10, -5, 20, 20]}))
    assert ImageFolder(tmp_path, boxes="boxes.json")[0]["box"].tolist() == [-10, -5, 20, 20]


def test_infer_is_exported_lazily():
    code = "import sys, handssl; print('handssl.inference' in sys.modules, 'torch' in sys.modules, callable(handssl.infer))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["False", "False", "True"]
    assert "infer" in dir(handssl) and "infer" in handssl.__all__
