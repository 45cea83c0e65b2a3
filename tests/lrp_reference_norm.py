"""Float64 references for the AttnLRP rules (Achtibat et al., ICML 2024), written from the formulas
in the LRP reference notes, not from torchattr code.

stab(z) = z + eps * sign(z), sign(0) := +1. ``R`` is the relevance arriving at a map's output, the
functions return the relevance of its input(s).

* LayerNorm with the standard deviation held constant is the linear map
  ``y = W x + beta``, ``W = diag(gamma / sigma) (I - 1 1^T / N)``, ``sigma = sqrt(var(x) + eps_ln)``
  (biased variance); its relevance is the epsilon rule of that map with ``beta`` as the bias:
  ``R_x_i = x_i sum_j W_ji R_j / stab(z_j)``, ``z = W x + beta``.
  By hand: x = [1, 3], gamma = [2, 1], beta = [0.5, 1], eps_ln = 0: sigma = 1,
  W = [[1, -1], [-0.5, 0.5]], z = [-1.5, 2], R = [1, 2]: R / z = [-2/3, 1],
  R_x_1 = 1 (1 (-2/3) + (-0.5) 1) = -7/6, R_x_2 = 3 ((-1)(-2/3) + 0.5) = 7/2
  (sum 7/3 = sum_j (z_j - beta_j) R_j / z_j = 4/3 + 1: beta took the rest).
* RMSNorm: ``W = diag(gamma / rms)``, ``rms = sqrt(mean(x^2) + eps)``; diagonal and bias-free, so
  ``R_x = R`` exactly (by hand: x = [1, 7], any gamma: R_x = R).
* Softmax ``s = softmax(x)``: ``R_x = x * (R_s - s * sum(R_s))``. By hand: x = [1, 1 + ln 3],
  s = [1/4, 3/4], R_s = [1, 2]: R_x = [1/4, -(1 + ln 3)/4].
* A product ``C = A @ B`` (both factors depend on the input): the epsilon rule over the sum of
  terms, then the uniform rule, each factor half of each term:
  ``R_A_ik = 1/2 sum_j A_ik B_kj R_ij / stab(C_ij)``, ``R_B_kj = 1/2 sum_i A_ik B_kj R_ij /
  stab(C_ij)``. By hand: A = [[1, 2], [3, 4]], B = [[1, 0], [-1, 1]], R = ones: C = [[-1, 2],
  [-1, 4]], R_A = [[-0.5, 1.5], [-1.5, 2.5]], R_B = [[-2, 0], [3, 1]] (sums 2 + 2 = 4: conserved).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DTYPE = torch.float64


def stab(z: Tensor, eps: float = 1e-6) -> Tensor:
    """z + eps * sign(z), sign(0) := +1."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def epsilon_linear(x: Tensor, W: Tensor, b: Tensor | None, R: Tensor, eps: float = 1e-6) -> Tensor:
    """Epsilon rule of ``z = W x + b`` (``x [B, I]``, ``W [O, I]`` or per sample ``[B, O, I]``,
    ``R [B, O]``): ``R_x_i = x_i sum_j W_ji R_j / stab(z_j)`` -> ``[B, I]``."""
    W = W.expand(x.shape[0], *W.shape[-2:])
    z = torch.einsum("boi,bi->bo", W, x)
    if b is not None:
        z = z + b
    return x * torch.einsum("boi,bo->bi", W, R / stab(z, eps))


def layer_norm_matrix(x: Tensor, gamma: Tensor, eps_ln: float) -> Tensor:
    """``W [B, N, N] = diag(gamma / sigma) (I - 1 1^T / N)`` per sample of ``x [B, N]``."""
    n = x.shape[-1]
    sigma = torch.sqrt(x.var(-1, unbiased=False) + eps_ln)  # [B]
    centre = torch.eye(n, dtype=x.dtype) - torch.full((n, n), 1.0 / n, dtype=x.dtype)
    return (gamma[None, :, None] / sigma[:, None, None]) * centre


def rms_norm_matrix(x: Tensor, gamma: Tensor, eps: float) -> Tensor:
    """``W [B, N, N] = diag(gamma / rms)``, ``rms = sqrt(mean(x^2) + eps)``."""
    rms = torch.sqrt(x.pow(2).mean(-1) + eps)
    return torch.diag_embed(gamma[None, :] / rms[:, None])


def layer_norm_lrp(
    x: Tensor, gamma: Tensor, beta: Tensor | None, R: Tensor, eps_ln: float, eps: float = 1e-6
) -> Tensor:
    """AttnLRP LayerNorm rule: epsilon rule of ``x -> W x + beta`` (``sigma`` held constant)."""
    return epsilon_linear(x, layer_norm_matrix(x, gamma, eps_ln), beta, R, eps)


def rms_norm_lrp(x: Tensor, gamma: Tensor, R: Tensor, eps_rms: float, eps: float = 1e-6) -> Tensor:
    """AttnLRP RMSNorm rule: epsilon rule of ``x -> diag(gamma / rms) x`` (``rms`` constant)."""
    return epsilon_linear(x, rms_norm_matrix(x, gamma, eps_rms), None, R, eps)


def softmax_lrp(x: Tensor, R: Tensor, dim: int = -1) -> Tensor:
    """AttnLRP softmax rule: ``R_x = x * (R_s - s * sum R_s)`` along ``dim``."""
    s = torch.softmax(x, dim=dim)
    return x * (R - s * R.sum(dim, keepdim=True))


def matmul_lrp(A: Tensor, B: Tensor, R: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Uniform rule for ``C = A @ B`` (``A [..., I, K]``, ``B [..., K, J]``, ``R [..., I, J]``)."""
    ratio = R / stab(A @ B, eps)  # [..., I, J]
    terms = A.unsqueeze(-1) * B.unsqueeze(-3) * ratio.unsqueeze(-2)  # [..., I, K, J]
    return 0.5 * terms.sum(-1), 0.5 * terms.sum(-3)


def seed(logits: Tensor, target: Tensor) -> Tensor:
    """``R_out = s * onehot(t)``: the target logit at the target, 0 elsewhere."""
    R = torch.zeros_like(logits)
    rows = torch.arange(logits.shape[0])
    R[rows, target] = logits[rows, target]
    return R


@torch.no_grad()
def norm_then_linear_lrp(
    norm: nn.LayerNorm | nn.RMSNorm,
    linear: nn.Linear,
    x: Tensor,
    target: Tensor,
    eps: float = 1e-6,
) -> Tensor:
    """``linear(norm(x))`` for ``x [B, N]``: epsilon rule on the linear layer, the AttnLRP norm
    rule on the normalisation."""
    y = norm(x)
    R_y = epsilon_linear(y, linear.weight, linear.bias, seed(linear(y), target), eps)
    if isinstance(norm, nn.LayerNorm):
        beta = norm.bias if norm.bias is not None else None
        return layer_norm_lrp(x, norm.weight, beta, R_y, norm.eps, eps)
    eps_rms = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    return rms_norm_lrp(x, norm.weight, R_y, eps_rms, eps)


@torch.no_grad()
def single_head_attention_lrp(
    model: nn.Module, x: Tensor, target: Tensor, eps: float = 1e-6
) -> Tensor:
    """``head(flatten(softmax(q k^T / sqrt(D)) v))`` with bias-free ``q, k, v, head`` (the
    ``SingleHeadAttention`` of ``lrp_zoo``), ``x [B, L, D]`` -> ``R_x [B, L, D]``.

    head: epsilon; A @ v: uniform; softmax: AttnLRP; the scaling by 1/sqrt(D) passes relevance
    unchanged (one input, a linear map); q k^T: uniform; q, k, v: epsilon, summed at x.
    """
    B, L, D = x.shape
    q, k, v = model.q(x), model.k(x), model.v(x)
    scores = q @ k.transpose(1, 2) / math.sqrt(D)
    attn = torch.softmax(scores, dim=-1)
    out = attn @ v
    flat = out.flatten(1)
    R_flat = epsilon_linear(flat, model.head.weight, None, seed(model.head(flat), target), eps)
    R_attn, R_v = matmul_lrp(attn, v, R_flat.view(B, L, D), eps)
    R_scores = softmax_lrp(scores, R_attn)
    R_q, R_kt = matmul_lrp(q, k.transpose(1, 2), R_scores, eps)
    R_k = R_kt.transpose(1, 2)

    def through(layer: nn.Linear, R: Tensor) -> Tensor:
        return epsilon_linear(x.reshape(B * L, D), layer.weight, None, R.reshape(B * L, D), eps)

    total = through(model.q, R_q) + through(model.k, R_k) + through(model.v, R_v)
    return total.view(B, L, D)
