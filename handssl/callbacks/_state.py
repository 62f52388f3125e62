"""The one way callbacks read a task: :meth:`~handssl.models.base.BaseHandTask.visualization_state`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def task_state(pl_module: Any, stage: str = "val") -> Mapping[str, Any]:
    """``pl_module.visualization_state(stage)``, or ``{}`` for a module without one.

    Args:
        pl_module: The task (any LightningModule; handssl's tasks inherit the method from ``BaseHandTask``).
        stage: ``"val"`` or ``"test"``: whose evaluation metric the state holds.

    Returns:
        The task's state (see :meth:`~handssl.models.base.BaseHandTask.visualization_state` for the keys).
    """
    method = getattr(pl_module, "visualization_state", None)
    state = method(stage) if callable(method) else None
    return state if isinstance(state, Mapping) else {}
