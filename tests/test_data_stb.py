import shutil

import numpy as np
import pytest
import scipy.io
from scipy.spatial.transform import Rotation

from handssl.data import STB, DatasetError, check_sample
from handssl.data import stb as stb_module
from handssl.data.fakes import make_fake_stb
from handssl.data.fakes.rhd import marker_color
from handssl.geometry import project
from handssl.skeleton import JOINT_NAMES

# STB's order from its README (palm, little..thumb, each MCP->tip), in canonical names; independent of the library.
STB_README_NAMES = [
    "palm",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
]  # fmt: skip
CANONICAL_WITH_PALM = ["palm", *JOINT_NAMES[1:]]
ROTVEC = np.array([0.00531, -0.01196, 0.00301])
T_MM = np.array([-24.0381, -0.4563, -1.2326])


@pytest.fixture(scope="module")
def stb_root(tmp_path_factory):
    return make_fake_stb(tmp_path_factory.mktemp("stb"), num_frames={"B1Random": 3})


def _raw(root, seq, cam):
    para = scipy.io.loadmat(root / "labels" / f"{seq}_{cam}.mat")["handPara"]
    return para.transpose(2, 1, 0)  # (N, 21, 3)


def _pixel(image, uv):
    return tuple(int(c) for c in image[round(float(uv[1])), round(float(uv[0]))])


def test_constants_match_the_official_readme():
    np.testing.assert_array_equal(
        stb_module.SK_COLOR_K[[0, 1, 0, 1], [0, 1, 2, 2]], [607.92271, 607.88192, 314.78337, 236.42484]
    )
    np.testing.assert_array_equal(
        stb_module.BB_K[[0, 1, 0, 1], [0, 1, 2, 2]], [822.79041, 822.79041, 318.47345, 250.31296]
    )
    assert stb_module.BB_BASELINE_MM == 120.054
    np.testing.assert_array_equal(stb_module.SK_DEPTH_TO_COLOR_ROTVEC, ROTVEC)
    np.testing.assert_array_equal(stb_module.SK_DEPTH_TO_COLOR_T_MM, T_MM)


def test_splits_and_counts_from_the_label_files(stb_root):
    assert len(STB(stb_root, "test")) == 2 + 3  # B1Counting has 2 frames, B1Random 3
    assert len(STB(stb_root, "train")) == 10 * 2
    train = STB(stb_root, "train")
    train_seqs = {train[i]["meta"]["sequence"] for i in range(20)}
    assert train_seqs == {f"B{b}{k}" for b in range(2, 7) for k in ("Counting", "Random")}
    ds = STB(stb_root, "test", sequences=["B1Random"])
    assert len(ds) == 3 and ds[2]["meta"]["frame"] == 2 and ds[2]["meta"]["subject"] == "B1"


def test_sk_labels_converted_to_colour_frame_in_canonical_order(stb_root):
    sample = STB(stb_root, "test", camera="SK", root_joint="palm")[3]
    check_sample(sample)
    assert sample["meta"]["sequence"] == "B1Random" and sample["meta"]["frame"] == 1
    raw = _raw(stb_root, "B1Random", "SK")[1]
    R = Rotation.from_rotvec(ROTVEC).as_matrix()
    colour = (R.T @ (raw - T_MM).T).T  # X_c = R^-1 (X_d - t), positionCalc.m
    expected = colour[[STB_README_NAMES.index(name) for name in CANONICAL_WITH_PALM]]
    np.testing.assert_allclose(sample["joints3d"], expected, atol=1e-3)
    assert sample["meta"]["root_joint"] == "palm" and sample["meta"]["unit"] == "mm"
    np.testing.assert_allclose(
        project(sample["joints3d"].astype(np.float64), sample["K"].astype(np.float64)),
        sample["joints2d"],
        atol=0.5,
    )
    for c in range(21):  # slot 0 is the palm marker
        assert _pixel(sample["image"], sample["joints2d"][c]) == marker_color(c, "left"), c


@pytest.mark.parametrize("camera", ["BB_left", "BB_right"])
def test_bumblebee_views(stb_root, camera):
    sample = STB(stb_root, "test", camera=camera, root_joint="palm")[0]
    assert sample["meta"]["camera"] == camera and sample["image"].shape == (480, 640, 3)
    for c in range(21):
        assert _pixel(sample["image"], sample["joints2d"][c]) == marker_color(c, "left"), c
    left = STB(stb_root, "test", camera="BB_left")[0]["joints3d"]
    right = STB(stb_root, "test", camera="BB_right")[0]["joints3d"]
    np.testing.assert_allclose(left - right, np.tile([120.054, 0.0, 0.0], (21, 1)), atol=1e-3)


def test_palm_to_wrist_variants(stb_root):
    palm = STB(stb_root, "test", root_joint="palm")[0]["joints3d"].astype(np.float64)
    p = palm[0]
    expected = {
        "ring": palm[13] + 2.0 * (p - palm[13]),
        "middle": palm[9] + 2.2 * (p - palm[9]),
        "mean_mcp": np.mean([palm[m] + 2.25 * (p - palm[m]) for m in (5, 9, 13, 17)], axis=0),
    }
    for method, wrist in expected.items():
        sample = STB(stb_root, "test", palm_to_wrist=method)[0]
        np.testing.assert_allclose(sample["joints3d"][0], wrist, atol=1e-3)
        np.testing.assert_allclose(sample["joints3d"][1:], palm[1:], atol=1e-4)
        assert sample["meta"]["root_joint"] == "wrist" and sample["meta"]["palm_to_wrist"] == method
        assert np.linalg.norm(sample["joints3d"][0] - p) > 10  # the wrist is not the palm
    default = STB(stb_root, "test")[0]
    np.testing.assert_allclose(default["joints3d"][0], expected["ring"], atol=1e-3)
    np.testing.assert_allclose(
        project(default["joints3d"].astype(np.float64), default["K"].astype(np.float64)),
        default["joints2d"],
        atol=0.5,
    )


def test_flat_layout(tmp_path):
    root = make_fake_stb(tmp_path / "stb", sequences=["B1Counting"], layout="flat")
    assert not (root / "images").exists()
    ds = STB(root, "test", sequences=["B1Counting"], root_joint="palm")
    sample = ds[1]
    assert _pixel(sample["image"], sample["joints2d"][20]) == marker_color(20, "left")


def test_left_hands_and_mirror(stb_root):
    plain = STB(stb_root, "test")[0]
    mirrored = STB(stb_root, "test", mirror_left=True)[0]
    assert plain["meta"]["hand"] == "left" and mirrored["meta"]["hand"] == "right"
    reproj = project(mirrored["joints3d"].astype(np.float64), mirrored["K"].astype(np.float64))
    np.testing.assert_allclose(reproj, mirrored["joints2d"], atol=0.5)
    np.testing.assert_allclose(mirrored["joints2d"][:, 0], 639 - plain["joints2d"][:, 0], atol=1e-3)
    for c in range(1, 21):
        assert _pixel(mirrored["image"], mirrored["joints2d"][c]) == marker_color(c, "left")


def test_errors(tmp_path, stb_root):
    with pytest.raises(DatasetError, match="STB root folder not found") as err:
        STB(tmp_path / "missing")
    assert "B1Counting_SK.mat" in str(err.value)
    root = make_fake_stb(tmp_path / "stb", sequences=["B1Counting", "B1Random"])
    with pytest.raises(DatasetError, match=r"STB label file not found: .*B2Counting_SK.mat"):
        STB(root, "train")
    (root / "labels" / "B1Random_BB.mat").unlink()
    STB(root, "test", camera="SK")  # the SK labels are still there
    with pytest.raises(DatasetError, match=r"STB label file not found: .*B1Random_BB.mat"):
        STB(root, "test", camera="BB_left")
    shutil.rmtree(root / "images" / "B1Random")
    with pytest.raises(DatasetError, match="image folder of sequence 'B1Random' not found"):
        STB(root, "test")
    for kwargs, message in [
        ({"split": "val"}, "split must be"),
        ({"camera": "SK_depth"}, "camera must be"),
        ({"root_joint": "hand"}, "root_joint must be"),
        ({"palm_to_wrist": "index"}, "palm_to_wrist must be"),
        ({"sequences": "B1Counting"}, "sequences must be a non-empty list"),
    ]:
        with pytest.raises(ValueError, match=message):
            STB(stb_root, **{"split": "test", **kwargs})


def test_malformed_labels(tmp_path):
    root = make_fake_stb(tmp_path / "stb", sequences=["B1Counting"])
    path = root / "labels" / "B1Counting_SK.mat"
    scipy.io.savemat(path, {"joints": np.zeros((3, 21, 2))})
    with pytest.raises(DatasetError, match="has no 'handPara' variable"):
        STB(root, sequences=["B1Counting"])
    scipy.io.savemat(path, {"handPara": np.zeros((21, 3, 2))})
    with pytest.raises(DatasetError, match=r"handPara must have shape \(3, 21, N\)"):
        STB(root, sequences=["B1Counting"])
    path.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read STB label file"):
        STB(root, sequences=["B1Counting"])


def test_truncated_image(tmp_path):
    root = make_fake_stb(tmp_path / "stb", sequences=["B1Counting"])
    path = root / "images" / "B1Counting" / "SK_color_1.png"
    path.write_bytes(path.read_bytes()[:100])
    ds = STB(root, sequences=["B1Counting"])
    ds[0]
    with pytest.raises(DatasetError, match=r"corrupt or truncated image file: .*SK_color_1.png"):
        ds[1]


def test_nan_labels_are_skipped_with_warning(tmp_path):
    root = make_fake_stb(
        tmp_path / "stb", sequences=["B1Counting"], num_frames=3, nan_frame=("B1Counting", 1)
    )
    with pytest.warns(UserWarning, match="skipped 1 samples"):
        ds = STB(root, sequences=["B1Counting"])
    assert [ds[i]["meta"]["frame"] for i in range(len(ds))] == [0, 2]
