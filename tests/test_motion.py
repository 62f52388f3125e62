import pytest
import torch

from handssl import kinematics as K
from handssl.data.synthhands import motion as M
from handssl.skeleton import BONES, MIDDLE_MCP

SEED = 7


@pytest.fixture(scope="module")
def subject():
    return M.make_subject(SEED, 2)


@pytest.fixture(scope="module")
def long_pose(subject):
    return M.sequence_pose(SEED, subject, 3, list(range(400)))


def test_subject_is_a_pure_function_and_subjects_differ():
    a, b = M.make_subject(SEED, 0), M.make_subject(SEED, 0)
    assert torch.equal(a.bone_lengths, b.bone_lengths) and torch.equal(a.skin_rgb, b.skin_rgb)
    assert torch.equal(a.sleeve_rgb, b.sleeve_rgb) and a.finger_radius_mm == b.finger_radius_mm
    others = [M.make_subject(SEED, i) for i in range(1, 6)] + [M.make_subject(SEED + 1, 0)]
    for other in others:
        assert not torch.allclose(a.bone_lengths, other.bone_lengths)
        assert not torch.allclose(a.skin_rgb, other.skin_rgb)
    radii = {s.finger_radius_mm for s in others}
    assert len(radii) == len(others)


def test_subject_fields_are_in_range():
    ranges = K.bone_length_range_tensor()
    ratio_ranges = K.bone_ratio_range_tensor()
    reference = BONES.index((9, 10))
    for i in range(20):
        s = M.make_subject(SEED, i)
        assert s.index == i
        assert s.bone_lengths.shape == (20,) and s.bone_lengths.dtype == torch.float32
        assert ((s.bone_lengths >= ranges[:, 0]) & (s.bone_lengths <= ranges[:, 1])).all()
        ratios = s.bone_lengths / s.bone_lengths[reference]
        assert ((ratios >= ratio_ranges[:, 0] - 1e-6) & (ratios <= ratio_ranges[:, 1] + 1e-6)).all()
        for colour in (s.skin_rgb, s.sleeve_rgb):
            assert colour.shape == (3,) and colour.min() >= 0 and colour.max() <= 1
        assert 6.0 < s.finger_radius_mm < 11.0
    # A bigger hand has thicker fingers.
    subjects = [M.make_subject(SEED, i) for i in range(20)]
    sizes = torch.tensor([s.bone_lengths.sum().item() for s in subjects])
    radii = torch.tensor([s.finger_radius_mm for s in subjects])
    assert torch.corrcoef(torch.stack([sizes, radii]))[0, 1] > 0.5


def test_sequence_is_deterministic_and_frames_are_independent(subject, long_pose):
    again = M.sequence_joints(SEED, subject, 3, torch.arange(400))
    assert torch.equal(again, long_pose.joints)
    frames = [399, 0, 123, 57, 200]
    together = M.sequence_joints(SEED, subject, 3, frames)
    for i, frame in enumerate(frames):
        alone = M.sequence_joints(SEED, subject, 3, [frame])
        assert torch.equal(alone[0], together[i])
        assert torch.equal(alone[0], long_pose.joints[frame])


def test_pose_fields_are_consistent(subject, long_pose):
    p = long_pose
    assert p.joints.shape == (400, 21, 3) and p.joints.dtype == torch.float32
    assert (
        p.angles.shape == (400, 20, 3) and p.global_rot.shape == (400, 3, 3) and p.root_mm.shape == (400, 3)
    )
    assert torch.equal(p.bone_lengths, subject.bone_lengths)
    rebuilt = K.forward_kinematics(
        p.angles.double(), p.bone_lengths.double(), p.global_rot.double(), p.root_mm.double()
    )
    assert (rebuilt - p.joints.double()).abs().max() < 1e-3
    torch.testing.assert_close(p.root_mm, p.joints[:, 0])
    torch.testing.assert_close(
        K.bone_lengths_of(p.joints), subject.bone_lengths.expand(400, 20), atol=1e-3, rtol=0
    )


def test_every_pose_is_inside_the_limits(long_pose):
    limits = K.limits_tensor()
    angles = long_pose.angles
    assert ((angles >= limits[..., 0]) & (angles <= limits[..., 1])).all()
    # Recovering the angles from the joints alone agrees (float32 joints: small tolerance).
    recovered = K.inverse_kinematics(long_pose.joints.double()).angles.float()
    excess = (limits[..., 0] - recovered).clamp_min(0) + (recovered - limits[..., 1]).clamp_min(0)
    assert excess.max() < 1e-3


def test_motion_is_smooth_but_moves(long_pose):
    joints = long_pose.joints
    step = (joints[1:] - joints[:-1]).norm(dim=-1).max(-1).values  # worst joint, per frame
    far = (joints[40:] - joints[:-40]).norm(dim=-1).max(-1).values
    assert step.max() < 30.0  # mm per frame (30 fps): under 0.9 m/s for the fastest joint
    assert step.median() * 8 < far.median()
    # Rotation changes smoothly too.
    dots = (long_pose.global_rot[1:] * long_pose.global_rot[:-1]).sum((-1, -2))  # trace of R_t^T R_{t+1}
    angle_per_frame = torch.acos(((dots - 1) / 2).clamp(-1, 1))
    assert angle_per_frame.max() < 0.1


def test_hand_stays_near_origin_and_orientation_varies_widely(subject):
    frames = list(range(0, 900, 3))
    palm_normals = []
    for sequence in range(3):
        p = M.sequence_pose(SEED, subject, sequence, frames)
        assert p.joints[:, MIDDLE_MCP].abs().max() < 60.0
        assert p.joints.abs().max() < 250.0
        palm_normals.append(p.global_rot[..., 2])
    normals = torch.cat(palm_normals)
    # The palm faces every world axis direction (both signs) at some frame.
    for axis in range(3):
        assert normals[:, axis].max() > 0.6 and normals[:, axis].min() < -0.6


def test_gestures_cover_the_vocabulary_and_differ():
    assert {"grasp", "pinch", "spread", "fist", "point", "relaxed"} <= set(M.GESTURES)
    assert {f"count_{n}" for n in range(1, 6)} <= set(M.GESTURES)
    limits = K.limits_tensor()
    lengths = K.template_bone_lengths()
    poses = {}
    for name in M.GESTURES:
        angles = M.gesture_angles(name)
        assert ((angles >= limits[..., 0]) & (angles <= limits[..., 1])).all(), name
        poses[name] = K.forward_kinematics(angles, lengths)
    # Pinch: thumb tip meets the index tip; fist: every fingertip is closer to the wrist than when spread.
    assert (poses["pinch"][4] - poses["pinch"][8]).norm() < 10.0
    tips = list(range(8, 21, 4))
    assert (poses["fist"][tips].norm(dim=-1) < poses["spread"][tips].norm(dim=-1) - 40).all()
    # count_n has exactly n straight fingers (index first, thumb last).
    for n in range(1, 5):
        straight = poses[f"count_{n}"][tips].norm(dim=-1) > 140
        assert straight.sum() == n and straight[:n].all()
    with pytest.raises(ValueError, match="unknown gesture"):
        M.gesture_angles("wave")


def test_keyframes_visit_several_gestures(subject):
    # Over a long sequence the hand opens and closes: the spread of fingertip-to-wrist distances is large.
    p = M.sequence_pose(SEED, subject, 5, list(range(0, 1200, 10)))
    hand = (p.joints - p.root_mm.unsqueeze(1)) @ p.global_rot  # back into the hand frame
    reach = hand[:, 12].norm(dim=-1)  # middle fingertip distance from the wrist
    assert reach.max() - reach.min() > 50.0


def test_bad_frames_raise():
    s = M.make_subject(0, 0)
    with pytest.raises(ValueError, match="integers"):
        M.sequence_joints(0, s, 0, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="one-dimensional"):
        M.sequence_joints(0, s, 0, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="list of ints"):
        M.sequence_joints(0, s, 0, [1.5])
