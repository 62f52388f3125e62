"""Tiny fake copies of the public datasets in their exact on-disk formats.

The tests build them, and notebooks fall back to them when no real data is on disk. Each builder writes a
geometrically consistent copy (2D = projection of 3D) under a root folder and returns that root.
"""

from handssl._lazy import lazy_exports

_EXPORTS = {
    "make_fake_rhd": "rhd",
    "make_fake_stb": "stb",
    "make_fake_dexter_object": "dexter_object",
    "make_fake_panoptic": "panoptic",
    "make_fake_handdb": "handdb",
    "make_fake_freihand": "freihand",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
