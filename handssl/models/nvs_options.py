"""NVSModule's option groups: its networks, the training pairs, the synthesis loss, the latent terms and the pose.

:class:`~handssl.models.NVSModule` takes ``encoder`` (:class:`EncoderOptions`), ``decoder``
(:class:`DecoderOptions`), ``pairs`` (:class:`PairOptions`), ``synthesis`` (:class:`SynthesisOptions`),
``geometry`` (:class:`GeometryOptions`), ``pose_head`` (:class:`PoseHeadOptions`) and ``pose``
(:class:`PoseOptions`), each a mapping in YAML (``decoder: {splat: true}``) whose keys left out keep their
defaults; it keeps them together as ``module.options`` (:class:`NVSOptions`). The flat arguments they replaced
(``decoder_splat``, ``pose_weight``, ...) are listed in :data:`handssl.models.options.FLAT_ARGUMENTS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from handssl.models.components.nvs_geometry import LATENT_WEIGHTS
from handssl.models.option_group import OptionGroup, check, task_default

__all__ = [
    "DecoderOptions",
    "EncoderOptions",
    "GeometryOptions",
    "NVSOptions",
    "PairOptions",
    "PoseHeadOptions",
    "PoseOptions",
    "SynthesisOptions",
]

POINT_HEADS = ("linear", "pixel_aligned")
STRUCTURAL = ("ssim", "gradient", "none")


def _sizes(group: OptionGroup, key: str) -> None:
    """Check that ``group.<key>`` holds positive sizes and keep them as a tuple (a YAML file gives a list)."""
    sizes = tuple(getattr(group, key))
    check(
        len(sizes) > 0 and all(size > 0 for size in sizes),
        f"{group.argument}.{key}",
        "must be positive sizes",
        sizes,
    )
    object.__setattr__(group, key, sizes)  # frozen: set once, here


@dataclass(frozen=True)
class EncoderOptions(OptionGroup):
    """The encoder from an image to ``L3D`` and the appearance vector (NVSModule's ``encoder`` group).

    Args:
        widths: Channels of the encoder's ResNet stages.
        blocks: Basic blocks per stage (one per width).
        point_head: ``"linear"`` (Rhodin et al.) or ``"pixel_aligned"``: one point per stride-4 cell, moved and
            given a depth by a small convolutional head (``num_points = (image_size / 4)^2``; see
            :class:`~handssl.models.components.nvs.NVSEncoder`).
        opacity: With ``"pixel_aligned"``: each point also gets an opacity (which cells show the hand), trained
            by ``geometry.opacity_weight``; the splat and the point-silhouette terms then count the hand's points.
        depth_samples: With ``"pixel_aligned"``: points per cell along its ray, each a predicted step behind the
            one before (``num_points = depth_samples x (image_size / 4)^2``): the hand's volume, not only its
            visible surface.
    """

    argument: ClassVar[str] = "encoder"

    widths: Sequence[int] = (16, 32, 64, 128)
    blocks: Sequence[int] = (1, 1, 1, 1)
    point_head: Literal["linear", "pixel_aligned"] = "linear"
    opacity: bool = False
    depth_samples: int = 1

    def __post_init__(self) -> None:
        _sizes(self, "widths")
        _sizes(self, "blocks")
        blocks = self.blocks
        check(len(blocks) == len(self.widths), "encoder.blocks", "must name one count per width", blocks)
        head = self.point_head
        check(head in POINT_HEADS, "encoder.point_head", "must be 'linear' or 'pixel_aligned'", head)
        check(self.depth_samples >= 1, "encoder.depth_samples", "must be >= 1", self.depth_samples)
        if self.depth_samples > 1 and head != "pixel_aligned":
            raise ValueError(
                "encoder.depth_samples places points along each cell's ray: set encoder.point_head pixel_aligned"
            )
        if self.opacity and head != "pixel_aligned":
            raise ValueError(
                "encoder.opacity marks the hand's stride-4 cells: set encoder.point_head pixel_aligned"
            )


@dataclass(frozen=True)
class DecoderOptions(OptionGroup):
    """The decoder that renders the rotated ``L3D`` (NVSModule's ``decoder`` group).

    Args:
        widths: Channels of the up-blocks (each doubles the resolution).
        latent_channels: Channels of the map ``L3D`` is lifted to at the lowest resolution.
        dropout: Dropout on the lifted latent (Rhodin et al.: 0.3).
        normalize_mask: Divide each predicted mask by its maximum (NSD's ``scale_mask_max_to_1``).
        splat: Also give the decoder the rotated points' splats (:func:`~handssl.models.components.nvs.splat_points`).
        mask_from_points: Gate the mask by the splat's coverage, so that the hand is drawn only where the rotated
            points project (needs ``splat``; see :class:`~handssl.models.components.nvs.NVSDecoder`).
    """

    argument: ClassVar[str] = "decoder"

    widths: Sequence[int] = (64, 32, 16)
    latent_channels: int = 16
    dropout: float = 0.3
    normalize_mask: bool = True
    splat: bool = False
    mask_from_points: bool = False

    def __post_init__(self) -> None:
        _sizes(self, "widths")
        channels, dropout = self.latent_channels, self.dropout
        check(channels > 0, "decoder.latent_channels", "must be positive", channels)
        check(0.0 <= dropout <= 1.0, "decoder.dropout", "must be in [0, 1]", dropout)
        if self.mask_from_points and not self.splat:
            raise ValueError(
                "decoder.mask_from_points gates the mask by the points' splat: set decoder.splat too"
            )


@dataclass(frozen=True)
class PairOptions(OptionGroup):
    """What a training step renders from a pair of views (NVSModule's ``pairs`` group).

    Args:
        swap_probability: Chance that a training direction renders the other view rather than auto-encoding
            (Rhodin et al.: 1/2; 0.8 wastes less of the decoder on auto-encoding).
        appearance_swap: Take the appearance vector from the appearance images (``image_t2``, ``image_t2_j``).
        both_directions: Render ``j -> i`` as well as ``i -> j`` (Rhodin et al. render every encoded view).
    """

    argument: ClassVar[str] = "pairs"

    swap_probability: float = 0.8
    appearance_swap: bool = True
    both_directions: bool = True

    def __post_init__(self) -> None:
        swap = self.swap_probability
        check(0.0 <= swap <= 1.0, "pairs.swap_probability", "must be in [0, 1]", swap)


@dataclass(frozen=True)
class SynthesisOptions(OptionGroup):
    """The synthesis loss on the rendered view, and the label-free silhouette (NVSModule's ``synthesis`` group).

    Args:
        l1_weight: Weight of the pixel L1 loss.
        structural: ``"ssim"``, ``"gradient"`` or ``"none"``. ``"none"`` by measurement: at 1 labelled subject
            SSIM left the test N-MPJPE unchanged (68.5 against 68.4 mm), made the synthesized hand pixels worse
            (L1 0.152 against 0.139) and steps 14 % slower.
        structural_weight: Weight of the structural loss.
        perceptual_checkpoint: Optional ResNet-18 state dict on disk for a perceptual loss (never downloaded).
        perceptual_weight: Weight of the perceptual loss (Rhodin et al.: 2).
        foreground_weight: Weight of the L1 over the target's silhouette pixels (hand-normalised L1).
        silhouette_weight: Weight of the BCE between the predicted mask and the label-free silhouette.
        silhouette_threshold: Background-subtraction threshold of the silhouette, ``|I - bg| > t`` (0.02 for the
            clean ``"synthetic"`` SynthHands style; about 0.15 for the noisy ``"real"`` styles). The latent terms
            (``geometry``) and the evaluation's hand pixels use the same silhouette.
        items: Semi regime: the items the synthesis loss covers. ``"all"``; or ``"unlabeled"``, so that the
            labelled subjects, which the batch sampler puts into ``labeled_share`` of every batch, weigh no more
            in the synthesis loss than in stage 1 of the pretrained regime.
    """

    argument: ClassVar[str] = "synthesis"

    l1_weight: float = 1.0
    structural: Literal["ssim", "gradient", "none"] = "none"
    structural_weight: float = 1.0
    perceptual_checkpoint: str | None = None
    perceptual_weight: float = 2.0
    foreground_weight: float = 1.0
    silhouette_weight: float = 1.0
    silhouette_threshold: float = 0.02
    items: Literal["all", "unlabeled"] = "all"

    def __post_init__(self) -> None:
        structural = self.structural
        check(structural in STRUCTURAL, "synthesis.structural", f"must be one of {STRUCTURAL}", structural)
        check(
            self.items in ("all", "unlabeled"), "synthesis.items", "must be 'all' or 'unlabeled'", self.items
        )
        for key in (
            "l1_weight",
            "structural_weight",
            "perceptual_weight",
            "foreground_weight",
            "silhouette_weight",
        ):
            value = getattr(self, key)
            check(value >= 0, f"synthesis.{key}", "must be >= 0", value)
        threshold = self.silhouette_threshold
        check(threshold >= 0, "synthesis.silhouette_threshold", "must be >= 0", threshold)


@dataclass(frozen=True)
class GeometryOptions(OptionGroup):
    """Label-free terms on the 3D latent itself (NVSModule's ``geometry`` group; 0 turns a term off).

    See :mod:`~handssl.models.components.nvs_geometry`; the silhouette is ``synthesis.silhouette_threshold``'s.

    Args:
        equivariance_weight: Weight of :func:`~handssl.models.components.nvs_losses.latent_equivariance`,
            ``|R_ij L_i - L_j|^2`` over the pair's two encoded views (needs ``pairs.both_directions``): a direct
            signal that rotating the latent by ``R_ij`` gives the other view's latent (a departure from Rhodin et
            al., who check the rotation only through the decoder's output).
        point_silhouette_weight: Weight of the rotated points' projected Chamfer distance to the rendered view's
            silhouette (wants the world's ``crop: fixed``).
        own_view_weight: Weight of the same distance for each encoded view's un-rotated points to its own
            silhouette, every step: it pins where the points lie in their own image, so the other views move
            their depth.
        side: Cells per side of the pooled silhouette the point terms compare with (16 at 64 px: a cell of
            15 mm in a 240 mm fixed crop, about a finger's width).
        opacity_weight: Weight of the binary cross-entropy between each encoded view's point opacities and its
            own silhouette's cells (needs ``encoder.opacity``).
        hull_weight: Weight of the point-silhouette distance of each encoded view's points rotated into each of
            the frame's further views (a visual hull; needs training items of more than two views, the data's
            ``multi_view_arguments: {train: {num_views: 4}}``).
    """

    argument: ClassVar[str] = "geometry"

    equivariance_weight: float = 0.0
    point_silhouette_weight: float = 0.0
    own_view_weight: float = 0.0
    side: int = 16
    opacity_weight: float = 0.0
    hull_weight: float = 0.0

    def __post_init__(self) -> None:
        for key in LATENT_WEIGHTS:
            value = getattr(self, key)
            check(value >= 0, f"geometry.{key}", "must be >= 0", value)
        check(self.side >= 2, "geometry.side", "must be >= 2", self.side)


@dataclass(frozen=True)
class PoseHeadOptions(OptionGroup):
    """The MLP from ``L3D`` to the joints (NVSModule's ``pose_head`` group).

    Args:
        hidden: Hidden sizes (Rhodin et al.: two of 2048; 512-512 gave the same supervised N-MPJPE at 1 labelled
            subject, 75.3 against 75.0 mm, in a network small enough to ship).
        dropout: Dropout after each hidden layer (Rhodin et al.: 0.5).
        rows: The rows the head runs on in training: ``"labeled"``, so that its BatchNorm statistics come from
            the rows its loss counts, or ``"all"`` (every encoded image, the unlabelled ones only shifting the
            statistics; semi's MPJPE 88.8 against its N-MPJPE 66.1 at 1 labelled subject showed the train/eval
            mismatch). All rows when fewer than two are labelled (BatchNorm needs two).
    """

    argument: ClassVar[str] = "pose_head"

    hidden: Sequence[int] = (512, 512)
    dropout: float = 0.5
    rows: Literal["labeled", "all"] = "labeled"

    def __post_init__(self) -> None:
        _sizes(self, "hidden")
        check(0.0 <= self.dropout <= 1.0, "pose_head.dropout", "must be in [0, 1]", self.dropout)
        check(self.rows in ("labeled", "all"), "pose_head.rows", "must be 'labeled' or 'all'", self.rows)


@dataclass(frozen=True)
class PoseOptions(OptionGroup):
    """What the pose loss covers and, in the semi regime, how it joins the synthesis loss (``pose`` group).

    Args:
        weight: Semi regime: weight of the pose loss next to the synthesis loss. With AdamW it only sets how
            hard the pose loss pulls the shared encoder (:meth:`~handssl.models.NVSModule.encoder_gradient_norms`
            measures that).
        gradient_ratio: Semi regime: when set, ``weight`` is re-measured every 50 steps so that the encoder's
            pose gradient is this share of its synthesis gradient
            (:class:`~handssl.models.components.gradient_balance.PoseGradientBalance`); ``weight`` then holds for
            the first 50 steps only.
        start_step: Semi regime: the optimizer step the pose loss joins at (synthesis only before).
        views: ``"all"``: the pose loss covers every encoded image with visible labels (views i and j, and the
            appearance images when the batch has ``joints3d_t2``); ``"input"``: view i only.
    """

    argument: ClassVar[str] = "pose"

    weight: float = 0.01
    gradient_ratio: float | None = None
    start_step: int = 0
    views: Literal["input", "all"] = "all"

    def __post_init__(self) -> None:
        check(self.weight >= 0, "pose.weight", "must be >= 0", self.weight)
        ratio = self.gradient_ratio
        check(ratio is None or ratio > 0, "pose.gradient_ratio", "must be > 0 or null", ratio)
        check(self.start_step >= 0, "pose.start_step", "must be >= 0", self.start_step)
        check(self.views in ("input", "all"), "pose.views", "must be 'input' or 'all'", self.views)


@dataclass(frozen=True)
class NVSOptions:
    """NVSModule's option groups, as the module keeps them (``module.options.decoder.splat``).

    Checks the options of two groups that must agree when it is made.
    """

    encoder: EncoderOptions
    decoder: DecoderOptions
    pairs: PairOptions
    synthesis: SynthesisOptions
    geometry: GeometryOptions
    pose_head: PoseHeadOptions
    pose: PoseOptions

    def __post_init__(self) -> None:
        if self.geometry.equivariance_weight > 0 and not self.pairs.both_directions:
            raise ValueError(
                "geometry.equivariance_weight > 0 compares both views' latents: set pairs.both_directions"
            )
        if self.geometry.opacity_weight > 0 and not self.encoder.opacity:
            raise ValueError("geometry.opacity_weight > 0 trains the points' opacities: set encoder.opacity")

    @classmethod
    def of(cls, task: type, **groups: Any) -> NVSOptions:
        """The groups ``task`` was given, as groups.

        Each is a group or a mapping (a checkpoint's hparams give one), which keeps ``task``'s defaults for the
        keys it leaves out (:meth:`~handssl.models.option_group.OptionGroup.of`).
        """
        return cls(
            **{name: _GROUPS[name].of(value, task_default(task, name)) for name, value in groups.items()}
        )


#: NVSModule's groups, in the order of its signature (``optimizer`` is the base task's).
NVS_OPTION_GROUPS: tuple[type[Any], ...] = (
    EncoderOptions,
    DecoderOptions,
    PairOptions,
    SynthesisOptions,
    GeometryOptions,
    PoseHeadOptions,
    PoseOptions,
)
_GROUPS: dict[str, type[Any]] = {group.argument: group for group in NVS_OPTION_GROUPS}
"""NVSModule's option groups by argument."""
