"""``handssl predict`` keeps what it can: unreadable images are skipped and named, the others written."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handssl.cli import main
from handssl.data.base import DatasetError, load_image

CONF = Path(__file__).parent / "conf" / "supervised_tiny.yaml"
PREDICT = Path(__file__).parents[1] / "experiments" / "predict_images.yaml"


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)
    return folder


def predict(tmp_path, root: Path, checkpoint: Path, *extra: str) -> int:
    args = ["predict", "-c", str(PREDICT), "--data.init_args.root", str(root), "--ckpt_path", str(checkpoint)]
    args += ["--data.init_args.image_size=32", "--runs_dir", str(tmp_path / "runs"), "--wandb", "disabled"]
    try:
        main([*args, *extra])
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


def written(tmp_path) -> list[dict]:
    (jsonl,) = (tmp_path / "runs").glob("predict_images/version_*/predictions.jsonl")
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_skipped_and_named_the_others_written(tmp_path, capsys, checkpoint, workers):
    root = images(tmp_path / "imgs", [f"good{i}.png" for i in range(5)])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    code = predict(tmp_path, root, checkpoint, f"--data.init_args.num_workers={workers}")
    assert code == 3  # written, but some are missing
    assert [row["path"] for row in written(tmp_path)] == [f"good{i}.png" for i in range(5)]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("handssl: skipped")]
    assert [line.split(":")[1].strip() for line in lines[:2]] == ["skipped empty.jpg", "skipped text.png"]
    assert all("corrupt or truncated image file" in line and "Traceback" not in line for line in lines[:2])
    assert lines[2] == "handssl: skipped 2 of 7 items (listed above); wrote the other 5"


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_stops_at_the_first_unreadable_image_in_one_line(tmp_path, capsys, checkpoint, workers):
    root = images(tmp_path / "imgs", ["a.png", "b.png"])
    (root / "bad.jpg").write_bytes(b"")
    code = predict(tmp_path, root, checkpoint, "--strict=true", f"--data.init_args.num_workers={workers}")
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "handssl: error:" in line]
    assert len(err) == 1 and err[0].endswith(
        f"corrupt or truncated image file: {root / 'bad.jpg'} "
        f"(cannot identify image file '{root / 'bad.jpg'}')"
    ), err
    assert not list((tmp_path / "runs").rglob("version_*"))  # the failed run's empty folder is gone


def test_images_with_one_stem_get_one_overlay_each(tmp_path, caplog, checkpoint):
    root = images(tmp_path / "imgs", ["a.jpg", "a.png", "b.png"])
    assert predict(tmp_path, root, checkpoint, "--overlays=true") == 0
    (run,) = (tmp_path / "runs" / "predict_images").iterdir()
    assert sorted(p.name for p in (run / "overlays").iterdir()) == ["a.jpg.png", "a.png.png", "b.png"]
    assert "wrote 3 overlays" in caplog.text


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    for name in ("g16.png", "g16.tif"):
        image = load_image(tmp_path / name)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        expected = np.round(ramp / 65535 * 255)
        assert np.abs(image[..., 0].astype(float) - expected).max() <= 0.5  # was: 99.6 % of pixels at 255
    floats = np.arange(16, dtype=np.float32).reshape(4, 4) / 15
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    assert load_image(tmp_path / "f.tif")[..., 0].tolist()[0] == [0, 17, 34, 51]


def test_an_image_over_pils_size_limit_is_a_dataset_error(tmp_path, monkeypatch):
    images(tmp_path, ["big.png"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 40x50 = 2000 pixels: over twice the limit
    with pytest.raises(DatasetError, match=r"image too large: .*big\.png"):
        load_image(tmp_path / "big.png")
