"""Dense-matrix LRP references for the LRP tests, written by hand in float64 (no torchattr code).

Convention: a linear layer is ``z = x @ W + b`` on flattened tensors, ``x [B, I]``, ``W [I, O]``
(row i = input i, column j = output j, so ``W[i, j]`` is ``w_ij`` of the formulas), ``b [O]``.
A convolution becomes such a layer by applying it (without bias) to every basis vector of its
input space; its bias is repeated over the output positions. Every rule is then a few matrix
products; ``R [B, O]`` arrives at the outputs and the rule returns ``R_in [B, I]``.

stab(z) = z + eps * sign(z) with sign(0) := +1.

Hand check on a 2 x 2 layer (``test_reference_by_hand`` asserts these numbers), with
x = [2, -1], W = [[1, 3], [-3, 4]] (w_11 = 1, w_12 = 3, w_21 = -3, w_22 = 4), b = [0.5, -4],
R = [1, 2]; z_1 = 2 + 3 + 0.5 = 5.5, z_2 = 6 - 4 - 4 = -2 (stabilisers ~0 at these magnitudes):

* Epsilon: R_j / z_j = [2/11, -1]; R_in_1 = 2 (1 * 2/11 + 3 * -1) = -62/11;
  R_in_2 = -1 (-3 * 2/11 + 4 * -1) = 50/11.  (Sum -12/11 = R_1 * 5/5.5 + R_2 * 2/(-2).)
* ZPlus: x+ = [2, 0], x- = [0, -1]; zp = x+ w+ + x- w-: zp_11 = 2, zp_12 = 6, zp_21 = 3, zp_22 = 0;
  d = [2 + 3 + 0.5, 6 + 0 + 0] = [5.5, 6]; R_in_1 = 2/5.5 + 6 * 2/6 = 26/11; R_in_2 = 3/5.5 = 6/11.
* AlphaBeta(2, 1): zn = x+ w- + x- w+: only zn_22 = -1 * 4 = -4; dn_2 = -4 + b_2- = -8;
  negative part [0, -4 * 2 / -8] = [0, 1]; R_in = 2 [26/11, 6/11] - [0, 1] = [52/11, 1/11].
* Gamma(0.25): z_1 > 0: c_11 = 2 (1 + 0.25) = 2.5, c_21 = -1 (-3 - 0.75) = 3.75,
  d_1 = 6.25 + 0.5 + 0.125 = 6.875; z_2 < 0: c_12 = 2 (3 + 0) = 6, c_22 = -1 (4 + 1) = -5,
  d_2 = 1 - 4 - 1 = -4; R_in_1 = 2.5/6.875 + 6 * 2/(-4) = 4/11 - 3 = -29/11;
  R_in_2 = 3.75/6.875 + (-5) * 2/(-4) = 6/11 + 5/2 = 67/22.
* ZBox(low=[-1, -2], high=[3, 1]): c = x w - l w+ - h w-: c_11 = 2 + 1 = 3, c_12 = 6 + 3 = 9,
  c_21 = 3 + 0 + 3 = 6, c_22 = -4 + 8 - 0 = 4; without bias (the default, as Zennit) d = [9, 13],
  R_in_1 = 3/9 + 9 * 2/13 = 67/39, R_in_2 = 6/9 + 4 * 2/13 = 50/39; with the bias in the
  denominator d = [9.5, 9], R_in_1 = 3/9.5 + 9 * 2/9 = 44/19, R_in_2 = 6/9.5 + 4 * 2/9 = 260/171.
* Flat: every column sums to 2; R_in = [1/2 + 2/2] * 2 = [1.5, 1.5].
* WSquare: w^2 = [[1, 9], [9, 16]], b^2 = [0.25, 16]; d = [10.25, 41];
  R_in_1 = 1/10.25 + 9 * 2/41 = 22/41; R_in_2 = 9/10.25 + 16 * 2/41 = 68/41.
* Norm on a sum y = a + b with a = 3, b = -1, R = 2: R_a = 3 * 2/2 = 3, R_b = -1 * 2/2 = -1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPE = torch.float64


def stab(z: Tensor, eps: float = 1e-6) -> Tensor:
    """z + eps * sign(z), sign(0) := +1."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


@dataclass
class DenseLayer:
    """A linear map on flattened tensors: ``z = x @ W + b``, with its structural connectivity."""

    W: Tensor  # [I, O]
    b: Tensor  # [O]
    conn: Tensor  # [I, O], 1 where input i feeds output j (Flat)
    in_shape: tuple[int, ...]  # per sample
    out_shape: tuple[int, ...]

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.W + self.b


def _basis(shape: Sequence[int]) -> Tensor:
    n = math.prod(shape)
    return torch.eye(n, dtype=DTYPE).reshape(n, *shape)


def linear_layer(mod: nn.Linear) -> DenseLayer:
    W = mod.weight.detach().to(DTYPE).T.clone()
    b = (
        mod.bias.detach().to(DTYPE).clone()
        if mod.bias is not None
        else torch.zeros(W.shape[1], dtype=DTYPE)
    )
    return DenseLayer(W, b, torch.ones_like(W), (W.shape[0],), (W.shape[1],))


def conv_layer(mod: nn.Conv1d | nn.Conv2d, in_shape: Sequence[int]) -> DenseLayer:
    """Dense matrix of a (zero-padded) Conv1d / Conv2d on a per-sample input shape [C, ...]."""
    assert mod.padding_mode == "zeros"
    conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
    weight = mod.weight.detach().to(DTYPE)
    basis = _basis(in_shape)

    def apply(w: Tensor) -> Tensor:
        return conv(basis, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)

    out = apply(weight)
    out_shape = tuple(out.shape[1:])
    n_in = basis.shape[0]
    W = out.reshape(n_in, -1)
    conn = apply(torch.ones_like(weight)).reshape(n_in, -1)
    assert set(conn.unique().tolist()) <= {0.0, 1.0}
    per_channel = math.prod(out_shape[1:])
    if mod.bias is not None:
        b = mod.bias.detach().to(DTYPE).repeat_interleave(per_channel)
    else:
        b = torch.zeros(W.shape[1], dtype=DTYPE)
    return DenseLayer(W, b, conn, tuple(in_shape), out_shape)


def map_layer(fn: Callable[[Tensor], Tensor], in_shape: Sequence[int]) -> DenseLayer:
    """Dense matrix of a parameter-free linear op (average pool, mean over dims)."""
    basis = _basis(in_shape)
    out = fn(basis)
    W = out.reshape(basis.shape[0], -1)
    return DenseLayer(
        W,
        torch.zeros(W.shape[1], dtype=DTYPE),
        (W != 0).to(DTYPE),
        tuple(in_shape),
        tuple(out.shape[1:]),
    )


def merge_batchnorm(layer: DenseLayer, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> DenseLayer:
    """The layer followed by an eval-mode BatchNorm, as one layer.

    w' = w * scale, b' = (b - mean) * scale + beta, scale = gamma / sqrt(var + eps).
    """
    scale = bn.weight.detach().to(DTYPE) / torch.sqrt(bn.running_var.to(DTYPE) + bn.eps)
    shift = bn.bias.detach().to(DTYPE) - bn.running_mean.to(DTYPE) * scale
    per_channel = math.prod(layer.out_shape[1:])
    scale_j = scale.repeat_interleave(per_channel)
    shift_j = shift.repeat_interleave(per_channel)
    return DenseLayer(
        layer.W * scale_j, layer.b * scale_j + shift_j, layer.conn, layer.in_shape, layer.out_shape
    )


# --------------------------------------------------------------------------------------------
# Rules: (layer, x [B, I], R [B, O]) -> R_in [B, I]

Rule = Callable[[DenseLayer, Tensor, Tensor], Tensor]


def epsilon(eps: float = 1e-6) -> Rule:
    def rule(layer: DenseLayer, x: Tensor, R: Tensor) -> Tensor:
        s = R / stab(x @ layer.W + layer.b, eps)
        return x * (s @ layer.W.T)

    return rule


def norm(eps: float = 1e-6) -> Rule:
    """Norm = Epsilon with a fixed stabiliser on the op's own map (no bias)."""
    return epsilon(eps)


def zplus(eps: float = 1e-6) -> Rule:
    def rule(layer: DenseLayer, x: Tensor, R: Tensor) -> Tensor:
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        Wp, Wn = layer.W.clamp(min=0), layer.W.clamp(max=0)
        s = R / stab(xp @ Wp + xn @ Wn + layer.b.clamp(min=0), eps)
        return xp * (s @ Wp.T) + xn * (s @ Wn.T)

    return rule


def alpha_beta(alpha: float = 2.0, beta: float = 1.0, eps: float = 1e-6) -> Rule:
    def rule(layer: DenseLayer, x: Tensor, R: Tensor) -> Tensor:
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        Wp, Wn = layer.W.clamp(min=0), layer.W.clamp(max=0)
        sp = R / stab(xp @ Wp + xn @ Wn + layer.b.clamp(min=0), eps)
        sn = R / stab(xp @ Wn + xn @ Wp + layer.b.clamp(max=0), eps)
        pos = xp * (sp @ Wp.T) + xn * (sp @ Wn.T)
        neg = xp * (sn @ Wn.T) + xn * (sn @ Wp.T)
        return alpha * pos - beta * neg

    return rule


def gamma(g: float = 0.25, eps: float = 1e-6) -> Rule:
    def rule(layer: DenseLayer, x: Tensor, R: Tensor) -> Tensor:
        W, b = layer.W, layer.b
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        positive = (x @ W + b) >= 0
        # z_j >= 0: x+ with w + g w+, x- with w + g w-, bias b + g b+
        A_p, A_n = W + g * Wp, W + g * Wn
        d_pos = xp @ A_p + xn @ A_n + b + g * b.clamp(min=0)
        # z_j < 0: x+ with w + g w-, x- with w + g w+, bias b + g b-
        C_p, C_n = W + g * Wn, W + g * Wp
        d_neg = xp @ C_p + xn @ C_n + b + g * b.clamp(max=0)
        s_pos = torch.where(positive, R / stab(d_pos, eps), torch.zeros_like(R))
        s_neg = torch.where(positive, torch.zeros_like(R), R / stab(d_neg, eps))
        return xp * (s_pos @ A_p.T + s_neg @ C_p.T) + xn * (s_pos @ A_n.T + s_neg @ C_n.T)

    return rule


def zbox(low: float | Tensor, high: float | Tensor, eps: float = 1e-6, bias: bool = False) -> Rule:
    """c_ij = x_i w_ij - l_i w_ij+ - h_i w_ij-; R_i = sum_j c_ij R_j / stab(sum_i c_ij [+ b_j]).

    Without the bias by default, as in docs/reference lrp.md, the zB rule of Montavon et al. (2017)
    and Zennit: Zennit evaluates (x; w, b) - (l; w+, b+) - (h; w-, b-), so b - b+ - b- = 0 cancels.
    ``bias=True`` is the variant with b_j in the denominator.
    """

    def rule(layer: DenseLayer, x: Tensor, R: Tensor) -> Tensor:
        shape = (x.shape[0], *layer.in_shape)
        lo = torch.broadcast_to(torch.as_tensor(low, dtype=DTYPE), shape).reshape(x.shape)
        hi = torch.broadcast_to(torch.as_tensor(high, dtype=DTYPE), shape).reshape(x.shape)
        W = layer.W
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        s = R / stab(x @ W - lo @ Wp - hi @ Wn + (layer.b if bias else 0.0), eps)
        return x * (s @ W.T) - lo * (s @ Wp.T) - hi * (s @ Wn.T)

    return rule


def flat(eps: float = 1e-6) -> Rule:
    def rule(layer: DenseLayer, x: Tensor, R: Tensor) -> Tensor:
        M = layer.conn
        s = R / stab(M.sum(0), eps)
        return s @ M.T

    return rule


def wsquare(eps: float = 1e-6) -> Rule:
    def rule(layer: DenseLayer, x: Tensor, R: Tensor) -> Tensor:
        W2 = layer.W**2
        s = R / stab(W2.sum(0) + layer.b**2, eps)
        return s @ W2.T

    return rule


def norm_sum(parts: Sequence[Tensor], R: Tensor, eps: float = 1e-6) -> list[Tensor]:
    """Norm on y = sum(parts): R_k = part_k R / stab(y)."""
    s = R / stab(sum(parts), eps)
    return [p * s for p in parts]


# --------------------------------------------------------------------------------------------
# Chains of steps on flattened tensors


class Step:
    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def relevance(self, x: Tensor, R: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass
class Layer(Step):
    layer: DenseLayer
    rule: Rule

    def forward(self, x: Tensor) -> Tensor:
        return self.layer.forward(x)

    def relevance(self, x: Tensor, R: Tensor) -> Tensor:
        return self.rule(self.layer, x, R)


class ReLU(Step):
    """Pass: relevance unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(min=0)

    def relevance(self, x: Tensor, R: Tensor) -> Tensor:
        return R


@dataclass
class MaxPool2d(Step):
    """Winner takes all: R of each window goes to its argmax (the plain gradient)."""

    in_shape: tuple[int, int, int]
    kernel: int
    stride: int | None = None

    def _pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.max_pool2d(
            x.reshape(x.shape[0], *self.in_shape), self.kernel, self.stride, return_indices=True
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._pool(x)[0].reshape(x.shape[0], -1)

    def relevance(self, x: Tensor, R: Tensor) -> Tensor:
        _, idx = self._pool(x)
        B, C = x.shape[0], self.in_shape[0]
        R_in = torch.zeros(B, C, math.prod(self.in_shape[1:]), dtype=R.dtype)
        R_in.scatter_add_(2, idx.reshape(B, C, -1), R.reshape(B, C, -1))
        return R_in.reshape(B, -1)


def seed(logits: Tensor, target: Tensor) -> Tensor:
    """R_out = s * onehot(target), s the target logit."""
    R = torch.zeros_like(logits)
    rows = torch.arange(logits.shape[0])
    R[rows, target] = logits[rows, target]
    return R


def chain(steps: Sequence[Step], x: Tensor, target: Tensor | int) -> tuple[Tensor, Tensor]:
    """(relevance shaped like x, logits) of a chain of steps; x [B, ...], target int or [B]."""
    B = x.shape[0]
    h = x.detach().to(DTYPE).reshape(B, -1)
    inputs = []
    for step in steps:
        inputs.append(h)
        h = step.forward(h)
    target = (
        torch.as_tensor(target).expand(B)
        if not torch.is_tensor(target) or target.ndim == 0
        else target
    )
    R = seed(h, target)
    for step, inp in zip(reversed(steps), reversed(inputs)):
        R = step.relevance(inp, R)
    return R.reshape(x.shape), h


@dataclass
class NormMap(Step):
    """A parameter-free linear map (average pool, mean) with the Norm rule."""

    layer: DenseLayer
    eps: float = 1e-6

    def forward(self, x: Tensor) -> Tensor:
        return self.layer.forward(x)

    def relevance(self, x: Tensor, R: Tensor) -> Tensor:
        return norm(self.eps)(self.layer, x, R)


def sequential_steps(
    model: nn.Sequential, in_shape: Sequence[int], rules: dict[str, Rule], norm_eps: float = 1e-6
) -> list[Step]:
    """Steps of a Sequential of Linear / Conv / BatchNorm / ReLU / pools / Flatten.

    ``rules`` maps the names of the Linear and Conv modules to their reference rules; BatchNorm
    right after one of them is merged into it; average pools get Norm (stabiliser ``norm_eps``).
    """
    shape = tuple(in_shape)
    steps: list[Step] = []
    for name, mod in model.named_children():
        if isinstance(mod, nn.Linear):
            layer = linear_layer(mod)
            steps.append(Layer(layer, rules[name]))
            shape = layer.out_shape
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            layer = conv_layer(mod, shape)
            steps.append(Layer(layer, rules[name]))
            shape = layer.out_shape
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            previous = steps[-1]
            assert isinstance(previous, Layer), "only BatchNorm after a linear layer is modelled"
            previous.layer = merge_batchnorm(previous.layer, mod)
        elif isinstance(mod, nn.ReLU):
            steps.append(ReLU())
        elif isinstance(mod, nn.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(mod, nn.MaxPool2d):
            step = MaxPool2d(shape, mod.kernel_size, mod.stride)
            steps.append(step)
            shape = tuple(mod(torch.zeros(1, *shape, dtype=DTYPE)).shape[1:])
        elif isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            layer = map_layer(mod, shape)
            steps.append(NormMap(layer, norm_eps))
            shape = layer.out_shape
        else:
            raise TypeError(f"no reference for {type(mod).__name__}")
    return steps
