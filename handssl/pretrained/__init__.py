"""Shipped weights: networks trained by the benchmarks, inside the package, loaded without a network connection.

Each shipped network is two files in ``handssl/pretrained/weights/``: ``<name>.pt`` (the LightningModule's class
name, its hyper-parameters, its state dict and the extra state its ``on_load_checkpoint`` reads) and
``<name>.json`` (how it was made: the command, the commit, the measured metrics, the file's SHA-256). Both are
written by ``experiments/tools/ship_weights.py`` from a benchmark's checkpoints; nothing is ever downloaded.

    >>> import handssl.pretrained
    >>> handssl.pretrained.available()                       # the names shipped in this install
    >>> model = handssl.pretrained.load("semihand-synthhands")  # a SemiHandModule in eval mode
    >>> handssl.pretrained.info("semihand-synthhands")["metrics"]

On the command line a shipped name goes wherever a checkpoint does (``handssl predict|test|validate|fit
--ckpt_path semihand-synthhands``, ``handssl export --ckpt_path semihand-synthhands``): :func:`resolve_ckpt_path`
turns it into a Lightning checkpoint written once into a cache (:func:`lightning_checkpoint`), and ``fit``
starts from its weights with a fresh optimizer (:func:`load_weights_into`) instead of resuming.

The names (``NAMES``; a name not shipped in this install says how to produce it):

* ``semihand-source-only-synthhands``, ``semihand-synthhands``, ``semihand-oracle-synthhands``: the
  source-only, full SemiHand (mean teacher) and target-oracle rows of
  ``experiments/studies/semihand_ablation.py`` (SynthHands v2, synthetic-style labels -> real-style images,
  64 px);
* ``nvs-supervised-synthhands``, ``nvs-pretrained-synthhands``, ``nvs-semi-synthhands``: the supervised,
  pretrained (stage 1 + stage 2) and semi rows of ``experiments/studies/nvs_sweep.py`` at one labelled subject
  (64 px).

A network of stage 2 of NVS's pretrained regime names stage 1's checkpoint (``pretrained_checkpoint``), whose path
is not shipped; it needs no such file to load, predict or be fine-tuned, as its state dict holds stage 1's encoder
and decoder (:meth:`~handssl.models.NVSModule.load_state_dict`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeGuard

import torch

__all__ = [
    "NAMES",
    "WEIGHTS_DIR",
    "PretrainedError",
    "available",
    "cache_dir",
    "info",
    "is_shipped",
    "lightning_checkpoint",
    "load",
    "load_weights_into",
    "pack",
    "resolve_ckpt_path",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
FORMAT = 1
MAX_BYTES = 10 * 1024 * 1024
CLASSES = ("SupervisedModule", "NVSModule", "SemiHandModule")

NAMES: dict[str, str] = {
    "semihand-source-only-synthhands": "python experiments/tools/ship_weights.py semihand",
    "semihand-synthhands": "python experiments/tools/ship_weights.py semihand",
    "semihand-oracle-synthhands": "python experiments/tools/ship_weights.py semihand",
    "nvs-semi-synthhands": "python experiments/tools/ship_weights.py nvs",
    "nvs-supervised-synthhands": "python experiments/tools/ship_weights.py nvs",
    "nvs-pretrained-synthhands": "python experiments/tools/ship_weights.py nvs",
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
        how = NAMES.get(name, "experiments/tools/ship_weights.py")
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


def _payload(name: str, map_location: str | torch.device, weights_dir: str | Path | None) -> dict[str, Any]:
    """The checked contents of ``<name>.pt`` (see :func:`pack`); raises :class:`PretrainedError` as ``load``."""
    weights, _ = _check_name(name, weights_dir)
    meta = info(name, weights_dir)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if meta.get("sha256") and meta["sha256"] != digest:
        raise PretrainedError(
            f"{weights} is corrupt: its SHA-256 {digest[:12]}... does not match {meta['sha256'][:12]}... "
            "recorded beside it; reinstall handssl or rerun "
            f"{NAMES.get(name, 'experiments/tools/ship_weights.py')}"
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
    payload["sha256"] = digest
    return payload


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
    weights, _ = _paths(name, weights_dir)
    payload = _payload(name, map_location, weights_dir)
    cls = getattr(importlib.import_module("handssl.models"), payload["class"])
    module = cls(**constructor_arguments(payload["hparams"]))
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise PretrainedError(f"{weights} does not fit {payload['class']}: {first}") from None
    module.on_load_checkpoint(payload.get("extra", {}))
    return module.to(map_location).eval()


def load_weights_into(module: Any, name: str, weights_dir: str | Path | None = None) -> Any:
    """Start ``module`` from the shipped weights ``name``: its state dict and extra state, nothing else.

    What ``handssl fit --ckpt_path <name>`` does: fine-tuning starts at step 0 with a fresh optimizer and
    learning-rate schedule (shipped weights carry neither), from the shipped network's weights (for SemiHand
    also its teacher, EMA count and template).

    Args:
        module: A task of the shipped network's class, built with its hyper-parameters.
        name: A shipped name (:func:`available`).
        weights_dir: Folder of ``<name>.pt`` / ``<name>.json`` (default: the package's ``weights``).

    Returns:
        ``module``.

    Raises:
        PretrainedError: As :func:`load`, or ``module`` is not of the shipped class.
    """
    payload = _payload(name, "cpu", weights_dir)
    if type(module).__name__ != payload["class"]:
        raise PretrainedError(f"{name!r} is a {payload['class']}, not a {type(module).__name__}")
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise PretrainedError(f"{name!r} does not fit this {payload['class']}: {first}") from None
    module.on_load_checkpoint(payload.get("extra", {}))
    return module


def cache_dir() -> Path:
    """The folder of materialised checkpoints' parent: ``$HANDSSL_CACHE``, ``$XDG_CACHE_HOME/handssl`` or ``~/.cache/handssl``."""
    if os.environ.get("HANDSSL_CACHE"):
        return Path(os.environ["HANDSSL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "handssl"


def lightning_checkpoint(
    name: str, cache: str | Path | None = None, weights_dir: str | Path | None = None
) -> Path:
    """The shipped network ``name`` as a Lightning checkpoint file, so that ``--ckpt_path <name>`` works.

    The file holds what ``handssl fit`` would have saved for the model alone: ``state_dict``,
    ``hyper_parameters`` (with ``_class_path``, so the CLI rebuilds the model from it), the extra state of
    the task's ``on_load_checkpoint`` and the Lightning version; no optimizer or loop state, so it cannot be
    resumed, only evaluated, predicted with, exported or fine-tuned from. It is written once per weights file
    (named by its SHA-256) into ``cache`` (default :func:`cache_dir`, falling back to a temporary folder
    when that is not writable) and reused.

    Args:
        name: A shipped name (:func:`available`).
        cache: Folder of the materialised checkpoints.
        weights_dir: Folder of ``<name>.pt`` / ``<name>.json`` (default: the package's ``weights``).

    Returns:
        The checkpoint's path.

    Raises:
        PretrainedError: As :func:`load`.
    """
    weights, _ = _check_name(name, weights_dir)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    folders = [Path(cache)] if cache is not None else [cache_dir() / "checkpoints"]
    folders.append(Path(tempfile.gettempdir()) / "handssl-checkpoints")
    checkpoint: dict[str, Any] | None = None
    errors = []
    for folder in folders:  # the cache, else (not writable) the temporary folder
        path = folder / f"{name}-{digest[:16]}.ckpt"
        if path.is_file():
            return path
        if checkpoint is None:
            checkpoint = _checkpoint_of(_payload(name, "cpu", weights_dir))
        temporary: str | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Write-then-rename: concurrent runs (DDP ranks, two shells) never see a half-written file.
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
                temporary = handle.name
                torch.save(checkpoint, handle)
            os.replace(temporary, path)
            return path
        except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            errors.append(f"{folder}: {reason.splitlines()[0] if reason else type(error).__name__}")
    raise PretrainedError(f"cannot write the checkpoint of {name!r}: {'; '.join(errors)}")


def _checkpoint_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The Lightning checkpoint of a payload."""
    import pytorch_lightning as pl

    return {
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
        "state_dict": payload["state_dict"],
        "hyper_parameters": {
            **constructor_arguments(payload["hparams"]),
            "_class_path": f"handssl.models.{payload['class']}",
        },
        **payload.get("extra", {}),
        "handssl_pretrained": {"sha256": payload["sha256"]},
    }


#: ``--ckpt_path`` values Lightning resolves itself (the run's own checkpoints, SLURM, its model registry).
LIGHTNING_CKPT_VALUES = ("best", "last", "hpc", "registry")


def resolve_ckpt_path(value: str | Path | None, weights_dir: str | Path | None = None) -> str | None:
    """A ``--ckpt_path`` value as a checkpoint file: a shipped name becomes :func:`lightning_checkpoint`'s file.

    A file, a value Lightning resolves itself (``best``, ``last``, ``hpc``, ``registry...``) and a URL
    (``s3://...``) are returned as they are.

    Raises:
        PretrainedError: ``value`` is neither an existing file nor a shipped name (the message lists the
            shipped names), or the shipped weights cannot be read.
    """
    if value is None:
        return None
    text = str(value)
    if Path(text).is_file() or "://" in text or text.startswith(LIGHTNING_CKPT_VALUES):
        return text
    if text in available(weights_dir):
        return str(lightning_checkpoint(text, weights_dir=weights_dir))
    raise PretrainedError(
        f"checkpoint not found: {text!r} is neither a checkpoint file nor a shipped network; "
        f"shipped: {', '.join(available(weights_dir)) or 'none'} (`handssl models` describes them)"
    )


def is_shipped(value: Any, weights_dir: str | Path | None = None) -> TypeGuard[str]:
    """Whether ``value`` names shipped weights (and is not also an existing file, which takes precedence)."""
    return isinstance(value, str) and not Path(value).is_file() and value in available(weights_dir)


def constructor_arguments(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` without the keys LightningCLI adds for itself (``_class_path``, ``_instantiator``).

    Flat arguments of earlier versions (the shipped files' ``lr=`` ...) go into their option group
    (:func:`~handssl.models.options.upgrade_hparams`).
    """
    from handssl.models.options import upgrade_hparams

    return {key: value for key, value in upgrade_hparams(hparams).items() if not key.startswith("_")}


def pack(
    module_class: str, hparams: dict[str, Any], state_dict: dict[str, Any], extra: dict[str, Any]
) -> dict:
    """The payload of a ``<name>.pt`` file (what :func:`load` reads).

    ``experiments/tools/ship_weights.py`` packs the shipped networks with it.
    """
    if module_class not in CLASSES:
        raise PretrainedError(f"cannot pack class {module_class!r}; choose from {', '.join(CLASSES)}")
    return {
        "format": FORMAT,
        "class": module_class,
        "hparams": constructor_arguments(hparams),
        "state_dict": state_dict,
        "extra": extra,
    }
