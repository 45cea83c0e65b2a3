"""Layers with weights as :class:`~torchattr.lrp.rules.Affine` records, and BatchNorm merging.

A layer is described by the weights the model passes to ``F.linear`` / ``F.conv*d`` /
``torch.addmm`` when it runs (detached), so computed weights (pruning, parametrisations) are what
they are in that call. Merging never writes to the model: the merged weight and bias are new
tensors.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchattr.lrp.rules import Affine

__all__ = ["addmm", "dense", "functional_conv", "functional_conv_transpose", "merge_batchnorm"]


def _linear(x: Tensor, w: Tensor) -> Tensor:
    return F.linear(x, w)


def dense(weight: Tensor, bias: Tensor | None) -> Affine:
    """``z = x W^T + b`` over the last dimension."""
    return Affine(_linear, weight, bias, channel=-1, in_dim_x=-1, in_dim_w=1, out_dim_w=0)


def _conv(
    x: Tensor, w: Tensor, *, fn: Any, stride: Any, padding: Any, dilation: Any, groups: int
) -> Tensor:
    return fn(x, w, None, stride, padding, dilation, groups)


def _conv_t(
    x: Tensor,
    w: Tensor,
    *,
    fn: Any,
    stride: Any,
    padding: Any,
    output_padding: Any,
    groups: int,
    dilation: Any,
) -> Tensor:
    return fn(x, w, None, stride, padding, output_padding, groups, dilation)


def functional_conv(
    fn: Any,
    weight: Tensor,
    bias: Tensor | None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> Affine:
    """``F.conv{1,2,3}d(x, weight, bias, ...)`` as the model calls it (string paddings too)."""
    op = functools.partial(
        _conv, fn=fn, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    return Affine(
        op, weight, bias, channel=1, in_dim_x=1, in_dim_w=1, out_dim_w=0, fusable=groups == 1
    )


def functional_conv_transpose(
    fn: Any,
    weight: Tensor,
    bias: Tensor | None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> Affine:
    """``F.conv_transpose{1,2,3}d(x, weight, bias, ...)`` (weights ``[in, out / groups, ...]``)."""
    op = functools.partial(
        _conv_t, fn=fn, stride=stride, padding=padding, output_padding=output_padding,
        groups=groups, dilation=dilation,
    )  # fmt: skip
    return Affine(op, weight, bias, channel=1, in_dim_x=1, in_dim_w=0, out_dim_w=1, fusable=False)


def _mm(x: Tensor, w: Tensor) -> Tensor:
    return x @ w


def addmm(weight: Tensor, bias: Tensor | None) -> Affine:
    """``torch.addmm(bias, x, weight) = x @ weight + bias`` (Hugging Face ``Conv1D``: weight
    ``[in, out]``)."""
    return Affine(_mm, weight, bias, channel=-1, in_dim_x=-1, in_dim_w=0, out_dim_w=1)


def merge_batchnorm(
    weight: Tensor, bias: Tensor | None, bn: Any, out_dim: int = 0
) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm that follows a layer into the layer's weight and bias.

    ``bn``: a BatchNorm module or its ``(running_mean, running_var, weight, bias, eps)``.

    ``scale = gamma / sqrt(running_var + eps)``, ``w' = w * scale`` (per output channel),
    ``b' = (b - running_mean) * scale + beta``. Returns new tensors; the modules are untouched.
    """
    if isinstance(bn, nn.Module):
        bn = (bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    mean, var, gamma, beta, eps = bn
    with torch.no_grad():
        scale = torch.rsqrt(var.to(weight.dtype) + eps)
        if gamma is not None:
            scale = scale * gamma.detach().to(weight.dtype)
        shape = [1] * weight.ndim
        shape[out_dim] = -1
        merged_weight = weight * scale.reshape(shape)
        b = torch.zeros_like(scale) if bias is None else bias
        merged_bias = (b - mean.to(weight.dtype)) * scale
        if beta is not None:
            merged_bias = merged_bias + beta.detach().to(weight.dtype)
    return merged_weight, merged_bias
