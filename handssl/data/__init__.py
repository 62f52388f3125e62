"""Datasets (SynthHands and the public hand datasets), transforms and DataModules.

Every dataset returns the sample dict described in :mod:`handssl.data.base`.
"""

from handssl._lazy import lazy_getattr

_EXPORTS = {
    "DatasetError": "base",
    "HandDataset": "base",
    "mirror_sample": "base",
    "check_sample": "base",
    "SynthHands": "synthhands.dataset",
    "SynthHandsMultiView": "synthhands.dataset",
    "RHD": "rhd",
    "STB": "stb",
    "DexterObject": "dexter_object",
    "PanopticMultiView": "panoptic",
    "PanopticHandDB": "handdb",
    "FreiHAND": "freihand",
    "CropResize": "transforms",
    "ToTensor": "transforms",
    "HandDataModule": "datamodules",
    "SupervisedDataModule": "datamodules",
    "MultiViewDataModule": "multiview",
    "SemiSupervisedDataModule": "semi",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
