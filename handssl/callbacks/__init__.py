"""Lightning callbacks: wandb visualisation panels and pseudo-label export."""

from handssl._lazy import lazy_getattr

_EXPORTS = {
    "PoseVisualizationCallback": "wandb_viz",
    "NVSVisualization": "nvs_viz",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
