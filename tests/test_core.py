"""Shared plumbing: bad input gets a clear error; the model is left exactly as it was."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from model_state import assert_unchanged, snapshot
from models import ConvBNNet, build
from torch import nn

import torchattr as ta
from torchattr._core.chunking import add_rows, row_ranges

GRADIENT_METHODS = {
    "saliency": lambda m, x, **kw: ta.saliency(m, x, **kw),
    "input_x_gradient": lambda m, x, **kw: ta.input_x_gradient(m, x, **kw),
    "smoothgrad": lambda m, x, **kw: ta.smoothgrad(
        m, x, samples=2, generator=torch.Generator().manual_seed(0), **kw
    ),
    "integrated_gradients": lambda m, x, **kw: ta.integrated_gradients(m, x, steps=3, **kw),
}


@pytest.fixture(params=sorted(GRADIENT_METHODS))
def method(request):
    return GRADIENT_METHODS[request.param]


# ---------------------------------------------------------------- bad input


def test_integer_inputs_point_to_embeddings(method):
    model, _ = build("mlp")
    with pytest.raises(TypeError, match=r"inputs has dtype torch.int64.*embedding"):
        method(model, torch.ones(2, 10, dtype=torch.long))
    with pytest.raises(TypeError, match=r"inputs\['codes'\].*torch.bool"):
        method(lambda codes: codes.float(), {"codes": torch.ones(2, 3, dtype=torch.bool)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(method, bad):
    model, x = build("mlp")
    x[1, 3] = bad
    with pytest.raises(ValueError, match="inputs contains NaN or inf"):
        method(model, x)
    with pytest.raises(ValueError, match=r"inputs\[1\] contains NaN"):
        method(lambda a, b: model(a + b), (x.nan_to_num(0.0), x))


def test_target_out_of_range(method):
    model, x = build("mlp")
    with pytest.raises(ValueError, match=r"target holds class 3, out of range.*3 classes"):
        method(model, x, target=3)
    with pytest.raises(ValueError, match="target holds class -1"):
        method(model, x, target=torch.tensor([0, -1, 2]))


def test_target_wrong_shape_and_type(method):
    model, x = build("mlp")
    with pytest.raises(ValueError, match=r"target has shape \[2\]: expected \[B\] or \[B, K\]"):
        method(model, x, target=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        method(model, x, target=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="target must be"):
        method(model, x, target="cat")


def test_callable_target_must_return_one_score_per_row(method):
    model, x = build("mlp")
    with pytest.raises(ValueError, match="callable target returned"):
        method(model, x, target=lambda out: out.sum())


def test_output_of_the_wrong_shape(method):
    def segmenter(x):
        return x[:, :2, :, :] * 2.0  # [B, 2, H, W]: needs a callable target

    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"model output has shape \[2, 2, 4, 4\].*callable"):
        method(segmenter, x)
    result = method(segmenter, x, target=lambda out: out[:, 1].sum(dim=(1, 2)))
    assert result.shape[0] == 2


def test_mismatched_batch_sizes(method):
    with pytest.raises(ValueError, match=r"inputs\[1\] has batch size 3 but inputs\[0\] has 2"):
        method(lambda a, b: a.sum(1, keepdim=True), (torch.randn(2, 4), torch.randn(3, 4)))


def test_not_a_model_or_not_inputs():
    with pytest.raises(TypeError, match="model must be callable"):
        ta.saliency("resnet", torch.randn(2, 3))
    with pytest.raises(TypeError, match="inputs must be a Tensor, a tuple"):
        ta.saliency(lambda x: x, np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"inputs\['a'\] must be a Tensor"):
        ta.saliency(lambda a: a, {"a": 1.0})


def test_integrated_gradients_arguments():
    model, x = build("mlp")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ta.integrated_gradients(model, x, steps=0)
    with pytest.raises(ValueError, match="steps must be >= 2"):
        ta.integrated_gradients(model, x, steps=1, method="riemann_trapezoid")
    with pytest.raises(TypeError, match="steps must be an int"):
        ta.integrated_gradients(model, x, steps=2.5)
    with pytest.raises(ValueError, match=r"unknown method 'simpson'.*gausslegendre"):
        ta.integrated_gradients(model, x, method="simpson")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ta.integrated_gradients(model, x, chunk_size=0)


def test_baseline_errors():
    model, x = build("mlp")
    with pytest.raises(ValueError, match=r"baseline for inputs has shape \[4\], not broadcastable"):
        ta.integrated_gradients(model, x, baseline=torch.zeros(4))
    with pytest.raises(ValueError, match="baseline for inputs contains NaN"):
        ta.integrated_gradients(model, x, baseline=torch.full((10,), float("nan")))
    two = {"a": x, "b": x}
    with pytest.raises(ValueError, match=r"baseline has keys \['c'\]"):
        ta.integrated_gradients(lambda a, b: model(a + b), two, baseline={"c": 0.0})
    with pytest.raises(TypeError, match="baseline must be"):
        ta.integrated_gradients(lambda a, b: model(a + b), two, baseline=torch.zeros(10))


def test_other_arguments():
    model, x = build("conv_bn")
    with pytest.raises(ValueError, match="unknown reduce 'median'"):
        ta.saliency(model, x, reduce="median")
    with pytest.raises(ValueError, match="unknown kind 'cubic'"):
        ta.smoothgrad(model, x, kind="cubic")
    with pytest.raises(ValueError, match="samples must be >= 1"):
        ta.smoothgrad(model, x, samples=0)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        ta.smoothgrad(model, x, noise=-0.1)


# ---------------------------------------------------------------- the model is left alone


def test_model_unchanged_after_calls(method):
    model, x = build("conv_bn")
    model.features[0].register_forward_hook(lambda *a: None)
    before = snapshot(model)
    method(model, x)
    method(model, x, target=torch.tensor([[0, 1], [1, 2], [2, 3]]))
    assert_unchanged(model, before)


def test_model_unchanged_after_a_raising_call(method):
    model, x = build("conv_bn")
    before = snapshot(model)

    def explode(out):
        raise RuntimeError("boom inside the target")

    with pytest.raises(RuntimeError, match="boom"):
        method(model, x, target=explode)
    with pytest.raises(ValueError):
        method(model, x, target=99)
    assert_unchanged(model, before)


def test_training_mode_warns_and_buffers_survive(method):
    model, x = build("conv_bn")
    model.train()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        method(model, x, target=0)
    assert_unchanged(model, before)  # batch norm running statistics restored

    class Failing(ConvBNNet):
        def forward(self, x):
            super().forward(x)  # updates running statistics, then fails
            raise RuntimeError("late failure")

    failing = Failing().double().train()
    before = snapshot(failing)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="late failure"):
        method(failing, x, target=0)
    assert_unchanged(failing, before)


def test_no_warning_for_layers_that_ignore_the_mode(recwarn):
    ta.saliency(nn.Linear(4, 2), torch.randn(3, 4))
    assert not [w for w in recwarn if "training mode" in str(w.message)]


def test_works_inside_no_grad_and_leaves_inputs_alone(method):
    model, x = build("residual")
    original = x.clone()
    expected = method(model, x, target=1)
    with torch.no_grad():
        inside = method(model, x, target=1)
    leaf = x.clone().requires_grad_(True)
    tracked = method(model, leaf, target=1)
    torch.testing.assert_close(inside, expected)
    torch.testing.assert_close(tracked, expected)
    assert torch.equal(x, original) and leaf.grad is None
    assert not inside.requires_grad


def test_deepcopy_equivalence_of_the_model():
    """A call leaves nothing behind that would make the model differ from a deep copy of it."""
    model, x = build("residual")
    twin = copy.deepcopy(model)
    ta.integrated_gradients(model, x, steps=4)
    for (n1, a), (n2, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b)


# ---------------------------------------------------------------- chunking


@pytest.mark.parametrize(
    "start,count,batch", [(0, 12, 3), (2, 8, 3), (5, 1, 4), (1, 9, 1), (3, 2, 7)]
)
def test_add_rows_matches_a_scatter(start, count, batch):
    values = torch.randn(count, 2, dtype=torch.float64)
    acc = torch.zeros(batch, 2, dtype=torch.float64)
    add_rows(acc, start, values)
    expected = torch.zeros(batch, 2, dtype=torch.float64).index_add_(
        0, torch.arange(start, start + count) % batch, values
    )
    torch.testing.assert_close(acc, expected)


def test_row_ranges_cover_every_row_once():
    assert list(row_ranges(7, 3)) == [(0, 3), (3, 6), (6, 7)]
    assert list(row_ranges(7, None)) == [(0, 7)]


def test_training_mode_path_matches_the_functional_path(method):
    """Models in training mode go through plain autograd: same numbers when mode changes nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(p=0.0), nn.Linear(8, 3)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    targets = torch.tensor([[0, 1], [2, 0], [1, 1], [0, 2]])
    with pytest.warns(UserWarning, match="training mode"):
        trained = method(model.train(), x, target=targets)
    evaluated = method(model.eval(), x, target=targets)
    torch.testing.assert_close(trained, evaluated)
