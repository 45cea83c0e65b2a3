"""Transformer operations under AttnLRP (Achtibat et al., ICML 2024).

In the relevance-as-gradient convention of :mod:`torchattr.lrp.rules`:

* softmax ``s = softmax(x)``: ``R_x = x * (R_s - s * sum(R_s))``;
* products ``q k^T`` and ``A v``: the uniform rule (each relevance-carrying factor gets half);
* LayerNorm / GroupNorm / RMSNorm / InstanceNorm with the standard deviation held constant:
  the map is then linear (centring included) and relevance follows its epsilon rule, with the
  shift ``beta`` as the bias;
* ``F.multi_head_attention_forward`` and ``F.scaled_dot_product_attention``: written out as
  projections (the composite's dense rule), a scaled product, masks (constants), softmax, a
  product and the output projection, so that every piece gets its rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from torchattr.lrp.affine import dense
from torchattr.lrp.rules import Constant, _Rule, carry, relay, stabilize


def softmax_rule(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``s = fn(x)`` (a softmax) with ``R_x = x * (R_s - s * sum R_s)``."""
    s = fn(carry(x, x))
    value = s.detach()
    return relay(value, s, torch.where(value > 0, value, torch.ones_like(value)))


def norm_rule(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], y: Tensor) -> Tensor:
    """A normalisation ``y`` (computed) of ``x = args[0]`` with the AttnLRP rule.

    With the standard deviation ``sigma`` held constant, every normalisation is linear in ``x``:
    ``L(x) = gamma * (x - mean(x)) / sigma`` (``F.layer_norm``, ``F.group_norm``,
    ``F.instance_norm`` with input statistics) or ``gamma * x / sigma`` (``F.rms_norm``,
    running statistics), and ``y = L(x) + beta``. Relevance follows the epsilon rule of that map
    with ``beta`` as its bias: ``R_x = x * J_L^T (R_y / y)`` (``0/0 := 0``); the centring is
    kept (the mean is a linear map), only ``sigma`` is constant. ``name``: the function's name;
    ``args``, ``kwargs``: the call's arguments.
    """
    x, bound = args[0], _bind_norm(name, args, kwargs)
    gamma, eps = bound.get("weight"), bound.get("eps")
    with torch.no_grad():
        xd = x.detach()
        if name == "layer_norm" or name == "rms_norm":
            dims = tuple(range(-len(bound["normalized_shape"]), 0))
            view = xd
        elif name == "group_norm":
            view, dims = xd.reshape(xd.shape[0], bound["num_groups"], -1), (-1,)
        elif bound.get("use_input_stats", True):  # instance norm: per sample and channel
            view, dims = xd.reshape(xd.shape[0], xd.shape[1], -1), (-1,)
        else:  # instance norm with running statistics: an affine map per channel
            view, dims = None, ()
        centred = name != "rms_norm" and view is not None
        if view is None:
            sigma = _channels(bound["running_var"], xd).add(eps).sqrt()
        elif name == "rms_norm":
            eps = torch.finfo(xd.dtype).eps if eps is None else eps
            sigma = view.pow(2).mean(dims, keepdim=True).add(eps).sqrt()
        else:
            sigma = view.var(dims, unbiased=False, keepdim=True).add(eps).sqrt()
    c = carry(x, x)
    if view is None:
        num = c / sigma
    else:
        grouped = c.reshape(view.shape)
        if centred:
            grouped = grouped - grouped.mean(dims, keepdim=True)
        num = (grouped / sigma).reshape(x.shape)
    if gamma is not None:
        num = num * (gamma.detach() if name in ("layer_norm", "rms_norm") else _channels(gamma, x))
    return relay(y, num, stabilize(y.detach(), 0.0))


_NORM_SIGNATURES = {
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "rms_norm": ("input", "normalized_shape", "weight", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "instance_norm": ("input", "running_mean", "running_var", "weight", "bias",
                      "use_input_stats", "momentum", "eps"),
}  # fmt: skip


def _bind_norm(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = {"eps": None if name == "rms_norm" else 1e-5}
    bound.update(zip(_NORM_SIGNATURES[name], args))
    bound.update(kwargs)
    return bound


def _channels(t: Tensor, like: Tensor) -> Tensor:
    """A per-channel ``[C]`` tensor shaped to broadcast over ``[B, C, ...]``."""
    return t.detach().reshape(1, -1, *([1] * (like.ndim - 2)))


def product(fn: Callable[..., Tensor], args: list[Any], rule: _Rule) -> Tensor:
    """A multilinear ``fn`` of ``args`` under ``rule`` (uniform split between live factors)."""
    live = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not live:
        with torch.no_grad():
            return fn(*args)
    return rule.op(fn, args, live, len(live))


def project(x: Tensor, weight: Tensor, bias: Tensor | None, rule: _Rule) -> Tensor:
    """A dense projection under ``rule`` (plain when no relevance reaches ``x``)."""
    layer = dense(weight.detach(), None if bias is None else bias.detach())
    if not x.requires_grad:
        with torch.no_grad():
            return layer.add_bias(layer.evaluate(x), layer.bias)
    return rule.layer(x, layer)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    rules: dict[str, _Rule | None],
) -> tuple[Tensor, Tensor]:
    """``softmax(q k^T * scale + mask) v`` over ``[..., L, d]`` (AttnLRP), and the weights."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = product(
        lambda a, b: torch.matmul(a, b) * scale, [q, k.transpose(-2, -1)], rules["product"]
    )
    if is_causal:
        length_q, length_k = q.shape[-2], k.shape[-2]
        causal = torch.ones(length_q, length_k, dtype=torch.bool, device=q.device).tril()
        mask = (
            causal
            if mask is None
            else mask & causal
            if mask.dtype == torch.bool
            else (mask.masked_fill(~causal, float("-inf")))
        )
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, float("-inf"))

    def masked_softmax(s: Tensor) -> Tensor:
        # The mask is added inside the softmax: -inf must never meet the rule's arithmetic.
        return torch.softmax(s if mask is None else s + mask.detach(), dim=-1)

    softmax = rules.get("softmax")
    if isinstance(softmax, Constant):
        weights = masked_softmax(scores).detach()
    elif scores.requires_grad:
        weights = softmax_rule(masked_softmax, scores)
    else:
        weights = masked_softmax(scores)
    return product(torch.matmul, [weights, v], rules["product"]), weights


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    rules: dict[str, _Rule | None],
) -> Tensor:
    """``F.scaled_dot_product_attention`` written out (dropout is off: LRP explains inference)."""
    if enable_gqa:
        repeat = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    out, _ = attend(query, key, value, attn_mask, is_causal, scale, rules)
    return out


def multihead_attention(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    *,
    rules: dict[str, _Rule | None],
) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention.forward`` written out with AttnLRP rules.

    ``rules``: ``"in_proj"`` and ``"out_proj"`` (dense rules of the composite) and ``"product"``.
    Returns ``(output, weights)`` like the module (weights averaged over heads on request).
    """
    if module.bias_k is not None or module.add_zero_attn:
        raise TypeError(
            "LRP does not support nn.MultiheadAttention with add_bias_kv or add_zero_attn"
        )
    unbatched = query.ndim == 2
    if unbatched:
        query, key, value = (t.unsqueeze(0) for t in (query, key, value))
    elif not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    batch, length_q, embed = query.shape
    heads = module.num_heads
    head_dim = embed // heads
    if module._qkv_same_embed_dim:
        weights = module.in_proj_weight.chunk(3)
    else:
        weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
    biases = (None,) * 3 if module.in_proj_bias is None else module.in_proj_bias.chunk(3)
    q, k, v = (
        project(t, w, b, rules["in_proj"]) for t, w, b in zip((query, key, value), weights, biases)
    )

    def split(t: Tensor) -> Tensor:
        return t.reshape(batch, t.shape[1], heads, head_dim).transpose(1, 2)

    mask = _merge_masks(attn_mask, key_padding_mask, batch, heads, length_q, key.shape[1], query)
    out, attention = attend(
        split(q), split(k), split(v), mask, is_causal and mask is None, None, rules
    )
    out = out.transpose(1, 2).reshape(batch, length_q, embed)
    out = project(out, module.out_proj.weight, module.out_proj.bias, rules["out_proj"])
    if unbatched:
        out = out.squeeze(0)
    elif not module.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    attention = attention.detach()
    attention = attention.mean(dim=1) if average_attn_weights else attention
    return out, attention.squeeze(0) if unbatched else attention


def _merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    batch: int,
    heads: int,
    length_q: int,
    length_k: int,
    like: Tensor,
) -> Tensor | None:
    """One additive float mask ``[B, H, Lq, Lk]`` (``-inf`` where attention is not allowed).

    PyTorch's boolean masks mark positions that are *not* allowed to attend (True = masked).
    """
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, like)
        mask = mask.reshape(batch, heads, length_q, length_k) if mask.ndim == 3 else mask
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, like).reshape(batch, 1, 1, length_k)
        mask = padding if mask is None else mask + padding
    return mask


def _additive(mask: Tensor, like: Tensor) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=like.dtype).masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)


def multi_head_attention_forward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    static_k: Tensor | None = None,
    static_v: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    *,
    rules: dict[str, _Rule | None],
) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` (what ``nn.MultiheadAttention`` calls, sequence
    first) written out with AttnLRP rules (dropout off)."""
    if static_k is not None or static_v is not None:
        raise TypeError("LRP does not support multi-head attention with static_k / static_v")
    layer = SimpleNamespace(
        bias_k=bias_k, add_zero_attn=add_zero_attn, batch_first=False, num_heads=num_heads,
        _qkv_same_embed_dim=not use_separate_proj_weight, in_proj_weight=in_proj_weight,
        q_proj_weight=q_proj_weight, k_proj_weight=k_proj_weight, v_proj_weight=v_proj_weight,
        in_proj_bias=in_proj_bias,
        out_proj=SimpleNamespace(weight=out_proj_weight, bias=out_proj_bias),
    )  # fmt: skip
    return multihead_attention(
        layer, query, key, value, key_padding_mask, need_weights, attn_mask,
        average_attn_weights, is_causal, rules=rules,
    )  # fmt: skip


__all__ = [
    "multi_head_attention_forward",
    "multihead_attention",
    "norm_rule",
    "scaled_dot_product_attention",
    "softmax_rule",
]
