"""Error-controlled Integrated Gradients (``steps="auto"``): exactness, refinement, reporting.

Oracles: closed-form IG of polynomials along the path, fixed-step Gauss-Legendre IG at many
steps, and independent forwards for the scores; all in float64.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from models import RowCounter, SmoothMLP
from torch import Tensor, nn

import torchattr as ta
from torchattr.integrated import Convergence, NotConvergedWarning, max_level, nested_rule

torch.manual_seed(0)


class Power(nn.Module):
    """``s(x) = (w . x + c)^p`` plus ``(x_0)^q``: one logit ``[B, 1]``."""

    def __init__(self, dim: int, p: int, c: float = 0.5, q: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, dtype=torch.float64))
        self.p, self.c, self.q = p, c, q

    def forward(self, x: Tensor) -> Tensor:
        s = (x @ self.w + self.c) ** self.p
        if self.q:
            s = s + x[:, 0] ** self.q
        return s[:, None]


def power_ig(model: Power, x: Tensor) -> Tensor:
    """Closed form of IG from the zero baseline for ``(w . x + c)^p``:
    ``x_i w_i ((u + c)^p - c^p) / u`` with ``u = w . x``."""
    u = x @ model.w
    return x * model.w * (((u + model.c) ** model.p - model.c**model.p) / u)[:, None]


def test_nested_rule_is_nested_positive_and_exact_to_its_degree():
    for level in range(5):
        nodes, weights = nested_rule(level)
        n = 2 ** (level + 1) - 1
        assert nodes.shape == weights.shape == (n,)
        assert torch.all(weights > 0) and math.isclose(weights.sum().item(), 1, rel_tol=1e-14)
        if level:
            previous, _ = nested_rule(level - 1)
            torch.testing.assert_close(nodes[: len(previous)], previous, rtol=0, atol=0)
        # exact for a^n (so for every polynomial of degree <= n), not for a^(n + 1)
        assert math.isclose((weights * nodes**n).sum().item(), 1 / (n + 1), rel_tol=1e-12)
        if level <= 2:  # the gap shrinks like 4^-n: visible in float64 up to 7 nodes
            assert abs((weights * nodes ** (n + 1)).sum().item() - 1 / (n + 2)) > 1e-8
    # against numpy: Fejer's second rule on 3 interior Chebyshev points of [-1, 1]
    nodes, weights = nested_rule(1)
    t = np.cos(np.pi * np.array([1, 2, 3]) / 4)
    vander = np.vander(t, 3, increasing=True).T
    moments = np.array([2.0, 0.0, 2 / 3])
    expected = np.linalg.solve(vander, moments) / 2
    order = np.argsort(-t)  # nodes (1 + t) / 2 in nesting order: t = 0, then the ends
    np.testing.assert_allclose(
        np.sort(nodes.numpy()), np.sort((1 + t[order]) / 2), rtol=0, atol=1e-15
    )
    np.testing.assert_allclose(
        weights.numpy()[np.argsort(nodes.numpy())], expected[np.argsort((1 + t) / 2)], atol=1e-15
    )
    assert [max_level(m) for m in (1, 2, 3, 6, 7, 255, 256)] == [0, 0, 1, 1, 2, 7, 7]


@pytest.mark.parametrize(("p", "points"), [(2, 1), (4, 3), (8, 7), (16, 15)])
def test_polynomials_along_the_path_are_exact_at_the_right_level(p, points):
    # f(a) = d s / d a has degree p - 1; level L's 2^(L+1) - 1 nodes integrate degree <= that.
    # Seeded: for some draws a coarser level meets 1e-11 by chance (a tiny top coefficient).
    torch.manual_seed(0)
    model = Power(5, p).eval()
    x = 0.3 * torch.randn(4, 5, dtype=torch.float64)
    attributions, report = ta.integrated_gradients(
        model, x, steps="auto", tolerance=1e-11, return_delta=True
    )
    assert isinstance(report, Convergence)
    assert report.points.tolist() == [points] * 4
    assert report.converged.all() and (report.error <= 1e-11).all()
    torch.testing.assert_close(attributions, power_ig(model, x), rtol=1e-10, atol=1e-13)


def test_refinement_skips_converged_samples():
    # Sample 0 has x_0 = 0: s is linear along its path, the midpoint is exact. The others carry
    # (a x_0)^8, degree 7 in f: exact at level 2 (7 points), not before.
    model = RowCounter(Power(4, 1, c=0.0, q=8)).eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    x[:, 0] = torch.tensor([0.0, 1.0, -1.0, 0.8, 1.2])
    _, report = ta.integrated_gradients(
        model, x, steps="auto", tolerance=1e-10, return_delta=True, chunk_size=4
    )
    assert report.points.tolist() == [1, 7, 7, 7, 7]
    assert report.level.tolist() == [0, 2, 2, 2, 2]
    # forwards: the ends (2 x 5 rows) and the path points of each sample, nothing more
    assert model.rows == 2 * 5 + report.points.sum().item()


def test_agrees_with_fixed_steps_and_reports_the_delta_it_achieves():
    torch.manual_seed(1)
    model = SmoothMLP().double().eval()
    x = torch.randn(6, 10, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    auto, report = ta.integrated_gradients(
        model, x, target, steps="auto", tolerance=1e-9, return_delta=True
    )
    fixed = ta.integrated_gradients(model, x, target, steps=256)
    torch.testing.assert_close(auto, fixed, rtol=1e-6, atol=1e-9)
    # the reported delta is the completeness gap of the returned attributions
    with torch.no_grad():
        change = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(report.delta, auto.sum(1) - change, rtol=0, atol=1e-12)
    torch.testing.assert_close(report.error, report.delta.abs() / change.abs())
    assert report.converged.all() and report.tolerance == 1e-9
    # looser tolerance: fewer points, still within it
    _, loose = ta.integrated_gradients(model, x, target, steps="auto", return_delta=True)
    assert (loose.error <= 0.01).all() and (loose.points <= report.points).all()


def test_relu_kink_converges_and_reports_its_error():
    # s = relu(u - theta) along a -> a u: f(a) = u [a u > theta], a step (integral u - theta).
    w = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)

    class Kink(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(x @ w - 0.7)[:, None]

    model = Kink().eval()
    x = torch.tensor([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1]], dtype=torch.float64)
    change = torch.relu(x @ w - 0.7)
    attributions, report = ta.integrated_gradients(
        model, x, steps="auto", tolerance=0.02, return_delta=True
    )
    assert report.converged.all() and (report.error <= 0.02).all()
    assert (report.points > 1).all()  # the midpoint alone does not resolve the step
    torch.testing.assert_close(report.delta, attributions.sum(1) - change, rtol=0, atol=1e-12)
    # a tolerance the step cannot reach within max_steps: reported and warned, never passed
    with pytest.warns(NotConvergedWarning, match=r"samples did not reach.*sample \(error\): 0 "):
        attributions, report = ta.integrated_gradients(
            model, x, steps="auto", tolerance=1e-9, max_steps=31, return_delta=True
        )
    assert not report.converged.any() and (report.points == 31).all()
    assert (report.error > 1e-9).all()
    torch.testing.assert_close(report.error, (attributions.sum(1) - change).abs() / change)


def test_chunk_size_and_auto_chunks_do_not_change_the_result():
    model = SmoothMLP().double().eval()
    x = torch.randn(5, 10, dtype=torch.float64)
    runs = [
        ta.integrated_gradients(model, x, 1, steps="auto", tolerance=1e-6, chunk_size=c)
        for c in (None, 3, "auto")
    ]
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], rtol=1e-12, atol=1e-14)


class Codes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.codes = nn.Embedding(20, 6, padding_idx=0)
        self.labs = nn.Linear(3, 6)
        self.head = nn.Linear(12, 3)

    def forward(self, codes: Tensor, labs: Tensor, scale: Tensor | None = None) -> Tensor:
        bag = torch.tanh(self.codes(codes)).sum(1)
        out = self.head(torch.cat([bag, torch.tanh(self.labs(labs))], 1))
        return out if scale is None else out * scale[:, None]


def test_embeddings_masks_dicts_forward_kwargs_and_k_targets():
    torch.manual_seed(2)
    model = Codes().double().eval()
    batch = {
        "codes": torch.tensor([[3, 5, 7, 0], [9, 4, 0, 0], [2, 2, 8, 11]]),
        "labs": torch.randn(3, 3, dtype=torch.float64),
    }
    kwargs = {"scale": torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)}
    common = dict(
        baseline={"codes": 1, "labs": 0.1},
        layer={"codes": model.codes},
        mask={"codes": 0},
        forward_kwargs=kwargs,
    )
    for target in (torch.tensor([0, 2, 1]), torch.tensor([[0, 1], [2, 0], [1, 2]])):
        auto, report = ta.integrated_gradients(
            model, batch, target, steps="auto", tolerance=1e-8, return_delta=True, **common
        )
        fixed = ta.integrated_gradients(model, batch, target, steps=128, **common)
        for key in batch:
            torch.testing.assert_close(auto[key], fixed[key], rtol=1e-6, atol=1e-9)
        assert report.error.shape == target.shape and report.points.shape == (3,)
        assert report.converged.all()
        codes = auto["codes"] if target.ndim == 1 else auto["codes"].movedim(1, -1)
        assert torch.all(codes[batch["codes"] == 0] == 0)


def test_bad_arguments_are_refused():
    model = SmoothMLP().double().eval()
    x = torch.randn(2, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="positive int or 'auto'"):
        ta.integrated_gradients(model, x, steps="fast")
    with pytest.raises(ValueError, match="steps='auto' only"):
        ta.integrated_gradients(model, x, steps=8, tolerance=0.01)
    with pytest.raises(ValueError, match="tolerance"):
        ta.integrated_gradients(model, x, steps="auto", tolerance=0)
    with pytest.raises(ValueError, match="tolerance"):
        ta.integrated_gradients(model, x, steps="auto", tolerance=math.nan)
    with pytest.raises(ValueError, match="max_steps"):
        ta.integrated_gradients(model, x, steps="auto", max_steps=0)
    with pytest.raises(ValueError, match="does not apply to steps='auto'"):
        ta.integrated_gradients(model, x, steps="auto", method="riemann_left")


def test_nan_is_reported_not_converged():
    class NaNPath(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            s = x.sum(1)
            return torch.where(s > 0.25, torch.full_like(s, math.nan), s)[:, None] + 0 * x[:, :1]

    x = torch.tensor([[0.1, 0.1], [0.5, 0.5]], dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attributions, report = ta.integrated_gradients(
            NaNPath(), x, steps="auto", max_steps=7, return_delta=True
        )
    assert report.converged.tolist() == [True, False]
    assert math.isnan(report.error[1].item()) and report.points[1] == 7
    assert torch.isfinite(attributions[0]).all()
    assert any(issubclass(w.category, NotConvergedWarning) for w in caught)
