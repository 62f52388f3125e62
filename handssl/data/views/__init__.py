"""Views: how each method turns a DataModule's dataset samples into its batches.

:class:`~handssl.data.datamodules.HandDataModule` holds the datasets and builds resumable loaders; the method's
config names its views under ``data.init_args.views``: :class:`SupervisedViews` (one cropped view per item),
:class:`SemiHandViews` (labelled and unlabelled parts with perturbations and masks), :class:`NVSPairs` (camera
pairs, appearance frames, a labelled share). A new method's views subclass :class:`Views`.
"""

from handssl.data.views.base import TrainPart, Views
from handssl.data.views.nvs import NVSPairs
from handssl.data.views.semihand import SemiHandViews
from handssl.data.views.supervised import SupervisedViews

__all__ = ["NVSPairs", "SemiHandViews", "SupervisedViews", "TrainPart", "Views"]
