"""wandb panels for any handssl pose task: skeleton overlays, 3D skeletons, the PCK curve, confidences, config.

:class:`PoseVisualizationCallback` logs at the end of every ``every_n_validations``-th validation (the sanity
check does not count), on global rank zero, and only through a
:class:`~pytorch_lightning.loggers.WandbLogger`; with any other logger, or none, it does nothing at all (not even
an extra forward pass). Every figure is drawn by :mod:`handssl.viz`.

Panels (``<prefix>`` defaults to ``"viz"``):

``<prefix>/skeletons_2d``
    The first validation images with the predicted skeleton (finger colours) and the ground truth (white,
    dashed).
``<prefix>/skeletons_3d``
    Root-relative 3D skeletons, ground truth solid and prediction dashed (a matplotlib figure).
``<prefix>/skeleton_3d_<i>``
    The same as an interactive ``wandb.Object3D`` scene: ground-truth joints green, predicted joints red, bones
    as vectors of the same colours, in the plotted frame ``(x, z, -y)`` of :mod:`handssl.viz` (mm).
``<prefix>/pck_curve`` and ``<prefix>/pck_table``
    The PCK curve of the validation set under the task's evaluation protocol (from its ``ProtocolMetric``
    when it has one, else recomputed on the visualised batches with
    :func:`handssl.metrics.functional.pck_curve`), as a figure and as a ``wandb.Table``.
``<prefix>/confidence_histogram`` and ``<prefix>/confidence``
    Histogram of the task's confidences, when it exposes some (figure and ``wandb.Histogram``).

The resolved config (``config.yaml`` that the handssl CLI writes into the run directory, or ``config_path``) is
added once to the wandb run config under ``handssl_config`` and saved as the run file ``handssl_config.yaml``.

What a task exposes
-------------------
Besides the batch, the callback reads the task only through
:meth:`~handssl.models.base.BaseHandTask.visualization_state` (``protocol``: the protocol metric with the PCK
curve, ``protocol_name``, and optional ``confidence``/``confidence_threshold``/``confidence_keep``), its
prediction methods and the optional hook below; never its private attributes.

A task may define ``visualization_outputs(batch) -> dict`` (called in eval mode, without gradients) to control
what is drawn. Every key is optional; missing ones fall back to defaults:

``image``
    ``(B, 3, H, W)`` images to draw on, in ``[0, 1]``. Default: ``batch["image"]`` (images outside ``[0, 1]``,
    e.g. still normalised, are min-max rescaled per image for display).
``joints3d``
    ``(B, 21, 3)`` predicted joints in mm in the image's camera frame (root-relative is fine). Default: the
    prediction of ``evaluation_batch(batch)`` (handssl's :class:`~handssl.models.base.BaseHandTask`), else of
    ``predict_joints3d(batch)``.
``joints2d``
    ``(B, 21, 2)`` predicted pixels of ``image``. Default: the root-relative 3D prediction placed at the
    ground-truth root and projected with ``batch["K"]``.
``confidence``
    Confidences, ``(B,)`` or ``(B, 21)``. Default: the ``confidence`` (``confidence_threshold``,
    ``confidence_keep``) of the task's ``visualization_state()``, e.g. SemiHand's latest training
    pseudo-labels' spread ``C`` (a cost), with its threshold; else none.
``confidence_threshold``
    Selection threshold drawn on the histogram.
``confidence_keep``
    ``"above"`` (default: higher is more confident, kept when ``>= threshold``) or ``"below"`` (a cost such as
    SemiHand's spread, kept when ``<= threshold``).
``pck``
    ``(thresholds, curve)`` to plot instead of the protocol's curve.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from handssl import viz
from handssl.callbacks._state import task_state
from handssl.geometry import project
from handssl.metrics.functional import pck_curve
from handssl.metrics.protocols import get_protocol
from handssl.skeleton import BONES, NUM_JOINTS, ROOT, root_relative, valid_with_root

__all__ = [
    "GT_COLOR",
    "PRED_COLOR",
    "PoseVisualizationCallback",
    "collect_visualization",
    "confidence_figure",
    "pck_from_module",
    "skeleton_3d_figure",
    "skeleton_grid_figure",
    "skeleton_scene",
]

GT_COLOR: tuple[int, int, int] = (60, 180, 75)
"""RGB of ground-truth joints and bones in the ``wandb.Object3D`` scenes (green)."""

PRED_COLOR: tuple[int, int, int] = (230, 25, 75)
"""RGB of predicted joints and bones in the ``wandb.Object3D`` scenes (red)."""

_CONFIDENCE_KEEP = ("above", "below")


# --------------------------------------------------------------------------------------------- collection
def _cpu(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float32)


def _display_images(images: Tensor) -> Tensor:
    """Images in ``[0, 1]`` for drawing: per-image min-max rescaling of any image outside ``[0, 1]``."""
    images = images.float()
    flat = images.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    outside = (low < -0.05) | (high > 1.05)
    if bool(outside.any()):
        span = (high - low).clamp_min(1e-6)
        rescaled = (images - low[:, None, None, None]) / span[:, None, None, None]
        images = torch.where(outside[:, None, None, None], rescaled, images)
    return images.clamp(0.0, 1.0)


def _state_confidence(pl_module: Any) -> dict[str, Any]:
    """The confidences a task exposes in its visualization state (SemiHand: the pseudo-labels' spread ``C``)."""
    state = task_state(pl_module)
    if state.get("confidence") is None:
        return {}
    threshold = state.get("confidence_threshold")
    if threshold is not None and not math.isfinite(threshold):
        threshold = None  # an infinite threshold counts as none
    return {
        "confidence": state["confidence"],
        "confidence_threshold": None if threshold is None else float(threshold),
        "confidence_keep": state.get("confidence_keep", "above"),
    }


@torch.no_grad()
def collect_visualization(
    pl_module: Any, batch: Mapping[str, Any], max_samples: int | None = None
) -> dict[str, Any]:
    """Everything the panels draw for one batch, on the CPU (the module's hook completed with defaults).

    Args:
        pl_module: A pose task; see the module docstring for the optional ``visualization_outputs`` hook.
        batch: A validation batch with ``image`` ``(B, 3, H, W)``, ``joints3d``, ``joints2d``, ``K`` and ``valid``.
        max_samples: Keep only the first samples of the image and skeleton outputs (all when ``None``).

    Returns:
        ``image`` ``(S, 3, H, W)`` in ``[0, 1]``; ``pred_joints2d``/``gt_joints2d`` ``(S, 21, 2)``;
        ``pred_joints3d``/``gt_joints3d`` ``(S, 21, 3)`` root-relative mm; ``valid`` ``(S, 21)``; and, when
        available, ``confidence`` (all of the batch's), ``confidence_threshold``, ``confidence_keep``, ``pck``.

    Raises:
        ValueError: The batch has no ``(B, 3, H, W)`` image and the module no hook to supply one, or an output
            has the wrong shape.
    """
    hook = getattr(pl_module, "visualization_outputs", None)
    outputs: dict[str, Any] = dict(hook(batch)) if callable(hook) else {}
    image = outputs.get("image", batch.get("image"))
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(
            "PoseVisualizationCallback draws (B, 3, H, W) images; got "
            f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}. For other batches "
            "(e.g. stacked views) give the module a visualization_outputs(batch) hook returning 'image', "
            "'joints2d' and 'joints3d' for one view"
        )
    count = image.shape[0] if max_samples is None else min(max_samples, image.shape[0])
    gt3d = _cpu(batch["joints3d"])
    gt2d = _cpu(batch["joints2d"])
    valid = torch.as_tensor(batch["valid"]).detach().cpu().bool()
    if "joints3d" in outputs:
        pred3d = _cpu(outputs["joints3d"])
    elif callable(getattr(pl_module, "evaluation_batch", None)):
        pred3d = _cpu(pl_module.evaluation_batch(dict(batch))[0])
    else:
        pred3d = _cpu(pl_module.predict_joints3d(dict(batch)))
    for name, value, dims in (
        ("joints3d", pred3d, 3),
        ("ground-truth joints3d", gt3d, 3),
        ("joints2d", gt2d, 2),
    ):
        if tuple(value.shape) != (image.shape[0], NUM_JOINTS, dims):
            raise ValueError(
                f"{name} must be ({image.shape[0]}, {NUM_JOINTS}, {dims}), got {tuple(value.shape)}"
            )
    gt_root = gt3d[:, ROOT : ROOT + 1]
    pred_rel, gt_rel = root_relative(pred3d), root_relative(gt3d)
    if "joints2d" in outputs:
        pred2d = _cpu(outputs["joints2d"])
    else:
        pred2d = project(pred_rel + gt_root, _cpu(batch["K"]))
    result: dict[str, Any] = {
        "image": _display_images(_cpu(image[:count])),
        "pred_joints2d": pred2d[:count],
        "gt_joints2d": gt2d[:count],
        "pred_joints3d": pred_rel[:count],
        "gt_joints3d": gt_rel[:count],
        "valid": valid_with_root(valid[:count]),
    }
    confidence = outputs if "confidence" in outputs else _state_confidence(pl_module)
    if confidence.get("confidence") is not None:
        keep = confidence.get("confidence_keep", "above")
        if keep not in _CONFIDENCE_KEEP:
            raise ValueError(f"confidence_keep must be one of {_CONFIDENCE_KEEP}, got {keep!r}")
        result["confidence"] = _cpu(confidence["confidence"]).reshape(-1)
        result["confidence_threshold"] = confidence.get("confidence_threshold")
        result["confidence_keep"] = keep
    if outputs.get("pck") is not None:
        result["pck"] = outputs["pck"]
    return result


# --------------------------------------------------------------------------------------------- panels
def skeleton_grid_figure(
    images: Tensor,
    pred_joints2d: Tensor,
    gt_joints2d: Tensor,
    valid: Tensor | None = None,
    ncols: int = 4,
    size_in: float = 2.5,
) -> Figure:
    """One axes per image: the predicted skeleton (finger colours) over the image, the ground truth dashed.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        pred_joints2d: ``(N, 21, 2)`` predicted pixels.
        gt_joints2d: ``(N, 21, 2)`` ground-truth pixels.
        valid: Optional ``(N, 21)`` mask of annotated joints (applied to the ground truth).
        ncols: Axes per row.
        size_in: Side of each axes in inches.

    Returns:
        The figure, with ``N`` axes.
    """
    count = len(images)
    if count == 0:
        raise ValueError("skeleton_grid_figure: no images given")
    if ncols < 1:
        raise ValueError(f"skeleton_grid_figure: ncols must be >= 1, got {ncols}")
    columns = min(ncols, count)
    rows = -(-count // columns)
    figure = viz.new_figure(columns * size_in, rows * size_in)
    for index in range(count):
        ax = figure.add_subplot(rows, columns, index + 1)
        gt = gt_joints2d[index].clone()
        if valid is not None:
            gt[~valid[index].bool()] = float("nan")
        viz.plot_skeleton_2d(
            images[index], pred_joints2d[index], others={"ground truth": gt}, ax=ax, label="prediction"
        )
        if index:  # one legend is enough
            legend = ax.get_legend()
            if legend is not None:
                legend.remove()
    return figure


def skeleton_3d_figure(pred_joints3d: Tensor, gt_joints3d: Tensor, valid: Tensor | None = None) -> Figure:
    """Root-relative ground truth (solid) and prediction (dashed) of one sample in 3D.

    Args:
        pred_joints3d: ``(21, 3)`` prediction in mm.
        gt_joints3d: ``(21, 3)`` ground truth in mm.
        valid: Optional ``(21,)`` mask of annotated joints (applied to the ground truth).
    """
    masks = None if valid is None else [valid.bool(), torch.ones(NUM_JOINTS, dtype=torch.bool)]
    return viz.plot_skeleton_3d(
        [gt_joints3d, pred_joints3d],
        labels=["ground truth", "prediction"],
        valid=masks,
        title="root-relative (mm)",
    )


def skeleton_scene(pred_joints3d: Any, gt_joints3d: Any, valid: Any = None) -> dict[str, Any]:
    """A ``wandb.Object3D`` ``lidar/beta`` scene of one sample: coloured joints and bones as vectors.

    Points are in :mod:`handssl.viz`'s plotted frame ``(x, z, -y)`` (image-up is up), in mm.

    Args:
        pred_joints3d: ``(21, 3)`` prediction in mm (OpenCV camera frame, root-relative or not).
        gt_joints3d: ``(21, 3)`` ground truth in mm.
        valid: Optional ``(21,)`` mask of annotated ground-truth joints.

    Returns:
        ``{"type": "lidar/beta", "points": (P, 6) xyz-rgb array, "vectors": object array of bone dicts}``; pass
        it to ``wandb.Object3D``.
    """
    points: list[list[float]] = []
    vectors: list[dict[str, list[float]]] = []
    poses = (
        (np.asarray(gt_joints3d, dtype=np.float64), valid, GT_COLOR),
        (np.asarray(pred_joints3d, dtype=np.float64), None, PRED_COLOR),
    )
    for joints, mask, color in poses:
        if joints.shape != (NUM_JOINTS, 3):
            raise ValueError(f"skeleton_scene: joints must be ({NUM_JOINTS}, 3), got {joints.shape}")
        shown = np.stack([joints[:, 0], joints[:, 2], -joints[:, 1]], axis=-1)
        keep = np.asarray(np.isfinite(shown).all(-1))
        if mask is not None:
            keep &= np.asarray(mask, dtype=bool).reshape(-1)
        points.extend([*shown[j], *color] for j in np.flatnonzero(keep))
        vectors.extend(
            {"start": shown[a].tolist(), "end": shown[b].tolist(), "color": list(color)}
            for a, b in BONES
            if keep[a] and keep[b]
        )
    vector_array = np.empty(len(vectors), dtype=np.object_)
    vector_array[:] = vectors
    return {
        "type": "lidar/beta",
        "points": np.asarray(points, dtype=np.float64).reshape(-1, 6),
        "vectors": vector_array,
    }


def confidence_figure(
    confidence: Any, threshold: float | None = None, keep: str = "above", ax: Axes | None = None
) -> Figure:
    """Confidence histogram with the selection threshold and the share kept (either direction).

    Args:
        confidence: Confidences, any shape.
        threshold: Optional selection threshold.
        keep: ``"above"`` (kept when ``>= threshold``) or ``"below"`` (a cost, kept when ``<= threshold``).
        ax: Axes to draw into; a new figure when omitted.

    Returns:
        The figure.
    """
    if keep not in _CONFIDENCE_KEEP:
        raise ValueError(f"keep must be one of {_CONFIDENCE_KEEP}, got {keep!r}")
    title = "confidence" if keep == "above" else "confidence (a cost: lower is better)"
    return viz.plot_confidence_histogram(confidence, threshold=threshold, ax=ax, title=title, keep=keep)


def pck_from_module(pl_module: Any, stage: str = "val") -> dict[str, Any] | None:
    """The PCK curve of the task's protocol metric for ``stage``, or ``None`` when it has none or no data.

    Reads ``protocol`` of the task's :meth:`~handssl.models.base.BaseHandTask.visualization_state`; call it on
    every process under DDP (the metric synchronises) before the task resets the metric.

    Returns:
        ``{"thresholds": (T,) mm, "curve": (T,), "auc": float, "protocol": name}`` as numpy / floats.
    """
    metric = task_state(pl_module, stage).get("protocol")
    if metric is None or not getattr(metric, "update_called", False):
        return None
    result = metric.compute()
    curve = result["pck_curve"].detach().cpu().double().numpy()
    if not np.isfinite(curve).any():
        return None
    return {
        "thresholds": result["thresholds"].detach().cpu().double().numpy(),
        "curve": curve,
        "auc": float(result["auc"]),
        "protocol": metric.protocol.name,
    }


def _recomputed_pck(pl_module: Any, collected: list[dict[str, Any]]) -> dict[str, Any] | None:
    """PCK of the visualised batches: root-relative 3D error on the protocol's grid (or 20-50 mm)."""
    pred = torch.cat([c["all_pred_joints3d"] for c in collected]).double()
    target = torch.cat([c["all_gt_joints3d"] for c in collected]).double()
    valid = torch.cat([c["all_valid"] for c in collected])
    if not bool(valid.any()):
        return None
    name = task_state(pl_module).get("protocol_name")
    try:
        thresholds = (
            get_protocol(name).thresholds if name else torch.linspace(20.0, 50.0, 20, dtype=torch.float64)
        )
    except ValueError:
        thresholds = torch.linspace(20.0, 50.0, 20, dtype=torch.float64)
    curve = pck_curve(pred, torch.nan_to_num(target), thresholds, valid)
    return {
        "thresholds": thresholds.numpy(),
        "curve": curve.numpy(),
        "protocol": "root-relative (visualised batches)",
    }


# ------------------------------------------------------------------------------------------- callback
class PoseVisualizationCallback(Callback):
    """Log skeleton overlays, 3D skeletons, the PCK curve, confidences and the config to wandb.

    Logs at the end of every ``every_n_validations``-th validation (the first one included, the sanity check
    excluded), on global rank zero, only when a ``WandbLogger`` is attached. See the module docstring for the
    panels and for the optional ``visualization_outputs(batch)`` hook a task may define.

    Args:
        every_n_validations: Log at validations ``0, n, 2n, ...``.
        num_images: Validation images in the skeleton grid.
        num_scenes: Samples logged as interactive ``wandb.Object3D`` scenes (0 disables them).
        num_batches: Validation batches the callback runs the model on (images, confidences, and the PCK curve
            of tasks without a protocol metric).
        grid_columns: Images per row of the skeleton grid.
        log_pck: Log the PCK curve.
        log_confidence: Log the confidence histogram when the task exposes confidences.
        log_config: Add the resolved config to the wandb run (once).
        config_path: The config file to log; default: ``config.yaml`` in the trainer's log directory (where the
            handssl CLI saves the resolved config).
        prefix: Key prefix of the panels.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_images: int = 8,
        num_scenes: int = 2,
        num_batches: int = 1,
        grid_columns: int = 4,
        log_pck: bool = True,
        log_confidence: bool = True,
        log_config: bool = True,
        config_path: str | None = None,
        prefix: str = "viz",
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("every_n_validations", every_n_validations, 1),
            ("num_images", num_images, 1),
            ("num_scenes", num_scenes, 0),
            ("num_batches", num_batches, 1),
            ("grid_columns", grid_columns, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty name without '/', got {prefix!r}")
        self.every_n_validations = every_n_validations
        self.num_images = num_images
        self.num_scenes = num_scenes
        self.num_batches = num_batches
        self.grid_columns = grid_columns
        self.log_pck = log_pck
        self.log_confidence = log_confidence
        self.log_config = log_config
        self.config_path = config_path
        self.prefix = prefix
        self.validations_seen = 0
        self._active = False
        self._collected: list[dict[str, Any]] = []
        self._config_logged = False
        self._warned = False

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
        """The trainer's wandb loggers (empty when none is attached)."""
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def state_dict(self) -> dict[str, Any]:
        return {"validations_seen": self.validations_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations_seen = int(state_dict.get("validations_seen", 0))

    # -------------------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_log_config(trainer)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collected = []
        self._active = (
            not trainer.sanity_checking
            and bool(self.wandb_loggers(trainer))
            and self.validations_seen % self.every_n_validations == 0
        )

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            not self._active
            or dataloader_idx != 0
            or batch_idx >= self.num_batches
            or not trainer.is_global_zero
        ):
            return
        try:
            collected = collect_visualization(pl_module, batch)
        except (ValueError, RuntimeError, NotImplementedError) as err:
            # e.g. a stage that predicts no pose (NVS synthesis pre-training): panels must not stop training.
            if not self._warned:
                rank_zero_warn(
                    f"PoseVisualizationCallback: no pose panels for this task ({type(err).__name__}: {err})"
                )
                self._warned = True
            self._active = False
            return
        kept = sum(len(c["image"]) for c in self._collected)
        take = max(0, self.num_images - kept)
        entry = {
            key: value[:take] if isinstance(value, Tensor) and key != "confidence" else value
            for key, value in collected.items()
        }
        entry["all_pred_joints3d"] = collected["pred_joints3d"]
        entry["all_gt_joints3d"] = collected["gt_joints3d"]
        entry["all_valid"] = collected["valid"]
        self._collected.append(entry)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        active = self._active
        self._active = False
        self.validations_seen += 1
        if not active:
            return
        # Every process computes the protocol metric (it synchronises under DDP); only rank zero logs.
        protocol_pck = pck_from_module(pl_module) if self.log_pck else None
        if not trainer.is_global_zero:
            return
        self._maybe_log_config(trainer)
        payload = self._panels(pl_module, protocol_pck)
        self._collected = []
        if payload:
            for logger in self.wandb_loggers(trainer):
                logger.log_metrics(payload, step=trainer.global_step)

    # ------------------------------------------------------------------------------------- panels
    def _panels(self, pl_module: Any, protocol_pck: dict[str, Any] | None) -> dict[str, Any]:
        import wandb

        payload: dict[str, Any] = {}
        collected = [c for c in self._collected if len(c["image"])]
        key = self.prefix
        if collected:
            images = torch.cat([c["image"] for c in collected])
            pred2d = torch.cat([c["pred_joints2d"] for c in collected])
            gt2d = torch.cat([c["gt_joints2d"] for c in collected])
            pred3d = torch.cat([c["pred_joints3d"] for c in collected])
            gt3d = torch.cat([c["gt_joints3d"] for c in collected])
            valid = torch.cat([c["valid"] for c in collected])
            figure = skeleton_grid_figure(images, pred2d, gt2d, valid, ncols=self.grid_columns)
            payload[f"{key}/skeletons_2d"] = wandb.Image(
                viz.figure_to_array(figure),
                caption="prediction (finger colours) vs ground truth (white, dashed)",
            )
            figure = skeleton_3d_figure(pred3d[0], gt3d[0], valid[0])
            payload[f"{key}/skeletons_3d"] = wandb.Image(
                viz.figure_to_array(figure), caption="ground truth (solid) vs prediction (dashed), mm"
            )
            for index in range(min(self.num_scenes, len(pred3d))):
                scene = skeleton_scene(pred3d[index].numpy(), gt3d[index].numpy(), valid[index].numpy())
                payload[f"{key}/skeleton_3d_{index}"] = wandb.Object3D(
                    scene, caption="green: ground truth, red: prediction (mm, up = image up)"
                )
        if self.log_pck:
            pck = next((c["pck"] for c in self._collected if c.get("pck") is not None), None)
            if pck is not None:
                thresholds, curve = (np.asarray(torch.as_tensor(v).cpu(), dtype=np.float64) for v in pck)
                pck = {"thresholds": thresholds, "curve": curve, "protocol": "task"}
            elif protocol_pck is not None:
                pck = protocol_pck
            elif self._collected:
                pck = _recomputed_pck(pl_module, self._collected)
            if pck is not None:
                title = f"PCK ({pck['protocol']})"
                figure = viz.plot_pck_curves({"validation": (pck["thresholds"], pck["curve"])}, title=title)
                payload[f"{key}/pck_curve"] = wandb.Image(viz.figure_to_array(figure), caption=title)
                table = wandb.Table(
                    columns=["threshold_mm", "pck"],
                    data=[[float(t), float(p)] for t, p in zip(pck["thresholds"], pck["curve"])],
                )
                payload[f"{key}/pck_table"] = table
        if self.log_confidence:
            with_confidence = [c for c in self._collected if c.get("confidence") is not None]
            if with_confidence:
                values = torch.cat([c["confidence"] for c in with_confidence])
                values = values[torch.isfinite(values)]
                if values.numel():
                    first = with_confidence[0]
                    figure = confidence_figure(
                        values, first["confidence_threshold"], first["confidence_keep"]
                    )
                    payload[f"{key}/confidence_histogram"] = wandb.Image(viz.figure_to_array(figure))
                    payload[f"{key}/confidence"] = wandb.Histogram(
                        np_histogram=np.histogram(values.numpy(), bins=64)
                    )
        return payload

    # ------------------------------------------------------------------------------------- config
    def _config_file(self, trainer: pl.Trainer) -> Path | None:
        if self.config_path is not None:
            path = Path(self.config_path)
            if not path.is_file():
                raise FileNotFoundError(f"PoseVisualizationCallback: config_path not found: {path}")
            return path
        for folder in (trainer.log_dir, trainer.default_root_dir):
            if folder and (Path(folder) / "config.yaml").is_file():
                return Path(folder) / "config.yaml"
        return None

    def _maybe_log_config(self, trainer: pl.Trainer) -> None:
        if self._config_logged or not self.log_config or not trainer.is_global_zero:
            return
        loggers = self.wandb_loggers(trainer)
        path = self._config_file(trainer) if loggers else None
        if path is None:
            return
        text = path.read_text()
        config = yaml.safe_load(text)
        for logger in loggers:
            run = logger.experiment
            if isinstance(config, dict):
                run.config.update({"handssl_config": config}, allow_val_change=True)
            run_files = Path(run.dir)
            target = run_files / "handssl_config.yaml"  # wandb keeps its own config.yaml there
            if target.resolve() != path.resolve():
                shutil.copyfile(path, target)
            run.save(str(target), base_path=str(run_files), policy="now")
        self._config_logged = True
