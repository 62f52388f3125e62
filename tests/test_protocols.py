"""Tests of handssl.metrics.protocols: registry, alignments, frame skipping, DDP-safe accumulation."""

import dataclasses

import pytest
import torch

from handssl.geometry import axis_angle_to_matrix
from handssl.metrics.protocols import PROTOCOLS, EvalProtocol, ProtocolMetric, get_protocol
from handssl.skeleton import TIPS


def random_hand(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 21, 3, dtype=torch.float64) * 40.0 + torch.tensor([0.0, 0.0, 500.0]).double()


def test_registry_has_the_named_protocols_with_citations():
    assert set(PROTOCOLS) == {"stb", "dexter_object", "rhd", "freihand", "synthhands"}
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name
        assert len(protocol.citation) > 40
    assert (
        PROTOCOLS["freihand"].auc_low,
        PROTOCOLS["freihand"].auc_high,
        PROTOCOLS["freihand"].auc_steps,
    ) == (
        0.0,
        50.0,
        100,
    )
    assert PROTOCOLS["rhd"].auc_steps == 20 and PROTOCOLS["rhd"].alignment == "procrustes"
    assert PROTOCOLS["dexter_object"].joints == (4, 8, 12, 16, 20)
    assert PROTOCOLS["dexter_object"].auc_steps == 15
    assert PROTOCOLS["stb"].reference_bone == (9, 10)


def test_unknown_protocol_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown evaluation protocol 'stbb'.*dexter_object.*synthhands"):
        get_protocol("stbb")


def test_overrides_make_a_new_validated_protocol():
    minimal_hand_stb = get_protocol("stb", root_joint=9, reference_bone=[0, 9], auc_steps=15)
    assert minimal_hand_stb.root_joint == 9 and minimal_hand_stb.reference_bone == (0, 9)
    assert minimal_hand_stb.thresholds.shape == (15,)
    assert PROTOCOLS["stb"].root_joint == 0  # the registry entry is untouched
    with pytest.raises(ValueError, match="no field"):
        get_protocol("stb", threshold=3)
    with pytest.raises(ValueError, match="alignment must be one of"):
        get_protocol("stb", alignment="umeyama")
    with pytest.raises(ValueError, match="min_valid_joints >= 3"):
        dataclasses.replace(PROTOCOLS["rhd"], min_valid_joints=2)
    with pytest.raises(ValueError, match="needs a reference_bone"):
        EvalProtocol("x", alignment="root_and_scale")
    with pytest.raises(ValueError, match="high > low"):
        get_protocol("synthhands", auc_low=50.0, auc_high=20.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROTOCOLS["stb"].auc_steps = 3


def test_stb_root_and_bone_scaling_hand_computed():
    target = random_hand(1)
    pred = 2.0 * (target - target[:, :1]) + torch.tensor([5.0, -3.0, 100.0]).double()
    protocol = get_protocol("stb")
    assert protocol.evaluate(pred, target)["mpjpe"] == pytest.approx(0.0, abs=1e-9)
    # Move the thumb tip 10 mm in the doubled prediction: 5 mm after scaling back, on 1 joint of 21.
    pred[0, 4, 2] += 10.0
    result = protocol.evaluate(pred, target)
    assert result["mpjpe"] == pytest.approx(5.0 / 21.0)
    assert result["per_joint_epe"][4] == pytest.approx(5.0)
    assert result["auc"] == pytest.approx(1.0)


def test_stb_scale_uses_the_reference_bone_only():
    target = random_hand(1)
    pred = target.clone()
    pred[0, 10] = target[0, 9] + 2.0 * (target[0, 10] - target[0, 9])  # double the middle MCP-PIP bone
    aligned_pred, aligned_target, _ = get_protocol("stb").align(pred, target)
    relative = target - target[:, :1]
    # Scale 1/2 applies to every joint; the untouched joints shrink by half towards the root.
    assert torch.allclose(aligned_pred[0, 5], relative[0, 5] / 2)
    assert torch.allclose(aligned_target, relative)


def test_stb_skips_frames_with_unannotated_root_or_bone():
    target = random_hand(3)
    pred = target + 1.0
    valid = torch.ones(3, 21, dtype=torch.bool)
    valid[1, 0] = False  # root
    valid[2, 10] = False  # reference bone
    target[1, 0] = float("nan")
    target[2, 10] = float("nan")
    result = get_protocol("stb").evaluate(pred, target, valid)
    assert result["num_frames"] == 1 and result["num_skipped"] == 2


def test_dexter_object_centroid_and_scale_makes_scaled_copy_exact():
    target = random_hand(4)
    pred = 0.6 * target + torch.tensor([30.0, -20.0, 80.0]).double()
    pred[:, [0, 1, 2, 9, 13]] += 500.0  # non-tip joints are not evaluated
    result = get_protocol("dexter_object").evaluate(pred, target)
    assert result["mpjpe"] == pytest.approx(0.0, abs=1e-9)
    assert result["auc"] == pytest.approx(1.0)
    assert len(result["per_joint_epe"]) == 5


def test_dexter_object_drops_missing_tips_and_skips_frames_with_fewer_than_two():
    target = random_hand(3)
    pred = target + torch.randn(3, 21, 3, dtype=torch.float64) * 10.0
    valid = torch.zeros(3, 21, dtype=torch.bool)
    valid[:, list(TIPS)] = True
    valid[1, [4, 8, 12, 16]] = False  # one tip left: skipped
    valid[2, 20] = False  # four tips left: kept
    target[~valid] = float("nan")
    result = get_protocol("dexter_object").evaluate(pred, target, valid)
    assert result["num_frames"] == 2 and result["num_skipped"] == 1
    kept = get_protocol("dexter_object").evaluate(pred[[0, 2]], target[[0, 2]], valid[[0, 2]])
    assert result["mpjpe"] == pytest.approx(kept["mpjpe"])
    _, _, aligned_valid = get_protocol("dexter_object").align(pred, target, valid)
    assert aligned_valid.sum(-1).tolist() == [5, 0, 4]


def test_procrustes_protocols_forgive_similarity_but_not_mirroring():
    target = random_hand(2)
    rotation = axis_angle_to_matrix(torch.tensor([0.4, -0.9, 1.3], dtype=torch.float64))
    copy = 1.2 * target @ rotation.T + 15.0
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    for name in ("rhd", "freihand"):
        assert get_protocol(name).evaluate(copy, target)["mpjpe"] == pytest.approx(0.0, abs=1e-8)
        assert get_protocol(name).evaluate(mirrored, target)["mpjpe"] > 5.0
    assert len(get_protocol("freihand").evaluate(copy, target)["pck_curve"]) == 100


def test_synthhands_is_root_relative_without_scale():
    target = random_hand(2)
    shifted = target + torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64)
    assert get_protocol("synthhands").evaluate(shifted, target)["mpjpe"] == pytest.approx(0.0, abs=1e-9)
    scaled = target[:, :1] + 1.1 * (target - target[:, :1])
    result = get_protocol("synthhands").evaluate(scaled, target)
    assert result["mpjpe"] > 1.0
    assert result["n_mpjpe"] == pytest.approx(0.0, abs=1e-9)
    assert result["pa_mpjpe"] == pytest.approx(0.0, abs=1e-8)


def test_epe_mean_is_per_keypoint_average():
    target = random_hand(2)
    pred = target.clone()
    pred[0, 5, 0] += 30.0  # joint 5 in frame 0: 30 mm
    pred[1, 6, 0] += 12.0  # joint 6 in frame 1: 12 mm, but joint 6 of frame 0 is unannotated
    valid = torch.ones(2, 21, dtype=torch.bool)
    valid[0, 6] = False
    result = get_protocol("synthhands").evaluate(pred, target, valid)
    # per keypoint: joint 5 -> 15 mm, joint 6 -> 12 mm, 19 others -> 0; pooled: 42 mm over 41 joints
    assert result["epe_mean"] == pytest.approx(27.0 / 21.0)
    assert result["mpjpe"] == pytest.approx(42.0 / 41.0)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocol_metric_chunks_merge_exactly(name):
    target = random_hand(8)
    pred = target + torch.randn(8, 21, 3, dtype=torch.float64) * 12.0
    valid = torch.rand(8, 21) > 0.2
    valid[:, 0] = True
    valid[:, [9, 10]] = True
    whole = get_protocol(name).evaluate(pred, target, valid)
    first, second = ProtocolMetric(name), ProtocolMetric(name)
    first.update(pred[:5], target[:5], valid[:5])
    second.update(pred[5:], target[5:], valid[5:])
    first.merge_state(second)
    merged = first.compute()
    for key in ("mpjpe", "epe_mean", "n_mpjpe", "pa_mpjpe", "auc"):
        assert merged[key].item() == pytest.approx(whole[key], rel=1e-9), key
    assert merged["pck_curve"].tolist() == pytest.approx(whole["pck_curve"])
    assert merged["num_frames"].item() + merged["num_skipped"].item() == 8


def test_protocol_needs_canonical_poses():
    with pytest.raises(ValueError, match=r"\(B, 21, 3\)"):
        get_protocol("stb").evaluate(torch.zeros(2, 5, 3), torch.zeros(2, 5, 3))
