"""progress=: callbacks hear increasing counts ending at the total; True is quiet off a tty."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch import nn

import torchattr as ta
from torchattr import metrics
from torchattr._core.progress import reporting


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()


class Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def check(self, total: int, chunks: int | None = None) -> None:
        """Strictly increasing counts, one total, the last call at the total."""
        assert self.calls, "progress was never called"
        done = [d for d, _ in self.calls]
        assert all(t == total for _, t in self.calls), self.calls
        assert all(a < b for a, b in itertools.pairwise(done)), done
        assert done[-1] == total and done[0] > 0
        if chunks is not None:
            assert len(done) == chunks, done


def test_integrated_gradients_and_smoothgrad_report_rows():
    model, x = _cnn(), torch.rand(2, 3, 6, 6)
    calls = Calls()
    ta.integrated_gradients(model, x, target=1, steps=5, chunk_size=3, progress=calls)
    calls.check(total=10, chunks=4)
    calls = Calls()
    ta.smoothgrad(model, x, target=1, samples=4, chunk_size=5, progress=calls)
    calls.check(total=8, chunks=2)
    calls = Calls()  # auto: two measured chunks (4 and 8 rows), then the rest
    ta.integrated_gradients(model, x, target=1, steps=16, progress=calls)
    calls.check(total=32)
    assert [d for d, _ in calls.calls][:2] == [4, 12]


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_cam_reports_masked_rows_over_layers(method):
    model, x = _cnn(), torch.rand(2, 3, 6, 6)
    calls = Calls()
    ta.cam(model, x, 1, layer=[model[0], model[1]], method=method, batch_size=3, progress=calls)
    calls.check(total=2 * 4 * 2, chunks=2 * 3)  # B * C rows per layer, 3 calls of <= 3 each


def test_perturbation_metrics_report_copies():
    model, x = _cnn(), torch.rand(2, 3, 6, 6)
    maps = torch.rand(2, 6, 6)
    calls = Calls()
    metrics.road(model, x, maps, fractions=(0.2, 0.5, 0.8), batch_size=4, progress=calls)
    calls.check(total=6, chunks=2)
    calls = Calls()
    metrics.deletion(model, x, maps, step=12, batch_size=2, progress=calls)
    calls.check(total=(3 + 1) * 2, chunks=4)
    calls = Calls()
    metrics.insertion(model, x, maps, step=12, progress=calls)
    calls.check(total=(3 + 1) * 2, chunks=4)


def test_robustness_metrics_report_rows():
    model, x = _cnn(), torch.rand(2, 3, 6, 6)
    phi = ta.saliency(model, x, target=1, abs=False, reduce=None)
    calls = Calls()
    explain = functools.partial(ta.saliency, model)
    metrics.max_sensitivity(explain, x, target=1, samples=3, progress=calls)
    calls.check(total=6, chunks=3)
    calls = Calls()
    metrics.infidelity(model, x, phi, target=1, samples=3, batch_size=4, progress=calls)
    calls.check(total=6, chunks=2)
    calls = Calls()
    metrics.faithfulness_correlation(model, x, phi, target=1, runs=3, progress=calls)
    calls.check(total=6, chunks=3)


def test_progress_true_is_silent_off_a_terminal(capsys):
    model, x = _cnn(), torch.rand(2, 3, 6, 6)
    with_bar = ta.integrated_gradients(model, x, target=1, steps=4, chunk_size=3, progress=True)
    without = ta.integrated_gradients(model, x, target=1, steps=4, chunk_size=3)
    assert torch.equal(with_bar, without)
    assert capsys.readouterr().err == ""


def test_progress_checked():
    model, x = _cnn(), torch.rand(2, 3, 6, 6)
    with pytest.raises(TypeError, match="progress"):
        ta.integrated_gradients(model, x, target=1, progress="yes")
    with pytest.raises(TypeError, match="progress"):
        metrics.road(model, x, torch.rand(2, 6, 6), progress=3)


def test_reporting_passes_on_increases_only():
    calls = Calls()
    with reporting(calls, 5, "x") as report:
        for done in (2, 2, 4, 5, 5):
            report(done)
    calls.check(total=5, chunks=3)
