import math

import pytest
import torch

from handssl.data.augment import transform_points
from handssl.geometry import project
from handssl.models.components.pose25d import encode_25d
from handssl.models.components.pseudo_labels import (
    PseudoLabeler,
    PseudoLabels,
    gate,
    map_back,
    pseudo_label_errors,
    pseudo_label_loss,
    spread,
)

J = 21
K1 = torch.tensor([[100.0, 0.0, 31.5], [0.0, 100.0, 31.5], [0.0, 0.0, 1.0]])


def _pose(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    joints = torch.randn(batch, J, 3, generator=g) * 25 + torch.tensor([0.0, 0.0, 400.0])
    K = K1.expand(batch, 3, 3).clone()
    uv = project(joints, K)
    depth, root_depth, scale = encode_25d(joints)
    return joints, K, uv, depth, root_depth, scale


def test_map_back_inverts_the_perturbation():
    uv = torch.rand(2, 3, J, 2) * 64
    angle = torch.tensor(0.3)
    rot = torch.tensor([[angle.cos(), -angle.sin(), 4.0], [angle.sin(), angle.cos(), -2.0], [0.0, 0.0, 1.0]])
    matrices = torch.stack([torch.eye(3), rot, rot.inverse()]).expand(2, 3, 3, 3)
    perturbed = transform_points(uv, matrices)
    assert torch.allclose(map_back(perturbed, matrices), uv, atol=1e-4)


def test_gating_drops_exactly_the_samples_above_threshold():
    # Views: the base pose, base + a and base - a pixels in x for every joint, depths equal. The mean is the
    # base pose and C = (0 + a^2 + a^2) / 3 in uv units; choose a per sample for C = 0.5, 1.4, 1.6, 3.0.
    _, K, uv, depth, root_depth, scale = _pose(4)
    wanted = torch.tensor([0.5, 1.4, 1.6, 3.0])
    a = (1.5 * wanted).sqrt()
    offset = torch.zeros(4, 3, 1, 2)
    offset[:, 1, 0, 0] = a
    offset[:, 2, 0, 0] = -a
    uv_views = uv.unsqueeze(1) + offset
    depth_views = depth.unsqueeze(1).expand(4, 3, J)
    labeler = PseudoLabeler(corrector=None, use_correction=False, threshold=1.5, uv_unit_px=1.0)
    labels = labeler(uv_views, depth_views, K, root_depth, scale)
    assert torch.allclose(labels.spread, wanted, atol=1e-4)
    assert torch.allclose(labels.confidence, torch.exp(-wanted), atol=1e-4)
    assert labels.accepted.tolist() == [True, True, False, False]
    assert torch.allclose(labels.uv, uv, atol=1e-4)
    # tau = inf keeps everything, tau = 0 drops everything with any spread.
    assert gate(labels.spread, math.inf).all()
    assert not gate(labels.spread, 0.0).any()
    # The uv unit rescales C: with 2-px units C is a quarter.
    labeler.uv_unit_px = 2.0
    assert torch.allclose(labeler(uv_views, depth_views, K, root_depth, scale).spread, wanted / 4, atol=1e-4)


def test_depth_spread_weighted_by_lambda_d():
    _, K, uv, depth, root_depth, scale = _pose(1)
    depth_views = depth.unsqueeze(1).repeat(1, 2, 1)
    depth_views[:, 1, 3] += 0.2  # one joint of one view differs by 0.2 bone units
    uv_views = uv.unsqueeze(1).repeat(1, 2, 1, 1)
    labels = PseudoLabeler(use_correction=False, depth_weight=50.0)(
        uv_views, depth_views, K, root_depth, scale
    )
    # Mean differs by 0.1 from each view at that joint: per-view distance 50 * 0.01 / 21, averaged over views.
    assert labels.spread.item() == pytest.approx(50 * 0.01 / J, rel=1e-4)


def test_correction_enters_average_and_spread():
    joints, K, uv, depth, root_depth, scale = _pose(3, seed=1)
    shift = torch.tensor([10.0, 0.0, 0.0])
    calls = []

    def corrector(x):
        calls.append(x.shape)
        return x + shift

    uv_views = uv.unsqueeze(1).repeat(1, 2, 1, 1)  # two identical views: no spread before correction
    depth_views = depth.unsqueeze(1).repeat(1, 2, 1)
    labeler = PseudoLabeler(corrector=corrector, threshold=1.5, uv_unit_px=1.0)
    labels = labeler(uv_views, depth_views, K, root_depth, scale)
    assert calls == [(6, J, 3)]  # every view of every sample corrected in one batched call
    # Corrected views are the pose moved 10 mm in x; the pseudo-label is half way: 5 mm in 3D.
    assert torch.allclose(labels.joints3d, joints + shift / 2, atol=1e-2)
    assert torch.allclose(labels.joints3d_raw, joints, atol=1e-2)
    assert torch.allclose(labels.correction_shift_mm, torch.full((3,), 5.0), atol=1e-2)
    assert labels.changed.all()
    # Spread: half the members at uv, half at uv + delta -> C = mean |delta / 2|^2.
    delta = project(joints + shift, K) - uv
    expected = (delta / 2).pow(2).sum(-1).mean(-1)
    assert torch.allclose(labels.spread, expected, rtol=1e-3)
    assert torch.equal(labels.accepted, expected <= 1.5)
    # An identity corrector changes nothing.
    same = PseudoLabeler(corrector=lambda x: x)(uv_views, depth_views, K, root_depth, scale)
    assert not same.changed.any() and torch.allclose(same.uv, uv, atol=1e-3)


def test_pseudo_label_errors_hand_computed():
    _joints, K, uv, depth, root_depth, scale = _pose(2)
    labels = PseudoLabeler(use_correction=False)(uv.unsqueeze(1), depth.unsqueeze(1), K, root_depth, scale)
    target = labels.joints3d.clone()
    target[0, 5] += torch.tensor([0.0, 21.0, 0.0])  # one joint of sample 0 off by 21 mm -> mean 1 mm
    valid = torch.ones(2, J, dtype=torch.bool)
    valid[1, 0] = False  # sample 1 has no root: NaN
    errors = pseudo_label_errors(labels, target, valid)
    assert errors["error_final"][0].item() == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(errors["error_final"][1].item())


def test_spread_and_labels_helpers():
    uv_views = torch.zeros(1, 2, J, 2)
    uv_views[0, 1] = 2.0
    d = torch.zeros(1, 2, J)
    assert spread(uv_views, d, uv_views.mean(1), d.mean(1)).item() == pytest.approx(2.0)
    _, K, uv, depth, root_depth, scale = _pose(2)
    labels = PseudoLabeler(use_correction=False)(uv.unsqueeze(1), depth.unsqueeze(1), K, root_depth, scale)
    both = PseudoLabels.cat([labels, labels.detach()])
    assert both.uv.shape == (4, J, 2) and set(both.to_dict()) >= {
        "spread",
        "confidence",
        "accepted",
        "changed",
    }


def test_bad_arguments():
    with pytest.raises(ValueError, match="corrector"):
        PseudoLabeler(corrector=None, use_correction=True)
    with pytest.raises(ValueError, match="threshold"):
        PseudoLabeler(use_correction=False, threshold=-1.0)
    labeler = PseudoLabeler(use_correction=False)
    with pytest.raises(ValueError, match=r"\(B, V, J, 2\)"):
        labeler(torch.zeros(2, J, 2), torch.zeros(2, J), K1.expand(2, 3, 3), torch.ones(2), torch.ones(2))


def test_pseudo_label_loss_follows_the_transform_and_the_gate():
    label_uv = torch.rand(2, J, 2) * 30 + 15
    label_depth = torch.randn(2, J)
    label_depth[:, 9] = 0.0
    angle = 0.3
    m = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 3.0], [math.sin(angle), math.cos(angle), 1.0], [0, 0, 1.0]]
    )
    matrices = m.expand(2, 3, 3)
    pred_uv = transform_points(label_uv, matrices).clone()
    pred_depth = label_depth + 0.7  # an offset of the whole pose in depth is no error (relative depth)
    pred_uv[1] += torch.tensor([3.0, 4.0])  # sample 1: 25 px^2 off at every joint
    both = torch.tensor([True, True])
    loss = pseudo_label_loss(pred_uv, pred_depth, label_uv, label_depth, matrices, both, image_size=64)
    assert loss.item() == pytest.approx(25.0 / 2, rel=1e-4)  # mean over the batch of (0, 25)
    gated = pseudo_label_loss(
        pred_uv, pred_depth, label_uv, label_depth, matrices, torch.tensor([True, False]), 64
    )
    assert gated.item() == pytest.approx(0.0, abs=1e-6)
