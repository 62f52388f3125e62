"""Named evaluation protocols: which joints, which alignment, which PCK grid, as one frozen record.

Published numbers on the public hand benchmarks differ in root joint, alignment and threshold grid more than
in anything else (each protocol below cites the paper or code it follows), so each protocol spells them out and
cites where it comes from. Change any field with :func:`get_protocol` overrides or ``dataclasses.replace``::

    protocol = get_protocol("stb", root_joint=9, reference_bone=(0, 9), auc_steps=15)  # Minimal-Hand's STB
    results = protocol.evaluate(pred_mm, gt_mm, valid)   # {"auc": ..., "epe_mean": ..., "pck_curve": [...], ...}

Pipeline of every protocol, on canonical 21-joint poses in millimetres:

1. Frames whose ``root_joint`` (or ``reference_bone`` joints, for ``"root_and_scale"``) is not annotated are
   skipped.
2. ``"root"`` makes both poses root-relative; ``"root_and_scale"`` also scales the prediction so its reference
   bone has the ground-truth length (on the full skeleton, before joint selection).
3. ``joints`` selects the evaluated joints; frames with fewer than ``min_valid_joints`` valid ones are skipped.
4. ``"centroid_and_scale"`` and ``"procrustes"`` are fitted per frame on the selected valid joints.
5. Errors give the mean EPE (pooled ``mpjpe`` and EvalUtil's per-keypoint ``epe_mean``) and the PCK curve / AUC
   over ``linspace(auc_low, auc_high, auc_steps)``. N-MPJPE and PA-MPJPE are reported on the selected joints,
   root-relative when ``root_joint`` is set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from handssl.metrics.functional import (
    MIN_PROCRUSTES_JOINTS,
    align_centroid_and_scale,
    align_procrustes,
    align_root,
    align_root_and_scale,
    align_scale,
    check_pose_inputs,
    error_sum_and_count,
    joint_errors,
    pck_from_hits,
    pck_hits,
    pck_thresholds,
    procrustes_valid,
)
from handssl.skeleton import NUM_JOINTS, REFERENCE_BONE, ROOT, TIPS

__all__ = ["ALIGNMENTS", "PROTOCOLS", "Alignment", "EvalProtocol", "ProtocolMetric", "get_protocol"]

Alignment = Literal["none", "root", "root_and_scale", "centroid_and_scale", "procrustes"]
ALIGNMENTS: tuple[str, ...] = ("none", "root", "root_and_scale", "centroid_and_scale", "procrustes")
"""Valid values of :attr:`EvalProtocol.alignment`."""

_MIN_JOINTS_FOR = {"centroid_and_scale": 2, "procrustes": MIN_PROCRUSTES_JOINTS}


@dataclass(frozen=True)
class EvalProtocol:
    """A named evaluation protocol for canonical 21-joint 3D poses in millimetres.

    Args:
        name: Short name, used as the registry key and in logs.
        root_joint: Canonical index of the root for root-relative coordinates (``"root"`` and
            ``"root_and_scale"`` alignment, and the N-/PA-MPJPE inputs); frames where it is not annotated
            are skipped. ``None`` for no root.
        alignment: ``"none"`` (camera coordinates as given), ``"root"`` (root-relative), ``"root_and_scale"``
            (root-relative, prediction scaled to the ground-truth ``reference_bone`` length),
            ``"centroid_and_scale"`` (Dexter+Object: valid-joint centroids and spreads matched) or
            ``"procrustes"`` (similarity transform, no reflections).
        reference_bone: ``(a, b)`` canonical joints whose distance sets the scale for ``"root_and_scale"``.
        joints: Canonical joints to evaluate (e.g. the fingertips); ``None`` for all 21.
        auc_low: Smallest PCK threshold in mm.
        auc_high: Largest PCK threshold in mm.
        auc_steps: Number of thresholds in ``linspace(auc_low, auc_high, auc_steps)``.
        min_valid_joints: Frames with fewer valid evaluated joints are skipped (at least 2 for
            ``"centroid_and_scale"``, 3 for ``"procrustes"``).
        citation: Where the protocol comes from.
    """

    name: str
    root_joint: int | None = ROOT
    alignment: Alignment = "root"
    reference_bone: tuple[int, int] | None = None
    joints: tuple[int, ...] | None = None
    auc_low: float = 20.0
    auc_high: float = 50.0
    auc_steps: int = 20
    min_valid_joints: int = 1
    citation: str = ""

    def __post_init__(self) -> None:
        where = f"EvalProtocol {self.name!r}"
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"{where}: alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        if self.root_joint is not None and not 0 <= self.root_joint < NUM_JOINTS:
            raise ValueError(
                f"{where}: root_joint must be a canonical index 0..20 or None, got {self.root_joint}"
            )
        if self.alignment in ("root", "root_and_scale") and self.root_joint is None:
            raise ValueError(f"{where}: alignment {self.alignment!r} needs a root_joint")
        if self.reference_bone is not None:
            bone = tuple(int(j) for j in self.reference_bone)
            if len(bone) != 2 or bone[0] == bone[1] or not all(0 <= j < NUM_JOINTS for j in bone):
                raise ValueError(
                    f"{where}: reference_bone must be two different canonical indices, got {self.reference_bone}"
                )
            object.__setattr__(self, "reference_bone", bone)
        if self.alignment == "root_and_scale" and self.reference_bone is None:
            raise ValueError(f"{where}: alignment 'root_and_scale' needs a reference_bone")
        if self.joints is not None:
            joints = tuple(int(j) for j in self.joints)
            if not joints or len(set(joints)) != len(joints) or not all(0 <= j < NUM_JOINTS for j in joints):
                raise ValueError(
                    f"{where}: joints must be distinct canonical indices 0..20 (or None for all), got {self.joints}"
                )
            object.__setattr__(self, "joints", joints)
        pck_thresholds(self.auc_low, self.auc_high, self.auc_steps)  # raises on a bad grid
        needed = _MIN_JOINTS_FOR.get(self.alignment, 1)
        if self.min_valid_joints < needed:
            raise ValueError(
                f"{where}: alignment {self.alignment!r} needs min_valid_joints >= {needed}, "
                f"got {self.min_valid_joints}"
            )
        if self.min_valid_joints > self.num_joints:
            raise ValueError(
                f"{where}: min_valid_joints={self.min_valid_joints} exceeds the {self.num_joints} evaluated joints"
            )

    @property
    def num_joints(self) -> int:
        """Number of evaluated joints."""
        return NUM_JOINTS if self.joints is None else len(self.joints)

    @property
    def thresholds(self) -> Tensor:
        """The PCK thresholds in mm, ``linspace(auc_low, auc_high, auc_steps)`` (float64)."""
        return pck_thresholds(self.auc_low, self.auc_high, self.auc_steps)

    def _apply(
        self, pred: Tensor, target: Tensor, valid: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Return aligned pred/target, valid (skipped frames all False), root-relative pred/target."""
        valid = check_pose_inputs(pred, target, valid, f"protocol {self.name!r}")
        if pred.shape[1] != NUM_JOINTS or pred.shape[2] != 3:
            raise ValueError(
                f"protocol {self.name!r}: expects canonical (B, 21, 3) poses in mm, got {tuple(pred.shape)}"
            )
        usable = torch.ones(pred.shape[0], dtype=torch.bool, device=pred.device)
        if self.root_joint is not None:
            usable &= valid[:, self.root_joint]
            relative_pred, relative_target = (
                align_root(pred, self.root_joint),
                align_root(target, self.root_joint),
            )
        else:
            relative_pred, relative_target = pred, target
        if self.alignment == "root_and_scale":
            if self.root_joint is None or self.reference_bone is None:  # __post_init__ rules this out
                raise ValueError(
                    f"protocol {self.name!r}: 'root_and_scale' needs a root_joint and a reference_bone"
                )
            a, b = self.reference_bone
            usable &= valid[:, a] & valid[:, b]
            aligned_pred, aligned_target = align_root_and_scale(
                pred, target, self.root_joint, self.reference_bone
            )
        elif self.alignment == "root":
            aligned_pred, aligned_target = relative_pred, relative_target
        else:
            aligned_pred, aligned_target = pred, target

        if self.joints is not None:
            index = torch.tensor(self.joints, device=pred.device)
            valid = valid[:, index]
            relative_pred, relative_target = relative_pred[:, index], relative_target[:, index]
            aligned_pred, aligned_target = aligned_pred[:, index], aligned_target[:, index]
        usable &= valid.sum(-1) >= self.min_valid_joints
        valid = valid & usable[:, None]

        if self.alignment == "centroid_and_scale":
            aligned_pred = align_centroid_and_scale(aligned_pred, aligned_target, valid)
        elif self.alignment == "procrustes":
            aligned_pred = align_procrustes(aligned_pred, aligned_target, valid)
        return aligned_pred, aligned_target, valid, relative_pred, relative_target

    def align(
        self, pred: Tensor, target: Tensor, valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Apply the protocol's joint selection, frame filtering and alignment.

        Args:
            pred: ``(B, 21, 3)`` predicted canonical joints in mm.
            target: ``(B, 21, 3)`` ground truth in mm (NaN allowed where ``valid`` is False).
            valid: Optional ``(B, 21)`` bool mask of annotated joints.

        Returns:
            ``(pred, target, valid)`` with ``num_joints`` joints each; ``valid`` is all False on skipped frames.
        """
        aligned_pred, aligned_target, valid, _, _ = self._apply(pred, target, valid)
        return aligned_pred, aligned_target, valid

    def relative(
        self, pred: Tensor, target: Tensor, valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The inputs of N-MPJPE and PA-MPJPE: selected joints, root-relative if ``root_joint`` is set.

        Frames are filtered exactly as in :meth:`align`.

        Args:
            pred: ``(B, 21, 3)`` predicted canonical joints in mm.
            target: ``(B, 21, 3)`` ground truth in mm.
            valid: Optional ``(B, 21)`` bool mask of annotated joints.

        Returns:
            ``(pred, target, valid)`` with ``num_joints`` joints each.
        """
        _, _, valid, relative_pred, relative_target = self._apply(pred, target, valid)
        return relative_pred, relative_target, valid

    def metric(self, **kwargs: Any) -> ProtocolMetric:
        """A fresh :class:`ProtocolMetric` for this protocol (``kwargs`` go to torchmetrics' ``Metric``)."""
        return ProtocolMetric(self, **kwargs)

    def evaluate(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> dict[str, Any]:
        """Evaluate a whole set of predictions at once.

        Args:
            pred: ``(B, 21, 3)`` predicted canonical joints in mm.
            target: ``(B, 21, 3)`` ground truth in mm.
            valid: Optional ``(B, 21)`` bool mask of annotated joints.

        Returns:
            Plain Python values: the floats ``mpjpe``, ``epe_mean``, ``n_mpjpe``, ``pa_mpjpe``, ``auc``, the
            ints ``num_frames`` and ``num_skipped``, and the lists ``pck_curve``, ``thresholds`` and
            ``per_joint_epe`` (see :meth:`ProtocolMetric.compute`).
        """
        metric = ProtocolMetric(self).to(pred.device)
        metric.update(pred, target, valid)
        return {key: _to_python(value) for key, value in metric.compute().items()}


def _to_python(value: Tensor) -> Any:
    if value.ndim:
        return value.tolist()
    return int(value) if not value.is_floating_point() else float(value)


class ProtocolMetric(Metric):
    """Every number of an :class:`EvalProtocol`, accumulated over batches in DDP-safe sum states.

    Args:
        protocol: An :class:`EvalProtocol` or a registered name (see :data:`PROTOCOLS`).
        **kwargs: Passed to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``...).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    # Sum states (``add_state``) and the threshold buffer, declared for type checkers.
    error_sum: Tensor
    n_error_sum: Tensor
    pa_error_sum: Tensor
    error_count: Tensor
    n_count: Tensor
    pa_count: Tensor
    frames_seen: Tensor
    frames_evaluated: Tensor
    joint_error_sum: Tensor
    joint_count: Tensor
    hits: Tensor
    thresholds: Tensor

    def __init__(self, protocol: str | EvalProtocol, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        num_joints, num_thresholds = self.protocol.num_joints, self.protocol.auc_steps
        self.register_buffer("thresholds", self.protocol.thresholds, persistent=False)
        f64, i64 = torch.float64, torch.long
        for name in ("error_sum", "n_error_sum", "pa_error_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")
        for name in ("error_count", "n_count", "pa_count", "frames_seen", "frames_evaluated"):
            self.add_state(name, default=torch.tensor(0, dtype=i64), dist_reduce_fx="sum")
        self.add_state("joint_error_sum", default=torch.zeros(num_joints, dtype=f64), dist_reduce_fx="sum")
        self.add_state("joint_count", default=torch.zeros(num_joints, dtype=i64), dist_reduce_fx="sum")
        self.add_state(
            "hits", default=torch.zeros(num_joints, num_thresholds, dtype=i64), dist_reduce_fx="sum"
        )

    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Accumulate a batch of ``(B, 21, 3)`` predictions and targets in mm, with optional ``valid (B, 21)``."""
        aligned_pred, aligned_target, valid, relative_pred, relative_target = self.protocol._apply(
            pred, target, valid
        )
        errors = joint_errors(aligned_pred, aligned_target)
        total, count = error_sum_and_count(errors, valid)
        self.error_sum += total.to(torch.float64)
        self.error_count += count
        self.joint_error_sum += torch.where(valid, errors, torch.zeros_like(errors)).sum(0).to(torch.float64)
        hits, joint_count = pck_hits(errors, valid, self.thresholds)
        self.hits += hits
        self.joint_count += joint_count

        n_errors = joint_errors(align_scale(relative_pred, relative_target, valid), relative_target)
        total, count = error_sum_and_count(n_errors, valid)
        self.n_error_sum += total.to(torch.float64)
        self.n_count += count
        pa_valid = procrustes_valid(valid)
        pa_errors = joint_errors(align_procrustes(relative_pred, relative_target, valid), relative_target)
        total, count = error_sum_and_count(pa_errors, pa_valid)
        self.pa_error_sum += total.to(torch.float64)
        self.pa_count += count

        self.frames_seen += valid.shape[0]
        self.frames_evaluated += valid.any(-1).sum()

    def compute(self) -> dict[str, Tensor]:
        """All results as tensors.

        Returns:
            ``mpjpe`` (mean error over all evaluated joints after alignment, mm), ``epe_mean`` (EvalUtil's mean
            of per-keypoint mean errors), ``per_joint_epe`` (``(J,)``, NaN for joints without data),
            ``n_mpjpe``, ``pa_mpjpe`` (frames with fewer than 3 valid joints left out), ``auc``, ``pck_curve``
            ``(T,)``, ``thresholds`` ``(T,)`` in mm, ``num_frames`` (evaluated) and ``num_skipped``.
        """
        per_joint = self.joint_error_sum / self.joint_count.to(torch.float64)
        has_data = self.joint_count > 0
        curve, auc = pck_from_hits(self.hits, self.joint_count, self.thresholds)
        return {
            "mpjpe": self.error_sum / self.error_count,
            "epe_mean": per_joint[has_data].mean()
            if bool(has_data.any())
            else per_joint.new_tensor(float("nan")),
            "per_joint_epe": per_joint,
            "n_mpjpe": self.n_error_sum / self.n_count,
            "pa_mpjpe": self.pa_error_sum / self.pa_count,
            "auc": auc,
            "pck_curve": curve,
            "thresholds": self.thresholds.clone(),
            "num_frames": self.frames_evaluated.clone(),
            "num_skipped": self.frames_seen - self.frames_evaluated,
        }


PROTOCOLS: dict[str, EvalProtocol] = {
    "stb": EvalProtocol(
        name="stb",
        root_joint=ROOT,
        alignment="root_and_scale",
        reference_bone=REFERENCE_BONE,
        auc_low=20.0,
        auc_high=50.0,
        auc_steps=20,
        citation=(
            "STB (Zhang et al. 2017): root-relative, prediction scaled to the ground-truth middle MCP-PIP bone as "
            "in hand3d eval_full.py (Zimmermann & Brox 2017, root = keypoint 0, STB's palm centre); AUC over "
            "20-50 mm with 20 thresholds as in bihand run.py get_measures(20, 50, 20). Variants: hand3d takes "
            "the 0-50 mm grid's thresholds[8:]; Minimal-Hand uses root_joint=9, reference_bone=(0, 9), "
            "auc_steps=15."
        ),
    ),
    "dexter_object": EvalProtocol(
        name="dexter_object",
        root_joint=None,
        alignment="centroid_and_scale",
        joints=TIPS,
        auc_low=20.0,
        auc_high=50.0,
        auc_steps=15,
        min_valid_joints=2,
        citation=(
            "Dexter+Object (Sridhar et al. 2016) as evaluated by Minimal-Hand (utils/align.py, train_detnet.py): "
            "fingertips only, unannotated tips dropped, frames with fewer than 2 tips skipped, centroid and "
            "mean-spread alignment, AUC get_measures(20, 50, 15) in mm. The papers' own protocols were not "
            "checked; do not claim paper-comparable numbers without checking."
        ),
    ),
    "rhd": EvalProtocol(
        name="rhd",
        root_joint=ROOT,
        alignment="procrustes",
        auc_low=0.0,
        auc_high=50.0,
        auc_steps=20,
        min_valid_joints=MIN_PROCRUSTES_JOINTS,
        citation=(
            "RHD (Zimmermann & Brox 2017): 0-50 mm grid with 20 thresholds as in hand3d eval3d.py "
            "get_measures(0.0, 0.050, 20). hand3d aligns root-relative, scale-normalised poses instead of "
            "Procrustes; for that variant use alignment='root_and_scale', reference_bone=(9, 10). Later 3D work "
            "quotes AUC over 20-50 mm (bihand)."
        ),
    ),
    "freihand": EvalProtocol(
        name="freihand",
        root_joint=ROOT,
        alignment="procrustes",
        auc_low=0.0,
        auc_high=50.0,
        auc_steps=100,
        min_valid_joints=MIN_PROCRUSTES_JOINTS,
        citation=(
            "FreiHAND (Zimmermann et al. 2019) eval.py: Procrustes-aligned keypoint error and AUC over "
            "get_measures(0.0, 0.05, 100), i.e. 0-50 mm with 100 thresholds. eval.py's align_w_scale uses "
            "scipy's orthogonal_procrustes, which allows reflections; handssl does not."
        ),
    ),
    "synthhands": EvalProtocol(
        name="synthhands",
        root_joint=ROOT,
        alignment="root",
        auc_low=20.0,
        auc_high=50.0,
        auc_steps=20,
        citation=(
            "handssl's SynthHands protocol: wrist-relative 3D error without scale alignment, AUC over 20-50 mm "
            "with 20 thresholds (the common STB/RHD grid), plus N-MPJPE (Rhodin et al. 2018) and PA-MPJPE."
        ),
    ),
}
"""The named protocols, keyed by name."""


def get_protocol(name: str | EvalProtocol, **overrides: Any) -> EvalProtocol:
    """Look up a named protocol (or take one), with fields optionally overridden.

    Args:
        name: A key of :data:`PROTOCOLS` or an :class:`EvalProtocol`.
        **overrides: Fields to replace, e.g. ``auc_steps=15`` or ``root_joint=9``.

    Returns:
        The (new, validated) protocol.

    Raises:
        ValueError: The name is unknown, or an override names no field or has a bad value.
    """
    if isinstance(name, EvalProtocol):
        protocol = name
    elif name in PROTOCOLS:
        protocol = PROTOCOLS[name]
    else:
        raise ValueError(f"unknown evaluation protocol {name!r}; valid names: {', '.join(sorted(PROTOCOLS))}")
    if not overrides:
        return protocol
    fields = [f.name for f in dataclasses.fields(EvalProtocol)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"EvalProtocol has no field(s) {unknown}; fields are {fields}")
    return dataclasses.replace(protocol, **overrides)
