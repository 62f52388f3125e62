"""The 2.5D network's new losses (heatmap, L1), its health diagnostics, the unpaired SynthHands target and the
rule that pseudo-labelling reads no annotation of the unlabelled images."""

import sys
from pathlib import Path

import pytest
import torch
import yaml

from handssl.geometry import project
from handssl.metrics.health import HEALTH_KEYS, pose25d_health
from handssl.models.components.pose25d import (
    gaussian_heatmaps,
    heatmap_loss,
    pose_distance,
    soft_argmax_2d,
)
from handssl.models.semihand import SemiHandModule
from handssl.models.semihand_options import PoseLossOptions, PseudoLabelOptions

sys.path.insert(0, str(Path(__file__).parent))
from test_semi_datamodule import make_datamodule
from test_semihand_module import TINY, K

ROOT_DIR = Path(__file__).resolve().parents[1]


def _hands(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 21, 3, generator=g) * 30 + torch.tensor([0.0, 0.0, 450.0])


# ------------------------------------------------------------------------------------------ losses
def test_gaussian_targets_peak_at_the_label_and_sum_to_one():
    uv = torch.tensor([[[20.5, 9.5], [3.5, 60.5]]])  # cell centres at stride 2: 2j + 0.5
    maps = gaussian_heatmaps(uv, 32, 32, stride=2, sigma_cells=1.0)
    assert torch.allclose(maps.sum((-1, -2)), torch.ones(1, 2))
    flat = maps.flatten(2).argmax(-1)
    assert flat[0, 0] == 4 * 32 + 10 and flat[0, 1] == 30 * 32 + 1
    # away from the border the target's own soft-argmax is the label
    expected, _ = soft_argmax_2d(maps[:, :1].log(), 1.0, stride=2)
    assert torch.allclose(expected[0, 0], uv[0, 0], atol=1e-3)


def test_heatmap_loss_is_zero_at_the_target_and_sharpens_flat_maps():
    uv = torch.tensor([[[20.0, 30.0]]])
    target = gaussian_heatmaps(uv, 16, 16, stride=4)
    weight = torch.ones(1, 1)
    assert heatmap_loss(target.log(), uv, weight, stride=4).abs() < 1e-5
    logits = torch.zeros(1, 1, 16, 16, requires_grad=True)
    flat_loss = heatmap_loss(torch.log_softmax(logits.flatten(2), -1).view_as(logits), uv, weight, stride=4)
    assert flat_loss > 1.0  # a uniform map is far from a one-cell Gaussian
    flat_loss.backward()
    assert logits.grad is not None
    # descending the gradient raises the probability at the label's cell
    row, col = 30 // 4, 20 // 4
    assert logits.grad[0, 0, row, col] < 0 and logits.grad[0, 0, 0, 0] > 0
    assert heatmap_loss(target.log(), uv, torch.zeros(1, 1), stride=4) == 0  # nothing weighted


def test_l1_pose_distance_by_hand():
    uv_a, uv_b = torch.zeros(1, 2, 2), torch.tensor([[[3.0, -4.0], [1.0, 0.0]]])
    d_a, d_b = torch.zeros(1, 2), torch.tensor([[0.5, 0.0]])
    l1 = pose_distance(uv_a, d_a, uv_b, d_b, depth_weight=16.0, norm="l1")
    assert torch.allclose(l1, torch.tensor([((3 + 4 + 4 * 0.5) + 1) / 2]))  # sqrt(16) |dd|
    l2 = pose_distance(uv_a, d_a, uv_b, d_b, depth_weight=16.0, norm="l2")
    assert torch.allclose(l2, torch.tensor([((9 + 16 + 16 * 0.25) + 1) / 2]))
    with pytest.raises(ValueError, match="norm"):
        pose_distance(uv_a, d_a, uv_b, d_b, norm="l3")  # type: ignore[arg-type]


def test_module_supervised_losses_follow_the_loss_norm_and_heatmap_weight():
    batch = next(iter(make_datamodule(unlabeled_fraction=0.0).train_dataloader()))[0]["labeled"]
    for norm in ("l1", "l2"):
        module = SemiHandModule(**TINY, loss=PoseLossOptions(norm=norm, heatmap_weight=2.0))
        out = module.student(batch["image"])
        losses = module.supervised_losses(out, batch)
        error = (out["uv"] - batch["joints2d"]) / module.uv_unit_px
        per_joint = error.abs().sum(-1) if norm == "l1" else error.pow(2).sum(-1)
        valid = batch["valid"].bool() & batch["in_bounds"].bool()
        assert torch.allclose(losses["sup_2d"], per_joint[valid].mean(), rtol=1e-4)
        expected = 2.0 * heatmap_loss(
            out["log_heatmaps"], batch["joints2d"], valid, module.losses.stride(out)
        )
        assert torch.allclose(losses["sup_heatmap"], expected)
    none = SemiHandModule(**TINY, loss=PoseLossOptions(heatmap_weight=0.0))
    assert "sup_heatmap" not in none.supervised_losses(none.student(batch["image"]), batch)
    with pytest.raises(ValueError, match=r"loss\.norm must be 'l1' or 'l2', got 'huber'"):
        SemiHandModule(**TINY, loss={"norm": "huber"})


def test_network_defaults_are_the_sharp_fine_recipe():
    module = SemiHandModule(**TINY)
    out = module.student(torch.rand(2, 3, 64, 64))
    assert out["heatmaps"].shape[-2:] == (16, 16)  # output stride 4
    assert torch.allclose(module.student.beta, torch.tensor(5.0))
    assert torch.allclose(out["log_heatmaps"].exp(), out["heatmaps"], atol=1e-6)


# ------------------------------------------------------------------------------------------ health
def test_health_of_the_truth_a_flat_hand_and_a_shrunken_hand():
    joints = _hands()
    Kb = K.expand(joints.shape[0], 3, 3)
    uv = project(joints, Kb)
    valid = torch.ones(joints.shape[:2], dtype=torch.bool)
    sharp = gaussian_heatmaps(uv, 32, 32, stride=2, sigma_cells=0.5)
    perfect = pose25d_health(uv, sharp, joints, uv, joints, valid)
    assert set(perfect) == set(HEALTH_KEYS)
    assert perfect["error_2d_px"] < 1e-4 and abs(perfect["bone_ratio"] - 1) < 1e-5
    assert perfect["depth_corr"] > 0.999 and perfect["error_z_mm"] < 1e-4
    assert perfect["heatmap_peak"] > 0.3
    flat = joints.clone()
    flat[..., 2] = joints[:, 9:10, 2]  # every joint at the root's depth
    health = pose25d_health(uv, sharp, flat, uv, joints, valid)
    assert abs(health["depth_corr"]) < 1e-4 and health["error_z_mm"] > 10
    centre = joints[:, 9:10]
    shrunk = centre + 0.5 * (joints - centre)
    health = pose25d_health(uv, torch.full_like(sharp, 1 / 1024), shrunk, uv, joints, valid)
    assert abs(health["bone_ratio"] - 0.5) < 1e-4 and health["depth_corr"] > 0.999
    assert abs(health["heatmap_peak"] - 1 / 1024) < 1e-7


# ------------------------------------------------------------------------------ unpaired target
def _synthhands_sets(path):
    from handssl.data.synthhands import SynthHands, SynthHandsWorld

    init = yaml.safe_load(path.read_text())["data"]["init_args"]
    sets = {}
    for part in ("train", "unlabeled", "val", "test"):
        (entry,) = init[part]
        args = dict(entry["init_args"])
        world = {**args.pop("world")["init_args"], "image_size": 16}
        sets[part] = SynthHands(world=SynthHandsWorld(**world), cache_mb=0, extra_keys=[], **args)
    return sets


def test_synthetic_to_real_sets_share_no_subject():
    sets = _synthhands_sets(ROOT_DIR / "experiments/data/synthhands_synthetic_to_real.yaml")
    subjects = {part: set(ds.subjects) for part, ds in sets.items()}
    for part, ds in sets.items():  # the items really come from the listed subjects
        keys = {ds.view_keys(i)[0][0] for i in range(0, len(ds), 97)}
        assert keys <= subjects[part], part
    parts = list(subjects)
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not subjects[a] & subjects[b], (a, b)
    assert len(subjects["train"]) == len(subjects["unlabeled"]) == 16


def test_first_subject_shifts_the_subjects_and_is_checked():
    from handssl.data.synthhands import SynthHands, SynthHandsWorld

    a = SynthHands(
        "train", world=SynthHandsWorld(image_size=16), num_subjects=2, frames_per_sequence=2, cache_mb=0
    )
    b = SynthHands(
        "train",
        world=SynthHandsWorld(image_size=16),
        num_subjects=2,
        first_subject=2,
        frames_per_sequence=2,
        cache_mb=0,
    )
    assert a.subjects == [0, 1] and b.subjects == [2, 3]
    assert not torch.allclose(a[0]["joints3d"], b[0]["joints3d"])  # another hand, another pose
    with pytest.raises(ValueError, match="first_subject"):
        SynthHands(
            "train", world=SynthHandsWorld(image_size=16), num_subjects=2, first_subject=99_999, cache_mb=0
        )


# -------------------------------------------------------------------- no target labels in training
def test_pseudo_labels_read_no_annotation_of_the_unlabelled_images():
    torch.manual_seed(0)
    batch = next(iter(make_datamodule().pseudo_label_dataloader()))
    garbage = dict(batch)
    garbage["eval_joints3d"] = torch.randn_like(batch["eval_joints3d"]) * 100 + 300
    garbage["eval_joints2d"] = torch.randn_like(batch["eval_joints2d"]) * 10
    garbage["eval_valid"] = torch.ones_like(batch["eval_valid"])
    module = SemiHandModule(**TINY).eval()  # the recipe: correction, predicted lifting, mean template
    labels, _ = module.compute_pseudo_labels(batch)
    labels_garbage, _ = module.compute_pseudo_labels(garbage)
    for key, value in labels.to_dict().items():
        assert torch.equal(value, labels_garbage.to_dict()[key]), key
    # the check can fail: the privileged option does read the annotation
    known = SemiHandModule(**TINY, pseudo_labels=PseudoLabelOptions(lifting="known")).eval()
    known.load_state_dict(module.state_dict())
    a, _ = known.compute_pseudo_labels(batch)
    b, _ = known.compute_pseudo_labels(garbage)
    assert not torch.equal(a.to_dict()["depth"], b.to_dict()["depth"]) or not torch.equal(
        a.to_dict()["uv_registered"], b.to_dict()["uv_registered"]
    )
