"""SynthHands: a procedural, calibrated, multi-view hand world rendered on the fly (handssl's default data)."""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "Subject": "motion",
    "HandPose": "motion",
    "GESTURES": "motion",
    "make_subject": "motion",
    "sequence_pose": "motion",
    "sequence_joints": "motion",
    "STYLES": "appearance",
    "SynthHands": "single_view",
    "SynthHandsMultiView": "multi_view",
    "SynthHandsWorld": "world",
    "SynthHandsBase": "dataset",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
