"""Tests of handssl.metrics.functional and handssl.metrics.classes against hand-computed values."""

import math

import pytest
import torch

from handssl.geometry import axis_angle_to_matrix
from handssl.metrics.classes import MPJPE, NMPJPE, PAMPJPE, PCK, PCKAUC, PoseMetrics
from handssl.metrics.functional import (
    align_centroid_and_scale,
    align_procrustes,
    align_root,
    align_root_and_scale,
    align_scale,
    joint_errors,
    mpjpe,
    n_mpjpe,
    pa_mpjpe,
    pck_auc,
    pck_curve,
)


def random_hand(batch: int = 1, dtype=torch.float64) -> torch.Tensor:
    """Non-planar random 21-joint poses, roughly hand-sized (mm)."""
    return torch.randn(batch, 21, 3, dtype=dtype) * 40.0 + torch.tensor([0.0, 0.0, 500.0], dtype=dtype)


@pytest.fixture
def two_sample_case():
    """Sample 0: joints 0-19 valid, each 10 mm off; sample 1: joints 0-9 valid, each 40 mm off.

    Joint 20 is never valid (NaN in the target), so it has no data. Offsets are (6, 8, 0) -> 10 mm and
    (0, 24, 32) -> 40 mm.
    """
    # Integer coordinates keep the 40 mm errors exact, so the 40 mm threshold is hit exactly.
    target = torch.randint(-80, 80, (2, 21, 3)).double() + torch.tensor(
        [0.0, 0.0, 500.0], dtype=torch.float64
    )
    valid = torch.zeros(2, 21, dtype=torch.bool)
    valid[0, :20] = True
    valid[1, :10] = True
    pred = target.clone()
    pred[0] += torch.tensor([6.0, 8.0, 0.0], dtype=torch.float64)
    pred[1] += torch.tensor([0.0, 24.0, 32.0], dtype=torch.float64)
    target[~valid] = float("nan")
    return pred, target, valid


def test_joint_errors_are_euclidean():
    pred = torch.zeros(1, 2, 3)
    target = torch.tensor([[[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]])
    assert torch.allclose(joint_errors(pred, target), torch.tensor([[5.0, 3.0]]))


def test_mpjpe_pools_valid_joints_and_ignores_nan_at_invalid(two_sample_case):
    pred, target, valid = two_sample_case
    # (20 joints * 10 mm + 10 joints * 40 mm) / 30 joints
    assert mpjpe(pred, target, valid).item() == pytest.approx(20.0)


def test_mpjpe_without_valid_uses_all_joints():
    target = random_hand(3)
    pred = target + torch.tensor([0.0, 0.0, 7.0], dtype=torch.float64)
    assert mpjpe(pred, target).item() == pytest.approx(7.0)


def test_pck_curve_averages_per_keypoint_not_pooled(two_sample_case):
    pred, target, valid = two_sample_case
    curve = pck_curve(pred, target, [20.0, 30.0, 40.0, 50.0], valid)
    # joints 0-9: errors {10, 40} -> PCK [0.5, 0.5, 1, 1] (40 <= 40 counts); joints 10-19: {10} -> all 1;
    # joint 20 has no data. Mean over 20 keypoints:
    assert torch.allclose(curve, torch.tensor([0.75, 0.75, 1.0, 1.0], dtype=torch.float64))
    pooled_at_20 = 20 / 30  # what pooling all 30 distances would say
    assert curve[0].item() != pytest.approx(pooled_at_20)


def test_pck_auc_is_per_keypoint_trapezoid(two_sample_case):
    pred, target, valid = two_sample_case
    auc = pck_auc(pred, target, low=20.0, high=50.0, steps=4, valid=valid)
    # joints 0-9: (10 * (0.5 + 0.5) / 2 + 10 * (0.5 + 1) / 2 + 10 * (1 + 1) / 2) / 30 = 22.5 / 30 = 0.75
    # joints 10-19: 1. Mean: 0.875
    assert auc.item() == pytest.approx(0.875)


def test_pck_auc_rejects_bad_grids():
    pose = random_hand(1)
    with pytest.raises(ValueError, match="at least 2"):
        pck_auc(pose, pose, steps=1)
    with pytest.raises(ValueError, match="high > low"):
        pck_auc(pose, pose, low=50.0, high=20.0)
    with pytest.raises(ValueError, match="increasing"):
        pck_curve(pose, pose, [30.0, 20.0])


def test_n_mpjpe_hand_computed_scale():
    pred = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, 9.0, 9.0]]])
    target = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [float("nan")] * 3]])
    valid = torch.tensor([[True, True, False]])
    # s = <p,g> / <p,p> = 3 / 2; s*p = (1.5, 0, 0), (0, 1.5, 0): errors 1.5 and sqrt(1.5^2 + 1)
    expected = (1.5 + math.sqrt(3.25)) / 2
    assert n_mpjpe(pred, target, valid).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(align_scale(pred, target, valid)[0, 2], torch.full((3,), 13.5))


def test_n_mpjpe_undoes_a_pure_scale():
    target = random_hand(2)
    assert n_mpjpe(target * 0.7, target).item() == pytest.approx(0.0, abs=1e-9)
    assert mpjpe(target * 0.7, target).item() > 10.0


def test_pa_mpjpe_zero_for_similarity_copy():
    target = random_hand(3)
    rotation = axis_angle_to_matrix(
        torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, 0.0], [0.0, 0.0, 3.0]]).double()
    )
    pred = 1.7 * target @ rotation.transpose(-1, -2) + torch.tensor([10.0, -40.0, 200.0], dtype=torch.float64)
    assert pa_mpjpe(pred, target).item() == pytest.approx(0.0, abs=1e-8)
    assert mpjpe(pred, target).item() > 50.0


def test_pa_mpjpe_float32_similarity_copy():
    target = random_hand(4, dtype=torch.float32)
    rotation = axis_angle_to_matrix(torch.tensor([0.5, 0.5, -0.5]))
    pred = 0.8 * target @ rotation.T + 30.0
    assert pa_mpjpe(pred, target).item() < 1e-3


def test_pa_mpjpe_positive_for_non_rigid_change():
    target = random_hand(1)
    pred = target.clone()
    pred[0, 8] += torch.tensor([0.0, 30.0, 0.0], dtype=torch.float64)
    error = pa_mpjpe(pred, target).item()
    assert 0.5 < error < 30.0


def test_pa_mpjpe_rejects_reflections():
    target = random_hand(2)
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert pa_mpjpe(mirrored, target).item() > 5.0


def test_pa_mpjpe_fit_uses_valid_joints_only():
    target = random_hand(1)
    rotation = axis_angle_to_matrix(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    pred = 2.0 * target @ rotation.T + 5.0
    pred[0, 20] += 1000.0  # an outlier at an invalid joint must not disturb the fit
    valid = torch.ones(1, 21, dtype=torch.bool)
    valid[0, 20] = False
    target[0, 20] = float("nan")
    assert pa_mpjpe(pred, target, valid).item() == pytest.approx(0.0, abs=1e-8)
    assert torch.allclose(align_procrustes(pred, target, valid)[0, :20], target[0, :20], atol=1e-8)


def test_pa_mpjpe_leaves_out_samples_with_too_few_joints():
    target = random_hand(2)
    pred = target.clone()
    pred[0] += torch.randn(21, 3, dtype=torch.float64) * 5.0
    pred[1] += torch.randn(21, 3, dtype=torch.float64) * 5.0
    valid = torch.ones(2, 21, dtype=torch.bool)
    valid[1, 2:] = False  # two points: an exact fit, must not count as zero error
    assert pa_mpjpe(pred, target, valid).item() == pytest.approx(pa_mpjpe(pred[:1], target[:1]).item())


def test_nan_prediction_gives_nan_not_a_crash():
    target = random_hand(2)
    pred = target.clone()
    pred[0, 3] = float("nan")
    assert math.isnan(pa_mpjpe(pred, target).item())
    assert math.isnan(mpjpe(pred, target).item())


def test_input_errors_are_clear():
    pose = random_hand(1)
    with pytest.raises(ValueError, match=r"\(B, J, D\)"):
        mpjpe(pose[0], pose[0])
    with pytest.raises(ValueError, match="valid must be"):
        mpjpe(pose, pose, torch.ones(1, 20, dtype=torch.bool))
    broken = pose.clone()
    broken[0, 4, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf at joints marked valid"):
        mpjpe(pose, broken)


def test_align_root_and_scale():
    target = random_hand(1)
    pred = 3.0 * (target - target[:, :1]) + 100.0
    aligned_pred, aligned_target = align_root_and_scale(pred, target, root=0, ref_bone=(9, 10))
    assert torch.allclose(aligned_target, target - target[:, :1])
    assert torch.allclose(aligned_pred, aligned_target, atol=1e-9)
    assert torch.allclose(align_root(target, 5)[:, 5], torch.zeros(1, 3, dtype=torch.float64))


def test_align_centroid_and_scale_hand_computed():
    target = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [float("nan")] * 3]])
    pred = torch.tensor([[[10.0, 0.0, 0.0], [11.0, 0.0, 0.0], [50.0, 0.0, 0.0]]])
    valid = torch.tensor([[True, True, False]])
    # centroids 10.5 and 1, spreads 0.5 and 1: x -> (x - 10.5) * 2 + 1
    aligned = align_centroid_and_scale(pred, target, valid)
    assert torch.allclose(aligned[0, :, 0], torch.tensor([0.0, 2.0, 80.0]))


def test_metric_classes_match_functional(two_sample_case):
    pred, target, valid = two_sample_case
    pred = pred + torch.randn_like(pred) * 3.0
    for metric, function in ((MPJPE(), mpjpe), (NMPJPE(), n_mpjpe), (PAMPJPE(), pa_mpjpe)):
        metric.update(pred, target, valid)
        assert metric.compute().item() == pytest.approx(function(pred, target, valid).item(), rel=1e-5)
    pck = PCK(low=20.0, high=50.0, steps=4)
    pck.update(pred, target, valid)
    result = pck.compute()
    assert torch.allclose(result["curve"].double(), pck_curve(pred, target, [20.0, 30.0, 40.0, 50.0], valid))
    assert result["auc"].item() == pytest.approx(pck_auc(pred, target, 20.0, 50.0, 4, valid).item(), rel=1e-6)
    assert torch.allclose(result["thresholds"], torch.tensor([20.0, 30.0, 40.0, 50.0]))


@pytest.mark.parametrize("metric_class", [MPJPE, NMPJPE, PAMPJPE, PCKAUC])
def test_chunked_updates_merge_exactly(metric_class):
    target = random_hand(10)
    pred = target + torch.randn(10, 21, 3, dtype=torch.float64) * 15.0
    valid = torch.rand(10, 21) > 0.3
    whole = metric_class()
    whole.update(pred, target, valid)
    first, second = metric_class(), metric_class()
    first.update(pred[:3], target[:3], valid[:3])
    second.update(pred[3:], target[3:], valid[3:])
    first.merge_state(second)
    assert first.compute().item() == pytest.approx(whole.compute().item(), rel=1e-9)
    # What DDP's sum all-reduce does: add the states.
    summed = metric_class()
    a, b = metric_class(), metric_class()
    a.update(pred[:6], target[:6], valid[:6])
    b.update(pred[6:], target[6:], valid[6:])
    for name in summed._defaults:
        setattr(summed, name, getattr(a, name) + getattr(b, name))
    summed._update_count = 1
    assert summed.compute().item() == pytest.approx(whole.compute().item(), rel=1e-9)


def test_pck_states_are_fixed_size_sums():
    pck = PCK(steps=7)
    assert pck.hits.shape == (21, 7) and pck.counts.shape == (21,)
    assert all(pck._reductions[name].__name__ == "dim_zero_sum" for name in ("hits", "counts"))
    pck.update(random_hand(5), random_hand(5))
    assert pck.hits.shape == (21, 7)


def test_pck_with_protocol_refuses_grid_arguments():
    with pytest.raises(ValueError, match="through it"):
        PCK(steps=10, protocol="stb")
    assert PCK(protocol="dexter_object").hits.shape == (5, 15)


def test_pose_metrics_collection():
    target = random_hand(4)
    pred = target + torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)  # 3 mm translation
    metrics = PoseMetrics("synthhands", prefix="val/")
    metrics.update(pred, target)
    result = metrics.compute()
    assert set(result) == {"val/mpjpe", "val/n_mpjpe", "val/pa_mpjpe", "val/auc"}
    # synthhands is wrist-relative: a pure translation vanishes.
    assert result["val/mpjpe"].item() == pytest.approx(0.0, abs=1e-5)
    assert result["val/auc"].item() == pytest.approx(1.0)
    unaligned = MPJPE()
    unaligned.update(pred, target)
    assert unaligned.compute().item() == pytest.approx(3.0, rel=1e-6)


def test_pose_metrics_members_stay_separate_after_identical_first_batch():
    target = random_hand(2)
    metrics = PoseMetrics("synthhands")
    metrics.update(target.clone(), target)  # every member sees zero error
    pred = target.clone()
    pred[:, 5:] *= 1.3
    metrics.update(pred, target)
    result = metrics.compute()
    assert result["mpjpe"].item() > result["pa_mpjpe"].item() > 0.0


def test_masked_mean_is_the_one_weighted_mean():
    from handssl.metrics.functional import masked_mean

    values = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(values, mask).item() == pytest.approx(1.5)  # NaN at a masked entry never counts
    per_row = masked_mean(values, mask, dim=-1)
    assert per_row[0].item() == pytest.approx(1.5) and per_row[1].item() == 0.0  # empty: 0 by default
    assert math.isnan(masked_mean(values, mask, dim=-1, empty=float("nan"))[1].item())
    per_row.sum().backward()
    assert torch.isfinite(values.grad).all() and values.grad[1].eq(0).all()
    # A joint mask broadcast over coordinates averages over joints and coordinates; weights need not be 0/1.
    coords = torch.arange(12.0).view(2, 2, 3)
    assert masked_mean(coords, torch.tensor([[True, False], [False, False]])[..., None]).item() == 1.0
    assert masked_mean(torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75])).item() == pytest.approx(2.5)
