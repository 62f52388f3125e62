"""Lightning callbacks: wandb visualisation panels and pseudo-label export."""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "PoseVisualizationCallback": "wandb_viz",
    "NVSVisualization": "nvs_viz",
    "PseudoLabelExport": "pseudo_labels",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
