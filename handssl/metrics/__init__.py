"""Pose metrics: batched functions, DDP-safe torchmetrics classes, and named evaluation protocols.

* :mod:`handssl.metrics.functional`: ``mpjpe``, ``n_mpjpe``, ``pa_mpjpe``, ``pck_curve``, ``pck_auc`` and
  the alignments protocols compose.
* :mod:`handssl.metrics.classes`: ``MPJPE``, ``NMPJPE``, ``PAMPJPE``, ``PCK``, ``PCKAUC``, ``PoseMetrics``.
* :mod:`handssl.metrics.protocols`: ``EvalProtocol``, ``ProtocolMetric``, ``PROTOCOLS``, ``get_protocol``.
* :mod:`handssl.metrics.health`: ``pose25d_health``, diagnostics of a 2.5D network (2D error, depth
  correlation, bone-length ratio, heatmap peak, per-axis error).
"""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "joint_errors": "functional",
    "masked_mean": "functional",
    "mpjpe": "functional",
    "n_mpjpe": "functional",
    "pa_mpjpe": "functional",
    "pck_curve": "functional",
    "pck_auc": "functional",
    "align_root": "functional",
    "align_root_and_scale": "functional",
    "align_centroid_and_scale": "functional",
    "align_procrustes": "functional",
    "align_scale": "functional",
    "MPJPE": "classes",
    "NMPJPE": "classes",
    "PAMPJPE": "classes",
    "PCK": "classes",
    "PCKAUC": "classes",
    "PoseMetrics": "classes",
    "EvalProtocol": "protocols",
    "ProtocolMetric": "protocols",
    "PROTOCOLS": "protocols",
    "get_protocol": "protocols",
    "HEALTH_KEYS": "health",
    "pose25d_health": "health",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
