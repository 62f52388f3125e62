"""SynthHands rendered on the training device, inside the training step.

The DataLoader (and its workers) only hand out *render requests*: the keys of a batch's items, a tiny long
tensor per item under :data:`RENDER_REQUEST`. Lightning moves the batch to the training device, and the
DataModule's ``on_after_batch_transfer`` calls :meth:`DeferredRendering.render`, which runs the very same
dataset code as the worker path (the wrappers' ``__getitems__``: pairs, transforms) inside each SynthHands
dataset's :meth:`~handssl.data.synthhands.dataset.SynthHandsBase.rendering_on` block, so that SynthHands
ray-casts and shades the whole batch on that device, uncached. A batch rendered this way equals the one the
workers would have made (``tests/test_synthhands.py`` checks it pixel for pixel on the CPU).

Used by :class:`~handssl.data.datamodules.HandDataModule` with ``render_on="device"``, whatever its views (for
:class:`~handssl.data.views.SemiHandViews` each SynthHands part of its combined batch; SemiHand's albumentations
augmentations then run on the CPU in the main process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from handssl.data.synthhands.dataset import SynthHandsBase

__all__ = ["RENDER_REQUEST", "DeferredRendering", "find_synthhands", "synthhands_inside"]

RENDER_REQUEST = "synthhands_render_request"
"""Batch key of the render requests: ``(B, 4)`` long, one encoded dataset key per row."""

_INT_KEY = -1  # first column of a request whose key is a plain index (else: the tuple's length)


def synthhands_inside(dataset: Any) -> list[SynthHandsBase]:
    """Every :class:`SynthHandsBase` in ``dataset``'s tree of ``.dataset`` / ``.datasets`` (concatenation) wrappers."""
    found: list[SynthHandsBase] = []
    stack, seen = [dataset], 0
    while stack and seen < 64:
        node, seen = stack.pop(), seen + 1
        if isinstance(node, SynthHandsBase):
            found.append(node)
        elif node is not None:
            stack.extend(reversed(list(getattr(node, "datasets", None) or [])))
            stack.append(getattr(node, "dataset", None))
    return found


def find_synthhands(dataset: Any) -> SynthHandsBase | None:
    """The first :class:`SynthHandsBase` inside ``dataset`` (see :func:`synthhands_inside`), if there is one."""
    found = synthhands_inside(dataset)
    return found[0] if found else None


def encode_key(key: int | tuple[int, ...] | list[int]) -> Tensor:
    """One dataset key (an index, or a tuple of up to three ints such as ``(index, labeled, epoch)``)."""
    if isinstance(key, (tuple, list)):
        if len(key) > 3:
            raise ValueError(f"render requests hold keys of at most 3 ints, got {key!r}")
        values = [len(key), *(int(v) for v in key)]
    else:
        values = [_INT_KEY, int(key)]
    return torch.tensor(values + [0] * (4 - len(values)), dtype=torch.long)


def decode_keys(requests: Tensor) -> list[int | tuple[int, ...]]:
    """The dataset keys of a ``(B, 4)`` request batch (inverse of :func:`encode_key`)."""
    keys: list[int | tuple[int, ...]] = []
    for row in requests.tolist():
        keys.append(row[1] if row[0] == _INT_KEY else tuple(row[1 : 1 + row[0]]))
    return keys


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


class DeferredRendering(Dataset):
    """A training set whose items are render requests; :meth:`render` turns a batch of them into samples.

    Args:
        dataset: The dataset the DataLoader would have used (e.g. pairs over a ``SynthHandsMultiView``, or a
            ``TransformedDataset`` over ``SynthHands``); a :class:`SynthHandsBase` must be inside its chain of
            ``.dataset`` wrappers.
        collate: The DataLoader's collate function, applied to the rendered samples.

    Raises:
        ValueError: when ``dataset`` holds no SynthHands dataset.
    """

    def __init__(self, dataset: Dataset, collate: Callable[[list[Any]], Any]) -> None:
        synthhands = synthhands_inside(dataset)
        if not synthhands:
            raise ValueError(
                f"render_on='device' renders SynthHands in the training step, but the training set is "
                f"{type(dataset).__name__} with no SynthHands inside; use render_on='workers'"
            )
        self.dataset = dataset
        self.synthhands = synthhands
        self.collate = collate

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple) -> dict[str, Tensor]:
        return {RENDER_REQUEST: encode_key(key)}

    def __getitems__(self, keys: Sequence[int | tuple]) -> list[dict[str, Tensor]]:
        return [self[key] for key in keys]

    def render(self, batch: dict[str, Any]) -> Any:
        """The collated samples of a request batch, rendered on the requests' device (uncached)."""
        requests = batch[RENDER_REQUEST]
        device = requests.device
        keys = decode_keys(requests)
        with contextlib.ExitStack() as stack:
            for synthhands in self.synthhands:
                stack.enter_context(synthhands.rendering_on(device))
            fetch = getattr(self.dataset, "__getitems__", None)
            samples = fetch(keys) if fetch is not None else [self.dataset[k] for k in keys]
        return _to_device(self.collate(samples), device)  # wrappers may add small CPU tensors (flags)
