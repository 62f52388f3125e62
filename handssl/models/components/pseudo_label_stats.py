"""What SemiHand reports about a training batch's pseudo-labels: logged statistics and a few kept for panels.

:func:`label_statistics` gives the batch means of the labels' spread, correction and refusal, and, where
the unlabelled items carry annotations (``eval_joints3d``, for scoring only), the labels' errors, overall and
split into accepted and rejected labels. :func:`label_stash` keeps the first items on the CPU for the
visualisation callbacks, and :func:`stash_state` turns it into the keys of
:meth:`~handssl.models.SemiHandModule.visualization_state`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from handssl.models.components.pseudo_labels import PseudoLabels, pseudo_label_errors
from handssl.skeleton import MIDDLE_MCP

__all__ = ["label_stash", "label_statistics", "stash_state"]


def label_statistics(
    labels: PseudoLabels, unlabeled: dict[str, Any], depth_root: int = MIDDLE_MCP
) -> dict[str, tuple[Tensor, int]]:
    """Statistics of a batch of pseudo-labels, by log name, each with the number of items it averages.

    Args:
        labels: The batch's pseudo-labels.
        unlabeled: The unlabelled batch; with ``eval_joints3d``, ``eval_valid`` and ``K`` the errors are added.
        depth_root: Root joint of the labels' relative depth.

    Returns:
        ``pl_spread``, ``pl_changed``, ``pl_refused``, ``pl_mirrored``, ``pl_implausibility_mm`` (batch means)
        and, with annotations, ``pl_<error>_mm`` for every error of
        :func:`~handssl.models.components.pseudo_labels.pseudo_label_errors` plus ``error_accepted`` and
        ``error_rejected`` (the final label's error split by the gate), each over its finite values only.
    """
    b = labels.spread.shape[0]
    stats = {
        f"pl_{name}": (value.float().mean(), b)
        for name, value in (
            ("spread", labels.spread),
            ("changed", labels.changed.float()),
            ("refused", labels.refused.float()),
            ("mirrored", labels.mirrored.float()),
            ("implausibility_mm", labels.implausibility_mm),
        )
    }
    if "eval_joints3d" not in unlabeled:
        return stats
    errors = pseudo_label_errors(
        labels, unlabeled["eval_joints3d"], unlabeled["eval_valid"], K=unlabeled["K"], depth_root=depth_root
    )
    errors["error_accepted"] = torch.where(labels.accepted, errors["error_final"], float("nan"))
    errors["error_rejected"] = torch.where(labels.accepted, float("nan"), errors["error_final"])
    for name, value in errors.items():
        finite = value[torch.isfinite(value)]
        if finite.numel():
            stats[f"pl_{name}_mm"] = (finite.mean(), finite.numel())
    return stats


def label_stash(
    unlabeled: dict[str, Any], labels: PseudoLabels, threshold: float | None, keep: int = 8
) -> dict[str, Any]:
    """The first ``keep`` items of a batch and their pseudo-labels, detached on the CPU, for the panels.

    Returns:
        ``image``, ``labels`` (:class:`PseudoLabels`), ``eval_joints2d``, ``eval_joints3d``, ``eval_valid``
        (empty where the batch has none) and the gate's ``threshold``.
    """
    sub = PseudoLabels(**{k: v[:keep].detach().cpu() for k, v in labels.to_dict().items()})
    return {
        "image": unlabeled["image"][:keep].detach().cpu(),
        "labels": sub,
        "eval_joints2d": unlabeled.get("eval_joints2d", torch.empty(0))[:keep].detach().cpu(),
        "eval_joints3d": unlabeled.get("eval_joints3d", torch.empty(0))[:keep].detach().cpu(),
        "eval_valid": unlabeled.get("eval_valid", torch.empty(0))[:keep].detach().cpu(),
        "threshold": threshold,
    }


def stash_state(stash: dict[str, Any] | None) -> dict[str, Any]:
    """The visualisation-state keys of a :func:`label_stash` (none without one).

    Returns:
        ``pseudo_labels`` (the stash), ``confidence`` (the labels' spread ``C``, a cost),
        ``confidence_threshold`` (``None`` with the fraction gate) and ``confidence_keep`` (``"below"``).
    """
    if stash is None:
        return {}
    threshold = stash.get("threshold")
    return {
        "pseudo_labels": stash,
        "confidence": stash["labels"].spread,
        "confidence_threshold": float(threshold) if threshold is not None else None,
        "confidence_keep": "below",
    }
