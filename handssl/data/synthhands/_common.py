"""What the SynthHands datasets share besides :class:`~handssl.data.synthhands.cache.SynthHandsBase` itself.

The option types of their signatures, and the hand-over of the shared constructor arguments to the base class.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["Crop", "Style", "base_arguments"]

Style = Literal["synthetic", "real", "real_object"]
"""Appearance style: RHD-like source, STB-like target, or Dexter+Object-like (``"real"`` plus a held object)."""

Crop = Literal["joints", "fixed"]
"""How a view's crop is framed: around the joints' box, or a fixed extent at the hand centre's depth."""


@functools.cache
def _base_parameters() -> tuple[str, ...]:
    from handssl.data.synthhands.cache import SynthHandsBase  # cache.py imports the aliases above

    parameters = inspect.signature(SynthHandsBase.__init__).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def base_arguments(init_locals: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of :class:`SynthHandsBase`'s constructor, picked by name from a subclass's ``locals()``.

    Each dataset spells out every parameter in its own signature (configs, the CLI and the docs read it) and
    passes the shared ones on with ``super().__init__(**base_arguments(locals()))``, as the first statement of
    its ``__init__`` (before it rebinds any of them).
    """
    return {name: init_locals[name] for name in _base_parameters()}
