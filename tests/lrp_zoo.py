"""Model factories for the LRP zoo tests (``test_lrp_zoo.py``): real architectures, random weights.

Three sources:

* MONAI (``monai.networks.nets``) and Hugging Face ``transformers`` models built from small
  configurations (random weights, nothing downloaded);
* faithful re-implementations of what torchvision and timm models contain (those libraries cannot
  load with the CPU torch wheel here): torchvision's ``stochastic_depth`` (fx-wrapped, as there),
  timm's ``BatchNormAct2d`` (a ``BatchNorm2d`` subclass calling ``F.batch_norm`` and then its own
  activation module) and ``ConvNormAct``, squeeze-excitation gates, layer scale, EfficientNet /
  ConvNeXt / MobileNetV3-like blocks, torchvision's ``shifted_window_attention`` (Swin) and
  MaxViT's window / grid partition attention, an einops ``Rearrange`` patch embedding;
* small models for the model-state tests (hooks, pruning, parametrisations).

Every factory takes a seed and returns a model in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.fx
import torch.nn.utils.parametrizations
import torch.nn.utils.prune
from torch import Tensor, nn
from torch.nn import functional as F

# ----------------------------------------------------------------------------------------------
# torchvision.ops.stochastic_depth, as torchvision writes it (fx-wrapped: a leaf for fx tracing)


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:  # noqa: A002
    """Randomly drop whole residual branches (``"row"``: per sample) while training; the
    identity in eval mode. Same code as ``torchvision.ops.stochastic_depth``."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    """``torchvision.ops.StochasticDepth``."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        return stochastic_depth(input, self.p, self.mode, self.training)


# ----------------------------------------------------------------------------------------------
# timm-style fused normalisation + activation


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d``: BatchNorm (a copy of ``BatchNorm2d.forward`` calling
    ``F.batch_norm``), then dropout and its own activation module, in one module."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        apply_act: bool = True,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.drop = nn.Identity()
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                exponential_average_factor = 1.0 / float(self.num_batches_tracked)
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
        )
        x = self.drop(x)
        return self.act(x)


class ConvNormAct(nn.Module):
    """timm's ``ConvNormAct``: a bias-free convolution and a ``BatchNormAct2d``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = BatchNormAct2d(cout, apply_act=act is not None, act_layer=act or nn.ReLU)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation gate ``x * gate(fc2(act(fc1(mean_hw x))))`` (timm / torchvision)."""

    def __init__(
        self, channels: int, reduced: int, act: type[nn.Module] = nn.ReLU, gate=torch.sigmoid
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class LayerScale(nn.Module):
    """timm's ``LayerScale``: ``x * gamma`` (channels last), ``gamma`` a learned vector."""

    def __init__(self, dim: int, init: float = 0.1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class MBConv(nn.Module):
    """EfficientNet's inverted residual: expand (SiLU), depthwise (SiLU), squeeze-excitation,
    project (no activation), stochastic depth, residual add."""

    def __init__(self, c: int, expand: int = 4, p: float = 0.2) -> None:
        super().__init__()
        e = c * expand
        self.expand = ConvNormAct(c, e, 1, act=nn.SiLU)
        self.dw = ConvNormAct(e, e, 3, groups=e, act=nn.SiLU)
        self.se = SqueezeExcite(e, max(1, c // 2), act=nn.SiLU)
        self.project = ConvNormAct(e, c, 1, act=None)
        self.drop = StochasticDepth(p, "row")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.project(self.se(self.dw(self.expand(x)))))


class ConvNeXtBlock(nn.Module):
    """torchvision's ConvNeXt ``CNBlock``: depthwise conv, channels-last LayerNorm, Linear-GELU-
    Linear, layer scale, stochastic depth, residual add."""

    def __init__(self, c: int, p: float = 0.1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * c, c)
        self.scale = LayerScale(c, 0.5)
        self.drop = StochasticDepth(p, "row")

    def forward(self, x: Tensor) -> Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.scale(self.fc2(self.act(self.fc1(self.norm(y)))))
        return x + self.drop(y.permute(0, 3, 1, 2))


class HardswishBlock(nn.Module):
    """MobileNetV3's inverted residual with Hardswish and a hard-sigmoid SE gate."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = ConvNormAct(c, 2 * c, 1, act=nn.Hardswish)
        self.dw = ConvNormAct(2 * c, 2 * c, 3, groups=2 * c, act=nn.Hardswish)
        self.se = SqueezeExcite(2 * c, c, act=nn.ReLU, gate=F.hardsigmoid)
        self.project = ConvNormAct(2 * c, c, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(self.se(self.dw(self.expand(x))))


class EfficientLike(nn.Module):
    """Stem, an MBConv, a ConvNeXt block and a MobileNetV3 block, pooled head: ``[B, 3, 16, 16]
    -> [B, 4]``."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, c, 3, stride=2, act=nn.SiLU)
        self.blocks = nn.Sequential(MBConv(c), ConvNeXtBlock(c), HardswishBlock(c))
        self.head = nn.Linear(c, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class StochasticDepthResNet(nn.Module):
    """A piecewise-linear ResNet: timm ``ConvNormAct`` (ReLU) stem, a torchvision basic block with
    ``StochasticDepth`` on the branch, max pool, average-pool head: ``[B, 3, 16, 16] -> [B, 4]``.
    In eval mode, LRP-0 on it is gradient x input."""

    def __init__(self, c: int = 6, bias: bool = True) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, c, 3)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(c)
        self.drop = StochasticDepth(0.3, "row")
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(c, 4, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = F.relu(x + self.drop(y))
        return self.head(F.adaptive_avg_pool2d(self.pool(x), 1).flatten(1))


# ----------------------------------------------------------------------------------------------
# Swin: torchvision's shifted_window_attention (fx-wrapped there too)


def shifted_window_attention(
    input: Tensor,  # noqa: A002
    qkv_weight: Tensor,
    proj_weight: Tensor,
    relative_position_bias: Tensor,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    qkv_bias: Tensor | None = None,
    proj_bias: Tensor | None = None,
) -> Tensor:
    """Window multi-head self-attention with a cyclic shift, ``input [B, H, W, C]``: pad to whole
    windows, ``torch.roll`` by ``-shift``, partition into windows (view/permute), attention with
    a relative position bias and the shift mask (-100 between regions), reverse, roll back.
    As ``torchvision.models.swin_transformer.shifted_window_attention`` (dropouts left out)."""
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = shift_size.copy()
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(
        B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C
    )
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // num_heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        attn_mask = attn_mask.view(
            pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1]
        )
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(
            num_windows, window_size[0] * window_size[1]
        )
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, (-100.0)).masked_fill(attn_mask == 0, 0.0)
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, proj_weight, proj_bias)
    x = x.view(
        B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], C
    )
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


torch.fx.wrap("shifted_window_attention")


class ShiftedWindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention``: qkv / proj linears, relative position bias table
    indexed by a buffer."""

    def __init__(self, dim: int, window: int, shift: int, heads: int) -> None:
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = [window, window], [shift, shift], heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            0.1 * torch.randn((2 * window - 1) ** 2, heads)
        )
        coords = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        )
        flat = coords.flatten(1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window - 1
        rel[:, :, 1] += window - 1
        rel[:, :, 0] *= 2 * window - 1
        self.register_buffer("relative_position_index", rel.sum(-1).flatten(), persistent=False)

    def get_relative_position_bias(self) -> Tensor:
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        return shifted_window_attention(
            x,
            self.qkv.weight,
            self.proj.weight,
            self.get_relative_position_bias(),
            self.window_size,
            self.num_heads,
            shift_size=self.shift_size,
            qkv_bias=self.qkv.bias,
            proj_bias=self.proj.bias,
        )


class SwinBlock(nn.Module):
    """torchvision's ``SwinTransformerBlock``: pre-norm window attention and MLP, stochastic
    depth on both residual branches."""

    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, window, shift, heads)
        self.stochastic_depth = StochasticDepth(0.1, "row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class SwinLike(nn.Module):
    """Patch embedding (conv, permute to channels last, LayerNorm), a regular and a shifted
    window block (window 4, shift 2), norm, pooled head: ``[B, 3, 16, 16] -> [B, 4]``."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 2, 2)
        self.patch_norm = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(SwinBlock(dim, heads, 4, 0), SwinBlock(dim, heads, 4, 2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_norm(self.patch(x).permute(0, 2, 3, 1))
        x = self.norm(self.blocks(x))
        return self.head(x.permute(0, 3, 1, 2).mean((2, 3)))


# ----------------------------------------------------------------------------------------------
# MaxViT: block (window) and grid partition attention, as torchvision writes them


class WindowPartition(nn.Module):
    """``[B, C, H, W] -> [B, H/p * W/p, p*p, C]``."""

    def forward(self, x: Tensor, p: int) -> Tensor:
        B, C, H, W = x.shape
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // p) * (W // p), p * p, C)


class WindowDepartition(nn.Module):
    """``[B, (H/p)(W/p), p*p, C] -> [B, C, H, W]``."""

    def forward(self, x: Tensor, p: int, h_partitions: int, w_partitions: int) -> Tensor:
        B, C = x.shape[0], x.shape[-1]
        x = x.reshape(B, h_partitions, w_partitions, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, C, h_partitions * p, w_partitions * p)


class RelativePositionalMultiHeadAttention(nn.Module):
    """MaxViT's attention over ``[B, G, P, D]`` groups: einsum products, relative position
    bias, softmax."""

    def __init__(self, dim: int, heads: int, p: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.p = heads, dim // heads, p
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.scale_factor = self.head_dim**-0.5
        self.merge = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(0.1 * torch.randn((2 * p - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"))
        flat = coords.flatten(1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += p - 1
        rel[:, :, 1] += p - 1
        rel[:, :, 0] *= 2 * p - 1
        self.register_buffer("relative_position_index", rel.sum(-1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, G, P, D = x.shape
        H, DH = self.n_heads, self.head_dim
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q = q.reshape(B, G, P, H, DH).permute(0, 1, 3, 2, 4)
        k = k.reshape(B, G, P, H, DH).permute(0, 1, 3, 2, 4)
        v = v.reshape(B, G, P, H, DH).permute(0, 1, 3, 2, 4)
        k = k * self.scale_factor
        dot_prod = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(P, P, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        dot_prod = F.softmax(dot_prod + bias, dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", dot_prod, v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(B, G, P, D))


class PartitionAttention(nn.Module):
    """MaxViT's ``PartitionAttentionLayer``: ``"window"`` groups neighbouring p x p pixels,
    ``"grid"`` a dilated size x size grid (partition by ``grid = H / size``, then swap the group
    and token axes): attention over size^2 tokens either way;
    pre-norm attention and MLP with layer scale, stochastic depth."""

    def __init__(self, dim: int, heads: int, partition: str, size: int, grid: int) -> None:
        super().__init__()
        self.partition_type = partition
        self.p = size if partition == "window" else grid
        self.partition_op = WindowPartition()
        self.departition_op = WindowDepartition()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RelativePositionalMultiHeadAttention(dim, heads, size)  # size^2 tokens
        self.scale1 = LayerScale(dim, 0.5)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.scale2 = LayerScale(dim, 0.5)
        self.stochastic_dropout = StochasticDepth(0.1, "row")

    def forward(self, x: Tensor) -> Tensor:
        gh, gw = x.shape[-2] // self.p, x.shape[-1] // self.p
        x = self.partition_op(x, self.p)
        if self.partition_type == "grid":
            x = x.transpose(-2, -3)
        x = x + self.stochastic_dropout(self.scale1(self.attn(self.norm1(x))))
        x = x + self.stochastic_dropout(self.scale2(self.mlp(self.norm2(x))))
        if self.partition_type == "grid":
            x = x.transpose(-2, -3)
        return self.departition_op(x, self.p, gh, gw)


class MaxViTLike(nn.Module):
    """Conv stem, window then grid partition attention, pooled head: ``[B, 3, 16, 16] ->
    [B, 4]``."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU())
        self.window = PartitionAttention(dim, heads, "window", 4, 2)
        self.grid = PartitionAttention(dim, heads, "grid", 4, 2)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.grid(self.window(self.stem(x))).mean((2, 3)))


# ----------------------------------------------------------------------------------------------
# einops patch embedding + scaled_dot_product_attention


class SDPABlock(nn.Module):
    """Pre-norm block with ``F.scaled_dot_product_attention`` and an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, L, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class EinopsViT(nn.Module):
    """einops ``Rearrange`` patch embedding (``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``) and a
    Linear, positions, one SDPA block, mean-pooled head: ``[B, 3, 16, 16] -> [B, 4]``."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        from einops.layers.torch import Rearrange

        self.to_patches = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=4, p2=4)
        self.embed = nn.Linear(48, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(1, 16, dim))
        self.block = SDPABlock(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(self.to_patches(x)) + self.pos
        return self.head(self.norm(self.block(t)).mean(1))


# ----------------------------------------------------------------------------------------------
# PyHealth-style EHR model: len(), a Python loop over patients, control flow on shapes


class EHRControlFlow(nn.Module):
    """Diagnosis codes ``[B, L]`` (0 = padding) through an embedding, a per-patient loop
    (``len()``) taking the masked mean of the visit's codes, a branch on the sequence length,
    lab values ``[B, 3]``: ``{"codes", "labs"} -> [B, 2]``."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.codes = nn.Embedding(vocab, dim, padding_idx=0)
        self.labs = nn.Linear(3, dim)
        self.long = nn.Linear(dim, dim)
        self.head = nn.Linear(2 * dim, 2)

    def forward(self, codes: Tensor, labs: Tensor) -> Tensor:
        mask = (codes != 0).unsqueeze(-1).to(labs.dtype)
        embedded = self.codes(codes) * mask
        patients = []
        for i in range(len(codes)):
            patients.append(embedded[i].sum(0) / mask[i].sum().clamp(min=1.0))
        pooled = torch.stack(patients)
        if codes.shape[1] > 4:
            pooled = F.relu(self.long(pooled))
        return self.head(torch.cat([pooled, torch.tanh(self.labs(labs))], dim=1))


def ehr_control_flow(seed: int = 0):
    torch.manual_seed(seed)
    model = EHRControlFlow().double().eval()
    codes = _ids(seed, 2, 6, 50)
    codes[1, 4:] = 0
    return model, {"codes": codes, "labs": _rand(seed, 2, 3) - 0.5}


# ----------------------------------------------------------------------------------------------
# references for the rule tests


class SingleHeadAttention(nn.Module):
    """``softmax(q k^T / sqrt(D)) v`` on ``x [B, L, D]`` (bias-free q, k, v), flattened into a
    bias-free head: ``[B, L, D] -> [B, C]``."""

    def __init__(self, tokens: int = 3, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(tokens * dim, classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(x.shape[-1])
        return self.head((torch.softmax(s, dim=-1) @ self.v(x)).flatten(1))


class SmallCNN(nn.Module):
    """Conv-ReLU-Conv-ReLU-pool-Linear: ``[B, 3, 8, 8] -> [B, 4]`` (the model-state tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv2(F.relu(self.conv(x))))
        return self.head(F.max_pool2d(x, 2).flatten(1))


class DictOutput(nn.Module):
    """A ReLU CNN returning ``{"features": [B, 6], "logits": [B, 4]}`` (``[B, 3, 8, 8]`` in)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = F.adaptive_max_pool2d(F.relu(self.conv(x)), 1).flatten(1)
        return {"features": features, "logits": self.head(features)}


# ----------------------------------------------------------------------------------------------
# helpers


def zero_biases(model: nn.Module) -> nn.Module:
    """Every bias, BatchNorm shift and running mean set to 0, positional tables and class tokens
    too (they are additive constants the relevance cannot reach): what stays is bias-free."""
    additive = ("bias", "running_mean", "position", "token_type", "cls_token")
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            leaf = name.rsplit(".", 1)[-1]
            if t.is_floating_point() and (
                leaf in ("pos", "cls") or any(a in name for a in additive)
            ):
                t.zero_()
    return model


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters on every BatchNorm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


@dataclass
class Case:
    """One zoo entry: ``build(seed) -> (model, inputs)``; the target; extra keyword arguments;
    the relevance shape per input; whether LRP-0 must equal gradient x input."""

    name: str
    build: Callable[[int], tuple[nn.Module, Any]]
    target: Any = None
    forward_kwargs: dict[str, Any] | None = None
    lrp0: bool = False
    marks: list[Any] = field(default_factory=list)


def _prepare(model: nn.Module, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    return randomise_batchnorm(model, seed).to(dtype).eval()


def _rand(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed + 1000), dtype=dtype)


def _ids(seed: int, batch: int, length: int, vocab: int) -> Tensor:
    g = torch.Generator().manual_seed(seed + 2000)
    return torch.randint(2, vocab, (batch, length), generator=g)


# ---- MONAI


def monai_densenet121_2d(seed: int = 0):
    DenseNet121 = pytest.importorskip("monai.networks.nets").DenseNet121

    torch.manual_seed(seed)
    model = DenseNet121(
        spatial_dims=2, in_channels=3, out_channels=3, init_features=8, growth_rate=4
    )
    return _prepare(model, seed), _rand(seed, 2, 3, 32, 32) - 0.5


def monai_densenet121_3d(seed: int = 0):
    """Three dense blocks (the fourth would pool a 16^3 volume below 1 voxel)."""
    DenseNet121 = pytest.importorskip("monai.networks.nets").DenseNet121

    torch.manual_seed(seed)
    model = DenseNet121(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        init_features=8,
        growth_rate=4,
        block_config=(6, 12, 24),
    )
    return _prepare(model, seed), _rand(seed, 2, 1, 16, 16, 16) - 0.5


def monai_seresnet50(seed: int = 0):
    """SEResNet50's bottleneck blocks (one per stage, 16 stem channels): SE gates, residuals."""
    SEResNet50 = pytest.importorskip("monai.networks.nets").SEResNet50

    torch.manual_seed(seed)
    model = SEResNet50(
        layers=(1, 1, 1, 1), inplanes=16, spatial_dims=2, in_channels=3, num_classes=3
    )
    return _prepare(model, seed), _rand(seed, 2, 3, 32, 32)


def monai_efficientnet_b0(seed: int = 0):
    """EfficientNetBN b0 (memory-efficient Swish autograd function, drop-connect, same padding);
    float32: float64 depthwise convolutions are slow on CPU."""
    EfficientNetBN = pytest.importorskip("monai.networks.nets").EfficientNetBN

    torch.manual_seed(seed)
    model = EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=3
    )
    return _prepare(model, seed, torch.float32), _rand(seed, 2, 3, 32, 32, dtype=torch.float32)


def monai_vit(seed: int = 0):
    """ViT (einops patch embedding, class token); the output is a tuple ``(logits, hidden)``."""
    ViT = pytest.importorskip("monai.networks.nets").ViT

    torch.manual_seed(seed)
    model = ViT(
        in_channels=1,
        img_size=16,
        patch_size=4,
        hidden_size=48,
        mlp_dim=96,
        num_layers=2,
        num_heads=2,
        spatial_dims=2,
        classification=True,
        num_classes=3,
    )
    return _prepare(model, seed), _rand(seed, 2, 1, 16, 16)


def monai_unet(seed: int = 0):
    UNet = pytest.importorskip("monai.networks.nets").UNet

    torch.manual_seed(seed)
    model = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(4, 8, 16),
        strides=(2, 2),
        num_res_units=1,
    )
    return _prepare(model, seed), _rand(seed, 2, 1, 16, 16)


def monai_segresnet(seed: int = 0):
    SegResNet = pytest.importorskip("monai.networks.nets").SegResNet

    torch.manual_seed(seed)
    model = SegResNet(
        spatial_dims=2,
        init_filters=8,
        in_channels=1,
        out_channels=2,
        blocks_down=(1, 1, 1),
        blocks_up=(1, 1),
    )
    return _prepare(model, seed), _rand(seed, 2, 1, 16, 16)


def region(out: Tensor) -> Tensor:
    """Segmentation target: the summed class-1 logits of a 4 x 4 region, ``[B]``."""
    return out[:, 1, 2:6, 2:6].sum((1, 2))


# ---- Hugging Face


def hf_bert(seed: int = 0, attn: str = "eager"):
    """BertForSequenceClassification (2 layers, hidden 32, 2 heads, vocab 100); inputs
    ``{"input_ids": [2, 8]}``; the second sequence is padded after 5 tokens."""
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
        attn_implementation=attn,
    )
    model = transformers.BertForSequenceClassification(config).double().eval()
    ids = _ids(seed, 2, 8, 100)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return model, {"input_ids": ids}, {"attention_mask": mask}


def hf_llama(seed: int = 0, attn: str = "eager"):
    """LlamaForCausalLM (2 layers, hidden 32, 2 query heads sharing 1 key/value head: rotary
    position embeddings, RMSNorm, SiLU-gated MLP); ids ``[2, 6]``."""
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        use_cache=False,
        attn_implementation=attn,
    )
    model = transformers.LlamaForCausalLM(config).double().eval()
    return model, _ids(seed, 2, 6, 100)


def hf_gpt2(seed: int = 0, attn: str = "eager"):
    """GPT2LMHeadModel (2 layers, 32 wide, 2 heads; ``Conv1D`` = addmm layers); ids ``[2, 6]``."""
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=100,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn,
    )
    model = transformers.GPT2LMHeadModel(config).double().eval()
    return model, _ids(seed, 2, 6, 100)


def hf_vit(seed: int = 0, attn: str = "eager"):
    """ViTForImageClassification (image 16, patch 4, hidden 32, 2 layers, 2 heads)."""
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        attn_implementation=attn,
    )
    model = transformers.ViTForImageClassification(config).double().eval()
    return model, _rand(seed, 2, 3, 16, 16) - 0.5


def token_logit(position: int, token: int) -> Callable[[Any], Tensor]:
    """Callable target on a causal LM: the logit of ``token`` at ``position``, ``[B]``."""

    def score(out: Any) -> Tensor:
        return out.logits[:, position, token]

    return score


# ---- own re-implementations


def own(cls: type[nn.Module], shape: tuple[int, ...] = (2, 3, 16, 16)):
    def build(seed: int = 0):
        torch.manual_seed(seed)
        return _prepare(cls(), seed), _rand(seed, *shape) - 0.5

    build.__name__ = cls.__name__
    return build
