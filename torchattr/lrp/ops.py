"""What each operation of a running forward is, for LRP: one *kind* per operation.

LRP sees the model's forward as the sequence of torch operations it calls (functions, tensor
methods and operators, intercepted while the forward runs). Each is named by its function
(``F.linear`` -> ``"linear"``, ``x + y`` -> ``"add"``, ``x.relu_()`` -> ``"relu"`` in place)
and has a kind:

========== ===================================================================================
kind       meaning (default treatment)
========== ===================================================================================
dense      ``F.linear``, ``torch.addmm`` with constant weights (the composite's dense rule)
conv       ``F.conv*d``, ``F.conv_transpose*d`` (the composite's conv rule)
op         sums, differences, means, average pools, interpolation, products, multiplication and
           division by constants: linear (or multilinear) maps without weights (``Norm``)
activation element-wise non-linearities (``Pass``)
batchnorm  ``F.batch_norm`` not merged into the layer before it (``Pass``)
norm       LayerNorm, GroupNorm, RMSNorm, InstanceNorm: standard deviation held constant (AttnLRP)
softmax    softmax (AttnLRP: ``R_x = x (R_s - s sum R_s)``)
embedding  relevance ends here for integer ids (summed over the embedding dimension)
attention  ``F.scaled_dot_product_attention``, ``F.multi_head_attention_forward``: written out
           with AttnLRP rules
route      reshapes, concatenation, indexing, padding, max pooling, dropout: the plain gradient
           already routes relevance correctly
module     a whole module under one rule (a composite entry for it, RMSNorm-like modules,
           activation modules whose code LRP cannot follow)
unknown    anything else: an error if relevance reaches it (assign a rule by name)
========== ===================================================================================
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

__all__ = [
    "DIVISIONS",
    "GATES",
    "NONNEGATIVE",
    "PRESERVES_GATE",
    "PRESERVES_NONNEGATIVE",
    "PRODUCTS",
    "describe",
    "implied_module_rule",
    "kind_of",
    "op_name",
]

_ROUTE = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
    "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT", "contiguous", "unsqueeze",
    "squeeze", "expand", "expand_as", "broadcast_to", "repeat", "repeat_interleave", "tile",
    "chunk", "split", "split_with_sizes", "tensor_split", "unbind", "narrow", "select", "flip",
    "fliplr", "flipud", "roll", "rot90", "clone", "to", "type", "type_as", "float", "double",
    "half", "bfloat16", "cpu", "cuda", "getitem", "setitem", "cat", "concat", "concatenate",
    "stack", "hstack", "vstack", "dstack", "index_select", "gather", "take_along_dim",
    "masked_fill", "masked_select", "where", "pad", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
    "adaptive_max_pool3d_with_indices", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "unfold", "fold", "max", "amax", "min", "amin", "maximum", "minimum",
    "sort", "topk", "copy", "as_strided", "diagonal", "tril", "triu", "view_as_real",
    "detach", "data", "new_tensor", "index_put", "index_copy", "scatter", "slice_scatter",
    "select_scatter", "real", "align_as", "requires_grad", "clamp_shape",
}  # fmt: skip
_OP = {
    "add", "sub", "rsub", "neg", "pos", "sum", "mean", "nansum", "cumsum", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "interpolate", "upsample", "upsample_bilinear", "mul", "multiply",
    "div", "divide", "true_divide", "matmul", "bmm", "mm", "einsum", "baddbmm", "trace", "diff",
}  # fmt: skip
#: Products: every relevance-carrying factor gets an equal share (the AttnLRP uniform rule).
PRODUCTS = {"mul", "multiply", "matmul", "bmm", "mm", "einsum"}
#: Divisions: only the dividend may carry relevance.
DIVISIONS = {"div", "divide", "true_divide"}
_ACTIVATION = {
    "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
    "mish", "tanh", "sigmoid", "hardtanh", "hardsigmoid", "hardswish", "softplus", "softsign",
    "tanhshrink", "threshold", "logsigmoid", "hardshrink", "softshrink", "clamp", "clip",
    "clamp_min", "clamp_max", "quick_gelu",
}  # fmt: skip
_NORM = {"layer_norm", "group_norm", "rms_norm", "instance_norm"}
_CONV = {
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
}  # fmt: skip
_KINDS = {
    **{n: "route" for n in _ROUTE},
    **{n: "op" for n in _OP},
    **{n: "activation" for n in _ACTIVATION},
    **{n: "norm" for n in _NORM},
    **{n: "conv" for n in _CONV},
    "linear": "dense",
    "addmm": "dense",
    "batch_norm": "batchnorm",
    "softmax": "softmax",
    "embedding": "embedding",
    "scaled_dot_product_attention": "attention",
    "multi_head_attention_forward": "attention",
}

#: Outputs never negative (rules then skip the ``x-`` terms of the next layer).
NONNEGATIVE = {"relu", "relu6", "sigmoid", "hardsigmoid", "softplus", "softmax"}
#: Outputs in [0, 1]: a product with such a factor is a gate (held constant).
GATES = {"sigmoid", "hardsigmoid", "softmax"}
#: Non-negative when the relevance-carrying inputs are.
PRESERVES_NONNEGATIVE = (_ROUTE - {"neg"}) | {
    "add", "sum", "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d",
}  # fmt: skip
#: Routing operations that keep a gate a gate.
PRESERVES_GATE = _ROUTE - {"neg"}

_INPLACE_DUNDER = {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "div", "idiv": "div"}
_RENAMES = {"radd": "add", "rmul": "mul", "truediv": "div", "rtruediv": "rdiv", "rmatmul":
            "matmul", "absolute": "abs", "concat": "cat", "concatenate": "cat"}  # fmt: skip


def op_name(func: Any) -> tuple[str, bool]:
    """``(name, in_place)`` of an intercepted function, method, operator or property."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if isinstance(func, torch._ops.OpOverload):  # aten ops (exported programs): aten.add.Tensor
        name = func._opname
    if name == "__get__":  # a tensor property (x.T, x.data, x.shape)
        name = getattr(getattr(func, "__self__", None), "__name__", "get")
    in_place = False
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name in _INPLACE_DUNDER:
            return _INPLACE_DUNDER[name], True
    elif name.endswith("_") and not name.startswith("_"):
        name, in_place = name[:-1], True
    return _RENAMES.get(name, name), in_place


def kind_of(name: str) -> str:
    """The kind of an operation named ``name`` (see the table above)."""
    return _KINDS.get(name, "unknown")


_RMS_NORM = re.compile(r"RMS_?Norm", re.IGNORECASE)
_ACTIVATION_NAME = re.compile(r"(GELU|Swish|SiLU|Mish|Activation)$")


def implied_module_rule(module: nn.Module) -> str | None:
    """A whole-module treatment implied by a module's class, for modules whose code is written
    out in element-wise arithmetic LRP cannot follow op by op:

    * ``"rmsnorm"``: classes named ``*RMSNorm*`` (Hugging Face ``LlamaRMSNorm``, T5's norm):
      ``y = x / rms(x) * gamma`` with ``rms`` held constant is diagonal, so ``R_x = R_y``;
    * ``"activation"``: parameter-free classes named ``*GELU``, ``*Swish``, ``*SiLU``, ``*Mish``,
      ``*Activation`` (``NewGELUActivation``, MONAI's ``MemoryEfficientSwish``): ``Pass``.

    Built-in ``torch.nn`` modules never need it (their single operation is seen directly).
    """
    cls = type(module)
    if cls.__module__.startswith("torch.nn"):
        return None
    name = cls.__name__
    if _RMS_NORM.search(name):
        return "rmsnorm"
    if _ACTIVATION_NAME.search(name) and next(module.parameters(), None) is None:
        return "activation"
    return None


def describe(func: Any) -> str:
    """A readable name for an intercepted operation."""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    if qualname == "getset_descriptor.__get__" or getattr(func, "__name__", "") == "__get__":
        return f"Tensor.{getattr(getattr(func, '__self__', None), '__name__', '?')}"
    module = getattr(func, "__module__", None) or ""
    if module in ("_operator", "operator"):
        return f"operator.{qualname}"
    if module.startswith("torch.nn.functional"):
        return f"F.{qualname}"
    if qualname.startswith(("TensorBase.", "Tensor.")):
        return "Tensor." + qualname.split(".", 1)[1]
    if module.startswith("torch") or module == "":
        return f"torch.{qualname}"
    return f"{module}.{qualname}"
