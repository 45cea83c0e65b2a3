"""Tests of torchattr.metrics.faithfulness on linear and hand-built models with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import Tensor, nn

import torchattr as ta
from torchattr.metrics import (
    average_drop,
    completeness,
    faithfulness_correlation,
    increase_in_confidence,
    input_invariance,
    monotonicity,
    sensitivity_n,
)


class Linear(nn.Module):
    """``f(x) = W x.flatten() + c``: logits ``[N, 3]``."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        numel = torch.Size(shape).numel()
        self.weight = nn.Parameter(torch.randn(3, numel, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def inputs(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------
# Completeness
# ------------------------------------------------------------------------------------------


def test_completeness_of_input_x_gradient_of_a_linear_model_is_zero() -> None:
    model, x = Linear((2, 3, 3)), inputs((4, 2, 3, 3))
    before = snapshot(model)
    phi = ta.input_x_gradient(model, x, target=1)
    assert completeness(model, x, phi, 1).abs().max() < 1e-10
    # channel-summed maps carry the same total
    assert completeness(model, x, phi.sum(dim=1), 1, chunk_size=3).abs().max() < 1e-10
    assert_unchanged(model, before)


def test_completeness_hand_computed_with_a_baseline() -> None:
    model, x = Linear((5,)), inputs((3, 5))
    base = torch.full((5,), 0.25, dtype=torch.float64)
    phi = torch.ones(3, 5, dtype=torch.float64)
    w = model.weight[2].detach()
    expected = (5 - (x - base) @ w).abs()  # f(x) - f(b) = w . (x - b)
    got = completeness(model, x, phi, 2, baseline=base)
    assert torch.allclose(got, expected)
    ig = ta.integrated_gradients(model, x, target=2, baseline=base.expand(3, 5))
    assert completeness(model, x, ig, 2, baseline=base).max() < 1e-8


# ------------------------------------------------------------------------------------------
# Monotonicity
# ------------------------------------------------------------------------------------------


class Interaction(nn.Module):
    """``f(x) = 2 x0 - x0 x1 + 0.5 x1``: at x = (1, 1) from 0, adding x1 first rises
    (0 -> 0.5 -> 1.5), adding x0 first falls (0 -> 2 -> 1.5)."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x[:, 0] - x[:, 0] * x[:, 1] + 0.5 * x[:, 1]


def test_monotonicity_hand_computed_order_matters() -> None:
    x = torch.ones(2, 2)
    phi = torch.tensor([[2.0, 1.0], [1.0, 2.0]])  # increasing order: x1 first / x0 first
    assert monotonicity(Interaction().eval(), x, phi, score="logit").tolist() == [True, False]
    # a sigmoid keeps the order: same answer on probabilities
    assert monotonicity(Interaction().eval(), x, phi).tolist() == [True, False]


def test_monotonicity_steps_chunks_and_progress() -> None:
    model, x = Linear((7,)), inputs((3, 7))
    phi = ta.input_x_gradient(model, x, target=0)
    # a linear model: s_k rises at every step iff every added contribution w_i x_i >= 0
    w = model.weight[0].detach()
    expected = ((x * w) >= 0).all(dim=1)
    seen = []
    got = monotonicity(
        model, x, phi, 0, score="logit", chunk_size=4, progress=lambda d, t: seen.append((d, t))
    )
    assert got.tolist() == expected.tolist()
    assert seen[-1] == (21, 21) and len(seen) == math.ceil(21 / 4)
    # three features per step: ceil(7 / 3) = 3 steps; the last step is the input itself
    seen.clear()
    monotonicity(model, x, phi, 0, features_per_step=3, progress=lambda d, t: seen.append(t))
    assert seen == [9, 9, 9]  # one call per B = 3 rows


def test_monotonicity_refuses_bad_arguments() -> None:
    model, x = Linear((4,)), inputs((2, 4))
    with pytest.raises(ValueError, match="features_per_step"):
        monotonicity(model, x, x, features_per_step=0)
    with pytest.raises(ValueError, match="attributions has shape"):
        monotonicity(model, x, x[:, :3])


# ------------------------------------------------------------------------------------------
# Sensitivity-n
# ------------------------------------------------------------------------------------------


def test_sensitivity_n_of_input_x_gradient_of_a_linear_model_is_one() -> None:
    model, x = Linear((2, 4, 4)), inputs((3, 2, 4, 4))
    phi = ta.input_x_gradient(model, x, target=1)
    g = torch.Generator().manual_seed(0)
    got = sensitivity_n(model, x, phi, 1, n=(1, 3, 10), runs=8, generator=g)
    assert got.shape == (3, 3)
    assert torch.allclose(got, torch.ones_like(got))


def test_sensitivity_n_is_faithfulness_correlation_per_size() -> None:
    model, x = Linear((6,)), inputs((2, 6))
    phi = torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = sensitivity_n(model, x, phi, n=2, runs=6, generator=torch.Generator().manual_seed(4))
    ref = faithfulness_correlation(
        model, x, phi, subset_size=2, runs=6, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(got[0], ref)
    with pytest.raises(ValueError, match="n must"):
        sensitivity_n(model, x, phi, n=(2, 0))
    with pytest.raises(TypeError, match="n must"):
        sensitivity_n(model, x, phi, n="2")


# ------------------------------------------------------------------------------------------
# Average drop / increase in confidence
# ------------------------------------------------------------------------------------------


class Signed(nn.Module):
    """``f(x, sign) = 5 + sign * sum(x)``: one logit per row."""

    def forward(self, x: Tensor, sign: Tensor) -> Tensor:
        return 5 + sign * x.flatten(1).sum(dim=1)


def test_average_drop_and_increase_hand_computed() -> None:
    x = torch.ones(2, 1, 2, 2)
    maps = torch.tensor(
        [[[2.0, 0.0], [1.0, 0.0]], [[4.0, 0.0], [2.0, 0.0]]]
    )  # -> [[1, 0], [.5, 0]]
    kw = {"sign": torch.tensor([1.0, -1.0])}
    # sample 0: Y = 9, O = 6.5 -> drop 100 * 2.5 / 9; sample 1: Y = 1, O = 3.5 -> no drop, increase
    drop = average_drop(Signed().eval(), x, maps, score="logit", forward_kwargs=kw, chunk_size=1)
    assert drop.tolist() == pytest.approx([100 * 2.5 / 9, 0.0])
    assert increase_in_confidence(
        Signed().eval(), x, maps, score="logit", forward_kwargs=kw
    ).tolist() == [
        False,
        True,
    ]
    # probabilities: a sigmoid of the single logit
    y, o = torch.tensor([9.0, 1.0]).sigmoid(), torch.tensor([6.5, 3.5]).sigmoid()
    expected = 100 * (y - o).clamp_min(0) / y
    assert torch.allclose(average_drop(Signed().eval(), x, maps, forward_kwargs=kw), expected)


def test_average_drop_refuses_maps_that_are_no_mask_and_is_nan_for_non_positive_scores() -> None:
    x = torch.ones(2, 1, 2, 2)
    kw = {"sign": torch.tensor([1.0, -10.0])}
    maps = torch.ones(2, 2, 2)
    drop = average_drop(Signed().eval(), x, maps, score="logit", forward_kwargs=kw)  # Y = 9, -35
    assert drop[0] == 0 and torch.isnan(drop[1])
    with pytest.raises(ValueError, match="negative"):
        average_drop(Signed().eval(), x, -maps, forward_kwargs=kw)
    zero = maps.clone()
    zero[1] = 0
    with pytest.raises(ValueError, match=r"zero everywhere in sample\(s\) \[1\]"):
        increase_in_confidence(Signed().eval(), x, zero, forward_kwargs=kw)


# ------------------------------------------------------------------------------------------
# Input invariance
# ------------------------------------------------------------------------------------------


def gradient(m: nn.Module, x: Tensor, t: object) -> Tensor:
    return ta.saliency(m, x, target=t, abs=False, reduce=None)


def times_input(m: nn.Module, x: Tensor, t: object) -> Tensor:
    return ta.input_x_gradient(m, x, target=t)


def mlp(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.ReLU(), nn.Linear(5, 3)).double().eval()


def test_input_invariance_of_the_gradient_and_not_of_input_x_gradient() -> None:
    model, x = mlp(), inputs((3, 4))
    before = snapshot(model)
    shift = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64)
    assert input_invariance(gradient, model, x, shift=shift, layer="0", chunk_size=2).max() < 1e-12
    got = input_invariance(times_input, model, x, 1, shift=shift, layer="0")
    # Phi(g, x + m) - Phi(f, x) = m * grad: the same gradient, the input moved by m
    grad = gradient(model, x, 1)
    expected = (shift * grad).norm(dim=1) / (x * grad).norm(dim=1)
    assert torch.allclose(got, expected)
    assert_unchanged(model, before)
    # a first layer without a bias gets one in the copy only
    plain = mlp(bias=False)
    assert input_invariance(gradient, plain, x, shift=-0.5, layer="0").max() < 1e-12
    assert plain[0].bias is None


def test_input_invariance_through_a_convolution_and_refusals() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    conv = conv.double().eval()
    x = inputs((2, 2, 4, 4))
    shift = torch.tensor([-0.5, 1.5], dtype=torch.float64).view(2, 1, 1)
    assert input_invariance(gradient, conv, x, shift=shift, layer="0").max() < 1e-12
    assert input_invariance(times_input, conv, x, shift=shift, layer="0").min() > 0
    with pytest.raises(ValueError, match="constant over space"):
        input_invariance(gradient, conv, x, shift=torch.rand(2, 4, 4), layer="0")
    padded = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten()).double().eval()
    with pytest.raises(ValueError, match="pads its input"):
        input_invariance(gradient, padded, x, shift=1.0, layer="0")
    with pytest.raises(ValueError, match="first layer"):
        input_invariance(gradient, mlp(), inputs((2, 4)), shift=1.0, layer="2")
    with pytest.raises(TypeError, match="ReLU"):
        input_invariance(gradient, mlp(), inputs((2, 4)), shift=1.0, layer="1")
    with pytest.raises(ValueError, match="layer must name"):
        input_invariance(gradient, mlp(), inputs((2, 4)), shift=1.0, layer="conv1")


def test_input_invariance_refuses_a_layer_that_is_not_applied_first() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()
    with pytest.raises(ValueError, match="does not reproduce the model's outputs"):
        input_invariance(gradient, model, inputs((2, 4)), shift=1.0, layer="2")
