"""Every method gives the same result inside ``torch.inference_mode()``, inside
``torch.no_grad()`` and for inputs created in inference mode as in a plain context (gradient CAM
methods used to return all-zero maps under inference mode), and leaves the caller's modes."""

from __future__ import annotations

import pytest
import torch
from method_calls import BAG, CALLS, CNN, assert_same, hooks_left, inputs_of, tensors_of
from model_state import assert_unchanged, snapshot
from models import build

import torchattr as ta

CONTEXTS = ("inference_mode", "no_grad", "inference_inputs")


def _call_in(context: str, call, x):
    if context == "inference_mode":
        with torch.inference_mode():
            return call(x)
    if context == "no_grad":
        with torch.no_grad():
            return call(x)
    with torch.inference_mode():
        x = x.clone()  # an inference tensor
    assert x.is_inference()
    if context == "inference_inputs_no_grad":
        with torch.no_grad():
            return call(x)
    return call(x)


@pytest.fixture(scope="module")
def references():
    """Each method's result in a plain context (computed once, lazily)."""
    cache = {}

    def get(name):
        if name not in cache:
            kind, call = CALLS[name]
            cache[name] = call(inputs_of(kind))
        return cache[name]

    return get


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_same_result_in_every_grad_context(name, context, references):
    kind, call = CALLS[name]
    expected = references(name)
    if name != "cam_randomcam":  # a real explanation is never all zero on these models
        assert any(bool(t.ne(0).any()) for t in tensors_of(expected))
    models = [CNN, BAG]
    before = [snapshot(m) for m in models]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    result = _call_in(context, call, inputs_of(kind))
    assert (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) == (grad, inference)
    assert_same(result, expected)
    for model, state in zip(models, before):
        assert_unchanged(model, state)
    assert not hooks_left(*models)


def test_modes_restored_inside_inference_mode():
    model, x = build("conv_bn")
    with torch.inference_mode():
        ta.cam(model, x, layer="features.4")
        assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
    with torch.no_grad():
        ta.saliency(model, x)
        assert not torch.is_grad_enabled()


def test_results_of_inference_inputs_are_normal_tensors():
    model, x = build("conv_bn")
    with torch.inference_mode():
        x = x.clone()
    out = ta.integrated_gradients(model, x, target=0, steps=3)
    assert not out.is_inference() and not out.requires_grad
    out.add_(1)  # a normal tensor: writable outside inference mode


def test_model_built_in_inference_mode_is_refused_by_name_for_a_backward():
    with torch.inference_mode():
        model, x = build("conv_bn")
    with pytest.raises(ValueError, match=r"inference_mode\(\).*'features\.0\.weight'"):
        ta.cam(model, x, layer="features.4")
    with pytest.raises(ValueError, match="inference_mode"):
        ta.cam(model, x, layer=None, method="fullgrad")
    # methods without a backward run, and equal those on a normal copy of the model
    normal, _ = build("conv_bn")
    torch.testing.assert_close(
        ta.cam(model, x, layer="features.4", method="scorecam"),
        ta.cam(normal, x, layer="features.4", method="scorecam"),
        rtol=0,
        atol=0,
    )
