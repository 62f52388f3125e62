"""The data contract: every dataset's packed sample holds contract keys with contract dtypes and shapes."""

import numpy as np
import pytest
import torch

from handssl.data import (
    RHD,
    STB,
    DatasetError,
    DexterObject,
    FreiHAND,
    PanopticHandDB,
    PanopticMultiView,
    mirror_sample,
)
from handssl.data.contract import (
    FIELDS,
    HandSample,
    MultiViewItem,
    MultiViewPair,
    SemiLabeledSample,
    SemiUnlabeledSample,
    check_packed,
    pack_sample,
    unpack_sample,
)
from handssl.data.fakes import (
    make_fake_dexter_object,
    make_fake_freihand,
    make_fake_handdb,
    make_fake_panoptic,
    make_fake_rhd,
    make_fake_stb,
)
from handssl.data.transforms import CropResize
from handssl.geometry import project, world_to_camera

SIZE = 32
TINY = {
    "num_subjects": 1,
    "sequences_per_subject": 2,
    "frames_per_sequence": 2,
    "cache_mb": 0,
}


def _keys(typed_dict) -> set[str]:
    return set(typed_dict.__annotations__)


def _required(typed_dict) -> set[str]:
    return set(typed_dict.__required_keys__)


def assert_follows(sample, typed_dict, views: int | None = None):
    """Keys of ``typed_dict`` (all required ones present), contract dtypes and per-sample shapes."""
    keys = set(sample)
    assert _required(typed_dict) <= keys, sorted(_required(typed_dict) - keys)
    assert keys <= _keys(typed_dict), sorted(keys - _keys(typed_dict))
    check_packed(sample, _keys(typed_dict))
    for key, value in sample.items():
        field = FIELDS[key]
        if field.kind == "meta":
            assert isinstance(value, dict) and "dataset" in value
            continue
        shape = field.shape
        if views is not None and key != "joints3d_world":
            shape = (views, *shape)
        assert value.ndim == len(shape), (key, tuple(value.shape), shape)
        for got, want in zip(value.shape, shape):
            assert want is None or got == want, (key, tuple(value.shape), shape)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("contract")
    return {
        "rhd": make_fake_rhd(base / "rhd", splits=("training",), num_samples=2),
        "stb": make_fake_stb(base / "stb", sequences=("B1Counting",), num_frames=1),
        "do": make_fake_dexter_object(base / "do", sequences=("Grasp1",), num_frames=2),
        "freihand": make_fake_freihand(base / "freihand", num_training=1, num_evaluation=1),
        "handdb": make_fake_handdb(base / "handdb", subsets=("manual_train",), num_images=2),
        "panoptic": make_fake_panoptic(base / "panoptic", num_frames=3),
    }


DATASETS = {
    "rhd": lambda r: RHD(r["rhd"], mirror_left=True, load_depth=True),
    "stb": lambda r: STB(r["stb"], split="test", sequences=["B1Counting"], mirror_left=True),
    "dexter_object": lambda r: DexterObject(r["do"], sequences=["Grasp1"]),
    "freihand": lambda r: FreiHAND(r["freihand"]),
    "handdb": lambda r: PanopticHandDB(r["handdb"], subset="manual_train", mirror_left=True),
    "panoptic": lambda r: PanopticMultiView(r["panoptic"], hand="left", mirror_left=True),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_packed_fake_dataset_samples_follow_the_contract(roots, name):
    dataset = DATASETS[name](roots)
    raw = dataset[0]
    assert all(not isinstance(v, torch.Tensor) for v in raw.values()), "raw samples are numpy"
    sample = CropResize(SIZE)(raw)
    assert_follows(sample, HandSample)
    assert sample["image"].shape == (3, SIZE, SIZE)
    assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0


def test_synthhands_samples_are_packed_and_follow_the_contract():
    from handssl.data.synthhands.multi_view import SynthHandsMultiView
    from handssl.data.synthhands.single_view import SynthHands
    from handssl.data.synthhands.world import SynthHandsWorld

    sample = SynthHands(world=SynthHandsWorld(image_size=SIZE, num_cameras=3), **TINY)[0]
    assert_follows(sample, HandSample)
    assert_follows(CropResize(SIZE)(sample), HandSample)
    item = SynthHandsMultiView(world=SynthHandsWorld(image_size=SIZE, num_cameras=3), num_views=2, **TINY)[0]
    assert_follows(item, MultiViewItem, views=2)


def test_panoptic_multiview_items_and_pairs_follow_the_contract(roots, tmp_path):
    from handssl.data.multiview import MultiViewPairs

    dataset = PanopticMultiView(
        roots["panoptic"], multiview=True, crop_size=SIZE, background_frames=2, cache_dir=tmp_path
    )
    assert_follows(dataset[0], MultiViewItem, views=2)
    pairs = MultiViewPairs(dataset, labeled=[0])
    assert_follows(pairs[0], MultiViewPair)
    assert_follows(pairs[1], MultiViewPair)
    assert not pairs[1]["labeled"] and not pairs[1]["valid"].any()


def test_semi_views_give_packed_labeled_and_unlabeled_samples(roots):
    from handssl.data.semi import LabeledView, UnlabeledView

    rhd = RHD(roots["rhd"])
    for augment in (True, False):
        assert_follows(LabeledView(rhd, SIZE, augment=augment)[0], SemiLabeledSample)
    unlabeled = UnlabeledView(rhd, SIZE, num_perturbations=2)[1]
    assert_follows(unlabeled, SemiUnlabeledSample)
    assert unlabeled["image_perturbed"].shape == (2, 3, SIZE, SIZE)


def test_pack_converts_layouts_and_unpack_inverts_it():
    rng = np.random.default_rng(0)
    raw = {
        "image": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "mask": (rng.random((6, 5)) > 0.5).astype(np.uint8) * 255,
        "depth": rng.random((6, 5)),
        "joints2d": rng.random((21, 2)),
        "valid": np.ones(21, bool),
        "index": np.array(3),
        "meta": {"dataset": "fake", "visible": np.ones(21, bool)},
    }
    packed = pack_sample(raw)
    assert packed["image"].shape == (3, 6, 5) and packed["image"].dtype == torch.float32
    assert torch.equal(packed["image"], torch.from_numpy(raw["image"]).permute(2, 0, 1).float() / 255.0)
    assert packed["mask"].shape == (1, 6, 5) and set(packed["mask"].unique().tolist()) <= {0.0, 1.0}
    assert packed["depth"].dtype == torch.float32 and packed["joints2d"].dtype == torch.float32
    assert packed["index"].dtype == torch.int64 and packed["meta"] is raw["meta"]
    back = unpack_sample(packed)
    assert back["image"].shape == (6, 5, 3) and back["mask"].shape == (6, 5)
    assert np.array_equal(back["image"], raw["image"].astype(np.float32) / np.float32(255))
    assert torch.equal(pack_sample(back)["image"], packed["image"])


def test_a_non_contract_key_or_a_wrong_dtype_is_one_clear_line():
    sample = {"image": np.zeros((4, 4, 3), np.uint8), "K": np.eye(3), "meta": {"dataset": "fake"}}
    with pytest.raises(DatasetError, match=r"key 'heatmap' is not part of the data contract") as err:
        pack_sample({**sample, "heatmap": np.zeros(3)})
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match=r"'valid' has dtype torch.int64, the contract says bool") as err:
        pack_sample({**sample, "valid": np.ones(21, np.int64)})
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="'K' is list"):
        check_packed({"K": [[1.0]]})
    with pytest.raises(DatasetError, match="not part of"):
        check_packed(pack_sample(sample), keys=["image", "meta"])


@pytest.mark.parametrize("packed", [False, True])
def test_mirror_sample_keeps_the_world_and_the_projection(packed):
    rng = np.random.default_rng(1)
    angle = 0.3
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    t = np.array([20.0, -10.0, 500.0])
    world = rng.normal(size=(21, 3)) * 40
    K = np.array([[300.0, 0.5, 60.0], [0, 310.0, 50.0], [0, 0, 1]])
    joints3d = world_to_camera(world, R, t)
    raw = {
        "image": rng.integers(0, 256, (100, 120, 3), dtype=np.uint8),
        "joints3d": joints3d.astype(np.float32),
        "joints2d": project(joints3d, K).astype(np.float32),
        "K": K.astype(np.float32),
        "valid": np.ones(21, bool),
        "R": R.astype(np.float32),
        "t": t.astype(np.float32),
        "dist": np.array([0.1, 0.01, 0.002, 0.003, 0.0], np.float32),
        "joints3d_world": world.astype(np.float32),
        "box": np.array([10.0, 20.0, 50.0, 70.0], np.float32),
        "meta": {"dataset": "fake", "hand": "left"},
    }
    sample = pack_sample(raw) if packed else raw
    out = mirror_sample(sample)
    as_np = unpack_sample(out)
    width = 120
    assert out["meta"]["hand"] == "right" and out["meta"]["mirrored"]
    assert np.allclose(
        project(as_np["joints3d"].astype(np.float64), as_np["K"].astype(np.float64)),
        as_np["joints2d"],
        atol=1e-3,
    )
    # The world is kept: the mirrored camera (F R, F t) sees the same world joints at the mirrored 3D.
    assert np.allclose(
        world_to_camera(world, as_np["R"].astype(np.float64), as_np["t"].astype(np.float64)),
        as_np["joints3d"],
        atol=1e-3,
    )
    assert np.array_equal(as_np["joints3d_world"], raw["joints3d_world"])
    assert np.allclose(as_np["box"], [width - 1 - 50, 20, width - 1 - 10, 70])
    assert as_np["dist"][3] == -raw["dist"][3] and as_np["dist"][2] == raw["dist"][2]
    image = as_np["image"] if packed else out["image"]
    expected = raw["image"][:, ::-1].astype(np.float32) / np.float32(255) if packed else raw["image"][:, ::-1]
    assert np.array_equal(image, expected)
    twice = unpack_sample(mirror_sample(out))
    for key in ("joints3d", "joints2d", "K", "R", "t", "dist", "box"):
        assert np.allclose(twice[key], raw[key], atol=1e-4), key
    assert twice["meta"]["hand"] == "left"


def test_zero_dimensional_arrays_stay_scalars():
    packed = pack_sample({"index": np.array(7, np.int64), "labeled": np.array(True), "meta": {}})
    assert packed["index"].shape == () and packed["labeled"].shape == ()


def test_mirror_sample_flips_stacked_numpy_views_like_packed_ones():
    rng = np.random.default_rng(2)
    views = {
        "image": rng.integers(0, 256, (2, 8, 10, 3), dtype=np.uint8),
        "mask": rng.integers(0, 2, (2, 8, 10), dtype=np.uint8),
        "joints3d": rng.normal(size=(2, 21, 3)).astype(np.float32) + [0, 0, 400],
        "joints2d": rng.random((2, 21, 2)).astype(np.float32) * 8,
        "K": np.tile(np.array([[50.0, 0, 4.5], [0, 50.0, 3.5], [0, 0, 1]], np.float32), (2, 1, 1)),
        "valid": np.ones((2, 21), bool),
        "R": np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)),
        "t": np.zeros((2, 3), np.float32),
        "meta": {"dataset": "fake", "hand": "left"},
    }
    raw = unpack_sample(pack_sample(mirror_sample(views)))
    packed = unpack_sample(mirror_sample(pack_sample(views)))
    for key in ("image", "mask", "joints3d", "joints2d", "K", "R", "t"):
        assert np.array_equal(raw[key], packed[key]), key
    assert np.array_equal(mirror_sample(views)["image"][1], views["image"][1][:, ::-1])


def test_collate_refuses_raw_numpy_samples():
    from handssl.data.datamodules import collate_samples

    raw = {"image": np.zeros((4, 4, 3), np.uint8), "meta": {"dataset": "fake"}}
    with pytest.raises(TypeError, match=r"'image'.*numpy.*pack_sample"):
        collate_samples([raw, raw])
    assert collate_samples([pack_sample(raw)] * 2)["image"].shape == (2, 3, 4, 4)
