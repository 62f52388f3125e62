"""Exponential-moving-average (mean-teacher) helpers, in the style of Lightly's ``update_momentum``.

The teacher is a deep copy of the student whose weights follow ``teacher = m * teacher + (1 - m) * student``
after every optimiser step; it never receives gradients and always runs in eval mode.

Buffers (BatchNorm running statistics) follow the parameters consistently, chosen by ``buffer_mode``:

* ``"ema"`` (default): floating-point buffers are averaged with the same momentum as the parameters, so the
  teacher's normalisation statistics describe the same slowly moving network as its weights; integer buffers
  (``num_batches_tracked``) are copied.
* ``"copy"``: every buffer is copied from the student (the teacher uses the student's latest statistics).

Under DDP the student's parameters are identical on every rank (gradients are all-reduced), but its
BatchNorm running statistics are updated from each rank's own data and drift apart. Call
:func:`sync_buffers` on the student before :func:`update_momentum` so every rank averages the same buffers
and the teachers stay identical.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "EMATeacher",
    "activate_requires_grad",
    "cosine_schedule",
    "deactivate_requires_grad",
    "load_student_teacher",
    "sync_buffers",
    "update_momentum",
    "warmup_momentum",
]

BUFFER_MODES = ("ema", "copy")


def deactivate_requires_grad(module: nn.Module) -> None:
    """Set ``requires_grad = False`` on every parameter of ``module`` (it then gets no gradients)."""
    for param in module.parameters():
        param.requires_grad = False


def activate_requires_grad(module: nn.Module) -> None:
    """Set ``requires_grad = True`` on every parameter of ``module``."""
    for param in module.parameters():
        param.requires_grad = True


def _check_pairs(student: nn.Module, teacher: nn.Module) -> None:
    s_params, t_params = list(student.parameters()), list(teacher.parameters())
    if len(s_params) != len(t_params) or any(a.shape != b.shape for a, b in zip(s_params, t_params)):
        raise ValueError("student and teacher must have the same architecture (parameter shapes differ)")
    s_bufs, t_bufs = list(student.buffers()), list(teacher.buffers())
    if len(s_bufs) != len(t_bufs) or any(a.shape != b.shape for a, b in zip(s_bufs, t_bufs)):
        raise ValueError(
            "student and teacher must have the same buffers (BatchNorm statistics differ in shape)"
        )


@torch.no_grad()
def update_momentum(student: nn.Module, teacher: nn.Module, m: float, buffer_mode: str = "ema") -> None:
    """Move ``teacher`` towards ``student``: ``teacher = m * teacher + (1 - m) * student``.

    Uses ``torch._foreach_*`` over all parameters at once (as Lightly does).

    Args:
        student: The trained network.
        teacher: Its EMA copy (same architecture), updated in place.
        m: Momentum in ``[0, 1]``; 1 keeps the teacher, 0 copies the student.
        buffer_mode: ``"ema"`` to average floating-point buffers with the same momentum, ``"copy"`` to copy
            them; integer buffers are always copied (see the module docstring).
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    if buffer_mode not in BUFFER_MODES:
        raise ValueError(f"buffer_mode must be one of {BUFFER_MODES}, got {buffer_mode!r}")
    _check_pairs(student, teacher)
    t_params: list[Tensor] = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if t_params:
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - m)
    float_t, float_s = [], []
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        if buffer_mode == "ema" and t_buf.is_floating_point():
            float_t.append(t_buf)
            float_s.append(s_buf.detach())
        else:
            t_buf.copy_(s_buf)
    if float_t:
        torch._foreach_mul_(float_t, m)
        torch._foreach_add_(float_t, float_s, alpha=1.0 - m)


@torch.no_grad()
def sync_buffers(module: nn.Module) -> None:
    """Average the floating-point buffers of ``module`` over all DDP ranks (no-op when not distributed).

    Integer buffers are taken from rank 0. After this call every rank holds the same buffers.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)
        else:
            dist.broadcast(buf, src=0)


def cosine_schedule(step: int, max_steps: int, start_value: float, end_value: float) -> float:
    """Cosine ramp from ``start_value`` (step 0) to ``end_value`` (``max_steps``), constant afterwards.

    Lightly's momentum schedule, e.g. ``cosine_schedule(step, total, 0.996, 1.0)``.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if step >= max_steps:
        return end_value
    return end_value - (end_value - start_value) * (math.cos(math.pi * step / max_steps) + 1) / 2


def warmup_momentum(decay: float, updates: int, warmup: bool = True) -> float:
    """The momentum of the next update: ``decay``, or ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.

    The warm-up lets the teacher track the student quickly while both change fast, early on.
    """
    return float(min(decay, (1 + updates) / (10 + updates)) if warmup else decay)


class EMATeacher(nn.Module):
    """A frozen, always-eval copy of a student network, updated by :func:`update_momentum`.

    As an attribute of a LightningModule it is part of the ``state_dict``, so checkpoints save it and resuming
    restores it. ``.train()`` never switches it out of eval mode (Lightning calls ``train()`` on the whole
    LightningModule at the start of every training epoch).

    Args:
        student: The network to copy (deep-copied once, here).
        buffer_mode: How buffers follow the student (see :func:`update_momentum`).
    """

    def __init__(self, student: nn.Module, buffer_mode: str = "ema") -> None:
        super().__init__()
        if buffer_mode not in BUFFER_MODES:
            raise ValueError(f"buffer_mode must be one of {BUFFER_MODES}, got {buffer_mode!r}")
        self.buffer_mode = buffer_mode
        self.module = copy.deepcopy(student)
        deactivate_requires_grad(self.module)
        self.train(False)

    def train(self, mode: bool = True) -> EMATeacher:
        """Keep the teacher in eval mode whatever ``mode`` says (BatchNorm uses running statistics)."""
        return super().train(False)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """EMA step towards ``student`` with ``momentum`` (see :func:`update_momentum`)."""
        update_momentum(student, self.module, momentum, self.buffer_mode)

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Make the teacher an exact copy of ``student`` (momentum 0)."""
        update_momentum(student, self.module, 0.0, "copy")

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training or self.module.training:  # flags set directly (e.g. Lightning's mode restore)
            self.train(False)
        return self.module(*args, **kwargs)


def load_student_teacher(
    path: str | Path, student: nn.Module, teacher: EMATeacher | None, what: str = "checkpoint"
) -> tuple[dict[str, Any], bool]:
    """Load a student and its teacher from a checkpoint of a student/teacher module (``student.*``, ``teacher.*``).

    The teacher continues the checkpoint's own teacher where it has one (so a second stage keeps its EMA
    history), else starts as a copy of the student.

    Args:
        path: The checkpoint (Lightning's, with ``state_dict``, or a plain state dict).
        student: Gets the ``student.*`` weights.
        teacher: Gets the ``teacher.*`` weights, or a copy of the student (``None``: no teacher to load).
        what: How error messages name the file (e.g. the argument that gave it).

    Returns:
        The whole checkpoint (for its other entries) and whether the teacher was loaded from it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", checkpoint)
    part = lambda prefix: {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
    student_state, teacher_state = part("student."), part("teacher.")
    if not student_state:
        raise ValueError(f"{what} {path} holds no 'student.*' weights (not a student/teacher checkpoint)")
    student.load_state_dict(student_state)
    if teacher is not None and teacher_state:
        teacher.load_state_dict(teacher_state)
    elif teacher is not None:
        teacher.copy_from(student)
    return checkpoint, teacher is not None and bool(teacher_state)
