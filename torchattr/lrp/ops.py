"""What each node of a traced graph is, for LRP: one *kind* per node.

========== ===================================================================================
kind       meaning (default treatment)
========== ===================================================================================
dense      ``nn.Linear`` / ``F.linear`` with constant weights (the composite's dense rule)
conv       convolutions, transposed convolutions, ``F.conv*d`` (the composite's conv rule)
op         sums, differences, means, average pools, interpolation, products, multiplication by
           constants: linear (or multilinear) maps without weights (``Norm``)
activation element-wise non-linearities (``Pass``)
batchnorm  a BatchNorm not merged into a preceding layer (``Pass``)
norm       LayerNorm, GroupNorm, RMSNorm: standard deviation held constant (AttnLRP)
softmax    softmax (AttnLRP: ``R_x = x (R_s - s sum R_s)``)
embedding  relevance ends here for integer ids (summed over the embedding dimension)
attention  ``nn.MultiheadAttention``, ``nn.TransformerEncoder(Layer)``,
           ``F.scaled_dot_product_attention``: written out with AttnLRP rules
route      reshapes, concatenation, indexing, padding, max pooling, dropout: the plain gradient
           already routes relevance correctly
unknown    anything else: an error if relevance reaches it (assign a rule by name)
========== ===================================================================================
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from torchattr.lrp.affine import BATCHNORM, CONV, CONV_TRANSPOSE

_ROUTE_MODULES = (
    nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.Unfold,
)  # fmt: skip
_OP_MODULES = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Upsample, nn.Fold,
)  # fmt: skip
_ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink,
    nn.Softshrink,
)  # fmt: skip
_NORM_MODULES = (
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)  # fmt: skip

_ATTENTION_MODULES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)

#: Modules the tracer keeps whole (calls to them become single nodes).
LEAF_MODULES = (
    _ROUTE_MODULES
    + _OP_MODULES
    + _ACTIVATION_MODULES
    + _NORM_MODULES
    + BATCHNORM
    + CONV
    + CONV_TRANSPOSE
    + (nn.Linear, nn.Softmax, nn.Embedding)
    + _ATTENTION_MODULES
)

_ROUTE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.movedim,
    torch.squeeze, torch.unsqueeze, torch.cat, torch.concat, torch.concatenate, torch.stack,
    torch.hstack, torch.vstack, torch.chunk, torch.split, torch.tensor_split, torch.unbind,
    torch.narrow, torch.select, torch.index_select, torch.gather, torch.flip, torch.roll, torch.t,
    torch.clone, torch.max, torch.amax, torch.maximum, torch.masked_fill, operator.getitem,
    F.pad, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, F.pixel_shuffle, F.pixel_unshuffle,
    F.unfold, getattr,
}  # fmt: skip
_ROUTE_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
    "swapaxes", "movedim", "t", "contiguous", "unsqueeze", "squeeze", "expand", "expand_as",
    "repeat", "chunk", "split", "tensor_split", "unbind", "narrow", "select", "flip", "roll",
    "clone", "to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda",
    "__getitem__", "max", "amax", "masked_fill", "index_select", "gather", "unfold", "size",
    "dim", "numel", "detach",
}  # fmt: skip
#: Products: the relevance-carrying factors share the relevance (uniform rule).
PRODUCTS = {
    operator.mul, operator.imul, operator.matmul, torch.mul, torch.multiply, torch.matmul,
    torch.bmm, torch.mm, torch.einsum, "mul", "mul_", "matmul", "bmm", "mm",
}  # fmt: skip
#: Divisions: only the dividend may carry relevance.
DIVISIONS = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_"}
_OP_FUNCTIONS = PRODUCTS | DIVISIONS | {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.pos,
    torch.add, torch.sub, torch.subtract, torch.neg, torch.sum, torch.mean, torch.cumsum,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.interpolate,
}  # fmt: skip
_OP_METHODS = {"add", "add_", "sub", "sub_", "neg", "sum", "mean", "cumsum", "__add__", "__sub__"}
_ACTIVATION_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.hardtanh, F.hardswish, F.hardsigmoid,
    F.softplus, F.softsign, F.prelu, F.logsigmoid, torch.clamp, torch.clip,
}  # fmt: skip
_ACTIVATION_METHODS = {
    "relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "clamp", "clamp_", "clip",
    "clamp_min", "clamp_min_",
}  # fmt: skip
_NORM_FUNCTIONS = {F.layer_norm, F.group_norm, F.rms_norm, F.instance_norm}
_SOFTMAX = {torch.softmax, F.softmax, "softmax"}

#: Element-wise functions whose output is never negative (for the x >= 0 shortcut of rules).
NONNEGATIVE = {
    torch.relu, F.relu, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus,
    torch.softmax, F.softmax, "relu", "relu_", "sigmoid", "sigmoid_", "softmax",
    nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Softmax,
}  # fmt: skip
#: Operations whose output is non-negative when their relevance-carrying inputs are.
PRESERVES_NONNEGATIVE = (
    _ROUTE_FUNCTIONS | _ROUTE_METHODS | {operator.add, operator.iadd, torch.add, "add", "add_",
    torch.sum, torch.mean, "sum", "mean", F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
)  # fmt: skip


def module_kind(module: nn.Module) -> str:
    """The kind of a call to ``module``."""
    if isinstance(module, nn.Linear):
        return "dense"
    if isinstance(module, CONV + CONV_TRANSPOSE):
        return "conv"
    if isinstance(module, BATCHNORM):
        return "batchnorm"
    if isinstance(module, _ACTIVATION_MODULES):
        return "activation"
    if isinstance(module, _NORM_MODULES):
        return "norm"
    if isinstance(module, nn.Softmax):
        return "softmax"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _ATTENTION_MODULES):
        return "attention"
    if isinstance(module, nn.Upsample) and module.mode == "nearest":
        return "route"
    if isinstance(module, _OP_MODULES):
        return "op"
    if isinstance(module, _ROUTE_MODULES):
        return "route"
    return "unknown"


def function_kind(target: Any) -> str:
    """The kind of a ``call_function`` (a function) or ``call_method`` (a method name) node."""
    if target in (F.linear,):
        return "dense"
    if target in (F.conv1d, F.conv2d, F.conv3d):
        return "conv"
    if target is F.batch_norm:
        return "batchnorm"
    if target is F.embedding:
        return "embedding"
    if target is F.scaled_dot_product_attention:
        return "attention"
    if target in _SOFTMAX:
        return "softmax"
    if target in _NORM_FUNCTIONS:
        return "norm"
    if target in _ACTIVATION_FUNCTIONS or target in _ACTIVATION_METHODS:
        return "activation"
    if target in _OP_FUNCTIONS or target in _OP_METHODS:
        return "op"
    if target in _ROUTE_FUNCTIONS or target in _ROUTE_METHODS:
        return "route"
    return "unknown"


def describe(target: Any) -> str:
    """A readable name for a node's target (module type, qualified function, or method)."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    if isinstance(target, nn.Module):
        return type(target).__name__
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module.startswith("torch") or module == "":
        return f"torch.{name}"
    return f"{module}.{name}"
