"""torchattr: functional attribution kernels for PyTorch, built on ``torch.func``.

Every method is a pure function ``(model, inputs, target=None, *, ...) -> attributions``. The
subpackages ``metrics``, ``viz``, ``io``, ``data`` and ``cli`` are imported on first attribute
access (``ta.metrics.road``), so that ``import torchattr`` stays as light as the kernels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torchattr.cam import cam
from torchattr.gradient import input_x_gradient, reduce_channels, saliency, smoothgrad
from torchattr.integrated import integrated_gradients, quadrature
from torchattr.lrp import Conservation, LRPError, composites, lrp, lrp_rules, rules
from torchattr.paths import (
    blur_integrated_gradients,
    expected_gradients,
    guided_integrated_gradients,
    idgi,
)
from torchattr.ranking import top_codes

if TYPE_CHECKING:
    from torchattr import baselines as baselines
    from torchattr import cli as cli
    from torchattr import data as data
    from torchattr import io as io
    from torchattr import metrics as metrics
    from torchattr import viz as viz

_LAZY = ("baselines", "cli", "data", "io", "metrics", "viz")

__all__ = [
    "Conservation",
    "LRPError",
    "blur_integrated_gradients",
    "cam",
    "composites",
    "expected_gradients",
    "guided_integrated_gradients",
    "idgi",
    "input_x_gradient",
    "integrated_gradients",
    "lrp",
    "lrp_rules",
    "quadrature",
    "reduce_channels",
    "rules",
    "saliency",
    "smoothgrad",
    "top_codes",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``torchattr.metrics`` etc.: the subpackage, imported on first access."""
    if name in _LAZY:
        module = importlib.import_module(f"torchattr.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'torchattr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
