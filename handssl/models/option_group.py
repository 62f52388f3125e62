"""The base of the option groups: :class:`OptionGroup`, its checks and how a mapping becomes a group.

An option group is a frozen dataclass that a task takes as one typed argument, which jsonargparse nests under
one key (:mod:`handssl.models.options`). Its ``__post_init__`` checks each value with :func:`check`, which names
the option as the user writes it (``correction.max_mm must be positive or null, got -1``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

__all__ = ["OptionGroup", "check", "coerce", "group_keys", "task_default"]


def check(ok: bool, option: str, rule: str, value: Any) -> None:
    """Raise a one-line :class:`ValueError` ``"<option> <rule>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{option} {rule}, got {value!r}")


G = TypeVar("G", bound="OptionGroup")


@dataclass(frozen=True)
class OptionGroup:
    """What the option groups share: the task argument they are given as, and :meth:`of`.

    A dataclass without fields: jsonargparse nests a dataclass whose bases are all dataclasses as a group of
    keys (``optimizer: {lr: ...}``), and would take any other as a class (``class_path``/``init_args``).
    """

    argument: ClassVar[str]
    """The task argument (and YAML key) the group is given as, e.g. ``"optimizer"``."""

    @classmethod
    def of(cls: type[G], value: G | Mapping[str, Any], default: Any = None) -> G:
        """``value`` as this group: itself, or ``default`` with a mapping's keys replaced (:func:`coerce`).

        A checkpoint's hparams keep a group as a mapping; ``default`` is the task's own (else the group's).
        """
        return coerce(cls, cls.argument, value, default)


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
