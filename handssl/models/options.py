"""Option groups of the tasks: frozen dataclasses that jsonargparse nests under one key.

A task takes a group as one typed argument, e.g. ``optimizer: Optimization = Optimization(lr=2e-3)``; in YAML
it is a mapping (``model.init_args.optimizer: {lr: 1.0e-3, scheduler: none}``), on the command line a dotted
key (``--model.init_args.optimizer.lr 1e-3``), and a key left out keeps the task's default. Checkpoints keep
a group as a plain dict (:func:`group_hparams`), so that reading their hyper-parameters needs no handssl class;
:func:`upgrade_hparams` turns the flat arguments of checkpoints written before the groups into groups.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

SCHEDULERS = ("cosine", "none")


@dataclass(frozen=True)
class Optimization:
    """AdamW and its learning-rate schedule (every task's ``optimizer`` group).

    Args:
        lr: Learning rate of AdamW.
        weight_decay: Weight decay of AdamW.
        scheduler: ``"cosine"`` (decay to 1% over the run, after a linear warm-up) or ``"none"`` (constant).
        warmup_steps: Linear warm-up steps of the cosine schedule.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {self.scheduler!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    @classmethod
    def of(cls, value: Optimization | Mapping[str, Any], default: Any = None) -> Optimization:
        """``value`` as an :class:`Optimization`: itself, or ``default`` with a mapping's keys replaced."""
        return coerce(cls, "optimizer", value, default)


@dataclass(frozen=True)
class EMAOptions:
    """The mean teacher's exponential moving average (SemiHand's ``ema`` group).

    Args:
        decay: Teacher momentum ``m`` in ``teacher = m teacher + (1 - m) student``, in [0, 1].
        warmup: Use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (fast early tracking).
        buffer_mode: ``"ema"`` or ``"copy"`` for BatchNorm statistics (see :mod:`~handssl.models.components.ema`).
    """

    decay: float = 0.999
    warmup: bool = True
    buffer_mode: Literal["ema", "copy"] = "ema"

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"ema decay must be in [0, 1], got {self.decay}")
        if self.buffer_mode not in ("ema", "copy"):
            raise ValueError(f"ema buffer_mode must be 'ema' or 'copy', got {self.buffer_mode!r}")

    @classmethod
    def of(cls, value: EMAOptions | Mapping[str, Any]) -> EMAOptions:
        """``value`` as :class:`EMAOptions`: itself, or built from a mapping (a checkpoint's hparams)."""
        return coerce(cls, "ema", value)


def group_keys(group: type) -> list[str]:
    """The field names of the option group ``group``."""
    return [field.name for field in fields(group)]


def coerce(group: type[Any], argument: str, value: Any, default: Any = None) -> Any:
    """``value`` as an instance of the option group ``group``: itself, or ``default`` with a mapping's keys replaced.

    A mapping (a checkpoint's hparams, a YAML node) keeps the task's defaults for the keys it leaves out, as the
    CLI does: ``default`` is the task's (e.g. :func:`task_default`), else the group's own defaults.

    Raises:
        TypeError: ``value`` is neither, or the mapping has a key that is not a field.
    """
    if isinstance(value, group):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - set(group_keys(group))
        if unknown:
            raise TypeError(f"{argument}: unknown keys {sorted(unknown)}; it takes {group_keys(group)}")
        return replace(default if isinstance(default, group) else group(), **value)
    raise TypeError(f"{argument} must be a {group.__name__} (or a mapping of its fields), got {value!r}")


def task_default(cls: type, argument: str) -> Any:
    """The default of ``argument`` in ``cls.__init__`` (``None`` when it has none), e.g. a task's own group."""
    parameter = inspect.signature(cls.__init__).parameters.get(argument)  # type: ignore[misc]
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


#: The option groups that replaced flat task arguments: group argument -> its class.
GROUPS: dict[str, type[Any]] = {"optimizer": Optimization, "ema": EMAOptions}

#: The flat task arguments of earlier versions: name -> (group argument, field).
FLAT_ARGUMENTS: dict[str, tuple[str, str]] = {
    **{key: ("optimizer", key) for key in group_keys(Optimization)},
    **{f"ema_{key}": ("ema", key) for key in group_keys(EMAOptions)},
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


def group_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` with every option group as a plain dict (what checkpoints and ``hparams.yaml`` keep)."""
    return {
        key: asdict(value) if key in GROUPS and isinstance(value, GROUPS[key]) else value
        for key, value in hparams.items()
    }


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
