import math

import pytest
import torch

from handssl import biomech as B
from handssl import kinematics as K
from handssl.geometry import axis_angle_to_matrix
from handssl.skeleton import BONES

INDEX_PIP = BONES.index((6, 7))  # rotation at the index PIP (flexion-only hinge)
MIDDLE_MCP = BONES.index((9, 10))  # rotation at the middle MCP
MIDDLE_PIP = BONES.index((10, 11))
MIDDLE_PROXIMAL = BONES.index((9, 10))  # the middle proximal phalanx (the reference bone)


def feasible_poses(batch, dtype=torch.float64):
    limits = K.limits_tensor(dtype)
    angles = limits[..., 0] + (limits[..., 1] - limits[..., 0]) * torch.rand(batch, 20, 3, dtype=dtype)
    scale = 0.85 + 0.3 * torch.rand(batch, 1, dtype=dtype)  # hand size, then per-bone proportions
    lengths = K.template_bone_lengths(dtype) * scale * (0.93 + 0.14 * torch.rand(batch, 20, dtype=dtype))
    rot = axis_angle_to_matrix(torch.randn(batch, 3, dtype=dtype))
    root = 80 * torch.randn(batch, 3, dtype=dtype)
    return K.forward_kinematics(angles, lengths, rot, root), angles, lengths


def posed(**rows):
    """Template hand with some angle rows set (degrees)."""
    angles = torch.zeros(20, 3, dtype=torch.float64)
    for row, value in rows.items():
        angles[int(row[1:])] = torch.tensor(value, dtype=torch.float64).deg2rad()
    return K.forward_kinematics(angles, K.template_bone_lengths(torch.float64))


def test_measurements_match_the_model():
    joints, angles, lengths = feasible_poses(16)
    torch.testing.assert_close(B.bone_lengths(joints), lengths)
    assert (B.joint_angles(joints) - angles).abs().max() < 1e-6


def test_feasible_poses_are_untouched():
    joints, _, _ = feasible_poses(256)
    assert B.is_feasible(joints).all()
    found = B.violations(joints)
    assert found.angles_rad.max() < 1e-8 and found.bone_lengths_mm.max() == 0
    for reaim in (True, False):
        assert (B.correct(joints, reaim=reaim) - joints).abs().max() < 1e-6
    # float32 too, within 1e-3 mm.
    joints32 = joints.float()
    assert (B.correct(joints32) - joints32).abs().max() < 1e-3


def test_finger_bent_backwards_is_fixed():
    joints = posed(r6=(-60.0, 0.0, 0.0))  # index PIP hyper-extended by 60° (limit: 10°)
    assert not B.is_feasible(joints)
    found = B.violations(joints)
    torch.testing.assert_close(found.angles_rad[INDEX_PIP, 0], torch.tensor(math.radians(50.0)).double())
    others = found.angles_rad.clone()
    others[INDEX_PIP, 0] = 0
    assert others.max() < 1e-9
    fixed = B.correct(joints)
    assert B.is_feasible(fixed)
    torch.testing.assert_close(
        B.joint_angles(fixed)[INDEX_PIP, 0], torch.tensor(math.radians(-10.0)).double()
    )
    # Everything else stays where it was: palm, other fingers, the index up to its PIP.
    untouched = [i for i in range(21) if i not in (7, 8)]
    assert (fixed[untouched] - joints[untouched]).abs().max() < 1e-6


def test_stretched_bone_is_shortened():
    lengths = K.template_bone_lengths(torch.float64)
    stretched = lengths.clone()
    stretched[MIDDLE_PROXIMAL] *= 1.6
    joints = K.forward_kinematics(torch.zeros(20, 3, dtype=torch.float64), stretched)
    high = K.bone_length_range_tensor(torch.float64)[MIDDLE_PROXIMAL, 1]
    found = B.violations(joints)
    torch.testing.assert_close(found.bone_lengths_mm[MIDDLE_PROXIMAL], 1.6 * 45.0 - high)
    assert not B.is_feasible(joints)
    fixed = B.correct(joints)
    assert B.is_feasible(fixed)
    torch.testing.assert_close(B.bone_lengths(fixed)[MIDDLE_PROXIMAL], high)
    # With a template, every bone takes the template's length.
    fixed = B.correct(joints, template=lengths)
    torch.testing.assert_close(B.bone_lengths(fixed), lengths)


def test_twisted_finger_is_untwisted_to_the_limit():
    joints = posed(r9=(20.0, 0.0, 50.0), r10=(60.0, 0.0, 0.0))  # middle MCP twisted 50° (limit 20°)
    found = B.violations(joints)
    torch.testing.assert_close(found.angles_rad[MIDDLE_MCP, 2], torch.tensor(math.radians(30.0)).double())
    fixed = B.correct(joints)
    assert B.is_feasible(fixed)
    angles = B.joint_angles(fixed)
    torch.testing.assert_close(angles[MIDDLE_MCP, 2], torch.tensor(math.radians(20.0)).double())
    # Re-aimed at the input DIP, the 60° bend seen in a plane turned 30° away projects to
    # atan(tan 60° cos 30°) = atan(1.5); keeping the input's angles instead leaves it at 60°.
    torch.testing.assert_close(angles[MIDDLE_PIP, 0], torch.tensor(math.atan(1.5)).double())
    kept = B.joint_angles(B.correct(joints, reaim=False))
    torch.testing.assert_close(kept[MIDDLE_MCP, 2], torch.tensor(math.radians(20.0)).double())
    torch.testing.assert_close(kept[MIDDLE_PIP, 0], torch.tensor(math.radians(60.0)).double())


def test_non_planar_finger_is_planarised():
    # The middle DIP bends 15° sideways out of the PIP's flexion plane: hinges cannot do that. (A sideways
    # bend of the PIP alone would read as a twist of the whole finger at the MCP.)
    joints = posed(r10=(40.0, 0.0, 0.0), r11=(30.0, 15.0, 0.0))
    sideways = B.violations(joints).angles_rad[[MIDDLE_PIP, MIDDLE_PIP + 1], 1]
    assert (sideways > math.radians(3)).all() and sideways.sum() > math.radians(15)
    fixed = B.correct(joints)
    assert B.is_feasible(fixed)
    # The finger's four joints are coplanar again.
    finger = fixed[9:13] - fixed[9]
    assert torch.linalg.svdvals(finger)[-1] < 1e-6


def test_correct_is_idempotent_and_feasible_on_noisy_poses():
    joints, _, lengths = feasible_poses(512)
    noisy = joints + 8 * torch.randn_like(joints)
    assert not B.is_feasible(noisy).any()
    for template in (None, lengths, K.rest_pose(dtype=torch.float64)):
        once = B.correct(noisy, template)
        assert B.is_feasible(once, tol_deg=1e-3, tol_mm=1e-6).all()
        assert (B.correct(once, template) - once).abs().max() < 1e-6
    # float32, batched with extra leading dims
    once = B.correct(noisy.float().reshape(8, 64, 21, 3))
    assert once.shape == (8, 64, 21, 3) and once.dtype == torch.float32
    assert (B.correct(once) - once).abs().max() < 2e-3


def test_correct_moves_noisy_poses_towards_the_truth_with_the_true_template():
    joints, _, lengths = feasible_poses(512)
    noisy = joints + 3 * torch.randn_like(joints)
    error = (noisy - joints).norm(dim=-1).mean()
    corrected_error = (B.correct(noisy, lengths) - joints).norm(dim=-1).mean()
    assert corrected_error < error


def test_batched_correct_equals_per_item():
    joints, _, _ = feasible_poses(6)
    noisy = (joints + 10 * torch.randn_like(joints)).reshape(2, 3, 21, 3)
    together = B.correct(noisy)
    assert together.shape == (2, 3, 21, 3)
    torch.testing.assert_close(together[1, 2], B.correct(noisy[1, 2]))
    # One template broadcast over the batch.
    template = K.template_bone_lengths(torch.float64)
    torch.testing.assert_close(B.bone_lengths(B.correct(noisy, template)), template.expand(2, 3, 20))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="template must be"):
        B.correct(K.rest_pose(), template=torch.ones(19))
    with pytest.raises(ValueError, match="joints must have shape"):
        B.correct(torch.zeros(20, 3))
    with pytest.raises(ValueError, match="reduction"):
        B.bone_length_loss(K.rest_pose(), reduction="max")
    with pytest.raises(ValueError, match="tolerances"):
        B.is_feasible(K.rest_pose(), tol_deg=-1)


def test_feasibility_tolerance():
    joints = posed(r6=(-10.3, 0.0, 0.0))  # 0.3° past the index PIP's extension limit
    assert B.is_feasible(joints, tol_deg=0.5)
    assert not B.is_feasible(joints, tol_deg=0.1)


def test_hinge_losses_have_hand_computed_values():
    joints = posed(r6=(-60.0, 0.0, 0.0))
    torch.testing.assert_close(
        B.joint_angle_loss(joints, reduction="sum", tolerance_rad=0.0),
        torch.tensor(math.radians(50.0)).double(),
    )
    assert B.joint_angle_loss(joints, reduction="none").shape == (20, 3)
    expected_mean = (math.radians(50.0) - 1e-4) / 60  # default tolerance: 1e-4 rad
    torch.testing.assert_close(B.joint_angle_loss(joints), torch.tensor(expected_mean).double())
    lengths = K.template_bone_lengths(torch.float64)
    stretched = lengths.clone()
    stretched[MIDDLE_PROXIMAL] *= 1.6
    long = K.forward_kinematics(torch.zeros(20, 3, dtype=torch.float64), stretched)
    high = K.bone_length_range_tensor(torch.float64)[MIDDLE_PROXIMAL, 1]
    torch.testing.assert_close(B.bone_length_loss(long, reduction="sum"), 1.6 * 45.0 - high)
    # Relative lengths: the reference bone is stretched, so every other bone looks too short or fine,
    # and the loss does not depend on the scale of the pose.
    relative = B.bone_length_loss(long, relative=True)
    torch.testing.assert_close(B.bone_length_loss(long / 1000, relative=True), relative)


def test_losses_are_zero_with_zero_gradient_inside_limits():
    joints, _, _ = feasible_poses(32)
    joints = joints.clone().requires_grad_(True)
    loss = B.joint_angle_loss(joints) + B.bone_length_loss(joints) + B.bone_length_loss(joints, relative=True)
    assert loss.item() == 0
    loss.backward()
    assert joints.grad.abs().max() == 0


def test_gradients_flow_and_reduce_the_losses():
    joints, _, _ = feasible_poses(32)
    noisy = (joints + 10 * torch.randn_like(joints)).float().requires_grad_(True)
    loss = B.joint_angle_loss(noisy) + 0.01 * B.bone_length_loss(noisy)
    assert loss > 0
    loss.backward()
    grad = noisy.grad
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    # A small gradient step lowers the loss.
    with torch.no_grad():
        stepped = noisy - 20.0 * grad
        after = B.joint_angle_loss(stepped) + 0.01 * B.bone_length_loss(stepped)
    assert after < loss
