"""Lazy attribute loading for package ``__init__`` modules (keeps ``import handssl`` fast)."""

from __future__ import annotations

import importlib
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Any:
    """Build a module-level ``__getattr__`` that imports ``exports[name]`` (a submodule) on first access."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            module = importlib.import_module(f"{package}.{exports[name]}")
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
