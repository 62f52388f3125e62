"""The interface between :class:`~handssl.data.datamodules.HandDataModule` and a method's views.

A DataModule holds datasets (``train``, ``unlabeled``, ``val``, ``test``, ``predict``) and builds resumable
loaders; a :class:`Views` object, named by the method's config (``data.init_args.views``), says how dataset
samples become that method's batches: which training parts a batch has (:class:`TrainPart`: the viewed
dataset, its items per batch and, optionally, its batch sampler policy), how evaluation items look, and what
happens to a batch once it is on its device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch.utils.data import BatchSampler, Dataset, Sampler

if TYPE_CHECKING:
    from handssl.data.datamodules import HandDataModule

__all__ = ["TrainPart", "Views"]


@dataclass(frozen=True)
class TrainPart:
    """One part of a training batch.

    Attributes:
        dataset: The viewed training items (a map-style dataset of packed samples).
        batch_size: Items of this part per batch.
        batch_sampler: Optional policy: builds the batch sampler from a seeded stream of indices (e.g. NVS's
            labelled share); ``None`` draws ``batch_size`` items per batch from a resumable shuffled order.
    """

    dataset: Dataset
    batch_size: int
    batch_sampler: Callable[[Sampler[int]], BatchSampler] | None = None


class Views:
    """How a method turns a DataModule's samples into its batches (the base: override what differs).

    Subclasses: :class:`~handssl.data.views.SupervisedViews` (one cropped view per item),
    :class:`~handssl.data.views.SemiHandViews` (labelled + unlabelled parts with perturbations and masks),
    :class:`~handssl.data.views.NVSPairs` (camera pairs, appearance frames, a labelled share).
    """

    combined: ClassVar[bool] = False
    """Training batches are ``{part name: batch}`` dicts (Lightning's ``CombinedLoader``), else one part's."""

    example_dataset: ClassVar[str] = "handssl.data.SynthHands"
    """A dataset class the error for a missing split suggests."""

    def default_datasets(self, image_size: int, seed: int) -> dict[str, Any]:
        """The datasets of a DataModule configured with none (``train``, ``unlabeled``, ``val``, ``test``)."""
        raise NotImplementedError

    def check(self, datamodule: HandDataModule) -> None:
        """Refuse a DataModule these views cannot serve (called once its datasets are set)."""

    def train_parts(self, datamodule: HandDataModule) -> dict[str, TrainPart]:
        """The parts of a training batch, by name (one part unless :attr:`combined`)."""
        raise NotImplementedError

    def eval_view(self, datamodule: HandDataModule, dataset: Dataset) -> Dataset:
        """Validation / test / prediction items of ``dataset``."""
        raise NotImplementedError

    def eval_batch_size(self, datamodule: HandDataModule) -> int:
        """Items per validation / test / prediction batch."""
        return datamodule.batch_size

    def on_after_batch_transfer(self, datamodule: HandDataModule, batch: Any, training: bool) -> Any:
        """Change a batch on its device (after any deferred rendering); ``training``: a training batch."""
        return batch
