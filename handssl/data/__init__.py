"""Datasets (SynthHands and the public hand datasets), transforms and DataModules.

Every dataset returns the sample dict of the data contract, :mod:`handssl.data.contract`.
"""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "DatasetError": "base",
    "HandDataset": "base",
    "mirror_sample": "base",
    "check_sample": "base",
    "pack_sample": "contract",
    "unpack_sample": "contract",
    "SynthHands": "synthhands.single_view",
    "SynthHandsMultiView": "synthhands.multi_view",
    "SynthHandsWorld": "synthhands.world",
    "RHD": "rhd",
    "STB": "stb",
    "DexterObject": "dexter_object",
    "Panoptic": "panoptic",
    "PanopticMultiView": "panoptic",
    "PanopticHandDB": "handdb",
    "FreiHAND": "freihand",
    "ImageFolder": "image_folder",
    "ImageFolderDataModule": "image_folder",
    "CropResize": "transforms",
    "ToTensor": "transforms",
    "HandDataModule": "datamodules",
    "Views": "views",
    "SupervisedViews": "views",
    "SemiHandViews": "views",
    "NVSPairs": "views",
    "SupervisedDataModule": "datamodules",
    "MultiViewDataModule": "multiview",
    "SemiSupervisedDataModule": "semi",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
