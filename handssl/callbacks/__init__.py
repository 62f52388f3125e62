"""Lightning callbacks: wandb visualisation panels, pseudo-label export and the prediction writer."""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "PoseVisualizationCallback": "wandb_viz",
    "NVSVisualization": "nvs_viz",
    "PseudoLabelExport": "pseudo_labels",
    "PredictionWriter": "predictions",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
