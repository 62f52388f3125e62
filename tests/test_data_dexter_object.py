import numpy as np
import pytest

from handssl.data import DatasetError, DexterObject, check_sample
from handssl.data import dexter_object as do_module
from handssl.data.fakes import make_fake_dexter_object
from handssl.data.fakes.rhd import marker_color
from handssl.geometry import project

# Typed from datasets.md §3 (constants shared by Minimal-Hand and a second public loader).
K_COLOR = np.array([[587.45209, 0, 325], [0, 600.67456, 249], [0, 0, 1]])
T_DEPTH_TO_COLOR = np.array(
    [
        [0.9999, 0.0034, 0.0161, 19.0473],
        [-0.0033, 1.0000, -0.0079, -1.8514],
        [-0.0162, 0.0079, 0.9998, -4.7501],
    ]
)
TIP_SLOTS = {"thumb": 4, "index": 8, "middle": 12, "ring": 16, "little": 20}


@pytest.fixture(scope="module")
def do_root(tmp_path_factory):
    return make_fake_dexter_object(tmp_path_factory.mktemp("do"), num_frames={"Rotate": 3})


def _pixel(image, uv):
    return tuple(int(c) for c in image[round(float(uv[1])), round(float(uv[0]))])


def _raw_rows(path):
    rows = []
    for line in path.read_text().splitlines():
        rows.append([[float(v) for v in field.split(",")] for field in line.split(";") if field.strip()])
    return np.array(rows)


def test_constants():
    np.testing.assert_array_equal(do_module.DO_COLOR_K, K_COLOR)
    np.testing.assert_array_equal(do_module.DO_DEPTH_TO_COLOR, T_DEPTH_TO_COLOR)


def test_counts_and_sequences(do_root):
    ds = DexterObject(do_root)
    assert len(ds) == 5 * 2 + 3
    assert [ds[i]["meta"]["sequence"] for i in (0, 2, 12)] == ["Grasp1", "Grasp2", "Rotate"]
    assert len(DexterObject(do_root, sequences=["Rotate"])) == 3
    assert len(DexterObject(do_root / "data", sequences=["Pinch"])) == 2  # root may be the data/ folder


def test_tips_in_colour_frame_and_canonical_slots(do_root):
    sample = DexterObject(do_root, sequences=["Pinch"])[1]
    check_sample(sample)
    raw = _raw_rows(do_root / "data" / "Pinch" / "annotations" / "Pinch3D.txt")[1]  # (5, 3) thumb..little
    expected = np.c_[-raw[:, 0], -raw[:, 1], raw[:, 2], np.ones(5)] @ T_DEPTH_TO_COLOR.T
    np.testing.assert_allclose(sample["joints3d"][list(TIP_SLOTS.values())], expected, atol=1e-3)
    assert sample["valid"].sum() == 5 and sample["valid"][list(TIP_SLOTS.values())].all()
    others = [j for j in range(21) if j not in TIP_SLOTS.values()]
    assert np.isnan(sample["joints3d"][others]).all() and np.isnan(sample["joints2d"][others]).all()
    tips = list(TIP_SLOTS.values())
    np.testing.assert_allclose(
        project(sample["joints3d"][tips].astype(np.float64), K_COLOR), sample["joints2d"][tips], atol=0.5
    )
    for c in tips:
        assert _pixel(sample["image"], sample["joints2d"][c]) == marker_color(c, "left"), c
    assert sample["meta"]["hand"] == "left" and sample["meta"]["unit"] == "mm"
    np.testing.assert_array_equal(sample["K"], K_COLOR.astype(np.float32))


def test_missing_tip_marker(do_root):
    ds = DexterObject(do_root, sequences=["Grasp1"])
    assert ds[0]["valid"].sum() == 5
    sample = ds[1]  # the fake leaves tip 2 (middle) of Grasp1 frame 1 without annotation
    check_sample(sample)
    assert np.flatnonzero(sample["valid"]).tolist() == [4, 8, 16, 20]
    assert np.isnan(sample["joints3d"][12]).all() and np.isnan(sample["joints2d"][12]).all()


def test_mirror_left(do_root):
    plain = DexterObject(do_root, sequences=["Rigid"])[0]
    mirrored = DexterObject(do_root, sequences=["Rigid"], mirror_left=True)[0]
    assert mirrored["meta"]["hand"] == "right"
    tips = list(TIP_SLOTS.values())
    reproj = project(mirrored["joints3d"][tips].astype(np.float64), mirrored["K"].astype(np.float64))
    np.testing.assert_allclose(reproj, mirrored["joints2d"][tips], atol=0.5)
    np.testing.assert_allclose(mirrored["joints2d"][tips, 0], 639 - plain["joints2d"][tips, 0], atol=1e-3)
    for c in tips:
        assert _pixel(mirrored["image"], mirrored["joints2d"][c]) == marker_color(c, "left")


def test_natural_sort_pairs_unpadded_names(tmp_path):
    root = make_fake_dexter_object(
        tmp_path / "do", sequences=["Grasp2"], num_frames=12, name_pattern="{}.png", missing_tips=()
    )
    ds = DexterObject(root, sequences=["Grasp2"])
    for i in (2, 10, 11):
        sample = ds[i]
        assert sample["meta"]["image_path"].endswith(f"/{i}.png")
        assert _pixel(sample["image"], sample["joints2d"][8]) == marker_color(8, "left")


def test_count_mismatch(tmp_path):
    root = make_fake_dexter_object(tmp_path / "do", sequences=["Grasp1"], num_frames=3)
    (root / "data" / "Grasp1" / "color" / "00002.png").unlink()
    with pytest.raises(DatasetError, match=r"'Grasp1': 2 images in .*color but 3 annotation rows"):
        DexterObject(root, sequences=["Grasp1"])


def test_errors(tmp_path, do_root):
    with pytest.raises(DatasetError, match="Dexter\\+Object root folder not found") as err:
        DexterObject(tmp_path / "nope")
    assert "Grasp13D.txt" in str(err.value)
    root = make_fake_dexter_object(tmp_path / "do", sequences=["Grasp1"])
    with pytest.raises(DatasetError, match="Dexter\\+Object sequence 'Grasp2' not found"):
        DexterObject(root)  # the default needs all six
    (root / "data" / "Grasp1" / "annotations" / "Grasp13D.txt").unlink()
    with pytest.raises(DatasetError, match=r"annotation file not found: .*Grasp13D.txt"):
        DexterObject(root, sequences=["Grasp1"])
    with pytest.raises(ValueError, match="only has a 'test' split"):
        DexterObject(do_root, split="train")
    with pytest.raises(ValueError, match="sequences must be a non-empty list"):
        DexterObject(do_root, sequences="Grasp1")


def test_corrected_labels_pattern(tmp_path):
    root = make_fake_dexter_object(tmp_path / "do", sequences=["Rotate"])
    anno = root / "data" / "Rotate" / "annotations"
    (anno / "my_Rotate3D.txt").write_text((anno / "Rotate3D.txt").read_text())
    (anno / "Rotate3D.txt").unlink()
    assert len(DexterObject(root, sequences=["Rotate"], annotation_pattern="my_{sequence}3D.txt")) == 2


def test_nan_and_malformed_rows_raise(tmp_path):
    root = make_fake_dexter_object(tmp_path / "do", sequences=["Occlusion"], num_frames=3)
    path = root / "data" / "Occlusion" / "annotations" / "Occlusion3D.txt"
    lines = path.read_text().splitlines()
    good = lines[1]
    lines[1] = good.replace(good.split(",")[0], "nan", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"Occlusion3D.txt, line 2: NaN or inf"):
        DexterObject(root, sequences=["Occlusion"])
    lines[1] = "1, 2, 3; 4, 5, 6;"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"line 2: expected five 'x, y, z' fields"):
        DexterObject(root, sequences=["Occlusion"])
    lines[1] = "a, b, c;" * 5
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"line 2: cannot parse"):
        DexterObject(root, sequences=["Occlusion"])


def test_truncated_image(tmp_path):
    root = make_fake_dexter_object(tmp_path / "do", sequences=["Pinch"])
    path = root / "data" / "Pinch" / "color" / "00000.png"
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(DatasetError, match=r"corrupt or truncated image file: .*00000.png"):
        DexterObject(root, sequences=["Pinch"])[0]
