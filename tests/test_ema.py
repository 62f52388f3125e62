import copy
import itertools

import pytest
import torch
from torch import nn

from handssl.models.components.ema import (
    EMATeacher,
    cosine_schedule,
    deactivate_requires_grad,
    update_momentum,
)


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def _built():
    net = _net()
    net(torch.rand(2, 3, 6, 6))
    return net


def test_update_momentum_exact_formula_parameters_and_buffers():
    student, teacher = _built(), _built()
    student.train()
    student(torch.rand(4, 3, 6, 6))  # moves BatchNorm running statistics
    before = copy.deepcopy(teacher.state_dict())
    m = 0.9
    update_momentum(student, teacher, m)
    for name, value in teacher.state_dict().items():
        s_value = student.state_dict()[name]
        if value.is_floating_point():
            assert torch.allclose(value, m * before[name] + (1 - m) * s_value, atol=1e-7), name
        else:  # num_batches_tracked is copied
            assert torch.equal(value, s_value), name


def test_update_momentum_copy_buffers_and_extremes():
    student, teacher = _built(), _built()
    student(torch.rand(4, 3, 6, 6))
    before = copy.deepcopy(teacher.state_dict())
    update_momentum(student, teacher, 1.0, buffer_mode="copy")
    for name, value in teacher.named_parameters():
        assert torch.equal(value, before[name])
    for name, value in teacher.named_buffers():
        assert torch.equal(value, student.state_dict()[name])
    update_momentum(student, teacher, 0.0)
    for (_, a), (_, b) in zip(teacher.state_dict().items(), student.state_dict().items()):
        assert torch.allclose(a, b)


def test_bad_momentum_and_mismatched_networks():
    student = _built()
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(student, _built(), 1.5)
    with pytest.raises(ValueError, match="buffer_mode"):
        update_momentum(student, _built(), 0.5, buffer_mode="mean")
    other = nn.Sequential(nn.Conv2d(3, 5, 3))
    with pytest.raises(ValueError, match="same architecture"):
        update_momentum(student, other, 0.5)


def test_ema_teacher_frozen_and_always_eval():
    student = _built()
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    teacher.train()
    assert not teacher.training and not teacher.module[1].training
    # The copy is deep: changing the student does not change the teacher.
    with torch.no_grad():
        student[0].weight.add_(1.0)
    assert not torch.equal(student[0].weight, teacher.module[0].weight)
    out = teacher(torch.rand(2, 3, 6, 6))
    assert not out.requires_grad
    # In the state dict, so checkpoints carry it.
    assert any(k.startswith("module.") for k in teacher.state_dict())


def test_deactivate_requires_grad():
    net = _built()
    deactivate_requires_grad(net)
    assert not any(p.requires_grad for p in net.parameters())


def test_cosine_schedule_endpoints_and_monotone():
    assert cosine_schedule(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_schedule(100, 100, 0.996, 1.0) == 1.0
    values = [cosine_schedule(s, 100, 0.9, 1.0) for s in range(101)]
    assert all(a <= b for a, b in itertools.pairwise(values))
