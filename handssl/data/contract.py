"""The data contract: every key a sample or a batch may hold, with its dtype, shape and units, in one place.

Conventions of every key: 3D in millimetres, 2D in pixels of the image that travels with them (pixel centres
at integer coordinates), OpenCV cameras (``x_cam = R @ x_world + t``, ``K`` 3x3), joints in the 21-joint
canonical order of :mod:`handssl.skeleton` (0 wrist, then each finger base to tip). Missing annotations are
NaN with ``valid`` False.

**Two representations, one conversion point.** A per-sample pipeline works on *raw* samples: numpy arrays
in image layout (``H x W x C`` images, ``H x W`` masks), as the loaders read them and as OpenCV and
albumentations want them (:class:`~handssl.data.base.HandDataset.load_sample`, mirroring, the crop of
:class:`~handssl.data.transforms.CropResize`, :func:`~handssl.data.augment.augment_sample`). Its last step
is :func:`pack_sample`, the one place where numpy becomes torch (as mmpose's ``PackPoseInputs``): images to
``float32 C x H x W`` in ``[0, 1]``, masks and depth to ``1 x H x W``, floats to ``float32``. Downstream of it
(collate, models, callbacks) everything is a tensor.

SynthHands is the one producer of *packed* samples: it renders with torch (also on the training device,
``render_on="device"``) at the network's input size, so its samples are already in the packed layout.
:func:`unpack_sample` is the inverse of :func:`pack_sample`, used only where such a sample must go through
albumentations (the SemiHand views).

:data:`FIELDS` documents every key once (packed dtype and shape, raw layout, meaning and units). The
``TypedDict`` classes below say which keys each kind of item holds: :class:`HandSample` (one view),
:class:`MultiViewItem` (stacked views of one frame), :class:`MultiViewPair` (a novel-view-synthesis training
pair), :class:`SemiLabeledSample` / :class:`SemiUnlabeledSample` (SemiHand's two views) and their batches.
A batch (:func:`~handssl.data.datamodules.collate_samples`) stacks every tensor along a new leading axis
``B`` and turns ``meta`` into a dict of lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FIELDS",
    "Field",
    "HandBatch",
    "HandSample",
    "Meta",
    "MultiViewBatch",
    "MultiViewItem",
    "MultiViewPair",
    "SemiBatch",
    "SemiLabeledSample",
    "SemiUnlabeledSample",
    "check_packed",
    "float_image",
    "float_map",
    "is_packed",
    "pack_sample",
    "unpack_sample",
]


@dataclass(frozen=True)
class Field:
    """One key of the contract.

    Attributes:
        dtype: Packed dtype (``"float32"``, ``"bool"``, ``"int64"``; ``"dict"`` for ``meta``).
        shape: Packed shape of one sample (``None`` for a size that varies); multi-view items prepend ``V``,
            batches ``B``.
        raw: Raw (numpy, before :func:`pack_sample`) layout, where it differs from the packed one.
        doc: Meaning and units.
        kind: How :func:`pack_sample` converts it: ``"image"`` (``... x H x W x C`` -> ``... x C x H x W``,
            ``uint8`` / 255), ``"map"`` (``... x H x W`` -> ``... x 1 x H x W``), ``"array"`` (dtype only)
            or ``"meta"``.
    """

    dtype: str
    shape: tuple[int | None, ...]
    doc: str
    raw: str = ""
    kind: str = "array"


_IMAGE = "image"
_MAP = "map"
_S = None  # a side in pixels (varies)

FIELDS: dict[str, Field] = {
    # ----------------------------------------------------------------------------- every single-view sample
    "image": Field(
        "float32",
        (3, _S, _S),
        "the RGB image in [0, 1] (the network input after the crop)",
        raw="uint8 (H, W, 3), or float32 (H, W, 3) in [0, 1]",
        kind=_IMAGE,
    ),
    "joints3d": Field(
        "float32", (21, 3), "joints in the camera frame of `image`, mm; NaN where not annotated"
    ),
    "joints2d": Field("float32", (21, 2), "joints in pixels of `image`; NaN where not annotated"),
    "K": Field("float32", (3, 3), "intrinsics of `image` (crop and augmentation included)"),
    "valid": Field("bool", (21,), "joints that carry an annotation (of `joints2d`, and of `joints3d`)"),
    "meta": Field("dict", (), "free-form description of the sample, see `Meta`", kind="meta"),
    # ----------------------------------------------------------------------------- optional, dataset-specific
    "valid3d": Field(
        "bool", (21,), "joints whose 3D is annotated, where it differs from `valid` (2D-only sets)"
    ),
    "mask": Field(
        "float32",
        (1, _S, _S),
        "hand mask, 1 on the hand (SynthHands: hand and sleeve)",
        raw="uint8 (H, W) 0/1 or 0/255, or float32 (H, W)",
        kind=_MAP,
    ),
    "hand_mask": Field(
        "float32", (1, _S, _S), "skin-only hand mask, sleeve excluded (SynthHands)", raw="(H, W)", kind=_MAP
    ),
    "depth": Field(
        "float32",
        (1, _S, _S),
        "z-depth of the nearest surface, mm; 0 where nothing (SynthHands, RHD with load_depth)",
        raw="float32 (H, W)",
        kind=_MAP,
    ),
    "background": Field(
        "float32",
        (3, _S, _S),
        "the camera's static background through the same crop, [0, 1]",
        raw="uint8 (H, W, 3)",
        kind=_IMAGE,
    ),
    "R": Field("float32", (3, 3), "world-to-camera rotation (`x_cam = R @ x_world + t`)"),
    "t": Field("float32", (3,), "world-to-camera translation, mm"),
    "dist": Field(
        "float32", (5,), "OpenCV distortion [k1, k2, p1, p2, k3] of a distorted `image` (Panoptic)"
    ),
    "joints3d_world": Field("float32", (21, 3), "joints in the world frame, mm"),
    "box": Field("float32", (4,), "hand box x0, y0, x1, y1 in pixels of `image` (ImageFolder)"),
    "crop": Field("float32", (3, 3), "affine map from pixels of the original image to pixels of `image`"),
    # ----------------------------------------------------------------------------- multi-view items
    "image_t2": Field(
        "float32",
        (3, _S, _S),
        "the same camera(s) at another frame t' (appearance source of NVS)",
        kind=_IMAGE,
    ),
    "joints3d_t2": Field("float32", (21, 3), "joints of `image_t2` in its crop camera's frame, mm"),
    # ----------------------------------------------------------------------------- multi-view pairs (i -> j)
    "target": Field("float32", (3, _S, _S), "view j at t, the image to synthesise", kind=_IMAGE),
    "R_ij": Field("float32", (3, 3), "relative crop-camera rotation R_j @ R_i.T (camera i to camera j)"),
    "background_input": Field(
        "float32", (3, _S, _S), "background of view i (auto-encoding pairs composite over it)", kind=_IMAGE
    ),
    "image_t2_j": Field("float32", (3, _S, _S), "view j at t' (appearance image of view j)", kind=_IMAGE),
    "joints3d_j": Field(
        "float32", (21, 3), "labels of view j in its camera frame, mm (hidden like view i's)"
    ),
    "valid_j": Field("bool", (21,), "valid joints of view j"),
    "joints3d_t2_j": Field("float32", (21, 3), "joints of view j at t', mm"),
    "labeled": Field("bool", (), "whether this item's labels are visible"),
    "target_mask": Field("float32", (1, _S, _S), "hand mask of view j (diagnostics only)", kind=_MAP),
    "input_mask": Field("float32", (1, _S, _S), "hand mask of view i (diagnostics only)", kind=_MAP),
    "hull_images": Field(
        "float32",
        (None, 3, _S, _S),
        "the frame's further views (items of more than 2 views): their silhouettes check the latent",
        kind=_IMAGE,
    ),
    "hull_backgrounds": Field("float32", (None, 3, _S, _S), "backgrounds of `hull_images`", kind=_IMAGE),
    "R_i_hull": Field("float32", (None, 3, 3), "rotations from camera i to each of `hull_images`' cameras"),
    "R_j_hull": Field("float32", (None, 3, 3), "rotations from camera j to each of `hull_images`' cameras"),
    # ----------------------------------------------------------------------------- SemiHand views
    "has_mask": Field("bool", (), "whether `mask` is a real mask (else zeros, so batches collate)"),
    "in_bounds": Field("bool", (21,), "augmented 2D joints inside the image"),
    "transform_matrix": Field("float32", (3, 3), "augmentation: original pixels -> augmented pixels"),
    "index": Field("int64", (), "position of the item in its (concatenated) dataset"),
    "eval_joints3d": Field("float32", (21, 3), "the unlabelled set's annotation, for monitoring only, mm"),
    "eval_joints2d": Field("float32", (21, 2), "the unlabelled set's 2D annotation, for monitoring only"),
    "eval_valid": Field("bool", (21,), "valid joints of the `eval_*` annotation"),
    "image_perturbed": Field("float32", (None, 3, _S, _S), "P 'perturbation' copies of `image`", kind=_IMAGE),
    "perturb_matrix": Field("float32", (None, 3, 3), "their matrices (original -> perturbed pixels)"),
    "image_strong": Field("float32", (3, _S, _S), "one 'diversity' copy of `image`", kind=_IMAGE),
    "strong_matrix": Field("float32", (3, 3), "its matrix (original -> strong pixels)"),
    "K_strong": Field("float32", (3, 3), "intrinsics of `image_strong`"),
}
"""Every key of the contract (see :class:`Field`); the one place each key is documented."""


# ------------------------------------------------------------------------------------------------- TypedDicts


class Meta(TypedDict, total=False):
    """``meta`` of a sample (a batch holds a list per key). Only ``dataset`` and ``hand`` are always set.

    ``dataset``, ``subject``, ``sequence``, ``frame``, ``camera``: where the sample comes from;
    ``hand``: ``"left"`` / ``"right"`` (``"unknown"`` or ``None`` where a dataset does not know);
    ``mirrored``: set by :func:`~handssl.data.base.mirror_sample`; ``root_joint``: ``"wrist"`` or ``"palm"``
    (STB); ``unit``: the dataset's original length unit (samples are always mm); ``calibrated``: False when
    ``K`` is nominal; the rest are dataset-specific records (paths, ids, styles, the cameras of a multi-view
    item, the frame t' of ``image_t2``).
    """

    dataset: str
    subject: Any
    sequence: Any
    frame: int
    camera: Any
    hand: str | None
    mirrored: bool
    root_joint: str
    unit: str
    calibrated: bool
    visible: np.ndarray
    image_path: str
    image_id: int
    split: str
    style: str
    index: int
    palm_to_wrist: str | None
    distorted: bool
    box_center: list[float] | None
    source: str
    path: str
    image_width: int
    image_height: int
    box_source: str
    cameras: list[Any]
    camera_target: Any
    frame_t2: int
    sequence_t2: int
    epoch: int


class _HandSampleRequired(TypedDict):
    image: Tensor
    joints3d: Tensor
    joints2d: Tensor
    K: Tensor
    valid: Tensor
    meta: Meta


class HandSample(_HandSampleRequired, total=False):
    """A packed single-view sample: what a single-view dataset gives after its transform (keys in :data:`FIELDS`)."""

    valid3d: Tensor
    mask: Tensor
    hand_mask: Tensor
    depth: Tensor
    background: Tensor
    R: Tensor
    t: Tensor
    dist: Tensor
    joints3d_world: Tensor
    box: Tensor
    crop: Tensor


class MultiViewItem(HandSample, total=False):
    """``V`` synchronised views of one frame (SynthHandsMultiView, PanopticMultiView with ``multiview=True``).

    Every per-view key of :class:`HandSample` gets a leading ``V`` axis; ``joints3d_world`` stays ``(21, 3)``;
    ``R``, ``t``, ``background`` and ``image_t2`` are required by :class:`~handssl.data.multiview.MultiViewPairs`.
    """

    image_t2: Tensor
    joints3d_t2: Tensor


class _MultiViewPairRequired(TypedDict):
    image: Tensor
    target: Tensor
    R_ij: Tensor
    background: Tensor
    background_input: Tensor
    image_t2: Tensor
    image_t2_j: Tensor
    joints3d: Tensor
    joints2d: Tensor
    valid: Tensor
    K: Tensor
    joints3d_j: Tensor
    valid_j: Tensor
    labeled: Tensor
    meta: Meta


class MultiViewPair(_MultiViewPairRequired, total=False):
    """One NVS training pair of views ``i -> j`` (:class:`~handssl.data.multiview.MultiViewPairs`).

    ``image``, ``joints3d``, ``joints2d``, ``valid``, ``K`` are view *i*'s; labels are NaN and ``valid`` False
    unless ``labeled``.
    """

    joints3d_t2: Tensor
    joints3d_t2_j: Tensor
    target_mask: Tensor
    input_mask: Tensor
    hull_images: Tensor
    hull_backgrounds: Tensor
    R_i_hull: Tensor
    R_j_hull: Tensor


class SemiLabeledSample(HandSample, total=False):
    """A labelled SemiHand item (:class:`~handssl.data.semi.LabeledView`): cropped, augmented, ``mask`` always set."""

    has_mask: Tensor
    in_bounds: Tensor
    transform_matrix: Tensor


class _SemiUnlabeledRequired(TypedDict):
    image: Tensor
    K: Tensor
    index: Tensor
    image_perturbed: Tensor
    perturb_matrix: Tensor


class SemiUnlabeledSample(_SemiUnlabeledRequired, total=False):
    """An unlabelled SemiHand item (:class:`~handssl.data.semi.UnlabeledView`); its annotation only as ``eval_*``."""

    image_strong: Tensor
    strong_matrix: Tensor
    K_strong: Tensor
    eval_joints3d: Tensor
    eval_joints2d: Tensor
    eval_valid: Tensor
    meta: Meta


HandBatch = HandSample
"""A collated batch of :class:`HandSample` (leading ``B`` axis; ``meta`` a dict of lists)."""

MultiViewBatch = MultiViewPair
"""A collated batch of :class:`MultiViewPair`."""


class SemiBatch(TypedDict, total=False):
    """A SemiHand training batch (a ``max_size_cycle`` CombinedLoader): collated labelled and unlabelled parts."""

    labeled: SemiLabeledSample
    unlabeled: SemiUnlabeledSample


# ---------------------------------------------------------------------------------------------- conversions


def float_image(image: np.ndarray) -> np.ndarray:
    """A raw image as ``float32`` in ``[0, 1]`` (``uint8`` / 255; float images unchanged), same layout."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    return image.astype(np.float32, copy=False)


def float_map(value: np.ndarray) -> np.ndarray:
    """A raw mask or depth map as ``float32`` (a ``uint8`` 0/255 mask becomes 0/1), same layout."""
    value = np.asarray(value)
    out = value.astype(np.float32)
    if value.dtype == np.uint8 and value.max(initial=0) > 1:
        out = out / np.float32(255.0)
    return out


def _pack_value(key: str, value: np.ndarray) -> Tensor:
    field = FIELDS.get(key)
    kind = field.kind if field is not None else "array"
    # np.asarray(order="C") rather than np.ascontiguousarray, which turns 0-d arrays (``index``) into (1,).
    if kind == _IMAGE and value.ndim >= 3:
        return torch.from_numpy(np.asarray(np.moveaxis(float_image(value), -1, -3), order="C"))
    if kind == _MAP and value.ndim >= 2:
        return torch.from_numpy(np.asarray(np.expand_dims(float_map(value), -3), order="C"))
    if value.dtype == np.bool_:
        return torch.from_numpy(value.copy())
    if np.issubdtype(value.dtype, np.floating):
        return torch.from_numpy(np.asarray(value, dtype=np.float32, order="C"))
    return torch.from_numpy(np.asarray(value, order="C"))


def pack_sample(sample: Mapping[str, Any], check: bool = True) -> dict[str, Any]:
    """The one numpy -> tensor conversion: a raw sample to the packed layout of :data:`FIELDS`.

    Images ``(..., H, W, C)`` become ``float32 (..., C, H, W)`` (``uint8`` divided by 255), masks and depth
    ``(..., H, W)`` become ``float32 (..., 1, H, W)`` (a ``uint8`` 0/255 mask 0/1), other float arrays
    ``float32``, bool and integer arrays keep their dtype. Tensors (an already packed sample, e.g. SynthHands') and
    ``meta`` pass through unchanged, on their device.

    Args:
        sample: A raw (or partly packed) sample dict.
        check: Validate the result with :func:`check_packed` (keys and dtypes).

    Raises:
        DatasetError: With ``check``, for a key outside :data:`FIELDS` or a dtype the contract does not allow.
    """
    out: dict[str, Any] = {}
    for key, value in sample.items():
        out[key] = _pack_value(key, value) if isinstance(value, np.ndarray) and key != "meta" else value
    if check:
        check_packed(out)
    return out


def _unpack_value(key: str, value: Tensor) -> np.ndarray:
    array = value.detach().cpu().numpy()
    field = FIELDS.get(key)
    kind = field.kind if field is not None else "array"
    if kind == _IMAGE and array.ndim >= 3:
        return np.ascontiguousarray(np.moveaxis(array, -3, -1))
    if kind == _MAP and array.ndim >= 3 and array.shape[-3] == 1:
        return np.squeeze(array, -3).copy()
    return array.copy()


def unpack_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`pack_sample` (for albumentations): tensors to numpy in the raw layout.

    Images become ``float32 (..., H, W, C)`` (values unchanged, no scaling back to ``uint8``),
    ``... x 1 x H x W`` masks and depth ``... x H x W``; numpy values and ``meta`` pass through.
    """
    return {
        key: _unpack_value(key, value) if isinstance(value, Tensor) and key != "meta" else value
        for key, value in sample.items()
    }


def is_packed(sample: Mapping[str, Any]) -> bool:
    """Whether ``sample``'s image is a tensor (packed layout) rather than a numpy array (raw layout)."""
    return isinstance(sample.get("image"), Tensor)


_DTYPES = {"float32": torch.float32, "bool": torch.bool, "int64": torch.int64}


def check_packed(sample: Mapping[str, Any], keys: Iterable[str] | None = None, where: str = "sample") -> None:
    """Raise :class:`~handssl.data.base.DatasetError` (one line) for a key or dtype outside the contract.

    Args:
        sample: A packed sample.
        keys: Keys allowed (default: every key of :data:`FIELDS`), e.g. ``HandSample.__annotations__``.
        where: What to call the sample in the message.
    """
    from handssl.data.base import DatasetError

    allowed = FIELDS if keys is None else set(keys)
    for key, value in sample.items():
        if key not in allowed or key not in FIELDS:
            raise DatasetError(
                f"{where}: key {key!r} is not part of the data contract; document it in "
                "handssl.data.contract.FIELDS (and the TypedDict of its item) before producing it"
            )
        field = FIELDS[key]
        if field.kind == "meta" or value is None:
            continue
        if not isinstance(value, Tensor):
            raise DatasetError(
                f"{where}: {key!r} is {type(value).__name__}, the contract says a {field.dtype} tensor "
                "(pack_sample converts numpy arrays)"
            )
        if value.dtype != _DTYPES[field.dtype]:
            raise DatasetError(f"{where}: {key!r} has dtype {value.dtype}, the contract says {field.dtype}")
