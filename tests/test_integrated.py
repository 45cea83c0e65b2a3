"""Integrated Gradients: Captum as oracle for every quadrature rule, and the IG axioms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from hypothesis import given, settings
from hypothesis import strategies as st
from models import ImageAndTabular, SmoothMLP, build

import torchattr as ta
from torchattr.integrated import METHODS

TARGETS = torch.tensor([0, 2, 1])


def close(actual, expected, rtol=1e-5, atol=1e-10):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


def captum_ig(model, x, target, method, steps, baseline=None, **kwargs):
    return IntegratedGradients(model).attribute(
        x, baselines=baseline, target=target, n_steps=steps, method=method, **kwargs
    )


@pytest.mark.parametrize("method", METHODS)
def test_matches_captum(arch, method):
    _, model, x = arch
    steps = 12
    ours = ta.integrated_gradients(model, x, target=TARGETS, steps=steps, method=method)
    theirs = captum_ig(model, x, TARGETS, method, steps)
    if method == "riemann_trapezoid":
        # Captum's trapezoid weights sum to (n - 1) / n: its attributions are ours times that.
        theirs = theirs * steps / (steps - 1)
    # Captum builds Riemann nodes with float32 linspace: relative node error ~1e-7.
    rtol = 1e-5 if method == "gausslegendre" else 2e-5
    close(ours, theirs, rtol=rtol, atol=1e-9)


def test_matches_captum_with_baseline_and_delta():
    model, x = build("conv_bn")
    baseline = torch.full_like(x, 0.25)
    ours, delta = ta.integrated_gradients(
        model, x, baseline=baseline, target=TARGETS, steps=20, return_delta=True
    )
    theirs, their_delta = captum_ig(
        model, x, TARGETS, "gausslegendre", 20, baseline, return_convergence_delta=True
    )
    close(ours, theirs)
    close(delta, their_delta, rtol=1e-4, atol=1e-9)


def test_tuple_and_dict_inputs_with_per_input_baselines():
    torch.manual_seed(0)
    model = ImageAndTabular().double().eval()
    image = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    labs = torch.randn(3, 4, dtype=torch.float64)
    lab_baseline = torch.full((1, 4), 0.01, dtype=torch.float64)
    expected = captum_ig(
        model,
        (image, labs),
        TARGETS,
        "gausslegendre",
        10,
        (torch.zeros_like(image), lab_baseline.expand(3, 4)),
    )
    as_tuple = ta.integrated_gradients(
        model, (image, labs), baseline=(None, lab_baseline), target=TARGETS, steps=10
    )
    as_dict = ta.integrated_gradients(
        model,
        {"image": image, "labs": labs},
        baseline={"labs": lab_baseline},
        target=TARGETS,
        steps=10,
    )
    for ours in (as_tuple, (as_dict["image"], as_dict["labs"])):
        close(ours[0], expected[0])
        close(ours[1], expected[1])


def test_quadrature_rules_are_exact():
    t, v = np.polynomial.legendre.leggauss(50)
    nodes, weights = ta.quadrature("gausslegendre", 50)
    np.testing.assert_allclose(nodes.numpy(), (1 + t) / 2, atol=1e-14)
    np.testing.assert_allclose(weights.numpy(), v / 2, atol=1e-14)
    n = 4
    expected = {
        "riemann_left": [0, 0.25, 0.5, 0.75],
        "riemann_right": [0.25, 0.5, 0.75, 1.0],
        "riemann_middle": [0.125, 0.375, 0.625, 0.875],
        "riemann_trapezoid": [0, 1 / 3, 2 / 3, 1.0],
    }
    for method, alphas in expected.items():
        nodes, weights = ta.quadrature(method, n)
        np.testing.assert_allclose(nodes.numpy(), alphas, atol=1e-15)
        assert math.isclose(weights.sum().item(), 1.0, rel_tol=1e-14)
    _, trapezoid = ta.quadrature("riemann_trapezoid", n)
    np.testing.assert_allclose(trapezoid.numpy(), [1 / 6, 1 / 3, 1 / 3, 1 / 6], atol=1e-15)
    # Gauss-Legendre with n points integrates polynomials of degree 2n - 1 exactly.
    nodes, weights = ta.quadrature("gausslegendre", 3)
    assert math.isclose((weights * nodes**5).sum().item(), 1 / 6, rel_tol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_completeness_delta_shrinks_with_steps(method):
    model, x = build("mlp")
    deltas = []
    for steps in (2, 8, 32):
        _, delta = ta.integrated_gradients(
            model, x, target=TARGETS, steps=steps, method=method, return_delta=True
        )
        deltas.append(delta.abs().max().item())
    assert deltas[1] < deltas[0]
    assert deltas[2] < deltas[1] or deltas[2] < 1e-13  # Gauss-Legendre reaches rounding level
    assert deltas[2] < (1e-12 if method == "gausslegendre" else 5e-3)


def test_completeness_is_exact_for_a_linear_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(7, 3).double()
    x = torch.randn(5, 7, dtype=torch.float64)
    attributions, delta = ta.integrated_gradients(
        model, x, baseline=-1.0, target=1, steps=3, return_delta=True
    )
    assert delta.abs().max() < 1e-12
    close(attributions, model.weight[1].detach() * (x + 1))


def test_delta_for_multi_target():
    model, x = build("mlp")
    targets = torch.tensor([[0, 1], [2, 0], [1, 2]])
    attributions, delta = ta.integrated_gradients(
        model, x, target=targets, steps=10, return_delta=True
    )
    assert attributions.shape == (3, 2, 10) and delta.shape == (3, 2)
    for k in range(2):
        single, single_delta = ta.integrated_gradients(
            model, x, target=targets[:, k], steps=10, return_delta=True
        )
        close(attributions[:, k], single)
        close(delta[:, k], single_delta, atol=1e-12)


def test_linearity():
    torch.manual_seed(0)
    f, g = SmoothMLP().double().eval(), SmoothMLP().double().eval()
    x = torch.randn(4, 10, dtype=torch.float64)

    def combined(x):
        return 2.0 * f(x) - 0.5 * g(x)

    ig = ta.integrated_gradients
    close(
        ig(combined, x, target=1, steps=8),
        2.0 * ig(f, x, target=1, steps=8) - 0.5 * ig(g, x, target=1, steps=8),
    )


def test_implementation_invariance():
    """A conv + BatchNorm net and the same net with BatchNorm folded in: equal attributions."""
    model, x = build("conv_bn")
    folded = build("conv_bn")[0]
    for seq in (folded.features,):
        for i in (0, 4):
            conv, bn = seq[i], seq[i + 1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            with torch.no_grad():
                conv.weight.mul_(scale[:, None, None, None])
                conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
            seq[i + 1] = torch.nn.Identity()
    close(folded(x), model(x), rtol=1e-10, atol=1e-12)
    close(
        ta.integrated_gradients(folded, x, target=TARGETS, steps=8),
        ta.integrated_gradients(model, x, target=TARGETS, steps=8),
        rtol=1e-8,
        atol=1e-12,
    )


def test_sensitivity():
    """Inputs that differ from the baseline in one feature, with different outputs: non-zero IG."""
    model, _ = build("mlp")
    x = torch.zeros(1, 10, dtype=torch.float64)
    x[0, 4] = 1.5
    assert not torch.allclose(model(x), model(torch.zeros_like(x)))
    attributions = ta.integrated_gradients(model, x, target=0, steps=16)
    assert attributions[0, 4].abs() > 0
    assert torch.all(attributions[0, torch.arange(10) != 4] == 0)


@settings(max_examples=15, deadline=None)
@given(chunk=st.one_of(st.none(), st.integers(1, 40)), steps=st.integers(1, 9))
def test_chunking_does_not_change_the_result(chunk, steps):
    model, x = build("residual")
    whole = ta.integrated_gradients(model, x, target=TARGETS, steps=steps)
    chunked = ta.integrated_gradients(model, x, target=TARGETS, steps=steps, chunk_size=chunk)
    close(chunked, whole, rtol=1e-10, atol=1e-13)


def test_chunking_multi_target_and_delta():
    model, x = build("signal")
    targets = torch.tensor([[0, 1], [2, 0], [1, 2]])
    whole, d1 = ta.integrated_gradients(model, x, target=targets, steps=7, return_delta=True)
    chunked, d2 = ta.integrated_gradients(
        model, x, target=targets, steps=7, chunk_size=5, return_delta=True
    )
    close(chunked, whole, rtol=1e-10, atol=1e-13)
    close(d2, d1, rtol=1e-10, atol=1e-13)


def test_default_target_is_the_prediction_at_the_input():
    model, x = build("conv_bn")
    predicted = model(x).argmax(1)
    close(
        ta.integrated_gradients(model, x, steps=6),
        ta.integrated_gradients(model, x, target=predicted, steps=6),
    )


def test_baseline_forms():
    model, x = build("conv_bn")
    scalar = ta.integrated_gradients(model, x, baseline=0.5, target=TARGETS, steps=5)
    tensor = ta.integrated_gradients(
        model, x, baseline=torch.full_like(x, 0.5), target=TARGETS, steps=5
    )
    per_channel = ta.integrated_gradients(
        model,
        x,
        baseline=torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)[:, None, None],
        target=TARGETS,
        steps=5,
    )
    close(scalar, tensor)
    close(per_channel, tensor)


def test_low_precision_inputs_accumulate_in_float32():
    torch.manual_seed(0)
    model = SmoothMLP().to(torch.bfloat16).eval()
    x = torch.randn(3, 10).to(torch.bfloat16)
    attributions, delta = ta.integrated_gradients(
        model, x, target=TARGETS, steps=8, return_delta=True
    )
    assert attributions.dtype == torch.float32 and delta.dtype == torch.float32
    reference = ta.integrated_gradients(model.float(), x.float(), target=TARGETS, steps=8)
    close(attributions, reference, rtol=0.1, atol=0.02)
