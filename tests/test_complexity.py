"""Tests of torchattr.metrics.complexity: hand-computed Gini indices and entropies."""

from __future__ import annotations

import math

import pytest
import torch

from torchattr.metrics import complexity, sparseness


def gini_reference(values: list[float]) -> float:
    """Gini as the mean absolute difference over twice the mean: sum_ij |a_i - a_j| / (2 F^2 m)."""
    a = [abs(v) for v in values]
    n = len(a)
    mean = sum(a) / n
    return sum(abs(x - y) for x in a for y in a) / (2 * n * n * mean)


def test_sparseness_hand_computed() -> None:
    phi = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0], [-1.0, 2.0, 0.0, 3.0]])
    got = sparseness(phi)
    # uniform: 0; one feature: (F - 1) / F; [0, 1, 2, 3]: sum (2i - 5) a_(i) / (4 * 6) = 10 / 24
    assert got.tolist() == pytest.approx([0.0, 0.75, 10 / 24])
    assert got[2].item() == pytest.approx(gini_reference([-1.0, 2.0, 0.0, 3.0]))


def test_sparseness_matches_pairwise_definition_on_random_maps() -> None:
    phi = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = sparseness(phi)
    assert got.dtype == torch.float64 and got.shape == (3,)
    for b in range(3):
        assert got[b].item() == pytest.approx(gini_reference(phi[b].flatten().tolist()))


def test_complexity_hand_computed() -> None:
    phi = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, -5.0], [1.0, -1.0, 2.0, 0.0]])
    got = complexity(phi)
    # p = [1/4, 1/4, 1/2, 0]: -(2 * 1/4 log 1/4 + 1/2 log 1/2) = 1.5 log 2
    assert got.tolist() == pytest.approx([math.log(4), 0.0, 1.5 * math.log(2)])


def test_all_zero_attributions_are_nan_not_zero() -> None:
    phi = torch.zeros(2, 6)
    phi[1, 2] = 1.0
    assert torch.isnan(sparseness(phi)[0]) and sparseness(phi)[1] == pytest.approx(5 / 6)
    assert torch.isnan(complexity(phi)[0]) and complexity(phi)[1] == 0


def test_tuple_and_dict_attributions_concatenate_features() -> None:
    a, b = torch.rand(2, 3, 4), torch.rand(2, 5)
    joined = torch.cat([a.flatten(1), b], dim=1)
    for fn in (sparseness, complexity):
        assert torch.allclose(fn((a, b)), fn(joined))
        assert torch.allclose(fn({"codes": a, "labs": b}), fn(joined))


def test_scale_invariance_and_order_invariance() -> None:
    phi = torch.rand(3, 10, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    for fn in (sparseness, complexity):
        assert torch.allclose(fn(3 * phi), fn(phi), atol=1e-6)
        assert torch.allclose(fn(phi[:, perm]), fn(phi), atol=1e-6)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(TypeError, match="attributions"):
        sparseness([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating point"):
        complexity(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"NaN|finite|inf"):
        sparseness(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"\[B, \.\.\.\]"):
        complexity(torch.ones(3))
    with pytest.raises(ValueError, match="samples"):
        sparseness((torch.ones(2, 3), torch.ones(3, 3)))
