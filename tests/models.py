"""Small architectures the tests explain: each one exercises a different part of the plumbing."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Give BatchNorm non-trivial running statistics and affine parameters, so eval mode matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


class ConvBNNet(nn.Module):
    """CNN with BatchNorm and max pooling; images [B, 3, 16, 16] -> logits [B, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class ResidualNet(nn.Module):
    """Residual net with functional ``x + y`` skip connections; [B, 3, 12, 12] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = x + F.softplus(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))


class SmoothMLP(nn.Module):
    """MLP with tanh and sigmoid; features [B, 10] -> [B, 3]. Smooth, for convergence tests."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SignalCNN(nn.Module):
    """1-D CNN over signals [B, 2, 32] -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, 6, 5, padding=2),
            nn.BatchNorm1d(6),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(6, 6, 3, padding=1),
            nn.ELU(),
            nn.AdaptiveAvgPool1d(4),
            nn.Flatten(),
            nn.Linear(24, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ImageAndTabular(nn.Module):
    """Two inputs: an image [B, 1, 8, 8] and lab values [B, 4] -> [B, 3]; passed as x, labs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.labs = nn.Linear(4, 8)
        self.head = nn.Linear(4 * 8 * 8 + 8, 3)

    def forward(self, image: Tensor, labs: Tensor) -> Tensor:
        z = torch.cat([torch.tanh(self.conv(image)).flatten(1), torch.tanh(self.labs(labs))], 1)
        return self.head(z)


ARCHITECTURES = {
    "conv_bn": (ConvBNNet, (3, 16, 16)),
    "residual": (ResidualNet, (3, 12, 12)),
    "mlp": (SmoothMLP, (10,)),
    "signal": (SignalCNN, (2, 32)),
}


class RowCounter(nn.Module):
    """Wraps a model and counts the rows of every forward in ``self.rows``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, Tensor]:
    """An eval-mode model of the named architecture and a batch of 3 inputs for it."""
    cls, shape = ARCHITECTURES[name]
    torch.manual_seed(seed)
    model = cls()
    _randomise_batchnorm(model, seed)
    model = model.to(dtype).eval()
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return model, x
