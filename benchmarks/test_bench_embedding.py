"""pytest-benchmark cases: IG over token embeddings, torchattr against Captum and bare autograd.

Run with (the project's ``addopts`` disables benchmarks; these files are outside ``testpaths``)::

    PYTHONPATH=. python -m pytest benchmarks/test_bench_embedding.py --benchmark-enable -q

One group, ``ig_embedding-transformer``, holds three twins doing the same work on the benchmark
transformer text classifier (token ids ``[B, L]`` with trailing padding, baseline UNK at every
real token and PAD kept, Gauss-Legendre steps, explicit targets):

* ``torchattr``:
  ``ta.integrated_gradients(model, ids, t, baseline=baseline, layer=model.embedding)``;
* ``captum``: ``LayerIntegratedGradients(model, model.embedding).attribute(...).sum(-1)``;
* ``bare``: one forward + backward of the B*STEPS rows with respect to the embedding output.

Sizes are small (B = 2, L = 16, 16 steps) so that the file runs on a CPU in seconds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from benchmarks.compare import make_callables, max_relative_error
from benchmarks.models import PAD, build, token_batch

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

BATCH = 2
LENGTH = 16
STEPS = 16
LIBRARIES = ("torchattr", "captum", "bare")
Workload = tuple[nn.Module, Tensor, Tensor]


@pytest.fixture(scope="module")
def workload() -> Workload:
    """(transformer in eval mode, token ids ``[B, L]`` with trailing PAD, targets ``[B]``)."""
    model = build("transformer", "cpu", seed=0)
    ids = token_batch(BATCH, LENGTH, seed=0)
    t = torch.randint(4, (BATCH,), generator=torch.Generator().manual_seed(0))
    return model, ids, t


def _callable(workload: Workload, library: str) -> Callable[[], Tensor]:
    if library == "captum":
        pytest.importorskip("captum")
    model, ids, t = workload
    fn = make_callables(model, ids, t, "ig_embedding", STEPS, libraries=(library,))[library]
    # One untimed call: pytest-benchmark times from the first call, and torchattr's first call in
    # a process also pays torch.func's lazy import of torch._dynamo (~1 s).
    fn()
    return fn


@pytest.mark.parametrize("library", LIBRARIES)
def test_ig_embedding(benchmark: BenchmarkFixture, workload: Workload, library: str) -> None:
    """IG in embedding space / Captum LayerIG / one forward+backward of B*STEPS rows."""
    benchmark.group = "ig_embedding-transformer"
    result = benchmark(_callable(workload, library))
    assert torch.isfinite(result).all()
    _, ids, _ = workload
    if library == "bare":
        assert result.shape == (BATCH * STEPS, LENGTH, 128)
    else:
        assert result.shape == ids.shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torchattr_matches_captum(workload: Workload, dtype: torch.dtype) -> None:
    """The twins compute the same per-token attributions, zero at the padding.

    Tight in float64. In float32 the two differ by more than rounding where a ReLU pre-activation
    of the feed-forward blocks sits within rounding of 0 at some path point: the two forwards
    (torch.func's vjp and plain autograd order the matmuls differently) may then take different
    sides of the kink, which changes that row's gradient by one unit's contribution.
    """
    pytest.importorskip("captum")
    model, ids, t = workload
    model = copy.deepcopy(model).to(dtype)
    fns = make_callables(model, ids, t, "ig_embedding", STEPS, libraries=("torchattr", "captum"))
    ours, theirs = fns["torchattr"](), fns["captum"]()
    assert ours.dtype == theirs.dtype == dtype
    assert max_relative_error(ours, theirs) < (1e-6 if dtype == torch.float64 else 1e-3)
    assert (ours[ids == PAD] == 0).all()
