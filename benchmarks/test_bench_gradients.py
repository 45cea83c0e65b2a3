"""pytest-benchmark cases: torchattr against Captum and bare autograd, grouped per workload.

Run with (the project's ``addopts`` disables benchmarks; these files are outside ``testpaths``)::

    PYTHONPATH=. python -m pytest benchmarks --benchmark-enable -q

Every group (``<method>-<model>``) holds three twins doing the same work: ``torchattr``, ``captum``
and ``bare`` (one forward + input-gradient backward of the same number of rows with plain autograd).
Sizes are small so that the whole file runs on a laptop CPU in a few minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from benchmarks.compare import make_callables, max_relative_error
from benchmarks.models import build

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

BATCH = 2
STEPS = 16
SIZES = {"small": 32, "resnet18": 32}
LIBRARIES = ("torchattr", "captum", "bare")
Workload = tuple[nn.Module, Tensor, Tensor]


@pytest.fixture(scope="module", params=sorted(SIZES))
def workload(request: pytest.FixtureRequest) -> Workload:
    """(model in eval mode, inputs ``[B, 3, S, S]``, targets ``[B]``), seeded."""
    name: str = request.param
    torch.manual_seed(0)
    model = build(name, "cpu", num_classes=10)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZES[name], SIZES[name], generator=gen)
    t = torch.randint(10, (BATCH,), generator=gen)
    return model, x, t


def _callable(workload: Workload, method: str, library: str) -> Callable[[], Tensor]:
    if library == "captum":
        pytest.importorskip("captum")
    model, x, t = workload
    fn = make_callables(model, x, t, method, STEPS, libraries=(library,))[library]
    # One untimed call: pytest-benchmark times from the first call, and torchattr's first call in
    # a process also pays torch.func's lazy import of torch._dynamo (~1 s).
    fn()
    return fn


def _group(request: pytest.FixtureRequest, method: str) -> str:
    model_name = request.node.callspec.params["workload"]
    return f"{method}-{model_name}"


@pytest.mark.parametrize("library", LIBRARIES)
def test_saliency(
    benchmark: BenchmarkFixture, request: pytest.FixtureRequest, workload: Workload, library: str
) -> None:
    """``ta.saliency`` / Captum ``Saliency`` + amax / one forward+backward of B rows."""
    benchmark.group = _group(request, "saliency")
    result = benchmark(_callable(workload, "saliency", library))
    assert torch.isfinite(result).all()


@pytest.mark.parametrize("library", LIBRARIES)
def test_integrated_gradients(
    benchmark: BenchmarkFixture, request: pytest.FixtureRequest, workload: Workload, library: str
) -> None:
    """IG, Gauss-Legendre, ``STEPS`` steps / Captum IG / one forward+backward of B*STEPS rows."""
    benchmark.group = _group(request, "ig")
    result = benchmark(_callable(workload, "ig", library))
    assert torch.isfinite(result).all()


@pytest.mark.parametrize("method", ["saliency", "ig"])
def test_torchattr_matches_captum(workload: Workload, method: str) -> None:
    """The twins compute the same attributions (so the timings compare like with like)."""
    pytest.importorskip("captum")
    model, x, t = workload
    fns = make_callables(model, x, t, method, STEPS, libraries=("torchattr", "captum"))
    assert max_relative_error(fns["torchattr"](), fns["captum"]()) < 1e-4
