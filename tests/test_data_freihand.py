import json
from pathlib import Path

import numpy as np
import pytest

from handssl.data.base import DatasetError, check_sample, load_image
from handssl.data.fakes.freihand import make_fake_freihand
from handssl.data.freihand import FreiHAND

VERSIONS = ("gs", "hom", "sample", "auto")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return make_fake_freihand(tmp_path_factory.mktemp("freihand"), num_training=3, num_evaluation=2)


def raw(root: Path, name: str) -> np.ndarray:
    return np.asarray(json.loads((root / name).read_text()), dtype=np.float64)


def test_training_sample_units_order_and_projection(fake_root):
    ds = FreiHAND(fake_root)
    assert len(ds) == 3  # from the length of training_xyz.json, not 32560
    xyz_m, K = raw(fake_root, "training_xyz.json"), raw(fake_root, "training_K.json")
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s)
        np.testing.assert_allclose(
            s["joints3d"], xyz_m[i] * 1000, rtol=1e-6, atol=1e-3
        )  # m -> mm, same order
        np.testing.assert_allclose(s["K"], K[i], rtol=1e-6)
        # Independent pinhole projection (fh_utils.projectPoints): uv = (K @ xyz.T).T, divided by z.
        uvw = xyz_m[i] @ K[i].T
        np.testing.assert_allclose(s["joints2d"], uvw[:, :2] / uvw[:, 2:], atol=1e-3)
        assert s["valid"].all() and s["valid"].dtype == bool
        assert s["image"].shape == (224, 224, 3) and s["image"].dtype == np.uint8
        meta = s["meta"]
        assert meta["hand"] == "right" and meta["dataset"] == "freihand" and meta["frame"] == i
        assert meta["unit"] == "m" and meta["root_joint"] == "wrist"


def test_canonical_order_matches_the_known_hand(fake_root):
    # The fake hand's bone lengths (mm) are fixed per finger; a wrong map or unit shows here.
    j = FreiHAND(fake_root)[1]["joints3d"].astype(np.float64)
    assert np.linalg.norm(j[10] - j[9]) == pytest.approx(46.0, abs=1e-2)
    assert np.linalg.norm(j[2] - j[1]) == pytest.approx(38.0, abs=1e-2)
    assert np.linalg.norm(j[20] - j[19]) == pytest.approx(18.0, abs=1e-2)


@pytest.mark.parametrize("version", VERSIONS)
def test_versions_read_the_offset_images(fake_root, version):
    ds = FreiHAND(fake_root, version=version)
    offset = 3 * VERSIONS.index(version)  # id + N * version_index, N = 3 unique samples
    s = ds[2]
    assert s["meta"]["image_id"] == 2 + offset and s["meta"]["sequence"] == version
    np.testing.assert_array_equal(
        s["image"], load_image(fake_root / "training" / "rgb" / f"{2 + offset:08d}.jpg")
    )
    # Annotations and masks are shared by the versions.
    np.testing.assert_array_equal(s["joints3d"], FreiHAND(fake_root)[2]["joints3d"])


def test_all_right_hands_so_mirror_left_changes_nothing(fake_root):
    plain, mirrored = FreiHAND(fake_root)[0], FreiHAND(fake_root, mirror_left=True)[0]
    assert mirrored["meta"]["hand"] == "right" and "mirrored" not in mirrored["meta"]
    np.testing.assert_array_equal(mirrored["image"], plain["image"])
    np.testing.assert_array_equal(mirrored["joints2d"], plain["joints2d"])


def test_versions_have_different_images(fake_root):
    images = [FreiHAND(fake_root, version=v)[0]["image"].astype(int) for v in VERSIONS]
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(images[a] - images[b]).mean() > 5


def test_mask_is_binary_and_covers_the_joints(fake_root):
    s = FreiHAND(fake_root)[0]
    mask = s["mask"]
    assert mask.shape == (224, 224) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    u, v = np.round(s["joints2d"]).astype(int).T
    assert mask[v, u].all()
    assert mask.mean() < 0.3
    assert "mask" not in FreiHAND(fake_root, load_mask=False)[0]


def test_evaluation_split(fake_root):
    ds = FreiHAND(fake_root, split="evaluation")
    assert len(ds) == 2
    s = ds[1]
    check_sample(s)
    np.testing.assert_allclose(s["joints3d"], raw(fake_root, "evaluation_xyz.json")[1] * 1000, atol=1e-3)
    assert "mask" not in s and s["meta"]["split"] == "evaluation"
    with pytest.raises(ValueError, match="only in version 'gs'"):
        FreiHAND(fake_root, split="evaluation", version="hom")


def test_evaluation_without_xyz_has_nan_joints(tmp_path):
    root = make_fake_freihand(tmp_path, num_training=1, num_evaluation=2, with_evaluation_xyz=False)
    ds = FreiHAND(root, split="evaluation")
    s = ds[0]
    check_sample(s)
    assert not s["valid"].any()
    assert np.isnan(s["joints3d"]).all() and np.isnan(s["joints2d"]).all()
    np.testing.assert_allclose(s["K"], raw(root, "evaluation_K.json")[0], rtol=1e-6)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match=r"FreiHAND root folder not found: .*nowhere"):
        FreiHAND(tmp_path / "nowhere")
    root = make_fake_freihand(tmp_path / "fh", num_training=2, num_evaluation=1, versions=("gs",))
    with pytest.raises(DatasetError, match=r"(?s)image \(hom\) not found: .*00000002\.jpg.*Expected layout"):
        FreiHAND(root, version="hom")
    with pytest.raises(ValueError, match="split must be"):
        FreiHAND(root, split="test")
    with pytest.raises(ValueError, match="version must be"):
        FreiHAND(root, version="color")

    (root / "training_xyz.json").rename(root / "xyz.bak")
    with pytest.raises(DatasetError, match=r"training joints file not found: .*training_xyz\.json"):
        FreiHAND(root)
    (root / "xyz.bak").rename(root / "training_xyz.json")

    xyz = json.loads((root / "training_xyz.json").read_text())
    xyz[1][4][2] = float("nan")
    (root / "training_xyz.json").write_text(json.dumps(xyz))
    with pytest.raises(DatasetError, match=r"training_xyz\.json: NaN or inf in row\(s\) 1 \(of 2\)"):
        FreiHAND(root)
    xyz[1][4][2] = 0.5
    (root / "training_xyz.json").write_text(json.dumps(xyz[:1]))
    with pytest.raises(DatasetError, match=r"has 1 entries but training_K\.json has 2"):
        FreiHAND(root)


def test_truncated_image(tmp_path):
    root = make_fake_freihand(tmp_path, num_training=2, num_evaluation=1, versions=("gs",))
    path = root / "training" / "rgb" / "00000001.jpg"
    path.write_bytes(path.read_bytes()[:1500])
    ds = FreiHAND(root)
    ds[0]
    with pytest.raises(DatasetError, match=r"corrupt or truncated image file: .*00000001\.jpg"):
        ds[1]
