"""handssl: semi-supervised 3D hand pose estimation from monocular RGB, on PyTorch Lightning.

Two methods in one library: geometry-aware novel-view synthesis (Rhodin et al.; Müller et al. for hands)
and a SemiHand-style mean teacher (Yang, Chen, Yao), with loaders for the public hand datasets and
SynthHands, a procedural calibrated multi-view hand world that runs out of the box.
"""

import os as _os

# albumentations 2.0.8 asks the package index for updates on import; handssl never touches the network.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

from handssl._lazy import lazy_getattr as _lazy_getattr

# ``infer`` lives in handssl.inference, not handssl.infer: importing a submodule named like the function would
# replace the function by the module on the package.
_EXPORTS = {"infer": "inference", "InferError": "inference"}
__all__ = ["InferError", "__version__", "infer"]
__getattr__ = _lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
