import json
from pathlib import Path

import numpy as np
import pytest

from handssl.data.base import DatasetError, check_sample
from handssl.data.fakes.handdb import make_fake_handdb
from handssl.data.handdb import PanopticHandDB, nominal_intrinsics


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return make_fake_handdb(tmp_path_factory.mktemp("handdb"), num_images=3)


def raw_manual(root: Path, subset: str) -> list[tuple[Path, dict]]:
    files = sorted((root / "hand_labels" / subset).glob("*.json"))
    return [(f, json.loads(f.read_text())) for f in files]


def test_panopticdb_samples(fake_root):
    ds = PanopticHandDB(fake_root, "panopticdb")
    entries = json.loads((fake_root / "hand143_panopticdb" / "hands_v143_14817.json").read_text())["root"]
    assert len(ds) == len(entries) == 3  # not the 14817 of the file name
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s)
        points = np.asarray(entries[i]["joint_self"])
        valid = points[:, 2] == 1
        np.testing.assert_array_equal(s["valid"], valid)
        np.testing.assert_allclose(
            s["joints2d"][valid], points[valid, :2], atol=1e-4
        )  # same (canonical) order
        assert np.isnan(s["joints2d"][~valid]).all()
        assert np.isnan(s["joints3d"]).all() and not s["valid3d"].any()
        assert s["image"].shape == (entries[i]["img_height"], entries[i]["img_width"], 3)
        assert s["meta"]["hand"] == "unknown" and s["meta"]["calibrated"] is False
        np.testing.assert_allclose(s["meta"]["box_center"], entries[i]["objpos"])
    # The second entry has joints 3 and 20 flagged 0: invalid, NaN.
    s = ds[1]
    assert not s["valid"][[3, 20]].any() and s["valid"].sum() == 19


def test_nominal_intrinsics():
    K = nominal_intrinsics(200, 150)
    np.testing.assert_allclose(K, [[200, 0, 99.5], [0, 200, 74.5], [0, 0, 1]])
    np.testing.assert_allclose(nominal_intrinsics(64, 48, focal_px=30.0)[0, 0], 30.0)


def test_sample_k_is_the_nominal_pinhole(fake_root):
    s = PanopticHandDB(fake_root, "manual_test", nominal_focal_px=500.0)[2]
    h, w = s["image"].shape[:2]
    np.testing.assert_allclose(s["K"], [[500, 0, (w - 1) / 2], [0, 500, (h - 1) / 2], [0, 0, 1]])


@pytest.mark.parametrize("subset", ["manual_train", "manual_test"])
def test_hand_labels_sides_and_points(fake_root, subset):
    ds = PanopticHandDB(fake_root, subset)
    raw = raw_manual(fake_root, subset)
    assert len(ds) == len(raw) == 3
    for i, (path, entry) in enumerate(raw):
        s = ds[i]
        check_sample(s)
        assert s["meta"]["subject"] == path.stem and s["meta"]["sequence"] == subset
        assert s["meta"]["hand"] == ("left" if entry["is_left"] else "right")
        assert s["meta"]["hand"][0] == path.stem[-1]  # agrees with the _l / _r suffix
        points = np.asarray(entry["hand_pts"])
        valid = points[:, 2] == 1
        np.testing.assert_allclose(s["joints2d"][valid], points[valid, :2], atol=1e-4)
        assert s["image"].shape[:2] == (120 + 8 * i, 160 + 16 * (i))  # the varying image sizes are read


def test_mirror_left_flips_only_left_hands(fake_root):
    plain = PanopticHandDB(fake_root, "manual_train")
    mirrored = PanopticHandDB(fake_root, "manual_train", mirror_left=True)
    left = [i for i in range(len(plain)) if plain[i]["meta"]["hand"] == "left"]
    assert left == [1]
    a, b = plain[1], mirrored[1]
    w = a["image"].shape[1]
    assert b["meta"]["hand"] == "right"
    np.testing.assert_array_equal(b["image"], a["image"][:, ::-1])
    np.testing.assert_allclose(b["joints2d"][a["valid"], 0], w - 1 - a["joints2d"][a["valid"], 0], atol=1e-4)
    np.testing.assert_allclose(b["K"][0, 2], w - 1 - a["K"][0, 2])
    np.testing.assert_array_equal(mirrored[0]["image"], plain[0]["image"])  # right hands untouched
    # panopticdb sides are unknown: never mirrored, unless the user states a side.
    assert PanopticHandDB(fake_root, "panopticdb", mirror_left=True)[0]["meta"]["hand"] == "unknown"
    assert PanopticHandDB(fake_root, "panopticdb", unknown_hand="right")[0]["meta"]["hand"] == "right"


def test_root_may_be_the_subset_folder(fake_root):
    assert len(PanopticHandDB(fake_root / "hand143_panopticdb", "panopticdb")) == 3
    assert len(PanopticHandDB(fake_root / "hand_labels", "manual_test")) == 3
    assert len(PanopticHandDB(fake_root / "hand_labels" / "manual_train", "manual_train")) == 3


def test_nan_in_a_valid_joint_is_skipped_with_a_warning(tmp_path):
    root = make_fake_handdb(tmp_path, subsets=("panopticdb", "manual_test"), nan_entries=(0,))
    with pytest.warns(UserWarning, match=r"skipped 1 samples \(NaN/inf in a joint flagged valid"):
        ds = PanopticHandDB(root, "panopticdb")
    assert len(ds) == 2 and ds[0]["meta"]["source"] == "hands_v143_14817.json[1]"
    with pytest.warns(UserWarning, match="skipped 1 samples"):
        assert len(PanopticHandDB(root, "manual_test")) == 2


def test_errors_name_the_problem(tmp_path, fake_root):
    with pytest.raises(DatasetError, match=r"CMU HandDB root folder not found: .*nowhere"):
        PanopticHandDB(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DatasetError, match=r"(?s)panopticdb annotation file not found: .*hands_v143_14817\.json.*Expected"
    ):
        PanopticHandDB(tmp_path / "empty", "panopticdb")
    with pytest.raises(DatasetError, match=r"manual_test folder not found: .*hand_labels/manual_test"):
        PanopticHandDB(tmp_path / "empty", "manual_test")
    (tmp_path / "empty" / "hand_labels").mkdir()
    (tmp_path / "empty" / "hand_labels" / "manual_test").write_text("")  # a file where the folder belongs
    with pytest.raises(DatasetError, match=r"manual_test: .*hand_labels/manual_test is not a folder"):
        PanopticHandDB(tmp_path / "empty", "manual_test")
    with pytest.raises(ValueError, match="subset must be one of"):
        PanopticHandDB(fake_root, "synth2")

    root = make_fake_handdb(tmp_path / "broken", subsets=("manual_train",))
    first = sorted((root / "hand_labels" / "manual_train").glob("*.json"))[0]
    first.write_text('{"hand_pts": [[1, 2, 1]], "is_left": 0}')
    with pytest.raises(DatasetError, match=r"_01_r\.json: expected 'hand_pts' of shape \(21, 3\)"):
        PanopticHandDB(root, "manual_train")
    first.write_text("{")
    with pytest.raises(DatasetError, match="malformed json file"):
        PanopticHandDB(root, "manual_train")
    first.unlink()
    image = sorted((root / "hand_labels" / "manual_train").glob("*.jpg"))[1]
    image.write_bytes(image.read_bytes()[:800])
    ds = PanopticHandDB(root, "manual_train")
    with pytest.raises(DatasetError, match=r"corrupt or truncated image file: .*_02_l\.jpg"):
        ds[0]
