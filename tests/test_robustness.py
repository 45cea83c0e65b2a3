"""Tests of torchattr.metrics.robustness on linear models, where the answers are known."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

import torchattr as ta
from torchattr.metrics import faithfulness_correlation, infidelity, max_sensitivity


class Linear(nn.Module):
    """``f(x) = W x.flatten() + c``: logits ``[N, 3]``; the gradient of class t is ``W[t]``."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0, dtype=torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        numel = torch.Size(shape).numel()
        self.shape = shape
        self.weight = nn.Parameter(torch.randn(3, numel, generator=g, dtype=dtype))
        self.bias = nn.Parameter(torch.randn(3, generator=g, dtype=dtype))
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T + self.bias

    def gradient(self, t: int) -> Tensor:
        return self.weight[t].detach().reshape(self.shape)


def inputs(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------
# Max-sensitivity
# ------------------------------------------------------------------------------------------


def test_gradient_of_a_linear_model_does_not_move() -> None:
    model = Linear((2, 5, 5))
    x = inputs((3, 2, 5, 5))
    explain = functools.partial(ta.saliency, model, abs=False, reduce=None)
    sens = max_sensitivity(explain, x, target=2, radius=0.1, samples=5)
    assert sens.shape == (3,) and sens.dtype == torch.float64
    torch.testing.assert_close(sens, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_input_x_gradient_sensitivity_in_closed_form() -> None:
    # Phi(x) = w * x, so Phi(x + d) - Phi(x) = w * d: SENS = max_s ||w * d_s|| / ||w * x||,
    # d_s = r (2 U_s - 1) with U_s the s-th rand([B, ...]) draw of the generator.
    model = Linear((4, 6))
    x = inputs((5, 4, 6))
    r, samples = 0.05, 7
    explain = functools.partial(ta.input_x_gradient, model)
    sens = max_sensitivity(
        explain, x, target=1, radius=r, samples=samples, generator=torch.Generator().manual_seed(9)
    )
    g = torch.Generator().manual_seed(9)
    w = model.gradient(1)
    moves = torch.stack(
        [
            (w * r * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1))
            .flatten(1)
            .norm(dim=1)
            for _ in range(samples)
        ]
    )
    expected = moves.amax(dim=0) / (w * x).flatten(1).norm(dim=1)
    torch.testing.assert_close(sens, expected)
    bound = r * w.norm() / (w * x).flatten(1).norm(dim=1)  # sup over the whole ball
    assert bool((sens <= bound).all())


def test_sensitivity_approaches_the_supremum_in_one_dimension() -> None:
    x = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    sens = max_sensitivity(
        lambda v, t: 3.0 * v,
        x,
        radius=0.1,
        samples=2000,
        generator=torch.Generator().manual_seed(0),
    )
    sup = 0.1 / x[:, 0]
    assert bool((sens <= sup).all()) and bool((sens >= 0.995 * sup).all())


def test_sensitivity_targets_batching_and_zero_explanations() -> None:
    x = inputs((4, 3))
    seen = []

    def explain(v: Tensor, t: Tensor) -> Tensor:
        assert isinstance(t, Tensor) and t.shape == (v.shape[0],)
        seen.append(t.clone())
        return v * (t[:, None] + 1)

    target = torch.tensor([0, 1, 2, 0])
    a = max_sensitivity(
        explain, x, target=target, samples=3, generator=torch.Generator().manual_seed(0)
    )
    b = max_sensitivity(
        explain,
        x,
        target=target,
        samples=3,
        chunk_size=5,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(a, b)
    assert torch.equal(seen[1], target)  # the first perturbed copy holds every sample in order
    zero = max_sensitivity(lambda v, t: torch.zeros_like(v), x)
    assert zero.tolist() == [0.0] * 4
    moving = max_sensitivity(lambda v, t: v - x[: len(v)] if len(v) == 4 else v, x)
    assert bool(torch.isinf(moving).all())


CLEAN = torch.rand(2, 3)


@pytest.mark.parametrize(
    ("explain", "kwargs", "error", "match"),
    [
        ("not callable", {}, TypeError, "explain"),
        (lambda v, t: v, {"radius": 0.0}, ValueError, "radius"),
        (lambda v, t: v, {"radius": float("nan")}, TypeError, "radius"),
        (lambda v, t: v, {"samples": 0}, ValueError, "samples"),
        (lambda v, t: v[:1], {}, ValueError, "explain returned"),
        (
            lambda v, t: v * 0 if bool((v == CLEAN).all()) else v[:, :1],
            {},
            ValueError,
            "keep their",
        ),
    ],
)
def test_sensitivity_bad_input(explain, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        max_sensitivity(explain, CLEAN, **kwargs)


# ------------------------------------------------------------------------------------------
# Infidelity
# ------------------------------------------------------------------------------------------


def test_gradient_of_a_linear_model_has_zero_infidelity() -> None:
    model = Linear((2, 4, 4))
    x = inputs((3, 2, 4, 4))
    grad = ta.saliency(model, x, 0, abs=False, reduce=None)
    infd = infidelity(model, x, grad, 0, samples=6, generator=torch.Generator().manual_seed(0))
    assert infd.shape == (3,) and infd.dtype == torch.float64
    torch.testing.assert_close(infd, torch.zeros(3, dtype=torch.float64), atol=1e-20, rtol=0)


def test_infidelity_closed_form() -> None:
    model = Linear((2, 3))
    x = inputs((4, 2, 3))
    w = model.gradient(2)
    doubled = 2 * w.expand_as(x)
    # a fixed perturbation I = 0.5: (sum(2 w * 0.5) - sum(w * 0.5))^2 = (0.5 sum w)^2
    fixed = infidelity(model, x, doubled, 2, perturbation=lambda v, g: torch.full_like(v, 0.5))
    torch.testing.assert_close(fixed, (0.5 * w.sum()).square().expand(4))
    # Gaussian I_s = 0.2 N(0, 1): mean_s (sum(w * I_s))^2, from the same draws
    infd = infidelity(
        model, x, doubled, 2, samples=5, sigma=0.2, generator=torch.Generator().manual_seed(3)
    )
    g = torch.Generator().manual_seed(3)
    draws = torch.stack([0.2 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(5)])
    torch.testing.assert_close(infd, (draws * w).flatten(2).sum(-1).square().mean(0))
    # normalize=True rescales 2 w back to w: infidelity 0
    normalized = infidelity(
        model, x, doubled, 2, normalize=True, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(normalized, torch.zeros(4, dtype=torch.float64), atol=1e-20, rtol=0)


def test_infidelity_of_maps_shared_by_the_channels() -> None:
    # A model whose weight is the same for every channel: the map [B, H, W] is the gradient.
    v = torch.randn(5, 5, dtype=torch.float64)

    def model(x: Tensor) -> Tensor:
        return (x * v).flatten(1).sum(1)  # one logit

    x = inputs((2, 3, 5, 5))
    infd = infidelity(model, x, v.expand(2, 5, 5), samples=4)
    torch.testing.assert_close(infd, torch.zeros(2, dtype=torch.float64), atol=1e-20, rtol=0)


def test_infidelity_batch_size_and_probability_scores() -> None:
    model = Linear((6,))
    x = inputs((5, 6))
    phi = torch.rand(5, 6, dtype=torch.float64)
    a = infidelity(
        model, x, phi, samples=3, chunk_size=4, generator=torch.Generator().manual_seed(1)
    )
    b = infidelity(model, x, phi, samples=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    p = infidelity(
        model, x, phi, samples=3, score="softmax", generator=torch.Generator().manual_seed(1)
    )
    assert bool((p >= 0).all()) and not torch.equal(p, a)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attributions": torch.rand(2, 5)}, ValueError, "attributions has shape"),
        ({"attributions": torch.ones(2, 6, dtype=torch.long)}, TypeError, "attributions"),
        ({"perturbation": lambda v, g: v[:1]}, ValueError, "perturbation returned"),
        ({"perturbation": 0.1}, TypeError, "perturbation"),
        ({"sigma": -1.0}, ValueError, "sigma"),
        ({"samples": 0}, ValueError, "samples"),
        ({"score": "probit"}, ValueError, "score"),
        ({"target": 7}, ValueError, "out of range"),
    ],
)
def test_infidelity_bad_input(kwargs, error, match) -> None:
    args = {"attributions": torch.rand(2, 6, dtype=torch.float64)}
    args.update(kwargs)
    attributions = args.pop("attributions")
    with pytest.raises(error, match=match):
        infidelity(Linear((6,)), inputs((2, 6)), attributions, **args)


# ------------------------------------------------------------------------------------------
# Faithfulness correlation
# ------------------------------------------------------------------------------------------


def test_input_x_gradient_of_a_linear_model_correlates_perfectly() -> None:
    model = Linear((3, 6, 6))
    x = inputs((4, 3, 6, 6))
    ixg = ta.input_x_gradient(model, x, 1)
    g = torch.Generator().manual_seed(0)
    mu = faithfulness_correlation(model, x, ixg, 1, subset_size=20, runs=30, generator=g)
    assert mu.shape == (4,) and mu.dtype == torch.float64
    torch.testing.assert_close(mu, torch.ones(4, dtype=torch.float64))
    # pixel features: the channel-summed map is exactly as faithful
    maps = faithfulness_correlation(model, x, ixg.sum(1), 1, subset_size=5, runs=30)
    torch.testing.assert_close(maps, torch.ones(4, dtype=torch.float64))
    flipped = faithfulness_correlation(model, x, -ixg, 1, runs=30)
    torch.testing.assert_close(flipped, -torch.ones(4, dtype=torch.float64))


def test_faithfulness_with_a_baseline_and_target_none() -> None:
    model = Linear((8,))
    x = inputs((3, 8))
    baseline = torch.full((8,), 0.3, dtype=torch.float64)
    predicted = model(x).argmax(1)
    phi = (x - baseline) * model.weight[predicted].detach()  # IG of a linear model
    mu = faithfulness_correlation(model, x, phi, baseline=baseline, subset_size=3, runs=25)
    torch.testing.assert_close(mu, torch.ones(3, dtype=torch.float64))


def test_subsets_have_the_requested_size_and_batch_size_changes_nothing() -> None:
    counts = []

    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.eval()

        def forward(self, x: Tensor) -> Tensor:
            counts.append((x == 0).flatten(1).sum(1))
            return x.flatten(1).sum(1, keepdim=True) * torch.arange(1.0, 3.0, dtype=x.dtype)

    x = inputs((3, 2, 4, 5)) + 0.1  # no zeros
    phi = torch.rand(3, 4, 5, dtype=torch.float64)  # pixel features: a pixel = 2 values
    a = faithfulness_correlation(
        Counter(), x, phi, subset_size=6, runs=4, generator=torch.Generator().manual_seed(2)
    )
    clean, perturbed = counts[0], torch.cat(counts[1:])
    assert clean.tolist() == [0, 0, 0] and perturbed.tolist() == [12] * 12
    b = faithfulness_correlation(
        Counter(),
        x,
        phi,
        subset_size=6,
        runs=4,
        chunk_size=5,
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(a, b)


def test_constant_attributions_give_nan() -> None:
    model = Linear((5,))
    mu = faithfulness_correlation(
        model, inputs((2, 5)), torch.ones(2, 5, dtype=torch.float64), runs=5
    )
    assert bool(torch.isnan(mu).all())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"runs": 1}, ValueError, "runs"),
        ({"subset_size": 0}, ValueError, "subset_size"),
        ({"subset_size": 7}, ValueError, "subset_size"),
        ({"baseline": torch.zeros(4)}, ValueError, "baseline"),
        ({"baseline": "zero"}, TypeError, "baseline"),
        ({"attributions": torch.rand(3, 6)}, ValueError, "attributions"),
        ({"inputs": torch.rand(2, 6).long()}, TypeError, "inputs"),
        ({"target": torch.zeros(2, 2, dtype=torch.long)}, ValueError, "one class"),
    ],
)
def test_faithfulness_bad_input(kwargs, error, match) -> None:
    args = {"attributions": torch.rand(2, 6, dtype=torch.float64), "inputs": inputs((2, 6))}
    args.update(kwargs)
    attributions, x = args.pop("attributions"), args.pop("inputs")
    with pytest.raises(error, match=match):
        faithfulness_correlation(Linear((6,)), x, attributions, **args)


def test_models_are_left_untouched() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(5, 6)
    with pytest.warns(UserWarning, match="training mode"):
        infidelity(model, x, torch.rand(5, 6), samples=2)
    with pytest.warns(UserWarning, match="training mode"):
        faithfulness_correlation(model, x, torch.rand(5, 6), runs=3)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
