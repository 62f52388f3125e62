from handssl import skeleton as sk


def test_canonical_structure():
    assert len(sk.JOINT_NAMES) == 21 and sk.JOINT_NAMES[0] == "wrist"
    assert sk.PARENTS[0] == -1 and len(sk.BONES) == 20
    assert (
        sk.JOINT_NAMES[4] == "thumb_tip"
        and sk.JOINT_NAMES[5] == "index_mcp"
        and sk.JOINT_NAMES[20] == "pinky_tip"
    )
    for finger, joints in sk.FINGERS.items():
        assert sk.PARENTS[joints[0]] == 0, finger
        assert [sk.PARENTS[j] for j in joints[1:]] == list(joints[:3])
    assert sk.TIPS == (4, 8, 12, 16, 20)


def test_dataset_maps_are_permutations_and_involutions():
    for m in (sk.RHD_TO_CANONICAL, sk.STB_TO_CANONICAL):
        assert sorted(m) == list(range(21))
        assert [m[m[i]] for i in range(21)] == list(range(21))


def test_rhd_map_reverses_each_finger():
    # RHD stores each finger tip -> MCP: native 1 is the thumb tip, canonical 4 is the thumb tip
    assert sk.RHD_TO_CANONICAL[4] == 1 and sk.RHD_TO_CANONICAL[1] == 4 and sk.RHD_TO_CANONICAL[5] == 8


def test_stb_map_puts_thumb_first():
    # STB: palm, little (1-4), ring, middle, index, thumb (17-20), each MCP -> tip
    assert sk.STB_TO_CANONICAL[1:5] == (17, 18, 19, 20) and sk.STB_TO_CANONICAL[17:21] == (1, 2, 3, 4)


def test_root_relative_on_joints_and_depths_numpy_and_torch():
    import numpy as np
    import pytest
    import torch

    joints = torch.arange(2 * 21 * 3, dtype=torch.float64).view(2, 21, 3)
    rel = sk.root_relative(joints)
    assert torch.equal(rel, joints - joints[:, :1]) and torch.equal(rel[:, sk.ROOT], torch.zeros(2, 3))
    assert torch.equal(sk.root_relative(joints, root=9)[:, 9], torch.zeros(2, 3))
    depth = joints[..., 2]
    assert torch.equal(sk.root_relative(depth, joint_axis=-1), depth - depth[:, :1])
    np.testing.assert_array_equal(sk.root_relative(joints.numpy()), rel.numpy())
    with pytest.raises(ValueError, match="joint_axis"):
        sk.root_relative(joints, joint_axis=1)


def test_valid_with_root_needs_the_root_joint_numpy_and_torch():
    import numpy as np
    import pytest
    import torch

    valid = torch.ones(3, 21, dtype=torch.bool)
    valid[0, sk.ROOT] = False  # root missing: nothing counts
    valid[1, 5] = False  # another joint missing: only that one drops
    valid[2, 9] = False  # the middle MCP missing: matters only with root=9
    out = sk.valid_with_root(valid)
    assert out.shape == valid.shape and out.dtype == torch.bool
    assert not out[0].any()
    assert torch.equal(out[1], valid[1]) and not out[1, 5]
    assert torch.equal(out[2], valid[2])
    assert not sk.valid_with_root(valid, root=9)[2].any() and sk.valid_with_root(valid, root=9)[0, 1:].all()
    np.testing.assert_array_equal(sk.valid_with_root(valid.numpy()), out.numpy())
    # (..., J, D): the joints on axis -2
    per_coord = valid.unsqueeze(-1).expand(3, 21, 3)
    assert torch.equal(sk.valid_with_root(per_coord, joint_axis=-2), out.unsqueeze(-1).expand(3, 21, 3))
    with pytest.raises(ValueError, match="joint_axis"):
        sk.valid_with_root(valid, joint_axis=1)
