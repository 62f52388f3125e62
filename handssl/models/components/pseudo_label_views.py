"""The views of an unlabelled image, their spread about a pose, and SemiHand's confidence gate.

See :mod:`~handssl.models.components.pseudo_labels` for the method; it re-exports these names.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from handssl.geometry import invert_matrix, transform_points
from handssl.models.components.pose25d import pose_distance


def map_back(uv: Tensor, matrices: Tensor) -> Tensor:
    """Map predictions on perturbed images back to the original frame.

    Args:
        uv: ``(B, P, J, 2)`` pixels of the perturbed images.
        matrices: ``(B, P, 3, 3)`` perturbation matrices (original -> perturbed pixels).

    Returns:
        ``(B, P, J, 2)`` pixels of the original image.
    """
    return transform_points(uv, invert_matrix(matrices.to(uv.dtype)))


def stack_views(uv: Tensor, depth: Tensor, matrices: Tensor) -> tuple[Tensor, Tensor]:
    """The views of each image from one pass over ``B`` originals followed by their ``B x P`` perturbed copies.

    Args:
        uv: ``(B + B P, J, 2)`` predictions, the originals first, then each original's ``P`` copies in turn.
        depth: ``(B + B P, J)`` relative depths, in the same order.
        matrices: ``(B, P, 3, 3)`` perturbation matrices (original -> perturbed pixels).

    Returns:
        ``(B, V, J, 2)`` and ``(B, V, J)`` with ``V = P + 1``, view 0 the original, the others mapped back.
    """
    b, p = matrices.shape[:2]
    uv_views = torch.cat([uv[:b, None], map_back(uv[b:].view(b, p, *uv.shape[1:]), matrices)], 1)
    return uv_views, torch.cat([depth[:b, None], depth[b:].view(b, p, -1)], 1)


def spread(uv_views: Tensor, depth_views: Tensor, uv: Tensor, depth: Tensor, **distance: Any) -> Tensor:
    """Mean pose distance of a set of poses from a reference pose: ``mean_s l(s, p)``.

    Args:
        uv_views: ``(B, S, J, 2)`` poses of the set.
        depth_views: ``(B, S, J)``.
        uv: ``(B, J, 2)`` reference pose (e.g. their mean).
        depth: ``(B, J)``.
        **distance: Keyword arguments of :func:`~handssl.models.components.pose25d.pose_distance`
            (``depth_weight``, ``uv_unit_px``).

    Returns:
        ``(B,)`` spread.
    """
    b, s = uv_views.shape[:2]
    ref_uv = uv.unsqueeze(1).expand_as(uv_views)
    ref_d = depth.unsqueeze(1).expand_as(depth_views)
    dist = pose_distance(
        uv_views.reshape(b * s, *uv_views.shape[2:]),
        depth_views.reshape(b * s, -1),
        ref_uv.reshape(b * s, *uv_views.shape[2:]),
        ref_d.reshape(b * s, -1),
        **distance,
    )
    return dist.view(b, s).mean(1)


def gate(
    spread: Tensor,
    threshold: float | None = None,
    accept_fraction: float | None = None,
    eligible: Tensor | None = None,
) -> Tensor:
    """Which samples pass the confidence gate (lower spread ``C`` is more confident).

    Args:
        spread: ``(N,)`` the spread ``C``.
        threshold: A fixed ``tau``: keep ``C <= tau`` (the paper's ``1(C <= tau)``; ``inf`` keeps all).
        accept_fraction: Used when ``threshold`` is ``None``: keep the ``ceil(q N)`` most confident samples of
            the ``N`` given (a per-batch quantile of ``C``; ``0`` keeps none, ``1`` all).
        eligible: Optional ``(N,)`` bool; ineligible samples (e.g. refused by the correction) never pass and
            do not take a place in the quantile.

    Returns:
        ``(N,)`` bool.
    """
    ok = torch.ones_like(spread, dtype=torch.bool) if eligible is None else eligible.bool()
    ok = ok & torch.isfinite(spread)
    if threshold is not None:
        return ok & (spread <= threshold)
    if accept_fraction is None:
        raise ValueError("gate needs a threshold or an accept_fraction")
    if not 0.0 <= accept_fraction <= 1.0:
        raise ValueError(f"accept_fraction must be in [0, 1], got {accept_fraction}")
    keep = math.ceil(accept_fraction * spread.numel() - 1e-9)
    if keep <= 0:
        return torch.zeros_like(ok)
    order = torch.where(ok, spread, torch.full_like(spread, float("inf"))).argsort(stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return ok & (rank < keep)
