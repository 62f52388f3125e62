import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from handssl.data.base import DatasetError, check_sample, load_image
from handssl.data.fakes.panoptic import fake_background, make_fake_panoptic
from handssl.data.panoptic import Panoptic, PanopticMultiView, crop_source_maps, find_sequences
from handssl.geometry import camera_center, project

SEQ = "171204_pose1_sample"
HD_NAMES = {"00_00", "00_03", "00_07"}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return make_fake_panoptic(tmp_path_factory.mktemp("panoptic"), num_frames=5)


def raw_calibration(root: Path, seq: str = SEQ) -> dict:
    cams = json.loads((root / seq / f"calibration_{seq}.json").read_text())["cameras"]
    return {c["name"]: c for c in cams}


def raw_landmarks_cm(root: Path, frame: int, hand: str = "right", seq: str = SEQ) -> np.ndarray:
    data = json.loads((root / seq / "hdHand3d" / f"handRecon3D_hd{frame:08d}.json").read_text())
    return np.asarray(data["people"][0][f"{hand}_hand"]["landmarks"]).reshape(21, 3)


def cv2_project_cm(points_cm: np.ndarray, cam: dict) -> np.ndarray:
    """Independent reference: OpenCV's projectPoints on the raw calibration (all in cm)."""
    rvec, _ = cv2.Rodrigues(np.asarray(cam["R"], dtype=np.float64))
    uv, _ = cv2.projectPoints(
        points_cm.astype(np.float64),
        rvec,
        np.asarray(cam["t"], dtype=np.float64).reshape(3),
        np.asarray(cam["K"], dtype=np.float64),
        np.asarray(cam["distCoef"], dtype=np.float64),
    )
    return uv.reshape(-1, 2)


def test_single_view_matches_raw_files_and_opencv(fake_root):
    ds = Panoptic(fake_root, require_in_view=False)
    assert len(ds) == 5 * 3  # frames x HD cameras; the VGA camera is ignored
    calib = raw_calibration(fake_root)
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s)
        meta = s["meta"]
        assert meta["dataset"] == "panoptic" and meta["sequence"] == SEQ and meta["hand"] == "right"
        assert meta["camera"] in HD_NAMES
        cam = calib[meta["camera"]]
        world_cm = raw_landmarks_cm(fake_root, meta["frame"])
        # Units: world joints and camera-frame joints in mm (the files are in cm, t included).
        np.testing.assert_allclose(s["joints3d_world"], world_cm * 10, atol=1e-3)
        R, t_cm = np.asarray(cam["R"]), np.asarray(cam["t"]).reshape(3)
        np.testing.assert_allclose(s["joints3d"], (world_cm @ R.T + t_cm) * 10, rtol=1e-5, atol=1e-2)
        np.testing.assert_allclose(s["t"], t_cm * 10, rtol=1e-6)
        # Distorted 2D against OpenCV (non-zero k1, k2, p1, p2, k3 in the fake calibration).
        assert np.all(np.abs(np.asarray(cam["distCoef"])) > 0)
        np.testing.assert_allclose(s["joints2d"], cv2_project_cm(world_cm, cam), atol=2e-3)
        assert s["image"].dtype == np.uint8 and s["image"].shape == (240, 320, 3)


def test_distortion_is_not_negligible_in_the_fake(fake_root):
    # Guard for the test above: dropping the distortion (or one tangential term) must move the joints.
    ds = Panoptic(fake_root)
    s = ds[0]
    pinhole = project(s["joints3d"].astype(np.float64), s["K"].astype(np.float64))
    assert np.abs(pinhole - s["joints2d"]).max() > 2.0
    swapped = s["dist"].astype(np.float64)[[0, 1, 3, 2, 4]]
    swapped_uv = project(s["joints3d"].astype(np.float64), s["K"].astype(np.float64), swapped)
    assert np.abs(swapped_uv - s["joints2d"]).max() > 0.3


def test_canonical_order_matches_the_known_hand(fake_root):
    # The fake hand has fixed bone lengths per finger (fakes.panoptic._BONE_LENGTHS_MM); a wrong joint map
    # or a missed cm->mm conversion changes them.
    s = Panoptic(fake_root)[0]
    j = s["joints3d"].astype(np.float64)

    def bone(a, b):
        return np.linalg.norm(j[a] - j[b])

    assert bone(9, 10) == pytest.approx(46.0, abs=1e-2)  # middle MCP -> PIP
    assert bone(1, 2) == pytest.approx(38.0, abs=1e-2)  # thumb CMC -> MCP
    assert bone(19, 20) == pytest.approx(18.0, abs=1e-2)  # pinky DIP -> tip
    assert bone(5, 6) == pytest.approx(42.0, abs=1e-2)  # index MCP -> PIP


def test_in_view_filter_keeps_only_views_that_see_the_hand(fake_root):
    with pytest.warns(UserWarning, match=r"skipped \d+ samples \(camera views"):
        ds = Panoptic(fake_root, hand="left")
    assert 0 < len(ds) < 15  # the fake left hand is out of some views
    for i in range(len(ds)):
        s = ds[i]
        assert s["meta"]["hand"] == "left"
        u, v = s["joints2d"][:, 0], s["joints2d"][:, 1]
        assert (u >= -0.5).all() and (u <= 319.5).all() and (v >= -0.5).all() and (v <= 239.5).all()


def test_cameras_option_and_every_nth_frame(fake_root):
    ds = Panoptic(fake_root, cameras=[3, "00_07"], every_nth_frame=2, require_in_view=False)
    assert len(ds) == 3 * 2  # frames 0, 2, 4 x two cameras
    assert {ds[i]["meta"]["camera"] for i in range(len(ds))} == {"00_03", "00_07"}
    assert {ds[i]["meta"]["frame"] for i in range(len(ds))} == {0, 2, 4}


def test_skipped_frames_are_counted_in_one_warning(tmp_path):
    root = make_fake_panoptic(
        tmp_path, num_frames=5, missing_right_frames=(1,), low_score_frames=(2,), nan_frames=(3,)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = Panoptic(root, require_in_view=False)
    frames_warnings = [str(w.message) for w in caught if "frames" in str(w.message)]
    assert len(frames_warnings) == 1
    message = frames_warnings[0]
    assert "skipped 3" in message and "no right hand" in message and "averageScore" in message
    assert "NaN" in message
    assert len(ds) == 2 * 3
    assert {ds[i]["meta"]["frame"] for i in range(len(ds))} == {0, 4}
    # A threshold of 0 keeps the low-score frame.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(Panoptic(root, require_in_view=False, min_score=0.0)) == 3 * 3


def test_mirror_left_is_consistent_with_distortion(fake_root):
    plain = Panoptic(fake_root, hand="left", require_in_view=False)
    mirrored = Panoptic(fake_root, hand="left", require_in_view=False, mirror_left=True)
    a, b = plain[0], mirrored[0]
    assert a["meta"]["hand"] == "left" and b["meta"]["hand"] == "right" and b["meta"]["mirrored"]
    np.testing.assert_array_equal(b["image"], a["image"][:, ::-1])
    np.testing.assert_allclose(b["joints2d"][:, 0], 319 - a["joints2d"][:, 0], atol=1e-3)
    # Mirrored 2D == projection of mirrored 3D with the mirrored K and distortion.
    reprojected = project(
        b["joints3d"].astype(np.float64), b["K"].astype(np.float64), b["dist"].astype(np.float64)
    )
    np.testing.assert_allclose(reprojected, b["joints2d"], atol=1e-3)
    # The world stays; the camera becomes a reflection.
    np.testing.assert_allclose(b["joints3d_world"], a["joints3d_world"])
    world = b["joints3d_world"].astype(np.float64)
    np.testing.assert_allclose(world @ b["R"].T.astype(np.float64) + b["t"], b["joints3d"], atol=1e-2)
    assert np.linalg.det(b["R"]) == pytest.approx(-1.0, abs=1e-5)


def test_multiview_item_layout_and_geometry(fake_root):
    ds = PanopticMultiView(fake_root, multiview=True, num_views=3, crop_size=64, crop_extent_mm=300.0)
    assert len(ds) >= 1
    s = ds[0]
    V, S = 3, 64
    for key in ("image", "background", "image_t2"):
        assert tuple(s[key].shape) == (V, 3, S, S), key
        assert s[key].dtype.is_floating_point and s[key].min() >= 0 and s[key].max() <= 1
    assert tuple(s["joints3d"].shape) == (V, 21, 3) and tuple(s["joints2d"].shape) == (V, 21, 2)
    assert (
        tuple(s["K"].shape) == (V, 3, 3)
        and tuple(s["R"].shape) == (V, 3, 3)
        and tuple(s["t"].shape) == (V, 3)
    )
    assert tuple(s["valid"].shape) == (V, 21) and bool(s["valid"].all())
    assert tuple(s["joints3d_world"].shape) == (21, 3)
    meta = s["meta"]
    assert meta["dataset"] == "panoptic" and len(meta["cameras"]) == V and set(meta["cameras"]) <= HD_NAMES
    assert meta["frame_t2"] != meta["frame"]

    world = s["joints3d_world"].double().numpy()
    calib = raw_calibration(fake_root)
    for v in range(V):
        R, t, K = (s[k][v].double().numpy() for k in ("R", "t", "K"))
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(world @ R.T + t, s["joints3d"][v].numpy(), atol=1e-2)
        np.testing.assert_allclose(project(s["joints3d"][v].double().numpy(), K), s["joints2d"][v], atol=1e-3)
        # The crop camera shares the real camera's centre and looks at the hand centre.
        cam = calib[meta["cameras"][v]]
        real_center_mm = camera_center(np.asarray(cam["R"]), np.asarray(cam["t"]).reshape(3) * 10)
        np.testing.assert_allclose(camera_center(R, t), real_center_mm, atol=1e-2)
        center_px = project((world.mean(0) @ R.T + t)[None], K)[0]
        np.testing.assert_allclose(center_px, [(S - 1) / 2, (S - 1) / 2], atol=1e-3)


def test_crop_maps_match_opencv_distortion(fake_root):
    # Each crop pixel must sample the original image where OpenCV projects that pixel's ray.
    ds = PanopticMultiView(fake_root, multiview=True, num_views=2, crop_size=32)
    s = ds[0]
    calib = raw_calibration(fake_root)
    cam = calib[s["meta"]["cameras"][0]]
    K = np.asarray(cam["K"])
    R_rot = s["R"][0].double().numpy() @ np.asarray(cam["R"]).T
    K_crop = s["K"][0].double().numpy()
    map_x, map_y = crop_source_maps(K, np.asarray(cam["distCoef"]), K_crop, R_rot, 32, (320, 240))
    v, u = np.mgrid[0:32:5, 0:32:5]
    rays = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3).astype(np.float64)
    rays = rays @ np.linalg.inv(K_crop).T @ R_rot
    expected, _ = cv2.projectPoints(
        rays, np.zeros(3), np.zeros(3), K, np.asarray(cam["distCoef"], dtype=np.float64)
    )
    got = np.stack([map_x[v, u].reshape(-1), map_y[v, u].reshape(-1)], -1)
    np.testing.assert_allclose(got, expected.reshape(-1, 2), atol=1e-3)


def test_crop_image_is_the_original_resampled_through_opencv(fake_root):
    # End to end, with an independent reference for the whole chain: every crop pixel's ray projected by
    # OpenCV (with distortion) into the original jpg, sampled bilinearly; also checks the CHW layout.
    ds = PanopticMultiView(fake_root, multiview=True, num_views=2, crop_size=48)
    s = ds[1]
    calib = raw_calibration(fake_root)
    for v, name in enumerate(s["meta"]["cameras"]):
        cam = calib[name]
        K, dist = np.asarray(cam["K"]), np.asarray(cam["distCoef"], dtype=np.float64)
        R_rot = s["R"][v].double().numpy() @ np.asarray(cam["R"]).T
        rows, cols = np.mgrid[0:48, 0:48]
        rays = np.stack([cols, rows, np.ones_like(cols)], -1).reshape(-1, 3).astype(np.float64)
        rays = rays @ np.linalg.inv(s["K"][v].double().numpy()).T @ R_rot
        uv, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), K, dist)
        uv = uv.reshape(48, 48, 2).astype(np.float32)
        original = load_image(fake_root / SEQ / "hdImgs" / name / f"{name}_{s['meta']['frame']:08d}.jpg")
        expected = cv2.remap(original, uv[..., 0], uv[..., 1], cv2.INTER_LINEAR).astype(np.float64)
        got = s["image"][v].permute(1, 2, 0).double().numpy() * 255
        assert np.abs(got - expected).mean() < 0.5
        # The hand really is in the crop: the drawn skeleton differs from the background there.
        assert np.abs(got - s["background"][v].permute(1, 2, 0).double().numpy() * 255).max() > 100


def test_background_is_the_median_and_is_cached(fake_root, tmp_path):
    ds = PanopticMultiView(fake_root, multiview=True, crop_size=32, cache_dir=tmp_path / "cache")
    background = ds.background(0, 1)  # second HD camera, 00_03
    assert background.shape == (240, 320, 3) and background.dtype == np.uint8
    expected = fake_background(320, 240, 1).astype(int)
    close = np.abs(background.astype(int) - expected).max(-1) <= 25  # JPEG noise on the checker edges
    assert close.mean() > 0.99
    # Where a single frame shows the hand, the median mostly shows the background again.
    frame = load_image(fake_root / SEQ / "hdImgs" / "00_03" / "00_03_00000000.jpg").astype(int)
    hand = np.abs(frame - expected).max(-1) > 60
    assert hand.sum() > 100 and close[hand].mean() > 0.75
    path = ds.background_path(0, 1)
    assert path.is_file() and path.parent == tmp_path / "cache" / SEQ
    # A new dataset reads the cache instead of recomputing: overwrite it and look.
    cv2.imwrite(str(path), np.zeros((240, 320, 3), np.uint8))
    again = PanopticMultiView(fake_root, multiview=True, crop_size=32, cache_dir=tmp_path / "cache")
    assert again.background(0, 1).max() == 0


def test_default_background_cache_location(tmp_path):
    root = make_fake_panoptic(tmp_path / "data", num_frames=3, nodes=(0, 3))
    ds = PanopticMultiView(root, multiview=True, crop_size=16, require_in_view=False)
    cameras = ds[0]["meta"]["cameras"]
    cache = root / SEQ / ".handssl_cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"background_{n}_n50.png" for n in cameras)
    paths = ds.compute_backgrounds()
    assert sorted(paths) == sorted(cache / f"background_{n}_n50.png" for n in ("00_00", "00_03"))
    assert all(p.is_file() for p in paths)


def test_multiview_choice_is_deterministic_and_t2_respects_the_gap(fake_root):
    a = PanopticMultiView(fake_root, multiview=True, crop_size=16, t2_min_gap=3, require_in_view=False)
    b = PanopticMultiView(fake_root, multiview=True, crop_size=16, t2_min_gap=3, require_in_view=False)
    for i in range(len(a)):
        ma, mb = a[i]["meta"], b[i]["meta"]
        assert ma["cameras"] == mb["cameras"] and ma["frame_t2"] == mb["frame_t2"]
        assert abs(ma["frame_t2"] - ma["frame"]) >= 3 or ma["frame"] == 2  # frame 2 of 0..4 has no far frame
    assert len({tuple(a[i]["meta"]["cameras"]) for i in range(len(a))}) >= 2


def test_multiview_mirror_flips_all_images(fake_root):
    plain = PanopticMultiView(fake_root, hand="left", multiview=True, crop_size=32, require_in_view=False)
    mirrored = PanopticMultiView(
        fake_root, hand="left", multiview=True, crop_size=32, require_in_view=False, mirror_left=True
    )
    a, b = plain[0], mirrored[0]
    assert b["meta"]["hand"] == "right"
    for key in ("image", "background", "image_t2"):
        np.testing.assert_allclose(b[key].numpy(), a[key].flip(-1).numpy())
    np.testing.assert_allclose(
        project(b["joints3d"].double().numpy(), b["K"].double().numpy()), b["joints2d"], atol=1e-3
    )
    world = b["joints3d_world"].double().numpy()
    for v in range(2):
        np.testing.assert_allclose(
            world @ b["R"][v].double().numpy().T + b["t"][v].double().numpy(), b["joints3d"][v], atol=1e-2
        )


def test_find_sequences(tmp_path):
    make_fake_panoptic(tmp_path, sequences=("b_seq", "a_seq"), num_frames=1)
    (tmp_path / "not_a_sequence").mkdir()
    assert find_sequences(tmp_path) == ["a_seq", "b_seq"]
    ds = Panoptic(tmp_path, require_in_view=False)
    assert {ds[i]["meta"]["sequence"] for i in range(len(ds))} == {"a_seq", "b_seq"}
    assert len(Panoptic(tmp_path, sequences="b_seq", require_in_view=False)) == 3


def test_errors_name_the_problem(tmp_path, fake_root):
    with pytest.raises(DatasetError, match=r"root folder not found: .*nowhere"):
        Panoptic(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"(?s)no CMU Panoptic sequence found.*Expected layout"):
        Panoptic(tmp_path / "empty")
    with pytest.raises(DatasetError, match="sequence folder 'missing_seq' not found"):
        Panoptic(fake_root, sequences=["missing_seq"])
    with pytest.raises(DatasetError, match="no HD camera named '00_29'"):
        Panoptic(fake_root, cameras=["00_29"])
    with pytest.raises(ValueError, match="hand must be"):
        Panoptic(fake_root, hand="both")


def test_missing_annotations_and_broken_files(tmp_path):
    root = make_fake_panoptic(tmp_path, num_frames=3, nodes=(0, 3))
    (root / SEQ / f"calibration_{SEQ}.json").rename(root / SEQ / "calib.bak")
    with pytest.raises(DatasetError, match="calibration file not found"):
        Panoptic(root, sequences=[SEQ])
    (root / SEQ / "calib.bak").rename(root / SEQ / f"calibration_{SEQ}.json")

    hand_file = root / SEQ / "hdHand3d" / "handRecon3D_hd00000001.json"
    hand_file.write_text('{"people": [')
    with pytest.raises(DatasetError, match=r"malformed json file .*handRecon3D_hd00000001\.json"):
        Panoptic(root)
    hand_file.unlink()

    image = root / SEQ / "hdImgs" / "00_00" / "00_00_00000002.jpg"
    image.write_bytes(image.read_bytes()[:2000])
    ds = Panoptic(root, cameras=["00_00"], require_in_view=False)
    assert [ds[0]["meta"]["frame"], len(ds)] == [0, 2]  # frame 1 lost its hand file above
    with pytest.raises(DatasetError, match=r"corrupt or truncated image file: .*00_00_00000002\.jpg"):
        ds[1]
    # The first image of a camera is opened at construction (for the image size).
    first = root / SEQ / "hdImgs" / "00_00" / "00_00_00000000.jpg"
    first.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"corrupt or truncated image file: .*00_00_00000000\.jpg"):
        Panoptic(root, cameras=["00_00"])


def test_missing_image_views_are_skipped(tmp_path):
    root = make_fake_panoptic(tmp_path, num_frames=3, nodes=(0, 3))
    (root / SEQ / "hdImgs" / "00_03" / "00_03_00000001.jpg").unlink()
    with pytest.warns(UserWarning, match="skipped 1 samples \\(camera views"):
        ds = Panoptic(root, require_in_view=False)
    assert len(ds) == 3 * 2 - 1
    assert load_image(root / SEQ / "hdImgs" / "00_00" / "00_00_00000001.jpg").shape == (240, 320, 3)


def test_old_single_view_name_still_builds_the_single_view_loader(fake_root):
    # Configs and notebooks wrote PanopticMultiView(root) for single-view items (multiview=False was the default).
    with pytest.warns(DeprecationWarning, match="use handssl.data.Panoptic"):
        old = PanopticMultiView(fake_root, hand="left", require_in_view=False, num_views=3, mirror_left=True)
    new = Panoptic(fake_root, hand="left", require_in_view=False, mirror_left=True)
    assert not old.multiview and len(old) == len(new)
    for key in ("image", "joints2d", "R", "dist"):
        np.testing.assert_array_equal(old[4][key], new[4][key])


def test_multiview_dataset_pickles(fake_root):
    import pickle

    ds = PanopticMultiView(fake_root, multiview=True, crop_size=16, require_in_view=False)
    again = pickle.loads(pickle.dumps(ds))  # DataLoader workers under spawn
    assert type(again) is PanopticMultiView and len(again) == len(ds)
    assert again[0]["meta"]["cameras"] == ds[0]["meta"]["cameras"]
