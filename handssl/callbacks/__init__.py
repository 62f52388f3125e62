"""Lightning callbacks: wandb panels, pseudo-label export, the prediction writer, and the methods' data readers.

A method reads the DataModule only through a callback it adds itself: SemiHand's offline rounds
(:class:`~handssl.callbacks.pseudo_label_pass.PseudoLabelRounds`) and the NVS pose statistics
(:class:`~handssl.callbacks.pose_statistics.PoseStatistics`).
"""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "PoseVisualizationCallback": "wandb_viz",
    "NVSVisualization": "nvs_viz",
    "PseudoLabelExport": "pseudo_labels",
    "PredictionWriter": "predictions",
    "PseudoLabelRounds": "pseudo_label_pass",
    "PoseStatistics": "pose_statistics",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
