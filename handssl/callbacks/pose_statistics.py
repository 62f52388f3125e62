"""The NVS pose head's normalisation statistics and the regime's labelled share, read from the DataModule.

:class:`~handssl.models.NVSModule` normalises its pose targets with the labelled training set's per-joint mean
and standard deviation (Rhodin et al.'s ``LossLabelMeanStdNormalized``), and each of its regimes needs a given
share of labelled items per batch. :class:`PoseStatistics`, a callback the module adds itself, takes both from a
:class:`~handssl.data.datamodules.HandDataModule` with :class:`~handssl.data.views.NVSPairs` views when fitting
starts, so that the module never reads the DataModule. Other DataModules (or plain dataloaders) work when the
statistics are set beforehand with ``module.pose_head.set_statistics(mean, std)`` (e.g. from
:func:`handssl.data.views.nvs.pose_statistics` of the labelled joints).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from handssl.data.views.nvs import NVSPairs

__all__ = ["PoseStatistics"]


class PoseStatistics(pl.Callback):
    """Give an NVS module's pose head the DataModule's pose statistics, and check the regime's labelled share.

    The module needs ``uses_pose``, ``pose_head`` and ``check_labeled_share(share)``.
    """

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(trainer, "datamodule", None)
        views = getattr(datamodule, "views", None)
        if datamodule is None or not isinstance(
            views, NVSPairs
        ):  # a lookalike's statistics may mean anything
            return
        pl_module.check_labeled_share(float(views.labeled_share))
        if pl_module.uses_pose and not bool(pl_module.pose_head.has_statistics):
            mean, std = views.pose_statistics(datamodule)
            pl_module.pose_head.set_statistics(mean, std)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if pl_module.uses_pose and not bool(pl_module.pose_head.has_statistics):
            raise ValueError(
                "the pose head needs the labeled training set's pose mean and std: use "
                "the data's views handssl.data.NVSPairs, or call module.pose_head.set_statistics(mean, std) "
                "first (handssl.data.views.nvs.pose_statistics computes them)"
            )
