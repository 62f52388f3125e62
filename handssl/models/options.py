"""Option groups of the tasks: frozen dataclasses that jsonargparse nests under one key.

Every task takes ``optimizer`` (:class:`Optimization`); SemiHand also ``ema``, ``loss``, ``pseudo_labels``,
``correction``, ``consistency`` and ``unsupervised`` (:mod:`handssl.models.semihand_options`), NVSModule
``encoder``, ``decoder``, ``pairs``, ``synthesis``, ``geometry``, ``pose_head`` and ``pose``
(:mod:`handssl.models.nvs_options`); both re-exported here.
A group (an :class:`~handssl.models.option_group.OptionGroup`) checks its values when it is made, and names a bad
one as the user writes it (``pseudo_labels.accept_fraction must be in [0, 1], got 2``).

A task takes a group as one typed argument, e.g. ``optimizer: Optimization = Optimization(lr=2e-3)``; in YAML
it is a mapping (``model.init_args.optimizer: {lr: 1.0e-3, scheduler: none}``), on the command line a dotted
key (``--model.init_args.optimizer.lr 1e-3``), and a key left out keeps the task's default. Checkpoints keep
a group as a plain dict (:func:`group_hparams`), so that reading their hyper-parameters needs no handssl class;
:func:`upgrade_hparams` turns the flat arguments of checkpoints written before the groups into groups.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from handssl.models.nvs_options import (
    NVS_OPTION_GROUPS,
    DecoderOptions,
    EncoderOptions,
    GeometryOptions,
    PairOptions,
    PoseHeadOptions,
    PoseOptions,
    SynthesisOptions,
)
from handssl.models.option_group import OptionGroup, check, coerce, group_keys, task_default
from handssl.models.semihand_options import (
    SEMIHAND_OPTION_GROUPS,
    ConsistencyOptions,
    CorrectionOptions,
    EMAOptions,
    PoseLossOptions,
    PseudoLabelOptions,
    UnsupervisedSchedule,
)

__all__ = [
    "FLAT_ARGUMENTS",
    "GROUPS",
    "NEVER_FLAT",
    "NVS_GROUPS",
    "SEMIHAND_GROUPS",
    "ConsistencyOptions",
    "CorrectionOptions",
    "DecoderOptions",
    "EMAOptions",
    "EncoderOptions",
    "GeometryOptions",
    "Optimization",
    "OptionGroup",
    "PairOptions",
    "PoseHeadOptions",
    "PoseLossOptions",
    "PoseOptions",
    "PseudoLabelOptions",
    "SynthesisOptions",
    "UnsupervisedSchedule",
    "coerce",
    "group_hparams",
    "group_keys",
    "moved_arguments",
    "task_default",
    "upgrade_hparams",
    "upgraded_groups",
]

SCHEDULERS = ("cosine", "none")


@dataclass(frozen=True)
class Optimization(OptionGroup):
    """AdamW and its learning-rate schedule (every task's ``optimizer`` group).

    Args:
        lr: Learning rate of AdamW.
        weight_decay: Weight decay of AdamW.
        scheduler: ``"cosine"`` (decay to 1% over the run, after a linear warm-up) or ``"none"`` (constant).
        warmup_steps: Linear warm-up steps of the cosine schedule.
    """

    argument: ClassVar[str] = "optimizer"

    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        scheduler = self.scheduler
        check(scheduler in SCHEDULERS, "optimizer.scheduler", "must be 'cosine' or 'none'", scheduler)
        check(self.lr > 0, "optimizer.lr", "must be positive", self.lr)
        check(self.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", self.weight_decay)
        check(self.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0", self.warmup_steps)


#: The option groups that replaced flat task arguments: group argument -> its class.
_ALL_GROUPS: tuple[type[Any], ...] = (Optimization, *SEMIHAND_OPTION_GROUPS, *NVS_OPTION_GROUPS)
GROUPS: dict[str, type[Any]] = {group.argument: group for group in _ALL_GROUPS}

#: The groups each task takes, ``optimizer`` included (its ``moved_arguments``).
SEMIHAND_GROUPS = ("optimizer", *(group.argument for group in SEMIHAND_OPTION_GROUPS))
NVS_GROUPS = ("optimizer", *(group.argument for group in NVS_OPTION_GROUPS))

#: The flat arguments of earlier versions named otherwise than their field: group argument -> {field: name}.
FLAT_NAMES: dict[str, dict[str, str]] = {
    "ema": {key: f"ema_{key}" for key in group_keys(EMAOptions)},
    "loss": {"norm": "pose_loss"},
    "pseudo_labels": {
        "enabled": "use_pseudo_labels",
        "weight": "pseudo_label_weight",
        "lifting": "pseudo_label_lifting",
    },
    "correction": {"enabled": "use_correction", "weight": "correction_weight", "max_mm": "max_correction_mm"},
    "consistency": {"enabled": "use_consistency", "weight": "consistency_weight"},
    "unsupervised": {"start_step": "unsupervised_start_step", "ramp_steps": "unsupervised_ramp_steps"},
    "encoder": {key: f"encoder_{key}" for key in group_keys(EncoderOptions)},
    "decoder": {
        "widths": "decoder_widths",
        "latent_channels": "decoder_latent_channels",
        "dropout": "latent_dropout",
        "splat": "decoder_splat",
        "mask_from_points": "decoder_mask_from_points",
    },
    "synthesis": {"structural": "structural_loss", "items": "synthesis_items"},
    "geometry": {
        "equivariance_weight": "latent_equivariance_weight",
        "own_view_weight": "own_view_silhouette_weight",
    },
    "pose_head": {"hidden": "pose_hidden", "dropout": "pose_dropout", "rows": "pose_head_rows"},
    "pose": {
        "weight": "pose_weight",
        "gradient_ratio": "pose_gradient_ratio",
        "start_step": "synthesis_warmup_steps",
        "views": "pose_views",
    },
}

#: Fields added after the groups, which no version took as a flat argument.
NEVER_FLAT: frozenset[tuple[str, str]] = frozenset(
    {
        ("geometry", "side"),
        ("geometry", "opacity_weight"),
        ("encoder", "opacity"),
        ("encoder", "depth_samples"),
        ("geometry", "hull_weight"),
    }
)

#: The flat task arguments of earlier versions (``lr``, ``ema_decay``, ``use_correction``, ``decoder_splat``,
#: ...): name -> (group argument, field).
FLAT_ARGUMENTS: dict[str, tuple[str, str]] = {
    FLAT_NAMES.get(argument, {}).get(key, key): (argument, key)
    for argument, group in GROUPS.items()
    for key in group_keys(group)
    if (argument, key) not in NEVER_FLAT
}


def moved_arguments(*arguments: str) -> dict[str, str]:
    """Where each flat argument of earlier versions that went into the groups ``arguments`` went, as YAML.

    A task lists them in ``moved_arguments``, so that the CLI names the new key in its error.
    """
    return {
        flat: f"{argument}: {{{key}: ...}}"
        for flat, (argument, key) in FLAT_ARGUMENTS.items()
        if argument in arguments
    }


def group_hparams(hparams: Mapping[str, Any], task: type | None = None) -> dict[str, Any]:
    """``hparams`` with every option group as a plain dict of all its fields (what checkpoints keep).

    A group given as a mapping (``optimizer={"lr": 0.5}``) is stored whole, with ``task``'s defaults for the
    keys it leaves out, so that a checkpoint records every value its run used.
    """
    grouped = dict(hparams)
    for key, group in GROUPS.items():
        value = grouped.get(key)
        if isinstance(value, Mapping) and task is not None:
            value = group.of(value, task_default(task, key))
        if isinstance(value, group):
            grouped[key] = asdict(value)
    return grouped


def upgrade_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters with the flat arguments of earlier versions moved into their groups.

    ``{"lr": 2e-3, "scheduler": "none", "ema_decay": 0.99, ...}`` (written before the option groups) becomes
    ``{"optimizer": {"lr": 2e-3, "scheduler": "none"}, "ema": {"decay": 0.99}, ...}``; a group's own keys win over flat ones. Keys
    a checkpoint did not store keep the task's defaults, as they did. Newer hyper-parameters come back equal.
    """
    upgraded = dict(hparams)
    for argument, group in GROUPS.items():
        flat = {
            key: upgraded.pop(name)
            for name, (target, key) in FLAT_ARGUMENTS.items()
            if target == argument and name in upgraded
        }
        if not flat:
            continue
        nested = upgraded.get(argument)
        if isinstance(nested, group):
            nested = asdict(nested)
        upgraded[argument] = {**flat, **(nested if isinstance(nested, Mapping) else {})}
    return upgraded


def upgraded_groups(checkpoint_path: Any) -> dict[str, Any]:
    """The option groups that :func:`upgrade_hparams` builds from the flat arguments in a checkpoint file.

    ``{}`` for a checkpoint that needs none (or ``checkpoint_path`` is not a readable file); ``load_from_checkpoint``
    passes the result as keyword arguments, which win over the stored ones.
    """
    import torch

    if not isinstance(checkpoint_path, (str, os.PathLike)) or not Path(checkpoint_path).is_file():
        return {}
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # Lightning reads it next and reports what is wrong with it
        return {}
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not isinstance(hparams, Mapping):
        return {}
    upgraded = upgrade_hparams(hparams)
    return {key: upgraded[key] for key in GROUPS if key in upgraded and upgraded[key] != hparams.get(key)}
