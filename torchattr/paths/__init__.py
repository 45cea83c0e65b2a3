"""Path methods beyond straight-line Integrated Gradients.

One method per module: :func:`expected_gradients` (IG averaged over reference baselines),
:func:`blur_integrated_gradients` (the path through Gaussian scale space),
:func:`guided_integrated_gradients` (the adaptive path) and :func:`idgi` (the important-direction
correction on any of these paths). Their shared engine is :mod:`torchattr._core.paths`.
"""

from __future__ import annotations

from torchattr.paths.blur import blur_integrated_gradients
from torchattr.paths.expected import expected_gradients
from torchattr.paths.guided import guided_integrated_gradients
from torchattr.paths.idgi import idgi

__all__ = [
    "blur_integrated_gradients",
    "expected_gradients",
    "guided_integrated_gradients",
    "idgi",
]
