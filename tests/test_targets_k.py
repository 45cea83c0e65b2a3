"""K classes per sample: a ``[B, K]`` target equals K separate calls and runs one forward.

Models: a CNN, an ``nn.TransformerEncoder`` text classifier through its embedding (whose CPU
attention backward has no vmap batching rule) and an LSTM (no batching rule at all: the K
pull-backs loop over one saved forward). Oracle: the same method called once per class.
"""

from __future__ import annotations

import pytest
import torch
from models import RowCounter, build
from torch import Tensor, nn

import torchattr as ta

K_TARGET = torch.tensor([[0, 2], [1, 0], [2, 1]])


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(30, 16, padding_idx=0)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.encoder(self.embedding(ids)).mean(1))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def methods(layer: nn.Module | None) -> dict:
    extra = {} if layer is None else {"layer": layer}
    return {
        "saliency": lambda m, x, t: ta.saliency(m, x, t, **extra),
        "input_x_gradient": lambda m, x, t: ta.input_x_gradient(m, x, t, **extra),
        "integrated_gradients": lambda m, x, t: ta.integrated_gradients(
            m, x, t, steps=4, chunk_size=5, **extra
        ),
        "smoothgrad": lambda m, x, t: ta.smoothgrad(
            m, x, t, samples=3, generator=torch.Generator().manual_seed(0), **extra
        ),
    }


def models() -> dict:
    torch.manual_seed(0)
    cnn, images = build("conv_bn")
    encoder = Encoder().double().eval()
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 0], [10, 11, 0, 0]])
    lstm = Recurrent().double().eval()
    return {
        "cnn": (cnn, images, None),
        "encoder": (encoder, ids, encoder.embedding),
        "lstm": (lstm, torch.randn(3, 5, 4, dtype=torch.float64), None),
    }


@pytest.mark.parametrize("name", ["cnn", "encoder", "lstm"])
def test_k_targets_equal_k_separate_calls(name):
    model, x, layer = models()[name]
    for method, call in methods(layer).items():
        if method == "smoothgrad" and layer is not None:
            continue  # smoothgrad's layer= returns gradient statistics; covered by the others
        together = call(model, x, K_TARGET)
        for k in range(K_TARGET.shape[1]):
            alone = call(model, x, K_TARGET[:, k])
            torch.testing.assert_close(together[:, k], alone, rtol=1e-9, atol=1e-12, msg=method)


def test_k_targets_cost_one_forward():
    model, x = build("conv_bn")
    counted = RowCounter(model).eval()
    ta.saliency(counted, x, K_TARGET)
    assert counted.rows == x.shape[0]
    counted.rows = 0
    ta.integrated_gradients(counted, x, K_TARGET, steps=4, chunk_size=None)
    assert counted.rows == 4 * x.shape[0]  # the path rows, once for all K classes


def test_k_targets_in_inference_mode_and_no_grad():
    model, x, layer = models()["encoder"]
    expected = ta.input_x_gradient(model, x, K_TARGET, layer=layer)
    with torch.inference_mode():
        inside = ta.input_x_gradient(model, x, K_TARGET, layer=layer)
    with torch.no_grad():
        no_grad = ta.input_x_gradient(model, x, K_TARGET, layer=layer)
    torch.testing.assert_close(inside, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(no_grad, expected, rtol=1e-10, atol=1e-12)


def test_k_targets_under_torch_compile_match_eager():
    # While dynamo traces, the K pull-backs are one vmap (traced as one graph).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(3, 6)
    compiled = torch.compile(
        lambda inputs: ta.saliency(model, inputs, K_TARGET), backend="eager", fullgraph=True
    )
    torch.testing.assert_close(compiled(x), ta.saliency(model, x, K_TARGET), rtol=1e-5, atol=1e-7)
