"""Transformer operations under AttnLRP (Achtibat et al., ICML 2024).

In the relevance-as-gradient convention of :mod:`torchattr.lrp.rules`:

* softmax ``s = softmax(x)``: ``R_x = x * (R_s - s * sum(R_s))``;
* products ``q k^T`` and ``A v``: the uniform rule (each relevance-carrying factor gets half);
* LayerNorm / GroupNorm / RMSNorm with the standard deviation held constant: the identity on the
  normalisation and the epsilon rule on the element-wise affine part,
  ``R_x = (gamma * x_hat) / stab(y) * R_y``;
* ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``: written out as projections
  (the composite's dense rule), a scaled product, masks (constants), softmax, a product and the
  output projection, so that every piece gets its rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from torchattr.lrp.affine import dense
from torchattr.lrp.rules import Constant, _Rule, carry, relay, stabilize


def softmax_rule(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``s = fn(x)`` (a softmax) with ``R_x = x * (R_s - s * sum R_s)``."""
    s = fn(carry(x, x))
    value = s.detach()
    return relay(value, s, torch.where(value > 0, value, torch.ones_like(value)))


def norm_rule(y: Tensor, x: Tensor, beta: Tensor | None, channel_dim: int | None) -> Tensor:
    """``y = gamma * x_hat + beta`` (computed); relevance ``R_x = (y - beta) / stab(y) * R_y``.

    ``channel_dim``: where ``beta`` ([C]) lives on ``y`` (None: ``beta`` broadcasts over the
    trailing dimensions, as in LayerNorm).
    """
    y = y.detach()
    if beta is None:  # no affine shift: the identity rule exactly
        return y + (x - x.detach())
    scaled = y
    if beta is not None:
        beta = beta.detach()
        if channel_dim is not None:
            shape = [1] * y.ndim
            shape[channel_dim] = -1
            beta = beta.reshape(shape)
        scaled = y - beta
    return y + (x - x.detach()) * (scaled / stabilize(y, 1e-6))


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
        mask = causal if mask is None else mask & causal if mask.dtype == torch.bool else (
            mask.masked_fill(~causal, float("-inf"))
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
    module: nn.MultiheadAttention,
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


__all__ = ["multihead_attention", "norm_rule", "scaled_dot_product_attention", "softmax_rule"]


RuleFor = Callable[[str, str, "nn.Module | None"], "_Rule | None"]


def encoder_layer(
    module: nn.TransformerEncoderLayer,
    src: Tensor,
    src_mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    *,
    rule_for: RuleFor,
    name: str,
) -> Tensor:
    """``nn.TransformerEncoderLayer.forward`` written out (dropout off).

    Residual sums take the ``Norm`` rule, LayerNorms the AttnLRP rule, the feed-forward layers
    and projections the composite's dense rule (looked up as ``<name>.linear1`` etc.), the
    activation ``Pass``.
    """
    sum_rule = rule_for(f"{name}.residual", "op", None)

    def residual(a: Tensor, b: Tensor) -> Tensor:
        live = [i for i, t in enumerate((a, b)) if t.requires_grad]
        if not live:
            return a + b
        return sum_rule.op(torch.add, [a, b], live, 1)

    def norm(layer: nn.LayerNorm, x: Tensor) -> Tensor:
        with torch.no_grad():
            y = layer(x)
        return norm_rule(y, x, layer.bias, None) if x.requires_grad else y

    def self_attention(x: Tensor) -> Tensor:
        rules = {
            "in_proj": rule_for(f"{name}.self_attn.in_proj", "dense", None),
            "out_proj": rule_for(f"{name}.self_attn.out_proj", "dense", module.self_attn.out_proj),
            "product": rule_for(f"{name}.self_attn.product", "op", None),
            "softmax": rule_for(f"{name}.self_attn.softmax", "softmax", None),
        }
        out, _ = multihead_attention(
            module.self_attn, x, x, x, src_key_padding_mask, False, src_mask,
            is_causal=is_causal, rules=rules,
        )  # fmt: skip
        return out

    def feed_forward(x: Tensor) -> Tensor:
        first = rule_for(f"{name}.linear1", "dense", module.linear1)
        h = project(x, module.linear1.weight, module.linear1.bias, first)
        with torch.no_grad():
            activated = module.activation(h.detach())
        h = activated + (h - h.detach()) if h.requires_grad else activated  # Pass
        second = rule_for(f"{name}.linear2", "dense", module.linear2)
        return project(h, module.linear2.weight, module.linear2.bias, second)

    x = src
    if module.norm_first:
        x = residual(x, self_attention(norm(module.norm1, x)))
        return residual(x, feed_forward(norm(module.norm2, x)))
    x = norm(module.norm1, residual(x, self_attention(x)))
    return norm(module.norm2, residual(x, feed_forward(x)))


def encoder(
    module: nn.TransformerEncoder,
    src: Tensor,
    mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool | None = None,
    *,
    rule_for: RuleFor,
    name: str,
) -> Tensor:
    """``nn.TransformerEncoder.forward``: its layers written out, then the optional norm."""
    x = src
    for i, layer in enumerate(module.layers):
        x = encoder_layer(
            layer, x, mask, src_key_padding_mask, bool(is_causal),
            rule_for=rule_for, name=f"{name}.layers.{i}",
        )  # fmt: skip
    if module.norm is not None:
        with torch.no_grad():
            y = module.norm(x)
        x = norm_rule(y, x, module.norm.bias, None) if x.requires_grad else y
    return x
