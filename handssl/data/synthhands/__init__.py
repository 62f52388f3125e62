"""SynthHands: a procedural, calibrated, multi-view hand world rendered on the fly (handssl's default data)."""

from handssl._lazy import lazy_getattr

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
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
