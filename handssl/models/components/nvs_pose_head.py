"""The NVS pose head (``L3D`` to joints, with the training pose statistics) and loading stage-1 weights.

:mod:`~handssl.models.components.nvs` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from handssl.models.components.heads import MLP
from handssl.skeleton import NUM_JOINTS, root_relative


class PoseHead(nn.Module):
    """MLP from the (un-rotated) ``L3D`` to 21 root-relative joints, with the training pose statistics.

    The MLP predicts ``(joints - mean) / std`` (Rhodin et al.'s ``LossLabelMeanStdNormalized``); ``mean`` and
    ``std`` ``(21, 3)`` are buffers, set once from the labeled training set with :meth:`set_statistics`, and
    travel with the checkpoint.

    Args:
        num_points: Points ``N`` of the 3D latent (input size ``point_dim N``).
        hidden: Hidden layer sizes (Rhodin et al.: two of 2048).
        dropout: Dropout after each hidden layer (Rhodin et al.: 0.5).
        batch_norm: BatchNorm after each hidden linear layer.
        min_std_mm: Floor of ``std`` (the root joint has zero spread once root-relative).
        point_dim: Columns of a point (3, or 4 with the encoder's opacities).
    """

    mean: Tensor
    std: Tensor
    has_statistics: Tensor

    def __init__(
        self,
        num_points: int = 200,
        hidden: Sequence[int] = (2048, 2048),
        dropout: float = 0.5,
        batch_norm: bool = True,
        min_std_mm: float = 1.0,
        point_dim: int = 3,
    ) -> None:
        super().__init__()
        self.mlp = MLP(point_dim * num_points, hidden, NUM_JOINTS * 3, dropout=dropout, batch_norm=batch_norm)
        self.min_std_mm = min_std_mm
        self.register_buffer("mean", torch.zeros(NUM_JOINTS, 3))
        self.register_buffer("std", torch.ones(NUM_JOINTS, 3))
        self.register_buffer("has_statistics", torch.tensor(False))

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Store the per-coordinate mean and standard deviation ``(21, 3)`` of root-relative joints (mm)."""
        mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        if mean.shape != (NUM_JOINTS, 3) or std.shape != (NUM_JOINTS, 3):
            raise ValueError(f"mean and std must be (21, 3), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("pose statistics hold NaN or inf; are there valid labeled joints?")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(self.min_std_mm))
        self.has_statistics.fill_(True)

    def normalize(self, joints: Tensor) -> Tensor:
        """Root-relative joints (mm) to the normalised space the MLP predicts in."""
        return (joints - self.mean) / self.std

    def denormalize(self, normalized: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        return normalized * self.std + self.mean

    def forward(self, points: Tensor) -> Tensor:
        """``(B, N, point_dim)`` latent points to normalised joints ``(B, 21, 3)`` (see :meth:`to_joints`)."""
        return self.mlp(points.flatten(1)).view(-1, NUM_JOINTS, 3)

    def to_joints(self, normalized: Tensor) -> Tensor:
        """Normalised output to root-relative joints in mm (the root is set exactly to zero)."""
        joints = self.denormalize(normalized)
        return root_relative(joints)


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a Lightning checkpoint (``state_dict`` inside) or a plain state dict from disk."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained_checkpoint not found: {path} (give the checkpoint that stage 1 of the pretrained "
            "regime wrote, e.g. experiments/nvs_pretrained.yaml's ModelCheckpoint dirpath)"
        )
    # Lightning checkpoints pickle hyper-parameters too; the file is the user's own training output.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (got {type(state).__name__})")
    return state


def load_modules(path: str | Path, modules: Mapping[str, nn.Module | None]) -> None:
    """Load each named module (weights and BatchNorm statistics) from the ``<name>.*`` keys of a checkpoint.

    Raises:
        ValueError: The checkpoint holds no such keys, or they do not fit the module's architecture.
    """
    state = load_state_dict_file(path)
    for name, module in modules.items():
        if module is None:
            continue
        prefix = f"{name}."
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not part:
            raise ValueError(f"{path} holds no {name} weights (keys starting with {prefix!r})")
        own = module.state_dict()
        mismatch = [k for k in own if k not in part or tuple(part[k].shape) != tuple(own[k].shape)]
        if mismatch:
            raise ValueError(
                f"{path}: the {name} does not match this model's architecture ({len(mismatch)} missing or "
                f"mis-shaped tensors, e.g. {mismatch[:3]}); use the same image_size, num_points, "
                "appearance_dim and widths as stage 1"
            )
        module.load_state_dict(part)
