"""SemiHand's option groups: the teacher's moving average, the losses, the pseudo-labels and their schedule.

:class:`~handssl.models.SemiHandModule` takes ``ema`` (:class:`EMAOptions`), ``loss`` (:class:`PoseLossOptions`),
``pseudo_labels`` (:class:`PseudoLabelOptions`), ``correction`` (:class:`CorrectionOptions`), ``consistency``
(:class:`ConsistencyOptions`) and ``unsupervised`` (:class:`UnsupervisedSchedule`), each a mapping in YAML
(``correction: {enabled: false}``) whose keys left out keep their defaults. The flat arguments they replaced
(``use_correction``, ``threshold``, ...) are listed in :data:`handssl.models.options.FLAT_ARGUMENTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from handssl.models.option_group import OptionGroup, check

__all__ = [
    "ConsistencyOptions",
    "CorrectionOptions",
    "EMAOptions",
    "PoseLossOptions",
    "PseudoLabelOptions",
    "UnsupervisedSchedule",
]

LIFTINGS = ("known", "predicted")


@dataclass(frozen=True)
class EMAOptions(OptionGroup):
    """The mean teacher's exponential moving average (SemiHand's ``ema`` group).

    Args:
        decay: Teacher momentum ``m`` in ``teacher = m teacher + (1 - m) student``, in [0, 1].
        warmup: Use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (fast early tracking).
        buffer_mode: ``"ema"`` or ``"copy"`` for BatchNorm statistics (see :mod:`~handssl.models.components.ema`).
    """

    argument: ClassVar[str] = "ema"

    decay: float = 0.999
    warmup: bool = True
    buffer_mode: Literal["ema", "copy"] = "ema"

    def __post_init__(self) -> None:
        check(0.0 <= self.decay <= 1.0, "ema.decay", "must be in [0, 1]", self.decay)
        mode = self.buffer_mode
        check(mode in ("ema", "copy"), "ema.buffer_mode", "must be 'ema' or 'copy'", mode)


@dataclass(frozen=True)
class PoseLossOptions(OptionGroup):
    """How SemiHand measures a pose error, and the heads' supervised terms (its ``loss`` group).

    Args:
        norm: ``"l1"`` (absolute errors, Sun et al.'s integral loss) or ``"l2"`` (the paper's squared distance)
            for ``L_sup``, the pseudo-label loss and the pose consistency (the pseudo-labels' spread ``C``
            stays the paper's squared one).
        depth_weight: ``lambda_d`` of the relative depth in every pose distance and in ``C`` (50 in the paper;
            ``sqrt`` of it under ``"l1"``).
        heatmap_weight: Weight of the Gaussian heatmap loss on labels and accepted pseudo-labels (0: integral
            regression alone, as the paper).
        heatmap_sigma: Standard deviation of its target Gaussians, in heatmap cells.
        mask_weight: ``lambda_w`` of the supervised mask L1 (100 in the paper).
        use_mask: Train the mask head and use the mask terms of the consistency.
    """

    argument: ClassVar[str] = "loss"

    norm: Literal["l1", "l2"] = "l1"
    depth_weight: float = 50.0
    heatmap_weight: float = 1.0
    heatmap_sigma: float = 1.0
    mask_weight: float = 100.0
    use_mask: bool = True

    def __post_init__(self) -> None:
        check(self.norm in ("l1", "l2"), "loss.norm", "must be 'l1' or 'l2'", self.norm)
        check(self.depth_weight >= 0, "loss.depth_weight", "must be >= 0", self.depth_weight)
        check(self.heatmap_weight >= 0, "loss.heatmap_weight", "must be >= 0", self.heatmap_weight)
        check(self.heatmap_sigma > 0, "loss.heatmap_sigma", "must be positive", self.heatmap_sigma)
        check(self.mask_weight >= 0, "loss.mask_weight", "must be >= 0", self.mask_weight)


@dataclass(frozen=True)
class PseudoLabelOptions(OptionGroup):
    """The confidence-gated pseudo-label loss ``1(C <= tau) l(p, p_hat)`` (SemiHand's ``pseudo_labels`` group).

    Args:
        enabled: Train on the gated pseudo-labels.
        weight: Weight of the gated loss (and, times ``loss.heatmap_weight``, of its heatmap term).
        threshold: A fixed ``tau`` on the spread ``C`` (the paper's 1.5, in
            :class:`~handssl.models.components.pseudo_labels.PseudoLabeler`'s units; ``inf`` accepts all).
            ``None``: gate by ``accept_fraction``.
        accept_fraction: With ``threshold: null``, accept the most confident this fraction of each batch
            (of the whole set in ``mode: rounds``).
        lifting: 2.5D -> 3D of the pseudo-labels before their correction: ``"predicted"`` root depth and
            scale, or the annotated (``"known"``: privileged).
    """

    argument: ClassVar[str] = "pseudo_labels"

    enabled: bool = True
    weight: float = 1.0
    threshold: float | None = None
    accept_fraction: float = 0.3
    lifting: Literal["known", "predicted"] = "predicted"

    def __post_init__(self) -> None:
        check(self.weight >= 0, "pseudo_labels.weight", "must be >= 0", self.weight)
        threshold = self.threshold
        check(
            threshold is None or threshold >= 0, "pseudo_labels.threshold", "must be >= 0 or null", threshold
        )
        fraction = self.accept_fraction
        check(0.0 <= fraction <= 1.0, "pseudo_labels.accept_fraction", "must be in [0, 1]", fraction)
        lifting = self.lifting
        check(lifting in LIFTINGS, "pseudo_labels.lifting", "must be 'known' or 'predicted'", lifting)


@dataclass(frozen=True)
class CorrectionOptions(OptionGroup):
    """The biomechanical correction of the pseudo-labels and Eq. 6's ``l(r, p)`` (SemiHand's ``correction`` group).

    Args:
        enabled: Correct the pseudo-labels (part of their average), and pull the prediction towards the
            corrected label ``r``.
        weight: Weight of Eq. 6's ungated ``l(r, p)`` (0 disables it, not the correction inside the labels).
        template: Bone lengths the correction fits: ``"mean"`` (the labelled hands'), ``"subject"``
            (privileged, the paper's assumption) or ``"none"`` (see :mod:`~handssl.models.components.hand_template`).
        ray_tol_px: Correct joints whose views agree to this many 64-px pixels along their rays (``None``: in 3D).
        max_mm: Refuse pseudo-labels whose correction moves them more than this (mean per joint, mm;
            ``None``: never).
        mirror_check: Refuse pseudo-labels whose depth-mirrored pose is more plausible.
    """

    argument: ClassVar[str] = "correction"

    enabled: bool = True
    weight: float = 1.0
    template: Literal["mean", "subject", "none"] = "mean"
    ray_tol_px: float | None = 1.0
    max_mm: float | None = 40.0
    mirror_check: bool = True

    def __post_init__(self) -> None:
        check(self.weight >= 0, "correction.weight", "must be >= 0", self.weight)
        templates = ("mean", "subject", "none")
        check(self.template in templates, "correction.template", f"must be one of {templates}", self.template)
        tol, limit = self.ray_tol_px, self.max_mm
        check(tol is None or tol >= 0, "correction.ray_tol_px", "must be >= 0 or null", tol)
        check(limit is None or limit > 0, "correction.max_mm", "must be positive or null", limit)


@dataclass(frozen=True)
class ConsistencyOptions(OptionGroup):
    """View and cross-modal consistency ``lambda_c (L_vc + L_cc)`` (SemiHand's ``consistency`` group).

    Args:
        enabled: Pose and mask equivariance under a perturbation, and the cross-modal pose <-> mask term.
        weight: ``lambda_c`` (0.1 in the paper).
        cross_modal_weight: Weight of ``L_cc`` inside ``L_cons`` (0 disables it).
        cross_modal_size: Resolution of the cross-modal comparison (``None``: full).
        capsule_finger_fraction: Finger capsule radius of ``L_cc``'s rendered pose, a fraction of the image side.
        capsule_palm_fraction: Palm capsule radius, a fraction of the image side.
    """

    argument: ClassVar[str] = "consistency"

    enabled: bool = True
    weight: float = 0.1
    cross_modal_weight: float = 1.0
    cross_modal_size: int | None = 32
    capsule_finger_fraction: float = 0.035
    capsule_palm_fraction: float = 0.05

    def __post_init__(self) -> None:
        check(self.weight >= 0, "consistency.weight", "must be >= 0", self.weight)
        weight, size = self.cross_modal_weight, self.cross_modal_size
        check(weight >= 0, "consistency.cross_modal_weight", "must be >= 0", weight)
        check(size is None or size > 0, "consistency.cross_modal_size", "must be positive or null", size)
        for key in ("capsule_finger_fraction", "capsule_palm_fraction"):
            value = getattr(self, key)
            check(0 < value < 1, f"consistency.{key}", "must be in (0, 1)", value)


@dataclass(frozen=True)
class UnsupervisedSchedule(OptionGroup):
    """When SemiHand's unsupervised losses start (its ``unsupervised`` group).

    Args:
        start_step: Labelled-only steps first (source pre-training; 0 from a source-only checkpoint).
        ramp_steps: Linear ramp of the unsupervised weights after the start (0: full weight at once).
    """

    argument: ClassVar[str] = "unsupervised"

    start_step: int = 0
    ramp_steps: int = 0

    def __post_init__(self) -> None:
        check(self.start_step >= 0, "unsupervised.start_step", "must be >= 0", self.start_step)
        check(self.ramp_steps >= 0, "unsupervised.ramp_steps", "must be >= 0", self.ramp_steps)

    def weight(self, step: int) -> float:
        """Weight of the unsupervised losses at ``step``: 0 before the start, then a linear ramp to 1."""
        if step < self.start_step:
            return 0.0
        return 1.0 if self.ramp_steps <= 0 else min(1.0, (step - self.start_step + 1) / self.ramp_steps)


#: SemiHandModule's groups (``optimizer`` is the base task's).
SEMIHAND_OPTION_GROUPS: tuple[type[OptionGroup], ...] = (
    EMAOptions,
    PoseLossOptions,
    PseudoLabelOptions,
    CorrectionOptions,
    ConsistencyOptions,
    UnsupervisedSchedule,
)
