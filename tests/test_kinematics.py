import math

import pytest
import torch

from handssl import kinematics as K
from handssl.geometry import axis_angle_to_matrix
from handssl.skeleton import BONES, FINGERS, JOINT_NAMES, REFERENCE_BONE


def random_in_limits(batch, dtype=torch.float64, generator=None):
    limits = K.limits_tensor(dtype)
    u = torch.rand(batch, 20, 3, dtype=dtype, generator=generator)
    return limits[..., 0] + (limits[..., 1] - limits[..., 0]) * u


def random_lengths(batch, dtype=torch.float64):
    return K.template_bone_lengths(dtype) * (0.8 + 0.4 * torch.rand(batch, 20, dtype=dtype))


def random_rotations(batch, dtype=torch.float64):
    return axis_angle_to_matrix(torch.randn(batch, 3, dtype=dtype))


def test_bone_rotation_matches_composition_of_elementary_rotations():
    f, a, t = torch.randn(3, 50, dtype=torch.float64)
    ex, ez, ey = torch.eye(3, dtype=torch.float64)[[0, 2, 1]]
    expected = (
        axis_angle_to_matrix(f[:, None] * ex)
        @ axis_angle_to_matrix(-a[:, None] * ez)
        @ axis_angle_to_matrix(t[:, None] * ey)
    )
    torch.testing.assert_close(K.bone_rotation(f, a, t), expected)


def test_zero_angles_give_rest_pose_with_template_lengths():
    lengths = K.template_bone_lengths(torch.float64)
    joints = K.forward_kinematics(torch.zeros(20, 3, dtype=torch.float64), lengths)
    torch.testing.assert_close(joints, K.rest_pose(dtype=torch.float64))
    torch.testing.assert_close(K.bone_lengths_of(joints), lengths)
    # Hand frame of the rest pose is the identity: wrist at the origin, middle MCP on +y, index MCP in z=0.
    assert joints[0].abs().max() == 0
    torch.testing.assert_close(joints[9], torch.tensor([0.0, 80.0, 0.0], dtype=torch.float64))
    assert joints[5, 2].abs() < 1e-12 and joints[5, 0] > 0  # index on the radial (+x) side
    torch.testing.assert_close(K.hand_frame(joints), torch.eye(3, dtype=torch.float64))
    # Middle finger straight along +y: 80 + 45 + 28 + 23 mm.
    torch.testing.assert_close(joints[12], torch.tensor([0.0, 176.0, 0.0], dtype=torch.float64))


def test_flexion_bends_finger_towards_palm_and_abduction_towards_thumb():
    lengths = K.template_bone_lengths(torch.float64)
    angles = torch.zeros(20, 3, dtype=torch.float64)
    middle_mcp_row = BONES.index((9, 10))
    angles[middle_mcp_row, 0] = math.pi / 2  # 90° MCP flexion of the middle finger
    joints = K.forward_kinematics(angles, lengths)
    # Hand-computed: the whole finger (45 + 28 + 23 mm) now points along +z (palmar) from the MCP.
    torch.testing.assert_close(joints[12], torch.tensor([0.0, 80.0, 96.0], dtype=torch.float64))
    angles.zero_()
    angles[middle_mcp_row, 1] = math.radians(30)
    joints = K.forward_kinematics(angles, lengths)
    expected_pip = torch.tensor([45 * math.sin(math.radians(30)), 80 + 45 * math.cos(math.radians(30)), 0.0])
    torch.testing.assert_close(joints[10], expected_pip.double())
    # PIP flexion of the index finger: the tip goes palmar (z > 0), the MCP and PIP stay put.
    angles.zero_()
    angles[BONES.index((6, 7)), 0] = math.radians(60)
    bent = K.forward_kinematics(angles, lengths)
    rest = K.rest_pose(dtype=torch.float64)
    torch.testing.assert_close(bent[:7], rest[:7])
    assert bent[8, 2] > 20 and bent[7, 2] > 15


def test_twist_turns_the_flexion_plane_of_the_later_bones():
    lengths = K.template_bone_lengths(torch.float64)
    angles = torch.zeros(20, 3, dtype=torch.float64)
    mcp, pip = BONES.index((9, 10)), BONES.index((10, 11))
    angles[pip, 0] = math.pi / 2
    straight_twist = angles.clone()
    straight_twist[mcp, 2] = 0.3
    # Twist alone (straight finger beyond) moves nothing.
    torch.testing.assert_close(
        K.forward_kinematics(angles.clone().index_fill_(0, torch.tensor([pip]), 0.0), lengths),
        K.forward_kinematics(straight_twist.index_fill_(0, torch.tensor([pip]), 0.0), lengths),
    )
    angles[mcp, 2] = math.pi / 2
    joints = K.forward_kinematics(angles, lengths)
    # A +90° twist turns the flexion side from palmar (+z) to radial (+x): Ry(90°) maps z to x. The middle
    # phalanx, flexed 90°, now points along +x.
    direction = (joints[11] - joints[10]) / 28
    torch.testing.assert_close(direction, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_fk_ik_round_trip_in_limits_float64():
    batch = 512
    angles, lengths = random_in_limits(batch), random_lengths(batch)
    rot, root = random_rotations(batch), 100 * torch.randn(batch, 3, dtype=torch.float64)
    joints = K.forward_kinematics(angles, lengths, rot, root)
    params = K.inverse_kinematics(joints)
    again = K.forward_kinematics(params.angles, params.bone_lengths, params.global_rot, params.root_mm)
    assert (again - joints).abs().max() < 1e-6
    torch.testing.assert_close(params.bone_lengths, lengths)
    torch.testing.assert_close(params.global_rot, rot)
    torch.testing.assert_close(params.root_mm, root)
    # In-limit angles come back (twists of nearly straight fingers are smoothed towards 0).
    assert (params.angles - angles).abs().max() < 2e-3
    assert (params.angles - angles).abs().median() < 1e-8


def test_fk_ik_round_trip_any_pose():
    # Out-of-limit angles, twisted hinges, random lengths: IK still reproduces the joints exactly.
    batch = 256
    angles = 2.0 * torch.rand(batch, 20, 3, dtype=torch.float64) - 1.0
    lengths = random_lengths(batch)
    joints = K.forward_kinematics(
        angles, lengths, random_rotations(batch), 50 * torch.randn(batch, 3).double()
    )
    params = K.inverse_kinematics(joints)
    again = K.forward_kinematics(params.angles, params.bone_lengths, params.global_rot, params.root_mm)
    assert (again - joints).abs().max() < 1e-6


def test_round_trip_of_arbitrary_joints_float32():
    joints = K.rest_pose() + 8 * torch.randn(64, 21, 3)
    params = K.inverse_kinematics(joints)
    again = K.forward_kinematics(params.angles, params.bone_lengths, params.global_rot, params.root_mm)
    assert again.dtype == torch.float32
    assert (again - joints).abs().max() < 1e-2


def test_fk_preserves_bone_lengths():
    angles, lengths = random_in_limits(32), random_lengths(32)
    joints = K.forward_kinematics(angles, lengths, random_rotations(32))
    torch.testing.assert_close(K.bone_lengths_of(joints), lengths)


def test_batched_shapes_and_broadcasting():
    angles = random_in_limits(6).reshape(2, 3, 20, 3).float()
    lengths = K.template_bone_lengths()  # shared by every pose
    joints = K.forward_kinematics(angles, lengths, root_mm=torch.ones(3))
    assert joints.shape == (2, 3, 21, 3) and joints.dtype == torch.float32
    assert K.forward_kinematics(angles[0, 0], lengths).shape == (21, 3)
    params = K.inverse_kinematics(joints)
    assert params.angles.shape == (2, 3, 20, 3)
    assert params.bone_lengths.shape == (2, 3, 20)
    assert params.global_rot.shape == (2, 3, 3, 3)
    assert params.root_mm.shape == (2, 3, 3)
    # Each item equals the unbatched computation.
    torch.testing.assert_close(
        joints[1, 2], K.forward_kinematics(angles[1, 2], lengths, root_mm=torch.ones(3))
    )


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"angles must have shape \(\.\.\., 20, 3\)"):
        K.forward_kinematics(torch.zeros(21, 3), K.template_bone_lengths())
    with pytest.raises(ValueError, match="bone_lengths"):
        K.forward_kinematics(torch.zeros(20, 3), torch.ones(21))
    with pytest.raises(ValueError, match="joints"):
        K.inverse_kinematics(torch.zeros(20, 3))


def test_limits_table_is_consistent():
    limits = K.limits_tensor(torch.float64)
    assert limits.shape == (20, 3, 2)
    assert (limits[..., 0] <= limits[..., 1]).all()
    assert [row.bone for row in K.JOINT_LIMITS] == list(range(20))
    for row in K.JOINT_LIMITS:
        parent = BONES[row.bone][0]
        assert row.source
        if parent == 0:
            assert row.name.endswith("_palm") and row.twist_deg == (0.0, 0.0)
        else:
            assert row.name == JOINT_NAMES[parent]
    # Finger MCPs from KLBR's table: 90° flexion, 45° extension.
    assert K.JOINT_LIMITS[BONES.index((5, 6))].flexion_deg == (-45.0, 90.0)
    torch.testing.assert_close(
        limits[BONES.index((5, 6)), 0, 1], torch.tensor(math.pi / 2, dtype=torch.float64)
    )
    # Hinges (levels 2 and 3) have neither abduction nor twist.
    for finger in FINGERS.values():
        for parent in finger[1:3]:
            row = BONES.index((parent, parent + 1))
            assert limits[row, 1:].abs().max() == 0
    # Zero angles lie inside the limits (the rest pose is feasible).
    assert ((limits[..., 0] <= 0) & (limits[..., 1] >= 0)).all()


def test_bone_length_ranges_contain_template():
    template = K.template_bone_lengths(torch.float64)
    ranges = K.bone_length_range_tensor(torch.float64)
    ratios = K.bone_ratio_range_tensor(torch.float64)
    assert ((ranges[:, 0] < template) & (template < ranges[:, 1])).all()
    reference = template[BONES.index(REFERENCE_BONE)]
    template_ratio = template / reference
    assert ((ratios[:, 0] <= template_ratio + 1e-12) & (template_ratio <= ratios[:, 1] + 1e-12)).all()
    assert reference == 45.0
