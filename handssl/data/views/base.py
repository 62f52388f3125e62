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

__all__ = ["TrainPart", "Views", "is_multiview"]

MULTIVIEW_DATA = "experiments/data/synthhands.yaml, panoptic.yaml: NVSPairs reads their multi-view forms"
SINGLE_VIEW_DATA = "experiments/data/synthhands.yaml, rhd.yaml, rhd_to_stb.yaml, ..."


def is_multiview(dataset: Dataset) -> bool:
    """Whether ``dataset``'s items are multi-view (a leading view axis; the first of a ``ConcatDataset``'s)."""
    parts = getattr(dataset, "datasets", None)
    if isinstance(parts, (list, tuple)) and parts:
        return is_multiview(parts[0])
    if hasattr(dataset, "multiview"):  # PanopticMultiView(multiview=False) gives single-view items
        return bool(dataset.multiview)
    return hasattr(dataset, "num_views")


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

    multiview: ClassVar[bool] = False
    """The views read multi-view items (NVS's pairs), else single-view samples."""

    def default_datasets(self, image_size: int, seed: int) -> dict[str, Any]:
        """The datasets of a DataModule configured with none (``train``, ``unlabeled``, ``val``, ``test``).

        The base has none: a DataModule with no dataset is a one-line error naming the keys to set.
        """
        fits = MULTIVIEW_DATA if self.multiview else SINGLE_VIEW_DATA
        raise ValueError(
            f"{type(self).__name__} has no default datasets: set data.init_args.train, val and test (a data "
            f"config, e.g. {fits})"
        )

    def adapt(self, datasets: dict[str, Dataset | None], image_size: int) -> dict[str, Dataset | None]:
        """The DataModule's datasets (by split name) in the form these views read; the base keeps them.

        Called once, before :meth:`check`. :class:`~handssl.data.views.NVSPairs` replaces single-view datasets
        by their multi-view forms (``dataset.multi_view()``), so that one data config serves every method.
        """
        return datasets

    def check(self, datamodule: HandDataModule) -> None:
        """Refuse a DataModule these views cannot serve (called once its datasets are set).

        The base refuses datasets of the other kind (multi-view items for single-view views and back), naming
        the config key and the data configs that fit.
        """
        for name, dataset in datamodule.datasets.items():
            if dataset is None or name == "predict" or is_multiview(dataset) == self.multiview:
                continue
            kind, fits = (
                ("single-view", MULTIVIEW_DATA) if self.multiview else ("multi-view", SINGLE_VIEW_DATA)
            )
            raise ValueError(
                f"{type(self).__name__} cannot use data.init_args.{name}: {type(dataset).__name__} gives {kind} "
                f"items; use a data config of its kind ({fits})"
            )

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
