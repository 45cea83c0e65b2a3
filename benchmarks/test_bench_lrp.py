"""pytest-benchmark cases: ``ta.lrp`` against Zennit, Captum and one forward + backward.

Run with (the project's ``addopts`` disables benchmarks; this file is outside ``testpaths``)::

    PYTHONPATH=. python -m pytest benchmarks/test_bench_lrp.py --benchmark-enable -q

One group per model, ``lrp-resnet18`` and ``lrp-vgg16`` (see ``bench_lrp.py``: ResNet-18 from
``benchmarks/models.py``; VGG-16 in torchvision's layout, no BatchNorm), B = 2, 3x32x32 inputs,
10 classes, targets = the model's predictions. Each group holds:

* ``bare``: one forward + input-gradient backward with plain autograd;
* ``torchattr-<composite>``: ``ta.lrp(model, x, t, composite=C)`` for ``EpsilonPlusFlat``,
  ``EpsilonAlpha2Beta1``, ``EpsilonGammaBox(-3, 3)`` and ``Epsilon`` (Captum's rules);
* ``zennit-<composite>``: Zennit's ``Gradient`` with the same composite (skipped where Zennit
  does not import);
* ``captum``: ``captum.attr.LRP`` (skipped, with Captum's reason, on the ResNet: it has no rule
  for ``nn.Identity`` nor for the functional residual add).

Every twin is called once, untimed, before pytest-benchmark times it (torchattr's first call
traces the model and builds its cached program). ``test_*_matches_*`` check that the twins
compute the same relevance where the rules are the same (VGG-16), and that torchattr conserves
relevance on the bias-free VGG-16.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

import torchattr as ta
from benchmarks.bench_lrp import (
    COMPOSITES,
    bare_factory,
    build_model,
    captum_factory,
    import_zennit,
    short_error,
    torchattr_composite,
    torchattr_factory,
    workload,
    zennit_factory,
)
from benchmarks.compare import max_relative_error

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

BATCH = 2
SIZE = 32
CLASSES = 10
MODEL_NAMES = ("resnet18", "vgg16")
Workload = tuple[str, nn.Module, Tensor, Tensor]


@pytest.fixture(scope="module", params=MODEL_NAMES)
def work(request: pytest.FixtureRequest) -> Workload:
    """(name, model in eval mode, inputs ``[B, 3, S, S]`` in [-3, 3], predicted classes ``[B]``)."""
    name: str = request.param
    model = build_model(name, "cpu", num_classes=CLASSES, seed=0)
    x, t = workload(model, BATCH, SIZE, 0, torch.device("cpu"))
    return name, model, x, t


def _zennit() -> None:
    zennit, why = import_zennit()
    if zennit is None:
        pytest.skip(why)


@pytest.fixture
def twin(request: pytest.FixtureRequest, work: Workload) -> Iterator[Callable[[], Tensor]]:
    """The contender ``request.param`` on ``work``, called once (untimed); cleaned up after."""
    contender: str = request.param
    _, model, x, t = work
    library, _, composite = contender.partition("-")
    if library == "bare":
        fn, close = bare_factory(x, t)(model)
    elif library == "torchattr":
        fn, close = torchattr_factory(x, t, composite)(model)
    elif library == "zennit":
        _zennit()
        fn, close = zennit_factory(x, t, composite, CLASSES)(copy.deepcopy(model))
    else:
        pytest.importorskip("captum")
        fn, close = captum_factory(x, t)(copy.deepcopy(model))
    try:
        try:
            fn()
        except TypeError as exc:
            if library != "captum":
                raise
            pytest.skip(f"captum LRP unsupported: {short_error(exc)}")
        yield fn
    finally:
        close()


CONTENDERS = (
    "bare",
    *(f"torchattr-{c}" for c in COMPOSITES),
    *(f"zennit-{c}" for c in COMPOSITES),
    "captum",
)


@pytest.mark.parametrize("twin", CONTENDERS, indirect=True)
def test_lrp(benchmark: BenchmarkFixture, work: Workload, twin: Callable[[], Tensor]) -> None:
    """One group per model: bare, torchattr and Zennit per composite, Captum."""
    benchmark.group = f"lrp-{work[0]}"
    result = benchmark(twin)
    assert result.shape == work[2].shape
    assert torch.isfinite(result).all()


def _vgg(work: Workload) -> Workload:
    if work[0] != "vgg16":
        pytest.skip("the rules differ on resnet18 (Zennit and Captum have none for functional +)")
    return work


@pytest.mark.parametrize("composite", COMPOSITES)
def test_zennit_matches_torchattr(work: Workload, composite: str) -> None:
    """Same composite, same relevance (float32)."""
    _, model, x, t = _vgg(work)
    _zennit()
    fn, close = zennit_factory(x, t, composite, CLASSES)(copy.deepcopy(model))
    try:
        theirs = fn()
    finally:
        close()
    ours = ta.lrp(model, x, t, composite=torchattr_composite(composite))
    assert max_relative_error(theirs, ours) < 1e-3


def test_captum_matches_torchattr_epsilon(work: Workload) -> None:
    """Captum's LRP (Epsilon(1e-9) everywhere) against torchattr's ``Epsilon`` composite."""
    _, model, x, t = _vgg(work)
    pytest.importorskip("captum")
    theirs = captum_factory(x, t)(copy.deepcopy(model))[0]()
    ours = ta.lrp(model, x, t, composite=torchattr_composite("Epsilon"))
    assert max_relative_error(theirs, ours) < 1e-3


@pytest.mark.parametrize("composite", COMPOSITES)
def test_torchattr_conserves_on_vgg(work: Workload, composite: str) -> None:
    """No biases (torchvision's initialisation): every composite's relevance sums to the score."""
    _, model, x, t = _vgg(work)
    _, report = ta.lrp(
        model, x, t, composite=torchattr_composite(composite), return_conservation=True
    )
    torch.testing.assert_close(report.ratio, torch.ones_like(report.ratio), rtol=0, atol=1e-3)
