"""SynthHands: a procedural, calibrated, multi-view hand world rendered on the fly (handssl's default data)."""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "Subject": "motion",
    "HandPose": "motion",
    "GESTURES": "motion",
    "make_subject": "motion",
    "sequence_pose": "motion",
    "sequence_joints": "motion",
    "SynthHands": "dataset",
    "SynthHandsMultiView": "dataset",
    "SynthHandsWorld": "dataset",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
