"""Small heads shared by the models: an MLP and the direct joint-regression head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from handssl.skeleton import NUM_JOINTS


class MLP(nn.Module):
    """Fully connected network: Linear -> [BatchNorm] -> ReLU -> Dropout per hidden layer, then Linear.

    Args:
        in_features: Input features.
        hidden: Sizes of the hidden layers.
        out_features: Output features.
        dropout: Dropout after each hidden layer.
        batch_norm: Use BatchNorm1d after each hidden Linear.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class JointRegressionHead(nn.Module):
    """Regress root-relative 3D joints (mm) and 2D joints (in units of the image side) from a feature vector.

    Args:
        in_features: Feature size.
        hidden: Hidden layer sizes.
        dropout: Dropout in the hidden layers.
        joint_scale_mm: 3D outputs are predicted in units of this many mm (keeps targets near unit scale).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        joint_scale_mm: float = 100.0,
    ) -> None:
        super().__init__()
        self.joint_scale_mm = joint_scale_mm
        self.mlp = MLP(in_features, hidden, NUM_JOINTS * 5, dropout=dropout)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(joints3d_rel (B, 21, 3) mm, joints2d_unit (B, 21, 2) in [0, 1] image units)``."""
        out = self.mlp(features).float()  # float32 outputs under mixed precision
        joints3d = out[:, : NUM_JOINTS * 3].view(-1, NUM_JOINTS, 3) * self.joint_scale_mm
        joints2d = out[:, NUM_JOINTS * 3 :].view(-1, NUM_JOINTS, 2) + 0.5
        return joints3d, joints2d
