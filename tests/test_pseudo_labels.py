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
    # Every view of every sample in one batched call, then the label and its mirror, then r = P(p_hat).
    assert calls == [(6, J, 3), (3, J, 3), (3, J, 3)]
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


def test_pseudo_label_errors_with_the_protocol_lifting():
    """A right 2.5D label lifted with a wrong root depth and scale: wrong as lifted, exact with the known ones."""
    joints, K, uv, depth, root_depth, scale = _pose(2)
    labels = PseudoLabeler(use_correction=False)(
        uv.unsqueeze(1), depth.unsqueeze(1), K, root_depth * 1.3, scale * 0.8
    )
    errors = pseudo_label_errors(labels, joints, torch.ones(2, J, dtype=torch.bool), K=K)
    assert (errors["error_raw"] > 5).all() and (errors["error_final"] > 5).all()
    assert errors["error_raw_known"].max().item() < 1e-2 and errors["error_final_known"].max().item() < 1e-2
    assert set(pseudo_label_errors(labels, joints, torch.ones(2, J, dtype=torch.bool))) == {
        "error_final",
        "error_raw",
    }


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


def test_gate_by_quantile_keeps_the_most_confident_fraction():
    cost = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 2.0])
    assert gate(cost, accept_fraction=0.5).tolist() == [False, True, True, True, False, False]
    assert not gate(cost, accept_fraction=0.0).any() and gate(cost, accept_fraction=1.0).all()
    eligible = torch.tensor([True, False, True, True, True, True])  # the best one is refused
    assert gate(cost, accept_fraction=0.5, eligible=eligible).tolist() == [
        False,
        False,
        True,
        True,
        True,
        False,
    ]
    assert gate(cost, threshold=0.5).tolist() == [False, True, True, True, False, False]
    with pytest.raises(ValueError, match="accept_fraction"):
        gate(cost, accept_fraction=1.5)


def _hands(n=32, seed=0):
    """Feasible SynthHands poses (8 subjects) 450 mm in front of a 64-px camera, with their bone lengths."""
    from handssl.biomech import bone_lengths
    from handssl.data.synthhands.motion import make_subject, sequence_joints

    poses = [
        sequence_joints(seed, make_subject(seed, i), 0, list(range(0, 64, 64 * 8 // n))) for i in range(8)
    ]
    joints = torch.cat(poses)[:n].double()
    joints = joints - joints[:, 9:10] + torch.tensor([0.0, 0.0, 450.0], dtype=torch.float64)
    K = torch.tensor([[120.0, 0.0, 31.5], [0.0, 120.0, 31.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    K = K.expand(n, 3, 3).clone()
    return joints, K, bone_lengths(joints)


def _error(joints, truth):
    return ((joints - joints[:, 9:10]) - (truth - truth[:, 9:10])).norm(dim=-1).mean().item()


def test_ray_constrained_correction_keeps_confident_2d_and_beats_3d_correction():
    from handssl.biomech import correct

    joints, K, subject = _hands()
    uv = project(joints, K)
    depth, root_depth, scale = encode_25d(joints)
    g = torch.Generator().manual_seed(3)
    noisy = depth + 0.1 * torch.randn(depth.shape, generator=g, dtype=depth.dtype)  # ~4 mm, exact 2D
    views = lambda x: x.unsqueeze(1).repeat(1, 2, *([1] * (x.ndim - 1)))  # noqa: E731
    common = dict(corrector=correct, accept_fraction=1.0, uv_unit_px=1.0)
    raw = PseudoLabeler(use_correction=False)(views(uv), views(noisy), K, root_depth, scale)
    full3d = PseudoLabeler(**common)(views(uv), views(noisy), K, root_depth, scale, subject)
    on_rays = PseudoLabeler(**common, ray_tol_px=0.5)(views(uv), views(noisy), K, root_depth, scale, subject)
    assert torch.allclose(on_rays.uv, uv, atol=1e-6) and torch.allclose(on_rays.uv_registered, uv, atol=1e-6)
    assert not torch.allclose(full3d.uv, uv, atol=0.05)  # 3D correction moves exact 2D
    e_raw, e_3d, e_ray = (_error(x.joints3d, joints) for x in (raw, full3d, on_rays))
    assert e_ray < e_3d and e_ray < 0.9 * e_raw


def test_template_correction_lowers_error_of_noisy_poses():
    from handssl.biomech import correct
    from handssl.models.components.hand_template import BoneLengthTemplate

    joints, K, subject = _hands()
    uv = project(joints, K)
    depth, root_depth, scale = encode_25d(joints)
    g = torch.Generator().manual_seed(4)
    uv_n = uv + 2.0 * torch.randn(uv.shape, generator=g, dtype=uv.dtype)
    d_n = depth + 0.3 * torch.randn(depth.shape, generator=g, dtype=depth.dtype)
    noisy = lift_25d_(uv_n, d_n, K, root_depth, scale)
    mean = BoneLengthTemplate().double().scaled(scale)
    e_noisy = _error(noisy, joints)
    e_none, e_mean, e_subject = (_error(correct(noisy, t), joints) for t in (None, mean, subject))
    assert e_subject < e_mean < e_none < e_noisy
    assert e_mean < 0.85 * e_noisy  # the default (scaled mean) template: >= 15 % better


def lift_25d_(uv, depth, K, root_depth, scale):
    from handssl.models.components.pose25d import lift_25d

    return lift_25d(uv, depth, K, root_depth, scale)


def test_depth_mirrored_poses_are_refused():
    from handssl.biomech import correct

    joints, K, subject = _hands()
    uv = project(joints, K)
    depth, root_depth, scale = encode_25d(joints)
    g = torch.Generator().manual_seed(5)
    d_n = depth + 0.1 * torch.randn(depth.shape, generator=g, dtype=depth.dtype)
    labeler = PseudoLabeler(corrector=correct, accept_fraction=1.0, mirror_check=True, max_correction_mm=40.0)
    good = labeler(uv[:, None], d_n[:, None], K, root_depth, scale, subject)
    mirrored = labeler(uv[:, None], -d_n[:, None], K, root_depth, scale, subject)
    assert good.refused.float().mean() <= 0.1 and mirrored.refused.float().mean() >= 0.9
    assert not (mirrored.accepted & mirrored.refused).any()  # refused labels never pass the gate
    assert (good.implausibility_mm < mirrored.implausibility_mm).float().mean() >= 0.9
