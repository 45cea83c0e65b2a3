"""Benchmark models, written from scratch (torchvision is not a dependency).

* ``small``: a four-conv CNN with BatchNorm, ReLU and max pooling and a linear head; any square
  input side that is a multiple of 4 (3x32x32, 3x64x64, ...), 10 classes.
* ``resnet18``: the ResNet-18 architecture (He et al. 2016): BasicBlock with a functional residual
  add, [2, 2, 2, 2] blocks of widths 64/128/256/512, BatchNorm, global average pooling; 1000
  classes by default. About 11.7 M parameters, like torchvision's ``resnet18``.

:func:`build` returns either, with fixed-seed weights and non-trivial BatchNorm statistics, in eval
mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MODELS = ("small", "resnet18")


class SmallCNN(nn.Module):
    """conv-bn-relu x2, maxpool, conv-bn-relu x2, maxpool, global average pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.features = nn.Sequential(
            block(3, width),
            block(width, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, 3, H, W]``."""
        return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with a residual connection (1x1 conv-bn projection when needed)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18: 7x7/2 stem, 3x3/2 max pool, four stages of two BasicBlocks, average pool, fc."""

    def __init__(
        self, num_classes: int = 1000, widths: tuple[int, ...] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, 3, H, W]`` (H, W >= 32)."""
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (seeded)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))


def build(
    name: str,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """Build benchmark model ``name`` (``"small"`` or ``"resnet18"``) on ``device``, in eval mode.

    Weights are drawn with ``seed`` (default initialisation, plus random BatchNorm statistics), so
    two calls give identical models. ``num_classes`` defaults to 10 (small) and 1000 (resnet18).
    """
    torch.manual_seed(seed)
    if name == "small":
        model: nn.Module = SmallCNN(num_classes=num_classes or 10)
    elif name == "resnet18":
        model = ResNet18(num_classes=num_classes or 1000)
    else:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.to(device).eval()


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
