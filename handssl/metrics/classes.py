"""torchmetrics wrappers of :mod:`handssl.metrics.functional`, with fixed-size sum states only.

Every state is a fixed-size tensor reduced with ``"sum"``, so the result after DDP's all-reduce (or
``merge_state``) is exactly the result on the whole data set. Each metric takes an optional ``protocol`` (an
:class:`~handssl.metrics.protocols.EvalProtocol` or its name): the inputs then go through the protocol's joint
selection, frame filtering and alignment first. Without one, nothing is aligned.

In a LightningModule::

    self.val_metrics = PoseMetrics("synthhands", prefix="val/")
    ...
    self.val_metrics.update(pred_mm, gt_mm, valid)
    self.log_dict(self.val_metrics)   # Lightning calls compute() and reset() at epoch end
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from handssl.metrics.functional import (
    align_procrustes,
    align_scale,
    check_pose_inputs,
    error_sum_and_count,
    joint_errors,
    pck_from_hits,
    pck_hits,
    pck_thresholds,
    procrustes_valid,
)
from handssl.metrics.protocols import EvalProtocol, get_protocol
from handssl.skeleton import NUM_JOINTS

__all__ = ["MPJPE", "NMPJPE", "PAMPJPE", "PCK", "PCKAUC", "PoseMetrics"]


def _resolve(protocol: str | EvalProtocol | None) -> EvalProtocol | None:
    return get_protocol(protocol) if isinstance(protocol, str) else protocol


class _JointErrorMetric(Metric):
    """Mean joint error: states are the error sum over valid joints and their count."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    # Sum states (``add_state``), declared for type checkers.
    error_sum: Tensor
    count: Tensor

    def __init__(self, protocol: str | EvalProtocol | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol = _resolve(protocol)
        self.add_state("error_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _errors(self, pred: Tensor, target: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Accumulate a batch: ``(B, J, 3)`` prediction and target in mm, optional ``valid (B, J)`` bool."""
        errors, valid = self._errors(pred, target, valid)
        total, count = error_sum_and_count(errors, valid)
        self.error_sum += total.to(torch.float64)
        self.count += count

    def compute(self) -> Tensor:
        """Mean error in mm over every valid joint seen (NaN before any valid joint)."""
        return (self.error_sum / self.count).float()


class MPJPE(_JointErrorMetric):
    """Mean per-joint position error (mm) over valid joints; no alignment unless a protocol is given.

    Args:
        protocol: Optional :class:`EvalProtocol` or name; errors are then taken after its alignment
            (e.g. root-relative for ``"synthhands"``).
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    def _errors(self, pred: Tensor, target: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.protocol is not None:
            pred, target, valid = self.protocol.align(pred, target, valid)
        else:
            valid = check_pose_inputs(pred, target, valid, "MPJPE")
        return joint_errors(pred, target), valid


class NMPJPE(_JointErrorMetric):
    """MPJPE after the per-sample least-squares scale ``Σ<p, g> / Σ<p, p>`` (Rhodin et al., N-MPJPE).

    Args:
        protocol: Optional :class:`EvalProtocol` or name; the scale is then fitted on its
            :meth:`~EvalProtocol.relative` poses (selected joints, root-relative when it has a root).
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    def _errors(self, pred: Tensor, target: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.protocol is not None:
            pred, target, valid = self.protocol.relative(pred, target, valid)
        else:
            valid = check_pose_inputs(pred, target, valid, "NMPJPE")
        return joint_errors(align_scale(pred, target, valid), target), valid


class PAMPJPE(_JointErrorMetric):
    """MPJPE after per-sample similarity Procrustes (no reflections); samples with < 3 valid joints left out.

    Args:
        protocol: Optional :class:`EvalProtocol` or name; the fit then uses its
            :meth:`~EvalProtocol.relative` poses.
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    def _errors(self, pred: Tensor, target: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.protocol is not None:
            pred, target, valid = self.protocol.relative(pred, target, valid)
        else:
            valid = check_pose_inputs(pred, target, valid, "PAMPJPE")
        return joint_errors(align_procrustes(pred, target, valid), target), procrustes_valid(valid)


class PCK(Metric):
    """3D PCK curve and AUC, per keypoint then averaged over keypoints with data (hand3d EvalUtil).

    States: per-keypoint, per-threshold hit counts ``(J, T)`` and per-keypoint valid counts ``(J,)``.

    Args:
        thresholds: Explicit increasing thresholds in mm; overrides ``low``/``high``/``steps``.
        low: Smallest threshold of ``linspace(low, high, steps)`` (default 20 mm).
        high: Largest threshold (default 50 mm).
        steps: Number of thresholds (default 20).
        num_joints: Joints per pose (default 21).
        protocol: Optional :class:`EvalProtocol` or name; it then supplies the thresholds and joints, and
            errors are taken after its alignment. Do not combine it with the grid arguments; change the
            protocol's grid instead (``get_protocol(name, auc_steps=...)``).
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    # Sum states (``add_state``) and the threshold buffer, declared for type checkers.
    hits: Tensor
    counts: Tensor
    thresholds: Tensor

    def __init__(
        self,
        thresholds: Sequence[float] | Tensor | None = None,
        low: float | None = None,
        high: float | None = None,
        steps: int | None = None,
        num_joints: int | None = None,
        protocol: str | EvalProtocol | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.protocol = _resolve(protocol)
        if self.protocol is not None:
            if thresholds is not None or low is not None or high is not None or steps is not None:
                raise ValueError(
                    "PCK: with a protocol, set the threshold grid through it, e.g. "
                    f"get_protocol({self.protocol.name!r}, auc_low=..., auc_high=..., auc_steps=...)"
                )
            if num_joints is not None and num_joints != self.protocol.num_joints:
                raise ValueError(
                    f"PCK: num_joints={num_joints} disagrees with protocol {self.protocol.name!r}, "
                    f"which evaluates {self.protocol.num_joints} joints"
                )
            grid = self.protocol.thresholds
            num_joints = self.protocol.num_joints
        elif thresholds is not None:
            grid = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
            if (
                grid.numel() < 2
                or not bool((grid[1:] > grid[:-1]).all())
                or not bool(torch.isfinite(grid).all())
            ):
                raise ValueError(
                    f"PCK: thresholds must be at least 2 finite increasing values, got {grid.tolist()}"
                )
        else:
            grid = pck_thresholds(20.0 if low is None else low, 50.0 if high is None else high, steps or 20)
        self.num_joints = NUM_JOINTS if num_joints is None else int(num_joints)
        self.register_buffer("thresholds", grid, persistent=False)
        self.add_state(
            "hits", default=torch.zeros(self.num_joints, grid.numel(), dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state("counts", default=torch.zeros(self.num_joints, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Accumulate a batch: ``(B, J, 3)`` prediction and target in mm, optional ``valid (B, J)`` bool."""
        if self.protocol is not None:
            pred, target, valid = self.protocol.align(pred, target, valid)
        else:
            valid = check_pose_inputs(pred, target, valid, "PCK")
        if pred.shape[1] != self.num_joints:
            raise ValueError(
                f"PCK: built for {self.num_joints} joints, got poses of shape {tuple(pred.shape)}"
            )
        hits, counts = pck_hits(joint_errors(pred, target), valid, self.thresholds)
        self.hits += hits
        self.counts += counts

    def compute(self) -> dict[str, Tensor]:
        """``{"curve": (T,), "thresholds": (T,) mm, "auc": ()}``; NaN where no keypoint has data."""
        curve, auc = pck_from_hits(self.hits, self.counts, self.thresholds)
        return {"curve": curve.float(), "thresholds": self.thresholds.float(), "auc": auc.float()}


class PCKAUC(PCK):
    """:class:`PCK` that computes only the AUC, a scalar, so it can be logged directly or in a collection.

    Takes the same arguments as :class:`PCK`.
    """

    def compute(self) -> Tensor:  # type: ignore[override]
        """Normalised area under the PCK curve, in ``[0, 1]``."""
        return pck_from_hits(self.hits, self.counts, self.thresholds)[1].float()


class PoseMetrics(MetricCollection):
    """``mpjpe``, ``n_mpjpe``, ``pa_mpjpe`` and ``auc`` under one evaluation protocol, as a MetricCollection.

    ``mpjpe`` is the error after the protocol's alignment (root-relative for ``"synthhands"``, Procrustes
    for ``"rhd"``...); ``n_mpjpe`` and ``pa_mpjpe`` use the protocol's root-relative poses; ``auc`` is over
    the protocol's threshold grid. Every member returns a scalar, so ``self.log_dict(pose_metrics)`` works.

    Args:
        protocol: An :class:`EvalProtocol` or a name in :data:`~handssl.metrics.protocols.PROTOCOLS`.
        prefix: Prepended to every key, e.g. ``"val/"``.
        postfix: Appended to every key.
    """

    def __init__(
        self,
        protocol: str | EvalProtocol = "synthhands",
        prefix: str | None = None,
        postfix: str | None = None,
    ) -> None:
        resolved = get_protocol(protocol) if isinstance(protocol, str) else protocol
        super().__init__(
            {
                "mpjpe": MPJPE(resolved),
                "n_mpjpe": NMPJPE(resolved),
                "pa_mpjpe": PAMPJPE(resolved),
                "auc": PCKAUC(protocol=resolved),
            },
            prefix=prefix,
            postfix=postfix,
            # Grouping would merge metrics whose states happen to match after the first batch (e.g. all zero).
            compute_groups=False,
        )
        self.protocol = resolved
