"""SynthHands: rig, analytic ray casting, appearance domains and the two datasets."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from handssl.data.base import check_sample
from handssl.data.synthhands import SynthHands, SynthHandsMultiView, SynthHandsWorld
from handssl.data.synthhands.render import (
    BACKGROUND,
    NUM_CAPSULES,
    NUM_PRIMITIVES,
    PRIMITIVE_PART,
    HandShape,
    _select,
    hand_shape,
    raycast,
)
from handssl.data.synthhands.rig import make_rig
from handssl.geometry import camera_center, project, relative_rotation, world_to_camera
from handssl.skeleton import TIPS

SMALL = {"num_subjects": 2, "sequences_per_subject": 2, "frames_per_sequence": 8}


def small(world=None, **kwargs):
    return SynthHands(world=world, **{**SMALL, **kwargs})


def small_mv(world=None, **kwargs):
    return SynthHandsMultiView(world=world, **{**SMALL, **kwargs})


def _views(ds, index):
    """The keys of item ``index``'s first view, as the appearance sees them."""
    subject, sequence, frame, camera = ds.view_keys(index)[0]
    return SimpleNamespace(
        subjects=torch.tensor([subject]),
        sequences=torch.tensor([sequence]),
        frames=torch.tensor([frame]),
        cameras=torch.tensor([camera]),
    )


# --------------------------------------------------------------------------------------------- rig


def test_rig_is_a_deterministic_dome_looking_at_the_hand():
    rig = make_rig(num_cameras=8, radius_mm=600.0, seed=3)
    again = make_rig(num_cameras=8, radius_mm=600.0, seed=3)
    other = make_rig(num_cameras=8, radius_mm=600.0, seed=4)
    assert torch.equal(rig.R, again.R) and torch.equal(rig.t, again.t)
    assert not torch.allclose(rig.R, other.R)
    assert len(rig) == 8
    eye = torch.eye(3, dtype=torch.float64).expand(8, 3, 3)
    assert torch.allclose(rig.R @ rig.R.transpose(1, 2), eye, atol=1e-9)
    assert torch.allclose(torch.linalg.det(rig.R), torch.ones(8, dtype=torch.float64))
    centers = rig.centers
    assert torch.allclose(centers.norm(dim=-1), torch.full((8,), 600.0, dtype=torch.float64), atol=100.0)
    assert (centers[:, 2] < 0).any() and (centers[:, 2] > 0).sum() >= 5  # mostly above, some below
    # The origin is in front of every camera, within a few degrees of its optical axis.
    origin_cam = rig.t  # R @ 0 + t
    angle = torch.rad2deg(torch.acos(origin_cam[:, 2] / origin_cam.norm(dim=-1)))
    assert (origin_cam[:, 2] > 0).all() and (angle < 15).all()
    # Image "down" points roughly along world -z.
    down_world = rig.R[:, 1, :]
    assert (down_world[:, 2] < 0).all()


def test_rig_without_jitter_looks_exactly_at_origin_and_validates_arguments():
    rig = make_rig(num_cameras=5, position_jitter_mm=0.0, rotation_jitter_deg=0.0)
    assert torch.allclose(rig.t[:, :2], torch.zeros(5, 2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(rig.t[:, 2], torch.full((5,), 600.0, dtype=torch.float64))
    for kwargs in (
        {"num_cameras": 0},
        {"radius_mm": 100.0},
        {"fov_deg": 170.0},
        {"elevation_range_deg": (30, 10)},
    ):
        with pytest.raises(ValueError):
            make_rig(**kwargs)


# --------------------------------------------------------------------------------------------- renderer


def _camera(s=64, f=500.0, c=32.0):
    return torch.tensor([[[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]]], dtype=torch.float64)


def _shape(start, end, radius, triangles=None, triangle_radius=1.0):
    start = torch.tensor([start], dtype=torch.float64)[None] if not torch.is_tensor(start) else start
    end = torch.tensor([end], dtype=torch.float64)[None] if not torch.is_tensor(end) else end
    m = start.shape[1]
    if triangles is None:  # a tiny triangle far behind everything, out of view
        triangles = torch.tensor(
            [[[[1e4, 1e4, 1e4], [1e4 + 1, 1e4, 1e4], [1e4, 1e4 + 1, 1e4]]]], dtype=torch.float64
        )
    nt = triangles.shape[1]
    return HandShape(
        start=start,
        end=end,
        radius=torch.full((1, m), float(radius), dtype=torch.float64),
        triangles=triangles,
        triangle_radius=torch.full((1, nt), float(triangle_radius), dtype=torch.float64),
        dorsal=torch.zeros(1, m + nt, 3, dtype=torch.float64),
    )


def test_raycast_capsule_matches_hand_computed_depth_silhouette_and_normal():
    shape = _shape((-20.0, 0.0, 500.0), (20.0, 0.0, 500.0), 10.0)
    hits = raycast(shape, _camera(), 64)
    depth, prim = hits.depth[0], hits.primitive[0]
    # On the body, straight in front of the axis, the surface is 10 mm nearer than the axis.
    assert depth[32, 32].item() == pytest.approx(490.0, abs=1e-3)
    assert depth[32, 50].item() == pytest.approx(490.0, abs=1e-3)
    # Beyond the body the ray meets the end sphere: solve |t*(x, 0, 1) - (20, 0, 500)|^2 = 100.
    x = (57 - 32) / 500.0
    a, b, c = x * x + 1.0, -2.0 * (20.0 * x + 500.0), 20.0**2 + 500.0**2 - 100.0
    expected = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert depth[32, 57].item() == pytest.approx(expected, abs=1e-2)
    # Silhouette: tangent rays satisfy |y / z| <= tan(asin(10 / 500)), i.e. 10.002 px: rows 22..42.
    assert int((prim[:, 32] == 0).sum()) == 21
    assert (
        prim[21, 32] == BACKGROUND and prim[22, 32] == 0 and prim[42, 32] == 0 and prim[43, 32] == BACKGROUND
    )
    assert torch.isinf(depth[prim == BACKGROUND]).all()
    normals = hits.normal_map()[0]
    assert torch.allclose(normals[:, 32, 32], torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    assert torch.allclose(normals.norm(dim=0)[prim >= 0], torch.ones(int((prim >= 0).sum())), atol=1e-4)


def test_raycast_degenerate_capsule_is_a_sphere():
    hits = raycast(_shape((3.0, -2.0, 400.0), (3.0, -2.0, 400.0), 8.0), _camera(), 64)
    u, v = 32 + 3 * 500 / 400, 32 - 2 * 500 / 400  # projected centre (35.75, 29.5)
    ray = np.array([(36 - 32) / 500, (30 - 32) / 500, 1.0])
    centre = np.array([3.0, -2.0, 400.0])
    # |t ray - c|^2 = r^2, nearest root.
    a, b, c = ray @ ray, -2 * ray @ centre, centre @ centre - 64.0
    expected = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert hits.depth[0, 30, 36].item() == pytest.approx(expected, abs=1e-2)
    area = int(hits.mask[0].sum())
    assert abs(area - math.pi * (8.0 * 500 / 400) ** 2) < 12  # a disc of ~10 px radius
    assert hits.mask[0, round(v), round(u)]


def test_raycast_occlusion_and_rounded_triangle_face():
    # A capsule 100 mm in front of a flat rounded triangle: it wins where both project.
    triangle = torch.tensor(
        [[[[-60.0, -60.0, 600.0], [60.0, -60.0, 600.0], [0.0, 60.0, 600.0]]]], dtype=torch.float64
    )
    shape = _shape((0.0, -30.0, 500.0), (0.0, 30.0, 500.0), 5.0, triangles=triangle, triangle_radius=8.0)
    hits = raycast(shape, _camera(), 64)
    depth, prim = hits.depth[0], hits.primitive[0]
    assert prim[32, 32] == 0 and depth[32, 32].item() == pytest.approx(495.0, abs=1e-3)
    # Next to the capsule, the triangle's near face: plane z = 600 minus the radius.
    assert prim[32, 45] == 1 and depth[32, 45].item() == pytest.approx(592.0, abs=1e-3)
    normals = hits.normal_map()[0]
    assert torch.allclose(normals[:, 32, 45], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    # Bottom row (y = 31 / 500 * 592 = 36.7 mm): the triangle spans |x| <= 60 - (36.7 + 60) / 2 = 11.6 mm.
    assert prim[63, 40] == 1  # x = 9.5 mm
    assert prim[63, 44] == BACKGROUND  # x = 14.2 mm


def test_bitwise_select_equals_torch_where_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -3.5])
    a = torch.cat([torch.randn(200, 16, generator=generator), special.expand(200, 7)], 1)
    b = torch.randn(200, 23, generator=generator)
    condition = torch.rand(200, 23, generator=generator) < 0.5
    pairs = [(a, b), (a[:, :1], b), (a, float("inf")), (a, -0.0), (b, a[:, 3:4])]
    for x, y in pairs:
        got, expected = _select(condition, x, y), torch.where(condition, x, y)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # NaN payloads and -0.0 too
    doubles = a.double()  # other dtypes take torch.where
    torch.testing.assert_close(
        _select(condition, doubles, 1.0), torch.where(condition, doubles, 1.0), rtol=0, atol=0, equal_nan=True
    )


def test_raycast_is_batch_invariant_and_validates():
    joints = torch.randn(5, 21, 3, dtype=torch.float64) * 30 + torch.tensor(
        [0.0, 0.0, 600.0], dtype=torch.float64
    )
    shape = hand_shape(joints, 8.0)
    K = _camera().expand(5, 3, 3).clone()
    together = raycast(shape, K, 48)
    for i in range(5):
        single = raycast(HandShape(**{k: v[i : i + 1] for k, v in vars(shape).items()}), K[i : i + 1], 48)
        assert torch.equal(single.depth[0], together.depth[i])
        assert torch.equal(single.primitive[0], together.primitive[i])
    tiny_groups = raycast(shape, K, 48, max_candidates=1)
    assert torch.equal(tiny_groups.depth, together.depth) and torch.equal(
        tiny_groups.fg_normal, together.fg_normal
    )
    assert shape.dorsal.shape == (5, NUM_PRIMITIVES, 3) and len(PRIMITIVE_PART) == NUM_PRIMITIVES
    with pytest.raises(ValueError, match="K must be"):
        raycast(shape, K[:2], 48)
    with pytest.raises(ValueError, match="joints must be"):
        hand_shape(joints[:, :20], 8.0)


# --------------------------------------------------------------------------------------------- samples


def test_sample_contract_and_geometry_consistency():
    ds = small()
    sample = ds[5]
    check_sample(sample)
    s = 64
    assert sample["image"].shape == (3, s, s) and sample["image"].dtype == torch.float32
    assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0
    assert sample["mask"].shape == (1, s, s) and sample["depth"].shape == (1, s, s)
    assert sample["background"].shape == (3, s, s) and sample["valid"].all()
    meta = sample["meta"]
    assert meta["dataset"] == "synthhands" and meta["hand"] == "right" and meta["style"] == "synthetic"
    assert {"subject", "sequence", "frame", "camera"} <= meta.keys()
    # 2D is the projection of 3D with K; 3D is R @ world + t.
    assert torch.allclose(project(sample["joints3d"], sample["K"]), sample["joints2d"], atol=1e-3)
    assert torch.allclose(
        world_to_camera(sample["joints3d_world"], sample["R"], sample["t"]), sample["joints3d"], atol=1e-3
    )
    R = sample["R"].double()
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
    # The crop camera shares its centre with the rig camera.
    rig_center = ds.world.rig.centers[meta["camera"]].float()
    assert torch.allclose(camera_center(sample["R"], sample["t"]), rig_center, atol=1e-2)
    # The hand is centred: the middle of its joints' 2D box is near the image centre and inside.
    j2 = sample["joints2d"]
    assert (j2 > 0).all() and (j2 < s - 1).all()


def test_every_joint_lies_inside_the_rendered_hand_and_visible_tips_are_skin():
    ds = small(camera="all")
    visible_tips = 0
    for index in range(0, len(ds), 5):
        sample = ds[index]
        pixel = sample["joints2d"].round().long()
        depth, mask, hand = sample["depth"][0], sample["mask"][0], sample["hand_mask"][0]
        for j in range(21):
            u, v = pixel[j].tolist()
            z = sample["joints3d"][j, 2].item()
            # Every joint is inside a primitive: its pixel is foreground, the surface no deeper than it.
            assert mask[v, u] == 1.0, (index, j)
            assert depth[v, u] <= z + 0.5, (index, j)
            if j in TIPS and depth[v, u] >= z - 9.0:  # nothing but the tip's own cap in front: visible
                visible_tips += 1
                assert hand[v, u] == 1.0
    assert visible_tips > 20


def test_same_seed_and_index_give_identical_pixels_in_any_context():
    first = small(SynthHandsWorld(style="real"))
    reference = {i: first[i] for i in (0, 3, 17, 30)}
    # Another instance, reverse order, no cache and single-item chunks.
    other = small(SynthHandsWorld(style="real"), cache_mb=0, chunk_size=1)
    for i in (30, 17, 3, 0):
        sample = other[i]
        for key in ("image", "depth", "mask", "background", "joints3d", "K"):
            assert torch.equal(sample[key], reference[i][key]), (i, key)
    # A batched fetch (what a DataLoader calls) amid other indices.
    batch = small(SynthHandsWorld(style="real")).__getitems__([17, 1, 30, 2, 0, 3])
    for sample, i in zip(batch, (17, 1, 30, 2, 0, 3)):
        if i in reference:
            assert torch.equal(sample["image"], reference[i]["image"])
    # The views themselves are independent of the rendering batch.
    world = first.world
    keys = [first.view_keys(i)[0] for i in range(12)]
    together = world.render(*zip(*keys))
    apart = world.render(*zip(*keys[5:7]))
    assert torch.equal(together["image"][5:7], apart["image"])
    assert torch.equal(together["depth"][5:7], apart["depth"])
    # A different seed is a different world.
    assert not torch.equal(small(SynthHandsWorld(style="real", seed=1))[0]["image"], reference[0]["image"])


def test_dataloader_workers_give_the_same_batches():
    ds = small(cache_mb=0)
    serial = next(iter(DataLoader(ds, batch_size=6, shuffle=False)))
    parallel = next(iter(DataLoader(small(cache_mb=0), batch_size=6, shuffle=False, num_workers=2)))
    assert torch.equal(serial["image"], parallel["image"])
    assert torch.equal(serial["joints3d"], parallel["joints3d"])
    assert serial["image"].shape == (6, 3, 64, 64)


def test_disk_cache_round_trip(tmp_path):
    ds = small(cache_dir=tmp_path, cache_mb=0)
    sample = ds[4]
    files = list(tmp_path.rglob("*.npz"))
    assert files
    again = small(cache_dir=tmp_path, cache_mb=0)
    assert again._disk is not None and again._disk.get(again.view_keys(4)[0]) is not None
    reloaded = again[4]
    for key in ("image", "depth", "mask", "background", "joints3d", "joints2d", "K", "R", "t"):
        assert torch.equal(reloaded[key], sample[key]), key


def test_splits_have_disjoint_subjects():
    subjects = {}
    for split in ("train", "val", "test"):
        ds = SynthHands(split=split, num_subjects=3, sequences_per_subject=1, frames_per_sequence=2)
        subjects[split] = {ds.view_keys(i)[0][0] for i in range(len(ds))}
        assert len(subjects[split]) == 3
        assert set(ds.subjects) == subjects[split]
    assert not subjects["train"] & subjects["val"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]
    assert len(SynthHands(split="val", sequences_per_subject=1, frames_per_sequence=2)) == 8 * 2


def test_styles_share_geometry_but_differ_in_appearance():
    synthetic, real = small(SynthHandsWorld(style="synthetic")), small(SynthHandsWorld(style="real"))
    diffs, grads = [], []
    grad = lambda img: (img[:, :, 1:] - img[:, :, :-1]).abs().mean().item()  # noqa: E731
    for i in range(0, 32, 3):
        a, b = synthetic[i], real[i]
        for key in ("mask", "depth", "joints3d", "joints2d", "K", "R", "t"):
            assert torch.equal(a[key], b[key]), key
        diffs.append((a["image"] - b["image"]).abs().mean().item())
        grads.append((grad(a["background"]), grad(b["background"])))
    assert min(diffs) > 0.03
    # The source's backgrounds are cluttered photos, the target's a blurred room with low-frequency structure.
    synthetic_grad, real_grad = np.mean(grads, axis=0)
    assert synthetic_grad > 1.5 * real_grad


def test_background_crop_equals_the_image_off_the_hand():
    synthetic = small(SynthHandsWorld(style="synthetic"))[6]
    off = synthetic["mask"][0] == 0
    assert off.sum() > 1000
    assert torch.equal(synthetic["image"][:, off], synthetic["background"][:, off])
    # The real style adds sensor noise (read sigma 0.03-0.05 plus shot noise) and compression on top; blur only
    # mixes near the silhouette.
    real = small(SynthHandsWorld(style="real"))[6]
    mask = real["mask"][0][None, None]
    near_hand = torch.nn.functional.max_pool2d(mask, 3, stride=1, padding=1)[0, 0] > 0
    far = ~near_hand
    diff = (real["image"][:, far] - real["background"][:, far]).abs()
    assert 0.01 < diff.mean() < 0.07
    assert not torch.equal(real["image"][:, far], real["background"][:, far])


def test_background_is_static_per_camera():
    ds = small(camera=2)
    a, b = ds[0], ds[7]  # same camera, different frames and crop windows
    assert a["meta"]["camera"] == b["meta"]["camera"] == 2
    world = ds.world
    # Crops looking at the same point show the same background, whatever the pose.
    key_a, key_b = ds.view_keys(0)[0], ds.view_keys(7)[0]
    assert key_a[2] != key_b[2]
    rig = world.rig
    crop = rig.crop_cameras(torch.tensor([2, 2]), torch.zeros(2, 3, dtype=torch.float64), 64, 240.0)
    bg, _ = world.appearance.backgrounds(torch.tensor([2, 2]), torch.ones(2, 2), crop.R_rot, crop.K)
    assert torch.equal(bg[0], bg[1])
    # The texture a view shows depends on (subject, sequence, camera), not on the frame.
    assert ds.view_keys(0)[0][:2] == ds.view_keys(7)[0][:2]
    layouts = [world.appearance.background_layout(_views(ds, i)) for i in (0, 7)]
    for x, y in zip(*layouts):
        assert torch.equal(x, y)


def test_camera_modes_and_lengths():
    ds_random, ds_all, ds_fixed = small(), small(camera="all"), small(camera=3)
    assert (
        len(ds_random) == 2 * 2 * 8 and len(ds_all) == 8 * len(ds_random) and len(ds_fixed) == len(ds_random)
    )
    cameras = {ds_random.view_keys(i)[0][3] for i in range(len(ds_random))}
    assert len(cameras) >= 5
    assert {ds_fixed[i]["meta"]["camera"] for i in range(0, 32, 9)} == {3}
    assert [ds_all.view_keys(i)[0][3] for i in range(8)] == list(range(8))
    with pytest.raises(IndexError):
        ds_random[len(ds_random)]
    assert torch.equal(ds_random[-1]["image"], ds_random[len(ds_random) - 1]["image"])


def test_multiview_sample_shapes_rotations_and_second_frame():
    ds = small_mv(num_views=3, appearance_source="same_sequence", frame_gap=2)
    sample = ds[5]
    v, s = 3, 64
    shapes = {
        "image": (v, 3, s, s),
        "mask": (v, 1, s, s),
        "depth": (v, 1, s, s),
        "background": (v, 3, s, s),
        "joints3d": (v, 21, 3),
        "joints2d": (v, 21, 2),
        "K": (v, 3, 3),
        "R": (v, 3, 3),
        "t": (v, 3),
        "valid": (v, 21),
        "joints3d_world": (21, 3),
        "image_t2": (v, 3, s, s),
        "joints3d_t2": (v, 21, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sample[key].shape) == shape, key
    meta = sample["meta"]
    assert len(set(meta["cameras"])) == 3 and meta["frame_t2"] == (meta["frame"] + 2) % 8
    # Views of one frame: root-relative poses are related by the relative rotation of the crop cameras.
    j3 = sample["joints3d"].double()
    rel = j3 - j3[:, :1]
    R = sample["R"].double()
    for i, j in ((0, 1), (1, 2), (2, 0)):
        rotated = rel[i] @ relative_rotation(R[i], R[j]).T
        assert torch.allclose(rotated, rel[j], atol=1e-2)
    for i in range(v):
        assert torch.allclose(
            project(sample["joints3d"][i], sample["K"][i]), sample["joints2d"][i], atol=1e-3
        )
    # The second frame shows another pose of the same hand: different pixels, same cameras.
    assert not torch.equal(sample["image_t2"], sample["image"])
    # Single-view items of the same view agree pixel for pixel.
    single = small(camera=meta["cameras"][1])
    frame_index = ds.view_keys(5)[0][1] * 8 + meta["frame"]  # subject 0
    assert torch.equal(single[frame_index]["image"], sample["image"][1])
    # Random t': another frame of the same sequence, drawn from the index.
    random_t2 = small_mv(appearance_source="same_sequence")
    t2 = [random_t2.appearance_frame(i) for i in range(8)]
    assert all(q == 0 and f != i for i, (q, f) in enumerate(t2)) and len(set(t2)) > 1
    batch = random_t2.__getitems__([0, 1])
    assert batch[0]["image"].shape == (2, 3, s, s)


@pytest.mark.parametrize("size", [128, 256])
def test_larger_images_render(size):
    ds = SynthHands(
        world=SynthHandsWorld(image_size=size),
        num_subjects=1,
        sequences_per_subject=1,
        frames_per_sequence=2,
        chunk_size=1,
    )
    sample = ds[1]
    assert sample["image"].shape == (3, size, size) and sample["depth"].shape == (1, size, size)
    j2 = sample["joints2d"].round().long()
    assert (sample["mask"][0, j2[:, 1], j2[:, 0]] == 1).all()
    assert 0.03 < sample["mask"].mean() < 0.8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 8}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"image_size": True}, "image_size"),
        ({"style": "cartoon"}, r"style must be one of \('synthetic', 'real', 'real_object'\)"),
        ({"crop": "tight"}, r"crop must be one of \('joints', 'fixed'\)"),
        ({"crop_margin": 0.5}, "crop_margin"),
        ({"seed": -1}, "seed"),
        ({"num_cameras": 0}, "num_cameras"),
    ],
)
def test_bad_world_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthHandsWorld(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "training"}, "split"),
        ({"camera": 8}, "out of range"),
        ({"camera": "front"}, "camera"),
        ({"num_subjects": 0}, "num_subjects"),
        ({"frames_per_sequence": 0}, "frames_per_sequence"),
        ({"cache_mb": -1.0}, "cache_mb"),
        ({"extra_keys": ["depth", "normals"]}, "extra_keys"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_views": 9}, "num_views"),
        ({"num_views": 0}, "num_views"),
        ({"frame_gap": 0}, "frame_gap"),
        ({"frame_gap": 8}, "frame_gap"),
        ({"frames_per_sequence": 1, "appearance_source": "same_sequence"}, "frames_per_sequence"),
        ({"sequences_per_subject": 1}, "sequences_per_subject >= 2"),
        ({"appearance_source": "elsewhere"}, "other_sequence"),
    ],
)
def test_multiview_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_mv(**kwargs)


def test_world_render_validates_keys():
    world = SynthHandsWorld(image_size=32)
    with pytest.raises(ValueError, match="camera"):
        world.render([0], [0], [0], [8])
    with pytest.raises(ValueError, match="frame"):
        world.render([0], [0], [-1], [0])
    with pytest.raises(ValueError, match="same length"):
        world.render([0, 1], [0], [0], [0])
    out = world.render([0], [0], [1], [2])
    assert out["image"].dtype == torch.uint8 and out["label"].max() <= 2
    assert np.isclose(out["depth"][out["label"] == 0].abs().sum().item(), 0.0)
    assert NUM_CAPSULES < NUM_PRIMITIVES


def test_forked_workers_fill_one_shared_cache():
    ds = small()
    assert type(ds.store).__name__ == "SharedStore"
    expected = [ds[i]["image"] for i in (0, 13)]  # renders (and caches) in this process
    fresh = small()
    for _ in DataLoader(fresh, batch_size=8, shuffle=True, num_workers=2):
        pass
    # The workers' renders landed in memory this process sees: serving every item needs no rendering.
    assert int(fresh.store.fields["filled"].sum()) == len(fresh)
    # ... and so did the motion of the four sequences, computed once for all processes.
    (shared,) = fresh.world._shared_sequences
    assert len(shared.slots) == 4 and bool(shared.filled.all())
    assert torch.equal(shared.joints[shared.slots[(0, 1)]], ds.world.sequence(0, 1, 8))

    def fail(*args, **kwargs):
        raise AssertionError("rendered although cached")

    fresh.world.render = fail
    assert torch.equal(fresh[0]["image"], expected[0]) and torch.equal(fresh[13]["image"], expected[1])
    batch = fresh.__getitems__(list(range(len(fresh))))
    assert len(batch) == len(fresh)
    # Samples are copies: editing one does not touch the cache.
    batch[0]["image"].zero_()
    assert torch.equal(fresh[0]["image"], expected[0])
    # A dataset too big for its budget falls back to a per-process LRU cache.
    assert type(small(cache_mb=0.5).store).__name__ == "LRUStore"


def test_extra_keys_select_the_optional_outputs():
    lean = small(extra_keys=[])[3]
    check_sample(lean)
    assert not {"mask", "hand_mask", "depth", "background"} & lean.keys()
    full = small()[3]
    assert torch.equal(lean["image"], full["image"]) and torch.equal(lean["joints3d"], full["joints3d"])
    depth_only = small_mv(extra_keys=("depth",))[0]
    assert "depth" in depth_only and "mask" not in depth_only and depth_only["depth"].shape == (2, 1, 64, 64)


# --------------------------------------------------------------------------------------------- v2 world


@pytest.mark.parametrize("style", ["synthetic", "real", "real_object"])
def test_every_style_is_deterministic_and_batch_independent(style):
    a = small(SynthHandsWorld(style=style), cache_mb=0)
    b = small(SynthHandsWorld(style=style), cache_mb=0)
    alone = [a[i]["image"] for i in (3, 17, 30)]
    batch = b.__getitems__([30, 5, 17, 3, 11])
    assert torch.equal(alone[0], batch[3]["image"])
    assert torch.equal(alone[1], batch[2]["image"])
    assert torch.equal(alone[2], batch[0]["image"])


def test_joints_crops_frame_the_hand_and_fixed_crops_stay_available():
    framed, fixed = (
        small(camera="all"),
        small(SynthHandsWorld(crop="fixed", crop_extent_mm=240.0), camera="all"),
    )
    index = list(range(0, len(framed), 5))
    a, b = framed.__getitems__(index), fixed.__getitems__(index)
    share = lambda samples: torch.stack([x["hand_mask"] for x in samples]).mean().item()  # noqa: E731
    assert share(a) >= 0.2 and share(a) > 1.5 * share(b)
    for sample in a:
        uv = sample["joints2d"]
        box = (uv.amax(0) - uv.amin(0)).amax()
        # Every joint inside the crop; the joints' box spans about 1 / margin of it on its longer side.
        assert (uv > -0.5).all() and (uv < 63.5).all()
        assert box <= 64 / 1.25 + 1.0
        assert box >= 64 / 1.25 * 0.6
    # Joints crops zoom per view (their focal lengths vary far more than the fixed crops', set by depth only).
    assert torch.stack([x["K"][0, 0] for x in a]).std() > 2 * torch.stack([x["K"][0, 0] for x in b]).std()


def test_multiview_crops_stay_related_by_pure_rotations_with_their_own_focal_lengths():
    sample = small_mv(num_views=3)[4]
    K, R = sample["K"].double(), sample["R"].double()
    assert len({round(float(f), 3) for f in K[:, 0, 0]}) == 3  # each view frames the hand itself
    rel = sample["joints3d"].double() - sample["joints3d"].double()[:, :1]
    for i, j in ((0, 1), (1, 2)):
        assert torch.allclose(rel[i] @ relative_rotation(R[i], R[j]).T, rel[j], atol=1e-2)
    # All crops of a frame share the rig cameras' centres (look-at crops): t = -R c.
    centers = camera_center(R, sample["t"].double())
    rig = small_mv().world.rig
    assert torch.allclose(centers, rig.centers[sample["meta"]["cameras"]], atol=1e-2)


def test_camera_pairs_are_drawn_afresh_every_epoch_from_all_ordered_pairs():
    ds = small_mv()
    pairs = {(e, i): tuple(ds.cameras_of(i, e)) for e in range(12) for i in range(len(ds))}
    assert pairs == {(e, i): tuple(small_mv().cameras_of(i, e)) for e in range(12) for i in range(len(ds))}
    per_item = [{pairs[e, i] for e in range(12)} for i in range(len(ds))]
    assert min(len(p) for p in per_item) >= 6  # 12 epochs: a new pair nearly every time
    assert len(set(pairs.values())) == 8 * 7  # every ordered pair of the rig, both directions
    # The epoch travels in the key: (index, epoch) renders that epoch's cameras.
    item = ds[(3, 5)]
    assert item["meta"]["cameras"] == list(pairs[5, 3]) and item["meta"]["epoch"] == 5
    assert ds[3]["meta"]["cameras"] == list(pairs[0, 3])
    with pytest.raises(IndexError, match="epoch"):
        ds[(3, -1)]


def test_appearance_image_comes_from_another_sequence_of_the_same_subject():
    ds = small_mv()
    for index in range(0, len(ds), 3):
        sample = ds[index]
        meta = sample["meta"]
        assert meta["sequence_t2"] != meta["sequence"]
        keys = ds.view_keys(index)
        assert {k[0] for k in keys} == {meta["subject"]}
        # joints3d_t2 are the appearance frame's joints in its crops' frames: project with those crops' K.
        t2_keys = keys[ds.num_views :]
        rendered = ds.world.render(*zip(*t2_keys))
        assert torch.allclose(sample["joints3d_t2"], rendered["joints3d"], atol=1e-4)
        assert torch.equal(sample["image_t2"], rendered["image"].float() / 255.0)


def test_held_object_occludes_the_hand_by_depth():
    plain, held = (
        small(SynthHandsWorld(style="real"), camera="all"),
        small(SynthHandsWorld(style="real_object"), camera="all"),
    )
    index = list(range(0, len(plain), 3))
    a, b = plain.__getitems__(index), held.__getitems__(index)
    hidden = visible_object = 0
    for x, y in zip(a, b):
        on_hand = x["hand_mask"][0] > 0
        object_pixels = (y["depth"][0] > 0) & (y["mask"][0] == 0)  # neither hand nor sleeve: the object
        # Where the object covers hand pixels it is nearer than the hand surface was.
        covered = on_hand & object_pixels
        assert (y["depth"][0][covered] <= x["depth"][0][covered] + 1e-3).all()
        # Where the hand stays visible, the depth is unchanged (the object is behind or elsewhere).
        kept = on_hand & (y["hand_mask"][0] > 0)
        assert torch.equal(y["depth"][0][kept], x["depth"][0][kept])
        hidden += int(covered.sum())
        visible_object += int(object_pixels.any())
    assert hidden > 0 and visible_object > 0.5 * len(index)
    # The joints are labelled as before, occluded or not.
    assert torch.equal(torch.stack([x["joints3d"] for x in a]), torch.stack([y["joints3d"] for y in b]))


def test_real_styles_light_every_hand():
    ds = small(SynthHandsWorld(style="real"), camera="all", extra_keys=["hand_mask"])
    samples = ds.__getitems__(list(range(0, len(ds), 2)))
    image, hand = torch.stack([s["image"] for s in samples]), torch.stack([s["hand_mask"] for s in samples])
    luma = (0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]) * hand[:, 0]
    mean = luma.sum((1, 2)) / hand[:, 0].sum((1, 2)).clamp_min(1)
    assert (mean > 0.15).float().mean() >= 0.97


# --------------------------------------------------------------------------------------------- world argument


def test_the_world_passed_in_renders_the_items():
    world = SynthHandsWorld(style="real", image_size=32, num_cameras=4, seed=2)
    ds = small(world, camera="all", extra_keys=[])
    assert ds.world is world
    assert (ds.style, ds.image_size, ds.num_cameras, len(ds)) == ("real", 32, 4, 2 * 2 * 8 * 4)
    sample = ds[9]
    assert sample["image"].shape == (3, 32, 32) and sample["meta"]["style"] == "real"
    rendered = world.render(*zip(*ds.view_keys(9)))
    assert torch.equal(sample["image"], rendered["image"][0].float() / 255.0)
    assert torch.equal(sample["joints3d"], rendered["joints3d"][0])
    # No world: the default one.
    assert small().world.config() == SynthHandsWorld().config()


def test_one_world_serves_datasets_of_any_length_with_the_same_pixels():
    shared = SynthHandsWorld(style="real", image_size=32)
    short = SynthHands(world=shared, camera=0, num_subjects=1, sequences_per_subject=1, frames_per_sequence=4)
    long = SynthHands(world=shared, camera=0, num_subjects=1, sequences_per_subject=1, frames_per_sequence=16)
    alone = SynthHands(
        world=SynthHandsWorld(style="real", image_size=32),
        camera=0,
        num_subjects=1,
        sequences_per_subject=1,
        frames_per_sequence=16,
        cache_mb=0,
    )
    assert len(shared._shared_sequences) == 2  # each dataset shares its own sequences
    for index in (0, 3):  # a frame's pose does not depend on how many frames a dataset uses
        for key in ("image", "joints3d", "K"):
            assert torch.equal(short[index][key], long[index][key]), (index, key)
            assert torch.equal(long[index][key], alone[index][key]), (index, key)
    assert torch.equal(shared.sequence(0, 0, 4), shared.sequence(0, 0, 16)[:4])


def test_world_arguments_are_not_dataset_arguments():
    with pytest.raises(TypeError, match="world must be a SynthHandsWorld"):
        SynthHands("train", "real")  # the old positional style
    with pytest.raises(TypeError, match="style"):
        small(style="real")
    assert SynthHands.moved_arguments["style"] == (
        "world: {class_path: handssl.data.SynthHandsWorld, init_args: {style: ...}}"
    )
    assert set(SynthHandsMultiView.moved_arguments) == {
        "style",
        "image_size",
        "num_cameras",
        "seed",
        "crop",
        "crop_margin",
        "crop_extent_mm",
        "rig_radius_mm",
        "device",
    }


def test_rendering_on_renders_uncached_and_ends_with_the_block():
    ds = small(SynthHandsWorld(style="real"))
    cached = ds.__getitems__([5, 0, 17])
    fresh = small(SynthHandsWorld(style="real"))
    with fresh.rendering_on("cpu"):
        rendered = fresh.__getitems__([5, 0, 17])
    assert int(fresh.store.fields["filled"].sum()) == 0  # not cached
    for a, b in zip(cached, rendered):
        for key in ("image", "mask", "depth", "joints3d", "K"):
            assert torch.equal(a[key], b[key]), key
    fresh.__getitems__([5])  # after the block: the cached path again
    assert int(fresh.store.fields["filled"].sum()) == 1
