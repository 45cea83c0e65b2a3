"""torchattr: functional attribution kernels for PyTorch, built on ``torch.func``.

Every method is a pure function ``(model, inputs, target) -> attributions``.
"""

from torchattr.cam import cam
from torchattr.gradient import input_x_gradient, reduce_channels, saliency, smoothgrad
from torchattr.integrated import integrated_gradients, quadrature
from torchattr.lrp import Conservation, composites, lrp, lrp_rules, rules
from torchattr.ranking import top_codes

__all__ = [
    "Conservation",
    "cam",
    "composites",
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
