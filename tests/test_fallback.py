"""Models torch.func cannot run go through plain autograd, with the same results.

Each model below makes ``torch.func.vjp`` raise in eval mode (an RNN kernel, a packed sequence, a
buffer updated in place, DDP's in-place buffer broadcast). Every result is compared with a plain
autograd reference; the model must be exactly as it was afterwards; the switch must be
remembered, and must not swallow an error that is the user's.
"""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from model_state import assert_unchanged, snapshot
from torch import nn

import torchattr as ta
from torchattr._core import fallback


class Recurrent(nn.Module):
    """LSTM (or GRU) over [B, T, F], last step -> 3 logits."""

    def __init__(self, cell: type[nn.RNNBase] = nn.LSTM) -> None:
        super().__init__()
        self.rnn = cell(5, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class PackedGRU(nn.Module):
    """PyHealth's RNN layer: a GRU over pack_padded_sequence, last hidden state -> 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(5, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        _, hidden = self.rnn(packed)
        return self.head(hidden[-1])


class Counting(nn.Module):
    """Updates buffers in eval mode (a call counter, a running mean of its inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(20, 6), nn.Tanh(), nn.Linear(6, 3))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(20))
        self.forwards = 0  # Python attribute: counts model calls, not restored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        self.calls += 1
        self.mean.mul_(0.9).add_(0.1 * x.detach().flatten(1).mean(0))
        return self.body(x)


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "lstm": Recurrent(nn.LSTM).eval(),
        "packed_gru": PackedGRU().eval(),
        "counting": Counting().eval(),
    }


def reference_gradients(model: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """``d out[b, c] / d x[b]`` for every class c, ``[B, K, ...]``, by plain autograd."""
    model = copy.deepcopy(model)
    grads = []
    for c in classes:
        xr = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xr)[:, c].sum(), xr)
        grads.append(g)
    return torch.stack(grads, 1)


def reference_ig(model: nn.Module, x: torch.Tensor, c: int, steps: int) -> torch.Tensor:
    """IG with baseline 0 by one autograd call per Gauss-Legendre node."""
    nodes, weights = ta.quadrature("gausslegendre", steps)
    total = torch.zeros_like(x, dtype=torch.float64)
    for a, w in zip(nodes.tolist(), weights.tolist()):
        total += w * reference_gradients(model, a * x, [c])[:, 0].double()
    return (x * total).to(x.dtype)


@pytest.fixture(autouse=True)
def _fresh_memory():
    fallback.forget_all()
    yield
    fallback.forget_all()


@pytest.mark.parametrize("name", ["lstm", "packed_gru", "counting"])
def test_fallback_matches_autograd(name):
    model = _models()[name]
    x = torch.randn(3, 4, 5)
    before = snapshot(model)
    # A [B, K] target is pulled back by torch.func's vmap, which refuses these models.
    two = torch.tensor([[0, 2]] * 3)
    got = ta.saliency(model, x, target=two, abs=False, reduce=None)
    assert fallback.needs_autograd(model), "torch.func should have failed and been remembered"
    torch.testing.assert_close(got, reference_gradients(model, x, [0, 2]), atol=1e-6, rtol=1e-5)
    one = ta.input_x_gradient(model, x, target=1)
    torch.testing.assert_close(
        one, x * reference_gradients(model, x, [1])[:, 0], atol=1e-6, rtol=1e-5
    )
    ig = ta.integrated_gradients(model, x, target=1, steps=4, chunk_size=5)
    torch.testing.assert_close(ig, reference_ig(model, x, 1, 4), atol=1e-5, rtol=1e-4)
    smooth = ta.smoothgrad(model, x, target=two, samples=2, chunk_size=4, noise=0.0)
    torch.testing.assert_close(smooth, got, atol=1e-6, rtol=1e-5)
    assert_unchanged(model, before)


def test_failing_attempt_is_made_once_and_buffers_restored():
    model = _models()["counting"]
    x = torch.randn(2, 4, 5)
    two = torch.tensor([[0, 1], [2, 0]])
    calls, mean = model.calls.clone(), model.mean.clone()
    ta.saliency(model, x, target=two)
    assert model.forwards == 2  # the refused torch.func attempt, then autograd
    ta.saliency(model, x, target=two)
    assert model.forwards == 3  # remembered: straight to autograd
    assert torch.equal(model.calls, calls) and torch.equal(model.mean, mean)
    # Another instance of the same structure is not tried with torch.func again.
    other = Counting().eval()
    ta.saliency(other, x, target=two)
    assert other.forwards == 1


def test_cam_restores_buffers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    counting = _CountingCNN(model).eval()
    before = snapshot(counting)
    maps = ta.cam(counting, torch.rand(2, 3, 8, 8), target=1, layer=counting.features[0])
    assert maps.shape == (2, 8, 8)
    assert_unchanged(counting, before)


class _CountingCNN(nn.Module):
    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(self.features(x))


class _Broken(nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize(
    "error", [RuntimeError("boom: a bug in the user's forward"), ValueError("bad shape")]
)
def test_user_errors_propagate_and_are_not_remembered(error):
    model = _Broken(error).eval()
    with pytest.raises(type(error), match=str(error)):
        ta.saliency(model, torch.randn(2, 4), target=torch.tensor([[0, 1], [1, 2]]))
    assert not fallback.needs_autograd(model)


def test_shape_mismatch_is_not_a_fallback():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        ta.saliency(model, torch.randn(2, 5), target=torch.tensor([[0, 1], [1, 2]]))
    assert not fallback.needs_autograd(model)


def test_is_func_failure():
    assert fallback.is_func_failure(
        RuntimeError("Cannot access data pointer of Tensor that doesn't have storage")
    )
    assert not fallback.is_func_failure(RuntimeError("CUDA out of memory"))
    assert not fallback.is_func_failure(ValueError("Cannot access data pointer of Tensor"))


def test_buffers_kept_restores_on_error():
    model = Counting()
    with pytest.raises(KeyError), fallback.buffers_kept(model):
        model(torch.randn(2, 20))
        raise KeyError("inside")
    assert model.calls.item() == 0 and torch.equal(model.mean, torch.zeros(20))


@pytest.fixture(scope="module")
def process_group():
    handle, path = tempfile.mkstemp()
    os.close(handle)
    os.unlink(path)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        if os.path.exists(path):
            os.unlink(path)


def test_eval_mode_ddp_with_batch_norm(process_group):
    torch.manual_seed(0)
    inner = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    with torch.no_grad():
        inner[1].running_mean.uniform_(-0.5, 0.5)
        inner[1].running_var.uniform_(0.5, 2.0)
    model = nn.parallel.DistributedDataParallel(inner).eval()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    two = torch.tensor([[0, 2], [1, 0]])
    got = ta.saliency(model, x, target=two, abs=False, reduce=None)
    assert fallback.needs_autograd(model)
    want = reference_gradients(inner.eval(), x, [0, 1, 2])
    torch.testing.assert_close(got[0], want[0, [0, 2]], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1, [1, 0]], atol=1e-6, rtol=1e-5)
    ig = ta.integrated_gradients(model, x, target=1, steps=4)
    torch.testing.assert_close(ig, reference_ig(inner, x, 1, 4), atol=1e-5, rtol=1e-4)
    assert_unchanged(model, before)


def test_refused_torch_func_attempt_writes_no_buffer():
    # The premise of trying torch.func first: it refuses the in-place write before it happens.
    model = Counting().eval()
    with pytest.raises(RuntimeError) as refused, torch.no_grad():
        torch.func.vjp(model, torch.randn(2, 4, 5))
    assert fallback.is_func_failure(refused.value)
    assert model.calls.item() == 0 and torch.equal(model.mean, torch.zeros(20))


def test_function_wrapping_a_module_is_remembered_and_its_buffers_restored():
    # PyHealth-style glue: a fresh lambda around the module on every call.
    model = Counting().eval()
    x = torch.randn(2, 4, 5)
    two = torch.tensor([[0, 1], [2, 0]])

    def glue():
        return lambda inputs: {"logit": model(inputs)}["logit"]

    got = ta.saliency(glue(), x, target=two, abs=False, reduce=None)
    assert model.forwards == 2  # the refused torch.func attempt, then autograd
    ref = reference_gradients(model, x, [0, 1, 2])
    torch.testing.assert_close(got[0], ref[0, [0, 1]], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1, [2, 0]], atol=1e-6, rtol=1e-5)
    ta.saliency(glue(), x, target=two)
    assert model.forwards == 3  # remembered for the function's code and the module's structure
    assert model.calls.item() == 0 and torch.equal(model.mean, torch.zeros(20))
