"""LightningModules (thin wrappers) over the plain components in :mod:`handssl.models.components`."""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "BaseHandTask": "base",
    "SupervisedModule": "supervised",
    "NVSModule": "nvs",
    "SemiHandModule": "semihand",
    "Optimization": "options",
    "EMAOptions": "semihand_options",
    "PoseLossOptions": "semihand_options",
    "PseudoLabelOptions": "semihand_options",
    "CorrectionOptions": "semihand_options",
    "ConsistencyOptions": "semihand_options",
    "UnsupervisedSchedule": "semihand_options",
    "EncoderOptions": "nvs_options",
    "DecoderOptions": "nvs_options",
    "PairOptions": "nvs_options",
    "SynthesisOptions": "nvs_options",
    "GeometryOptions": "nvs_options",
    "PoseHeadOptions": "nvs_options",
    "PoseOptions": "nvs_options",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
