"""LRP rules: how relevance arriving at a layer's output is sent to its input.

Convention: in the transformed graph, the *gradient* of every tensor is its relevance. A rule turns
one node into a modified forward whose value is the node's ordinary output and whose ordinary
backward maps the relevance ``R`` at the output to the rule's relevance at the input. One backward
through the whole transformed graph then yields the input relevance; rules compose because each
only rewrites its own node.

The building blocks (``carry``, ``relay``) are plain differentiable tensor expressions, so the
transformed graph needs no custom autograd functions and no backward hooks:

* ``carry(p, x)`` has the value of ``p`` and the derivative ``diag(p)`` with respect to ``x``: a
  linear map evaluated on ``carry(p, x)`` sends ``v`` back to ``p * (J^T v)``;
* ``relay(value, num, den)`` has the value ``value`` and sends ``R`` back through ``num`` as
  ``R / den``.

``rule.layer(x, layer, nonneg, z)`` takes the layer's output ``z`` when it is already known (LRP's
plan pass computed it): the value is then not computed a second time.

With ``z_j = sum_i x_i w_ij + b_j``, ``x+ = max(x, 0)``, ``x- = min(x, 0)`` (same for ``w``, ``b``)
and ``stab(z) = z + eps * sign(z)`` (``sign(0) = +1``), the rules for layers with weights are

=================  ==========================================================================
``Epsilon(eps)``   ``R_i = sum_j x_i w_ij R_j / stab(z_j)``
``ZPlus()``        ``(x+ w+ + x- w-)_ij R_j / stab(sum_i (x+ w+ + x- w-)_ij + b_j+)``
``AlphaBeta(a,b)`` ``a z+_ij / stab(sum z+ + b+) R_j - b z-_ij / stab(sum z- + b-) R_j``
``Gamma(g)``       ``z_j >= 0``: ``x+ (w + g w+) + x- (w + g w-)``, bias ``b + g b+``; else swapped
``ZBox(l, h)``     ``(x w - l w+ - h w-)_ij R_j / stab(sum_i (..)_ij)``
``Flat()``         inputs and weights set to 1, bias 0: ``R`` spread over the receptive field
``WSquare()``      ``w_ij^2 R_j / stab(sum_i w_ij^2 + b_j^2)``
``Norm()``         the epsilon rule (``eps = 1e-6``) with the node's own map, no parameter change
``Pass()``         ``R_i = R_i`` (same shape in and out)
``Constant()``     the output is a constant: no relevance flows in (CP-LRP on attention weights)
=================  ==========================================================================

with ``z+_ij = x+ w+ + x- w-`` and ``z-_ij = x+ w- + x- w+``. Operations without weights
(sums, means, average pools, products, multiplication by constants) accept ``Epsilon``, ``Norm``
(``R_k = x_k (J_k^T (R / stab(y))) / n`` for an op multilinear in its ``n`` relevant inputs: the
AttnLRP uniform rule for products) and ``Pass``.

Example::

    relevance = ta.lrp(model, x, composite={torch.nn.Linear: ta.rules.Epsilon(0.25)})
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------
# building blocks


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1``: never zero for ``epsilon > 0``.

    With ``epsilon = 0``, zeros become ``inf``: dividing by the result gives ``0/0 := 0``
    (relevance stops at a zero output instead of turning into NaN).
    """
    if epsilon == 0:
        return torch.where(z == 0, torch.inf, z)
    return torch.where(z >= 0, z + epsilon, z - epsilon)


def carry(p: Tensor, x: Tensor) -> Tensor:
    """A tensor with the value of ``p`` whose derivative with respect to ``x`` is ``diag(p)``."""
    p = p.detach()
    return p + (x - x.detach()) * p


def relay(value: Tensor, num: Tensor, den: Tensor) -> Tensor:
    """Value ``value``; relevance ``R`` at the output goes back through ``num`` as ``R / den``."""
    return value.detach() + through(num, den)


def through(num: Tensor, den: Tensor) -> Tensor:
    """Zero-valued; sends ``R`` back through ``num`` as ``R / den`` (``den`` from
    :func:`stabilize`, never zero)."""
    return (num - num.detach()) / den.detach()


@dataclass(frozen=True, eq=False)
class Affine:
    """A layer ``z = op(x, weight) + bias``; ``op`` is linear in each of its two arguments.

    ``channel`` is the output dimension the bias and output channels live on (1 for convolutions,
    -1 for dense layers); ``fusable`` says whether inputs may be concatenated along that
    dimension of ``x`` and ``weight`` (dense layers, and convolutions with ``groups == 1``).
    Weights derived by rules (``w+``, stacked weights, ...) are kept in ``memo`` (see
    :meth:`derived`): a program caches the record for as long as the module's weights are
    unchanged, so this weight-sized work is done once, not per call.
    """

    op: Callable[[Tensor, Tensor], Tensor]
    weight: Tensor
    bias: Tensor | None
    channel: int = -1
    in_dim_x: int = -1  # where input features live on x
    in_dim_w: int = 1  # and on the weight
    out_dim_w: int = 0  # output features on the weight
    fusable: bool = True
    memo: dict[Any, Tensor] = field(default_factory=dict, compare=False, repr=False)

    def derived(self, key: Any, make: Callable[[], Tensor]) -> Tensor:
        """``make()``, computed once per record (``key`` names it: rule and parameters)."""
        value = self.memo.get(key)
        if value is None:
            value = self.memo[key] = make()
        return value

    def add_bias(self, y: Tensor, bias: Tensor | None) -> Tensor:
        if bias is None:
            return y
        shape = [1] * y.ndim
        shape[self.channel] = -1
        return y + bias.reshape(shape)

    def evaluate(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        """``op(x, weight)`` without the bias (default: the layer's own weight)."""
        return self.op(x, self.weight if weight is None else weight)

    def terms(self, pairs: Sequence[tuple[Tensor, Tensor]], key: Any) -> Tensor:
        """``sum_k op(x_k, w_k)``, as one call over concatenated inputs when the layer allows
        (the concatenated weight is derived once, under ``key``)."""
        if len(pairs) == 1:
            return self.op(*pairs[0])
        if self.fusable:
            xs = torch.cat([x for x, _ in pairs], dim=self.in_dim_x)
            ws = self.derived(("in", key), lambda: torch.cat([w for _, w in pairs], self.in_dim_w))
            return self.op(xs, ws)
        return functools.reduce(operator.add, (self.op(x, w) for x, w in pairs))

    def stacked(self, x: Tensor, weights: Sequence[Tensor], key: Any) -> tuple[Tensor, ...]:
        """``op(x, w_k)`` for each ``w_k``: one call with the weights stacked along the outputs
        (the stacked weight is derived once, under ``key``)."""
        if not self.fusable or len(weights) == 1:
            return tuple(self.op(x, w) for w in weights)
        stack = self.derived(("out", key), lambda: torch.cat(list(weights), self.out_dim_w))
        out = self.op(x, stack)
        return out.chunk(len(weights), dim=self.channel)


def _pos(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


def _plus(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _split(x: Tensor, nonneg: bool) -> list[tuple[Tensor, bool]]:
    """``[(carry(x+), True), (carry(x-), False)]``; only the first when ``x >= 0`` is known."""
    if nonneg:
        return [(carry(x, x), True)]
    return [(carry(x.clamp(min=0), x), True), (carry(x.clamp(max=0), x), False)]


class RuleError(TypeError):
    """A rule was assigned to a node it cannot handle."""


# ----------------------------------------------------------------------------------------------
# rules


@dataclass(frozen=True)
class _Rule:
    """Shared behaviour: operations without weights are refused unless a rule accepts them."""

    accepts_ops = False

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    def op(
        self, fn: Callable[..., Tensor], args: list[Any], live: list[int], factors: int = 1
    ) -> Tensor:
        raise RuleError(f"{self!r} needs a layer with weights (Linear or convolution)")


@dataclass(frozen=True)
class Epsilon(_Rule):
    """``R_i = sum_j x_i w_ij R_j / stab(z_j)``; ``epsilon = 0`` is LRP-0 (gradient x input)."""

    epsilon: float = 1e-6
    accepts_ops = True

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        num = layer.evaluate(carry(x, x))
        z = layer.add_bias(num.detach(), layer.bias) if z is None else z
        return relay(z, num, stabilize(z, self.epsilon))

    def op(
        self, fn: Callable[..., Tensor], args: list[Any], live: list[int], factors: int = 1
    ) -> Tensor:
        return own_map(fn, args, live, self.epsilon, factors)


@dataclass(frozen=True)
class Norm(Epsilon):
    """The epsilon rule with the node's own map (sums, means, average pools, products)."""


@dataclass(frozen=True)
class Pass(_Rule):
    """Relevance passes unchanged: ``R_in = R_out`` (input and output of the same shape)."""

    accepts_ops = True

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        if z is None:
            z = layer.add_bias(layer.evaluate(x.detach()), layer.bias)
        return identity(z, x)

    def op(
        self, fn: Callable[..., Tensor], args: list[Any], live: list[int], factors: int = 1
    ) -> Tensor:
        if len(live) != 1:
            raise RuleError(f"{self!r} needs exactly one input carrying relevance, got {len(live)}")
        with torch.no_grad():
            y = fn(*args)
        return identity(y, args[live[0]])


@dataclass(frozen=True)
class Constant(_Rule):
    """The node's output is held constant: no relevance flows into it.

    On attention weights (``by_kind({"softmax": Constant()})``) this is the conservative
    propagation of Ali et al. (ICML 2022, CP-LRP): all relevance of ``A v`` goes to ``v``.
    """

    accepts_ops = True

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        if z is not None:
            return z.detach()
        with torch.no_grad():
            return layer.add_bias(layer.evaluate(x), layer.bias)

    def op(
        self, fn: Callable[..., Tensor], args: list[Any], live: list[int], factors: int = 1
    ) -> Tensor:
        with torch.no_grad():
            return fn(*args)


@dataclass(frozen=True)
class ZPlus(_Rule):
    """Positive contributions only: ``(x+ w+ + x- w-) R / stab(sum + b+)``."""

    epsilon: float = 1e-6

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        w = layer.weight
        wp = layer.derived("w+", lambda: _pos(w))
        wn = layer.derived("w-", lambda: _neg(w))
        num = layer.terms([(p, wp if up else wn) for p, up in _split(x, nonneg)], "zplus")
        if z is None:
            with torch.no_grad():
                z = layer.add_bias(layer.evaluate(x), layer.bias)
        den = stabilize(layer.add_bias(num.detach(), _pos(layer.bias)), self.epsilon)
        return relay(z, num, den)


@dataclass(frozen=True)
class AlphaBeta(_Rule):
    """``alpha`` times the positive and ``beta`` times the negative contributions, each normalised.

    Requires ``alpha - beta = 1`` and ``alpha, beta >= 0`` (conservation).
    """

    alpha: float = 2.0
    beta: float = 1.0
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(
                f"AlphaBeta needs alpha - beta = 1 with alpha, beta >= 0, "
                f"got alpha={self.alpha}, beta={self.beta}"
            )

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        w, b = layer.weight, layer.bias
        wp = layer.derived("w+", lambda: _pos(w))
        wn = layer.derived("w-", lambda: _neg(w))
        if nonneg:
            pos, neg = layer.stacked(carry(x, x), [wp, wn], "w+w-")
        else:
            (xp, _), (xn, _) = _split(x, False)
            pos = layer.terms([(xp, wp), (xn, wn)], "zplus")
            neg = layer.terms([(xp, wn), (xn, wp)], "zminus")
        z = layer.add_bias(pos.detach() + neg.detach(), b) if z is None else z
        den_pos = stabilize(layer.add_bias(pos.detach(), _pos(b)), self.epsilon)
        den_neg = stabilize(layer.add_bias(neg.detach(), _neg(b)), self.epsilon)
        return z.detach() + self.alpha * through(pos, den_pos) - self.beta * through(neg, den_neg)


@dataclass(frozen=True)
class Gamma(_Rule):
    """Positive weights favoured by ``gamma``; the pairing follows the sign of ``z_j``."""

    gamma: float = 0.25
    epsilon: float = 1e-6

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        g, w, b = self.gamma, layer.weight, layer.bias
        up = layer.derived(("gamma+", g), lambda: w + g * _pos(w))
        down = layer.derived(("gamma-", g), lambda: w + g * _neg(w))
        if nonneg:
            c_up, c_down = layer.stacked(carry(x, x), [up, down], ("gamma", g))
        else:
            (xp, _), (xn, _) = _split(x, False)
            c_up = layer.terms([(xp, up), (xn, down)], ("gamma up", g))
            c_down = layer.terms([(xp, down), (xn, up)], ("gamma down", g))
        # c_up + c_down = (2 + gamma) x w: the layer's own output comes for free.
        if z is None:
            z = layer.add_bias((c_up.detach() + c_down.detach()) / (2 + g), b)
        den_up = stabilize(layer.add_bias(c_up.detach(), _plus(b, g * _pos(b))), self.epsilon)
        den_down = stabilize(layer.add_bias(c_down.detach(), _plus(b, g * _neg(b))), self.epsilon)
        positive = z >= 0
        return z.detach() + torch.where(positive, through(c_up, den_up), through(c_down, den_down))


@dataclass(frozen=True, eq=False)
class ZBox(_Rule):
    """For inputs bounded by ``low <= x <= high`` (the first layer): ``x w - l w+ - h w-``.

    ``low`` and ``high`` are numbers or tensors broadcastable to the input (e.g. ``[1, C, 1, 1]``
    bounds of normalised image channels).
    """

    low: float | Tensor = 0.0
    high: float | Tensor = 1.0
    epsilon: float = 1e-6

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        w = layer.weight
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x)
        own = layer.evaluate(carry(x, x))
        wp = layer.derived("w+", lambda: _pos(w))
        wn = layer.derived("w-", lambda: _neg(w))
        num = own - layer.terms([(carry(low, x), wp), (carry(high, x), wn)], "zbox")
        z = layer.add_bias(own.detach(), layer.bias) if z is None else z
        # The bias cancels: (x; w, b) - (l; w+, b+) - (h; w-, b-), as in Zennit.
        return relay(z, num, stabilize(num.detach(), self.epsilon))


@dataclass(frozen=True)
class Flat(_Rule):
    """Every input and weight taken as 1, bias 0: relevance spread over the receptive field."""

    epsilon: float = 1e-6

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        ones = layer.derived("ones", lambda: torch.ones_like(layer.weight))
        return _input_free(x, layer, ones, None, self.epsilon, z)


@dataclass(frozen=True)
class WSquare(_Rule):
    """``R_i = sum_j w_ij^2 R_j / stab(sum_i w_ij^2 + b_j^2)``."""

    epsilon: float = 1e-6

    def layer(
        self, x: Tensor, layer: Affine, nonneg: bool = False, z: Tensor | None = None
    ) -> Tensor:
        b = layer.bias
        square = layer.derived("w^2", lambda: layer.weight**2)
        return _input_free(x, layer, square, None if b is None else b**2, self.epsilon, z)


def _input_free(
    x: Tensor,
    layer: Affine,
    weight: Tensor,
    bias: Tensor | None,
    epsilon: float,
    z: Tensor | None = None,
) -> Tensor:
    """Rules that ignore the input's values: ``R_i = sum_j v_ij R_j / stab(sum_i v_ij + c_j)``."""
    num = layer.evaluate(carry(torch.ones_like(x), x), weight)
    if z is None:
        with torch.no_grad():
            z = layer.add_bias(layer.evaluate(x), layer.bias)
    return relay(z, num, stabilize(layer.add_bias(num.detach(), bias), epsilon))


# ----------------------------------------------------------------------------------------------
# operations without weights


def identity(value: Tensor, x: Tensor) -> Tensor:
    """Value ``value``, relevance passed to ``x`` unchanged (shapes must match)."""
    if value.shape != x.shape:
        raise RuleError(
            f"Pass needs the output shape to equal the input shape, got {list(value.shape)} "
            f"from {list(x.shape)}"
        )
    return value.detach() + (x - x.detach())


def own_map(
    fn: Callable[..., Tensor], args: list[Any], live: list[int], epsilon: float, factors: int = 1
) -> Tensor:
    """The epsilon rule with an operation's own map.

    ``fn`` is affine in each relevance-carrying argument (positions ``live``) and multilinear in
    them together with ``factors`` multiplying factors (1 for ``a + b``, a mean or a pool; 2 for
    ``a * b`` or ``a @ b``); every other argument is a constant. Input ``k`` receives
    ``x_k * J_k^T (R / stab(y)) / factors``: for a sum ``x_k R / stab(sum)``, for a product the
    AttnLRP uniform rule (each factor gets ``1 / factors`` of ``R``).
    """
    carried = list(args)
    for k in live:
        carried[k] = carry(args[k], args[k])
    y = fn(*carried)
    return relay(y, y, stabilize(y.detach(), epsilon) * factors)


__all__ = [
    "AlphaBeta",
    "Constant",
    "Epsilon",
    "Flat",
    "Gamma",
    "Norm",
    "Pass",
    "WSquare",
    "ZBox",
    "ZPlus",
]
