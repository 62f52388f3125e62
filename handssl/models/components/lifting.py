"""2.5D -> 3D with a known or a predicted root depth and scale: how SemiHand lifts predictions and labels.

A 2.5D pose (:mod:`~handssl.models.components.pose25d`) needs the root depth and the hand's scale to become
camera-frame millimetres. ``"known"`` takes both from the annotation (the paper's protocol: "global hand scale
and hand root position are known"); ``"predicted"`` takes the scale of a template hand and recovers the root
depth in closed form from the wrist -> middle-MCP bone of that template (Iqbal et al.,
:func:`~handssl.models.components.pose25d.recover_root_depth`). :class:`Lifter` does both, for the
evaluation, the pseudo-labels and the health diagnostics (:func:`~handssl.metrics.health.pose25d_health`,
which judges depth and size on their own, so always lifted with the known root and scale).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from handssl.metrics.health import pose25d_health
from handssl.models.components.pose25d import encode_25d, lift_25d, recover_root_depth
from handssl.skeleton import BONES, MIDDLE_MCP, REFERENCE_BONE, ROOT

__all__ = ["LIFTINGS", "Lifter", "Lifting", "template_lengths"]

Lifting = Literal["known", "predicted"]
LIFTINGS = ("known", "predicted")
ROOT_BONE = (ROOT, MIDDLE_MCP)
"""The bone whose template length fixes the predicted root depth."""


def template_lengths() -> tuple[float, float]:
    """The template's reference-bone length (mm) and its wrist -> middle-MCP length in reference-bone units."""
    from handssl.kinematics import template_bone_lengths

    lengths = template_bone_lengths(torch.float64)
    ref = float(lengths[BONES.index(REFERENCE_BONE)])
    return ref, float(lengths[BONES.index(ROOT_BONE)]) / ref


class Lifter:
    """Lift 2.5D poses (``uv`` pixels, root-relative ``depth`` in reference-bone units) to camera-frame mm.

    Args:
        root: Root joint of the relative depth.
        template_scale_mm: Reference-bone length of the template hand for ``"predicted"`` lifting (default:
            the :mod:`handssl.kinematics` template's).
    """

    def __init__(self, root: int = MIDDLE_MCP, template_scale_mm: float | None = None) -> None:
        ref_mm, self.root_bone_ratio = template_lengths()
        self.root = root
        self.template_scale_mm = float(template_scale_mm or ref_mm)

    def params(
        self,
        uv: Tensor,
        depth: Tensor,
        K: Tensor,
        lifting: str,
        joints3d: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Root depth and scale (both ``(B,)`` mm) to lift a 2.5D pose: known from annotation, or predicted.

        ``"known"`` falls back to ``"predicted"`` for samples whose root or reference bone is not annotated.

        Args:
            uv: ``(B, J, 2)`` pixels.
            depth: ``(B, J)`` relative depth.
            K: ``(B, 3, 3)`` intrinsics.
            lifting: ``"known"`` or ``"predicted"``.
            joints3d: ``(B, J, 3)`` annotated camera-frame joints (mm), for ``"known"``.
            valid: ``(B, J)`` annotated joints (default: the finite ones).
        """
        root = self.root
        scale = torch.full_like(depth[:, 0], self.template_scale_mm)
        root_depth = recover_root_depth(uv, depth, K, ROOT_BONE, self.root_bone_ratio, root) * scale
        if lifting == "known" and joints3d is not None:
            needed = [root, *REFERENCE_BONE]
            _, known_root, known_scale = encode_25d(torch.nan_to_num(joints3d), root, REFERENCE_BONE)
            ok = torch.isfinite(joints3d[:, needed]).all(-1).all(-1) & (known_scale > 0)
            if valid is not None:
                ok &= valid[:, needed].bool().all(-1)
            root_depth = torch.where(ok, known_root, root_depth)
            scale = torch.where(ok, known_scale, scale)
        return root_depth, scale

    def lift(
        self,
        uv: Tensor,
        depth: Tensor,
        K: Tensor,
        lifting: str,
        joints3d: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """``(B, J, 3)`` camera-frame joints (mm) of a 2.5D pose lifted as :meth:`params` says."""
        root_depth, scale = self.params(uv, depth, K, lifting, joints3d, valid)
        return lift_25d(uv, depth, K, root_depth, scale, self.root)

    def lift_known(self, out: dict[str, Tensor], batch: dict[str, Any]) -> Tensor:
        """Camera-frame joints (mm) of network outputs lifted with the batch's annotated root depth and scale."""
        return self.lift(out["uv"], out["depth"], batch["K"], "known", batch["joints3d"], batch["valid"])

    def health(self, out: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """:func:`~handssl.metrics.health.pose25d_health` of network outputs on an annotated batch (float32)."""
        return pose25d_health(
            out["uv"],
            out["heatmaps"],
            self.lift_known(out, batch),
            batch["joints2d"],
            batch["joints3d"],
            batch["valid"],
            self.root,
        )
