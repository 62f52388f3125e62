"""Progress bars for long data operations outside the trainer (background estimation, pseudo-label passes).

``HANDSSL_PROGRESS=0`` turns them off, ``=1`` forces them on; by default they show on a terminal only (tqdm's
``disable=None``), so logs of batch jobs stay clean.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any, TypeVar

with warnings.catch_warnings():
    # In a Jupyter kernel without ipywidgets, tqdm.auto warns at import and falls back to text bars: the
    # warning was the only stderr output of the executed notebooks.
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True, **kwargs: Any
) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar (``enabled=False``, e.g. on ranks other than 0: no bar)."""
    setting = os.environ.get("HANDSSL_PROGRESS", "").strip().lower()
    if not enabled or setting in ("0", "false", "no", "off"):
        disable: bool | None = True
    elif setting in ("1", "true", "yes", "on"):
        disable = False
    else:
        disable = None  # on a terminal only
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False, **kwargs)
