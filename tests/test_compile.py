"""The kernels trace with torch.compile(fullgraph=True) and match eager execution."""

from __future__ import annotations

import pytest
import torch
from models import build

import torchattr as ta


@pytest.fixture(scope="module")
def model_and_inputs():
    model, x = build("conv_bn", dtype=torch.float32)
    return model, x


def test_compiled_saliency_matches_eager(model_and_inputs):
    model, x = model_and_inputs
    compiled = torch.compile(lambda x: ta.saliency(model, x), fullgraph=True)
    torch.testing.assert_close(compiled(x), ta.saliency(model, x), rtol=1e-5, atol=1e-6)


def test_compiled_integrated_gradients_matches_eager(model_and_inputs):
    model, x = model_and_inputs
    targets = torch.tensor([1, 0, 4])

    def explain(x):
        return ta.integrated_gradients(
            model, x, target=targets, steps=6, chunk_size=7, return_delta=True
        )

    compiled = torch.compile(explain, fullgraph=True)
    (ours, delta), (eager, eager_delta) = compiled(x), explain(x)
    torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(delta, eager_delta, rtol=1e-4, atol=1e-5)
