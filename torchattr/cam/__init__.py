"""The CAM family: class activation maps from one layer's activations (and their gradients).

One concept per module:

* :mod:`torchattr.cam.formulas`: the twelve weightings as pure functions of the activations
  ``A`` and gradients ``G`` (the table of formulas), and the shared tail
  ``minmax(upsample(relu(cam)))``;
* :mod:`torchattr.cam.api`: :func:`cam`, the public function, and the per-method paths;
* :mod:`torchattr.cam.capture`: call-scoped hooks that capture ``A`` and ``G``;
* :mod:`torchattr.cam.grids`: layer outputs as channels-first grids (feature maps, ViT tokens);
* :mod:`torchattr.cam.layers`: ``layer=`` resolved to submodules (names, wrapped models).

``METHODS``: the names ``method=`` accepts, in the order of the formula table.
"""

from torchattr.cam.api import cam
from torchattr.cam.formulas import METHODS
from torchattr.cam.grids import token_grid
from torchattr.cam.layers import resolve_cam_layers

__all__ = ["METHODS", "cam", "resolve_cam_layers", "token_grid"]
