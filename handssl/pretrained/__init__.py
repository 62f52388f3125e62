"""Shipped weights: networks trained by the benchmarks, inside the package, loaded without a network connection.

Each shipped network is two files in ``handssl/pretrained/weights/``: ``<name>.pt`` (the LightningModule's class
name, its hyper-parameters, its state dict and the extra state its ``on_load_checkpoint`` reads) and
``<name>.json`` (how it was made: the command, the commit, the measured metrics, the file's SHA-256). Both are
written by ``experiments/ship_weights.py`` from a benchmark's checkpoints; nothing is ever downloaded.

    >>> import handssl.pretrained
    >>> handssl.pretrained.available()                       # the names shipped in this install
    >>> model = handssl.pretrained.load("semihand-synthhands")  # a SemiHandModule in eval mode
    >>> handssl.pretrained.info("semihand-synthhands")["metrics"]

The names (``NAMES``; a name not shipped in this install says how to produce it):

* ``semihand-source-only-synthhands``, ``semihand-synthhands``, ``semihand-oracle-synthhands``: the
  source-only, full SemiHand (mean teacher) and target-oracle rows of ``experiments/semihand_ablation.py``
  (SynthHands v2, synthetic-style labels -> real-style images, 64 px);
* ``nvs-semi-synthhands``, ``nvs-supervised-synthhands``: the semi and supervised rows of
  ``experiments/label_sweep.py`` at one labelled subject (64 px).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["NAMES", "WEIGHTS_DIR", "available", "info", "load", "pack"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
FORMAT = 1
MAX_BYTES = 10 * 1024 * 1024
CLASSES = ("SupervisedModule", "NVSModule", "SemiHandModule")

NAMES: dict[str, str] = {
    "semihand-source-only-synthhands": "python experiments/ship_weights.py semihand",
    "semihand-synthhands": "python experiments/ship_weights.py semihand",
    "semihand-oracle-synthhands": "python experiments/ship_weights.py semihand",
    "nvs-semi-synthhands": "python experiments/ship_weights.py nvs",
    "nvs-supervised-synthhands": "python experiments/ship_weights.py nvs",
}
"""Every name ``load`` knows, with the command that produces its weights."""


class PretrainedError(ValueError):
    """A shipped-weights file is unknown, missing or unreadable (the message is one line)."""


def _paths(name: str, weights_dir: str | Path | None) -> tuple[Path, Path]:
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return folder / f"{name}.pt", folder / f"{name}.json"


def available(weights_dir: str | Path | None = None) -> list[str]:
    """The names whose weights are shipped (present) in ``weights_dir`` (default: the package's), sorted."""
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return sorted(p.stem for p in folder.glob("*.pt") if (folder / f"{p.stem}.json").is_file())


def _check_name(name: str, weights_dir: str | Path | None) -> tuple[Path, Path]:
    if not isinstance(name, str) or (name not in NAMES and name not in available(weights_dir)):
        raise PretrainedError(f"unknown pretrained name {name!r}; choose from {', '.join(sorted(NAMES))}")
    weights, meta = _paths(name, weights_dir)
    if not weights.is_file() or not meta.is_file():
        missing = weights if not weights.is_file() else meta
        how = NAMES.get(name, "experiments/ship_weights.py")
        raise PretrainedError(
            f"weights of {name!r} are not shipped in this install ({missing} missing); produce them with: {how}"
        )
    return weights, meta


def info(name: str, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """The metadata of shipped weights: ``command``, ``commit``, ``metrics``, ``sha256``, ``bytes``, ...

    Raises:
        PretrainedError: Unknown name, weights not shipped, or an unreadable metadata file.
    """
    _, meta = _check_name(name, weights_dir)
    try:
        return json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedError(f"cannot read {meta}: {type(error).__name__}: {error}") from None


def load(name: str, map_location: str | torch.device = "cpu", weights_dir: str | Path | None = None) -> Any:
    """The shipped LightningModule ``name`` in eval mode, with its weights and extra state restored.

    Args:
        name: One of :data:`NAMES` (:func:`available` lists those shipped in this install).
        map_location: Device to load the tensors onto.
        weights_dir: Folder of ``<name>.pt`` / ``<name>.json`` (default: the package's ``weights``).

    Raises:
        PretrainedError: Unknown name, weights not shipped, a corrupt or truncated file (its SHA-256 does
            not match the metadata, or it cannot be unpickled), or weights that do not fit their class.
    """
    weights, _ = _check_name(name, weights_dir)
    meta = info(name, weights_dir)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if meta.get("sha256") and meta["sha256"] != digest:
        raise PretrainedError(
            f"{weights} is corrupt: its SHA-256 {digest[:12]}... does not match {meta['sha256'][:12]}... "
            f"recorded beside it; reinstall handssl or rerun {NAMES.get(name, 'experiments/ship_weights.py')}"
        )
    try:
        payload = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as error:  # any unpickling failure means the same thing to the user
        raise PretrainedError(
            f"cannot read {weights} (corrupt or truncated?): {type(error).__name__}"
        ) from None
    if (
        not isinstance(payload, dict)
        or payload.get("format") != FORMAT
        or payload.get("class") not in CLASSES
    ):
        raise PretrainedError(f"{weights} is not a handssl weights file of format {FORMAT}")
    cls = getattr(importlib.import_module("handssl.models"), payload["class"])
    module = cls(**payload["hparams"])
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise PretrainedError(f"{weights} does not fit {payload['class']}: {first}") from None
    module.on_load_checkpoint(payload.get("extra", {}))
    return module.to(map_location).eval()


def pack(
    module_class: str, hparams: dict[str, Any], state_dict: dict[str, Any], extra: dict[str, Any]
) -> dict:
    """The payload of a ``<name>.pt`` file (what :func:`load` reads); used by ``experiments/ship_weights.py``."""
    if module_class not in CLASSES:
        raise PretrainedError(f"cannot pack class {module_class!r}; choose from {', '.join(CLASSES)}")
    return {
        "format": FORMAT,
        "class": module_class,
        "hparams": hparams,
        "state_dict": state_dict,
        "extra": extra,
    }
