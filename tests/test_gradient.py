"""Saliency, input x gradient and SmoothGrad against Captum, on every test architecture."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, Saliency
from models import ImageAndTabular, build

import torchattr as ta

TARGETS = torch.tensor([0, 2, 1])


def close(actual, expected, rtol=1e-5, atol=1e-10):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


def captum_saliency(model, x, target, absolute=True):
    return Saliency(model).attribute(x, target=target, abs=absolute)


def test_saliency_matches_captum_reduced_over_channels(arch):
    _name, model, x = arch
    ours = ta.saliency(model, x, TARGETS)
    theirs = captum_saliency(model, x, TARGETS)
    if x.ndim >= 3:
        theirs = theirs.amax(dim=1)
    assert ours.shape == theirs.shape
    close(ours, theirs)


@pytest.mark.parametrize("reduce", [None, "sum", "mean", "max"])
def test_saliency_reductions(reduce):
    model, x = build("conv_bn")
    full = captum_saliency(model, x, TARGETS, absolute=False)
    expected = {None: full, "sum": full.sum(1), "mean": full.mean(1), "max": full.amax(1)}[reduce]
    close(ta.saliency(model, x, TARGETS, abs=False, reduce=reduce), expected)
    expected_abs = {
        None: full.abs(),
        "sum": full.abs().sum(1),
        "mean": full.abs().mean(1),
        "max": full.abs().amax(1),
    }[reduce]
    close(ta.saliency(model, x, TARGETS, reduce=reduce), expected_abs)


def test_saliency_image_batch_shape():
    model, x = build("conv_bn")
    assert ta.saliency(model, x).shape == (3, 16, 16)
    model, x = build("mlp")
    assert ta.saliency(model, x).shape == (3, 10)  # no channel dimension: not reduced
    model, x = build("signal")
    assert ta.saliency(model, x).shape == (3, 32)


def test_input_x_gradient_matches_captum(arch):
    _, model, x = arch
    close(
        ta.input_x_gradient(model, x, TARGETS), InputXGradient(model).attribute(x, target=TARGETS)
    )


def test_default_target_is_argmax(arch):
    _, model, x = arch
    predicted = model(x).argmax(1)
    close(ta.input_x_gradient(model, x), ta.input_x_gradient(model, x, predicted))


def test_int_target_is_broadcast_to_the_batch():
    model, x = build("conv_bn")
    close(ta.saliency(model, x, 2), ta.saliency(model, x, torch.tensor([2, 2, 2])))


def test_multi_target_equals_one_call_per_class(arch):
    _, model, x = arch
    targets = torch.tensor([[0, 1], [2, 2], [1, 0]])
    multi = ta.input_x_gradient(model, x, targets)
    assert multi.shape == (x.shape[0], 2, *x.shape[1:])
    for k in range(2):
        close(multi[:, k], ta.input_x_gradient(model, x, targets[:, k]))
    sal = ta.saliency(model, x, targets)
    for k in range(2):
        close(sal[:, k], ta.saliency(model, x, targets[:, k]))


def test_callable_target_explains_a_function_of_the_output():
    model, x = build("conv_bn")

    def probability(out):
        return out.softmax(dim=1)[:, 3]

    class Probability(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).softmax(dim=1)

    expected = Saliency(Probability(model)).attribute(x, target=3, abs=False)
    close(ta.saliency(model, x, probability, abs=False, reduce=None), expected)


def test_callable_target_with_k_scores():
    model, x = build("mlp")
    both = ta.input_x_gradient(model, x, lambda out: out[:, [0, 2]])
    assert both.shape == (3, 2, 10)
    close(both[:, 1], ta.input_x_gradient(model, x, 2))


@pytest.mark.parametrize("squeeze", [True, False])
def test_single_logit_model_explains_the_logit(squeeze):
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 1).double()

    def model(x):
        out = linear(x)
        return out[:, 0] if squeeze else out

    x = torch.randn(4, 6, dtype=torch.float64)
    expected = linear.weight.detach().expand(4, 6) * x
    close(ta.input_x_gradient(model, x), expected)
    close(ta.input_x_gradient(model, x, 0), expected)
    close(ta.input_x_gradient(model, x, lambda out: -out.reshape(-1)), -expected)
    with pytest.raises(ValueError, match="single-logit"):
        ta.input_x_gradient(model, x, 1)


def test_tuple_and_dict_inputs_match_captum():
    torch.manual_seed(0)
    model = ImageAndTabular().double().eval()
    image = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    labs = torch.randn(3, 4, dtype=torch.float64)
    expected = InputXGradient(model).attribute((image, labs), target=TARGETS)
    as_tuple = ta.input_x_gradient(model, (image, labs), TARGETS)
    as_dict = ta.input_x_gradient(model, {"labs": labs, "image": image}, TARGETS)
    assert isinstance(as_tuple, tuple) and isinstance(as_dict, dict)
    assert list(as_dict) == ["labs", "image"]
    for ours in (as_tuple, (as_dict["image"], as_dict["labs"])):
        close(ours[0], expected[0])
        close(ours[1], expected[1])
    maps = ta.saliency(model, {"image": image, "labs": labs}, TARGETS)
    assert maps["image"].shape == (3, 8, 8) and maps["labs"].shape == (3, 4)


def noisy_reference(model, x, target, samples, sigma, seed):
    """Captum Saliency on the documented noise draws: randn(x.shape, generator) per sample."""
    g = torch.Generator().manual_seed(seed)
    draws = [torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(samples)]
    grads = torch.stack(
        [captum_saliency(model, x + sigma * d, target, absolute=False) for d in draws]
    )
    return grads


@pytest.mark.parametrize("kind", ["smoothgrad", "square", "var"])
def test_smoothgrad_matches_captum_with_the_noise_fixed(arch, kind):
    _, model, x = arch
    samples, level, seed = 6, 0.15, 7
    flat = x.reshape(x.shape[0], -1)
    sigma = (level * (flat.amax(1) - flat.amin(1))).reshape((-1,) + (1,) * (x.ndim - 1))
    grads = noisy_reference(model, x, TARGETS, samples, sigma, seed)
    expected = {
        "smoothgrad": grads.mean(0),
        "square": grads.square().mean(0),
        "var": grads.var(0, unbiased=False),
    }[kind]
    ours = ta.smoothgrad(
        model,
        x,
        TARGETS,
        samples=samples,
        noise=level,
        kind=kind,
        generator=torch.Generator().manual_seed(seed),
    )
    close(ours, expected, atol=1e-12)


def test_smoothgrad_sigma_and_chunking():
    model, x = build("residual")
    grads = noisy_reference(model, x, TARGETS, 5, 0.3, seed=3)
    for chunk in (None, 1, 4, 7, 15):
        ours = ta.smoothgrad(
            model,
            x,
            TARGETS,
            samples=5,
            sigma=0.3,
            chunk_size=chunk,
            generator=torch.Generator().manual_seed(3),
        )
        close(ours, grads.mean(0))


def test_smoothgrad_default_target_is_the_clean_prediction():
    model, x = build("conv_bn")
    predicted = model(x).argmax(1)
    kwargs = dict(samples=4, noise=0.5)
    a = ta.smoothgrad(model, x, generator=torch.Generator().manual_seed(0), **kwargs)
    b = ta.smoothgrad(model, x, predicted, generator=torch.Generator().manual_seed(0), **kwargs)
    close(a, b)


def test_smoothgrad_multi_target():
    model, x = build("mlp")
    targets = torch.tensor([[0, 1], [2, 0], [1, 1]])
    multi = ta.smoothgrad(model, x, targets, samples=3, generator=torch.Generator().manual_seed(1))
    assert multi.shape == (3, 2, 10)
    single = ta.smoothgrad(
        model, x, targets[:, 1], samples=3, generator=torch.Generator().manual_seed(1)
    )
    close(multi[:, 1], single)


def test_zero_noise_smoothgrad_is_the_gradient():
    model, x = build("signal")
    close(
        ta.smoothgrad(model, x, TARGETS, samples=2, noise=0.0),
        captum_saliency(model, x, TARGETS, absolute=False),
    )


def test_smoothgrad_with_several_inputs_does_not_depend_on_chunking():
    torch.manual_seed(0)
    model = ImageAndTabular().double().eval()
    batch = {
        "image": torch.randn(3, 1, 8, 8, dtype=torch.float64),
        "labs": torch.randn(3, 4, dtype=torch.float64),
    }
    results = [
        ta.smoothgrad(
            model,
            batch,
            TARGETS,
            samples=4,
            kind="var",
            chunk_size=chunk,
            generator=torch.Generator().manual_seed(5),
        )
        for chunk in (None, 1, 5, 8)
    ]
    for other in results[1:]:
        for key in batch:
            close(other[key], results[0][key], rtol=1e-10, atol=1e-14)
