"""chunk_size="auto": results equal unchunked ones, and the chosen chunks respect the budget."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import torchattr as ta
from torchattr._core.chunking import rows_within, run_chunks
from torchattr._core.memory import (
    DEFAULT_CPU_BUDGET,
    PeakMeter,
    check_memory_budget,
    default_budget,
)


class Wide(nn.Module):
    """An MLP with a wide hidden layer (tens of kB of activations per row); records row counts."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 2048), nn.Tanh(), nn.Linear(2048, 3))
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.net(x)


def _model() -> Wide:
    torch.manual_seed(0)
    return Wide().double().eval()


def test_peak_meter_counts_live_storages():
    with PeakMeter() as meter:
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(500)  # 2000 bytes: 6000 live
        del a
        c = torch.empty(250)  # 1000 bytes: 3000 live
        view = b[10:]  # a view allocates nothing
    assert meter.peak == 6000
    assert meter.current == 3000
    del b, c, view


def test_peak_meter_sees_tensors_saved_for_backward():
    x = torch.randn(1000, requires_grad=True)
    with PeakMeter() as meter:
        y = x.sigmoid()  # 4000 bytes, saved for backward
        loss = y.sum()
        del y
        live_after_forward = meter.current
        loss.backward()
    assert live_after_forward >= 4000
    assert meter.peak >= 8000  # the saved output and the gradient coexist


def test_rows_within_hand_computed():
    # f = 1000, c = 100 bytes per row: (4, 1400), (8, 1800); budget 3000 -> (3000 - 1000) / 100
    assert rows_within(3000, [(4, 1400), (8, 1800)]) == 20
    # a budget below the fixed cost still gives one row per chunk
    assert rows_within(500, [(4, 1400), (8, 1800)]) == 1
    # no positive slope: the larger peak per row, no fixed part: 2000 / (1800 / 4) = 4.4 -> 4
    assert rows_within(2000, [(4, 1800), (4, 1800)]) == 4


def test_run_chunks_covers_rows_in_order():
    seen = []
    run_chunks(
        50, "auto", lambda a, b: seen.append((a, b)), device=torch.device("cpu"), memory_budget=1
    )
    assert seen[0] == (0, 4) and seen[1] == (4, 12)
    assert [b for _, b in seen][-1] == 50
    assert all(b0 == a1 for (_, b0), (a1, _) in itertools.pairwise(seen))


def test_auto_integrated_gradients_equals_unchunked():
    model = _model()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    want = ta.integrated_gradients(model, x, target=1, steps=16, chunk_size=None)
    got = ta.integrated_gradients(model, x, target=1, steps=16, memory_budget=2**20)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    multi = torch.tensor([[0, 2]] * 3)
    want = ta.integrated_gradients(model, x, target=multi, steps=16, chunk_size=None)
    got = ta.integrated_gradients(model, x, target=multi, steps=16, memory_budget=2**20)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_auto_smoothgrad_equals_unchunked():
    model = _model()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    for kind in ("smoothgrad", "var"):
        want = ta.smoothgrad(
            model,
            x,
            2,
            samples=9,
            kind=kind,
            chunk_size=None,
            generator=torch.Generator().manual_seed(1),
        )
        got = ta.smoothgrad(
            model,
            x,
            2,
            samples=9,
            kind=kind,
            memory_budget=2**20,
            generator=torch.Generator().manual_seed(1),
        )
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _peak_of_ig(model: Wide, x: torch.Tensor, chunk_size: int) -> int:
    with PeakMeter() as meter:
        ta.integrated_gradients(model, x, target=1, steps=64, chunk_size=chunk_size)
    return meter.peak


def test_auto_chunks_respect_a_small_budget():
    model = _model()
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    budget = 2**21  # 2 MiB; a row costs ~2048 x 8 bytes several times over
    ta.integrated_gradients(model, x, target=1, steps=64, memory_budget=budget)
    rows = model.rows
    assert rows[:2] == [4, 8], rows  # the two measured chunks
    chosen = rows[2]
    assert 8 < chosen < 4 * 64 - 12, rows  # the budget binds, and is not wildly conservative
    assert all(r == chosen for r in rows[2:-1]) and sum(rows) == 4 * 64
    assert _peak_of_ig(model, x, chosen) <= budget
    assert _peak_of_ig(model, x, 2 * chosen) > budget


def test_memory_budget_and_chunk_size_checked():
    with pytest.raises(ValueError, match="memory_budget"):
        check_memory_budget(0)
    with pytest.raises(TypeError, match="memory_budget"):
        check_memory_budget("1GB")
    with pytest.raises(ValueError, match="chunk_size"):
        ta.integrated_gradients(_model(), torch.randn(1, 3, 4, 4).double(), chunk_size="big")
    assert default_budget(torch.device("cpu")) == DEFAULT_CPU_BUDGET
