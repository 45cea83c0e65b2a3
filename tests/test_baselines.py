"""torchattr.baselines: each baseline against a direct computation, and its refusals."""

from __future__ import annotations

import pytest
import torch
from test_paths import blur_reference

import torchattr as ta
from torchattr import baselines


def test_zeros_black_shape_dtype():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    assert torch.equal(baselines.zeros(x), torch.zeros_like(x))
    b = baselines.black(x, value=-1.5)
    assert b.dtype == x.dtype and b.shape == x.shape and torch.all(b == -1.5)
    with pytest.raises(TypeError, match="inputs must be floating point"):
        baselines.zeros(torch.ones(2, 3, dtype=torch.long))


def test_blurred_is_the_reflecting_gaussian_filter():
    x = torch.rand(2, 3, 6, 9, dtype=torch.float64)
    torch.testing.assert_close(baselines.blurred(x, 1.5), blur_reference(x, 1.5))
    # a constant image is unchanged, and a huge sigma tends to the per-channel mean
    c = torch.full((1, 1, 5, 5), 0.3, dtype=torch.float64)
    torch.testing.assert_close(baselines.blurred(c, 4.0), c)
    flat = baselines.blurred(x, 500.0)
    torch.testing.assert_close(flat, x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="two spatial dimensions"):
        baselines.blurred(torch.rand(2, 5), 1.0)


def test_uniform_noise_seeded_and_in_range():
    x = torch.rand(4, 3, 8, 8)
    a = baselines.uniform_noise(x, -1, 2, generator=torch.Generator().manual_seed(0))
    b = baselines.uniform_noise(x, -1, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() < 2 and abs(a.mean().item() - 0.5) < 0.1
    with pytest.raises(ValueError, match="low < high"):
        baselines.uniform_noise(x, 1, 1)


def test_training_mean_from_tensor_and_loader():
    data = torch.randn(10, 3, 4, dtype=torch.float64)
    x = torch.rand(2, 3, 4, dtype=torch.float64)
    expected = data.mean(0).expand_as(x)
    torch.testing.assert_close(baselines.training_mean(x, data), expected)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data, torch.zeros(10)), batch_size=3
    )
    torch.testing.assert_close(baselines.training_mean(x, loader), expected)
    as_dicts = [{"image": data[:4]}, {"image": data[4:]}]
    torch.testing.assert_close(baselines.training_mean(x, as_dicts), expected)
    with pytest.raises(ValueError, match="samples of shape"):
        baselines.training_mean(x, torch.randn(5, 4, 3))
    with pytest.raises(ValueError, match="empty"):
        baselines.training_mean(x, [])


def test_baselines_plug_into_the_methods():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(32, 2)
    )
    x = torch.rand(2, 1, 6, 6)
    base = ta.baselines.blurred(x, 2.0)
    _, delta = ta.integrated_gradients(model.eval(), x, 0, baseline=base, return_delta=True)
    assert delta.abs().max() < 1e-4
    refs = torch.stack([ta.baselines.uniform_noise(x[0]) for _ in range(3)])
    out = ta.expected_gradients(model, x, 0, references=refs, samples=4)
    assert out.shape == x.shape


def test_non_finite_values_and_aliasing_are_refused():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="value is nan"):
        ta.baselines.black(x, value=float("nan"))
    with pytest.raises(ValueError, match="finite low < high"):
        ta.baselines.uniform_noise(x, 0.0, float("inf"))
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        ta.baselines.uniform_noise(x, generator=5)
    base = ta.baselines.blurred(x, sigma=0)  # the inputs themselves, but a copy of them
    base += 1
    assert not torch.equal(base, x) and base.data_ptr() != x.data_ptr()


def test_blurred_refuses_signals_whose_channels_it_would_mix():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ta.baselines.blurred(torch.rand(2, 3, 16), sigma=2)
