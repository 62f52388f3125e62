"""Set the semi NVS regime's pose weight from a measured gradient ratio, not from a number AdamW cannot see.

With Adam(W) the pose head's own updates do not depend on the scale of its loss, so the pose weight (NVSModule's
``pose.weight``, kept as its attribute ``pose_weight``) only sets how hard the pose loss pulls the *shared encoder*
next to the synthesis loss. :class:`PoseGradientBalance` (``pose.gradient_ratio``) makes that explicit: every ``every_n_steps`` optimizer steps it measures the L2 norms of the encoder's gradient
from the synthesis loss and from the unweighted pose loss on the current batch
(:meth:`~handssl.models.NVSModule.encoder_gradient_norms`) and sets

    pose_weight = ratio * |g_synthesis| / |g_pose|

smoothed geometrically over measurements, so that the encoder's pose gradient is ``ratio`` times its synthesis
gradient (GradNorm, Chen et al. ICML'18, balances multi-task gradients the same way, with a learned weight). The
measurement is one extra forward and two backward passes through the encoder, every ``every_n_steps`` steps;
it updates the BatchNorm statistics like a training step would and draws from the global RNG (a resumed run
draws the same). The weight is saved in checkpoints (the callback's state), so a resumed run continues with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

__all__ = ["PoseGradientBalance", "balanced_weight", "gradient_norms"]


def gradient_norms(losses: dict[str, Tensor], parameters: Iterable[nn.Parameter]) -> dict[str, float]:
    """L2 norm of each loss's gradient with respect to ``parameters`` (those that require one); ``.grad`` untouched.

    Args:
        losses: Scalar losses by name, sharing one graph.
        parameters: The parameters (e.g. a shared encoder's).

    Returns:
        The norm of each loss's gradient, by name (0 for a loss that does not reach them).
    """
    params = [p for p in parameters if p.requires_grad]
    norms = {}
    for name, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [(g.float() ** 2).sum() for g in grads if g is not None]
        norms[name] = float(torch.sqrt(sum(squares, torch.zeros(()))))
    return norms


def balanced_weight(
    synthesis_norm: float, pose_norm: float, ratio: float, previous: float | None, momentum: float
) -> float | None:
    """The pose weight that makes the encoder's pose gradient ``ratio`` times its synthesis gradient.

    Args:
        synthesis_norm: Encoder gradient norm of the synthesis loss.
        pose_norm: Encoder gradient norm of the *unweighted* pose loss.
        ratio: Wanted ``|pose_weight * g_pose| / |g_synthesis|``.
        previous: The weight before this measurement (``None`` at the first).
        momentum: Share of ``log(previous)`` kept (0: take the new measurement as it is).

    Returns:
        The new weight, or ``previous`` when a norm is 0 or not finite (nothing to balance on this batch).
    """
    if (
        not (math.isfinite(synthesis_norm) and math.isfinite(pose_norm))
        or synthesis_norm <= 0
        or pose_norm <= 0
    ):
        return previous
    measured = ratio * synthesis_norm / pose_norm
    if previous is None:
        return measured
    return math.exp(momentum * math.log(previous) + (1 - momentum) * math.log(measured))


class PoseGradientBalance(pl.Callback):
    """Keep ``pl_module.pose_weight`` at the value that gives the encoder a pose/synthesis gradient ratio.

    The module needs ``pose_weight`` and ``encoder_gradient_norms(batch)`` (returning the ``"synthesis"`` and
    the weighted ``"pose"`` norms), as :class:`~handssl.models.NVSModule` in the semi regime has.

    Args:
        ratio: Wanted ratio of the encoder's pose to synthesis gradient norms (``> 0``).
        every_n_steps: Measure every this many optimizer steps (the first step included).
        momentum: Geometric smoothing of successive measurements, in ``[0, 1)``.
    """

    def __init__(self, ratio: float, every_n_steps: int = 50, momentum: float = 0.8) -> None:
        if not ratio > 0:
            raise ValueError(f"ratio must be > 0, got {ratio}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.ratio = ratio
        self.every_n_steps = every_n_steps
        self.momentum = momentum
        self.weight: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.weight is not None:
            pl_module.pose_weight = self.weight  # a resumed run starts with the saved weight
        if trainer.global_step % self.every_n_steps or not getattr(pl_module, "pose_active", True):
            return
        # Norms of the pose loss as weighted now; divide the weight out to get the unweighted pose norm.
        current = float(pl_module.pose_weight)
        pl_module.pose_weight = 1.0
        try:
            norms = pl_module.encoder_gradient_norms(batch)
        finally:
            pl_module.pose_weight = current
        self.weight = balanced_weight(
            norms["synthesis"], norms["pose"], self.ratio, self.weight, self.momentum
        )
        if self.weight is not None:
            pl_module.pose_weight = self.weight
            pl_module.log("train/pose_weight", self.weight, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weight = state_dict.get("weight")
