import pickle

import numpy as np
import pytest

from handssl.data import RHD, DatasetError, check_sample
from handssl.data.fakes import make_fake_rhd
from handssl.data.fakes.rhd import RHD_DEPTH_PLANE, marker_color
from handssl.geometry import project
from handssl.skeleton import JOINT_NAMES

# RHD's per-hand order, typed from the dataset README ("thumb [tip to palm]" ...), independent of the library.
RHD_README_NAMES = [
    "wrist",
    "thumb_tip", "thumb_ip", "thumb_mcp", "thumb_cmc",
    "index_tip", "index_dip", "index_pip", "index_mcp",
    "middle_tip", "middle_dip", "middle_pip", "middle_mcp",
    "ring_tip", "ring_dip", "ring_pip", "ring_mcp",
    "pinky_tip", "pinky_dip", "pinky_pip", "pinky_mcp",
]  # fmt: skip


@pytest.fixture(scope="module")
def rhd_root(tmp_path_factory):
    return make_fake_rhd(tmp_path_factory.mktemp("rhd"), num_samples={"training": 4, "evaluation": 2})


def _raw(root, split="training"):
    with open(root / split / f"anno_{split}.pickle", "rb") as fh:
        return pickle.load(fh)


def _pixel(image, uv):
    return tuple(int(c) for c in image[round(float(uv[1])), round(float(uv[0]))])


def test_splits_and_counts(rhd_root):
    assert len(RHD(rhd_root, "training")) == 4
    assert len(RHD(rhd_root, "evaluation")) == 2


def test_canonical_order_units_and_frame(rhd_root):
    raw = _raw(rhd_root)[0]
    sample = RHD(rhd_root, "training", hand="left")[0]
    check_sample(sample)
    native = raw["xyz"][:21].astype(np.float64)
    expected = native[[RHD_README_NAMES.index(name) for name in JOINT_NAMES]] * 1000.0
    np.testing.assert_allclose(sample["joints3d"], expected, rtol=1e-6, atol=1e-3)
    assert sample["joints3d"].dtype == np.float32 and sample["K"].dtype == np.float32
    # mm: the fake places hands 0.5-0.6 m away.
    assert 400 < np.median(sample["joints3d"][:, 2]) < 700
    reproj = project(sample["joints3d"].astype(np.float64), sample["K"].astype(np.float64))
    np.testing.assert_allclose(reproj, sample["joints2d"], atol=0.5)
    # The marker under each canonical 2D joint carries that joint's canonical index.
    for c in range(21):
        assert _pixel(sample["image"], sample["joints2d"][c]) == marker_color(c, "left"), c


def test_right_hand_rows_and_markers(rhd_root):
    sample = RHD(rhd_root, "training", hand="right")[0]
    assert sample["meta"]["hand"] == "right"
    for c in range(21):
        assert _pixel(sample["image"], sample["joints2d"][c]) == marker_color(c, "right"), c


def test_auto_hand_follows_mask_pixels(rhd_root):
    ds = RHD(rhd_root, "training")
    # The fake alternates the dominant hand, starting with the left one.
    assert [ds[i]["meta"]["hand"] for i in range(4)] == ["left", "right", "left", "right"]
    sample = ds[1]
    mask = sample["mask"]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    wrist = np.rint(sample["joints2d"][0]).astype(int)
    assert mask[wrist[1], wrist[0]] == 1
    other = RHD(rhd_root, "training", hand="left")[1]
    other_wrist = np.rint(other["joints2d"][0]).astype(int)
    assert mask[other_wrist[1], other_wrist[0]] == 0


def test_valid_follows_visibility(rhd_root):
    # The fake hides native joint 2 (thumb IP -> canonical 3) of the left hand and native 7 (index PIP ->
    # canonical 6) of the right hand.
    left = RHD(rhd_root, "training", hand="left")[0]
    assert np.flatnonzero(~left["valid"]).tolist() == [3]
    assert np.isfinite(left["joints3d"]).all()  # 3D exists for occluded joints too
    right = RHD(rhd_root, "training", hand="right")[0]
    assert np.flatnonzero(~right["valid"]).tolist() == [6]
    assert np.array_equal(right["meta"]["visible"], right["valid"])
    all_valid = RHD(rhd_root, "training", hand="right", valid_from="all")[0]
    assert all_valid["valid"].all() and not all_valid["meta"]["visible"][6]


def test_mirror_left(rhd_root):
    plain = RHD(rhd_root, "training", hand="left", load_depth=True)[0]
    mirrored = RHD(rhd_root, "training", hand="left", load_depth=True, mirror_left=True)[0]
    assert plain["meta"]["hand"] == "left" and mirrored["meta"]["hand"] == "right"
    width = plain["image"].shape[1]
    np.testing.assert_allclose(mirrored["joints2d"][:, 0], width - 1 - plain["joints2d"][:, 0], atol=1e-4)
    reproj = project(mirrored["joints3d"].astype(np.float64), mirrored["K"].astype(np.float64))
    np.testing.assert_allclose(reproj, mirrored["joints2d"], atol=0.5)
    for c in range(21):
        assert _pixel(mirrored["image"], mirrored["joints2d"][c]) == marker_color(c, "left")
    np.testing.assert_array_equal(mirrored["depth"], plain["depth"][:, ::-1])
    # Right hands are left alone.
    right = RHD(rhd_root, "training", hand="right", mirror_left=True)[0]
    assert "mirrored" not in right["meta"]


def test_depth_decoding(rhd_root):
    assert "depth" not in RHD(rhd_root, "evaluation")[0]
    depth = RHD(rhd_root, "evaluation", load_depth=True)[0]["depth"]
    assert depth.dtype == np.float32 and depth.shape == (320, 320)
    a, b, c = RHD_DEPTH_PLANE
    for v, u in [(0, 0), (10, 300), (319, 319)]:
        assert abs(depth[v, u] - 1000.0 * (a + b * u + c * v)) < 5000.0 / 65535 + 1e-3


def test_wrong_root_and_missing_annotation(tmp_path, rhd_root):
    with pytest.raises(DatasetError, match="RHD root folder not found") as err:
        RHD(tmp_path / "nope")
    assert "anno_training.pickle" in str(err.value)  # the expected layout is shown
    root = make_fake_rhd(tmp_path / "rhd", splits=("evaluation",), num_samples=1)
    (root / "evaluation" / "anno_evaluation.pickle").unlink()
    with pytest.raises(DatasetError, match=r"RHD annotation file not found: .*anno_evaluation.pickle"):
        RHD(root, "evaluation")
    with pytest.raises(DatasetError, match="training folder not found"):
        RHD(root, "training")


def test_bad_arguments(rhd_root):
    with pytest.raises(ValueError, match="split must be one of"):
        RHD(rhd_root, "test")
    with pytest.raises(ValueError, match="hand must be one of"):
        RHD(rhd_root, hand="both")


def test_truncated_image(tmp_path):
    root = make_fake_rhd(tmp_path / "rhd", splits=("evaluation",), num_samples=1)
    path = root / "evaluation" / "color" / "00000.png"
    path.write_bytes(path.read_bytes()[:200])
    ds = RHD(root, "evaluation")
    with pytest.raises(DatasetError, match=r"corrupt or truncated image file: .*00000.png"):
        ds[0]


def test_nan_annotation_is_skipped_with_warning(tmp_path):
    root = make_fake_rhd(tmp_path / "rhd", splits=("evaluation",), num_samples=3, nan_sample=1)
    with pytest.warns(UserWarning, match="skipped 1 samples"):
        ds = RHD(root, "evaluation")
    assert len(ds) == 2
    assert [ds[i]["meta"]["frame"] for i in range(2)] == [0, 2]


def test_malformed_annotation(tmp_path):
    root = make_fake_rhd(tmp_path / "rhd", splits=("evaluation",), num_samples=1)
    path = root / "evaluation" / "anno_evaluation.pickle"
    with open(path, "wb") as fh:
        pickle.dump({0: {"xyz": np.zeros((21, 3)), "uv_vis": np.zeros((42, 3)), "K": np.eye(3)}}, fh)
    with pytest.raises(DatasetError, match=r"sample 0: 'xyz' must have shape \(42, 3\)"):
        RHD(root, "evaluation")
    path.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="cannot read RHD annotation file"):
        RHD(root, "evaluation")
