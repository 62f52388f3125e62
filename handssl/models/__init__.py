"""LightningModules (thin wrappers) over the plain components in :mod:`handssl.models.components`."""

from handssl._lazy import lazy_getattr

_EXPORTS = {
    "BaseHandTask": "base",
    "SupervisedModule": "supervised",
    "NVSModule": "nvs",
    "SemiHandModule": "semihand",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
