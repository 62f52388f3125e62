"""Lazy attribute loading for package ``__init__`` modules (keeps ``import handssl`` fast)."""

from __future__ import annotations

import importlib
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Any, Any]:
    """Return ``__all__``, ``__getattr__`` and ``__dir__`` for a package exporting ``exports`` lazily.

    Args:
        package: The package's ``__name__``.
        exports: Public name -> submodule (relative to ``package``) that defines it.
    """
    names = sorted(exports)
    return names, lazy_getattr(package, exports), lambda: names


def lazy_getattr(package: str, exports: dict[str, str]) -> Any:
    """Build a module-level ``__getattr__`` that imports ``exports[name]`` (a submodule) on first access."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            module = importlib.import_module(f"{package}.{exports[name]}")
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
