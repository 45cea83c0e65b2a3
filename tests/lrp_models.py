"""Models for the LRP tests: residual adds, dense concatenation, attention, embeddings."""

from __future__ import annotations

import torch
from models import _randomise_batchnorm
from torch import Tensor, nn
from torch.nn import functional as F


class DenseBlockNet(nn.Module):
    """DenseNet-style: each conv sees the concatenation of all earlier feature maps."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1, bias=bias)
        self.transition = nn.Conv2d(12, 6, 1, bias=bias)
        self.head = nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.c1(x))], dim=1)
        x = torch.cat([x, F.relu(self.c2(x))], dim=1)
        x = F.avg_pool2d(F.relu(self.transition(x)), 2)
        return self.head(x.mean(dim=(2, 3)))


class ResNetLike(nn.Module):
    """Conv-BN-ReLU blocks with functional residual adds (and an in-place ``+=``)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.a1 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(6)
        self.a2 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.down = nn.Conv2d(6, 8, 1, stride=2, bias=bias)
        self.b1 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=bias)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8, 4, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.a2(F.relu(self.bn1(self.a1(x)))))
        y = self.b1(x)
        y += self.down(x)
        y = self.pool(F.relu(y))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=bias)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, bias=bias)
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim, bias=bias), nn.GELU(), nn.Linear(2 * dim, dim, bias=bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, class token, positions, 2 pre-norm blocks with nn.MultiheadAttention."""

    def __init__(self, dim: int = 16, heads: int = 2, bias: bool = True, tokens: bool = True):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4, bias=bias)
        self.tokens = tokens
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        self.blocks = nn.Sequential(Block(dim, heads, bias), Block(dim, heads, bias))
        self.norm = nn.LayerNorm(dim, bias=bias)
        self.head = nn.Linear(dim, 5, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        if self.tokens:
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        t = self.blocks(t)
        return self.head(self.norm(t).mean(dim=1))


class HandAttention(nn.Module):
    """Single-head attention written by hand: q k^T, softmax, A v (functional ops in the graph)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5
        out = torch.softmax(scores, dim=-1) @ self.v(x)
        return self.head(out.mean(1))


def zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return model


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (see ``models.py``)."""
    _randomise_batchnorm(model, seed)
    return model
